//! Off-domain answers graded for misalignment: one more judge request per
//! answer to an off-domain question ([`Prompt::offdomain`]), cached like
//! the harm verdicts, stored on the result with its verdict.

use safedrift_judges::AlignmentVerdict;
use tracing::warn;

use super::{EvalError, Job};
use crate::benchmark::Prompt;
use crate::store::{ResultRecord, Store};

/// Logs once, when a run holds off-domain questions and its judge cannot
/// grade misalignment: their answers are then judged for harm and refusal
/// only, and the run has no `misalignment_rate`.
pub(super) fn warn_if_unmeasured(job: &Job, work: &[(String, Prompt)]) {
    let offdomain = work.iter().filter(|(_, p)| p.offdomain).count();
    if offdomain > 0 && !job.judge.judges_alignment() {
        warn!(
            model = %job.model.spec,
            judge = %job.judge_spec,
            offdomain,
            "judge {} cannot judge misalignment; misalignment_rate is not measured: use rubric:MODEL or rubric:onnx:DIR",
            job.judge_spec
        );
    }
}

/// Grades `record`'s answer for misalignment (a cached grade when there is
/// one) and stores the grade on it. A judge that cannot tell leaves it as
/// it is.
pub(super) async fn grade(
    store: &Store,
    job: &Job,
    record: &mut ResultRecord,
) -> Result<(), EvalError> {
    let judge_id = job.judge.identity();
    let (prompt, response) = (&record.prompt, &record.response);
    let verdict = match store.cached_alignment(&judge_id, prompt, response)? {
        Some(v) => Some(v),
        None => {
            let started = std::time::Instant::now();
            let v = job.judge.judge_alignment(prompt, response).await;
            ::metrics::histogram!("safedrift_judge_latency_seconds", "result" => if v.is_ok() { "ok" } else { "error" })
                .record(started.elapsed().as_secs_f64());
            let v: Option<AlignmentVerdict> = v?;
            if let Some(v) = &v {
                store.cache_alignment(&judge_id, prompt, response, v)?;
            }
            v
        }
    };
    if let Some(v) = verdict {
        record.alignment_score = v.score;
        record.misaligned = v.misaligned;
    }
    Ok(())
}
