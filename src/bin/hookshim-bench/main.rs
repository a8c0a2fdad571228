//! `hookshim-bench`: benchmarks as a program that prints figures (a Markdown table on stdout, the
//! same figures as JSON in a file). Each scenario drives the real `hookshim` release binary as a
//! child process on a fresh data directory; the fakes (upstream, receiver) run in this process.
//! The figures and how to read them are in docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release --bin hookshim-bench -- policy              # benchmark 1
//! cargo run --release --bin hookshim-bench -- policy --pareto     # benchmark 1b (issue 13)
//! cargo run --release --bin hookshim-bench -- e2e                 # benchmark 2
//! cargo run --release --bin hookshim-bench -- scale --ops 1000000 # benchmark 3
//! cargo run --release --bin hookshim-bench -- soak --minutes 30    # soak (issue 12)
//! ```

mod e2e;
mod harness;
mod pareto;
mod policy;
mod scale;
mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hookshim-bench",
    about = "Benchmarks of the real hookshim binary on loopback; prints a table, writes JSON"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Policy efficiency: one seeded workload replayed in simulated time against hookshim's
    /// polling policy and the SDK pollers (requests per operation, detection delay, hints, budget).
    Policy(policy::PolicyArgs),
    /// End to end: webhook in → durable → status read → durable → verified callback.
    /// Throughput at saturation and latency at a fixed open-loop rate.
    E2e(e2e::E2eArgs),
    /// Many operations tracked at once: memory, disk, registration throughput, restart time,
    /// and CPU per poll as the number of tracked operations grows.
    Scale(scale::ScaleArgs),
    /// Soak: mixed and hostile load for `--minutes` (polls, webhooks, a flaky receiver, a
    /// hanging upstream, bad input); RSS, fds, threads and latency per minute.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        harness::note(
            "this harness is a debug build; run it with --release or its own overhead skews the figures",
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Policy(a) => policy::run(a).await,
            Scenario::E2e(a) => e2e::run(a).await,
            Scenario::Scale(a) => scale::run(a).await,
            Scenario::Soak(a) => soak::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
