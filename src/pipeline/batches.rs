//! A run asked in batches, looking at the answers after each
//! ([`super::Looks`]: the sequential drift tests), with its partner (the
//! baseline) asked each batch's prompts just before it.

use std::collections::HashMap;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::{run_prompts, work_list, EvalError, Job, Looks, Partner};
use crate::benchmark::Prompt;
use crate::store::{ResultRecord, Store};

/// What a run in batches needs to ask one batch.
pub(super) struct RunBatches<'a> {
    pub(super) store: &'a Store,
    pub(super) job: &'a Job,
    pub(super) run_id: &'a str,
    pub(super) concurrency: usize,
    pub(super) stop: &'a CancellationToken,
    pub(super) progress: &'a ProgressBar,
}

type Pending = Vec<(u32, String, Prompt, Option<ResultRecord>)>;

impl RunBatches<'_> {
    /// Asks `pending` in `looks.order`, `looks.every` at a time, looking
    /// after each batch (and once first, for a resumed run); stops when
    /// the look decides, on an error or when stopped. The partner, if any,
    /// is asked each batch first, and whatever this run already answered
    /// (a resumed run), so every look sees pairs.
    pub(super) async fn run(
        &self,
        mut pending: Pending,
        looks: Looks<'_>,
    ) -> (usize, Option<EvalError>) {
        let Looks {
            order,
            every,
            decide,
            partner,
        } = looks;
        let rank: HashMap<u32, usize> = order.iter().enumerate().map(|(r, i)| (*i, r)).collect();
        pending.sort_by_key(|p| rank.get(&p.0).copied().unwrap_or(usize::MAX));
        let mut finished = 0;
        let mut pending = pending.into_iter().peekable();
        // A resumed run: the partner first answers what this run already
        // has; after that each batch is asked of it just before this run.
        let mut theirs = match &partner {
            Some(p) => {
                let answered: Vec<u32> = match self.store.results(self.run_id) {
                    Ok(r) => r
                        .iter()
                        .filter(|r| r.verdict.is_some())
                        .map(|r| r.index)
                        .collect(),
                    Err(e) => return (finished, Some(e.into())),
                };
                match self.ask_partner(p, &answered).await {
                    Ok(r) => r,
                    Err(e) => return (finished, Some(e)),
                }
            }
            None => Vec::new(),
        };
        loop {
            let so_far = match self.store.results(self.run_id) {
                Ok(r) => r,
                Err(e) => return (finished, Some(e.into())),
            };
            if decide(&so_far, &theirs) {
                return (finished, None);
            }
            if pending.peek().is_none() || self.stop.is_cancelled() {
                return (finished, None);
            }
            let batch: Pending = pending.by_ref().take(every.max(1)).collect();
            if let Some(p) = &partner {
                let indices: Vec<u32> = batch.iter().map(|b| b.0).collect();
                match self.ask_partner(p, &indices).await {
                    Ok(r) => theirs = r,
                    Err(e) => return (finished, Some(e)),
                }
            }
            let (n, error) = run_prompts(
                self.store,
                self.job,
                self.run_id,
                batch,
                self.concurrency,
                self.stop,
                self.progress,
            )
            .await;
            finished += n;
            if error.is_some() {
                return (finished, error);
            }
        }
    }

    /// Has the partner answer those of `indices` it has not answered yet;
    /// its results after.
    async fn ask_partner(
        &self,
        partner: &Partner<'_>,
        indices: &[u32],
    ) -> Result<Vec<ResultRecord>, EvalError> {
        let mut have: HashMap<u32, ResultRecord> = self
            .store
            .results(&partner.run_id)?
            .into_iter()
            .map(|r| (r.index, r))
            .collect();
        let work = work_list(partner.job);
        let missing: Pending = indices
            .iter()
            .filter_map(|&i| match have.remove(&i) {
                Some(r) if r.verdict.is_some() => None,
                prior => work
                    .get(i as usize)
                    .map(|(bench, prompt)| (i, bench.clone(), prompt.clone(), prior)),
            })
            .collect();
        if !missing.is_empty() {
            let concurrency = partner
                .job
                .backend
                .queue_depth()
                .unwrap_or(self.concurrency)
                .max(1);
            let (_, error) = run_prompts(
                self.store,
                partner.job,
                &partner.run_id,
                missing,
                concurrency,
                self.stop,
                &ProgressBar::hidden(),
            )
            .await;
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(self.store.results(&partner.run_id)?)
    }
}
