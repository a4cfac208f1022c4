//! Runs and their results: the `runs`, `open_runs`, `completed`,
//! `results`, `runs_by_model` and `run_totals` trees and their key layouts
//! (see the store's module doc).

use super::{decode_cursor, encode, encode_cursor, prefix_end, Store, StoreError};
use crate::records::{ResultHead, ResultRecord, RunRecord, RunStatus};
use crate::safety_metrics::Totals;

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
    /// Builds the `runs_by_model` index of a store written before it
    /// existed. Idempotent: entries are keyed by the run, so a build cut
    /// short by a crash is finished on the next open.
    pub(super) fn build_model_index(&self, meta: &sled::Tree) -> Result<(), StoreError> {
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
        self.run_changed(&run.id);
        if run.status == RunStatus::Completed {
            self.completed
                .insert(run.identity.as_bytes(), run.id.as_bytes())?;
            if let Some(content) = &run.content_identity {
                self.completed
                    .insert(content_key(content), run.id.as_bytes())?;
            }
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

    /// The latest completed run of this plan on a model with this content
    /// ([`RunRecord::content_identity`]), if any.
    pub fn completed_run_by_content(
        &self,
        content_identity: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        match self.completed.get(content_key(content_identity))? {
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
        // The keys to walk, newest first, each with its run: index keys
        // (the run read by id) or run ids (the run decoded in place).
        type Walk<'a> =
            Box<dyn Iterator<Item = Result<(Vec<u8>, Option<RunRecord>), StoreError>> + 'a>;
        let (scope, walk): (u8, Walk) = match &filter.model {
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
                let walk = self.runs_by_model.range(prefix..end).rev().map(|kv| {
                    let (k, _) = kv?;
                    let id = &k[k.iter().rposition(|b| *b == 0).map_or(0, |p| p + 1)..];
                    let run = self.get_run(&String::from_utf8_lossy(id))?;
                    Ok((k.to_vec(), run))
                });
                (b'm', Box::new(walk))
            }
            None => {
                let iter = match cursor {
                    Some(c) => self.runs.range(..decode_cursor(b'r', c)?),
                    None => self.runs.range::<Vec<u8>, _>(..),
                };
                let walk = iter.rev().map(|kv| {
                    let (k, v) = kv?;
                    let run = self.read::<RunRecord>(&self.runs, &k, &v);
                    Ok((k.to_vec(), run))
                });
                (b'r', Box::new(walk))
            }
        };
        let mut runs = Vec::with_capacity(limit);
        let mut last: Option<Vec<u8>> = None;
        let mut more = false;
        for item in walk {
            let (key, Some(run)) = item? else {
                continue;
            };
            if !filter.admits(&run) {
                continue;
            }
            if runs.len() == limit {
                more = true;
                break;
            }
            last = Some(key);
            runs.push(run);
        }
        Ok(RunPage {
            runs,
            next: more.then(|| encode_cursor(scope, &last.unwrap_or_default())),
        })
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
            self.run_changed(&run.id);
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
        self.run_changed(run_id);
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
}

/// The `completed` index's key for a content identity (run identities are
/// bare hex digests, so the prefix keeps the two apart).
fn content_key(content_identity: &str) -> Vec<u8> {
    format!("content:{content_identity}").into_bytes()
}
