//! What the outbox stores about an alert (the records live in
//! `crate::records::alert`), and how the API lists it.
//!
//! One [`AlertRecord`] per alert (a firing group, a resolved notice or a
//! test message), in the sled tree [`TREE`], keyed by its id. Alert ids are
//! ULIDs, so the tree's key order is creation order. Each record carries the
//! delivery state of every target it was routed to.

use crate::store::{Store, StoreError};

/// The sled tree holding the alerts.
pub const TREE: &str = crate::store::ALERTS;

pub use crate::records::alert::{
    AlertKind, AlertRecord, AlertRun, CategoryRow, Delivery, DeliveryStatus, MetricRow,
};

/// Newest first, at most `limit`, starting after the alert id `before`
/// (a cursor from the previous page).
pub fn list(
    store: &Store,
    limit: usize,
    before: Option<&str>,
) -> Result<Vec<AlertRecord>, StoreError> {
    store.alerts_page(limit, before)
}

/// One alert by id.
pub fn get(store: &Store, id: &str) -> Result<Option<AlertRecord>, StoreError> {
    store.alert(id)
}
