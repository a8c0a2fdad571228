//! Human output of `hookshim ops`: aligned tables and an operation's timeline. Pure: JSON in,
//! text out.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Longest cell shown; longer values are cut with `…`.
const CELL_MAX: usize = 48;

fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > CELL_MAX {
        let cut: String = s.chars().take(CELL_MAX - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// A page of `GET /v1/operations`.
pub fn list(page: &Value) -> String {
    let empty = Vec::new();
    let ops = page["operations"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            vec![
                cell(&o["id"]),
                cell(&o["upstream"]),
                cell(&o["operation"]),
                cell(&o["status"]),
                cell(&o["delivery"]["state"]),
                cell(&o["delivery"]["attempts"]),
                cell(&o["created_at"]),
                cell(&o["completed_at"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "UPSTREAM",
            "OPERATION",
            "STATUS",
            "DELIVERY",
            "ATTEMPTS",
            "CREATED",
            "COMPLETED",
        ],
        &rows,
    );
    out.push_str(&format!("{} operation(s)\n", ops.len()));
    if let Some(next) = page["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {next}\n"));
    }
    out
}

/// What happened to an operation, in time order, from its record.
pub fn timeline(op: &Value) -> Vec<(String, String)> {
    let mut events: Vec<(String, String)> = Vec::new();
    let mut at = |t: &Value, what: String| {
        if let Some(t) = t.as_str() {
            events.push((t.to_string(), what));
        }
    };
    at(
        &op["created_at"],
        format!(
            "registered: {} {}",
            cell(&op["upstream"]),
            cell(&op["operation"])
        ),
    );
    if let Some(t) = op["webhook_at"].as_str() {
        at(&json!(t), "webhook received".into());
    }
    let runs = op["poll_log"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for run in runs {
        let found = match run["result"].as_str() {
            Some("status") => cell(&run["upstream_status"]),
            Some("not_modified") => "not modified".into(),
            Some("not_found") => "not found".into(),
            _ => format!("failed: {}", run["error"].as_str().unwrap_or("-")),
        };
        let n = run["polls"].as_u64().unwrap_or(1);
        let what = if n == 1 {
            format!("status read: {found}")
        } else {
            format!("{n} status reads until {}: {found}", cell(&run["last_at"]))
        };
        at(&run["first_at"], what);
    }
    let polls = op["polls"].as_u64().unwrap_or(0);
    if polls > 0 && runs.is_empty() {
        let last_error = match op["last_poll_error"].as_str() {
            Some(e) => format!(", last error: {e}"),
            None => String::new(),
        };
        let when = op["upstream_body_meta"]["at"]
            .as_str()
            .or(op["completed_at"].as_str())
            .or(op["updated_at"].as_str());
        at(
            &json!(when),
            format!(
                "{polls} status read(s), upstream status {}{last_error}",
                cell(&op["upstream_status"])
            ),
        );
    }
    if op["completed_at"].is_string() {
        at(
            &op["completed_at"],
            format!(
                "ended {} (detected via {})",
                cell(&op["status"]),
                cell(&op["detected_via"])
            ),
        );
    }
    for a in op["delivery"]["history"].as_array().into_iter().flatten() {
        let answer = match (a["status"].as_u64(), a["error"].as_str()) {
            (Some(s), None) => format!("answered {s}"),
            (Some(s), Some(e)) => format!("answered {s}: {e}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => "no answer".into(),
        };
        at(
            &a["at"],
            format!(
                "callback attempt: {answer} ({} ms)",
                cell(&a["duration_ms"])
            ),
        );
    }
    if let Some(t) = op["delivery"]["delivered_at"].as_str() {
        at(&json!(t), "callback delivered".into());
    }
    if op["delivery"]["state"] == "pending" {
        at(
            &op["delivery"]["next_attempt_at"],
            "next callback attempt due".into(),
        );
    } else if op["next_poll_at"].is_string() && !op["completed_at"].is_string() {
        at(&op["next_poll_at"], "next status read due".into());
    }
    // RFC 3339 UTC with milliseconds sorts as text; a stable sort keeps the order above for
    // events at the same millisecond.
    events.sort_by(|a, b| a.0.cmp(&b.0));
    events
}

/// One record and its timeline.
pub fn show(op: &Value) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("id", &op["id"]),
        ("upstream", &op["upstream"]),
        ("operation", &op["operation"]),
        ("status", &op["status"]),
        ("upstream status", &op["upstream_status"]),
        ("progress", &op["progress"]),
        ("callback url", &op["callback_url"]),
        ("deadline", &op["deadline_at"]),
        ("delivery", &op["delivery"]["state"]),
        ("attempts", &op["delivery"]["attempts"]),
        ("last error", &op["delivery"]["last_error"]),
        ("metadata", &op["metadata"]),
    ] {
        out.push_str(&format!("{k:<16}{}\n", cell(v)));
    }
    out.push_str("\ntimeline\n");
    let rows: Vec<Vec<String>> = timeline(op).into_iter().map(|(t, e)| vec![t, e]).collect();
    for r in rows {
        out.push_str(&format!("  {}  {}\n", r[0], r[1]));
    }
    out
}

/// A bulk redelivery's answer.
pub fn bulk(done: &Value) -> String {
    let mut out = format!("redelivered {}\n", cell(&done["redelivered"]));
    for id in done["ids"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", cell(id)));
    }
    if let Some(next) = done["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {next}\n"));
    }
    out
}

/// One sample of the Prometheus text format: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// Per upstream: operations pending and running (from the store), finished since start by
/// status, the configured and current rates; callbacks pending and failed.
pub fn stats_value(upstreams: &Value, metrics: &str) -> Value {
    let mut per: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for (name, u) in upstreams["upstreams"].as_object().into_iter().flatten() {
        let e = per.entry(name.clone()).or_default();
        e.insert("rate_per_second".into(), u["rate_per_second"].clone());
        e.insert(
            "current_rate_per_second".into(),
            u["current_rate_per_second"].clone(),
        );
    }
    let mut callbacks = serde_json::Map::new();
    for (name, labels, value) in samples(metrics) {
        let n = json!(value as u64);
        match name.as_str() {
            "hookshim_operations_by_status" => {
                if let (Some(u), Some(s)) = (labels.get("upstream"), labels.get("status")) {
                    per.entry(u.clone()).or_default().insert(s.clone(), n);
                }
            }
            "hookshim_operations_completed_total" => {
                if let (Some(u), Some(s)) = (labels.get("upstream"), labels.get("status")) {
                    let e = per.entry(u.clone()).or_default();
                    let key = format!("{s}_since_start");
                    let sum = e.get(&key).and_then(Value::as_u64).unwrap_or(0) + value as u64;
                    e.insert(key, json!(sum));
                }
            }
            "hookshim_callbacks" => {
                if let Some(s) = labels.get("state") {
                    callbacks.insert(s.clone(), n);
                }
            }
            _ => {}
        }
    }
    per.remove(crate::metrics::UNKNOWN_UPSTREAM);
    json!({"upstreams": per, "callbacks": callbacks})
}

/// [`stats_value`] as tables.
pub fn stats(v: &Value) -> String {
    const FINISHED: [&str; 5] = ["succeeded", "failed", "cancelled", "expired", "timed_out"];
    let rows: Vec<Vec<String>> = v["upstreams"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, u)| {
            let mut r = vec![name.clone(), cell(&u["pending"]), cell(&u["running"])];
            for s in FINISHED {
                r.push(cell(&u[format!("{s}_since_start")]));
            }
            r.push(cell(&u["rate_per_second"]));
            let now = u["current_rate_per_second"]
                .as_f64()
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into());
            r.push(now);
            r
        })
        .collect();
    let mut out = table(
        &[
            "UPSTREAM",
            "PENDING",
            "RUNNING",
            "SUCCEEDED*",
            "FAILED*",
            "CANCELLED*",
            "EXPIRED*",
            "TIMED_OUT*",
            "RATE/S",
            "NOW/S",
        ],
        &rows,
    );
    out.push_str("* finished since the process started\n");
    out.push_str(&format!(
        "callbacks: {} pending, {} failed\n",
        cell(&v["callbacks"]["pending"]),
        cell(&v["callbacks"]["failed"])
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cut_long_cells() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     BB\nxxxx  1\ny     22\n");
        assert_eq!(cell(&json!("z".repeat(60))).chars().count(), CELL_MAX);
        assert_eq!(cell(&Value::Null), "-");
    }

    #[test]
    fn the_timeline_is_in_time_order() {
        let op = json!({
            "created_at": "2026-01-01T00:00:00.000Z", "upstream": "jobs", "operation": "a",
            "polls": 2, "upstream_status": "done", "status": "succeeded", "detected_via": "poll",
            "completed_at": "2026-01-01T00:00:05.000Z",
            "webhook_at": "2026-01-01T00:00:04.000Z",
            "delivery": {"state": "delivered", "delivered_at": "2026-01-01T00:00:07.000Z",
                "history": [
                    {"at": "2026-01-01T00:00:06.000Z", "status": 500, "error": "receiver answered 500", "duration_ms": 3},
                    {"at": "2026-01-01T00:00:07.000Z", "status": 200, "duration_ms": 2}]}
        });
        let whats: Vec<String> = timeline(&op).into_iter().map(|(_, w)| w).collect();
        let mut with_log = op.clone();
        with_log["poll_log"] = json!([
            {"first_at": "2026-01-01T00:00:01.000Z", "last_at": "2026-01-01T00:00:03.000Z", "polls": 3, "result": "status", "upstream_status": "running"},
            {"first_at": "2026-01-01T00:00:03.500Z", "last_at": "2026-01-01T00:00:03.500Z", "polls": 1, "result": "error", "error": "upstream answered 503"},
        ]);
        let logged: Vec<String> = timeline(&with_log).into_iter().map(|(_, w)| w).collect();
        assert_eq!(
            logged[1],
            "3 status reads until 2026-01-01T00:00:03.000Z: running"
        );
        assert_eq!(logged[2], "status read: failed: upstream answered 503");
        assert!(
            !logged.iter().any(|w| w.starts_with("2 status read(s)")),
            "{logged:?}"
        );
        assert_eq!(
            whats,
            [
                "registered: jobs a",
                "webhook received",
                "2 status read(s), upstream status done",
                "ended succeeded (detected via poll)",
                "callback attempt: answered 500: receiver answered 500 (3 ms)",
                "callback attempt: answered 200 (2 ms)",
                "callback delivered",
            ]
        );
    }

    #[test]
    fn stats_read_the_prometheus_text() {
        let metrics = "# TYPE x gauge\n\
            hookshim_operations_by_status{upstream=\"jobs\",status=\"pending\"} 2\n\
            hookshim_operations_by_status{upstream=\"jobs\",status=\"running\"} 1\n\
            hookshim_operations_completed_total{upstream=\"jobs\",status=\"succeeded\",detected_via=\"poll\"} 3\n\
            hookshim_operations_completed_total{upstream=\"jobs\",status=\"succeeded\",detected_via=\"webhook\"} 4\n\
            hookshim_callbacks{state=\"failed\"} 5\n";
        let ups =
            json!({"upstreams": {"jobs": {"rate_per_second": 10, "current_rate_per_second": 5.0}}});
        let v = stats_value(&ups, metrics);
        assert_eq!(v["upstreams"]["jobs"]["pending"], 2);
        assert_eq!(v["upstreams"]["jobs"]["succeeded_since_start"], 7);
        assert_eq!(v["callbacks"]["failed"], 5);
        let text = stats(&v);
        assert!(text.contains("jobs"), "{text}");
        assert!(text.contains("5.00"), "{text}");
    }
}
