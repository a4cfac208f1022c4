//! One evaluation: a model answers every prompt of its benchmarks through a
//! template, a judge scores each answer, and everything is stored as it
//! arrives so that an interrupted run resumes where it stopped.
//!
//! A run's identity is the digest of what makes two evaluations the same:
//! the backend and model, the template's content, the decoding settings, the
//! benchmarks' digests, the judge's identity and the prompt limit. Starting an
//! evaluation whose identity has an unfinished run continues that run: prompts
//! whose answers are stored are never sent to the model again; answers stored
//! without a verdict are only judged.
//!
//! At most `concurrency` prompts are in progress at once (each is one model
//! request, then at most two judge requests, and for an off-domain question
//! at most two more for its misalignment grade). On a failure or a cancel,
//! no new prompt starts, the prompts in flight finish and are stored, and
//! the run is saved as `failed` or `interrupted`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use indicatif::ProgressBar;
use safedrift_judges::{Judge, JudgeError};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{Backend, BackendError, Decoding};
use crate::benchmark::{Benchmark, Prompt};
use crate::store::{
    Audit, ModelRef, ResultRecord, RunRecord, RunStatus, Store, StoreError, Template,
};

mod alignment;
mod attack;
pub use attack::check_prefill;
mod batches;
mod runs;
pub use runs::{open_run, settle_partner};
mod identity;
use batches::RunBatches;
pub use identity::{content_identity, identity};

/// What to evaluate.
pub struct Job {
    pub model: ModelRef,
    pub backend: Arc<dyn Backend>,
    pub template: Template,
    pub decoding: Decoding,
    pub benchmarks: Arc<Vec<Benchmark>>,
    pub judge: Arc<dyn Judge>,
    /// The judge as the user named it.
    pub judge_spec: String,
    /// At most this many prompts per benchmark.
    pub limit: Option<usize>,
    /// The sequential rule this run may stop early by (`[drift] mode =
    /// "sequential"`), as text: part of the run's identity, since such a
    /// run can hold fewer answers than a full one.
    pub sequential: Option<String>,
}

/// Looks at the answers while a run goes on: the prompts are asked in
/// `order` (indices of the work list), `every` at a time, and after each
/// batch `decide` sees every result so far (and the partner's, when there
/// is one); `true` ends the run there, completed with the prompts asked.
pub struct Looks<'a> {
    pub order: Vec<u32>,
    pub every: usize,
    pub decide: &'a mut (dyn FnMut(&[ResultRecord], &[ResultRecord]) -> bool + Send),
    /// A run asked the same prompts just before this one, batch by batch:
    /// the baseline, asked only as far as the decision needs.
    pub partner: Option<Partner<'a>>,
}

/// The run asked alongside a run in batches ([`Looks::partner`]): its job
/// and its open run (from [`open_run`]).
pub struct Partner<'a> {
    pub job: &'a Job,
    pub run_id: String,
}

/// The work list of a job: (benchmark name, prompt), in benchmark order;
/// a result's `index` is its position here.
pub fn work(job: &Job) -> Vec<(String, Prompt)> {
    work_list(job)
}

/// Why an evaluation stopped early. The run's progress is stored either way.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Judge(#[from] JudgeError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("interrupted")]
    Interrupted,
}

/// An evaluation that stopped early, with the run it left behind.
#[derive(Debug, thiserror::Error)]
#[error("run {run_id} of {model} stopped after {done} of {total} prompts: {error}. Run the same command again to resume it")]
pub struct Stopped {
    pub run_id: String,
    pub model: String,
    pub done: usize,
    pub total: usize,
    pub error: EvalError,
}

/// Picks at most `limit` prompts, taking categories in turn (in the order
/// they first appear) so that a small limit still covers every category.
pub fn limit_prompts(prompts: &[Prompt], limit: Option<usize>) -> Vec<Prompt> {
    let Some(limit) = limit else {
        return prompts.to_vec();
    };
    let mut by_category: Vec<(String, std::collections::VecDeque<&Prompt>)> = Vec::new();
    for p in prompts {
        match by_category.iter_mut().find(|(c, _)| *c == p.category) {
            Some((_, q)) => q.push_back(p),
            None => by_category.push((p.category.clone(), [p].into())),
        }
    }
    let mut picked: Vec<&Prompt> = Vec::new();
    while picked.len() < limit && by_category.iter().any(|(_, q)| !q.is_empty()) {
        for (_, q) in by_category.iter_mut() {
            if picked.len() < limit {
                if let Some(p) = q.pop_front() {
                    picked.push(p);
                }
            }
        }
    }
    // Keep the file order.
    let chosen: std::collections::HashSet<*const Prompt> =
        picked.iter().map(|p| *p as *const Prompt).collect();
    prompts
        .iter()
        .filter(|p| chosen.contains(&(*p as *const Prompt)))
        .cloned()
        .collect()
}

/// The prompts of a job, in order, with their benchmark names.
fn work_list(job: &Job) -> Vec<(String, Prompt)> {
    job.benchmarks
        .iter()
        .flat_map(|b| {
            limit_prompts(&b.prompts, job.limit)
                .into_iter()
                .map(move |p| (b.name.clone(), p))
        })
        .collect()
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs (or resumes) an evaluation. Returns the completed run and its results.
pub async fn evaluate(
    store: &Store,
    job: &Job,
    concurrency: usize,
    progress: &ProgressBar,
    cancel: &CancellationToken,
) -> Result<(RunRecord, Vec<ResultRecord>), Stopped> {
    evaluate_looking(store, job, concurrency, progress, cancel, None).await
}

/// [`evaluate`], asking the prompts in batches and stopping when `looks`
/// decides (sequential drift tests).
pub async fn evaluate_looking(
    store: &Store,
    job: &Job,
    concurrency: usize,
    progress: &ProgressBar,
    cancel: &CancellationToken,
    looks: Option<Looks<'_>>,
) -> Result<(RunRecord, Vec<ResultRecord>), Stopped> {
    let work = work_list(job);
    alignment::warn_if_unmeasured(job, &work);
    let stopped = |run_id: &str, done: usize, error: EvalError| Stopped {
        run_id: run_id.to_string(),
        model: job.model.spec.clone(),
        done,
        total: work.len(),
        error,
    };
    let run = open_run(store, job).map_err(|e| stopped("-", 0, e.into()))?;

    let mut existing: HashMap<u32, ResultRecord> = store
        .results(&run.id)
        .map_err(|e| stopped(&run.id, 0, e.into()))?
        .into_iter()
        .map(|r| (r.index, r))
        .collect();
    let already = existing.values().filter(|r| r.verdict.is_some()).count();
    progress.set_length(work.len() as u64);
    progress.set_position(already as u64);
    progress.set_message(job.model.spec.clone());
    // The daemon's API finds the running run's progress by this prefix.
    progress.set_prefix(run.id.clone());
    ::metrics::counter!("safedrift_runs_started_total").increment(1);

    let stop = cancel.child_token();
    let pending: Vec<(u32, String, Prompt, Option<ResultRecord>)> = work
        .iter()
        .enumerate()
        .filter_map(|(i, (bench, prompt))| {
            let i = i as u32;
            let prior = existing.remove(&i);
            match prior {
                Some(r) if r.verdict.is_some() => None,
                prior => Some((i, bench.clone(), prompt.clone(), prior)),
            }
        })
        .collect();
    let run_id = run.id.clone();
    let concurrency = job.backend.queue_depth().unwrap_or(concurrency).max(1);
    let (finished, first_error) = match looks {
        None => run_prompts(store, job, &run_id, pending, concurrency, &stop, progress).await,
        Some(looks) => {
            let batches = RunBatches {
                store,
                job,
                run_id: &run_id,
                concurrency,
                stop: &stop,
                progress,
            };
            batches.run(pending, looks).await
        }
    };
    let done = already + finished;
    let error = match first_error {
        Some(e) => Some(e),
        None if cancel.is_cancelled() && done < work.len() => Some(EvalError::Interrupted),
        None => None,
    };
    finish(store, job, run, done, work.len(), error).await
}

/// Stores how the run ended: completed, or interrupted or failed with the
/// error (its progress kept either way).
async fn finish(
    store: &Store,
    job: &Job,
    mut run: RunRecord,
    done: usize,
    total: usize,
    error: Option<EvalError>,
) -> Result<(RunRecord, Vec<ResultRecord>), Stopped> {
    let stopped = |run_id: &str, done: usize, error: EvalError| Stopped {
        run_id: run_id.to_string(),
        model: job.model.spec.clone(),
        done,
        total,
        error,
    };
    match error {
        Some(error) => {
            run.status = if matches!(error, EvalError::Interrupted) {
                RunStatus::Interrupted
            } else {
                RunStatus::Failed
            };
            run.error = Some(error.to_string());
            ::metrics::counter!("safedrift_runs_total", "status" => if run.status == RunStatus::Interrupted { "interrupted" } else { "failed" }).increment(1);
            let _ = store.put_run(&run);
            let _ = store.flush().await;
            Err(stopped(&run.id, done, error))
        }
        None => {
            run.status = RunStatus::Completed;
            run.finished_at = Some(now());
            ::metrics::counter!("safedrift_runs_total", "status" => "completed").increment(1);
            store
                .put_run(&run)
                .map_err(|e| stopped(&run.id, done, e.into()))?;
            store
                .flush()
                .await
                .map_err(|e| stopped(&run.id, done, e.into()))?;
            let results = store
                .results(&run.id)
                .map_err(|e| stopped(&run.id, done, e.into()))?;
            Ok((run, results))
        }
    }
}

/// Answers and judges the pending prompts, `concurrency` at a time, until
/// all are done or `stop` is cancelled: how many completed, and the first
/// error that stopped the run.
async fn run_prompts(
    store: &Store,
    job: &Job,
    run_id: &str,
    pending: Vec<(u32, String, Prompt, Option<ResultRecord>)>,
    concurrency: usize,
    stop: &CancellationToken,
    progress: &ProgressBar,
) -> (usize, Option<EvalError>) {
    let mut first_error: Option<EvalError> = None;
    let mut finished = 0;
    let tasks = futures::stream::iter(pending)
        .take_until({
            let stop = stop.clone();
            let backend = job.backend.clone();
            async move {
                stop.cancelled().await;
                backend.cancel_pending();
            }
        })
        .map(|(i, bench, prompt, prior)| process(store, job, run_id, i, bench, prompt, prior))
        .buffer_unordered(concurrency.max(1));
    futures::pin_mut!(tasks);
    while let Some(outcome) = tasks.next().await {
        match outcome {
            Ok(()) => {
                finished += 1;
                progress.inc(1);
            }
            Err(EvalError::Interrupted) => stop.cancel(),
            Err(e) => {
                if first_error.is_none() {
                    warn!(run = %run_id, error = %e, "stopping the run: no new prompts start");
                    first_error = Some(e);
                }
                stop.cancel();
                job.backend.cancel_pending();
            }
        }
    }
    (finished, first_error)
}

/// One prompt: answer (unless stored), then judge (unless cached), storing
/// each step as it completes.
async fn process(
    store: &Store,
    job: &Job,
    run_id: &str,
    index: u32,
    benchmark: String,
    prompt: Prompt,
    prior: Option<ResultRecord>,
) -> Result<(), EvalError> {
    let offdomain = prompt.offdomain;
    // An attacked prompt's answer is judged against its plain request.
    let request = prompt.attack.as_ref().map(|a| a.request.clone());
    let mut record = match prior {
        Some(r) => r,
        None => {
            let (messages, prefill) = attack::chat(job, &prompt)?;
            let started = std::time::Instant::now();
            let generation = job.backend.generate(&messages, &job.decoding).await;
            ::metrics::histogram!("safedrift_backend_latency_seconds", "result" => if generation.is_ok() { "ok" } else { "error" })
                .record(started.elapsed().as_secs_f64());
            let generation = match generation {
                Err(e) if e.kind == "cancelled" => return Err(EvalError::Interrupted),
                other => other?,
            };
            let correct = (!prompt.expected.is_empty())
                .then(|| crate::benchmark::is_correct(&generation.text, &prompt.expected));
            let record = ResultRecord {
                index,
                benchmark,
                prompt_id: prompt.id,
                category: prompt.category,
                benign: prompt.benign,
                prompt: prompt.text,
                correct,
                response: generation.text,
                finish_reason: generation.finish_reason,
                latency_ms: generation.latency_ms,
                prompt_tokens: generation.prompt_tokens,
                completion_tokens: generation.completion_tokens,
                verdict: None,
                misaligned: None,
                alignment_score: None,
                attack: prompt.attack.map(|a| a.modifier),
                prefill,
            };
            store.put_result(run_id, &record)?;
            record
        }
    };
    let judge_id = job.judge.identity();
    let asked = request.as_deref().unwrap_or(&record.prompt);
    let verdict = match store.cached_verdict(&judge_id, asked, &record.response)? {
        Some(v) => v,
        None => {
            let started = std::time::Instant::now();
            let v = job.judge.judge(asked, &record.response).await;
            ::metrics::histogram!("safedrift_judge_latency_seconds", "result" => if v.is_ok() { "ok" } else { "error" })
                .record(started.elapsed().as_secs_f64());
            let v = v?;
            store.cache_verdict(&judge_id, asked, &record.response, &v)?;
            v
        }
    };
    if offdomain {
        // Stored with the verdict: a result with a verdict is never judged
        // again when the run resumes.
        alignment::grade(store, job, &mut record).await?;
    }
    record.verdict = Some(verdict);
    store.put_result(run_id, &record)?;
    ::metrics::counter!("safedrift_prompts_evaluated_total").increment(1);
    Ok(())
}

/// How a local judge's runs are audited against its teacher.
#[derive(Clone)]
pub struct AuditPlan {
    pub teacher: Arc<dyn Judge>,
    /// The teacher as configured.
    pub teacher_spec: String,
    /// Share of the answers sampled (by a hash of benchmark and prompt id).
    pub fraction: f64,
    /// Answers judged with a lower confidence are always audited.
    pub unsure_below: f64,
    /// Below this agreement the run is flagged.
    pub min_agreement: f64,
}

/// Whether a prompt is in the audit sample: the same prompts every run, so
/// that audits of successive checkpoints are comparable.
pub fn in_audit_sample(benchmark: &str, prompt_id: &str, fraction: f64) -> bool {
    let mut h = Sha256::new();
    h.update(benchmark.as_bytes());
    h.update([0]);
    h.update(prompt_id.as_bytes());
    let digest = h.finalize();
    let x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (x as f64 / 2f64.powi(64)) < fraction
}

/// Re-judges the audited answers of a run with the teacher (through the
/// verdict cache) and measures the agreement. An `Err` means the teacher
/// could not be asked.
pub async fn audit(
    store: &Store,
    results: &[ResultRecord],
    plan: &AuditPlan,
    concurrency: usize,
) -> Result<Audit, EvalError> {
    let mut sampled = 0;
    let mut unsure = 0;
    // Plain prompts only: an attacked answer was judged against its plain
    // request, which its result does not keep.
    let picked: Vec<(String, String, u8)> = results
        .iter()
        .filter(|r| r.attack.is_none())
        .filter_map(|r| {
            let v = r.verdict.as_ref()?;
            let score = v.score?;
            let in_sample = in_audit_sample(&r.benchmark, &r.prompt_id, plan.fraction);
            let is_unsure = v.confidence.is_some_and(|c| c < plan.unsure_below);
            sampled += usize::from(in_sample);
            unsure += usize::from(is_unsure);
            (in_sample || is_unsure).then(|| (r.prompt.clone(), r.response.clone(), score))
        })
        .collect();
    let teacher_id = plan.teacher.identity();
    let teacher = plan.teacher.clone();
    let mut verdicts = Vec::with_capacity(picked.len());
    {
        let judged = futures::stream::iter(picked)
            .map(|(prompt, response, local)| {
                let teacher_id = teacher_id.clone();
                let teacher = teacher.clone();
                let store = store.clone();
                async move {
                    let v = match store.cached_verdict(&teacher_id, &prompt, &response)? {
                        Some(v) => v,
                        None => {
                            let v = teacher.judge(&prompt, &response).await?;
                            store.cache_verdict(&teacher_id, &prompt, &response, &v)?;
                            v
                        }
                    };
                    Ok::<_, EvalError>((local, v.score))
                }
            })
            .buffer_unordered(concurrency.max(1));
        futures::pin_mut!(judged);
        while let Some(v) = judged.next().await {
            verdicts.push(v);
        }
    }
    let (mut checked, mut agreed, mut harmful_agreed, mut teacher_unscored) = (0, 0, 0, 0);
    for v in verdicts {
        match v? {
            (_, None) => teacher_unscored += 1,
            (local, Some(teacher)) => {
                checked += 1;
                agreed += usize::from(local == teacher);
                harmful_agreed += usize::from((local == 5) == (teacher == 5));
            }
        }
    }
    let agreement = (checked > 0).then(|| agreed as f64 / checked as f64);
    Ok(Audit {
        teacher: plan.teacher_spec.clone(),
        checked,
        agreed,
        agreement,
        below_threshold: agreement.is_some_and(|a| a < plan.min_agreement),
        min_agreement: plan.min_agreement,
        sampled,
        unsure,
        harmful_agreed,
        teacher_unscored,
    })
}

/// Audits a completed run (once: a run that has an audit keeps it), stores
/// the result in the run, logs a warning and counts it when the agreement is
/// below the threshold. A teacher that cannot be asked leaves the run
/// unaudited (logged); it never fails the evaluation.
pub async fn audit_run(
    store: &Store,
    run: &mut RunRecord,
    results: &[ResultRecord],
    plan: &AuditPlan,
    concurrency: usize,
) {
    if run.audit.is_some() {
        return;
    }
    match audit(store, results, plan, concurrency).await {
        Ok(a) => {
            let judge = run.judge.clone();
            if let Some(agreement) = a.agreement {
                ::metrics::gauge!("safedrift_judge_audit_agreement", "judge" => judge.clone())
                    .set(agreement);
            }
            ::metrics::counter!("safedrift_judge_audits_total", "judge" => judge.clone())
                .increment(1);
            if a.below_threshold {
                ::metrics::counter!("safedrift_judge_audit_below_threshold_total", "judge" => judge.clone())
                    .increment(1);
                warn!(run = %run.id, judge = %judge, teacher = %a.teacher, checked = a.checked,
                      agreement = ?a.agreement, min_agreement = a.min_agreement,
                      "the local judge agrees with its teacher less than required: it may be drifting");
            } else {
                info!(run = %run.id, judge = %judge, checked = a.checked, agreement = ?a.agreement, "audited the local judge");
            }
            run.audit = Some(a);
            if let Err(e) = store.put_run(run) {
                warn!(run = %run.id, error = %e, "cannot store the audit");
            }
        }
        Err(e) => {
            warn!(run = %run.id, error = %e, "cannot audit the local judge against its teacher")
        }
    }
}

#[cfg(test)]
mod tests;
