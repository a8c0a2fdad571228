//! D6: a store that lost acknowledged data is noticed at start (the real binary, real sled in a
//! temp dir). sled treats a damaged log as its end and opens silently; hookshim compares the
//! flush generation sled reads back with the mark written beside the data after each flush.
//! - the db file truncated: start refused (exit 2) saying what was found and what to do;
//!   `store verify` exits 1; `serve --accept-damaged-store` starts;
//! - 4 KiB flipped in the middle: refused, or (if sled still reads everything) every
//!   acknowledged operation is intact;
//! - `kill -9` right after acknowledged writes (and with writes in flight): no false alarm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const SHIM_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "5s"
retry_schedule = ["100ms", "200ms", "300ms"]

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 1000, burst = 100 }
poll = { initial = "20ms", multiplier = 1.5, max = "50ms", jitter = 0.1, deadline = "1h" }
"#;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
    runs: usize,
}

impl Setup {
    fn new(up: &FakeUpstream, recv: &Receiver) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = SHIM_CONFIG
            .replace("{PORT}", &port.to_string())
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url)
            .replace("{DATA}", &dir.path().join("data").display().to_string());
        let config = dir.path().join("shim.toml");
        std::fs::write(&config, text).unwrap();
        Setup {
            dir,
            config,
            url: format!("http://127.0.0.1:{port}"),
            runs: 0,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hookshim"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("HOOKSHIM_API_TOKEN")
            .env_remove("HOOKSHIM_CONFIG")
            .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
            .env("HOOKSHIM_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// Start `hookshim serve <extra>`; returns the process and its stderr file.
    fn spawn(&mut self, extra: &[&str]) -> (Proc, PathBuf) {
        self.runs += 1;
        let err = self.dir.path().join(format!("run{}.stderr", self.runs));
        let out = self.dir.path().join(format!("run{}.stdout", self.runs));
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        (Proc { child }, err)
    }

    /// `hookshim store verify`: exit code and stdout.
    fn verify(&self) -> (i32, String) {
        let out = self.command(&["store", "verify"]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

async fn get_op(http: &reqwest::Client, url: &str, id: &str) -> (u16, Value) {
    let r = http
        .get(format!("{url}/v1/operations/{id}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A store with `n` acknowledged operations, `finished` of them succeeded (callback delivered),
/// the rest running; then `kill -9`. Returns operation → (id, status).
async fn acknowledged_store(
    setup: &mut Setup,
    up: &FakeUpstream,
    recv: &Receiver,
    n: usize,
    finished: usize,
) -> BTreeMap<String, (String, String)> {
    let http = reqwest::Client::new();
    let (mut proc, _) = setup.spawn(&[]);
    proc.wait_healthy(&http, &setup.url).await;
    let ops: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    for (i, op) in ops.iter().enumerate() {
        let state = if i < finished { "done" } else { "running" };
        up.set(&format!("jobs/{op}"), json!({"state": state}));
    }
    let ids = register_all(&http, &setup.url, &ops).await;
    eventually(
        Duration::from_secs(30),
        "the finished callbacks",
        || async { (recv.calls().len() >= finished).then_some(()) },
    )
    .await;
    let mut expect = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let id = ids[op].clone();
        let status = if i < finished { "succeeded" } else { "pending" };
        if i < finished {
            // Acknowledged to the app as finished only once its callback went out (flushed).
            let (_, body) = get_op(&http, &setup.url, &id).await;
            assert_eq!(body["status"], "succeeded", "{body}");
        }
        expect.insert(op.clone(), (id, status.to_string()));
    }
    proc.kill9();
    expect
}

fn db_file(data: &Path) -> PathBuf {
    data.join("db")
}

async fn expect_refusal(setup: &mut Setup) -> String {
    let (mut proc, err) = setup.spawn(&[]);
    let status = proc
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("a damaged store must stop the start, not serve");
    let stderr = std::fs::read_to_string(err).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_is_refused_with_what_to_do() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut setup = Setup::new(&up, &recv);
    let expect = acknowledged_store(&mut setup, &up, &recv, 200, 20).await;
    let db = db_file(&setup.data());
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let stderr = expect_refusal(&mut setup).await;
    let data = setup.data().display().to_string();
    // The mark is written off the flush path, so it may lag the last flush when the process is
    // killed: it names at most the operations acknowledged, and more than the half left.
    let acked: usize = stderr
        .split(" operations were acknowledged")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no acknowledged count in: {stderr}"));
    assert!(
        acked <= expect.len() && acked > expect.len() / 2,
        "{acked} acknowledged of {}: {stderr}",
        expect.len()
    );
    for part in [
        format!("the store at {data} lost data"),
        "hookshim store verify".to_string(),
        "--accept-damaged-store".to_string(),
        "backup".to_string(),
    ] {
        assert!(stderr.contains(&part), "{part:?} not in: {stderr}");
    }
    let (code, report) = setup.verify();
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("DAMAGED"), "{report}");

    // Accepting the loss starts the service on what is left, and the next start is clean.
    let http = reqwest::Client::new();
    let (mut proc, _) = setup.spawn(&["--accept-damaged-store"]);
    proc.wait_healthy(&http, &setup.url).await;
    proc.kill9();
    let (code, report) = setup.verify();
    assert_eq!(code, 0, "{report}");
    let (mut proc, _) = setup.spawn(&[]);
    proc.wait_healthy(&http, &setup.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_refused_or_lose_nothing() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut setup = Setup::new(&up, &recv);
    let expect = acknowledged_store(&mut setup, &up, &recv, 200, 40).await;
    let db = db_file(&setup.data());
    let mut bytes = std::fs::read(&db).unwrap();
    let (middle, len) = (bytes.len() / 2, bytes.len());
    for b in &mut bytes[middle..(middle + 4096).min(len)] {
        *b ^= 0xA5;
    }
    std::fs::write(&db, bytes).unwrap();

    let (mut proc, err) = setup.spawn(&[]);
    let http = reqwest::Client::new();
    // Either it refuses to start (exit 2, saying so) ...
    let exited = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break Some(s);
        }
        if let Ok(r) = http.get(format!("{}/healthz", setup.url)).send().await {
            if r.status() == 200 {
                break None;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match exited {
        Some(status) => {
            eprintln!("flipped bytes: start refused");
            let stderr = std::fs::read_to_string(err).unwrap();
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(
                stderr.contains("lost data") || stderr.contains("is damaged"),
                "{stderr}"
            );
            let (code, report) = setup.verify();
            assert_eq!(code, 1, "{report}");
        }
        // ... or sled still read everything: every acknowledged operation is intact, and no
        // finished one went back to running.
        None => {
            eprintln!("flipped bytes: sled still reads the store; checking every operation");
            for (op, (id, status)) in &expect {
                let (code, body) = get_op(&http, &setup.url, id).await;
                assert_eq!(code, 200, "{op}: {body}");
                if status == "succeeded" {
                    assert_eq!(body["status"], "succeeded", "{op}: {body}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_acknowledged_writes_is_no_false_alarm() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut setup = Setup::new(&up, &recv);
    let http = reqwest::Client::new();
    for round in 0..3 {
        let (mut proc, _) = setup.spawn(&[]);
        proc.wait_healthy(&http, &setup.url).await;
        let ops: Vec<String> = (0..100).map(|i| format!("r{round}_{i}")).collect();
        for op in &ops {
            up.set(&format!("jobs/{op}"), json!({"state": "done"}));
        }
        let acked = register_all(&http, &setup.url, &ops).await;
        // Writes still going on (more registrations, polls, deliveries) when the kill comes.
        let (h, u) = (http.clone(), setup.url.clone());
        let more: Vec<String> = (0..100).map(|i| format!("x{round}_{i}")).collect();
        let background = tokio::spawn(async move {
            for op in more {
                let _ = h
                    .post(format!("{u}/v1/operations"))
                    .json(&json!({"upstream": "jobs", "operation": op}))
                    .send()
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        proc.kill9();
        let _ = background.await;

        let (code, report) = setup.verify();
        assert_eq!(code, 0, "round {round}: {report}");
        let (mut proc, _) = setup.spawn(&[]);
        proc.wait_healthy(&http, &setup.url).await;
        for id in acked.values() {
            let (code, body) = get_op(&http, &setup.url, id).await;
            assert_eq!(code, 200, "round {round}: {id}: {body}");
        }
        proc.kill9();
    }
}
