//! hookshim: a sidecar that tracks long-running upstream jobs — by polling their status with a
//! budget-respecting schedule, or by accepting the upstream's signed webhooks — and sends the app
//! exactly one signed Standard Webhooks callback when each job ends.
//!
//! Map of the crate (each module's doc says what it owns):
//! - [`config`]: `shim.toml` schema and validation.
//! - [`operation`]: the operation record and its transition rules (pure).
//! - [`store`]: the `Store` trait, the sled implementation, group commit.
//! - [`upstream`]: presets that build status requests and read responses (pure).
//! - [`schedule`]: due-queue, polling policy (pure), per-upstream rate limits.
//! - [`poller`]: one status read, end to end.
//! - [`ingest`]: inbound webhooks.
//! - [`delivery`]: signed callbacks with retries.
//! - [`signing`]: Standard Webhooks and GitHub signatures.
//! - [`body`]: bounded (size-capped) reads of response bodies.
//! - [`api`]: HTTP routes and error mapping.
//! - [`service`]: wiring, start-up and graceful shutdown.
//! - [`demo`]: `hookshim demo`, the whole loop in one process.

pub mod api;
pub mod body;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod errors;
pub mod ids;
pub mod ingest;
pub mod metrics;
pub mod operation;
pub mod poller;
pub mod schedule;
pub mod service;
pub mod signing;
pub mod state;
pub mod store;
pub mod upstream;
