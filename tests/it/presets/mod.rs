//! The upstream presets end to end: for each real API a fake on loopback answers with bodies
//! shaped like the real one (`shared/reference/upstreams.md`); every job goes running → each of
//! its terminal states, by polling and, where the upstream has webhooks, by a webhook; the
//! callback (verified with the `standardwebhooks` crate) carries the right status, result and
//! error. One module per preset family; [`generic`] has what every family shares: thin-event
//! matching and the event map, `requires_action` callbacks, redirects. The docs' example configs
//! go through the real `check` in `docs.rs`.
//!
//! This module has the harness they share: one hookshim with an upstream per preset ([`rig`]),
//! and [`Rig`]'s drivers that take a job from running to an end.

mod anthropic;
mod aws;
mod azure;
mod fal;
mod fireworks;
mod generic;
mod google;
mod mistral;
mod openai;
mod replicate;
mod runway;
mod together;

use std::time::{Duration, SystemTime};

use crate::common::*;
use hookshim::clock::Timestamp;
use serde_json::{Value, json};

const FAST: &str = r#"{ initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h", finalizing = "50ms", eta_max = "200ms" }"#;

/// One upstream per preset, then the same kinds with webhooks on (their safety poll is an hour,
/// so only a webhook finds the end). `{UP}`, `{RECV}`, `{DATA}` are filled in by the harness.
const CONFIG: &str = concat!(
    store_and_callbacks!(),
    r#"
[upstreams.veo]
preset = "google-operation"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gbatch]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gint]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gint-notify]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
callback_events = ["requires_action"]
poll = FAST

[upstreams.oai-batch]
preset = "openai-batch"
base_url = "{UP}/openai/v1/"
poll = FAST

[upstreams.oai-resp]
preset = "openai-response"
base_url = "{UP}/openai/v1/"
poll = FAST

[upstreams.replicate]
preset = "replicate"
base_url = "{UP}/replicate/v1/"
poll = FAST

[upstreams.runway]
preset = "runway-task"
base_url = "{UP}/runway/v1/"
poll = FAST

[upstreams.anthropic]
preset = "anthropic-batch"
base_url = "{UP}/anthropic/v1/"
poll = FAST

[upstreams.azure]
preset = "azure-async"
base_url = "{UP}/azure/"
headers = { api-key = "${AZURE_KEY}" }
poll = FAST

[upstreams.azure-ext]
preset = "azure-async"
base_url = "{UP}/azure/"
headers = { api-key = "${AZURE_KEY}" }
failed = ["Rejected"]
running = ["Canceled"]
poll = FAST

[upstreams.vertex]
preset = "vertex-operation"
base_url = "{UP}/vertex/v1/"
headers = { Authorization = "Bearer test-vertex-token" }
poll = FAST

[upstreams.fal]
preset = "fal-queue"
base_url = "{UP}/fal/"
poll = FAST

[upstreams.mistral]
preset = "mistral-batch"
base_url = "{UP}/mistral/v1/"
poll = FAST

[upstreams.together]
preset = "together-batch"
base_url = "{UP}/together/v1/"
poll = FAST

[upstreams.fireworks]
preset = "fireworks-batch"
base_url = "{UP}/fireworks/v1/"
poll = FAST

[upstreams.vertex-batch]
preset = "vertex-batch"
base_url = "{UP}/vertex/v1/"
auth = { command = ["printf", "test-vertex-batch-token"] }
poll = FAST

[upstreams.bedrock-batch]
preset = "bedrock-batch"
base_url = "{UP}/bedrock/"
auth = { aws_sigv4 = { service = "bedrock", region = "us-east-1" } }
poll = FAST

[upstreams.bedrock-invoke]
preset = "bedrock-async-invoke"
base_url = "{UP}/bedrock-runtime/"
auth = { aws_sigv4 = { service = "bedrock", region = "us-east-1" } }
poll = FAST

[upstreams.generic-post]
preset = "generic"
base_url = "{UP}/jobs/"
status_path = "status"
status_method = "POST"
status_body = { query = { id = "{operation}", tags = ["{operation}", 7] }, verbose = true }
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
poll = FAST

[upstreams.veo-hooks]
preset = "google-operation"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gbatch-hooks]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gint-hooks]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.oai-batch-hooks]
preset = "openai-batch"
base_url = "{UP}/openai/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.oai-resp-hooks]
preset = "openai-response"
base_url = "{UP}/openai/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.replicate-hooks]
preset = "replicate"
base_url = "{UP}/replicate/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gbatch-events]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h", events = { "batch.succeeded" = "succeeded", "batch.failed" = "failed" } }
"#
);

struct Rig {
    up: FakeUpstream,
    recv: Receiver,
    shim: TestShim,
}

fn env() -> Vec<(String, String)> {
    [
        ("GEMINI_API_KEY", "test-gemini-key"),
        ("OPENAI_API_KEY", "test-openai-key"),
        ("REPLICATE_API_TOKEN", "test-replicate-token"),
        ("ANTHROPIC_API_KEY", "test-anthropic-key"),
        ("RUNWAYML_API_SECRET", "test-runway-secret"),
        ("AZURE_KEY", "test-azure-key"),
        ("FAL_KEY", "test-fal-key"),
        ("MISTRAL_API_KEY", "test-mistral-key"),
        ("TOGETHER_API_KEY", "test-together-key"),
        ("FIREWORKS_API_KEY", "test-fireworks-key"),
        ("AWS_ACCESS_KEY_ID", crate::credentials::AKID),
        ("AWS_SECRET_ACCESS_KEY", crate::credentials::SECRET),
        ("HOOK_SECRET", PUSHY_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn rig() -> Rig {
    rig_on(&Backend::Sled).await
}

/// [`rig`] on the given store.
async fn rig_on(store: &Backend) -> Rig {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = CONFIG.replace("FAST", FAST);
    let shim = TestShim::start_on_with_env(store, &config, &up, &recv, env()).await;
    Rig { up, recv, shim }
}

fn in_hours(h: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(h * 3600)
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::from_system(t).rfc3339()
}

fn unix(t: SystemTime) -> u64 {
    Timestamp::from_system(t).unix_seconds()
}

impl Rig {
    async fn register(&self, upstream: &str, operation: &str) -> Value {
        let (code, op) = self
            .shim
            .register(json!({"upstream": upstream, "operation": operation}))
            .await;
        assert_eq!(code, 201, "{op}");
        op
    }

    /// Wait until hookshim has read operation `id` at least once and calls it `status`.
    async fn wait_read(&self, id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(10),
            &format!("{id} to be read as {status}"),
            || async {
                let op = self.shim.op(id).await;
                (op["status"] == status && op["polls"].as_u64() >= Some(1)).then_some(op)
            },
        )
        .await
    }

    /// The one terminal callback of `id`, checked: signed, stable id, right type and status.
    async fn terminal_callback(&self, id: &str, status: &str, via: &str) -> Value {
        let c = &exactly_one_callback(&self.recv, id, QUIET).await;
        assert!(
            c.verified,
            "callback signature did not verify: {:?}",
            c.body
        );
        assert_eq!(c.webhook_id, format!("{id}_terminal"));
        assert_eq!(c.body["type"], format!("operation.{status}"), "{}", c.body);
        let data = c.body["data"].clone();
        assert_eq!(data["status"], status, "{data}");
        assert_eq!(data["detected_via"], via, "{data}");
        data
    }

    /// Register `operation` while the fake answers `running` at `path`, wait until hookshim has
    /// read it as `first` (running or pending), then let the job end with `terminal`: the
    /// terminal callback's `data`.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        upstream: &str,
        operation: &str,
        path: &str,
        running: Value,
        first: &str,
        terminal: Value,
        status: &str,
    ) -> Value {
        self.up.set(path, running);
        let id = id_of(&self.register(upstream, operation).await);
        self.wait_read(&id, first).await;
        self.up.set(path, terminal);
        let data = self.terminal_callback(&id, status, "poll").await;
        // Exactly one callback, even though polls may still be in flight.
        assert_eq!(self.recv.calls_for(&id).len(), 1);
        data
    }

    /// Like `drive`, for an upstream with webhooks on: the job is running when a thin webhook
    /// arrives (status endpoints may lag their webhooks, so the read says running), then the
    /// endpoint catches up and the re-reads a webhook grants find the end.
    #[allow(clippy::too_many_arguments)]
    async fn drive_by_webhook(
        &self,
        upstream: &str,
        operation: &str,
        path: &str,
        running: Value,
        webhook: Value,
        terminal: Value,
        status: &str,
    ) -> Value {
        self.up.set(path, running);
        let id = id_of(&self.register(upstream, operation).await);
        let msg = format!("msg_{}", id.to_lowercase());
        let (code, ack) = self
            .shim
            .send_webhook(upstream, PUSHY_SECRET, &msg, &webhook)
            .await;
        assert_eq!(code, 200, "{ack}");
        assert_eq!(ack["result"], "accepted", "{ack}");
        assert_eq!(ack["id"], id, "{ack}");
        self.wait_read(&id, "running").await;
        self.up.set(path, terminal);
        self.terminal_callback(&id, status, "webhook").await
    }
}
