//! Docs that cannot rot: the example configs in `docs/providers.md` through the real
//! `hookshim check`, and the README naming every preset.

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// Docs that cannot rot.

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every `${VAR}` and `secret_env = "VAR"` in a block, and the variables the presets' default
/// headers read, each given a valid value.
fn env_for(block: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let preset_headers: Vec<String> = hookshim::upstream::Preset::ALL
        .iter()
        .flat_map(|p| p.defaults().headers.iter().map(|(_, v)| v.to_string()))
        .collect();
    let all = format!("{block}\n{}", preset_headers.join("\n"));
    let mut rest = all.as_str();
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}').expect("unterminated ${");
        vars.push(after[..end].to_string());
        rest = &after[end..];
    }
    for line in block.lines() {
        for part in line.split("secret_env = \"").skip(1) {
            vars.push(part.split('"').next().unwrap().to_string());
        }
    }
    vars.into_iter()
        .map(|v| (v, PUSHY_SECRET.to_string()))
        .collect()
}

#[test]
fn every_toml_block_in_docs_providers_md_passes_check() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/providers.md"))
        .expect("docs/providers.md");
    let blocks = toml_blocks(&doc);
    assert!(
        blocks.len() >= 9,
        "expected a recipe per preset, found {} blocks",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let file = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&file, block).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookshim"))
            .arg("--config")
            .arg(&file)
            .arg("check")
            .env_clear()
            .envs(env_for(block))
            .output()
            .expect("run hookshim check");
        assert!(
            out.status.success(),
            "docs/providers.md block {i} fails `hookshim check`:\n{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
    }
    for preset in hookshim::upstream::Preset::NAMES {
        let line = format!("preset = \"{preset}\"");
        assert!(
            blocks.iter().any(|b| b.contains(&line)),
            "docs/providers.md has no recipe with {line}"
        );
    }
}

#[test]
fn the_readme_config_reference_names_every_preset() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `upstreams.<name>.preset`"))
        .expect("the preset row of the config reference");
    for preset in hookshim::upstream::Preset::NAMES {
        assert!(
            row.contains(&format!("`\"{preset}\"`")),
            "README preset row lacks {preset}: {row}"
        );
    }
}
