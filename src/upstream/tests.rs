use super::*;

fn preset(name: &str) -> Preset {
    Preset::from_name(name).unwrap()
}

fn generic() -> Mapping {
    Mapping::build(
        preset("generic"),
        MappingInput {
            status_field: Some("/state".into()),
            succeeded: Some(vec!["done".into()]),
            failed: Some(vec!["error".into()]),
            cancelled: Some(vec!["cancelled".into()]),
            expired: Some(vec!["expired".into()]),
            result_field: Some("/output".into()),
            error_field: Some("/error".into()),
            progress_field: Some("/progress".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn generic_maps_each_terminal_list() {
    let m = generic();
    let read = |s: &str| {
        m.read(&json!({"state": s, "output": {"x": 1}}))
            .unwrap()
            .state
    };
    assert_eq!(read("done"), ObservedState::Succeeded);
    assert_eq!(read("error"), ObservedState::Failed);
    assert_eq!(read("cancelled"), ObservedState::Cancelled);
    assert_eq!(read("expired"), ObservedState::Expired);
    assert_eq!(read("whatever"), ObservedState::Running);
    let o = m
        .read(&json!({"state": "done", "output": {"x": 1}, "progress": "0.5"}))
        .unwrap();
    assert_eq!(o.result, Some(json!({"x": 1})));
    assert_eq!(o.progress, Some(0.5));
}

#[test]
fn generic_missing_status_is_an_error_not_a_state() {
    assert!(generic().read(&json!({"nope": 1})).is_err());
    assert!(generic().read(&json!([1, 2])).is_err());
}

#[test]
fn operation_ids_cannot_escape_the_base_url() {
    assert!(validate_operation_id("models/veo/operations/abc").is_ok());
    assert!(validate_operation_id("/etc/passwd").is_err());
    assert!(validate_operation_id("a/../../admin").is_err());
    assert!(validate_operation_id("").is_err());
}

#[test]
fn every_preset_has_a_name_that_round_trips() {
    assert_eq!(Preset::ALL.len(), Preset::NAMES.len());
    for &p in Preset::ALL {
        assert_eq!(Preset::from_name(p.name()), Some(p));
        assert!(Preset::NAMES.contains(&p.name()));
    }
}

#[test]
fn preset_mappings_reject_generic_keys_and_name_what_they_read() {
    let e = Mapping::build(
        preset("openai-batch"),
        MappingInput {
            status_field: Some("/status".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.contains("`status_field` does not apply to preset \"openai-batch\""),
        "{e}"
    );
    assert!(e.contains("request_counts"), "{e}");
}

fn lists(m: MappingInput) -> Result<Mapping, String> {
    Mapping::build(preset("azure-async"), m)
}

#[test]
fn preset_status_lists_extend_and_win_over_the_preset() {
    let m = lists(MappingInput {
        failed: Some(vec!["Rejected".into()]),
        cancelled: Some(vec!["aborted".into()]),
        running: Some(vec!["canceled".into()]),
        succeeded: Some(vec!["Done".into()]),
        ..Default::default()
    })
    .unwrap();
    let read = |b: Value| m.read(&b).unwrap();
    // Extended: values the preset reads as running end the job; compared without case.
    let o = read(json!({"status": "REJECTED"}));
    assert_eq!(o.state, ObservedState::Failed);
    assert_eq!(o.error.unwrap()["code"], "rejected");
    let o = read(json!({"status": "Rejected", "error": {"code": "E1", "message": "m"}}));
    assert_eq!(
        o.error.unwrap()["code"],
        "E1",
        "the upstream's own error is kept"
    );
    assert_eq!(
        read(json!({"status": "Aborted"})).state,
        ObservedState::Cancelled
    );
    let o = read(json!({"status": "Done", "properties": {"x": 1}}));
    assert_eq!(o.state, ObservedState::Succeeded);
    assert_eq!(o.result.unwrap()["properties"]["x"], 1);
    assert_eq!(o.progress, Some(1.0));
    // Overridden: a value the preset ends on is read as running.
    let o = read(json!({"status": "Canceled"}));
    assert_eq!(o.state, ObservedState::Running);
    assert_eq!(o.error, None);
    // The rest is the preset's.
    assert_eq!(
        read(json!({"status": "Succeeded"})).state,
        ObservedState::Succeeded
    );
    assert_eq!(
        read(json!({"status": "Failed"})).state,
        ObservedState::Failed
    );
    let d = m.describe();
    assert_eq!(d["failed"], json!(["Rejected"]));
    assert_eq!(d["running"], json!(["canceled"]));
}

#[test]
fn preset_status_lists_name_a_value_once() {
    let e = lists(MappingInput {
        failed: Some(vec!["X".into()]),
        succeeded: Some(vec!["x".into()]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("`failed`: status value \"X\" is already listed in `succeeded`"),
        "{e}"
    );
    let e = Mapping::build(
        preset("generic"),
        MappingInput {
            status_field: Some("/s".into()),
            succeeded: Some(vec!["ok".into()]),
            failed: Some(vec!["bad".into()]),
            running: Some(vec!["busy".into()]),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.contains("`running` does not apply to preset \"generic\""),
        "{e}"
    );
}

#[test]
fn overrides_replace_the_presets_result_error_and_progress() {
    let m = Mapping::build(
        preset("replicate"),
        MappingInput {
            result_field: Some("/output/0".into()),
            error_field: Some("/logs".into()),
            progress_field: Some("/metrics/pct".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let ok = m
        .read(&json!({"status": "succeeded", "output": ["a", "b"], "metrics": {"pct": 40}}))
        .unwrap();
    assert_eq!(ok.result, Some(json!("a")));
    assert_eq!(ok.progress, Some(0.4));
    let failed = m
        .read(&json!({"status": "failed", "error": "oom", "logs": "killed"}))
        .unwrap();
    assert_eq!(failed.error, Some(json!("killed")));
    assert_eq!(failed.result, None);
}

#[test]
fn counts_accept_numbers_and_int64_strings_only() {
    assert_eq!(count(Some(&json!("12"))), Some(12.0));
    assert_eq!(count(Some(&json!(12))), Some(12.0));
    assert_eq!(count(Some(&json!("twelve"))), None);
    assert_eq!(count(Some(&json!(-1))), None);
    assert_eq!(count(None), None);
    assert_eq!(fraction(3.0, Some(4.0)), Some(0.75));
    assert_eq!(fraction(3.0, Some(0.0)), None);
    assert_eq!(fraction(5.0, Some(4.0)), Some(1.0));
}

#[test]
fn times_parse_rfc3339_and_unix_seconds() {
    assert_eq!(
        rfc3339(Some(&json!("2024-08-21T18:37:24.100435Z"))),
        Some(Timestamp(1_724_265_444_100))
    );
    assert_eq!(
        rfc3339(Some(&json!("2024-08-21T18:37:24Z"))),
        Some(Timestamp(1_724_265_444_000))
    );
    assert_eq!(rfc3339(Some(&json!("soon"))), None);
    assert_eq!(
        unix_seconds(Some(&json!(1_724_265_444))),
        Some(Timestamp(1_724_265_444_000))
    );
}

#[test]
fn upstream_times_out_of_range_are_ignored() {
    for v in [
        json!(99_999_999_999_999u64),
        json!(1e300),
        json!("99999999999999"),
        json!(12),
        json!(-5),
    ] {
        assert_eq!(unix_seconds(Some(&v)), None, "{v}");
    }
    assert_eq!(rfc3339(Some(&json!("1970-01-01T00:00:01Z"))), None);
    assert_eq!(
        rfc3339(Some(&json!("9999-12-31T23:59:59Z"))),
        Some(Timestamp(253_402_300_799_000))
    );
}

#[test]
fn canonical_operations_meet_webhook_ids() {
    let b = preset("gemini-batch");
    assert_eq!(b.canonical_operation("abc"), "batches/abc");
    assert_eq!(b.canonical_operation("batches/abc"), "batches/abc");
    let i = preset("gemini-interaction");
    assert_eq!(i.canonical_operation("interactions/v1_x"), "v1_x");
    assert_eq!(i.canonical_operation("v1_x"), "v1_x");
    assert_eq!(
        preset("openai-batch").canonical_operation("batch_1"),
        "batch_1"
    );
}

#[test]
fn webhook_ids_list_every_registered_form() {
    let ids = preset("gemini-batch").webhook_ids("batch_123456");
    assert_eq!(
        ids.candidates,
        vec!["batches/batch_123456", "batches/123456"]
    );
    assert_eq!(ids.suffix, None);
    let ids = preset("gemini-batch").webhook_ids("operations/9");
    assert_eq!(
        ids.candidates,
        vec!["batches/operations/9", "batches/9", "batches/batch_9"]
    );
    let ids = preset("gemini-interaction").webhook_ids("interactions/v1_x");
    assert_eq!(ids.candidates, vec!["v1_x"]);
    let ids = preset("google-operation").webhook_ids("models/veo-3/operations/x");
    assert_eq!(
        ids.candidates,
        vec!["models/veo-3/operations/x", "operations/x"]
    );
    assert_eq!(ids.suffix.as_deref(), Some("x"));
    let ids = preset("openai-batch").webhook_ids("batch_1");
    assert_eq!(ids.candidates, vec!["batch_1"]);
    assert_eq!(ids.suffix, None);
}

#[test]
fn foreign_event_families_are_told_apart() {
    assert!(preset("openai-batch").foreign_event("response.completed"));
    assert!(!preset("openai-batch").foreign_event("batch.completed"));
    assert!(!preset("openai-batch").foreign_event("batch.something_new"));
    assert!(!preset("generic").foreign_event("anything.at.all"));
    assert!(!preset("replicate").foreign_event("whatever"));
}

#[test]
fn status_urls_stay_under_the_base_url() {
    let base = Url::parse("https://api.example.com/v1/").unwrap();
    let ok = Url::parse("https://api.example.com/v1/batches/x").unwrap();
    assert!(ensure_under(&base, &ok).is_ok());
    for bad in [
        "https://evil.example.com/v1/batches/x",
        "http://api.example.com/v1/batches/x",
        "https://api.example.com:8443/v1/batches/x",
        "https://user:pw@api.example.com/v1/batches/x",
        "https://api.example.com/v2/batches/x",
        "https://api.example.com/v1/batches/..;/admin",
        "https://api.example.com/v1/%2e%2e;/admin",
        "https://api.example.com/v1/x/.;/admin",
    ] {
        let e = ensure_under(&base, &Url::parse(bad).unwrap()).unwrap_err();
        assert!(
            e.contains("is not under the upstream's base_url"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn operation_ids_with_disguised_dot_segments_are_refused() {
    for bad in [
        "..",
        "a/../b",
        "..;",
        "..;/admin",
        "x/..;jsessionid=1/admin",
        ".;/admin",
        ".;x",
        "%2e%2e",
        "%2E%2E/admin",
        "%2e%2e;/admin",
        "%2E.",
        ".%2e;x",
        "%252e%252e",
        "%2e%2e%2fadmin",
        "..\\admin",
        "a\\b",
        "x/%2e/y",
        "..%00/admin",
        "%2e%2e%3b/admin",
    ] {
        let e = validate_operation_id(bad).unwrap_err();
        assert!(e.starts_with("`operation` must not"), "{bad}: {e}");
    }
    for good in [
        "job-1",
        "a.b",
        "...",
        "a..b",
        "v1;x",
        "batches/abc",
        "%41bc",
        ".hidden",
    ] {
        assert!(validate_operation_id(good).is_ok(), "{good}");
    }
}
