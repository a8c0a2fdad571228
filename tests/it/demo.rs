//! `hookshim demo` (issue 14: it ignored `-c`): run as a user would, through the real binary.
//! Without `-c` it is self-contained; with `-c` hookshim signs with that config's callback keys
//! (the demo's receiver verifies `v1` with its secret and `v1a` with its Ed25519 key, so a key
//! not taken fails the run) and says what it took; a config that does not load stops it.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::common::CALLBACK_SECRET;

/// `hookshim [-c config] demo --jobs n` with `env` only (no HOOKSHIM_* from this process).
fn demo(
    config: Option<&std::path::Path>,
    jobs: usize,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKSHIM_") {
            cmd.env_remove(k);
        }
    }
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.arg("demo").arg("--jobs").arg(jobs.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn demo_with_a_config_signs_with_its_keys_and_says_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(
        &path,
        "[callbacks]\nsigning_key_env = \"DEMO_TEST_SIGNING_KEY\"\nretry_schedule = [\"1s\"]\n\n[upstreams.mine]\nbase_url = \"http://127.0.0.1:9/\"\nstatus_path = \"x/{operation}\"\nstatus_field = \"/s\"\nsucceeded = [\"ok\"]\nfailed = [\"no\"]\n",
    )
    .unwrap();
    let key = format!("whsk_{}", B64.encode([7u8; 32]));
    let (code, out, err) = demo(
        Some(&path),
        2,
        &[
            ("DEMO_TEST_SIGNING_KEY", key.as_str()),
            ("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET),
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "settings from       {}: the callback secret from the environment variable HOOKSHIM_CALLBACK_SECRET, the Ed25519 signing key (v1a), retry_schedule",
            path.display()
        )),
        "{out}"
    );
    assert_eq!(
        out.matches("signature verified (v1 and v1a)").count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("all 2 jobs delivered exactly one verified callback"),
        "{out}"
    );
    assert!(
        !out.contains(&key[5..]) && !err.contains(&key[5..]),
        "the key is shown"
    );

    // Without -c: the demo's own settings.
    let (code, out, err) = demo(None, 1, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains("settings from"), "{out}");
    assert!(out.contains("signature verified  webhook-id"), "{out}");

    // A config that does not load: exit 2, naming it.
    let missing = dir.path().join("missing.toml");
    let (code, out, err) = demo(Some(&missing), 1, &[]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot read the config file",
            missing.display()
        )),
        "{err}"
    );
}
