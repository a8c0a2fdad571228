//! The deployables (issue 14, `deploy/`, `Dockerfile`): the image builds with the script CI runs,
//! the Kubernetes manifests validate against the Kubernetes API's JSON schemas, the systemd unit
//! passes `systemd-analyze verify`, and every config they ship passes the real `hookshim check`.
//!
//! Docker cannot run on these machines (no daemon), so the image itself is not built here; what
//! is checked is that its build stage runs `.ci/build` exactly as `.ci/run` does, with the Rust
//! toolchain CI has, and what the runtime stage promises (non-root, the store's volume, the
//! health check on `/healthz`). The schema validator is PyPI's `kubernetes-validate` (pinned in
//! `tests/sdk/requirements.txt`, in the venv `HOOKSHIM_SDK_PYTHON` names; it ships the
//! Kubernetes 1.37 schemas and runs in `--strict` mode, which refuses unknown fields). Without
//! that venv the schema check says it is skipped, except under `CI=true`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The command lines of a shell script (no comments, no blank lines, no `set`/`cd` set-up).
fn commands(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with("set ") && !l.starts_with("cd "))
        .map(str::to_string)
        .collect()
}

/// `hookshim -c <file> check` with `env` only (no HOOKSHIM_* from this process): its JSON.
fn check(config: &Path, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKSHIM_") || k.ends_with("_API_KEY") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config").arg(config).arg("check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check {} failed:\n{stdout}\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let end = stdout.rfind("\nconfig OK").unwrap();
    serde_json::from_str(&stdout[..end]).unwrap()
}

#[test]
fn the_image_builds_with_the_script_ci_runs() {
    let dockerfile = read("Dockerfile");
    // The stages, each from its FROM line on (the comments before the first are no stage).
    let stages: Vec<String> = dockerfile
        .split("\nFROM ")
        .skip(1)
        .map(|s| format!("FROM {s}"))
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage:\n{dockerfile}"
    );
    let (build, runtime) = (&stages[0], &stages[1]);
    // The build stage runs exactly .ci/build, and so does CI.
    let runs: Vec<&str> = build
        .lines()
        .filter_map(|l| l.strip_prefix("RUN "))
        .collect();
    assert_eq!(runs, ["bash .ci/build"], "the build stage's RUN steps");
    assert!(
        commands(&read(".ci/run")).contains(&"bash .ci/build".to_string()),
        ".ci/run must run .ci/build"
    );
    assert_eq!(
        commands(&read(".ci/build")),
        [
            "cargo fetch --locked",
            "cargo build --release --locked --bin hookshim"
        ]
    );
    // The builder's Rust is the toolchain CI builds with (`rustc` here is CI's).
    let image = build
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("the build stage starts FROM rust:<version>");
    let version = image.split(['-', ' ']).next().unwrap();
    let rustc = Command::new("rustc").arg("--version").output().unwrap();
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let ours = rustc.split(' ').nth(1).unwrap();
    assert!(
        ours.starts_with(&format!("{version}.")),
        "the Dockerfile builds with rust:{version}, CI with {rustc}"
    );
    // The runtime: the binary from the build stage, never root, the store on a volume, a
    // health check on /healthz.
    assert!(
        runtime.contains("COPY --from=build /src/target/release/hookshim /usr/local/bin/hookshim")
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the image must not run as root");
    let volume = runtime
        .lines()
        .find_map(|l| l.strip_prefix("VOLUME "))
        .expect("a VOLUME line");
    let health = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("\n\n")
        .next()
        .unwrap();
    assert!(health.contains("http://127.0.0.1:8680/healthz"), "{health}");
    // The config the image ships passes check, its store is the volume, its listeners the
    // exposed ports.
    let shipped = root().join("deploy/docker/shim.toml");
    assert!(runtime.contains("COPY deploy/docker/shim.toml /etc/hookshim/shim.toml"));
    let c = check(&shipped, &[]);
    assert_eq!(
        volume,
        format!("[\"{}\"]", c["store"]["path"].as_str().unwrap())
    );
    assert_eq!(c["server"]["listen"], "127.0.0.1:8680");
    assert_eq!(c["server"]["webhook_listen"], "0.0.0.0:8681");
    assert!(runtime.contains("EXPOSE 8680 8681"));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context must leave out target/"
    );
}

fn python() -> Option<std::ffi::OsString> {
    match std::env::var_os("HOOKSHIM_SDK_PYTHON") {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "HOOKSHIM_SDK_PYTHON is not set but CI=true: the manifest schema check must run in \
             CI; run `bash .ci/run`"
        ),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "deploy: the Kubernetes schema check is skipped: set HOOKSHIM_SDK_PYTHON (bash .ci/run does)"
            );
            None
        }
    }
}

/// `kubernetes-validate --strict` on `files`: (exit code, output).
fn validate(python: &std::ffi::OsStr, files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(python)
        .arg("-m")
        .arg("kubernetes_validate")
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every YAML document of `files`, as JSON (PyYAML, which kubernetes-validate brings).
fn documents(python: &std::ffi::OsStr, files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new(python)
        .arg("-c")
        .arg("import json, sys, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))")
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_validate_and_wire_the_sidecar() {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let Some(python) = python() else { return };

    let (code, out) = validate(&python, &files);
    assert_eq!(
        code,
        Some(0),
        "kubernetes-validate refused the manifests:\n{out}"
    );
    assert_eq!(out.matches(" passed for resource ").count(), 4, "{out}");
    // The validator does refuse: a misspelt field and a wrong type.
    let tmp = tempfile::tempdir().unwrap();
    let sts = std::fs::read_to_string(dir.join("statefulset.yaml")).unwrap();
    for (name, bad) in [
        (
            "misspelt.yaml",
            sts.replace("livenessProbe:", "livenesProbe:"),
        ),
        ("type.yaml", sts.replace("replicas: 1", "replicas: one")),
    ] {
        assert_ne!(bad, sts);
        let p = tmp.path().join(name);
        std::fs::write(&p, bad).unwrap();
        let (code, out) = validate(&python, &[p]);
        assert_eq!(code, Some(1), "{name} passed:\n{out}");
    }

    let docs = documents(&python, &files);
    let kind = |k: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {k} {name}"))
            .clone()
    };
    let sts = kind("StatefulSet", "your-app");
    let pod = &sts["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hookshim")
        .expect("the hookshim sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    let readiness = sidecar["readinessProbe"]["exec"]["command"].to_string();
    assert!(
        readiness.contains("http://127.0.0.1:8680/readyz"),
        "{readiness}"
    );
    assert!(pod["securityContext"]["runAsNonRoot"] == true);
    assert!(sidecar["securityContext"]["runAsUser"].as_u64().unwrap() > 0);

    // The ConfigMap's shim.toml passes check (with the Secret's file and key stood in for).
    let cm = kind("ConfigMap", "hookshim-config");
    let toml = cm["data"]["shim.toml"].as_str().unwrap();
    let secret = tmp.path().join("callback-secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let path = tmp.path().join("shim.toml");
    std::fs::write(
        &path,
        toml.replace(
            "/etc/hookshim/secrets/callback-secret",
            &secret.display().to_string(),
        ),
    )
    .unwrap();
    let c = check(&path, &[("OPENAI_API_KEY", "sk-test")]);

    // The store is on the pod's volume, the config mounted where HOOKSHIM_CONFIG says, the
    // webhook port is the listener's, and the Service for webhooks targets it.
    let mounts = sidecar["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    assert_eq!(mount("data")["mountPath"], c["store"]["path"]);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data",
        "the store is on a volume per pod"
    );
    let env = sidecar["env"].as_array().unwrap();
    let config_env = env.iter().find(|e| e["name"] == "HOOKSHIM_CONFIG").unwrap();
    assert_eq!(mount("config")["mountPath"], config_env["value"]);
    assert!(
        secret_dir_holds(&mount("secrets")["mountPath"], toml),
        "secret_file lies under the secrets mount"
    );
    let port = |name: &str| {
        sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    let webhook_listen = c["server"]["webhook_listen"].as_str().unwrap();
    assert!(webhook_listen.ends_with(&format!(":{}", port("webhooks"))));
    assert!(
        c["server"]["listen"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", port("api")))
    );
    let svc = kind("Service", "hookshim-webhooks");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhooks");
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["template"]["metadata"]["labels"]
    );
}

fn secret_dir_holds(mount: &Value, toml: &str) -> bool {
    let dir = mount.as_str().unwrap();
    toml.lines()
        .any(|l| l.trim_start().starts_with("secret_file") && l.contains(&format!("\"{dir}/")))
}

#[test]
fn the_systemd_unit_verifies_and_runs_the_service() {
    let unit = read("deploy/systemd/hookshim.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(value("ExecStart"), "/usr/local/bin/hookshim serve");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("RestartPreventExitStatus"), "2");
    assert_eq!(value("StateDirectory"), "hookshim");
    assert!(unit.contains("Environment=HOOKSHIM_STORE__PATH=/var/lib/hookshim"));
    // The repository's shim.toml, as the unit's comment installs it, with the store path the
    // unit sets, passes check.
    let c = check(
        &root().join("shim.toml"),
        &[("HOOKSHIM_STORE__PATH", "/var/lib/hookshim")],
    );
    assert_eq!(c["store"]["path"], "/var/lib/hookshim");
    assert_eq!(c["origins"]["store.path"], "HOOKSHIM_STORE__PATH");

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        let _ = writeln!(
            std::io::stderr(),
            "deploy: systemd-analyze not found; the unit's `systemd-analyze verify` is skipped (Debian: apt-get install systemd)"
        );
        return;
    };
    assert!(version.status.success());
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("hookshim.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/hookshim", env!("CARGO_BIN_EXE_hookshim")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    // It exits 0 on unknown keys and unparsable values, but says so: nothing may be said.
    assert!(
        !said.contains("hookshim.service"),
        "systemd-analyze verify:\n{said}"
    );
    // And it does say so for a misspelt key.
    let bad = tmp.path().join("bad.service");
    std::fs::write(
        &bad,
        unit.replace("/usr/local/bin/hookshim", env!("CARGO_BIN_EXE_hookshim"))
            .replace("ProtectHome=", "ProtectHomes="),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Unknown key 'ProtectHomes'"), "{said}");
}
