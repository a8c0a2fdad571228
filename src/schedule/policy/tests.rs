use super::*;
use reqwest::header::HeaderValue;
use std::time::SystemTime;

fn cfg() -> PollConfig {
    PollConfig {
        initial: Duration::from_secs(1),
        multiplier: 2.0,
        max: Duration::from_secs(30),
        jitter: 0.1,
        deadline: Duration::from_secs(3600),
        ..PollConfig::general()
    }
}

#[test]
fn backoff_grows_and_caps() {
    let c = cfg();
    assert_eq!(backoff(&c, 0, 0.0), Duration::from_secs(1));
    assert_eq!(backoff(&c, 3, 0.0), Duration::from_secs(8));
    assert_eq!(backoff(&c, 40, 0.0), Duration::from_secs(30));
    assert_eq!(backoff(&c, 40, 1.0), Duration::from_secs(33));
    assert_eq!(backoff(&c, 40, -1.0), Duration::from_secs(27));
}

#[test]
fn hints_take_the_longest_and_are_clamped() {
    let now = Timestamp::from_system(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let mut h = HeaderMap::new();
    assert_eq!(parse_hint(&h, now, HINT_MAX), None);
    h.insert("retry-after", HeaderValue::from_static("7"));
    h.insert("retry-after-ms", HeaderValue::from_static("2500"));
    assert_eq!(parse_hint(&h, now, HINT_MAX), Some(Duration::from_secs(7)));
    let date = httpdate::fmt_http_date(now.to_system() + Duration::from_secs(120));
    h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
    assert_eq!(
        parse_hint(&h, now, HINT_MAX),
        Some(Duration::from_secs(120))
    );
    h.insert("retry-after", HeaderValue::from_static("99999999"));
    assert_eq!(parse_hint(&h, now, HINT_MAX), Some(HINT_MAX));
}

#[test]
fn hint_pushes_later_never_earlier_and_deadline_caps() {
    let now = Timestamp(10_000);
    let deadline = Timestamp(100_000);
    assert_eq!(
        next_poll_at(
            now,
            Duration::from_secs(5),
            Some(Duration::from_secs(1)),
            deadline
        ),
        Timestamp(15_000)
    );
    assert_eq!(
        next_poll_at(
            now,
            Duration::from_secs(5),
            Some(Duration::from_secs(20)),
            deadline
        ),
        Timestamp(30_000)
    );
    assert_eq!(
        next_poll_at(now, Duration::from_secs(500), None, deadline),
        deadline
    );
}

#[test]
fn callback_retries_follow_the_schedule_then_stop() {
    let s = [Duration::from_secs(5), Duration::from_secs(300)];
    assert_eq!(
        callback_retry_delay(&s, 1, None, 0.0),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        callback_retry_delay(&s, 2, None, 1.0),
        Some(Duration::from_secs(360))
    );
    assert_eq!(
        callback_retry_delay(&s, 2, Some(Duration::from_secs(900)), 0.0),
        Some(Duration::from_secs(900))
    );
    assert_eq!(callback_retry_delay(&s, 3, None, 0.0), None);
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn hint(pairs: &[(&'static str, &'static str)]) -> Option<Duration> {
    let now = Timestamp::from_system(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    parse_hint(&headers(pairs), now, HINT_MAX)
}

#[test]
fn every_known_hint_header_is_read() {
    let s = Duration::from_secs;
    assert_eq!(
        hint(&[("x-ms-retry-after-ms", "2500")]),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        hint(&[("openai-poll-after-ms", "1500")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(hint(&[("x-poll-interval", "60")]), Some(s(60)));
    // OpenAI may send a fractional Retry-After (openai-python `_base_client.py`,
    // `_parse_retry_after_header`: `float(retry_header)`).
    assert_eq!(
        hint(&[("retry-after", "0.5")]),
        Some(Duration::from_millis(500))
    );
    assert_eq!(hint(&[("retry-after", "2")]), Some(s(2)));
    assert_eq!(hint(&[("retry-after", "-1")]), None);
    assert_eq!(hint(&[("retry-after", "NaN")]), None);
    assert_eq!(hint(&[("ratelimit", "\"default\";r=0;t=30")]), Some(s(30)));
    assert_eq!(
        hint(&[("ratelimit", "limit=10, remaining=0, reset=12")]),
        Some(s(12))
    );
    assert_eq!(
        hint(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "9")]),
        Some(s(9))
    );
    // Quota left: no hint. Garbage: no hint.
    assert_eq!(hint(&[("ratelimit", "\"default\";r=5;t=30")]), None);
    assert_eq!(
        hint(&[("ratelimit", "limit=10, remaining=3, reset=12")]),
        None
    );
    assert_eq!(
        hint(&[("ratelimit-remaining", "2"), ("ratelimit-reset", "9")]),
        None
    );
    assert_eq!(
        hint(&[("x-poll-interval", "soon"), ("retry-after-ms", "-5")]),
        None
    );
}

#[test]
fn the_longest_hint_wins_but_retry_after_beats_ratelimit() {
    let s = Duration::from_secs;
    // Several quota items: the longest exhausted one.
    assert_eq!(
        hint(&[(
            "ratelimit",
            "\"burst\";r=0;t=5, \"day\";r=0;t=40, \"min\";r=3;t=90"
        )]),
        Some(s(40))
    );
    // Retry and poll hints combine by maximum.
    assert_eq!(
        hint(&[("retry-after", "3"), ("openai-poll-after-ms", "8000")]),
        Some(s(8))
    );
    // Retry-After present: RateLimit is ignored even when it asks for longer.
    assert_eq!(
        hint(&[("retry-after", "5"), ("ratelimit", "\"default\";r=0;t=60")]),
        Some(s(5))
    );
    assert_eq!(
        hint(&[
            ("retry-after-ms", "500"),
            ("ratelimit", "\"default\";r=0;t=60")
        ]),
        Some(Duration::from_millis(500))
    );
    // A poll hint still counts next to RateLimit.
    assert_eq!(
        hint(&[
            ("x-poll-interval", "90"),
            ("ratelimit", "\"default\";r=0;t=60")
        ]),
        Some(s(90))
    );
}

#[test]
fn hints_are_clamped_to_the_configured_maximum() {
    let now = Timestamp::from_system(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let h = headers(&[("retry-after", "86400")]);
    assert_eq!(
        parse_hint(&h, now, Duration::from_secs(600)),
        Some(Duration::from_secs(600))
    );
    let h = headers(&[("openai-poll-after-ms", "1e300")]);
    assert_eq!(
        parse_hint(&h, now, Duration::from_secs(600)),
        Some(Duration::from_secs(600))
    );
}

fn media() -> PollConfig {
    PollConfig {
        jitter: 0.0,
        ..PollConfig::media()
    }
}

#[test]
fn pace_smooths_the_rate_and_counts_stalls() {
    let mut pace = Pace::default();
    pace.observe(Some(0.1), Timestamp(0));
    assert_eq!(pace.rate, None);
    pace.observe(Some(0.2), Timestamp(10_000)); // 0.01/s
    assert!((pace.rate.unwrap() - 0.01).abs() < 1e-12);
    pace.observe(Some(0.5), Timestamp(20_000)); // 0.03/s, smoothed with 0.01
    assert!((pace.rate.unwrap() - 0.02).abs() < 1e-12);
    assert_eq!(pace.stalled, 0);
    pace.observe(Some(0.5), Timestamp(25_000));
    pace.observe(None, Timestamp(26_000)); // no reading: not a stall
    assert_eq!(pace.stalled, 1);
    // 0.5 left at 0.02/s = 25 s after t=20 s; 5 s have passed.
    assert!((pace.eta_secs(Timestamp(25_000)).unwrap() - 20.0).abs() < 1e-9);
}

#[test]
fn an_estimate_replaces_the_blind_schedule_and_closes_in_on_it() {
    let p = media();
    let mut pace = Pace::default();
    pace.observe(Some(0.0), Timestamp(0));
    pace.observe(Some(0.5), Timestamp(100_000)); // 0.005/s: 100 s left
    let now = Timestamp(100_000);
    let (wait, rule) = interval(&p, &pace, 20, now, 0.0);
    assert_eq!(rule, Rule::Eta);
    assert_eq!(wait, Duration::from_secs(50), "half of the estimated 100 s");
    // Far away: capped at eta_max (60 s for media), not at max (15 s).
    let mut slow = Pace::default();
    slow.observe(Some(0.0), Timestamp(0));
    slow.observe(Some(0.1), Timestamp(1_000_000)); // 9000 s left, watched 1000 s
    assert_eq!(
        interval(&p, &slow, 20, Timestamp(1_000_000), 0.0).0,
        p.eta_max
    );
    // Watched only briefly: never trusted further ahead than it was watched.
    let mut young = Pace::default();
    young.observe(Some(0.0), Timestamp(0));
    young.observe(Some(0.01), Timestamp(5_000)); // 495 s left, watched 5 s
    assert_eq!(
        interval(&p, &young, 20, Timestamp(5_000), 0.0).0,
        Duration::from_secs(5)
    );
    // Close: never below initial.
    let mut near = Pace::default();
    near.observe(Some(0.0), Timestamp(0));
    near.observe(Some(0.99), Timestamp(100_000));
    assert_eq!(
        interval(&p, &near, 20, Timestamp(100_000), 0.0).0,
        p.initial
    );
    // Overdue (the estimate passed): initial as well.
    assert_eq!(
        interval(&p, &pace, 20, Timestamp(500_000), 0.0).0,
        p.initial
    );
}

#[test]
fn complete_progress_polls_on_the_finalizing_cadence() {
    let p = PollConfig {
        finalizing: Duration::from_secs(3),
        ..media()
    };
    let mut pace = Pace::default();
    pace.observe(Some(1.0), Timestamp(0));
    assert_eq!(
        interval(&p, &pace, 30, Timestamp(1), 0.0),
        (Duration::from_secs(3), Rule::Finalizing)
    );
    // A long finalizing phase backs off, up to `max`.
    pace.observe(Some(1.0), Timestamp(2));
    pace.observe(Some(1.0), Timestamp(3));
    assert_eq!(
        interval(&p, &pace, 30, Timestamp(3), 0.0),
        (Duration::from_secs_f64(6.75), Rule::Finalizing)
    );
    for t in 4..20 {
        pace.observe(Some(1.0), Timestamp(t));
    }
    assert_eq!(interval(&p, &pace, 30, Timestamp(20), 0.0).0, p.max);
}

#[test]
fn stalled_progress_or_no_progress_falls_back_to_the_base_schedule() {
    let p = media();
    let base = backoff(&p, 4, 0.0);
    assert_eq!(
        interval(&p, &Pace::default(), 4, Timestamp(0), 0.0),
        (base, Rule::Base)
    );
    let mut pace = Pace::default();
    pace.observe(Some(0.0), Timestamp(0));
    pace.observe(Some(0.1), Timestamp(10_000));
    for i in 0..p.stall_polls {
        assert_eq!(interval(&p, &pace, 4, Timestamp(10_000), 0.0).1, Rule::Eta);
        pace.observe(Some(0.1), Timestamp(11_000 + u64::from(i)));
    }
    assert_eq!(
        interval(&p, &pace, 4, Timestamp(20_000), 0.0),
        (base, Rule::Base)
    );
    // New progress trusts the estimate again.
    pace.observe(Some(0.2), Timestamp(30_000));
    assert_eq!(interval(&p, &pace, 4, Timestamp(30_000), 0.0).1, Rule::Eta);
    // eta = false: always the base schedule.
    let off = PollConfig { eta: false, ..p };
    assert_eq!(
        interval(&off, &pace, 4, Timestamp(30_000), 0.0),
        (base, Rule::Base)
    );
}

#[test]
fn aimd_halves_once_per_event_floors_and_recovers_to_the_ceiling() {
    let mut a = Aimd::new(10.0, 1.0, Duration::from_secs(10), Timestamp(0));
    assert_eq!(a.rate(Timestamp(0)), 10.0);
    assert!(a.throttled(Timestamp(1_000)));
    assert_eq!(a.rate(Timestamp(1_000)), 5.0);
    // A second rejection within the cooldown is the same event.
    assert!(!a.throttled(Timestamp(1_500)));
    assert_eq!(a.rate(Timestamp(1_500)), 5.0);
    assert!(a.throttled(Timestamp(2_000)));
    assert!(a.throttled(Timestamp(3_000)));
    assert!(a.throttled(Timestamp(4_000)));
    assert_eq!(a.rate(Timestamp(4_000)), 1.0, "never below the floor");
    // +1/s (a tenth of the ceiling) per 10 s of quiet.
    assert_eq!(a.rate(Timestamp(13_999)), 1.0);
    assert_eq!(a.rate(Timestamp(14_000)), 2.0);
    assert_eq!(a.rate(Timestamp(44_000)), 5.0);
    assert_eq!(
        a.rate(Timestamp(10_000_000)),
        10.0,
        "never above the ceiling"
    );
}

mod plan_rules {
    use super::super::*;
    use crate::schedule::prior::Prior;

    const T0: Timestamp = Timestamp(1_000_000);

    fn targeted(t: u64) -> PollConfig {
        PollConfig {
            initial: Duration::from_secs(10),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.0,
            eta_max: Duration::from_secs(3600),
            target_delay: Some(Duration::from_secs(t)),
            ..PollConfig::general()
        }
    }

    /// Progress `p` at `now`, moving at `rate` per second, watched since `T0`.
    fn pace(p: f64, rate: Option<f64>, now: Timestamp) -> Pace {
        Pace {
            progress: Some(p),
            at: Some(now),
            rate,
            stalled: 0,
            since: Some(T0),
        }
    }

    fn at(secs: u64) -> Timestamp {
        T0.plus(Duration::from_secs(secs))
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    /// A warm prior: 100 jobs evenly spread (log scale) over 100–200 s.
    fn warm() -> Prior {
        let mut p = Prior::default();
        for i in 0..100 {
            p.record(100.0 * 2f64.powf(((i * 37) % 100) as f64 / 100.0));
        }
        p
    }

    #[test]
    fn far_from_the_end_a_target_polls_at_the_end_minus_the_target() {
        let c = targeted(10);
        let now = at(100);
        // eta = 0.5 / 0.005 = 100 s; watched for 100 s. The end minus the target is 90 s
        // away, but a jump covers at most ETA_FAR of the estimate: 75 s.
        let (w, rule) = plan(&c, &pace(0.5, Some(0.005), now), 3, now, T0, None, 0.0);
        assert_eq!(rule, Rule::Target);
        assert!((secs(w) - 75.0).abs() < 0.01, "{w:?}");
        // eta = 1000 s, 30 s before the end: the end minus the target.
        let (w, _) = plan(&c, &pace(0.5, Some(0.0005), now), 3, now, T0, None, 0.0);
        assert!((secs(w) - 400.0).abs() < 0.01, "{w:?}");
        // Today's rule halves toward it instead.
        let untargeted = PollConfig {
            target_delay: None,
            ..c
        };
        let (w0, _) = plan(
            &untargeted,
            &pace(0.5, Some(0.005), now),
            3,
            now,
            T0,
            None,
            0.0,
        );
        assert!((secs(w0) - 50.0).abs() < 0.01, "{w0:?}");
        // eta = 40 s: a job ending at ETA_FAR of it (30 s) would be seen 12.05 s late from
        // just past the end, more than T: the end minus the target (30 s).
        let (w, _) = plan(&c, &pace(0.6, Some(0.01), now), 3, now, T0, None, 0.0);
        assert!((secs(w) - 30.0).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn near_the_end_a_target_polls_just_past_it_without_the_initial_floor() {
        let c = targeted(10);
        let now = at(100);
        // eta = 4 s: just past it, although `initial` is 10 s.
        let (w, rule) = plan(&c, &pace(0.96, Some(0.01), now), 3, now, T0, None, 0.0);
        assert_eq!(rule, Rule::Target);
        assert!((secs(w) - 4.25).abs() < 0.01, "{w:?}");
        // eta = 30 s: a job ending at ETA_FAR of it (22.5 s) is still seen within T (9.05 s
        // late) from just past the end, so the poll goes straight there, past the target.
        let (w, _) = plan(&c, &pace(0.7, Some(0.01), now), 3, now, T0, None, 0.0);
        assert!((secs(w) - 31.55).abs() < 0.01, "{w:?}");
        // eta = 35 s: 10.55 s late at worst, more than T: not yet; the far rule (25 s).
        let (w, _) = plan(&c, &pace(0.65, Some(0.01), now), 3, now, T0, None, 0.0);
        assert!((secs(w) - 25.0).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn before_a_rate_the_estimate_comes_from_the_progress_since_creation() {
        let c = targeted(10);
        let now = at(10);
        // A fifth done after 10 s: 40 s left, so the end minus the target is 30 s away.
        let (w, rule) = plan(&c, &pace(0.2, None, now), 0, now, T0, None, 0.0);
        assert_eq!(rule, Rule::Target);
        assert!((secs(w) - 30.0).abs() < 0.01, "{w:?}");
        // A quarter after 10 s: 30 s left. From a rate that would be near enough to go straight
        // past the end; from one reading (steps of progress make it late) it is the far rule.
        let (w, _) = plan(&c, &pace(0.25, None, now), 0, now, T0, None, 0.0);
        assert!((secs(w) - 20.0).abs() < 0.01, "{w:?}");
        // 1 % after 20 s says 1980 s left, but a step of progress that small is no
        // estimate: the jump is at most ETA_TRUST × the job's age (80 s).
        let now = at(20);
        let (w, _) = plan(&c, &pace(0.01, None, now), 0, now, T0, None, 0.0);
        assert!((secs(w) - 80.0).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn blind_or_finalizing_no_gap_is_longer_than_the_target() {
        let c = targeted(10);
        let now = at(1000);
        let blind = Pace::default();
        // Cold, blind: the backoff (30 s by now) is cut to the target.
        let (w, rule) = plan(&c, &blind, 10, now, T0, None, 0.0);
        assert_eq!((w, rule), (Duration::from_secs(10), Rule::Base));
        let (w, rule) = plan(&c, &pace(1.0, Some(0.01), now), 10, now, T0, None, 0.0);
        assert_eq!(rule, Rule::Finalizing);
        assert!(w <= Duration::from_secs(10), "{w:?}");
        // A target longer than `max` lets the blind schedule stay at `max` (today's).
        let (w, _) = plan(&targeted(60), &blind, 10, now, T0, None, 0.0);
        assert_eq!(w, Duration::from_secs(30));
    }

    #[test]
    fn without_target_or_prior_the_plan_is_todays_interval() {
        let c = PollConfig {
            target_delay: None,
            ..targeted(10)
        };
        for (p, n) in [
            (Pace::default(), 0),
            (Pace::default(), 7),
            (pace(0.5, Some(0.005), at(100)), 3),
            (pace(0.2, None, at(100)), 1),
            (pace(1.0, Some(0.01), at(100)), 4),
        ] {
            assert_eq!(
                plan(&c, &p, n, at(100), T0, None, 0.3),
                interval(&c, &p, n, at(100), 0.3)
            );
        }
        // A cold prior changes nothing either.
        let mut cold = Prior::default();
        cold.record(50.0);
        assert_eq!(
            plan(&c, &Pace::default(), 2, at(5), T0, Some(&cold), 0.0),
            interval(&c, &Pace::default(), 2, at(5), 0.0)
        );
        assert_eq!(first_wait(&c, Some(&cold), 0.0), backoff(&c, 0, 0.0));
    }

    #[test]
    fn a_warm_prior_starts_where_jobs_finish_and_follows_their_hazard() {
        let prior = warm();
        let c = PollConfig {
            initial: Duration::from_secs(1),
            target_delay: None,
            ..targeted(10)
        };
        // The first poll near the shortest jobs (100 s, within a bucket), not after `initial`.
        let first = secs(first_wait(&c, Some(&prior), 0.0));
        assert!((100.0 / 1.5..=101.0).contains(&first), "{first}");
        // Blind, inside the mass: half the running jobs finish in the gap (short gaps).
        let (w, rule) = plan(&c, &Pace::default(), 1, at(100), T0, Some(&prior), 0.0);
        assert_eq!(rule, Rule::Prior);
        assert!(secs(w) > 20.0 && secs(w) <= 30.0, "{w:?}");
        let (w2, _) = plan(&c, &Pace::default(), 2, at(180), T0, Some(&prior), 0.0);
        assert!(w2 < w, "later, fewer jobs left to finish: {w2:?} vs {w:?}");
        // With a target, never longer than it.
        let (w, _) = plan(
            &targeted(10),
            &Pace::default(),
            1,
            at(100),
            T0,
            Some(&prior),
            0.0,
        );
        assert!(w <= Duration::from_secs(10), "{w:?}");
        // With progress and no target, today's estimate rules; the prior does not plan.
        let moving = pace(0.5, Some(0.005), at(100));
        assert_eq!(
            plan(&c, &moving, 3, at(100), T0, Some(&prior), 0.0),
            interval(&c, &moving, 3, at(100), 0.0)
        );
        // Past the learned tail: the backoff again.
        let (_, rule) = plan(&c, &Pace::default(), 9, at(1000), T0, Some(&prior), 0.0);
        assert_eq!(rule, Rule::Base);
    }
}
