//! The baseline of an evaluation: its completed run, or run now, or (the
//! sequential mode) asked alongside the candidate, only as far as the
//! decision needs.

use tokio::sync::OwnedMutexGuard;
use tracing::info;

use super::{sequential, Evaluator, Failure, Plan, Subject};
use crate::config::{DriftConfig, DriftMode};
use crate::pipeline::{self, Job};
use crate::store::{ResultRecord, RunRecord, RunStatus, Store, StoreError};

/// A baseline as an evaluation uses it.
pub(super) enum BaseRun {
    /// Its completed run (reused, copied or just run).
    Done(Box<RunRecord>, Vec<ResultRecord>),
    /// Not run yet: asked alongside the candidate (the sequential mode).
    Alongside(Box<Job>),
}

impl BaseRun {
    /// The run as stored: for a baseline asked alongside, its unfinished
    /// run so far, if any.
    pub(super) fn into_stored(
        self,
        store: &Store,
    ) -> Result<Option<(RunRecord, Vec<ResultRecord>)>, StoreError> {
        match self {
            BaseRun::Done(run, results) => Ok(Some((*run, results))),
            BaseRun::Alongside(job) => match store.open_run(&pipeline::identity(&job))? {
                Some(run) => {
                    let results = store.results(&run.id)?;
                    Ok(Some((run, results)))
                }
                None => Ok(None),
            },
        }
    }
}

/// The candidate's run, its baseline's as stored after it, and the looker
/// that decided a sequential run.
pub(super) type Asked = (
    RunRecord,
    Vec<ResultRecord>,
    Option<(RunRecord, Vec<ResultRecord>)>,
    Option<sequential::Looker>,
);

impl Evaluator<'_> {
    /// The baseline as the candidate will use it, and, when it is asked
    /// alongside, its lock (held for the whole evaluation). A baseline run
    /// now lets go of its lock at once: the candidate may be the same model
    /// under the same plan (its lock is the same key).
    pub(super) async fn baseline(
        &self,
        plan: &Plan,
        subject: Subject,
        sequential: bool,
    ) -> Result<(BaseRun, Option<OwnedMutexGuard<()>>), Failure> {
        let job = plan.job(subject);
        let lock = self.lock(&pipeline::identity(&job)).await?;
        Ok(match self.reusable(&job, true).await? {
            Some((mut run, results)) => {
                self.audit(plan, &mut run, &results).await;
                (BaseRun::Done(Box::new(run), results), None)
            }
            // Asked alongside the candidate, as far as the sequential
            // decision needs. The candidate's identity holds the
            // sequential rule, so its lock is never this one.
            None if sequential => (BaseRun::Alongside(Box::new(job)), Some(lock)),
            None => {
                let (mut run, results) = self.run(&job, false, None).await?;
                self.audit(plan, &mut run, &results).await;
                (BaseRun::Done(Box::new(run), results), None)
            }
        })
    }

    /// Runs the candidate's `job` against `baseline` (looking as it goes
    /// in the sequential mode); the caller holds both locks.
    pub(super) async fn against(
        &self,
        plan: &Plan,
        job: &Job,
        reuse: bool,
        baseline: Option<BaseRun>,
        rules: &DriftConfig,
    ) -> Result<Asked, Failure> {
        Ok(match baseline {
            None => {
                let (run, results) = self.run(job, reuse, None).await?;
                (run, results, None, None)
            }
            Some(BaseRun::Done(base_run, base_results)) => {
                let mut looker = (rules.mode == DriftMode::Sequential)
                    .then(|| sequential::Looker::new(job, &base_results, rules));
                let (run, results) = self
                    .run(job, reuse, looker.as_mut().map(|l| (l, None)))
                    .await?;
                (run, results, Some((*base_run, base_results)), looker)
            }
            Some(BaseRun::Alongside(base_job)) => {
                let base_run = pipeline::open_run(self.store, &base_job)?;
                info!(baseline = %base_job.model.spec, run = %base_run.id,
                    "asking the baseline alongside the candidate, as far as the sequential decision needs");
                let mut looker =
                    sequential::Looker::new(job, &self.store.results(&base_run.id)?, rules);
                let partner = pipeline::Partner {
                    job: &base_job,
                    run_id: base_run.id.clone(),
                };
                let asked = self
                    .run(job, reuse, Some((&mut looker, Some(partner))))
                    .await;
                let error = asked
                    .as_ref()
                    .err()
                    .map(|e| format!("stopped with the candidate: {e}"));
                let (mut base_run, base_results) =
                    pipeline::settle_partner(self.store, &base_job, &base_run.id, error).await?;
                if base_run.status == RunStatus::Completed {
                    self.audit(plan, &mut base_run, &base_results).await;
                }
                let (run, results) = asked?;
                looker.set_base(&base_results);
                (run, results, Some((base_run, base_results)), Some(looker))
            }
        })
    }
}
