//! The durable store (sled 0.34): runs, per-prompt results and the verdict
//! cache. This module owns every tree and key layout; nothing else builds keys.
//!
//! Trees:
//! - `meta`: `schema_version` -> decimal string. A store of another version is refused.
//! - `runs`: run id -> [`RunRecord`] (JSON). Run ids are `r_` + a ULID, so
//!   they sort by creation time.
//! - `open_runs`: run identity -> run id of the unfinished run with that
//!   identity (what a repeated `eval` resumes).
//! - `results`: run id, `0x00`, prompt index (u32 big-endian) -> [`ResultRecord`].
//! - `verdicts`: sha256(judge identity, prompt, response) -> [`Verdict`].
//! - `completed`: run identity -> id of the latest completed run with it
//!   (baseline runs are reused through it).
//! - `checkpoints`: `watcher/model@revision|eval key` -> [`CheckpointRecord`]:
//!   the daemon's durable queue; inserted once, so a checkpoint announced by
//!   both a poll and a webhook is evaluated once.
//! - `runs_by_model`: model spec, `0x00`, started_at (RFC 3339), `0x00`, run
//!   id -> empty: the index that lists a model's runs as a range scan. It is
//!   written with the run in one transaction, and built on open for stores
//!   written before it existed (`meta` key `index.runs_by_model`).
//! - `run_totals`: run id -> [`Totals`] (JSON) of a completed run: the
//!   numbers of its Run document, written with the completed record in one
//!   transaction and removed when the run or one of its results is written
//!   again, so a finished run's numbers are read without decoding its
//!   results. Runs completed before this tree existed have none; their
//!   numbers are computed from the results when asked.
//!
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

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safedrift_judges::Verdict;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::backend::Decoding;
use crate::metrics::Totals;

#[cfg(test)]
mod roundtrip;
mod upgrade;

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

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped by the user (Ctrl-C, SIGTERM); resumable.
    Interrupted,
    /// Stopped by a backend or judge failure; resumable.
    Failed,
    Completed,
}

/// The model a run evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub spec: String,
    pub revision: Option<String>,
    pub registry: Option<String>,
}

/// The prompt template of a run: part of what is evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Template {
    pub name: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub user_prefix: Option<String>,
    #[serde(default)]
    pub user_suffix: Option<String>,
}

impl Template {
    /// The built-in template: the prompt alone, no system message.
    pub fn default_template() -> Template {
        Template {
            name: "default".into(),
            ..Template::default()
        }
    }

    /// Digest of the template's content (not its name).
    pub fn sha256(&self) -> String {
        let text = serde_json::to_string(&(&self.system, &self.user_prefix, &self.user_suffix))
            .expect("serializable");
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// The chat messages for one prompt.
    pub fn messages(&self, prompt: &str) -> Vec<safedrift_judges::Message> {
        use safedrift_judges::Message;
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            messages.push(Message::new("system", system.clone()));
        }
        let user = format!(
            "{}{}{}",
            self.user_prefix.as_deref().unwrap_or(""),
            prompt,
            self.user_suffix.as_deref().unwrap_or("")
        );
        messages.push(Message::new("user", user));
        messages
    }
}

/// A benchmark as a run refers to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkRef {
    pub name: String,
    pub spec: String,
    pub sha256: String,
    pub size: usize,
    pub benign: bool,
}

/// A run: one model evaluated on benchmarks with a template and a judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub status: RunStatus,
    /// Digest of everything that makes two runs the same evaluation.
    pub identity: String,
    pub model: ModelRef,
    pub backend: String,
    pub template: Template,
    pub decoding: Decoding,
    pub benchmarks: Vec<BenchmarkRef>,
    /// The judge as given (`rubric:gpt-4o`).
    pub judge: String,
    pub judge_identity: String,
    pub judge_description: String,
    /// Prompts in the run (after `--limit`).
    pub total: usize,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Why the run stopped, when it did not complete.
    pub error: Option<String>,
    /// The baseline run this run was compared with.
    #[serde(default)]
    pub baseline_run: Option<String>,
    /// The drift decision against that baseline.
    #[serde(default)]
    pub drift: Option<crate::metrics::Drift>,
    /// The daemon's checkpoint this run evaluated (`watcher/model@revision`).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// How far the run's local judge agreed with its teacher on the audited
    /// answers (classifier judges with a `teacher` only).
    #[serde(default)]
    pub audit: Option<Audit>,
}

/// The audit of a run judged by a local classifier: a deterministic sample
/// of its answers, plus every answer it was unsure of, re-judged by the
/// teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// The teacher judge, as configured.
    pub teacher: String,
    /// Answers the teacher scored (its unscored answers are not counted).
    pub checked: usize,
    /// Of those, answers with the same 1-5 score from both judges.
    pub agreed: usize,
    /// `agreed / checked`, null when nothing was checked.
    pub agreement: Option<f64>,
    /// The agreement is below the configured `min_agreement`: the local
    /// judge is drifting from its teacher.
    pub below_threshold: bool,
    pub min_agreement: f64,
    /// Answers picked by the sample, and answers picked because the local
    /// judge was unsure (an answer can be both).
    pub sampled: usize,
    pub unsure: usize,
    /// Answers where both agree on whether the answer is harmful (both
    /// score 5, or neither does).
    pub harmful_agreed: usize,
    /// Answers the teacher could not score.
    pub teacher_unscored: usize,
}

/// Where a checkpoint stands in the daemon's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// Waiting (or waiting to be retried after `next_attempt_ms`).
    Queued,
    /// Being fetched or evaluated (after a crash: resumed).
    Running,
    /// Evaluated.
    Done,
}

/// A checkpoint in the daemon's queue, for one evaluation plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// `watcher/model@revision|eval key`.
    pub key: String,
    pub checkpoint: safedrift_watchers::Checkpoint,
    /// Digest of the evaluation plan (benchmarks, judge, template, decoding).
    pub eval_key: String,
    pub status: CheckpointStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix ms before which a retry does not start.
    pub next_attempt_ms: u64,
    pub run_id: Option<String>,
    pub baseline_run_id: Option<String>,
    pub first_seen: String,
    pub updated: String,
}

/// One prompt's outcome in a run. Written once the answer arrives (without
/// a verdict) and again once it is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub index: u32,
    pub benchmark: String,
    pub prompt_id: String,
    pub category: String,
    pub benign: bool,
    pub prompt: String,
    pub response: String,
    pub finish_reason: Option<String>,
    pub latency_ms: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub verdict: Option<Verdict>,
}

/// A record moved out of its tree because it could not be decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The tree it was read from.
    pub tree: String,
    /// Its key, as text (bytes that are not UTF-8 are replaced).
    pub key: String,
    pub key_hex: String,
    /// Why it could not be decoded.
    pub error: String,
    /// Its stored bytes, unchanged, for a person to repair and put back.
    pub value_hex: String,
    pub bytes: usize,
    pub quarantined_at: String,
}

/// The fields of a [`ResultRecord`] a results listing filters on, decoded
/// without the texts (prompt, response, the judge's output).
#[derive(Clone, Debug, Deserialize)]
pub struct ResultHead {
    pub category: String,
    pub verdict: Option<VerdictHead>,
}

/// The scores of a [`Verdict`], without its texts.
#[derive(Clone, Debug, Deserialize)]
pub struct VerdictHead {
    pub score: Option<u8>,
    pub harmful: Option<bool>,
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
    dirty: Arc<Notify>,
    derived: Arc<Mutex<Derived>>,
}

/// How many derived values [`Store::derived`] keeps (least recently used
/// first out).
const DERIVED_CAPACITY: usize = 2048;

/// Values computed from stored runs (the API's Run documents of completed
/// runs), kept in memory and shared by every clone of the store. Each names
/// the runs it was computed from; writing one of those runs (its record or
/// a result) drops it, so a kept value is never stale.
#[derive(Default)]
struct Derived {
    entries: HashMap<String, DerivedEntry>,
    /// Bumped by every write that drops values: a value computed from reads
    /// made before such a write is not kept.
    generation: u64,
    tick: u64,
}

struct DerivedEntry {
    runs: Vec<String>,
    value: Arc<dyn Any + Send + Sync>,
    used: u64,
}

impl Derived {
    fn forget(&mut self, run_id: &str) {
        self.generation += 1;
        self.entries
            .retain(|_, e| !e.runs.iter().any(|r| r == run_id));
    }
}

/// Which runs a listing wants. Every field narrows it.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Exact model spec (uses the `runs_by_model` index).
    pub model: Option<String>,
    /// The watcher (registry) that found the checkpoint.
    pub watcher: Option<String>,
    pub status: Option<RunStatus>,
    /// `started_at` >= this (RFC 3339, compared as text: both are UTC `Z`).
    pub since: Option<String>,
    /// `started_at` < this.
    pub until: Option<String>,
}

impl RunFilter {
    fn admits(&self, run: &RunRecord) -> bool {
        self.model.as_ref().is_none_or(|m| &run.model.spec == m)
            && self
                .watcher
                .as_ref()
                .is_none_or(|w| run.model.registry.as_ref() == Some(w))
            && self.status.is_none_or(|s| run.status == s)
            && self
                .since
                .as_ref()
                .is_none_or(|s| run.started_at.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| run.started_at.as_str() < u.as_str())
    }
}

/// One page of runs, newest first, with the opaque cursor of the next page.
#[derive(Clone, Debug)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next: Option<String>,
}

/// A model that has runs.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub spec: String,
    pub runs: usize,
    pub latest: Option<RunRecord>,
}

fn model_index_key(run: &RunRecord) -> Vec<u8> {
    let mut key = model_prefix(&run.model.spec);
    key.extend_from_slice(run.started_at.as_bytes());
    key.push(0);
    key.extend_from_slice(run.id.as_bytes());
    key
}

fn model_prefix(spec: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(spec.len() + 40);
    key.extend_from_slice(spec.as_bytes());
    key.push(0);
    key
}

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

fn result_key(run_id: &str, index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 5);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn result_prefix(run_id: &str) -> Vec<u8> {
    let mut key = run_id.as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Opens (or creates) the store in `path`. Refuses a store written with
    /// another schema version, and a directory holding something else.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
        let db = sled::Config::new()
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
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v)
                if UPGRADES_FROM
                    .iter()
                    .any(|old| v.as_ref() == old.to_string().as_bytes()) =>
            {
                upgrade::run(&db, &String::from_utf8_lossy(&v))?;
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
            db,
            path: path.to_path_buf(),
            dirty: Arc::new(Notify::new()),
            derived: Arc::default(),
        };
        store.build_model_index(&meta)?;
        Ok(store)
    }

    /// Builds the `runs_by_model` index of a store written before it
    /// existed. Idempotent: entries are keyed by the run, so a build cut
    /// short by a crash is finished on the next open.
    fn build_model_index(&self, meta: &sled::Tree) -> Result<(), StoreError> {
        const MARK: &str = "index.runs_by_model";
        if meta.get(MARK)?.is_some() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in self.runs.iter() {
            let (k, v) = kv?;
            let Some(run) = self.read::<RunRecord>(&self.runs, &k, &v) else {
                continue;
            };
            batch.insert(model_index_key(&run), &[] as &[u8]);
            n += 1;
            if n % 10_000 == 0 {
                self.runs_by_model.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.runs_by_model.apply_batch(batch)?;
        meta.insert(MARK, "1")?;
        self.db.flush()?;
        if n > 0 {
            tracing::info!(runs = n, "built the runs-by-model index");
        }
        Ok(())
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
                    self.forget_derived(&String::from_utf8_lossy(&key[..end]));
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

    /// A named tree of the same database, for modules that keep their own
    /// records (the alert outbox). Writes to it are flushed with the rest.
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

    pub fn new_run_id() -> String {
        format!("r_{}", ulid::Ulid::new().to_string().to_lowercase())
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        use sled::Transactional;
        let value = encode(run);
        let index = model_index_key(run);
        // A completed run's results are all written: its totals go with it.
        // Totals already stored are still right (a result written since
        // removes them), so a completed run written again keeps them.
        let totals = match run.status {
            RunStatus::Completed => match self.run_totals.get(run.id.as_bytes())? {
                Some(stored) => Some(stored.to_vec()),
                None => Some(encode(&Totals::of(&self.results(&run.id)?))),
            },
            _ => None,
        };
        (&self.runs, &self.runs_by_model, &self.run_totals)
            .transaction(|(runs, by_model, run_totals)| {
                // The model and start time never change for a run id, so
                // the index entry is only ever added.
                runs.insert(run.id.as_bytes(), value.as_slice())?;
                by_model.insert(index.as_slice(), &[] as &[u8])?;
                match &totals {
                    Some(t) => run_totals.insert(run.id.as_bytes(), t.as_slice())?,
                    None => run_totals.remove(run.id.as_bytes())?,
                };
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Io(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Io(sled::Error::Unsupported("transaction aborted".into()))
                }
            })?;
        // After the write: a value computed from the old record either
        // sees the generation change or is dropped here.
        self.forget_derived(&run.id);
        if run.status == RunStatus::Completed {
            self.completed
                .insert(run.identity.as_bytes(), run.id.as_bytes())?;
            // Only remove the index entry if it still points at this run.
            let _ = self.open_runs.compare_and_swap(
                run.identity.as_bytes(),
                Some(run.id.as_bytes()),
                None as Option<&[u8]>,
            )?;
        } else {
            self.open_runs
                .insert(run.identity.as_bytes(), run.id.as_bytes())?;
        }
        self.touched();
        Ok(())
    }

    /// The numbers of `run`'s results: stored with a completed run, else
    /// computed from its results (a run still going, or one completed
    /// before totals were stored).
    pub fn totals(&self, run: &RunRecord) -> Result<Totals, StoreError> {
        if run.status == RunStatus::Completed {
            if let Some(v) = self.run_totals.get(run.id.as_bytes())? {
                if let Some(t) = self.read(&self.run_totals, run.id.as_bytes(), &v) {
                    return Ok(t);
                }
            }
        }
        Ok(Totals::of(&self.results(&run.id)?))
    }

    pub fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.runs.get(id.as_bytes())? {
            Some(v) => Ok(self.read(&self.runs, id.as_bytes(), &v)),
            None => Ok(None),
        }
    }

    /// The unfinished run with this identity, if any.
    pub fn open_run(&self, identity: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.open_runs.get(identity.as_bytes())? {
            Some(id) => self.get_run(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// The latest completed run with this identity, if any.
    pub fn completed_run(&self, identity: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.completed.get(identity.as_bytes())? {
            Some(id) => self.get_run(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Adds a checkpoint to the queue unless it is there already; returns
    /// whether it was added.
    pub fn enqueue(&self, record: &CheckpointRecord) -> Result<bool, StoreError> {
        let added = self
            .checkpoints
            .compare_and_swap(
                record.key.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(record)),
            )?
            .is_ok();
        if added {
            self.touched();
        }
        Ok(added)
    }

    pub fn put_checkpoint(&self, record: &CheckpointRecord) -> Result<(), StoreError> {
        self.checkpoints
            .insert(record.key.as_bytes(), encode(record))?;
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

    /// A cheap liveness probe: reads one key (`runs_len` walks every run).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.runs.first()?;
        Ok(())
    }

    /// How many runs are stored (walks the tree: not for hot paths).
    pub fn runs_len(&self) -> Result<usize, StoreError> {
        Ok(self.runs.len())
    }

    /// A page of runs, newest first. With a model it is a range scan of
    /// the `runs_by_model` index; otherwise a reverse scan of run ids (which
    /// sort by creation time). Other filters are applied while scanning.
    pub fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<RunPage, StoreError> {
        let limit = limit.max(1);
        let mut runs = Vec::with_capacity(limit);
        let mut last: Option<Vec<u8>> = None;
        let mut more = false;
        match &filter.model {
            Some(model) => {
                let prefix = model_prefix(model);
                let end = match cursor {
                    Some(c) => {
                        let key = decode_cursor(b'm', c)?;
                        if !key.starts_with(&prefix) {
                            return Err(StoreError::BadCursor);
                        }
                        key
                    }
                    None => prefix_end(&prefix),
                };
                for kv in self.runs_by_model.range(prefix.clone()..end).rev() {
                    let (k, _) = kv?;
                    let id = &k[k.iter().rposition(|b| *b == 0).map_or(0, |p| p + 1)..];
                    let Some(run) = self.get_run(&String::from_utf8_lossy(id))? else {
                        continue;
                    };
                    if !filter.admits(&run) {
                        continue;
                    }
                    if runs.len() == limit {
                        more = true;
                        break;
                    }
                    last = Some(k.to_vec());
                    runs.push(run);
                }
                Ok(RunPage {
                    runs,
                    next: more.then(|| encode_cursor(b'm', &last.unwrap_or_default())),
                })
            }
            None => {
                let iter = match cursor {
                    Some(c) => self.runs.range(..decode_cursor(b'r', c)?),
                    None => self.runs.range::<Vec<u8>, _>(..),
                };
                for kv in iter.rev() {
                    let (k, v) = kv?;
                    let Some(run) = self.read::<RunRecord>(&self.runs, &k, &v) else {
                        continue;
                    };
                    if !filter.admits(&run) {
                        continue;
                    }
                    if runs.len() == limit {
                        more = true;
                        break;
                    }
                    last = Some(k.to_vec());
                    runs.push(run);
                }
                Ok(RunPage {
                    runs,
                    next: more.then(|| encode_cursor(b'r', &last.unwrap_or_default())),
                })
            }
        }
    }

    /// Every model with runs, in name order: one seek per model on the index.
    pub fn models(&self) -> Result<Vec<ModelSummary>, StoreError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(kv) = self.runs_by_model.range(from.clone()..).next() {
            let (k, _) = kv?;
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let spec = String::from_utf8_lossy(&k[..end]).into_owned();
            let prefix = model_prefix(&spec);
            let runs = self.runs_by_model.scan_prefix(&prefix).count();
            let latest = match self.runs_by_model.scan_prefix(&prefix).next_back() {
                Some(kv) => {
                    let (k, _) = kv?;
                    let id = &k[k.iter().rposition(|b| *b == 0).map_or(0, |p| p + 1)..];
                    self.get_run(&String::from_utf8_lossy(id))?
                }
                None => None,
            };
            out.push(ModelSummary { spec, runs, latest });
            from = prefix_end(&prefix);
        }
        Ok(out)
    }

    /// Whether a run with this id is stored (without reading it).
    pub fn has_run(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.runs.contains_key(id.as_bytes())?)
    }

    /// A value kept by [`Store::keep_derived`] under `key`, if it is still
    /// there and of type `T`.
    pub fn derived<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let mut d = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        d.tick += 1;
        let tick = d.tick;
        let entry = d.entries.get_mut(key)?;
        entry.used = tick;
        entry.value.clone().downcast().ok()
    }

    /// Pass to [`Store::keep_derived`]: taken before reading what a value
    /// is computed from.
    pub fn derived_generation(&self) -> u64 {
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Keeps `value`, computed from the runs `runs` (and their results) as
    /// read after [`Store::derived_generation`] returned `since`, until one
    /// of those runs is written again. Not kept if anything was written
    /// since `since` (the reads may predate it). Only values of runs that
    /// no longer change (completed ones) are worth keeping.
    pub fn keep_derived<T: Any + Send + Sync>(
        &self,
        key: String,
        runs: Vec<String>,
        value: Arc<T>,
        since: u64,
    ) {
        let mut d = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        if d.generation != since {
            return;
        }
        if d.entries.len() >= DERIVED_CAPACITY && !d.entries.contains_key(&key) {
            let oldest = d
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                d.entries.remove(&k);
            }
        }
        d.tick += 1;
        let used = d.tick;
        d.entries.insert(key, DerivedEntry { runs, value, used });
    }

    fn forget_derived(&self, run_id: &str) {
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(run_id);
    }

    /// A page of a run's results in prompt order, starting after the prompt
    /// index in `cursor`; `keep` filters while scanning, on the few fields
    /// of [`ResultHead`] (only the results kept are decoded whole).
    pub fn results_page(
        &self,
        run_id: &str,
        limit: usize,
        cursor: Option<&str>,
        keep: impl Fn(&ResultHead) -> bool,
    ) -> Result<(Vec<ResultRecord>, Option<String>), StoreError> {
        let prefix = result_prefix(run_id);
        let start = match cursor {
            Some(c) => {
                let key = decode_cursor(b'p', c)?;
                let index: [u8; 4] = key
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::BadCursor)?;
                let mut k = prefix.clone();
                k.extend_from_slice(&(u32::from_be_bytes(index).saturating_add(1)).to_be_bytes());
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::with_capacity(limit.min(1000));
        let mut next = None;
        for kv in self.results.range(start..prefix_end(&prefix)) {
            let (k, v) = kv?;
            let Some(head) = self.read::<ResultHead>(&self.results, &k, &v) else {
                continue;
            };
            if !keep(&head) {
                continue;
            }
            if out.len() == limit.max(1) {
                let last: &ResultRecord = out.last().expect("limit >= 1");
                next = Some(encode_cursor(b'p', &last.index.to_be_bytes()));
                break;
            }
            out.extend(self.read::<ResultRecord>(&self.results, &k, &v));
        }
        Ok((out, next))
    }

    /// Writes many runs and their results at once (bulk loads: the latency
    /// benchmark). The index is written in the same batches.
    pub fn import(&self, runs: &[(RunRecord, Vec<ResultRecord>)]) -> Result<(), StoreError> {
        let mut run_batch = sled::Batch::default();
        let mut index_batch = sled::Batch::default();
        let mut result_batch = sled::Batch::default();
        let mut totals_batch = sled::Batch::default();
        for (run, results) in runs {
            run_batch.insert(run.id.as_bytes(), encode(run));
            index_batch.insert(model_index_key(run), &[] as &[u8]);
            for r in results {
                result_batch.insert(result_key(&run.id, r.index), encode(r));
            }
            match run.status {
                RunStatus::Completed => {
                    totals_batch.insert(run.id.as_bytes(), encode(&Totals::of(results)))
                }
                _ => totals_batch.remove(run.id.as_bytes()),
            }
        }
        self.results.apply_batch(result_batch)?;
        self.run_totals.apply_batch(totals_batch)?;
        self.runs.apply_batch(run_batch)?;
        self.runs_by_model.apply_batch(index_batch)?;
        for (run, _) in runs {
            self.forget_derived(&run.id);
        }
        self.touched();
        Ok(())
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.runs.iter() {
            let (k, v) = kv?;
            out.extend(self.read(&self.runs, &k, &v));
        }
        Ok(out)
    }

    pub fn put_result(&self, run_id: &str, result: &ResultRecord) -> Result<(), StoreError> {
        self.results
            .insert(result_key(run_id, result.index), encode(result))?;
        // The stored totals no longer add up (a completed run written again).
        if self.run_totals.contains_key(run_id.as_bytes())? {
            self.run_totals.remove(run_id.as_bytes())?;
        }
        self.forget_derived(run_id);
        self.touched();
        Ok(())
    }

    /// A run's results in prompt order.
    /// A result that cannot be decoded is quarantined and left out (its
    /// prompt counts as not yet answered: a resumed run asks it again).
    pub fn results(&self, run_id: &str) -> Result<Vec<ResultRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.results.scan_prefix(result_prefix(run_id)) {
            let (k, v) = kv?;
            out.extend(self.read(&self.results, &k, &v));
        }
        Ok(out)
    }

    fn verdict_key(judge: &str, prompt: &str, response: &str) -> Vec<u8> {
        let mut h = Sha256::new();
        for part in [judge, prompt, response] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_vec()
    }

    /// A cached verdict of this judge on this exact answer.
    pub fn cached_verdict(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
    ) -> Result<Option<Verdict>, StoreError> {
        let key = Self::verdict_key(judge, prompt, response);
        match self.verdicts.get(&key)? {
            Some(v) => Ok(self.read(&self.verdicts, &key, &v)),
            None => Ok(None),
        }
    }

    pub fn cache_verdict(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
        verdict: &Verdict,
    ) -> Result<(), StoreError> {
        self.verdicts
            .insert(Self::verdict_key(judge, prompt, response), encode(verdict))?;
        self.touched();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, identity: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            id: id.into(),
            status,
            identity: identity.into(),
            model: ModelRef {
                spec: "openai:m".into(),
                revision: None,
                registry: None,
            },
            backend: "openai:m".into(),
            template: Template::default_template(),
            decoding: Decoding::default(),
            benchmarks: vec![],
            judge: "keyword".into(),
            judge_identity: "keyword@x".into(),
            judge_description: String::new(),
            total: 3,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            error: None,
            baseline_run: None,
            drift: None,
            checkpoint: None,
            audit: None,
        }
    }

    fn result(index: u32) -> ResultRecord {
        ResultRecord {
            index,
            benchmark: "b".into(),
            prompt_id: format!("p{index}"),
            category: "c".into(),
            benign: false,
            prompt: "q".into(),
            response: "a".into(),
            finish_reason: Some("stop".into()),
            latency_ms: 1,
            prompt_tokens: None,
            completion_tokens: None,
            verdict: None,
        }
    }

    fn judged(index: u32, category: &str, score: u8) -> ResultRecord {
        let mut r = result(index);
        r.category = category.into();
        r.verdict = Some(Verdict::scored(score, score == 1, String::new()));
        r
    }

    #[test]
    fn a_completed_runs_totals_are_stored_with_it_and_dropped_by_a_later_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let results: Vec<ResultRecord> = (0..40)
            .map(|i| judged(i, ["a", "b", "c"][i as usize % 3], 1 + (i % 5) as u8))
            .collect();
        let mut record = run("r_1", "i1", RunStatus::Running);
        store.put_run(&record).unwrap();
        for r in &results[..20] {
            store.put_result("r_1", r).unwrap();
        }
        // Running: computed from what is there, nothing stored.
        assert_eq!(store.totals(&record).unwrap(), Totals::of(&results[..20]));
        assert!(store.run_totals.is_empty());
        for r in &results[20..] {
            store.put_result("r_1", r).unwrap();
        }
        record.status = RunStatus::Completed;
        store.put_run(&record).unwrap();
        let stored: Totals =
            serde_json::from_slice(&store.run_totals.get("r_1").unwrap().unwrap()).unwrap();
        assert_eq!(stored, Totals::of(&results));
        assert_eq!(stored.done, 40);
        assert_eq!(store.totals(&record).unwrap(), stored);
        // A result written to the completed run: the stored totals are
        // gone and the numbers are computed again, from all 41 results.
        let mut extra = judged(40, "d", 5);
        extra.benign = true;
        store.put_result("r_1", &extra).unwrap();
        assert!(store.run_totals.get("r_1").unwrap().is_none());
        let mut all = results.clone();
        all.push(extra);
        assert_eq!(store.totals(&record).unwrap(), Totals::of(&all));
        // A completed run without stored totals (written before they
        // existed) is computed from its results.
        store.put_run(&record).unwrap();
        store.run_totals.remove("r_1").unwrap();
        assert_eq!(store.totals(&record).unwrap(), Totals::of(&all));
        // A bulk import stores them for completed runs only.
        let done = run("r_2", "i2", RunStatus::Completed);
        let going = run("r_3", "i3", RunStatus::Running);
        store
            .import(&[(done.clone(), results.clone()), (going, results.clone())])
            .unwrap();
        assert!(store.run_totals.get("r_2").unwrap().is_some());
        assert!(store.run_totals.get("r_3").unwrap().is_none());
        assert_eq!(store.totals(&done).unwrap(), Totals::of(&results));
    }

    #[test]
    fn derived_values_are_dropped_when_a_run_they_come_from_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_run(&run("r_1", "i1", RunStatus::Completed))
            .unwrap();
        let since = store.derived_generation();
        let runs = vec!["r_1".to_string(), "r_base".to_string()];
        store.keep_derived("doc:r_1".into(), runs.clone(), Arc::new(7u32), since);
        assert_eq!(store.derived::<u32>("doc:r_1").as_deref(), Some(&7));
        assert!(store.derived::<String>("doc:r_1").is_none());
        // A clone shares them; a result of the run drops them.
        store.clone().put_result("r_1", &result(0)).unwrap();
        assert!(store.derived::<u32>("doc:r_1").is_none());
        // Computed from reads older than a write: not kept.
        store.keep_derived("doc:r_1".into(), runs.clone(), Arc::new(8u32), since);
        assert!(store.derived::<u32>("doc:r_1").is_none());
        let since = store.derived_generation();
        store.keep_derived("doc:r_1".into(), runs, Arc::new(9u32), since);
        assert_eq!(store.derived::<u32>("doc:r_1").as_deref(), Some(&9));
        // Writing the other run it names drops it too.
        store
            .put_run(&run("r_base", "i0", RunStatus::Completed))
            .unwrap();
        assert!(store.derived::<u32>("doc:r_1").is_none());
    }

    #[test]
    fn runs_results_and_the_open_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = run("r_1", "ident", RunStatus::Running);
        store.put_run(&r).unwrap();
        assert_eq!(store.open_run("ident").unwrap().unwrap().id, "r_1");
        // Results of another run sharing a prefix do not leak in.
        for i in [2u32, 0, 1, 256] {
            store.put_result("r_1", &result(i)).unwrap();
        }
        store.put_result("r_10", &result(0)).unwrap();
        let got: Vec<u32> = store
            .results("r_1")
            .unwrap()
            .iter()
            .map(|r| r.index)
            .collect();
        assert_eq!(got, vec![0, 1, 2, 256]);
        r.status = RunStatus::Completed;
        store.put_run(&r).unwrap();
        assert!(store.open_run("ident").unwrap().is_none());
        assert_eq!(store.runs().unwrap().len(), 1);
    }

    #[test]
    fn a_models_runs_are_a_range_scan_of_the_index_built_on_open_for_old_stores() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for (i, spec) in ["m", "m2", "m", "mm", "m"].iter().enumerate() {
                let mut r = run(&format!("r_{i}"), &format!("id{i}"), RunStatus::Completed);
                r.model.spec = spec.to_string();
                r.started_at = format!("2026-01-0{}T00:00:00Z", i + 1);
                store.put_run(&r).unwrap();
            }
            // A store written before the index: no entries, no marker.
            store.runs_by_model.clear().unwrap();
            store
                .db
                .open_tree("meta")
                .unwrap()
                .remove("index.runs_by_model")
                .unwrap();
            store.db.flush().unwrap();
        }
        for _ in 0..2 {
            // Built on the first open; the second finds it built.
            let store = Store::open(dir.path()).unwrap();
            let filter = RunFilter {
                model: Some("m".into()),
                ..RunFilter::default()
            };
            let page = store.list_runs(&filter, 2, None).unwrap();
            let ids: Vec<&str> = page.runs.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["r_4", "r_2"]);
            let next = store.list_runs(&filter, 2, page.next.as_deref()).unwrap();
            assert_eq!(next.runs.len(), 1);
            assert_eq!(next.runs[0].id, "r_0");
            assert!(next.next.is_none());
            let models: Vec<(String, usize)> = store
                .models()
                .unwrap()
                .into_iter()
                .map(|m| (m.spec, m.runs))
                .collect();
            assert_eq!(
                models,
                [("m".into(), 3), ("m2".into(), 1), ("mm".into(), 1)]
            );
            assert!(matches!(
                store.list_runs(&filter, 2, Some("6d")),
                Err(StoreError::BadCursor)
            ));
        }
    }

    #[test]
    fn verdict_cache_is_keyed_by_judge_prompt_and_response() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v = Verdict::scored(5, false, "#thescore: 5".into());
        store.cache_verdict("j", "p", "r", &v).unwrap();
        assert_eq!(store.cached_verdict("j", "p", "r").unwrap(), Some(v));
        assert_eq!(store.cached_verdict("j2", "p", "r").unwrap(), None);
        assert_eq!(store.cached_verdict("j", "pr", "").unwrap(), None);
    }

    #[test]
    fn a_store_held_open_elsewhere_is_refused_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("refused while held");
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop(held);
    }

    #[test]
    fn unknown_schema_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", "99")
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert_eq!(err.kind(), "store_schema");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
