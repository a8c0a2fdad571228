//! The real binary as a child process: [`ProcSetup`] (a temp dir, a config on a free port, log
//! files) and [`Proc`] (a running child, killed when dropped).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::CALLBACK_SECRET;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Proc {
    /// Start `hookshim --config <config> serve` with the test callback secret, output to files,
    /// and the extra environment variables `env` (`""` as a value removes the variable).
    pub fn spawn_with_env(
        config: &std::path::Path,
        stdout: &std::path::Path,
        stderr: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookshim"));
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("HOOKSHIM_API_TOKEN")
            .env_remove("HOOKSHIM_CONFIG")
            .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
            .env("HOOKSHIM_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(stdout).unwrap())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start the hookshim binary");
        Proc { child }
    }
}

/// A running child; killed (SIGKILL) and reaped when dropped, so a panicking test leaves no
/// process behind.
pub struct Proc {
    pub child: std::process::Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) -> std::process::ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// Wait (without blocking the runtime) for the child to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until GET /healthz answers 200; panic if the child exits first.
    pub async fn wait_healthy(&mut self, _http: &reqwest::Client, url: &str) {
        // Its own client: no pooled connection to a process killed a moment ago, and each probe
        // bounded, so one stuck probe on a loaded machine cannot use up the whole wait.
        let probe = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("hookshim exited before becoming healthy: {s}");
            }
            if let Ok(r) = probe.get(format!("{url}/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("hookshim did not become healthy within 60s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The temp dir, the config, and every log file of a child hookshim; prints the logs if the test
/// panics.
pub struct ProcSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `http://127.0.0.1:{PORT}`.
    pub url: String,
    pub logs: Vec<PathBuf>,
    runs: usize,
}

impl ProcSetup {
    /// A fresh temp dir with `template` written to `shim.toml`, `{PORT}` filled with a free port,
    /// `{DIR}` with the temp dir and `{DATA}` with `{DIR}/data`.
    pub fn new(template: &str) -> ProcSetup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = template
            .replace("{PORT}", &port.to_string())
            .replace("{DATA}", &dir.path().join("data").display().to_string())
            .replace("{DIR}", &dir.path().display().to_string());
        let config = dir.path().join("shim.toml");
        std::fs::write(&config, text).unwrap();
        ProcSetup {
            dir,
            config,
            url: format!("http://127.0.0.1:{port}"),
            logs: Vec::new(),
            runs: 0,
        }
    }

    /// Start `hookshim --config <dir>/shim.toml serve`, logs to files in the temp dir.
    pub fn spawn(&mut self) -> Proc {
        self.spawn_with_env(&[])
    }

    /// [`ProcSetup::spawn`] with extra environment variables (`""` removes one).
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) -> Proc {
        self.runs += 1;
        let out = self.dir.path().join(format!("run{}.stdout", self.runs));
        let err = self.dir.path().join(format!("run{}.stderr", self.runs));
        self.logs.push(out.clone());
        self.logs.push(err.clone());
        Proc::spawn_with_env(&self.config, &out, &err, env)
    }

    fn dump_logs(&self) {
        for p in &self.logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            eprintln!("===== {} =====\n{text}", p.display());
        }
    }
}

impl Drop for ProcSetup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}
