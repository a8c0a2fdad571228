//! Typed ids. One operation id used to travel as a bare `&str` under eight names (`id`, `key`,
//! `op_id`, …); these types say which id a value is and own their text formats:
//! - [`OperationId`]: hookshim's id of a tracked operation, `op_<ULID>` (sorts by creation time).
//! - [`DeliveryKey`]: one callback of an operation — the terminal one, or an event callback such
//!   as `requires_action_2`. Text form `<operation id>` or `<operation id>/<event>`: the key of
//!   the outbox entry and of the delivery queue.
//! - [`WebhookId`]: the `webhook-id` header a callback carries, derived from its delivery key so
//!   that every attempt, restart, replica and redelivery sends the same one (invariant 3).

use std::fmt;

use serde::{Deserialize, Serialize};

/// hookshim's id of an operation: `op_<ULID>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(String);

impl OperationId {
    /// A new id, unique and sorting after every id made before it (by time).
    pub fn generate() -> OperationId {
        OperationId(format!("op_{}", ulid::Ulid::generate()))
    }

    /// An id as given (a URL path, a store key). Not validated: an id that names no operation
    /// simply finds nothing.
    pub fn from_text(text: impl Into<String>) -> OperationId {
        OperationId(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// In the OpenAPI document: a string (`op_<ULID>`).
impl utoipa::PartialSchema for OperationId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("hookshim's id of an operation, `op_<ULID>`"))
            .into()
    }
}

impl utoipa::ToSchema for OperationId {}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for OperationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One callback of an operation: its terminal callback (`event: None`) or an event callback
/// (`requires_action_<n>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub operation: OperationId,
    pub event: Option<String>,
}

impl DeliveryKey {
    pub fn terminal(operation: OperationId) -> DeliveryKey {
        DeliveryKey {
            operation,
            event: None,
        }
    }

    pub fn event(operation: OperationId, name: impl Into<String>) -> DeliveryKey {
        DeliveryKey {
            operation,
            event: Some(name.into()),
        }
    }

    /// Read the text form (`<operation id>` or `<operation id>/<event>`).
    pub fn parse(text: &str) -> DeliveryKey {
        match text.split_once('/') {
            Some((op, event)) => DeliveryKey::event(OperationId::from_text(op), event),
            None => DeliveryKey::terminal(OperationId::from_text(text)),
        }
    }

    /// The `webhook-id` this callback carries: `<op>_terminal` or `<op>_<event>`. No `.` (it is
    /// part of the signed content's separator syntax).
    pub fn webhook_id(&self) -> WebhookId {
        match &self.event {
            None => WebhookId(format!("{}_terminal", self.operation)),
            Some(e) => WebhookId(format!("{}_{e}", self.operation)),
        }
    }
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            None => write!(f, "{}", self.operation),
            Some(e) => write!(f, "{}/{e}", self.operation),
        }
    }
}

/// The `webhook-id` of an outgoing callback.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WebhookId(String);

impl WebhookId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_keys_round_trip_through_their_text_form() {
        let op = OperationId::generate();
        for key in [
            DeliveryKey::terminal(op.clone()),
            DeliveryKey::event(op.clone(), "requires_action_2"),
        ] {
            assert_eq!(DeliveryKey::parse(&key.to_string()), key);
        }
        assert_eq!(
            DeliveryKey::event(op.clone(), "requires_action_1").to_string(),
            format!("{op}/requires_action_1")
        );
    }

    #[test]
    fn webhook_ids_are_derived_from_the_key_only_and_have_no_dot() {
        let op = OperationId::from_text("op_01J0000000000000000000000A");
        let t = DeliveryKey::terminal(op.clone()).webhook_id();
        assert_eq!(t.as_str(), "op_01J0000000000000000000000A_terminal");
        assert_eq!(t, DeliveryKey::terminal(op.clone()).webhook_id());
        let e = DeliveryKey::event(op, "requires_action_3").webhook_id();
        assert_eq!(
            e.as_str(),
            "op_01J0000000000000000000000A_requires_action_3"
        );
        assert!(!t.as_str().contains('.') && !e.as_str().contains('.'));
    }

    #[test]
    fn generated_operation_ids_sort_by_creation() {
        let a = OperationId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = OperationId::generate();
        assert!(a < b);
        assert!(a.as_str().starts_with("op_"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The text form of a delivery key reads back as the same key, for any operation id
        /// and event name without `/` (and the terminal key); its webhook id depends on the
        /// key only.
        #[test]
        fn delivery_keys_round_trip(op in "[^/]*", event in "[^/]*", terminal in any::<bool>()) {
            let op = OperationId::from_text(op);
            let key = if terminal {
                DeliveryKey::terminal(op.clone())
            } else {
                DeliveryKey::event(op.clone(), event.clone())
            };
            let back = DeliveryKey::parse(&key.to_string());
            prop_assert_eq!(&back, &key);
            prop_assert_eq!(back.webhook_id(), key.webhook_id());
        }
    }
}
