use super::testing::{GOOD, env, err_of, parse};
use super::*;
use crate::operation::Status;

#[test]
fn policy_knobs_are_validated_with_the_key() {
    let poll = "poll = { initial = \"1s\", multiplier = 1.5, max = \"30s\", jitter = 0.1, deadline = \"24h\" }";
    let cases = [
        (
            poll.replace("deadline", "eta_max = \"500ms\", deadline"),
            "`upstreams.jobs.poll.eta_max`: must not be less than poll.initial",
        ),
        (
            poll.replace("deadline", "stall_polls = 0, deadline"),
            "`upstreams.jobs.poll.stall_polls`: must be at least 1",
        ),
        (
            poll.replace("deadline", "finalizing = \"0s\", deadline"),
            "`upstreams.jobs.poll.finalizing`: must be more than 0s",
        ),
        (
            poll.replace("deadline", "hint_max = \"10ms\", deadline"),
            "`upstreams.jobs.poll.hint_max`: must be at least 1s",
        ),
    ];
    for (line, want) in cases {
        let e = err_of(&GOOD.replace(poll, &line));
        assert!(e.contains(want), "{line}: {e}");
    }
    let rate = "rate = { per_second = 10, burst = 10 }";
    let e = err_of(&GOOD.replace(rate, "rate = { per_second = 10, min_per_second = 20 }"));
    assert!(
        e.contains("`upstreams.jobs.rate.min_per_second`: must be more than 0 and at most rate.per_second (10), got 20"),
        "{e}"
    );
    let e = err_of(&GOOD.replace(rate, "rate = { per_second = 10, increase_every = \"0s\" }"));
    assert!(
        e.contains("`upstreams.jobs.rate.increase_every`: must be more than 0s"),
        "{e}"
    );
    // Polling off needs an event map: nothing else could end an operation.
    let e = err_of(&GOOD.replace(poll, "poll = { enabled = false }"));
    assert!(
        e.contains("`upstreams.jobs.poll.enabled`: with polling off only a webhook event mapped in `webhook.events`"),
        "{e}"
    );
    let off = GOOD.replace(poll, "poll = { enabled = false }").replace(
        "safety_poll = \"10m\"",
        "safety_poll = \"10m\"\nevents = { \"job.done\" = \"succeeded\" }",
    );
    let c = parse(&off, &env).unwrap();
    assert!(!c["jobs"].poll.enabled);
    // Defaults: unset knobs come from the preset's kind of job; AIMD floor is a tenth.
    let c = parse(GOOD, &env).unwrap();
    let u = &c["jobs"];
    assert!(u.poll.eta);
    assert_eq!(u.poll.stall_polls, 3);
    assert_eq!(u.rate.min_per_second, 1.0);
    assert_eq!(u.rate.increase_every, Duration::from_secs(10));
}

#[test]
fn bad_pointer_names_the_key() {
    let e = err_of(&GOOD.replace("status_field = \"/state\"", "status_field = \"state\""));
    assert!(e.contains("`upstreams.jobs.status_field`"), "{e}");
    assert!(e.contains("not a JSON pointer"), "{e}");
}

#[test]
fn unknown_preset_lists_the_known_ones() {
    let e = err_of(&GOOD.replace("preset = \"generic\"", "preset = \"magic\""));
    assert!(e.contains("unknown preset \"magic\""), "{e}");
    assert!(e.contains("google-operation"), "{e}");
}

#[test]
fn missing_env_var_is_an_error() {
    let e = err_of(&GOOD.replace("${JOBS_TOKEN}", "${NOT_THERE}"));
    assert!(
        e.contains(
            "`upstreams.jobs.headers.Authorization`: environment variable NOT_THERE is not set"
        ),
        "{e}"
    );
    let e = err_of(&GOOD.replace(
        "secret_env = \"JOBS_WEBHOOK_SECRET\"",
        "secret_env = \"NOPE\"",
    ));
    assert!(e.contains("environment variable NOPE is not set"), "{e}");
}

fn preset_env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test".into()),
        "ANTHROPIC_API_KEY" => Some("ak-test".into()),
        "GEMINI_API_KEY" => Some("gk-test".into()),
        "HOOK_SECRET" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
        _ => None,
    }
}

fn upstream(text: &str) -> Result<UpstreamConfig, String> {
    parse(text, &preset_env).map(|c| c.into_values().next().unwrap())
}

#[test]
fn presets_fill_base_url_path_headers_and_schedule() {
    let u = upstream("[upstreams.ant]\npreset = \"anthropic-batch\"\n").unwrap();
    assert_eq!(u.base_url.as_str(), "https://api.anthropic.com/v1/");
    assert_eq!(u.status_path, "messages/batches/{operation}");
    assert_eq!(u.headers["x-api-key"], "ak-test");
    assert_eq!(u.headers["anthropic-version"], "2023-06-01");
    assert_eq!(u.poll, PollConfig::batch());
    let u = upstream("[upstreams.oai]\npreset = \"openai-response\"\n").unwrap();
    assert_eq!(u.headers["authorization"], "Bearer sk-test");
    assert_eq!(u.poll, PollConfig::media());
}

#[test]
fn a_preset_header_needs_its_env_var_unless_replaced_or_removed() {
    let e = upstream("[upstreams.r]\npreset = \"replicate\"\n").unwrap_err();
    assert!(
        e.contains("`upstreams.r.headers.Authorization`: environment variable REPLICATE_API_TOKEN is not set"),
        "{e}"
    );
    // Same header in another case replaces the preset's; an empty value removes it.
    let u = upstream(
        "[upstreams.r]\npreset = \"replicate\"\nheaders = { authorization = \"Token ${OPENAI_API_KEY}\" }\n",
    )
    .unwrap();
    assert_eq!(u.headers["authorization"], "Token sk-test");
    assert_eq!(u.headers.len(), 1);
    let u = upstream(
        "[upstreams.g]\npreset = \"gemini-batch\"\nheaders = { x-goog-api-key = \"\", Authorization = \"Bearer ${OPENAI_API_KEY}\" }\n",
    )
    .unwrap();
    assert!(u.headers.get("x-goog-api-key").is_none());
    assert_eq!(u.headers.len(), 1);
}

#[test]
fn preset_specific_mistakes_are_named() {
    let e = upstream(
        "[upstreams.a]\npreset = \"anthropic-batch\"\n[upstreams.a.webhook]\nscheme = \"none\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("`upstreams.a.webhook`: preset \"anthropic-batch\" has no webhooks"),
        "{e}"
    );
    let e = upstream("[upstreams.z]\npreset = \"azure-async\"\nstatus_path = \"x/{operation}\"\n")
        .unwrap_err();
    assert!(
        e.contains("`upstreams.z.status_path`: does not apply to preset \"azure-async\""),
        "{e}"
    );
    let e = upstream(
        "[upstreams.o]\npreset = \"openai-batch\"\ncallback_events = [\"requires_action\"]\n",
    )
    .unwrap_err();
    assert!(
        e.contains(
            "`upstreams.o.callback_events`: preset \"openai-batch\" never reports requires_action"
        ),
        "{e}"
    );
    let e = upstream(
        "[upstreams.i]\npreset = \"gemini-interaction\"\ncallback_events = [\"paused\"]\n",
    )
    .unwrap_err();
    assert!(
        e.contains("unknown callback event \"paused\"; expected one of: requires_action"),
        "{e}"
    );
    let u = upstream(
        "[upstreams.i]\npreset = \"gemini-interaction\"\ncallback_events = [\"requires_action\"]\n",
    )
    .unwrap();
    assert_eq!(u.callback_events, vec!["requires_action".to_string()]);
}

#[test]
fn status_reads_may_post_a_body_template() {
    let u = upstream("[upstreams.v]\npreset = \"vertex-operation\"\nbase_url = \"https://us-central1-aiplatform.googleapis.com/v1/\"\n").unwrap();
    assert_eq!(u.status_method, reqwest::Method::POST);
    assert_eq!(
        super::super::status_body(&u, "projects/p/operations/x\"y"),
        Some(serde_json::json!({"operationName": "projects/p/operations/x\"y"}))
    );
    let url = super::super::status_url(
        &u,
        "projects/p/locations/l/publishers/google/models/veo-3/operations/1",
    )
    .unwrap();
    assert_eq!(
        url.as_str(),
        "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/l/publishers/google/models/veo-3:fetchPredictOperation"
    );
    let e = upstream("[upstreams.v]\npreset = \"vertex-operation\"\n").unwrap_err();
    assert!(e.contains("`upstreams.v.base_url`: required"), "{e}");
    let generic = "[upstreams.g]\nbase_url = \"http://127.0.0.1/\"\nstatus_field = \"/s\"\nsucceeded = [\"ok\"]\nfailed = [\"bad\"]\n";
    let u = upstream(&format!(
        "{generic}status_path = \"status\"\nstatus_method = \"post\"\nstatus_body = {{ id = \"{{operation}}\" }}\n"
    ))
    .unwrap();
    assert_eq!(u.status_method, reqwest::Method::POST);
    let e = upstream(&format!(
        "{generic}status_path = \"status\"\nstatus_body = {{ id = \"{{operation}}\" }}\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`upstreams.g.status_body`: a status body needs status_method = \"POST\""),
        "{e}"
    );
    let e = upstream(&format!(
        "{generic}status_path = \"s/{{operation}}\"\nstatus_method = \"PUT\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`upstreams.g.status_method`: \"PUT\" is not supported"),
        "{e}"
    );
    let e = upstream(&format!("{generic}status_path = \"status\"\nstatus_method = \"POST\"\nstatus_body = {{ id = \"x\" }}\n")).unwrap_err();
    assert!(
        e.contains("must contain \"{operation}\" (or a string in status_body must)"),
        "{e}"
    );
}

#[test]
fn a_presets_status_lists_can_be_extended_in_config() {
    let u = upstream(
        "[upstreams.z]\npreset = \"azure-async\"\nfailed = [\"Rejected\"]\nrunning = [\"Canceled\"]\n",
    )
    .unwrap();
    let read = |b: serde_json::Value| u.mapping.read(&b).unwrap().state;
    use crate::operation::ObservedState;
    assert_eq!(
        read(serde_json::json!({"status": "Rejected"})),
        ObservedState::Failed
    );
    assert_eq!(
        read(serde_json::json!({"status": "Canceled"})),
        ObservedState::Running
    );
    let e = upstream(
        "[upstreams.z]\npreset = \"azure-async\"\nfailed = [\"X\"]\ncancelled = [\"x\"]\n",
    )
    .unwrap_err();
    assert!(
        e.contains("`upstreams.z`: `cancelled`: status value \"x\" is already listed in `failed`"),
        "{e}"
    );
}

fn with_events(preset: &str, events: &str) -> Result<UpstreamConfig, String> {
    upstream(&format!(
        "[upstreams.u]\npreset = \"{preset}\"\nheaders = {{ Authorization = \"\" }}\n[upstreams.u.webhook]\nscheme = \"standard-webhooks\"\nsecret_env = \"HOOK_SECRET\"\nevents = {{ {events} }}\n"
    ))
}

#[test]
fn webhook_event_maps_are_checked() {
    let u = with_events(
        "openai-batch",
        "\"batch.completed\" = \"succeeded\", \"batch.expired\" = \"expired\"",
    )
    .unwrap();
    let w = u.webhook.unwrap();
    assert_eq!(w.events["batch.completed"], Status::Succeeded);
    assert_eq!(w.operation_field, "/data/id");
    let e = with_events("openai-batch", "\"batch.succeeded\" = \"succeeded\"").unwrap_err();
    assert!(e.contains("preset \"openai-batch\" does not send \"batch.succeeded\"; its events are: batch.completed"), "{e}");
    let e = with_events(
        "gemini-interaction",
        "\"interaction.requires_action\" = \"succeeded\"",
    )
    .unwrap_err();
    assert!(e.contains("announces a pause, not an end"), "{e}");
    // The Gemini event types are python-genai's `WebhookSubscribedEvent`
    // (`_gaos/types/webhooks/webhook.py`): no `batch.cancelled`, no `interaction.cancelled`.
    let e = with_events("gemini-batch", "\"batch.cancelled\" = \"cancelled\"").unwrap_err();
    assert!(e.contains("does not send \"batch.cancelled\""), "{e}");
    let e = with_events(
        "gemini-interaction",
        "\"interaction.cancelled\" = \"cancelled\"",
    )
    .unwrap_err();
    assert!(e.contains("does not send \"interaction.cancelled\""), "{e}");
    let e = with_events("gemini-batch", "\"batch.failed\" = \"running\"").unwrap_err();
    assert!(
        e.contains(
            "unknown outcome \"running\"; expected one of: succeeded, failed, cancelled, expired"
        ),
        "{e}"
    );
    let e = with_events("replicate", "\"succeeded\" = \"succeeded\"").unwrap_err();
    assert!(
        e.contains("Replicate webhooks carry the whole prediction"),
        "{e}"
    );
    assert_eq!(
        upstream("[upstreams.u]\npreset = \"replicate\"\nheaders = { Authorization = \"\" }\n[upstreams.u.webhook]\nscheme = \"none\"\n")
            .unwrap()
            .webhook
            .unwrap()
            .operation_field,
        "/id"
    );
    // Generic upstreams map any event type.
    let g = GOOD.replace(
        "safety_poll = \"10m\"",
        "safety_poll = \"10m\"\nevents = { \"job.done\" = \"succeeded\" }",
    );
    let c = parse(&g, &env).unwrap();
    assert_eq!(
        c["jobs"].webhook.as_ref().unwrap().events["job.done"],
        Status::Succeeded
    );
}

#[test]
fn bedrock_sigv4_must_sign_as_bedrock_for_the_base_urls_region() {
    let aws = |base: &str, service: &str, region: &str| {
        upstream(&format!(
            "[upstreams.b]\npreset = \"bedrock-batch\"\nbase_url = \"{base}\"\n\
             auth = {{ aws_sigv4 = {{ service = \"{service}\", region = \"{region}\" }} }}\n"
        ))
    };
    assert!(
        aws(
            "https://bedrock.us-east-1.amazonaws.com/",
            "bedrock",
            "us-east-1"
        )
        .is_ok()
    );
    // A loopback or proxy endpoint names no region.
    assert!(aws("http://127.0.0.1:9000/", "bedrock", "eu-west-1").is_ok());
    let e = aws(
        "https://bedrock.us-east-1.amazonaws.com/",
        "bedrock",
        "us-west-2",
    )
    .unwrap_err();
    assert!(
        e.contains(
            "`upstreams.b.auth.aws_sigv4`: region \"us-west-2\" is not the region of base_url"
        ),
        "{e}"
    );
    // The runtime API signs as `bedrock` too (botocore bedrock-runtime `signingName`).
    let e = upstream(
        "[upstreams.r]\npreset = \"bedrock-async-invoke\"\n\
         base_url = \"https://bedrock-runtime.us-east-1.amazonaws.com/\"\n\
         auth = { aws_sigv4 = { service = \"bedrock-runtime\", region = \"us-east-1\" } }\n",
    )
    .unwrap_err();
    assert!(
        e.contains("this API signs as service \"bedrock\", not \"bedrock-runtime\""),
        "{e}"
    );
    // Other presets are not checked (generic may sign for any service).
    assert!(
        upstream(
            "[upstreams.g]\nbase_url = \"https://s3.us-east-1.amazonaws.com/\"\nstatus_path = \"{operation}\"\n\
             status_field = \"/s\"\nsucceeded = [\"ok\"]\nfailed = [\"bad\"]\n\
             auth = { aws_sigv4 = { service = \"s3\", region = \"eu-west-1\" } }\n"
        )
        .is_ok()
    );
}
