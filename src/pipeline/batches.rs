//! A run asked in batches, looking at the answers after each
//! ([`super::Looks`]: the sequential drift tests).

use std::collections::HashMap;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::{run_prompts, EvalError, Job, Looks};
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

impl RunBatches<'_> {
    /// Asks `pending` in `looks.order`, `looks.every` at a time, looking
    /// after each batch (and once first, for a resumed run); stops when
    /// the look decides, on an error or when stopped.
    pub(super) async fn run(
        &self,
        mut pending: Vec<(u32, String, Prompt, Option<ResultRecord>)>,
        looks: Looks<'_>,
    ) -> (usize, Option<EvalError>) {
        let rank: HashMap<u32, usize> = looks
            .order
            .iter()
            .enumerate()
            .map(|(r, i)| (*i, r))
            .collect();
        pending.sort_by_key(|p| rank.get(&p.0).copied().unwrap_or(usize::MAX));
        let mut finished = 0;
        let mut pending = pending.into_iter().peekable();
        loop {
            match self.store.results(self.run_id) {
                Ok(so_far) if (looks.decide)(&so_far) => return (finished, None),
                Ok(_) => {}
                Err(e) => return (finished, Some(e.into())),
            }
            if pending.peek().is_none() || self.stop.is_cancelled() {
                return (finished, None);
            }
            let batch: Vec<_> = pending.by_ref().take(looks.every.max(1)).collect();
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
}
