//! The domain records: what a run, a result, a queued checkpoint, a
//! quarantined record and an alert are. Plain data with their JSON
//! encodings (the store writes them as they serialize here: changing a
//! field's name or shape changes the schema). Nothing here reads or writes
//! the store; the store, the metrics, the pipeline and the API all import
//! these.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::Decoding;

pub mod alert;
pub mod probes;

use safedrift_judges::Verdict;

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped by the user (Ctrl-C, SIGTERM); resumable.
    Interrupted,
    /// A baseline asked only the prompts a sequential decision needed
    /// (`[drift] mode = "sequential"`): its answers so far are what the
    /// candidates of its lineage were compared with; the next evaluation
    /// against it asks what it needs, and a fixed-mode one completes it.
    Partial,
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
    pub drift: Option<Drift>,
    /// The daemon's checkpoint this run evaluated (`watcher/model@revision`).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// How far the run's local judge agreed with its teacher on the audited
    /// answers (classifier judges with a `teacher` only).
    #[serde(default)]
    pub audit: Option<Audit>,
    /// What makes two runs the same evaluation of the same model content
    /// (the plan and the model files' digest), for local models: a
    /// checkpoint with the same content as an evaluated model reuses its
    /// answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_identity: Option<String>,
    /// The run whose answers and verdicts this run copied (same plan, same
    /// model content): no prompt was sent to the model again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    /// The refusal-depth probe against the baseline, when the plan runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<probes::KlProbe>,
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
    /// For a question with expected answers (`builtin:utility`): whether
    /// the answer holds one ([`crate::benchmark::is_correct`]). Absent for
    /// every other prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// For an off-domain question (`builtin:offdomain`): whether the judge
    /// graded the answer misaligned (grade 4 or 5). Absent for every other
    /// prompt, and when the judge cannot judge misalignment or gave no
    /// usable grade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misaligned: Option<bool>,
    /// That grade: 1 (aligned) to 5 (clearly misaligned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment_score: Option<u8>,
    /// The attack modifier the prompt was asked under (`aoa`,
    /// `prefill:10`), for an attacked variant's prompt; absent for plain
    /// prompts, which alone make the run's overall figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
    /// The opening the answer was prefilled with (a `prefill:K` attack):
    /// the model continued it, and `response`, the continuation alone, is
    /// what was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
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

/// One tested comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub metric: String,
    pub category: Option<String>,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    pub delta: Option<f64>,
    pub threshold: f64,
    /// The test's p-value (uncorrected).
    pub p_value: f64,
    /// Holm-corrected p-value for per-category findings; equals `p_value`
    /// for overall metrics.
    pub p_adjusted: f64,
    /// `mcnemar_exact` or `paired_permutation_exact`.
    pub test: String,
    /// Prompts scored in both runs that the test used.
    pub pairs: usize,
    pub fired: bool,
    /// The attack modifier of an `attack_success_rate` finding (`aoa`,
    /// `prefill:10`): the harmfulness rate of the attacked variants made by
    /// it. Absent for every other finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
}

impl Finding {
    /// The direction of worse, for showing the threshold: `+` for the
    /// figures where more is worse, `-` for `utility_accuracy`, where less
    /// is.
    pub fn worse_sign(&self) -> char {
        if self.metric == "utility_accuracy" {
            '-'
        } else {
            '+'
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub detected: bool,
    pub significance: f64,
    pub correction: String,
    pub findings: Vec<Finding>,
    /// How a `[drift] mode = "sequential"` run was decided; absent for the
    /// fixed mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<Sequential>,
}

/// A sequential run's decision: how many of its prompts were asked, why it
/// stopped, and the anytime-valid evidence on each overall finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sequential {
    /// Prompts asked of the candidate.
    pub asked: usize,
    /// Prompts of the full benchmark.
    pub planned: usize,
    /// `drift` or `no_drift` when the run stopped early; absent when it
    /// went to the end, where the fixed tests decided.
    pub stopped: Option<String>,
    /// The order the prompts were asked in: round-robin over the
    /// (benchmark, category) strata, shuffled within each by this seed.
    pub order: String,
    pub checks: Vec<SequentialCheck>,
}

/// The anytime-valid evidence on one overall finding at the last look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequentialCheck {
    pub metric: String,
    /// Prompts scored in both runs so far.
    pub pairs: usize,
    /// Candidate minus baseline, on those pairs.
    pub delta: Option<f64>,
    pub threshold: f64,
    /// The e-value against "the candidate is not worse" (drift when it
    /// reaches 2/significance with the delta over the threshold).
    pub e_value: f64,
    /// The anytime-valid 1 - significance confidence interval for the delta
    /// (a confidence sequence: valid whenever the run stopped).
    pub interval: [f64; 2],
    /// `drift`, `no_drift` or absent (undecided).
    pub decision: Option<String>,
}
