//! Issue 14: `GET /ui` in headless Chromium against the real binary. `tests/ui/check_ui.py`
//! (standard library only) drives Debian's `chromium` through `chromedriver` (W3C WebDriver):
//! the page asks for the token, an operation appears, its timeline shows the callback, the
//! upstream's budget and AIMD rate are shown, the delivery filter works, and the redeliver
//! button sends a failed callback again (checked here at the receiver).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (or `HOOKSHIM_CHROMIUM` /
//! `HOOKSHIM_CHROMEDRIVER`); `bash .ci/run` installs them (Debian packages `chromium`,
//! `chromium-driver`). Without them the test says it is skipped, except under `CI=true`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const PROC_CONFIG: &str = proc_config!(
    r#"api_token_env = "UI_TEST_TOKEN"
"#,
    r#"rate = { per_second = 50, burst = 5 }
"#,
    ""
);

const TOKEN: &str = "ui-test-token";

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    p.exists().then_some(p)
}

#[tokio::test]
async fn the_page_shows_operations_timelines_upstreams_and_redelivers() {
    let browser = tool("HOOKSHIM_CHROMIUM", "/usr/bin/chromium");
    let driver = tool("HOOKSHIM_CHROMEDRIVER", "/usr/bin/chromedriver");
    let (Some(browser), Some(driver)) = (browser, driver) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "chromium or chromedriver missing but CI=true: the /ui test must run in CI; \
                 `bash .ci/run` installs the Debian packages chromium and chromium-driver"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "ui::the_page_shows_operations_timelines_upstreams_and_redelivers skipped: no \
             /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium \
             chromium-driver; bash .ci/run does)"
        );
        return;
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    recv.set_for_type("operation.failed", Some(Behaviour::Status(500)));
    let mut setup = ProcSetup::new(
        &PROC_CONFIG
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    );
    let mut child = setup.spawn_with_env(&[("UI_TEST_TOKEN", TOKEN)]);
    let http = reqwest::Client::new();
    child.wait_healthy(&http, &setup.url).await;
    let get = |id: String| {
        let (http, url) = (http.clone(), setup.url.clone());
        async move {
            let r = http
                .get(format!("{url}/v1/operations/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let mut ids = Vec::new();
    for (name, state) in [("shown", "done"), ("refused", "error")] {
        up.set(&format!("jobs/{name}"), json!({"state": state}));
        let r = http
            .post(format!("{}/v1/operations", setup.url))
            .bearer_auth(TOKEN)
            .json(&json!({"upstream": "jobs", "operation": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(id_of(&r.json::<Value>().await.unwrap()));
    }
    let (op, failed) = (ids[0].clone(), ids[1].clone());
    wait_calls(&recv, &op, 1).await;
    eventually(Duration::from_secs(10), "the failed delivery", || async {
        (get(failed.clone()).await["delivery"]["state"] == "failed").then_some(())
    })
    .await;
    // From now on the receiver takes it: only the page's redeliver button can send it again.
    recv.set_for_type("operation.failed", None);
    let before = recv.calls_for(&failed).len();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/check_ui.py");
    let python = std::env::var_os("HOOKSHIM_SDK_PYTHON").unwrap_or_else(|| "python3".into());
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            "--url", &setup.url, "--token", TOKEN, "--op", &op, "--failed", &failed,
        ])
        .arg("--chromedriver")
        .arg(&driver)
        .arg("--chromium")
        .arg(&browser)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser check finished within 3 minutes")
        .unwrap_or_else(|e| panic!("could not run {python:?} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    assert!(stdout.contains("ui: 6 passed, 0 failed"), "{stdout}");
    // The button's redelivery reached the receiver, with the same webhook-id, and verified.
    let calls = wait_calls(&recv, &failed, before + 1).await;
    let last = calls.last().unwrap();
    assert_eq!(last.answered, 200);
    assert!(last.verified);
    assert_eq!(last.webhook_id, format!("{failed}_terminal"));
    eventually(Duration::from_secs(10), "delivered", || async {
        (get(failed.clone()).await["delivery"]["state"] == "delivered").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_page_is_served_on_the_private_listener_only() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = CONFIG.replace(
        "[store]",
        "[server]\nwebhook_listen = \"127.0.0.1:0\"\n\n[store]",
    );
    let shim = TestShim::start(&config, &up, &recv).await;
    for (path, kind) in [("/ui", "text/html"), ("/ui/app.js", "text/javascript")] {
        let r = shim
            .http
            .get(format!("{}{path}", shim.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{h:?}"
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{h:?}"
        );
        let public = shim.webhook_url.as_ref().unwrap();
        let r = shim
            .http
            .get(format!("{public}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the public listener");
    }
    let page = shim
        .http
        .get(format!("{}/ui", shim.url))
        .send()
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("<script src=\"/ui/app.js\">"), "{page}");
    assert!(
        !page.contains("<script>"),
        "no inline script (the CSP forbids it)"
    );
}
