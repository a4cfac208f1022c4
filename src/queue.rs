//! The daemon's durable evaluation queue: what a watcher or an API request
//! found goes in once, the dispatcher takes what is due, an evaluation
//! marks its record running and then done or to be retried, and a start
//! requeues what a stop or crash left running. The records and their
//! indexes live in the store (`store/queue.rs`); this module owns what the
//! states mean and the one retry backoff.

use safedrift_watchers::Checkpoint;

use crate::records::{CheckpointRecord, CheckpointStatus};
use crate::store::{QueueCounts, Store, StoreError};

/// How long a failed evaluation waits before its next attempt, after
/// `attempts` attempts: 30 s doubling, at most one hour.
pub fn backoff_ms(attempts: u32) -> u64 {
    (30_000u64 << attempts.min(7)).min(3_600_000)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new queue record for `checkpoint` under the evaluation plan
/// `eval_key`, first seen at `now` (RFC 3339).
pub fn new_record(checkpoint: Checkpoint, eval_key: &str, now: String) -> CheckpointRecord {
    CheckpointRecord {
        key: format!("{}|{eval_key}", checkpoint.key()),
        checkpoint,
        eval_key: eval_key.to_string(),
        status: CheckpointStatus::Queued,
        attempts: 0,
        last_error: None,
        next_attempt_ms: 0,
        run_id: None,
        baseline_run_id: None,
        first_seen: now.clone(),
        updated: now,
    }
}

/// What the dispatcher may start now, and when the next retry is due.
pub struct Due {
    /// Queued records whose retry time has come, oldest first (by first
    /// seen, then key).
    pub ready: Vec<CheckpointRecord>,
    /// Unix ms of the earliest retry still waiting.
    pub next_ms: Option<u64>,
}

/// The queue over a store. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: Store,
}

impl Queue {
    pub fn new(store: &Store) -> Queue {
        Queue {
            store: store.clone(),
        }
    }

    /// Adds a record unless its key is queued already; returns whether it
    /// was added.
    pub fn enqueue(&self, record: &CheckpointRecord) -> Result<bool, StoreError> {
        self.store.enqueue(record)
    }

    /// At start: reads every record once (the undecodable ones are
    /// quarantined), brings the indexes in step, and queues again what a
    /// stop or crash left running (its run resumes where it stopped).
    /// Returns the records requeued.
    pub fn recover(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let mut requeued = Vec::new();
        for mut r in self.store.recover_queue()? {
            if r.status == CheckpointStatus::Running {
                r.status = CheckpointStatus::Queued;
                self.store.put_checkpoint(&r)?;
                requeued.push(r);
            }
        }
        Ok(requeued)
    }

    /// The queued records (only those are decoded).
    pub fn queued(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        self.store.checkpoints_in(CheckpointStatus::Queued)
    }

    /// What is due at `now`.
    pub fn due(&self, now: u64) -> Result<Due, StoreError> {
        let queued = self.queued()?;
        let next_ms = queued
            .iter()
            .filter(|r| r.next_attempt_ms > now)
            .map(|r| r.next_attempt_ms)
            .min();
        let mut ready: Vec<CheckpointRecord> = queued
            .into_iter()
            .filter(|r| r.next_attempt_ms <= now)
            .collect();
        ready.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.key.cmp(&b.key)));
        Ok(Due { ready, next_ms })
    }

    /// Marks a record running for its next attempt.
    pub fn start(&self, record: &mut CheckpointRecord, now: String) -> Result<(), StoreError> {
        record.status = CheckpointStatus::Running;
        record.attempts += 1;
        record.updated = now;
        self.store.put_checkpoint(record)
    }

    /// Sets a failed record up for a retry after [`backoff_ms`]; returns
    /// the delay in ms. The caller writes it with [`Queue::put`].
    pub fn retry_later(record: &mut CheckpointRecord, error: String) -> u64 {
        let delay = backoff_ms(record.attempts);
        record.status = CheckpointStatus::Queued;
        record.next_attempt_ms = now_ms() + delay;
        record.last_error = Some(error);
        delay
    }

    /// Writes a record as it now stands.
    pub fn put(&self, record: &CheckpointRecord) -> Result<(), StoreError> {
        self.store.put_checkpoint(record)
    }

    /// Records an evaluation that crashed (a panic) as failed, to be
    /// retried with the backoff.
    pub fn crashed(&self, key: &str, error: String, now: String) -> Result<(), StoreError> {
        if let Some(mut r) = self.store.checkpoint(key)? {
            Self::retry_later(&mut r, format!("crashed: {error}"));
            r.updated = now;
            self.store.put_checkpoint(&r)?;
        }
        Ok(())
    }

    /// How many records are in each state (no record decoded).
    pub fn counts(&self) -> Result<QueueCounts, StoreError> {
        self.store.queue_counts()
    }

    /// Queued or running records.
    pub fn depth(&self) -> Result<usize, StoreError> {
        Ok(self.counts()?.depth())
    }

    /// A record by its watcher and revision (an API evaluation by its id).
    pub fn by_revision(
        &self,
        watcher: &str,
        revision: &str,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        Ok(self
            .store
            .checkpoints_of(watcher, revision)?
            .into_iter()
            .next())
    }

    /// Every record, in key order (the checkpoints listing).
    pub fn all(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        self.store.checkpoints()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(watcher: &str, revision: &str) -> Checkpoint {
        Checkpoint {
            watcher: watcher.into(),
            model: "m".into(),
            revision: revision.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn one_backoff_doubles_from_30_s_to_at_most_an_hour() {
        assert_eq!(backoff_ms(0), 30_000);
        assert_eq!(backoff_ms(1), 60_000);
        assert_eq!(backoff_ms(6), 1_920_000);
        assert_eq!(backoff_ms(7), 3_600_000);
        assert_eq!(backoff_ms(40), 3_600_000);
    }

    #[test]
    fn the_indexes_follow_every_write_and_are_built_on_open_for_old_stores() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let queue = Queue::new(&store);
            let now = "2026-01-01T00:00:00Z".to_string();
            for (i, rev) in ["e_1", "e_2", "e_3"].iter().enumerate() {
                let mut r = new_record(checkpoint("api", rev), "k", now.clone());
                r.first_seen = format!("2026-01-0{}T00:00:00Z", 3 - i);
                assert!(queue.enqueue(&r).unwrap());
                assert!(!queue.enqueue(&r).unwrap(), "inserted once");
            }
            assert_eq!(queue.depth().unwrap(), 3);
            let due = queue.due(1).unwrap();
            let order: Vec<&str> = due
                .ready
                .iter()
                .map(|r| r.checkpoint.revision.as_str())
                .collect();
            assert_eq!(order, ["e_3", "e_2", "e_1"], "oldest first");
            let mut first = due.ready[0].clone();
            queue.start(&mut first, now.clone()).unwrap();
            let delay = Queue::retry_later(&mut first, "boom".into());
            assert_eq!(delay, backoff_ms(1));
            queue.put(&first).unwrap();
            let mut second = due.ready[1].clone();
            queue.start(&mut second, now.clone()).unwrap();
            let mut third = due.ready[2].clone();
            third.status = CheckpointStatus::Done;
            queue.put(&third).unwrap();
            let counts = queue.counts().unwrap();
            assert_eq!(
                counts,
                QueueCounts {
                    queued: 1,
                    running: 1,
                    done: 1,
                    retrying: 1
                }
            );
            let due = queue.due(0).unwrap();
            assert!(due.ready.is_empty());
            assert_eq!(due.next_ms, Some(first.next_attempt_ms));
            let found = queue.by_revision("api", "e_2").unwrap().unwrap();
            assert_eq!(found.status, CheckpointStatus::Running);
            assert!(queue.by_revision("api", "e_9").unwrap().is_none());
            // A store written before the indexes: none, and no mark.
            store
                .tree(crate::store::QUEUE_STATUS)
                .unwrap()
                .clear()
                .unwrap();
            store
                .tree(crate::store::QUEUE_IDS)
                .unwrap()
                .clear()
                .unwrap();
            store.tree("meta").unwrap().remove("index.queue").unwrap();
            store.tree("meta").unwrap().flush().unwrap();
        }
        let store = Store::reopen(dir.path()).unwrap();
        let queue = Queue::new(&store);
        assert_eq!(queue.counts().unwrap().depth(), 2);
        assert!(queue.by_revision("api", "e_2").unwrap().is_some());
        // Recovery at start: the running one is queued again.
        let requeued = queue.recover().unwrap();
        assert_eq!(requeued.len(), 1);
        assert_eq!(requeued[0].checkpoint.revision, "e_2");
        let counts = queue.counts().unwrap();
        assert_eq!((counts.queued, counts.running, counts.done), (2, 0, 1));
        assert_eq!(queue.all().unwrap().len(), 3);
    }
}
