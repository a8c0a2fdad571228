//! The integration tests, one binary (as svix does): a module per area, sharing the harness in
//! [`common`]. Run one area with e.g. `cargo test --test it presets::`.
//!
//! All modules run as parallel threads of one process, so no test may touch process-global
//! state (environment variables, the current directory, fixed ports): each test has its own
//! temp dir, its own loopback listeners, and passes environment only to the child processes it
//! starts.

mod common;

mod bad_input;
mod corpus;
mod crash;
mod credentials;
mod delivery;
mod demo;
mod deploy;
mod disk_full;
mod docs;
mod env_config;
mod hardening;
mod hostile;
mod lifecycle;
mod listeners;
mod openapi;
mod operator;
mod ops;
mod ops_cli;
mod polling;
mod postgres;
mod presets;
mod proxy;
mod replicas;
mod retention;
mod rotation;
mod schemes;
mod sdk;
mod store_damage;
mod traces;
mod ui;
mod vetting;
