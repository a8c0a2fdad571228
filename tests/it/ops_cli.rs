//! Issue 14: `hookshim ops` (the real binary's command line) against a running `hookshim serve`
//! with an API token: list, show (with the timeline), redeliver one and in bulk, delete, stats,
//! tables and `--json`, a missing token and an unreachable instance.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const PROC_CONFIG: &str = proc_config!(
    r#"api_token_env = "OPS_CLI_TEST_TOKEN"
"#,
    r#"rate = { per_second = 50, burst = 5 }
"#,
    ""
);

const TOKEN: &str = "ops-cli-token";

/// `hookshim ops --url <url> <args>` with `token` as `HOOKSHIM_TOKEN`: exit code, stdout, stderr.
async fn ops(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("ops")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("HOOKSHIM_TOKEN")
        .env_remove("HOOKSHIM_API_TOKEN")
        .env_remove("HOOKSHIM_URL")
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("HOOKSHIM_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("hookshim ops finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(url: &str, args: &[&str]) -> String {
    let (code, out, err) = ops(url, Some(TOKEN), args).await;
    assert_eq!(code, 0, "ops {args:?}: {out}\n{err}");
    out
}

async fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(url, &all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ops {args:?} --json: {e}: {out}"))
}

#[tokio::test]
async fn ops_lists_shows_redelivers_deletes_and_counts() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    recv.set_for_type("operation.failed", Some(Behaviour::Status(500)));
    let mut setup = ProcSetup::new(
        &PROC_CONFIG
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    );
    let mut child = setup.spawn_with_env(&[("OPS_CLI_TEST_TOKEN", TOKEN)]);
    let http = reqwest::Client::new();
    child.wait_healthy(&http, &setup.url).await;
    let url = setup.url.clone();
    let mut ids = Vec::new();
    for (name, state) in [("a", "done"), ("b", "error"), ("c", "running")] {
        up.set(&format!("jobs/{name}"), json!({"state": state}));
        let r = http
            .post(format!("{url}/v1/operations"))
            .bearer_auth(TOKEN)
            .json(&json!({"upstream": "jobs", "operation": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(id_of(&r.json::<Value>().await.unwrap()));
    }
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    wait_calls(&recv, a, 1).await;
    eventually(Duration::from_secs(10), "b's delivery to fail", || async {
        let op = ok_json(&url, &["show", b]).await;
        (op["delivery"]["state"] == "failed").then_some(())
    })
    .await;

    // list: a table with every operation, and JSON with the filters applied.
    let table = ok(&url, &["list"]).await;
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("DELIVERY"),
        "{table}"
    );
    for id in &ids {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(table.contains("3 operation(s)"), "{table}");
    let failed = ok_json(&url, &["list", "--delivery", "failed"]).await;
    assert_eq!(
        failed["operations"].as_array().unwrap().len(),
        1,
        "{failed}"
    );
    assert_eq!(failed["operations"][0]["id"], b.as_str());
    let page = ok(&url, &["list", "--limit", "2"]).await;
    assert!(page.contains(&format!("more: --cursor {b}")), "{page}");
    let rest = ok_json(&url, &["list", "--cursor", b]).await;
    assert_eq!(rest["operations"][0]["id"], c.as_str(), "{rest}");

    // show: the record and its timeline.
    let shown = ok(&url, &["show", a]).await;
    for want in [
        "timeline",
        "registered: jobs a",
        "status read: done",
        "ended succeeded (detected via poll)",
        "callback attempt: answered 200",
        "callback delivered",
    ] {
        assert!(shown.contains(want), "{want:?} missing:\n{shown}");
    }
    let shown = ok(&url, &["show", b]).await;
    assert!(shown.contains("callback attempt: answered 500"), "{shown}");

    // redeliver one, then a bulk replay.
    recv.set_for_type("operation.failed", None);
    let out = ok(&url, &["redeliver", b]).await;
    assert!(out.contains(&format!("redelivering {b}")), "{out}");
    eventually(Duration::from_secs(10), "b delivered", || async {
        let op = ok_json(&url, &["show", b]).await;
        (op["delivery"]["state"] == "delivered").then_some(())
    })
    .await;
    let out = ok(
        &url,
        &["redeliver", "--delivery", "delivered", "--limit", "1"],
    )
    .await;
    assert!(
        out.starts_with("redelivered 1\n") && out.contains(a.as_str()),
        "{out}"
    );
    wait_calls(&recv, a, 2).await;
    let (code, _, err) = ops(&url, Some(TOKEN), &["redeliver", a, "--upstream", "jobs"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ops(&url, Some(TOKEN), &["redeliver", c]).await;
    assert_eq!(code, 1);
    assert!(err.contains("409 not_terminal"), "{err}");

    // stats: from /v1/upstreams and /metrics.
    let stats = ok(&url, &["stats"]).await;
    assert!(stats.lines().any(|l| l.starts_with("jobs")), "{stats}");
    assert!(stats.contains("callbacks: 0 pending, 0 failed"), "{stats}");
    let stats = ok_json(&url, &["stats"]).await;
    assert_eq!(stats["upstreams"]["jobs"]["running"], 1, "{stats}");
    assert_eq!(
        stats["upstreams"]["jobs"]["succeeded_since_start"], 1,
        "{stats}"
    );
    assert_eq!(stats["upstreams"]["jobs"]["rate_per_second"], 50, "{stats}");

    // delete, then it is gone.
    let out = ok(&url, &["delete", c]).await;
    assert!(
        out.contains(&format!("deleted {c} (jobs c, was running)")),
        "{out}"
    );
    let (code, _, err) = ops(&url, Some(TOKEN), &["show", c]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404 operation_not_found"), "{err}");

    // Without the token, or with no instance there.
    let (code, _, err) = ops(&url, None, &["list"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("401 unauthorized") && err.contains("HOOKSHIM_TOKEN"),
        "{err}"
    );
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = ops(&nobody, Some(TOKEN), &["list"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach hookshim"), "{err}");
    let (code, _, err) = ops("localhost:8680", Some(TOKEN), &["list"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--url"), "{err}");
}
