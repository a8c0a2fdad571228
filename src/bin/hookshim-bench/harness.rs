//! What every scenario needs: the real `hookshim` binary as a child process on a fresh data
//! directory, loopback HTTP servers for the fakes, figures read from `/proc`, and the report
//! (a table on stdout, the same figures as JSON in a file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::{Value, json};

pub type BenchResult<T> = Result<T, String>;

/// The callback signing secret given to hookshim (and used by the receivers to verify).
pub const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The secret the fake upstream signs its webhooks with.
pub const UPSTREAM_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The environment variable the generated config names for [`UPSTREAM_SECRET`].
pub const UPSTREAM_SECRET_ENV: &str = "BENCH_UPSTREAM_SECRET";

/// Find the hookshim binary to drive. With `--hookshim PATH` that file; otherwise, when run by
/// `cargo run`, build the release binary first (a no-op when it is up to date) so the figures
/// are never taken from a stale build, and use `target/release/hookshim`.
pub fn hookshim_binary(explicit: Option<&Path>) -> BenchResult<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--hookshim {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    // target/<profile>/hookshim-bench → target/release/hookshim
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not inside a cargo target dir", exe.display()))?;
    let bin = target.join("release").join("hookshim");
    if let (Ok(cargo), Ok(manifest)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    {
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "hookshim", "--manifest-path"])
            .arg(Path::new(&manifest).join("Cargo.toml"))
            .status()
            .map_err(|e| format!("cannot run cargo to build hookshim: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`cargo build --release --bin hookshim` failed: {status}"
            ));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release` first or pass --hookshim PATH",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Where the JSON goes when `--json` is not given: `target/bench/<scenario>.json`.
pub fn default_json_path(scenario: &str) -> PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("."));
    root.join("target")
        .join("bench")
        .join(format!("{scenario}.json"))
}

/// A scratch directory removed when dropped (unless kept for inspection).
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn new(scenario: &str, keep: bool) -> BenchResult<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "hookshim-bench-{scenario}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot create scratch dir {}: {e}", path.display()))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Serve `router` on an ephemeral loopback port.
pub async fn serve(router: Router) -> BenchResult<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

/// A port that was free a moment ago (hookshim binds it itself).
pub fn free_port() -> BenchResult<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// An HTTP client for the harness: keep-alive, no proxy, loopback only.
pub fn http_client(pool: usize) -> BenchResult<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The hookshim binary running as a child process; SIGKILLed and reaped when dropped.
pub struct Hookshim {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pub url: String,
    child: Child,
    /// How many times it was started (log files are numbered by it).
    pub starts: u32,
}

impl Hookshim {
    /// Write `config` next to the data, start `hookshim --config … serve`, wait for `/readyz`.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        config: &str,
        url: String,
        http: &reqwest::Client,
    ) -> BenchResult<Hookshim> {
        let config_path = dir.join("shim.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let log = dir.join("hookshim");
        let child = spawn(bin, &config_path, &log, 1)?;
        let mut h = Hookshim {
            bin: bin.to_path_buf(),
            config: config_path,
            log,
            url,
            child,
            starts: 1,
        };
        h.wait_ready(http, Duration::from_secs(120)).await?;
        Ok(h)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Poll `/readyz` until it answers 200; returns its body.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        limit: Duration,
    ) -> BenchResult<Value> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "hookshim exited before it was ready ({status}); its log: {}",
                    self.log_path().display()
                ));
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return r.json().await.map_err(|e| format!("/readyz body: {e}"));
                }
            }
            if start.elapsed() > limit {
                return Err(format!("hookshim was not ready within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.with_extension(format!("{}.log", self.starts))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> BenchResult<()> {
        self.child
            .kill()
            .map_err(|e| format!("cannot kill hookshim: {e}"))?;
        self.child
            .wait()
            .map_err(|e| format!("cannot reap hookshim: {e}"))?;
        Ok(())
    }

    /// SIGTERM (graceful stop: finish in-flight work, flush) and wait for exit.
    pub async fn terminate(&mut self, limit: Duration) -> BenchResult<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .map_err(|e| format!("cannot run kill -TERM: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {} failed: {status}", self.pid()));
        }
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("hookshim exited with {s} on SIGTERM")),
                Ok(None) if start.elapsed() > limit => {
                    return Err(format!("hookshim did not exit within {limit:?} of SIGTERM"));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(format!("cannot wait for hookshim: {e}")),
            }
        }
    }

    /// Start the binary again on the same config and data directory (after a kill or stop).
    /// Returns as soon as the process is spawned; call [`Hookshim::wait_ready`] next.
    pub fn respawn(&mut self) -> BenchResult<()> {
        self.starts += 1;
        self.child = spawn(&self.bin, &self.config, &self.log, self.starts)?;
        Ok(())
    }

    /// Resident set size and its peak, in bytes.
    pub fn memory(&self) -> BenchResult<(u64, u64)> {
        let status = procfs::process::Process::new(self.pid() as i32)
            .and_then(|p| p.status())
            .map_err(|e| format!("cannot read /proc/{}/status: {e}", self.pid()))?;
        Ok((
            status.vmrss.unwrap_or(0) * 1024,
            status.vmhwm.unwrap_or(0) * 1024,
        ))
    }

    /// User + system CPU time used so far.
    pub fn cpu(&self) -> BenchResult<Duration> {
        cpu_of(self.pid())
    }
}

fn spawn(bin: &Path, config: &Path, log: &Path, n: u32) -> BenchResult<Child> {
    let log = log.with_extension(format!("{n}.log"));
    let out =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env_remove("HOOKSHIM_API_TOKEN")
        .env_remove("HOOKSHIM_CONFIG")
        .env_remove("HOOKSHIM_LOG")
        .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
        .env(UPSTREAM_SECRET_ENV, UPSTREAM_SECRET)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

impl Drop for Hookshim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat`).
pub fn cpu_of(pid: u32) -> BenchResult<Duration> {
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let ticks = procfs::ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(
        (stat.utime + stat.stime) as f64 / ticks as f64,
    ))
}

/// Bytes on disk under `dir`: (apparent size, allocated blocks).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// The `q`-quantile (0..=1) of sorted `v`, nearest-rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// One row of the printed table.
pub struct Row {
    pub figure: String,
    pub value: String,
    pub target: String,
}

pub fn row(figure: impl Into<String>, value: impl Into<String>, target: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: target.into(),
    }
}

/// Print the table (Markdown, so it can be pasted into docs/benchmarks.md) and write `json`.
pub fn report(title: &str, rows: &[Row], json: Value, path: &Path) -> BenchResult<()> {
    let w0 = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(5);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!("\n{title}\n");
    println!("| {:w0$} | {:>w1$} | {:w2$} |", "figure", "value", "target");
    println!(
        "|{}|{}:|{}|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 1),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        println!("| {:w0$} | {:>w1$} | {:w2$} |", r.figure, r.value, r.target);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("\nJSON: {}", path.display());
    Ok(())
}

/// The machine, for the JSON.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    use procfs::Current;
    let mem = procfs::Meminfo::current().map(|m| m.mem_total).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({"cores": cores, "mem_total_bytes": mem, "kernel": kernel})
}

/// Progress lines go to stderr so stdout stays the table.
pub fn note(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}
