//! hookshim: a sidecar that tracks long-running upstream jobs — by polling their status with a
//! budget-respecting schedule, or by accepting the upstream's signed webhooks — and sends the app
//! exactly one signed Standard Webhooks callback when each job ends.
//!
//! Map of the crate (each module's doc says what it owns). Imports go down, never up or around
//! a loop (`scripts/import-cycles.py`):
//! - wiring: [`service`] (start the loops and the server, stop in order), [`demo`].
//! - [`opscli`]: `hookshim ops`, a client of a running instance's HTTP API (imports nothing of
//!   the service but the bottom layer).
//! - HTTP: [`api`], routes and the one mapping of every error to HTTP.
//! - stages: [`ingest`] (inbound webhooks), [`poller`] (one status read), [`delivery`] (signed
//!   callbacks with retries), [`proxy`] (the transparent proxy: creates registered, status
//!   reads answered from the kept upstream body). They share state through the layer below and
//!   never import the module that starts them.
//! - [`state`]: the shared handles ([`state::Shim`]), the domain reactions (a write's terminal
//!   transition and new callbacks handed on) and registration.
//! - [`store`] (durable state: trait, sled, group commit, integrity mark), [`schedule`]
//!   (due-queues, the polling policy and poll-outcome rules, learned priors, limits, slots, poll
//!   config), [`upstream`] (presets as one table, upstream and webhook config), [`credentials`]
//!   (upstream credentials that refresh, AWS SigV4), [`config`] (loading `shim.toml`, assembling
//!   the parts), [`metrics`], [`telemetry`] (OpenTelemetry traces of each operation's stages,
//!   exported over OTLP/HTTP when `[trace]` enables them).
//! - the bottom, pure: [`operation`] (record and transition rules), [`ids`], [`pace`],
//!   [`signing`], [`clock`], [`values`], [`errors`], [`body`] (size-capped body reads),
//!   [`address`] (where a callback may go).
//! - [`fuzzing`]: the checks the fuzz targets (`fuzz/`) and the corpus test run; test support,
//!   imported by nothing else.

pub mod address;
pub mod api;
pub mod body;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod demo;
pub mod errors;
pub mod fuzzing;
pub mod ids;
pub mod ingest;
pub mod metrics;
pub mod operation;
pub mod opscli;
pub mod pace;
pub mod poller;
pub mod proxy;
pub mod schedule;
pub mod service;
pub mod signing;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod values;
