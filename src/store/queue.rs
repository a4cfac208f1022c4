//! The daemon's durable queue: the `checkpoints` tree and its indexes.
//!
//! - `checkpoints`: `watcher/model@revision|eval key` -> [`CheckpointRecord`];
//!   inserted once, so a checkpoint announced by both a poll and a webhook
//!   is evaluated once.
//! - `queue_status`: status (`queued`, `running`, `done`), `0x00`, record
//!   key -> one byte, `1` when the record has a `last_error`: depth and
//!   counts are key scans, and the dispatcher decodes only queued records.
//! - `queue_ids`: watcher, `0x00`, revision, `0x00`, record key -> empty:
//!   a checkpoint found by its watcher and revision (an API evaluation by
//!   its id) without a scan.
//!
//! Both indexes are written with the record in one transaction, built on
//! open for stores written before them (`meta` key `index.queue`), and
//! checked against the records by [`Store::recover_queue`] at start.

use sled::transaction::{ConflictableTransactionResult, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{encode, prefix_end, Store, StoreError};
use crate::records::{CheckpointRecord, CheckpointStatus};

/// The status index's tree.
pub const QUEUE_STATUS: &str = "queue_status";
/// The watcher-and-revision index's tree.
pub const QUEUE_IDS: &str = "queue_ids";

const STATUSES: [CheckpointStatus; 3] = [
    CheckpointStatus::Queued,
    CheckpointStatus::Running,
    CheckpointStatus::Done,
];

/// How many records are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    /// Not done, with an error from their last attempt.
    pub retrying: usize,
}

impl QueueCounts {
    /// Queued or running.
    pub fn depth(&self) -> usize {
        self.queued + self.running
    }
}

fn status_name(s: CheckpointStatus) -> &'static str {
    match s {
        CheckpointStatus::Queued => "queued",
        CheckpointStatus::Running => "running",
        CheckpointStatus::Done => "done",
    }
}

fn status_prefix(s: CheckpointStatus) -> Vec<u8> {
    let mut k = status_name(s).as_bytes().to_vec();
    k.push(0);
    k
}

fn status_key(s: CheckpointStatus, key: &[u8]) -> Vec<u8> {
    let mut k = status_prefix(s);
    k.extend_from_slice(key);
    k
}

fn id_prefix(watcher: &str, revision: &str) -> Vec<u8> {
    let mut k = watcher.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(revision.as_bytes());
    k.push(0);
    k
}

fn id_key(r: &CheckpointRecord) -> Vec<u8> {
    let mut k = id_prefix(&r.checkpoint.watcher, &r.checkpoint.revision);
    k.extend_from_slice(r.key.as_bytes());
    k
}

fn flag(r: &CheckpointRecord) -> &'static [u8] {
    if r.last_error.is_some() {
        &[1]
    } else {
        &[0]
    }
}

/// Writes `r` and its index entries within a transaction.
fn write(
    c: &TransactionalTree,
    s: &TransactionalTree,
    i: &TransactionalTree,
    r: &CheckpointRecord,
    value: &[u8],
) -> ConflictableTransactionResult<(), ()> {
    c.insert(r.key.as_bytes(), value)?;
    for other in STATUSES {
        s.remove(status_key(other, r.key.as_bytes()))?;
    }
    s.insert(status_key(r.status, r.key.as_bytes()), flag(r))?;
    i.insert(id_key(r), &[] as &[u8])?;
    Ok(())
}

fn tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Io(e),
        TransactionError::Abort(()) => StoreError::Corrupt {
            key: "checkpoints".into(),
            message: "transaction aborted".into(),
        },
    }
}

impl Store {
    /// Adds a checkpoint to the queue unless it is there already; returns
    /// whether it was added.
    pub fn enqueue(&self, record: &CheckpointRecord) -> Result<bool, StoreError> {
        let value = encode(record);
        let added = (&self.checkpoints, &self.queue_status, &self.queue_ids)
            .transaction(|(c, s, i)| {
                if c.get(record.key.as_bytes())?.is_some() {
                    return Ok(false);
                }
                write(c, s, i, record, &value)?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if added {
            self.touched();
        }
        Ok(added)
    }

    /// Writes a queue record (and its index entries) over the stored one.
    pub fn put_checkpoint(&self, record: &CheckpointRecord) -> Result<(), StoreError> {
        let value = encode(record);
        (&self.checkpoints, &self.queue_status, &self.queue_ids)
            .transaction(|(c, s, i)| write(c, s, i, record, &value))
            .map_err(tx_error)?;
        self.touched();
        Ok(())
    }

    /// Every checkpoint record, in key order.
    /// A record that cannot be decoded is quarantined and left out: one
    /// bad record never stops the queue.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.checkpoints.iter() {
            let (k, v) = kv?;
            out.extend(self.read(&self.checkpoints, &k, &v));
        }
        Ok(out)
    }

    /// One checkpoint record by key.
    pub fn checkpoint(&self, key: &str) -> Result<Option<CheckpointRecord>, StoreError> {
        match self.checkpoints.get(key.as_bytes())? {
            Some(v) => Ok(self.read(&self.checkpoints, key.as_bytes(), &v)),
            None => Ok(None),
        }
    }

    /// The records in `status`, in key order, through the status index
    /// (only those are decoded).
    pub fn checkpoints_in(
        &self,
        status: CheckpointStatus,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let prefix = status_prefix(status);
        let mut out = Vec::new();
        for kv in self.queue_status.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]);
            // A record changed since the index was read is read as it is now.
            out.extend(self.checkpoint(&key)?.filter(|r| r.status == status));
        }
        Ok(out)
    }

    /// The records of a watcher's checkpoint revision (one per evaluation
    /// plan), through the id index.
    pub fn checkpoints_of(
        &self,
        watcher: &str,
        revision: &str,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let prefix = id_prefix(watcher, revision);
        let mut out = Vec::new();
        for kv in self.queue_ids.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]);
            out.extend(self.checkpoint(&key)?);
        }
        Ok(out)
    }

    /// How many records are in each state: a scan of the status index's
    /// keys, nothing decoded.
    pub fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let mut counts = QueueCounts::default();
        for status in STATUSES {
            let mut n = 0;
            let mut failing = 0;
            let prefix = status_prefix(status);
            for kv in self.queue_status.range(prefix.clone()..prefix_end(&prefix)) {
                let (_, v) = kv?;
                n += 1;
                failing += usize::from(v.as_ref() == [1]);
            }
            match status {
                CheckpointStatus::Queued => counts.queued = n,
                CheckpointStatus::Running => counts.running = n,
                CheckpointStatus::Done => counts.done = n,
            }
            if status != CheckpointStatus::Done {
                counts.retrying += failing;
            }
        }
        Ok(counts)
    }

    /// Reads every queue record once (quarantining those that cannot be
    /// decoded), brings the indexes in step with them, and returns them.
    /// For the start of the daemon.
    pub fn recover_queue(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let records = self.checkpoints()?;
        let mut want: std::collections::HashMap<Vec<u8>, &'static [u8]> = records
            .iter()
            .map(|r| (status_key(r.status, r.key.as_bytes()), flag(r)))
            .collect();
        for kv in self.queue_status.iter() {
            let (k, v) = kv?;
            match want.get(k.as_ref()) {
                Some(f) if v.as_ref() == *f => {
                    want.remove(k.as_ref());
                }
                Some(_) => {}
                None => {
                    self.queue_status.remove(&k)?;
                }
            }
        }
        for (k, f) in want {
            self.queue_status.insert(k, f)?;
        }
        let ids: std::collections::HashSet<Vec<u8>> = records.iter().map(id_key).collect();
        for kv in self.queue_ids.iter() {
            let (k, _) = kv?;
            if !ids.contains(k.as_ref()) {
                self.queue_ids.remove(&k)?;
            }
        }
        for k in ids {
            self.queue_ids.insert(k, &[] as &[u8])?;
        }
        self.touched();
        Ok(records)
    }

    /// Builds the queue's indexes of a store written before they existed.
    pub(super) fn build_queue_index(&self, meta: &sled::Tree) -> Result<(), StoreError> {
        const MARK: &str = "index.queue";
        if meta.get(MARK)?.is_some() {
            return Ok(());
        }
        let n = self.recover_queue()?.len();
        meta.insert(MARK, "1")?;
        self.db.flush()?;
        if n > 0 {
            tracing::info!(checkpoints = n, "built the queue's indexes");
        }
        Ok(())
    }

    /// Drops the status index entries of a record moved to the quarantine
    /// (its id entry leads nowhere and is dropped by the next recovery).
    pub(super) fn forget_queue_index(&self, key: &[u8]) {
        for s in STATUSES {
            let _ = self.queue_status.remove(status_key(s, key));
        }
    }
}
