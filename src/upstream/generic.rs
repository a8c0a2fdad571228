//! Any JSON status endpoint: the config describes the body with a status pointer and value lists
//! (`status_field`, `succeeded`, `failed`, ...); [`super::Mapping::Generic`] reads it.

use super::presets::{PresetSpec, WebhookDefaults};
use crate::schedule::config::PollConfig;

/// `generic`: read as the config describes; any webhook event type may be mapped.
pub static GENERIC: PresetSpec = PresetSpec {
    name: "generic",
    poll: PollConfig::general(),
    webhook: WebhookDefaults::thin(&[], &[], &[]),
    reads: "status_field and the value lists",
    ..PresetSpec::BASE
};
