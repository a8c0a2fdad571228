//! [`Store`] for [`SledStore`]: each method calls the synchronous one of the same name (sled
//! answers from memory; nothing here waits on the disk).

use std::time::Duration;

use super::SledStore;
use crate::clock::Timestamp;
use crate::ids::OperationId;
use crate::operation::{EventOutcome, Operation, Status};
use crate::store::retention::Cutoffs;
use crate::store::{
    Change, EachScheduled, ListFilter, OutboxEntry, Purged, Registered, Store, StoreError, Updated,
    WebhookRecord,
};

#[async_trait::async_trait]
impl Store for SledStore {
    async fn register(
        &self,
        op: Operation,
        early_window: Duration,
    ) -> Result<Registered, StoreError> {
        SledStore::register(self, op, early_window)
    }
    async fn get(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        SledStore::get(self, id)
    }
    async fn find(&self, upstream: &str, operation: &str) -> Result<Option<Operation>, StoreError> {
        SledStore::find(self, upstream, operation)
    }
    async fn list(
        &self,
        f: &ListFilter,
    ) -> Result<(Vec<Operation>, Option<OperationId>), StoreError> {
        SledStore::list(self, f)
    }
    async fn update(
        &self,
        id: &OperationId,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        SledStore::update(self, id, f)
    }
    async fn delete(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        SledStore::delete(self, id)
    }
    async fn find_operation(
        &self,
        upstream: &str,
        candidates: &[String],
        suffix: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        SledStore::find_operation(self, upstream, candidates, suffix)
    }
    async fn record_webhook(
        &self,
        upstream: &str,
        webhook_id: &str,
        operation: &str,
        outcome: Option<&EventOutcome>,
        now: Timestamp,
    ) -> Result<WebhookRecord, StoreError> {
        SledStore::record_webhook(self, upstream, webhook_id, operation, outcome, now)
    }
    async fn for_each_scheduled(&self, f: &mut EachScheduled<'_>) -> Result<usize, StoreError> {
        SledStore::for_each_scheduled(self, f)
    }
    async fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        SledStore::outbox(self)
    }
    async fn purge_webhooks(
        &self,
        inbox_before: Timestamp,
        early_before: Timestamp,
    ) -> Result<usize, StoreError> {
        SledStore::purge_webhooks(self, inbox_before, early_before)
    }
    async fn purge_settled(
        &self,
        cutoffs: &Cutoffs,
        after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        SledStore::purge_settled(self, cutoffs, after, limit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        SledStore::flush(self)
    }
    async fn active_by_status(&self) -> Result<Vec<(String, Status, u64)>, StoreError> {
        Ok(SledStore::active_by_status(self))
    }
    async fn failed_deliveries(&self) -> Result<u64, StoreError> {
        SledStore::failed_deliveries(self)
    }
    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        SledStore::size_on_disk(self)
    }
    async fn load_priors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        SledStore::load_priors(self)
    }
    async fn save_priors(&self, bytes: &[u8]) -> Result<(), StoreError> {
        SledStore::save_priors(self, bytes)
    }
}
