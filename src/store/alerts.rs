//! The alert outbox's trees and their key layouts; the delivery logic is
//! in the alerts module.
//!
//! - `alerts`: alert id (`a_` + ULID, so key order is creation order) ->
//!   [`AlertRecord`].
//! - `alert_decisions`: run id -> the grouping decision taken for the run
//!   (a run is decided once).
//! - `alert_lineages`: lineage -> its grouping state.
//! - `alert_open`: target, `0x00`, alert id -> empty: the deliveries still
//!   to make, kept in step with the records (same transactions), so a
//!   delivery task reads only its own open deliveries, however long the
//!   history grows.
//!
//! Decisions and lineage states are stored as the grouping serializes them;
//! the store does not interpret them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionResult, TransactionError};
use sled::Transactional;

use super::{encode, Store, StoreError};
use crate::records::alert::{AlertRecord, DeliveryStatus};

/// The tree holding the alerts.
pub const ALERTS: &str = "alerts";
/// Run id -> grouping decision.
pub const DECISIONS: &str = "alert_decisions";
/// Lineage -> grouping state.
pub const LINEAGES: &str = "alert_lineages";
/// The index of open deliveries.
pub const OPEN: &str = "alert_open";

/// The outbox's trees.
#[derive(Clone)]
pub struct AlertTrees {
    alerts: sled::Tree,
    decisions: sled::Tree,
    lineages: sled::Tree,
    open: sled::Tree,
}

impl AlertTrees {
    pub(super) fn open(db: &sled::Db) -> Result<AlertTrees, StoreError> {
        Ok(AlertTrees {
            alerts: db.open_tree(ALERTS)?,
            decisions: db.open_tree(DECISIONS)?,
            lineages: db.open_tree(LINEAGES)?,
            open: db.open_tree(OPEN)?,
        })
    }
}

fn open_key(target: &str, id: &str) -> Vec<u8> {
    let mut k = target.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn is_open(status: DeliveryStatus) -> bool {
    matches!(status, DeliveryStatus::Pending | DeliveryStatus::Sending)
}

fn tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Io(e),
        TransactionError::Abort(()) => StoreError::Corrupt {
            key: "alerts".into(),
            message: "transaction aborted".into(),
        },
    }
}

impl Store {
    /// One alert by id.
    pub fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        let t = &self.alerts.alerts;
        match t.get(id.as_bytes())? {
            Some(v) => Ok(self.read(t, id.as_bytes(), &v)),
            None => Ok(None),
        }
    }

    /// Every alert, oldest first. Records that cannot be decoded are
    /// quarantined and left out.
    pub fn all_alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        let t = &self.alerts.alerts;
        let mut out = Vec::new();
        for kv in t.iter() {
            let (k, v) = kv?;
            out.extend(self.read(t, &k, &v));
        }
        Ok(out)
    }

    /// Newest first, at most `limit`, starting after the alert id `before`.
    pub fn alerts_page(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let t = &self.alerts.alerts;
        let iter = match before {
            Some(b) => t.range(..b.as_bytes().to_vec()),
            None => t.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for item in iter.rev().take(limit) {
            let (k, v) = item?;
            out.extend(self.read(t, &k, &v));
        }
        Ok(out)
    }

    /// The grouping decision stored for a run.
    pub fn alert_decision<D: DeserializeOwned>(
        &self,
        run_id: &str,
    ) -> Result<Option<D>, StoreError> {
        let t = &self.alerts.decisions;
        match t.get(run_id.as_bytes())? {
            Some(v) => Ok(self.read(t, run_id.as_bytes(), &v)),
            None => Ok(None),
        }
    }

    /// A lineage's grouping state; an undecodable one is quarantined and
    /// `None` returned (the lineage starts over).
    pub fn alert_lineage<S: DeserializeOwned>(
        &self,
        lineage: &str,
    ) -> Result<Option<S>, StoreError> {
        let t = &self.alerts.lineages;
        match t.get(lineage.as_bytes())? {
            Some(v) => Ok(self.read(t, lineage.as_bytes(), &v)),
            None => Ok(None),
        }
    }

    /// Writes a run's decision, its lineage's new state and the alerts it
    /// created (with their open deliveries) in one transaction.
    pub fn put_alert_decision<D: Serialize, S: Serialize>(
        &self,
        run_id: &str,
        decision: &D,
        lineage: &str,
        state: &S,
        records: &[AlertRecord],
    ) -> Result<(), StoreError> {
        let decision = encode(decision);
        let state = encode(state);
        let encoded: Vec<(&str, Vec<u8>)> =
            records.iter().map(|r| (r.id.as_str(), encode(r))).collect();
        let open: Vec<Vec<u8>> = records
            .iter()
            .flat_map(|r| {
                r.deliveries
                    .iter()
                    .filter(|(_, d)| is_open(d.status))
                    .map(|(t, _)| open_key(t, &r.id))
            })
            .collect();
        let a = &self.alerts;
        (&a.decisions, &a.lineages, &a.alerts, &a.open)
            .transaction(|(d, l, a, o)| -> ConflictableTransactionResult<(), ()> {
                d.insert(run_id.as_bytes(), decision.as_slice())?;
                l.insert(lineage.as_bytes(), state.as_slice())?;
                for (id, bytes) in &encoded {
                    a.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for k in &open {
                    o.insert(k.as_slice(), &[] as &[u8])?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.touched();
        Ok(())
    }

    /// Writes an alert and brings its open deliveries in step, in one
    /// transaction.
    pub fn put_alert(&self, rec: &AlertRecord) -> Result<(), StoreError> {
        let bytes = encode(rec);
        let id = rec.id.as_str();
        let a = &self.alerts;
        (&a.alerts, &a.open)
            .transaction(|(a, o)| -> ConflictableTransactionResult<(), ()> {
                a.insert(id.as_bytes(), bytes.as_slice())?;
                for (t, d) in &rec.deliveries {
                    if is_open(d.status) {
                        o.insert(open_key(t, id), &[] as &[u8])?;
                    } else {
                        o.remove(open_key(t, id))?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.touched();
        Ok(())
    }

    /// The ids of the alerts with an open delivery to `target`, oldest
    /// first.
    pub fn open_deliveries(&self, target: &str) -> Result<Vec<String>, StoreError> {
        let mut prefix = target.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.alerts.open.scan_prefix(&prefix) {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }
}
