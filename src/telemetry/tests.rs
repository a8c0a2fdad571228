use super::config::{RawTrace, resolve};
use super::*;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Option<TraceConfig>, String> {
    let raw: RawTrace = toml::from_str(text).map_err(|e| e.to_string())?;
    let lookup = |k: &str| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    resolve(raw, &lookup)
}

#[test]
fn trace_id_is_the_operation_ulid() {
    let id = OperationId::generate();
    let ulid = ulid::Ulid::from_string(&id.as_str()[3..]).unwrap();
    assert_eq!(trace_id(&id), TraceId::from(u128::from(ulid)));
    assert_eq!(
        format!("{}", trace_id(&id)),
        format!("{:032x}", u128::from(ulid))
    );
    // Deterministic, and distinct per operation.
    assert_eq!(root_span_id(&id), root_span_id(&id.clone()));
    let other = OperationId::generate();
    assert_ne!(trace_id(&id), trace_id(&other));
    assert_ne!(root_span_id(&id), root_span_id(&other));
    assert_ne!(root_span_id(&id), SpanId::INVALID);
}

#[test]
fn an_id_of_another_form_still_gets_a_valid_trace_id() {
    let id = OperationId::from_text("not-an-op-id");
    assert_ne!(trace_id(&id), TraceId::INVALID);
    assert_eq!(
        trace_id(&id),
        trace_id(&OperationId::from_text("not-an-op-id"))
    );
    assert_ne!(trace_id(&OperationId::from_text("op_")), TraceId::INVALID);
}

#[test]
fn stage_context_is_a_child_of_the_operation_root() {
    let id = OperationId::generate();
    let cx = operation_context(&id);
    let sc = cx.span().span_context().clone();
    assert_eq!(sc.trace_id(), trace_id(&id));
    assert_eq!(sc.span_id(), root_span_id(&id));
    assert!(sc.is_sampled() && sc.is_remote());
}

#[test]
fn off_unless_enabled() {
    assert!(parse("", &[]).unwrap().is_none());
    assert!(
        parse("endpoint = \"http://127.0.0.1:4318/v1/traces\"", &[])
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_file_wins_then_the_standard_variables_then_the_default() {
    let env = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/t"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4318/"),
        ("OTEL_SERVICE_NAME", "from-env"),
    ];
    let t = parse(
        "enabled = true\nendpoint = \"http://127.0.0.1:9/v1/traces\"\nservice_name = \"shim-a\"",
        &env,
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.endpoint, "http://127.0.0.1:9/v1/traces");
    assert_eq!(t.endpoint_from, "trace.endpoint");
    assert_eq!(t.service_name, "shim-a");

    let t = parse("enabled = true", &env).unwrap().unwrap();
    assert_eq!(t.endpoint, "http://traces:4318/t");
    assert_eq!(t.endpoint_from, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    assert_eq!(t.service_name, "from-env");

    let t = parse("enabled = true", &env[1..2]).unwrap().unwrap();
    assert_eq!(t.endpoint, "http://all:4318/v1/traces");
    assert_eq!(t.service_name, "hookshim");

    let t = parse("enabled = true", &[]).unwrap().unwrap();
    assert_eq!(t.endpoint, config::DEFAULT_ENDPOINT);
    assert_eq!(t.endpoint_from, "default");
    assert_eq!(
        (t.sample_ratio, t.batch_size, t.queue_size),
        (1.0, 512, 2048)
    );
}

#[test]
fn bad_values_are_named() {
    let e = parse("enabled = true\nendpoint = \"127.0.0.1:4317\"", &[]).unwrap_err();
    assert!(e.contains("`trace.endpoint`"), "{e}");
    let e = parse(
        "enabled = true",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://x")],
    )
    .unwrap_err();
    assert!(e.contains("from OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
    let e = parse("enabled = true\nsample_ratio = 1.5", &[]).unwrap_err();
    assert!(e.contains("`trace.sample_ratio`"), "{e}");
    let e = parse("enabled = true\nbatch_size = 10\nqueue_size = 5", &[]).unwrap_err();
    assert!(e.contains("`trace.batch_size`"), "{e}");
    let e = parse(
        "enabled = true\nheaders = { authorization = \"Bearer ${NOPE}\" }",
        &[],
    )
    .unwrap_err();
    assert!(e.contains("environment variable NOPE is not set"), "{e}");
    let e = parse("enabled = true\nendpont = \"x\"", &[]).unwrap_err();
    assert!(e.contains("endpont"), "{e}");
}

#[test]
fn check_never_shows_a_header_value() {
    let t = parse(
        "enabled = true\nheaders = { authorization = \"Bearer ${TOKEN}\", x-team = \"ops\" }",
        &[("TOKEN", "s3cret")],
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.headers.len(), 2);
    let shown = config::describe(Some(&t)).to_string();
    assert!(
        !shown.contains("s3cret") && !shown.contains("ops"),
        "{shown}"
    );
    assert!(
        shown.contains("<redacted, from Bearer ${TOKEN}>"),
        "{shown}"
    );
    assert_eq!(config::describe(None)["enabled"], false);
}
