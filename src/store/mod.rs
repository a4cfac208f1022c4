//! The durable store (sled 0.34): runs, per-prompt results, the verdict
//! cache, the daemon's queue and the alert outbox. This module owns every
//! tree and key layout; nothing else builds keys. By concern: `runs.rs`
//! (runs, results and their indexes), `queue.rs` (the queue and its
//! indexes), `verdicts.rs`, `alerts.rs` (the outbox's trees); this file
//! opens the store, checks its schema, flushes, and quarantines. The
//! records themselves are in `crate::records`.
//!
//! Trees:
//! - `meta`: `schema_version` -> decimal string. A store of another version is refused.
//! - `runs`: run id -> [`RunRecord`] (JSON). Run ids are `r_` + a ULID, so
//!   they sort by creation time.
//! - `open_runs`: run identity -> run id of the unfinished run with that
//!   identity (what a repeated `eval` resumes).
//! - `results`: run id, `0x00`, prompt index (u32 big-endian) -> [`ResultRecord`].
//! - `verdicts`: sha256(judge identity, prompt, response) ->
//!   [`safedrift_judges::Verdict`].
//! - `completed`: run identity -> id of the latest completed run with it
//!   (baseline runs are reused through it).
//! - `checkpoints`: `watcher/model@revision|eval key` -> [`CheckpointRecord`]:
//!   the daemon's durable queue; inserted once, so a checkpoint announced by
//!   both a poll and a webhook is evaluated once. Its indexes
//!   `queue_status` and `queue_ids` are described in `queue.rs`.
//! - `runs_by_model`: model spec, `0x00`, started_at (RFC 3339), `0x00`, run
//!   id -> empty: the index that lists a model's runs as a range scan. It is
//!   written with the run in one transaction, and built on open for stores
//!   written before it existed (`meta` key `index.runs_by_model`).
//! - `run_totals`: run id -> [`crate::safety_metrics::Totals`] (JSON) of a completed run: the
//!   numbers of its Run document, written with the completed record in one
//!   transaction and removed when the run or one of its results is written
//!   again, so a finished run's numbers are read without decoding its
//!   results. Runs completed before this tree existed have none; their
//!   numbers are computed from the results when asked.
//! - `alerts`, `alert_decisions`, `alert_lineages`, `alert_open`: the alert
//!   outbox (see `alerts.rs`).
//! - `quarantine`: tree name, `0x00`, original key -> [`Quarantined`]: a
//!   record that could not be decoded, moved out of its tree (in one
//!   transaction) with the error, so that one bad record costs that record
//!   only: the queue, listings and start-up go on without it. `/healthz`,
//!   `/metrics` and `GET /api/v1/quarantine` show them; `safedrift export`
//!   carries them (with the raw bytes) for a person to repair.
//!
//! Schema versions: 1 wrote a registry-named baseline that was a runnable
//! target (`Baseline::Target`) as one JSON object with two `type` keys,
//! which could not be read back; 2 tags both enums adjacently. A version-1
//! store is upgraded when opened (its queue records rewritten in one batch,
//! then the version bumped; an upgrade cut short is redone on the next
//! open, and rewriting an upgraded record changes nothing).
//!
//! Durability: writes go to sled at once; a background task fsyncs
//! (`flush_async`) whenever something was written, so batches of results are
//! flushed together. A kill -9 loses at most the writes of the last few
//! milliseconds, never a flushed one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

mod alerts;
mod queue;
#[cfg(test)]
mod roundtrip;
mod runs;
mod upgrade;
mod verdicts;

pub use crate::records::{
    Audit, BenchmarkRef, CheckpointRecord, CheckpointStatus, ModelRef, Quarantined, ResultHead,
    ResultRecord, RunRecord, RunStatus, Template, VerdictHead,
};
use alerts::AlertTrees;
pub use alerts::{ALERTS, DECISIONS, LINEAGES, OPEN};
pub use queue::{QueueCounts, QUEUE_IDS, QUEUE_STATUS};
pub use runs::{ModelSummary, RunFilter, RunPage};

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Older layout versions this build upgrades when it opens them.
pub const UPGRADES_FROM: &[u32] = &[1];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store {path}: in use by another process (a running daemon or eval); stop it or use another data_dir")]
    InUse { path: PathBuf },
    #[error("store {path}: schema version {found} is not supported by this build (it reads version {SCHEMA_VERSION}); use the safedrift release that wrote it, or export and import")]
    Schema { path: PathBuf, found: String },
    #[error("store: {}", describe(.0))]
    Io(#[from] sled::Error),
    #[error("store: corrupt record under key {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("store: run {0} not found")]
    RunNotFound(String),
    #[error("the cursor is not one this listing gave out")]
    BadCursor,
}

/// sled's errors, in words: an I/O error as the OS says it, a full disk
/// with what to do.
fn describe(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            format!("{io}: the disk holding data_dir is full; free space (nothing stored was lost)")
        }
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Open { .. } | StoreError::InUse { .. } => "store_open",
            StoreError::Schema { .. } => "store_schema",
            StoreError::Io(_) => "store_io",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::RunNotFound(_) => "not_found",
            StoreError::BadCursor => "bad_cursor",
        }
    }
}

/// The store. Cheap to clone; clones share one database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    runs: sled::Tree,
    open_runs: sled::Tree,
    results: sled::Tree,
    verdicts: sled::Tree,
    completed: sled::Tree,
    checkpoints: sled::Tree,
    runs_by_model: sled::Tree,
    run_totals: sled::Tree,
    quarantine: sled::Tree,
    /// The queue's indexes (see [`queue`]).
    queue_status: sled::Tree,
    queue_ids: sled::Tree,
    /// The alert outbox's trees (see [`alerts`]).
    alerts: AlertTrees,
    dirty: Arc<Notify>,
    /// Called with a run id after its record or one of its results was
    /// written or quarantined (the API's document cache listens).
    run_listeners: Arc<Mutex<Vec<RunListener>>>,
}

/// See [`Store::on_run_change`]; returns false to stop listening.
pub type RunListener = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// The cursor is the hex of the last key returned (an index key or a run
/// id), prefixed by which listing it belongs to, so a cursor of one listing
/// cannot be replayed on another.
fn encode_cursor(scope: u8, key: &[u8]) -> String {
    let mut raw = vec![scope];
    raw.extend_from_slice(key);
    hex::encode(raw)
}

fn decode_cursor(scope: u8, cursor: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::BadCursor;
    let raw = hex::decode(cursor).map_err(|_| bad())?;
    match raw.split_first() {
        Some((s, key)) if *s == scope && !key.is_empty() => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

/// Opens sled in `path`: refuses a damaged store (its database file gone,
/// its other files left) and one held by another process.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: path.to_path_buf(),
        message,
    };
    let restore = format!(
        "to restore: stop safedrift, move {} aside, then `safedrift import BACKUP.jsonl --data-dir {}` (see systemd/README.md)",
        path.display(),
        path.display()
    );
    // A store whose database file is gone (sled's other files remain)
    // is damaged: it is never silently replaced by an empty one.
    let sled_files = ["conf", "blobs", "snap"];
    if !path.join("db").exists() {
        if let Ok(entries) = std::fs::read_dir(path) {
            let leftovers = entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                sled_files
                    .iter()
                    .any(|f| name == *f || name.starts_with("snap."))
            });
            if leftovers {
                return Err(open_err(format!(
                    "the store's database file `db` is missing but its other files remain: the store is damaged; nothing was changed; {restore}"
                )));
            }
        }
    }
    std::fs::create_dir_all(path)
        .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;
    sled::Config::new()
        .path(path)
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| match e {
            // sled 0.34 reports the lock held elsewhere as an `Other`
            // I/O error with this text.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().starts_with("could not acquire lock") =>
            {
                StoreError::InUse {
                    path: path.to_path_buf(),
                }
            }
            sled::Error::Io(io) => open_err(format!("cannot open: {io}")),
            other => open_err(format!(
                "cannot open ({other}); the files may be damaged; nothing was changed; {restore}"
            )),
        })
}

/// Checks the schema version: this build's goes on, an older one this build
/// knows is upgraded, a new store gets this build's, anything else is
/// refused.
fn check_schema(db: &sled::Db, meta: &sled::Tree, path: &Path) -> Result<(), StoreError> {
    match meta.get("schema_version")? {
        Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
        Some(v)
            if UPGRADES_FROM
                .iter()
                .any(|old| v.as_ref() == old.to_string().as_bytes()) =>
        {
            upgrade::run(db, &String::from_utf8_lossy(&v))?;
            meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            db.flush()?;
        }
        Some(v) => {
            return Err(StoreError::Schema {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&v).into_owned(),
            })
        }
        None => {
            let has_data = db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() != b"__sled__default" && n.as_ref() != b"meta")
                || !db.is_empty();
            if has_data {
                return Err(StoreError::Schema {
                    path: path.to_path_buf(),
                    found: "(none)".into(),
                });
            }
            meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            db.flush()?;
        }
    }
    Ok(())
}

impl Store {
    /// [`Store::open`] for tests that open a store again in the same
    /// process: sled's flusher thread can hold the file lock a moment after
    /// the previous handle is dropped, so `InUse` is retried for up to 10 s.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                other => return other,
            }
        }
    }

    /// Opens (or creates) the store in `path`. Refuses a store written with
    /// another schema version, and a directory holding something else.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_db(path)?;
        let meta = db.open_tree("meta")?;
        check_schema(&db, &meta, path)?;
        let store = Store {
            runs: db.open_tree("runs")?,
            open_runs: db.open_tree("open_runs")?,
            results: db.open_tree("results")?,
            verdicts: db.open_tree("verdicts")?,
            completed: db.open_tree("completed")?,
            checkpoints: db.open_tree("checkpoints")?,
            runs_by_model: db.open_tree("runs_by_model")?,
            run_totals: db.open_tree("run_totals")?,
            quarantine: db.open_tree("quarantine")?,
            queue_status: db.open_tree(QUEUE_STATUS)?,
            queue_ids: db.open_tree(QUEUE_IDS)?,
            alerts: AlertTrees::open(&db)?,
            db,
            path: path.to_path_buf(),
            dirty: Arc::new(Notify::new()),
            run_listeners: Arc::default(),
        };
        store.build_model_index(&meta)?;
        store.build_queue_index(&meta)?;
        Ok(store)
    }

    /// Calls `listener` with a run's id after its record or one of its
    /// results was written (or quarantined), on every clone of the store,
    /// until it returns false.
    pub fn on_run_change(&self, listener: RunListener) {
        self.run_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    fn run_changed(&self, run_id: &str) {
        self.run_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|listener| listener(run_id));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes a record read from `tree`. One that cannot be decoded is
    /// moved to the quarantine (see the module's doc) and `None` returned,
    /// so whatever reads it goes on with the rest.
    pub(crate) fn read<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &[u8],
    ) -> Option<T> {
        match serde_json::from_slice(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.quarantine(tree, key, value, &e.to_string());
                None
            }
        }
    }

    /// Moves a record out of `tree` into the quarantine, in one transaction
    /// and only if it still holds `value` (a writer that replaced it in the
    /// meantime wins). Logged and counted once, when moved.
    pub(crate) fn quarantine(&self, tree: &sled::Tree, key: &[u8], value: &[u8], error: &str) {
        use sled::Transactional;
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        let record = Quarantined {
            tree: name.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            key_hex: hex::encode(key),
            error: error.to_string(),
            value_hex: hex::encode(value),
            bytes: value.len(),
            quarantined_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut qkey = name.as_bytes().to_vec();
        qkey.push(0);
        qkey.extend_from_slice(key);
        let encoded = encode(&record);
        let moved = (tree, &self.quarantine).transaction(|(t, q)| match t.get(key)? {
            Some(v) if v.as_ref() == value => {
                t.remove(key)?;
                q.insert(qkey.as_slice(), encoded.as_slice())?;
                Ok::<bool, sled::transaction::ConflictableTransactionError<()>>(true)
            }
            _ => Ok(false),
        });
        match moved {
            Ok(true) => {
                tracing::error!(
                    tree = %name,
                    key = %record.key,
                    error,
                    "a stored record cannot be decoded; moved it to the quarantine, everything else goes on (GET /api/v1/quarantine)"
                );
                ::metrics::counter!("safedrift_store_quarantined_total", "tree" => name.clone())
                    .increment(1);
                // Values derived from a run are dropped with its records.
                if matches!(name.as_str(), "runs" | "results" | "run_totals") {
                    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
                    self.run_changed(&String::from_utf8_lossy(&key[..end]));
                }
                // A queue record's index entries go with it.
                if name == "checkpoints" {
                    self.forget_queue_index(key);
                }
                self.touched();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(tree = %name, key = %record.key, error = ?e, "cannot move an undecodable record to the quarantine")
            }
        }
    }

    /// The quarantined records, oldest key first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut out = Vec::new();
        for kv in self.quarantine.iter() {
            let (k, v) = kv?;
            // The quarantine's own records are written by this build; one
            // that does not decode is shown by its key alone.
            out.push(serde_json::from_slice(&v).unwrap_or_else(|e| Quarantined {
                tree: "quarantine".into(),
                key: String::from_utf8_lossy(&k).into_owned(),
                key_hex: hex::encode(&k),
                error: e.to_string(),
                value_hex: hex::encode(&v),
                bytes: v.len(),
                quarantined_at: String::new(),
            }));
        }
        Ok(out)
    }

    /// How many records are in the quarantine.
    pub fn quarantined_len(&self) -> usize {
        self.quarantine.len()
    }

    /// A named tree of the same database, raw: for `safedrift export` and
    /// tests that damage or clear a tree on purpose. Everything else reads
    /// and writes through the store's own methods, which own the key
    /// layouts.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The names of every tree holding records (for export).
    pub fn tree_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .filter(|n| n != "__sled__default")
            .collect()
    }

    /// Marks the store dirty so the background flusher fsyncs soon.
    pub fn touch(&self) {
        self.dirty.notify_one();
    }

    /// Starts the background flusher: each burst of writes is followed by one
    /// fsync. Call once, from within a tokio runtime.
    pub fn spawn_flusher(&self) -> tokio::task::JoinHandle<()> {
        let db = self.db.clone();
        let dirty = self.dirty.clone();
        tokio::spawn(async move {
            loop {
                dirty.notified().await;
                if let Err(e) = db.flush_async().await {
                    tracing::error!(error = %e, "store flush failed");
                }
            }
        })
    }

    fn touched(&self) {
        self.dirty.notify_one();
    }

    /// Flushes everything written so far to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// A cheap liveness probe: reads one key (`runs_len` walks every run).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.runs.first()?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
