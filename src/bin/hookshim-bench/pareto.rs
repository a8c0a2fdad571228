//! Benchmark 1b, `policy --pareto`: requests per job against detection delay on workloads the
//! main policy benchmark does not cover — short jobs (5–60 s, log-uniform, half with progress),
//! a workload whose durations shift halfway, the long one, and an upstream that answers 429
//! above its capacity (AIMD exercised) — for hookshim at several `poll.target_delay` values,
//! with and without learned priors, and the SDK pollers. Simulated time, one event queue per
//! policy; hookshim's side runs the real code (`schedule::first_poll_with`,
//! `schedule::apply_outcome_with` on real `Operation` records, `schedule::Prior`, `Aimd`).
//! Learning is causal: a completion enters the prior only once hookshim has detected it.
//! The first [`WARM_UP`] jobs (by start) train the prior and are left out of every figure.
//! Writes one SVG per workload (requests/op against p99 delay).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hookshim::clock::Timestamp;
use hookshim::ids::OperationId;
use hookshim::operation::{NewOperation, Operation};
use hookshim::schedule::{
    Aimd, PollConfig, PollOutcome, PollRules, Prior, Reading, apply_outcome_with, first_poll_with,
};
use hookshim::upstream::{Observation, ObservedState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::{Value, json};

/// Jobs (by start) that only train the prior.
pub const WARM_UP: usize = 100;

#[derive(Clone, Copy)]
struct Job {
    start: f64,
    duration: f64,
    progress: bool,
}

impl Job {
    fn end(&self) -> f64 {
        self.start + self.duration
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Short,
    Shift,
    Long,
    Throttled,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Short,
        Workload::Shift,
        Workload::Long,
        Workload::Throttled,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Short => "short",
            Workload::Shift => "shift",
            Workload::Long => "long",
            Workload::Throttled => "throttled",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Short => "short jobs: 5–60 s log-uniform, half report linear progress",
            Workload::Shift => {
                "shift: short jobs, then from the halfway point every job takes 4× as long (20–240 s)"
            }
            Workload::Long => {
                "long jobs: log-normal, median 240 s, σ 0.8, 10 s – 1 h, half report linear progress"
            }
            Workload::Throttled => {
                "throttled: the short jobs, 2× as many, against an upstream that answers 429 above 5 requests/s"
            }
        }
    }

    /// Requests per second the upstream serves before answering 429.
    fn capacity(self) -> Option<usize> {
        (self == Workload::Throttled).then_some(5)
    }

    fn jobs(self, seed: u64, ops: usize, hours: f64) -> Vec<Job> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x009a_7e70);
        let ops = if self == Workload::Throttled {
            ops * 2
        } else {
            ops
        };
        let window = hours * 3600.0;
        let mut jobs: Vec<Job> = (0..ops)
            .map(|_| {
                let start = rng.random::<f64>() * window;
                let duration = match self {
                    Workload::Long => LogNormal::new(240f64.ln(), 0.8)
                        .expect("valid log-normal")
                        .sample(&mut rng)
                        .clamp(10.0, 3600.0),
                    _ => 5.0 * 12f64.powf(rng.random::<f64>()),
                };
                let duration = if self == Workload::Shift && start > window / 2.0 {
                    duration * 4.0
                } else {
                    duration
                };
                Job {
                    start,
                    duration,
                    progress: rng.random::<bool>(),
                }
            })
            .collect();
        jobs.sort_by(|a, b| a.start.total_cmp(&b.start));
        jobs
    }
}

#[derive(Clone, Copy)]
enum Policy {
    Hookshim { target: Option<f64>, learn: bool },
    ApiCore,
    Aws,
    Fixed(f64),
}

impl Policy {
    fn name(self) -> String {
        match self {
            Policy::Hookshim {
                target: None,
                learn: false,
            } => "hookshim (today)".into(),
            Policy::Hookshim {
                target: None,
                learn: true,
            } => "hookshim, learned".into(),
            Policy::Hookshim {
                target: Some(t),
                learn,
            } => format!(
                "hookshim, target {t} s{}",
                if learn { ", learned" } else { "" }
            ),
            Policy::ApiCore => "google-api-core".into(),
            Policy::Aws => "AWS waiter".into(),
            Policy::Fixed(s) => format!("fixed {s} s"),
        }
    }

    fn is_hookshim(self) -> bool {
        matches!(self, Policy::Hookshim { .. })
    }

    /// A baseline's n-th sleep (n from 1).
    fn sleep(self, rng: &mut StdRng, n: u32) -> f64 {
        match self {
            Policy::ApiCore => rng.random_range(0.0..=(1.5f64.powi(n as i32 - 1)).min(20.0)),
            Policy::Aws => {
                let hi = (2.0 * 2f64.powi(n as i32 - 1)).min(120.0);
                if hi <= 2.0 {
                    2.0
                } else {
                    rng.random_range(2.0..=hi)
                }
            }
            Policy::Fixed(s) => s,
            Policy::Hookshim { .. } => 0.0,
        }
    }
}

const POLICIES: [Policy; 13] = [
    Policy::Hookshim {
        target: None,
        learn: false,
    },
    Policy::Hookshim {
        target: None,
        learn: true,
    },
    Policy::Hookshim {
        target: Some(5.0),
        learn: true,
    },
    Policy::Hookshim {
        target: Some(10.0),
        learn: true,
    },
    Policy::Hookshim {
        target: Some(15.0),
        learn: true,
    },
    Policy::Hookshim {
        target: Some(17.0),
        learn: true,
    },
    Policy::Hookshim {
        target: Some(30.0),
        learn: true,
    },
    Policy::Hookshim {
        target: Some(15.0),
        learn: false,
    },
    Policy::ApiCore,
    Policy::Aws,
    Policy::Fixed(1.0),
    Policy::Fixed(5.0),
    Policy::Fixed(15.0),
];

/// hookshim's schedule here: the `general` kind with the same 20 s cap as google-api-core.
fn rules(target: Option<f64>) -> PollRules {
    PollRules {
        poll: PollConfig {
            max: Duration::from_secs(20),
            target_delay: target.map(Duration::from_secs_f64),
            ..PollConfig::general()
        },
        not_found_after: 3,
        safety_poll: None,
    }
}

const EPOCH_MS: u64 = 1_800_000_000_000;

fn ms(t: f64) -> Timestamp {
    Timestamp(EPOCH_MS + (t * 1000.0).round() as u64)
}

fn secs(ts: Timestamp) -> f64 {
    (ts.0 - EPOCH_MS) as f64 / 1000.0
}

#[derive(Clone, Copy, Default)]
struct Outcome {
    requests: u32,
    delay: f64,
    rejected: u32,
}

/// The upstream: answers 429 to a request when `capacity` were served in the second before it.
struct Upstream {
    capacity: Option<usize>,
    served: VecDeque<f64>,
}

impl Upstream {
    fn admit(&mut self, t: f64) -> bool {
        let Some(cap) = self.capacity else {
            return true;
        };
        while self.served.front().is_some_and(|s| *s <= t - 1.0) {
            self.served.pop_front();
        }
        if self.served.len() >= cap {
            return false;
        }
        self.served.push_back(t);
        true
    }
}

/// A token bucket at the rate AIMD allows (hookshim's limiter: 10/s, burst 10, floor 1/s).
struct Budget {
    aimd: Aimd,
    tokens: f64,
    at: f64,
}

impl Budget {
    /// Seconds to wait before a request at `t` may go (0: take a token now).
    fn take(&mut self, t: f64) -> f64 {
        let rate = self.aimd.rate(ms(t));
        self.tokens = (self.tokens + (t - self.at) * rate).min(10.0);
        self.at = t;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            0.0
        } else {
            (1.0 - self.tokens) / rate
        }
    }
}

fn simulate(w: Workload, jobs: &[Job], policy: Policy, seed: u64) -> Vec<Outcome> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xba5e);
    let mut out = vec![Outcome::default(); jobs.len()];
    let mut upstream = Upstream {
        capacity: w.capacity(),
        served: VecDeque::new(),
    };
    let mut budget = Budget {
        aimd: Aimd::new(10.0, 1.0, Duration::from_secs(10), ms(0.0)),
        tokens: 10.0,
        at: 0.0,
    };
    let (target, learn) = match policy {
        Policy::Hookshim { target, learn } => (target, learn),
        _ => (None, false),
    };
    let up = rules(target);
    let mut prior = Prior::default();
    // Completions detected but not yet learned, by detection time.
    let mut learned: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut ops: Vec<Option<Operation>> = vec![None; jobs.len()];
    let mut polls = vec![0u32; jobs.len()];
    // Events: (µs, seq, job, is_start).
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    for (i, j) in jobs.iter().enumerate() {
        queue.push(Reverse(((j.start * 1e6) as u64, seq, i, true)));
        seq += 1;
    }
    while let Some(Reverse((at_us, _, i, is_start))) = queue.pop() {
        let t = at_us as f64 / 1e6;
        let job = jobs[i];
        while let Some(Reverse((when, dur_ms))) = learned.peek().copied() {
            if when > at_us {
                break;
            }
            learned.pop();
            prior.record(dur_ms as f64 / 1000.0);
        }
        if is_start {
            let next = if policy.is_hookshim() {
                let now = ms(t);
                let mut op = Operation::new(NewOperation {
                    id: OperationId::from_text(format!("op_{i:026}")),
                    upstream: "sim".into(),
                    operation: format!("j{i}"),
                    metadata: None,
                    callback_url: None,
                    now,
                    first_poll_at: now,
                    deadline_at: now.plus(Duration::from_secs(48 * 3600)),
                    callback_events: Vec::new(),
                });
                let first = first_poll_with(
                    &up,
                    learn.then_some(&prior),
                    now,
                    op.deadline_at,
                    rng.random_range(-1.0..=1.0),
                );
                op.next_poll_at = Some(first);
                ops[i] = Some(op);
                secs(first)
            } else {
                t // the SDKs read the status right away
            };
            queue.push(Reverse(((next * 1e6) as u64, seq, i, false)));
            seq += 1;
            continue;
        }
        if policy.is_hookshim() {
            let wait = budget.take(t);
            if wait > 0.0 {
                queue.push(Reverse((at_us + (wait * 1e6) as u64 + 1, seq, i, false)));
                seq += 1;
                continue;
            }
        }
        out[i].requests += 1;
        let admitted = upstream.admit(t);
        if !admitted {
            out[i].rejected += 1;
        }
        let done = admitted && t >= job.end();
        let next = if let Some(op) = ops[i].as_mut() {
            let now = ms(t);
            let outcome = if !admitted {
                budget.aimd.throttled(now);
                PollOutcome::Transient("upstream answered 429 Too Many Requests".into())
            } else {
                let p = ((t - job.start) / job.duration).clamp(0.0, 1.0);
                PollOutcome::Observed(Observation {
                    state: if done {
                        ObservedState::Succeeded
                    } else {
                        ObservedState::Running
                    },
                    raw_status: Value::from(if done { "done" } else { "running" }),
                    progress: job.progress.then_some(if done {
                        1.0
                    } else {
                        (p * 100.0).floor() / 100.0
                    }),
                    result: None,
                    error: None,
                    expires_at: None,
                })
            };
            apply_outcome_with(
                op,
                &up,
                learn.then_some(&prior),
                &Reading::new(outcome),
                now,
                rng.random_range(-1.0..=1.0),
            );
            if done {
                let len = op
                    .completed_at
                    .map_or(0, |c| c.0.saturating_sub(op.created_at.0));
                learned.push(Reverse((at_us, len)));
                None
            } else {
                op.next_poll_at.map(secs)
            }
        } else if done {
            None
        } else {
            polls[i] += 1;
            Some(t + policy.sleep(&mut rng, polls[i]))
        };
        match next {
            None => out[i].delay = t - job.end(),
            Some(n) => {
                queue.push(Reverse(((n * 1e6) as u64, seq, i, false)));
                seq += 1;
            }
        }
    }
    out
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(((v.len() - 1) as f64) * q).round() as usize]
}

#[derive(Clone, Copy)]
struct Stats {
    req_mean: f64,
    req_median: f64,
    p50: f64,
    p99: f64,
    rejected: f64,
}

fn stats(jobs: &[Job], out: &[Outcome], pick: impl Fn(&Job) -> bool) -> Stats {
    let sel: Vec<&Outcome> = out
        .iter()
        .zip(jobs)
        .skip(WARM_UP)
        .filter(|(_, j)| pick(j))
        .map(|(o, _)| o)
        .collect();
    let n = sel.len().max(1) as f64;
    let mut req: Vec<f64> = sel.iter().map(|o| f64::from(o.requests)).collect();
    let mut delay: Vec<f64> = sel.iter().map(|o| o.delay).collect();
    Stats {
        req_mean: req.iter().sum::<f64>() / n,
        req_median: quantile(&mut req, 0.5),
        p50: quantile(&mut delay, 0.5),
        p99: quantile(&mut delay, 0.99),
        rejected: sel.iter().map(|o| f64::from(o.rejected)).sum::<f64>() / n,
    }
}

/// requests/op against p99 delay, one labelled point per policy.
fn svg(title: &str, points: &[(String, f64, f64, bool)]) -> String {
    let (w, h, l, b) = (720.0, 460.0, 70.0, 50.0);
    let xmax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let ymax = points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| l + (w - l - 20.0) * (v.max(0.0).ln_1p() / xmax.ln_1p());
    let y = |v: f64| h - b - (h - b - 40.0) * (v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="40" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b,
        w - 20.0,
        h - b,
        h - b
    );
    for tick in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0] {
        if tick <= xmax {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{tick}</text>"#,
                x(tick),
                h - b + 16.0
            );
        }
    }
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            l - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">requests per job (mean, log scale)</text>"#,
        (w + l) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">p99 detection delay (s)</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (name, rx, ry, ours) in points {
        let color = if *ours { "#1f77b4" } else { "#d62728" };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}">{name}</text>"#,
            x(*rx),
            y(*ry),
            x(*rx) + 6.0,
            y(*ry) - 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Run every workload; print the tables, write the SVGs into `svg_dir`; return the JSON.
pub fn run(seed: u64, ops: usize, svg_dir: &Path) -> Result<Value, String> {
    std::fs::create_dir_all(svg_dir)
        .map_err(|e| format!("cannot create {}: {e}", svg_dir.display()))?;
    let mut all = Vec::new();
    for w in Workload::ALL {
        let hours = if w == Workload::Long { 4.0 } else { 1.0 };
        let jobs = w.jobs(seed, ops, hours);
        println!(
            "\n### {} ({} jobs over {hours} h, seed {seed}, first {WARM_UP} are warm-up)\n",
            w.describe(),
            jobs.len()
        );
        println!(
            "| policy | requests/op | delay p50 / p99 s | with progress: req mean / median, delay p50 / p99 s | blind: req mean, delay p50 / p99 s | 429s/op |"
        );
        println!("|---|---|---|---|---|---|");
        let mut points = Vec::new();
        let mut rows = Vec::new();
        let mut api_core = None;
        for p in POLICIES {
            let out = simulate(w, &jobs, p, seed);
            let a = stats(&jobs, &out, |_| true);
            let pr = stats(&jobs, &out, |j| j.progress);
            let bl = stats(&jobs, &out, |j| !j.progress);
            if matches!(p, Policy::ApiCore) {
                api_core = Some((a, pr, bl));
            }
            println!(
                "| {} | {:.2} | {:.1} / {:.1} | {:.2} / {:.0}, {:.1} / {:.1} | {:.2}, {:.1} / {:.1} | {:.2} |",
                p.name(),
                a.req_mean,
                a.p50,
                a.p99,
                pr.req_mean,
                pr.req_median,
                pr.p50,
                pr.p99,
                bl.req_mean,
                bl.p50,
                bl.p99,
                a.rejected
            );
            points.push((p.name(), a.req_mean, a.p99, p.is_hookshim()));
            let j = |s: Stats| json!({"requests_mean": s.req_mean, "requests_median": s.req_median, "delay_p50": s.p50, "delay_p99": s.p99, "rejected_per_op": s.rejected});
            rows.push((p, a, pr, bl));
            all.push(json!({"workload": w.name(), "policy": p.name(), "all": j(a), "progress": j(pr), "blind": j(bl)}));
        }
        if let Some((ga, gp, gb)) = api_core {
            println!("\nAgainst google-api-core (goal: ≤ 0.5× the requests, p99 no worse):\n");
            println!("| policy | all: req ratio, p99 Δ s | with progress | blind |");
            println!("|---|---|---|---|");
            for (p, a, pr, bl) in rows.iter().filter(|r| r.0.is_hookshim()) {
                let c = |x: &Stats, g: &Stats| {
                    format!("{:.2}×, {:+.1}", x.req_mean / g.req_mean, x.p99 - g.p99)
                };
                println!(
                    "| {} | {} | {} | {} |",
                    p.name(),
                    c(a, &ga),
                    c(pr, &gp),
                    c(bl, &gb)
                );
            }
        }
        let file = svg_dir.join(format!("policy-{}.svg", w.name()));
        std::fs::write(&file, svg(w.describe(), &points))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        println!("\nwrote {}", file.display());
    }
    Ok(
        json!({"benchmark": "policy-pareto", "seed": seed, "ops": ops, "warm_up": WARM_UP, "rows": all}),
    )
}
