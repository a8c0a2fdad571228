//! The `hookshim` command: `serve`, `check`, `demo`, `store verify`, `ops`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookshim::clock::{Clock, SystemClock};
use hookshim::config::{Backend, Config, LogFormat};
use hookshim::service::{StartError, StartOptions, start};
use hookshim::store::{SledStore, StoreError};
use hookshim::telemetry::export::Pipeline;

/// glibc's malloc was a fifth of the service's CPU time under load (`perf` on the e2e
/// benchmark); mimalloc is made for many small, short-lived allocations across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookshim",
    version,
    about = "Push semantics for long-running upstream jobs: poll or take webhooks, deliver exactly one signed callback"
)]
struct Cli {
    /// The config file [default: shim.toml]. `demo` uses it only when given.
    #[arg(long, short, global = true, env = "HOOKSHIM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Start even though the store lost data acknowledged before the last shutdown (a
        /// truncated or damaged data file): accept the loss and record the store as it is now.
        #[arg(long)]
        accept_damaged_store: bool,
    },
    /// Inspect the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Validate the config and print it resolved, with secrets redacted.
    Check,
    /// Run a simulated upstream, hookshim and a verifying receiver in one process on loopback,
    /// and print each job's callback as it arrives. With `-c`, hookshim takes that file's
    /// callback signing keys, retry schedule and timeout, workers, server limits and log format
    /// (the upstreams, store and receiver stay the demo's own).
    Demo {
        /// How many jobs to run.
        #[arg(long, default_value_t = 6)]
        jobs: usize,
    },
    /// Look at and act on a running instance through its API: list, show, redeliver, delete,
    /// stats (token from HOOKSHIM_TOKEN or HOOKSHIM_API_TOKEN).
    Ops(Box<hookshim::opscli::OpsArgs>),
}

/// The command line with the config path settled.
struct Resolved {
    config: PathBuf,
    command: Command,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check the store without changing it: the flush generation against the mark written
    /// after the last flush, every record, every index entry a record needs. Exit code 0 when
    /// sound, 1 when damaged, 2 when it cannot be checked (e.g. `serve` is running on it).
    Verify,
}

/// The level filter: `HOOKSHIM_LOG` if set, else `default`; sled's own events are off unless
/// `HOOKSHIM_LOG` names sled (they flood `debug` with its internals).
fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let given = std::env::var("HOOKSHIM_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let directives = match given {
        Some(v) if v.contains("sled") => v,
        Some(v) => format!("{v},sled=off"),
        None => format!("{default},sled=off"),
    };
    tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("warning: HOOKSHIM_LOG: {e}; using {default:?}");
        tracing_subscriber::EnvFilter::new(format!("{default},sled=off"))
    })
}

/// Log lines to stderr; with a trace pipeline, its layer records the stage spans. The stage
/// spans themselves stay out of the log lines (which carry `op` already).
fn init_logging(default: &str, format: LogFormat, trace: Option<&Pipeline>) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::prelude::*;
    let not_stage_spans =
        filter_fn(|m| !(m.is_span() && m.target() == hookshim::telemetry::TARGET));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        // One object per line; the event's fields at the top level next to `message`.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter(default).and(not_stage_spans)))
        .with(trace.map(|p| p.layer()))
        .init();
}

/// What is valid but probably a mistake, e.g. a previous secret past its `until`.
fn warnings(config: &Config) -> Vec<String> {
    let now = SystemClock.now();
    let mut out = config.callbacks.warnings(now);
    out.extend(
        config
            .upstreams
            .iter()
            .filter_map(|(name, u)| u.webhook.as_ref().map(|w| w.warnings(name, now)))
            .flatten(),
    );
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let given = cli.config.clone();
    let config_path = cli.config.unwrap_or_else(|| PathBuf::from("shim.toml"));
    let cli = Resolved {
        config: config_path,
        command: cli.command,
    };
    match cli.command {
        Command::Check => match Config::load(&cli.config) {
            Ok(c) => {
                for w in warnings(&c) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&c.redacted()).unwrap_or_default()
                );
                println!("config OK: {}", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            accept_damaged_store,
        } => {
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The trace pipeline's sender runs on the runtime; with `[trace]` off, none.
            let pipeline = match &config.trace {
                None => None,
                Some(t) => {
                    let _entered = rt.enter();
                    match hookshim::telemetry::export::install(t) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            eprintln!("error: {}: {e}", config.source);
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            init_logging("hookshim=info,warn", config.log.format, pipeline.as_ref());
            if let Some(t) = &config.trace {
                tracing::info!(endpoint = %t.endpoint, service_name = %t.service_name, sample_ratio = t.sample_ratio, "sending traces over OTLP/HTTP");
            }
            for w in warnings(&config) {
                tracing::warn!("{w}");
            }
            if accept_damaged_store && config.store.backend != Backend::Sled {
                eprintln!(
                    "error: --accept-damaged-store is for sled's data directory; the PostgreSQL \
                     store commits every write and has no mark to accept"
                );
                return ExitCode::from(2);
            }
            if accept_damaged_store {
                let accepted =
                    SledStore::open_unchecked(&config.store.path, config.store.cache_bytes)
                        .and_then(|s| s.accept_damage());
                match accepted {
                    Ok(what) => tracing::warn!("--accept-damaged-store: {what}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            rt.block_on(async {
                let code = match start(config, StartOptions::default()).await {
                    Ok(running) => {
                        running.run_until_signal_reloading(cli.config.clone()).await;
                        ExitCode::SUCCESS
                    }
                    Err(StartError::Store(
                        e @ (StoreError::Damaged(_) | StoreError::TooNew(_)),
                    )) => {
                        eprintln!("error: {e}");
                        ExitCode::from(2)
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                };
                // After the service stopped: its last spans are queued; send them.
                if let Some(p) = pipeline {
                    p.shutdown().await;
                }
                code
            })
        }
        Command::Store {
            command: StoreCommand::Verify,
        } => {
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if config.store.backend != Backend::Sled {
                eprintln!(
                    "error: `store verify` checks sled's data directory; with store.backend = \
                     \"postgres\" every write is one committed transaction (use PostgreSQL's own \
                     tools to check the database)"
                );
                return ExitCode::from(2);
            }
            let report = SledStore::open_unchecked(&config.store.path, config.store.cache_bytes)
                .and_then(|s| {
                    // sled panics on some damaged pages rather than returning an error.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.verify()))
                        .unwrap_or_else(|_| {
                            Err(StoreError::Damaged(
                                "sled failed reading a record (see the panic above): the store \
                                 is damaged"
                                    .into(),
                            ))
                        })
                });
            match report {
                Ok(r) => {
                    for line in &r.lines {
                        println!("{line}");
                    }
                    for p in &r.problems {
                        println!("DAMAGED: {p}");
                    }
                    if r.sound() {
                        println!("store OK: {}", config.store.path.display());
                        ExitCode::SUCCESS
                    } else {
                        println!(
                            "store DAMAGED: {} ({} problems)",
                            config.store.path.display(),
                            r.problems.len()
                        );
                        ExitCode::from(1)
                    }
                }
                Err(e @ StoreError::Damaged(_)) => {
                    println!("DAMAGED: {e}");
                    println!("store DAMAGED: {}", config.store.path.display());
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("error: cannot check the store: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ops(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(hookshim::opscli::run(*args))
        }
        Command::Demo { jobs } => {
            let base = match given {
                None => None,
                Some(path) => match Config::load(&path) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            init_logging(
                "warn",
                base.as_ref().map_or(LogFormat::Text, |c| c.log.format),
                None,
            );
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(hookshim::demo::run(jobs, base)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
