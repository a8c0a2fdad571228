//! Benchmark 1, policy efficiency: one seeded workload of operations with known true durations,
//! replayed in simulated time against hookshim's polling policy and the pollers an app would
//! otherwise use. hookshim's side runs the real code: `schedule::first_poll_at`, the limiter's
//! first-poll spreading, `schedule::parse_hint` on real header maps, `schedule::apply_outcome` on
//! real `Operation` records, and a `governor` limiter with the upstream's configured budget on a
//! simulated clock. The baselines are the schedules from the SDKs' sources (see
//! `shared/reference/upstreams.md`, "How the SDKs poll"), which ignore hints and budgets.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};
use hookshim::clock::Timestamp;
use hookshim::config::Config;
use hookshim::ids::OperationId;
use hookshim::operation::{NewOperation, Operation, Status};
use hookshim::schedule::{PollOutcome, Reading, apply_outcome, first_poll_at};
use hookshim::schedule::{UpstreamLimiter, parse_hint};
use hookshim::upstream::UpstreamConfig;
use hookshim::upstream::{Observation, ObservedState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Seed of the workload (the same seed gives the same workload and the same figures).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Operations in the workload.
    #[arg(long, default_value_t = 4000)]
    ops: usize,
    /// Operations arrive (Poisson) over this many hours.
    #[arg(long, default_value_t = 4.0)]
    hours: f64,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench/policy.json")]
    json: PathBuf,
    /// Run benchmark 1b instead: the Pareto workloads (short, shift, long, throttled) with
    /// `target_delay` values and learned priors (see `pareto.rs`).
    #[arg(long)]
    pareto: bool,
    /// Jobs per Pareto workload (the throttled one has 2×).
    #[arg(long, default_value_t = 2000)]
    pareto_ops: usize,
    /// Where the Pareto plots (SVG) go.
    #[arg(long, default_value = "docs/img")]
    svg_dir: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// A kind of job, with the upstream it runs on and how that upstream answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Veo-like video: 15 s – 15 min, no progress, no hints (preset google-operation).
    Video,
    /// Background research runs: 10 s – 60 min, `Retry-After: 10` on every running answer
    /// (preset gemini-interaction).
    Research,
    /// Batch with request counts (OpenAI, Gemini, Anthropic batches): 2 min – 12 h, progress that
    /// is not linear, then a finalizing phase at 100 % (preset openai-batch).
    Batch,
    /// Batch without progress (a batch that reports no counts until it ends): 2 min – 12 h
    /// (preset gemini-batch).
    BlindBatch,
}

impl Class {
    const ALL: [Class; 4] = [
        Class::Video,
        Class::Research,
        Class::Batch,
        Class::BlindBatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Video => "video",
            Class::Research => "research",
            Class::Batch => "batch",
            Class::BlindBatch => "blind-batch",
        }
    }

    /// Share of the default mix.
    fn share(self) -> f64 {
        match self {
            Class::Video => 0.40,
            Class::Research => 0.20,
            Class::Batch => 0.30,
            Class::BlindBatch => 0.10,
        }
    }

    /// Median seconds, log-normal sigma, clamp.
    fn duration(self) -> (f64, f64, f64, f64) {
        match self {
            Class::Video => (75.0, 0.6, 15.0, 900.0),
            Class::Research => (240.0, 0.8, 10.0, 3600.0),
            Class::Batch | Class::BlindBatch => (1500.0, 1.0, 120.0, 43_200.0),
        }
    }

    /// The preset a user would configure for this kind of job: hookshim polls it on that
    /// preset's default schedule.
    fn preset(self) -> &'static str {
        match self {
            Class::Video => "google-operation",
            Class::Research => "gemini-interaction",
            Class::Batch => "openai-batch",
            Class::BlindBatch => "gemini-batch",
        }
    }
}

#[derive(Clone, Debug)]
struct Job {
    class: Class,
    /// Seconds since the start of the run.
    start: f64,
    duration: f64,
    /// Progress shape: progress = (t / work)^curve, then 100 % while finalizing.
    curve: f64,
    /// Fraction of the duration spent at 100 % before the status turns terminal.
    finalizing: f64,
    /// Progress is counted in this many requests (it moves in steps).
    requests: u32,
}

impl Job {
    fn end(&self) -> f64 {
        self.start + self.duration
    }

    /// The progress an upstream reports `t` seconds after the start of the run.
    fn progress(&self, t: f64) -> Option<f64> {
        if self.class != Class::Batch {
            return None;
        }
        let work = self.duration * (1.0 - self.finalizing);
        let x = ((t - self.start) / work).clamp(0.0, 1.0);
        let done = (x.powf(self.curve) * f64::from(self.requests)).floor();
        Some(done / f64::from(self.requests))
    }

    /// The hint on a running answer, as headers.
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if self.class == Class::Research {
            h.insert("retry-after", HeaderValue::from_static("10"));
        }
        h
    }
}

fn workload(args: &PolicyArgs) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let window = args.hours * 3600.0;
    let mut jobs = Vec::with_capacity(args.ops);
    for _ in 0..args.ops {
        let mut pick = rng.random::<f64>();
        let class = Class::ALL
            .into_iter()
            .find(|c| {
                pick -= c.share();
                pick < 0.0
            })
            .unwrap_or(Class::Video);
        let (median, sigma, lo, hi) = class.duration();
        let d = LogNormal::new(median.ln(), sigma)
            .expect("valid log-normal")
            .sample(&mut rng)
            .clamp(lo, hi);
        jobs.push(Job {
            class,
            start: rng.random::<f64>() * window,
            duration: d,
            curve: rng.random_range(0.8..1.25),
            finalizing: rng.random_range(0.02..0.10),
            requests: rng.random_range(100..10_000),
        });
    }
    jobs.sort_by(|a, b| a.start.total_cmp(&b.start));
    jobs
}

// ---------------------------------------------------------------------------------------------
// What each policy is measured on.

/// One operation's outcome under one policy.
#[derive(Clone, Copy, Default)]
struct OpResult {
    requests: u32,
    /// Seconds from the true end to the first poll that saw it.
    delay: f64,
    hint_violations: u32,
}

struct PolicyRun {
    name: &'static str,
    results: Vec<OpResult>,
    /// Request times per upstream (seconds), for peak rate and budget checks.
    requests_per_second: BTreeMap<&'static str, BTreeMap<u64, u32>>,
}

impl PolicyRun {
    fn new(name: &'static str, n: usize) -> PolicyRun {
        PolicyRun {
            name,
            results: vec![OpResult::default(); n],
            requests_per_second: BTreeMap::new(),
        }
    }

    fn count(&mut self, class: Class, t: f64) {
        *self
            .requests_per_second
            .entry(upstream_of(class))
            .or_default()
            .entry(t.max(0.0) as u64)
            .or_default() += 1;
    }
}

/// The upstream each class runs on (the two batch classes share one).
fn upstream_of(class: Class) -> &'static str {
    match class {
        Class::Video => "veo",
        Class::Research => "research",
        Class::Batch | Class::BlindBatch => "batch",
    }
}

/// Each upstream's budget in hookshim's config: requests per second, burst. Every simulated
/// upstream has hookshim's default budget, 10 requests/s with a burst of 10.
fn budget(_upstream: &str) -> (u32, u32) {
    (10, 10)
}

/// Poll at `times` (seconds) until the job's end is seen. Shared by the baselines: the schedule
/// is an iterator of sleeps; the first request goes out at the start (as the SDKs do).
fn replay_baseline(job: &Job, mut sleeps: impl FnMut(u32) -> f64, run: &mut PolicyRun, i: usize) {
    let mut t = job.start;
    let mut n = 0u32;
    let mut not_before: Option<f64> = None;
    loop {
        run.count(job.class, t);
        let r = &mut run.results[i];
        r.requests += 1;
        if not_before.is_some_and(|nb| t < nb - 1e-9) {
            r.hint_violations += 1;
        }
        if t >= job.end() {
            r.delay = t - job.end();
            return;
        }
        not_before = (job.class == Class::Research).then_some(t + 10.0);
        n += 1;
        t += sleeps(n);
    }
}

// ---------------------------------------------------------------------------------------------
// hookshim, on simulated time.

fn ms(t: f64) -> Timestamp {
    // Simulated time starts at a fixed epoch so timestamps look like real ones.
    Timestamp(1_800_000_000_000 + (t * 1000.0).round() as u64)
}

/// Simulated microseconds of a timestamp (exact: timestamps are whole milliseconds).
fn micros(ts: Timestamp) -> u64 {
    (ts.0 - 1_800_000_000_000) * 1000
}

fn upstream_config(class: Class) -> UpstreamConfig {
    let (rate, burst) = budget(upstream_of(class));
    let text = format!(
        "[upstreams.sim]\npreset = \"{}\"\nrate = {{ per_second = {rate}, burst = {burst} }}\n",
        class.preset()
    );
    // The presets read their API keys from the environment; any value does here (hookshim's
    // own variables, which override config keys, stay unset).
    Config::parse(&text, "policy-sim", &|var| {
        (!var.starts_with("HOOKSHIM_")).then(|| "sim-key".to_string())
    })
    .expect("the simulated upstream's config is valid")
    .upstreams["sim"]
        .clone()
}

fn observation(job: &Job, t: f64) -> Observation {
    let done = t >= job.end();
    Observation {
        state: if done {
            ObservedState::Succeeded
        } else {
            ObservedState::Running
        },
        raw_status: Value::from(if done { "done" } else { "running" }),
        progress: if done { Some(1.0) } else { job.progress(t) },
        result: None,
        error: None,
        expires_at: None,
    }
}

fn new_operation(i: usize, job: &Job, now: Timestamp) -> Operation {
    // The record registration builds.
    Operation::new(NewOperation {
        id: OperationId::from_text(format!("op_{i:026}")),
        upstream: upstream_of(job.class).to_string(),
        operation: format!("j{i}"),
        metadata: None,
        callback_url: None,
        now,
        first_poll_at: now,
        deadline_at: now.plus(Duration::from_secs(48 * 3600)),
        callback_events: Vec::new(),
    })
}

/// hookshim's policy with the presets' defaults; `eta: false` switches progress estimates off
/// (the ablation row: what the estimate alone is worth).
fn replay_hookshim(jobs: &[Job], seed: u64, eta: bool) -> PolicyRun {
    let name = if eta {
        "hookshim"
    } else {
        "hookshim, eta = false"
    };
    let mut run = PolicyRun::new(name, jobs.len());
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let configs: BTreeMap<Class, UpstreamConfig> = Class::ALL
        .iter()
        .map(|c| {
            let mut up = upstream_config(*c);
            up.poll.eta = eta;
            (*c, up)
        })
        .collect();
    // One budget (governor, on a simulated clock) and one first-poll spreader per upstream.
    let clock = FakeRelativeClock::default();
    let mut limiters = BTreeMap::new();
    let mut spreaders = BTreeMap::new();
    for up in ["veo", "research", "batch"] {
        let (rate, burst) = budget(up);
        let quota = Quota::per_second(NonZeroU32::new(rate).expect("rate > 0"))
            .allow_burst(NonZeroU32::new(burst).expect("burst > 0"));
        limiters.insert(up, RateLimiter::direct_with_clock(quota, clock.clone()));
        let rc = hookshim::schedule::RateConfig::new(rate, burst);
        spreaders.insert(up, UpstreamLimiter::new(rc, ms(0.0)));
    }
    let mut ops: Vec<Operation> = Vec::with_capacity(jobs.len());
    let mut not_before: Vec<u64> = vec![0; jobs.len()];
    // Events: (time in µs, sequence, op). Registration happens at the job's start.
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let now_us = std::cell::Cell::new(0u64);
    for (i, job) in jobs.iter().enumerate() {
        let now = ms(job.start);
        let mut op = new_operation(i, job, now);
        let up = &configs[&job.class];
        let first = first_poll_at(
            &up.rules(),
            now,
            op.deadline_at,
            rng.random_range(-1.0..=1.0),
        );
        let first = spreaders[upstream_of(job.class)].spread_first_poll(first, now);
        op.next_poll_at = Some(first);
        ops.push(op);
        queue.push(Reverse((micros(first), seq, i)));
        seq += 1;
    }
    while let Some(Reverse((at_us, _, i))) = queue.pop() {
        // Advance the budget's clock to this event.
        let before = now_us.get();
        if at_us > before {
            clock.advance(Duration::from_micros(at_us - before));
            now_us.set(at_us);
        }
        let job = &jobs[i];
        let upstream = upstream_of(job.class);
        if let Err(not_until) = limiters[upstream].check() {
            // Over budget: the request waits for the limiter, as `acquire` does.
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
            queue.push(Reverse((at_us + wait.as_micros().max(1) as u64, seq, i)));
            seq += 1;
            continue;
        }
        // The record's clock is in whole milliseconds: a poll the limiter delayed by a fraction
        // of one is sent at the next whole millisecond.
        let at_us = at_us.div_ceil(1000) * 1000;
        let now = Timestamp(1_800_000_000_000 + at_us / 1000);
        let t = at_us as f64 / 1e6;
        run.count(job.class, t);
        if at_us < not_before[i] {
            run.results[i].hint_violations += 1;
        }
        let obs = observation(job, t);
        let hint = if obs.state.is_terminal() {
            None
        } else {
            parse_hint(&job.headers(), now, configs[&job.class].poll.hint_max)
        };
        not_before[i] = hint.map_or(0, |h| at_us + h.as_micros() as u64);
        let reading = Reading::new(PollOutcome::Observed(obs)).with_hint(hint);
        let op = &mut ops[i];
        apply_outcome(
            op,
            &configs[&job.class].rules(),
            &reading,
            now,
            rng.random_range(-1.0..=1.0),
        );
        if op.status.is_terminal() {
            assert_eq!(op.status, Status::Succeeded, "no simulated job times out");
            run.results[i].requests = op.polls;
            run.results[i].delay = t - job.end();
        } else if let Some(next) = op.next_poll_at {
            queue.push(Reverse((micros(next), seq, i)));
            seq += 1;
        }
    }
    run
}

// ---------------------------------------------------------------------------------------------
// Report.

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Summary {
    requests_mean: f64,
    requests_p99: f64,
    delay: [f64; 4],
    hint_violations: u64,
    peak: BTreeMap<&'static str, u32>,
    overruns: u64,
}

fn summarize(run: &PolicyRun, jobs: &[Job], only: Option<Class>) -> Summary {
    let pick: Vec<&OpResult> = run
        .results
        .iter()
        .zip(jobs)
        .filter(|(_, j)| only.is_none_or(|c| c == j.class))
        .map(|(r, _)| r)
        .collect();
    let mut req: Vec<f64> = pick.iter().map(|r| f64::from(r.requests)).collect();
    let mut delay: Vec<f64> = pick.iter().map(|r| r.delay).collect();
    req.sort_by(f64::total_cmp);
    delay.sort_by(f64::total_cmp);
    let mut peak = BTreeMap::new();
    let mut overruns = 0;
    for (up, buckets) in &run.requests_per_second {
        let (rate, burst) = budget(up);
        peak.insert(*up, buckets.values().copied().max().unwrap_or(0));
        // The most a budget of `rate`/s with `burst` can let through in one second.
        overruns += buckets.values().filter(|n| **n > rate + burst).count() as u64;
    }
    Summary {
        requests_mean: req.iter().sum::<f64>() / req.len().max(1) as f64,
        requests_p99: quantile(&req, 0.99),
        delay: [
            quantile(&delay, 0.50),
            quantile(&delay, 0.95),
            quantile(&delay, 0.99),
            delay.last().copied().unwrap_or(0.0),
        ],
        hint_violations: pick.iter().map(|r| u64::from(r.hint_violations)).sum(),
        peak,
        overruns,
    }
}

/// A baseline's n-th sleep (n from 1), in seconds.
type Sleeps = dyn Fn(&mut StdRng, u32) -> f64;

pub async fn run(args: PolicyArgs) -> Result<(), String> {
    if args.pareto {
        let doc = crate::pareto::run(args.seed, args.pareto_ops, &args.svg_dir)?;
        if let Some(dir) = args.json.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = args.json.with_file_name("policy-pareto.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("JSON"))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        println!("wrote {}", file.display());
        return Ok(());
    }
    let jobs = workload(&args);
    let mut runs = vec![replay_hookshim(&jobs, args.seed, true)];
    let baselines: [(&'static str, Box<Sleeps>); 5] = [
        ("fixed 1 s", Box::new(|_, _| 1.0)),
        ("fixed 5 s", Box::new(|_, _| 5.0)),
        ("fixed 30 s", Box::new(|_, _| 30.0)),
        (
            "google-api-core",
            // PollingFuture: sleep U(0, d), d = 1 s ×1.5 up to 20 s.
            Box::new(|rng, n| rng.random_range(0.0..=(1.5f64.powi(n as i32 - 1)).min(20.0))),
        ),
        (
            "AWS waiter",
            // Smithy: U(2 s, min(2 s · 2^(n-1), 120 s)).
            Box::new(|rng, n| {
                let hi = (2.0 * 2f64.powi(n as i32 - 1)).min(120.0);
                if hi <= 2.0 {
                    2.0
                } else {
                    rng.random_range(2.0..=hi)
                }
            }),
        ),
    ];
    for (name, sleep) in &baselines {
        let mut rng = StdRng::seed_from_u64(args.seed ^ 0xba5e);
        let mut run = PolicyRun::new(name, jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            replay_baseline(job, |n| sleep(&mut rng, n), &mut run, i);
        }
        runs.push(run);
    }
    runs.push(replay_hookshim(&jobs, args.seed, false));

    let mix: BTreeMap<&str, usize> = Class::ALL
        .iter()
        .map(|c| (c.name(), jobs.iter().filter(|j| j.class == *c).count()))
        .collect();
    println!(
        "## Policy efficiency: {} operations over {} h, seed {} (mix: {})\n",
        jobs.len(),
        args.hours,
        args.seed,
        mix.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| policy | requests/op mean | p99 | delay p50 s | p95 s | p99 s | max s | hint violations | peak req/s veo / research / batch | budget overruns (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for run in &runs {
        let s = summarize(run, &jobs, None);
        println!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} / {} / {} | {} |",
            run.name,
            s.requests_mean,
            s.requests_p99,
            s.delay[0],
            s.delay[1],
            s.delay[2],
            s.delay[3],
            s.hint_violations,
            s.peak.get("veo").unwrap_or(&0),
            s.peak.get("research").unwrap_or(&0),
            s.peak.get("batch").unwrap_or(&0),
            s.overruns
        );
        let mut per_class = serde_json::Map::new();
        for c in Class::ALL {
            let cs = summarize(run, &jobs, Some(c));
            per_class.insert(
                c.name().into(),
                json!({"requests_mean": cs.requests_mean, "requests_p99": cs.requests_p99,
                       "delay_p50": cs.delay[0], "delay_p95": cs.delay[1], "delay_p99": cs.delay[2],
                       "delay_max": cs.delay[3], "hint_violations": cs.hint_violations}),
            );
        }
        out.push(json!({
            "policy": run.name, "requests_mean": s.requests_mean, "requests_p99": s.requests_p99,
            "delay_p50": s.delay[0], "delay_p95": s.delay[1], "delay_p99": s.delay[2],
            "delay_max": s.delay[3], "hint_violations": s.hint_violations, "peak_rps": s.peak,
            "budget_overruns": s.overruns, "per_class": per_class,
        }));
    }
    println!("\n### Per kind of job: requests/op mean, delay p99 s\n");
    print!("| policy |");
    for c in Class::ALL {
        print!(" {} |", c.name());
    }
    println!("\n|---|---|---|---|---|");
    for run in &runs {
        print!("| {} |", run.name);
        for c in Class::ALL {
            let s = summarize(run, &jobs, Some(c));
            print!(" {:.1} req, {:.1} s |", s.requests_mean, s.delay[2]);
        }
        println!();
    }
    let h = summarize(&runs[0], &jobs, None);
    let g = summarize(&runs[4], &jobs, None);
    let f1 = summarize(&runs[1], &jobs, None);
    let verdict = json!({
        "requests_vs_google_api_core": h.requests_mean / g.requests_mean,
        "delay_p99_vs_google_api_core_s": h.delay[2] - g.delay[2],
        "fewer_requests_than_fixed_1s": f1.requests_mean / h.requests_mean,
        "hint_violations": h.hint_violations,
        "budget_overruns": h.overruns,
    });
    println!(
        "\nhookshim vs google-api-core: {:.2}× the requests (target ≤ 0.5), p99 delay {:+.1} s (target ≤ 0); {:.0}× fewer requests than fixed 1 s (target ≥ 20); {} hint violations, {} budget overruns (targets 0).",
        h.requests_mean / g.requests_mean,
        h.delay[2] - g.delay[2],
        f1.requests_mean / h.requests_mean,
        h.hint_violations,
        h.overruns
    );
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let doc = json!({"benchmark": "policy", "seed": args.seed, "ops": jobs.len(), "hours": args.hours,
                     "mix": mix, "policies": out, "verdict": verdict});
    std::fs::write(&args.json, serde_json::to_vec_pretty(&doc).expect("JSON"))
        .map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    println!("wrote {}", args.json.display());
    Ok(())
}
