//! The bodies the API answers with besides the record, as types: the handlers serialise them
//! and [`super::openapi`] documents them, so the two cannot differ.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::OperationId;
use crate::operation::{Operation, Status};

/// Every error: `{"error": {"code": "snake_case", "message": "…"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, snake_case (e.g. `operation_not_found`).
    pub code: String,
    /// A sentence saying what is wrong and what to do.
    pub message: String,
}

/// A page of operations, oldest first.
#[derive(Serialize, ToSchema)]
pub struct OperationList {
    pub operations: Vec<Operation>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<OperationId>,
}

/// What a bulk redelivery did.
#[derive(Serialize, ToSchema)]
pub struct BulkRedelivered {
    /// How many callbacks were put back in the outbox.
    pub redelivered: usize,
    pub ids: Vec<OperationId>,
    /// Pass as `cursor` to continue where a bound stopped this call; `null` when done.
    pub next_cursor: Option<OperationId>,
}

/// `GET /v1/upstreams`.
#[derive(Serialize, ToSchema)]
pub struct Upstreams {
    /// By upstream name.
    pub upstreams: BTreeMap<String, UpstreamView>,
}

/// One upstream's budget, its AIMD state and what was learned about its jobs.
#[derive(Serialize, ToSchema)]
pub struct UpstreamView {
    /// `rate.per_second`: the most status requests per second.
    pub rate_per_second: u32,
    pub burst: u32,
    /// The rate allowed now, after AIMD (lowered by 429/503, recovering to `rate_per_second`).
    pub current_rate_per_second: Option<f64>,
    /// `poll.target_delay` in seconds, if set.
    pub target_delay_s: Option<f64>,
    /// `poll.prior_key`, if set.
    pub prior_key: Option<String>,
    pub priors: Vec<PriorView>,
    /// Status requests not made compared to the plain blind schedule, since start.
    pub requests_saved: u64,
}

/// A learned job-length prior.
#[derive(Serialize, ToSchema)]
pub struct PriorView {
    /// The value of `poll.prior_key` in the metadata (`""`: the upstream's own prior).
    pub key: String,
    pub completions: u64,
    /// Enough completions (20) to shape the schedule.
    pub warm: bool,
    pub p10_s: Option<f64>,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub store: bool,
    pub store_error: Option<String>,
    pub workers: bool,
    pub polls_scheduled: usize,
    pub outbox: usize,
    /// Upstreams whose credential cannot be obtained, with the error.
    pub credentials: BTreeMap<String, String>,
}

/// What an inbound webhook did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookResult {
    Accepted,
    Duplicate,
    Ignored,
    Kept,
}

/// The answer to an inbound upstream webhook.
#[derive(Serialize, ToSchema)]
pub struct WebhookAnswer {
    pub result: WebhookResult,
    pub webhook_id: String,
    /// The operation it applied to (`accepted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<OperationId>,
    /// Set when a mapped event ended the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The states a list may filter on (`delivery=`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum DeliveryFilter {
    None,
    Pending,
    Failed,
    Delivered,
}

/// The states a bulk redelivery may select.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum BulkDelivery {
    Failed,
    Delivered,
}

/// The statuses an operation can end in.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum TerminalStatus {
    Succeeded,
    Failed,
    Cancelled,
    Expired,
    TimedOut,
}
