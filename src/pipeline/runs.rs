//! Run records: a job's run opened (resumed or new) and, for a run asked
//! alongside another ([`super::Partner`]), settled once that one ends.

use super::{identity, limit_prompts, now, work_list, Job};
use crate::store::{BenchmarkRef, ResultRecord, RunRecord, RunStatus, Store, StoreError};
use tracing::info;

/// The job's unfinished run, resumed, or a new one; stored as running.
pub fn open_run(store: &Store, job: &Job) -> Result<RunRecord, StoreError> {
    let identity = identity(job);
    let run = match store.open_run(&identity)? {
        Some(mut run) => {
            info!(run = %run.id, model = %job.model.spec, "resuming the unfinished run");
            run.status = RunStatus::Running;
            run.error = None;
            run
        }
        None => new_run(job, &identity, work_list(job).len()),
    };
    store.put_run(&run)?;
    Ok(run)
}

/// Stores where a [`Partner`] run stands once the run it was asked
/// alongside has ended: completed when every prompt is answered, else
/// [`RunStatus::Partial`] (failed, with the error, when `error`).
pub async fn settle_partner(
    store: &Store,
    job: &Job,
    run_id: &str,
    error: Option<String>,
) -> Result<(RunRecord, Vec<ResultRecord>), StoreError> {
    let mut run = store
        .get_run(run_id)?
        .ok_or_else(|| StoreError::RunNotFound(run_id.to_string()))?;
    let results = store.results(run_id)?;
    let answered = results.iter().filter(|r| r.verdict.is_some()).count();
    run.status = match &error {
        Some(_) => RunStatus::Failed,
        None if answered >= work_list(job).len() => {
            run.finished_at = Some(now());
            ::metrics::counter!("safedrift_runs_total", "status" => "completed").increment(1);
            RunStatus::Completed
        }
        None => RunStatus::Partial,
    };
    run.error = error;
    store.put_run(&run)?;
    store.flush().await?;
    Ok((run, results))
}

/// A new run record for `job`, with nothing answered yet.
fn new_run(job: &Job, identity: &str, total: usize) -> RunRecord {
    RunRecord {
        id: Store::new_run_id(),
        status: RunStatus::Running,
        identity: identity.to_string(),
        model: job.model.clone(),
        backend: job.backend.identity(),
        template: job.template.clone(),
        decoding: job.decoding.clone(),
        benchmarks: job
            .benchmarks
            .iter()
            .map(|b| BenchmarkRef {
                name: b.name.clone(),
                spec: b.spec.clone(),
                sha256: b.sha256.clone(),
                size: limit_prompts(&b.prompts, job.limit).len(),
                benign: b.benign,
            })
            .collect(),
        judge: job.judge_spec.clone(),
        judge_identity: job.judge.identity(),
        judge_description: job.judge.describe(),
        total,
        started_at: now(),
        finished_at: None,
        error: None,
        baseline_run: None,
        drift: None,
        checkpoint: None,
        audit: None,
        content_identity: None,
        copied_from: None,
        kl: None,
    }
}
