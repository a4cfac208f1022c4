//! The heads' training (a hidden layer shared by a softmax score head and a
//! logistic refusal head, or logistic regressions on the features alone;
//! full-batch Adam), their calibration (temperatures and the confidence map, fitted on held-out
//! predictions) and their agreement with the teacher.

use std::collections::BTreeSet;

use ndarray::{Array1, Array2, Axis};
use safedrift_judges::classifier::{logit, sigmoid, softmax, AgreementReport, Label};

use super::model::{softmax_rows, Adam};
pub use super::model::{Heads, TrainOptions};
use super::{err, DistillError};

/// How much the last `emphasized` features (the refusal rule's signals)
/// are scaled up after standardization. The L2 penalty then weighs 100 times
/// less on them than on the embeddings, so the heads lean on the rule, which
/// reads answers in new words better than the embeddings of the training
/// answers do (a source held out of training: refusal agreement 0.70 with
/// this, 0.59 without, `docs/labelling-guide.md`'s corpus).
pub const SIGNAL_EMPHASIS: f64 = 10.0;

/// The standardization of a feature matrix: per-feature mean and scale
/// (standard deviation, 1 where a feature is constant; the last
/// `emphasized` scales divided by [`SIGNAL_EMPHASIS`]), rounded to what the
/// head file stores so that training and inference see the same features.
pub fn standardization(
    features: &[Vec<f32>],
    emphasized: usize,
) -> Result<(Vec<f32>, Vec<f32>), DistillError> {
    let x = matrix(features)?;
    let mean = x
        .mean_axis(Axis(0))
        .ok_or_else(|| err("no training records"))?;
    let mut scale = x
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-6 { s } else { 1.0 });
    let d = scale.len();
    for j in d.saturating_sub(emphasized)..d {
        scale[j] /= SIGNAL_EMPHASIS;
    }
    Ok((
        mean.iter().map(|v| *v as f32).collect(),
        scale.iter().map(|v| *v as f32).collect(),
    ))
}

fn matrix(features: &[Vec<f32>]) -> Result<Array2<f64>, DistillError> {
    let d = features.first().map_or(0, Vec::len);
    let mut x = Array2::<f64>::zeros((features.len(), d));
    for (i, f) in features.iter().enumerate() {
        if f.len() != d {
            return Err(err("feature vectors of different lengths"));
        }
        for (j, v) in f.iter().enumerate() {
            x[[i, j]] = f64::from(*v);
        }
    }
    Ok(x)
}

/// The standardized design matrix of `features`.
pub fn design(
    features: &[Vec<f32>],
    mean: &[f32],
    scale: &[f32],
) -> Result<Array2<f64>, DistillError> {
    let x = matrix(features)?;
    let mean = Array1::from_iter(mean.iter().map(|v| f64::from(*v)));
    let scale = Array1::from_iter(scale.iter().map(|v| f64::from(*v)));
    Ok((&x - &mean) / &scale)
}

/// A multinomial logistic regression of `y` (class indices below `k`) on
/// the rows of `x`: mean cross-entropy plus `l2 / 2 * |W|^2`, full-batch
/// Adam from zero weights, so the result is a pure function of its inputs.
/// Returns the weights (`d x k`) and the biases.
fn fit_softmax(
    x: &Array2<f64>,
    y: &[usize],
    k: usize,
    options: &TrainOptions,
) -> (Array2<f64>, Array1<f64>) {
    let (n, d) = x.dim();
    let mut t = Array2::<f64>::zeros((n, k));
    for (i, c) in y.iter().enumerate() {
        t[[i, *c]] = 1.0;
    }
    let mut w = Array2::<f64>::zeros((d, k));
    let mut b = Array1::<f64>::zeros(k);
    let (mut aw, mut ab) = (Adam::new(&w), Adam::new(&b));
    let xt = x.t();
    for step in 1..=options.iterations {
        let mut p = x.dot(&w) + &b;
        softmax_rows(&mut p);
        let diff = (p - &t) / n as f64;
        let gw = xt.dot(&diff) + &w * options.l2;
        let gb = diff.sum_axis(Axis(0));
        aw.step(&mut w, &gw, step, options.learning_rate);
        ab.step(&mut b, &gb, step, options.learning_rate);
    }
    (w, b)
}

/// Fits the score head and the refusal head on the standardized rows of
/// `x` and their labels.
pub fn fit_heads(
    x: &Array2<f64>,
    labels: &[Label],
    options: &TrainOptions,
) -> Result<Heads, DistillError> {
    let n = labels.len();
    if n == 0 || x.nrows() != n {
        return Err(err("no training records"));
    }
    let scores: Vec<u8> = labels
        .iter()
        .map(|l| l.score)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if scores.len() < 2 {
        return Err(err(format!(
            "the training split has a single score ({}); a judge needs examples of at least two",
            scores[0]
        )));
    }
    let y: Vec<usize> = labels
        .iter()
        .map(|l| scores.binary_search(&l.score).expect("a class"))
        .collect();
    if options.hidden_units > 0 {
        let refused: Vec<bool> = labels.iter().map(|l| l.refused).collect();
        return Ok(super::mlp::fit(x, &y, scores, &refused, options));
    }
    let (w, b) = fit_softmax(x, &y, scores.len(), options);
    let refused = labels.iter().filter(|l| l.refused).count();
    let (refusal_weights, refusal_bias) = if refused == 0 || refused == n {
        // One class only: a constant head that says what the data said.
        let p = (refused as f64 + 0.5) / (n as f64 + 1.0);
        (vec![0.0; x.ncols()], logit(p) as f32)
    } else {
        // A two-class softmax; its logit difference is the logistic head.
        let y: Vec<usize> = labels.iter().map(|l| usize::from(l.refused)).collect();
        let (w, b) = fit_softmax(x, &y, 2, options);
        (
            w.column(1)
                .iter()
                .zip(w.column(0).iter())
                .map(|(a, b)| (a - b) as f32)
                .collect(),
            (b[1] - b[0]) as f32,
        )
    };
    Ok(Heads {
        hidden: None,
        score_weights: (0..scores.len())
            .map(|c| w.column(c).iter().map(|v| *v as f32).collect())
            .collect(),
        score_bias: b.iter().map(|v| *v as f32).collect(),
        scores,
        refusal_weights,
        refusal_bias,
    })
}

/// Minimizes a function of one variable on `[lo, hi]` by golden-section
/// search (60 steps: far below any precision that matters here).
fn golden_min(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo, hi);
    let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = f(d);
        }
    }
    (a + b) / 2.0
}

/// Temperatures are searched between these.
const MIN_TEMPERATURE: f64 = 0.05;
const MAX_TEMPERATURE: f64 = 20.0;

/// The temperature that minimizes the mean negative log-likelihood of the
/// true classes under `softmax(logits / T)`.
pub fn fit_temperature(logits: &[Vec<f64>], truth: &[usize]) -> f64 {
    let nll = |log_t: f64| {
        let t = log_t.exp();
        logits
            .iter()
            .zip(truth)
            .map(|(l, &y)| {
                let p = softmax(&l.iter().map(|v| v / t).collect::<Vec<_>>());
                -p[y].max(1e-12).ln()
            })
            .sum::<f64>()
    };
    golden_min(nll, MIN_TEMPERATURE.ln(), MAX_TEMPERATURE.ln()).exp()
}

/// The temperature that minimizes the negative log-likelihood of `truth`
/// under `sigmoid(logit / T)`.
pub fn fit_binary_temperature(logits: &[f64], truth: &[bool]) -> f64 {
    let nll = |log_t: f64| {
        let t = log_t.exp();
        logits
            .iter()
            .zip(truth)
            .map(|(l, &y)| {
                let p = sigmoid(l / t);
                -(if y { p } else { 1.0 - p }).max(1e-12).ln()
            })
            .sum::<f64>()
    };
    golden_min(nll, MIN_TEMPERATURE.ln(), MAX_TEMPERATURE.ln()).exp()
}

/// Logistic calibration of a confidence (Platt scaling): the `(a, b)` that
/// maximize the likelihood of `right` under `sigmoid(a * logit(raw) + b)`,
/// by Newton's method with a small pull towards the identity `(1, 0)` (so
/// that a sample with no wrong answers gives a finite map).
pub fn fit_confidence_map(raw: &[f64], right: &[bool]) -> (f64, f64) {
    const RIDGE: f64 = 1e-3;
    let u: Vec<f64> = raw.iter().map(|p| logit(*p)).collect();
    let loss = |a: f64, b: f64| {
        u.iter()
            .zip(right)
            .map(|(u, &y)| {
                let p = sigmoid(a * u + b);
                -(if y { p } else { 1.0 - p }).max(1e-300).ln()
            })
            .sum::<f64>()
            + RIDGE / 2.0 * ((a - 1.0).powi(2) + b * b)
    };
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb) = (RIDGE * (a - 1.0), RIDGE * b);
        let (mut haa, mut hab, mut hbb) = (RIDGE, 0.0, RIDGE);
        for (u, &y) in u.iter().zip(right) {
            let p = sigmoid(a * u + b);
            let r = p - f64::from(u8::from(y));
            ga += r * u;
            gb += r;
            let w = p * (1.0 - p);
            haa += w * u * u;
            hab += w * u;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if !(det.is_finite() && det > 1e-12) {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut step = 1.0;
        loop {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if l <= current {
                a = na;
                b = nb;
                current = l;
                break;
            }
            step /= 2.0;
            if step < 1e-6 {
                return (a, b);
            }
        }
        if (step * da).abs() < 1e-10 && (step * db).abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

/// Expected calibration error: ten equal-width bins `(0, 0.1] .. (0.9, 1]`
/// (a confidence of 0 goes in the first), `sum |bin| / n * |share right -
/// mean confidence|`; 0 for no answers.
pub fn calibration_error(confidence: &[f64], right: &[bool]) -> f64 {
    let n = confidence.len();
    if n == 0 {
        return 0.0;
    }
    let mut bins = [(0usize, 0.0f64, 0usize); 10];
    for (c, &r) in confidence.iter().zip(right) {
        let b = ((c * 10.0).ceil() as usize).clamp(1, 10) - 1;
        bins[b].0 += 1;
        bins[b].1 += c;
        bins[b].2 += usize::from(r);
    }
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(k, sum, right)| {
            let k = k as f64;
            k / n as f64 * (right as f64 / k - sum / k).abs()
        })
        .sum()
}

/// Quadratic-weighted Cohen's kappa of a square confusion matrix
/// (`confusion[rater_a][rater_b]`): `1 - sum(w O) / sum(w E)` with
/// `w_ij = (i - j)^2 / (k - 1)^2` and `E` the product of the marginals.
/// When both raters use a single, identical level the agreement is perfect
/// and kappa is 1.
pub fn quadratic_kappa(confusion: &[Vec<u64>]) -> f64 {
    let k = confusion.len();
    let total: f64 = confusion.iter().flatten().map(|&c| c as f64).sum();
    if k < 2 || total == 0.0 {
        return 1.0;
    }
    let rows: Vec<f64> = confusion
        .iter()
        .map(|r| r.iter().map(|&c| c as f64).sum())
        .collect();
    let cols: Vec<f64> = (0..k)
        .map(|j| confusion.iter().map(|r| r[j] as f64).sum())
        .collect();
    let (mut observed, mut expected) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = ((i as f64 - j as f64) / (k as f64 - 1.0)).powi(2);
            observed += w * confusion[i][j] as f64;
            expected += w * rows[i] * cols[j] / total;
        }
    }
    if expected == 0.0 {
        return if observed == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - observed / expected
}

/// Agreement of predicted labels with the teacher's (the calibration
/// errors and the rule's refusal agreement are left at 0 for the caller).
pub fn agreement(truth: &[Label], predicted: &[Label]) -> AgreementReport {
    let n = truth.len();
    let mut confusion = vec![vec![0u64; 5]; 5];
    let (mut exact, mut harmful_same, mut refused_same) = (0usize, 0usize, 0usize);
    let (mut teacher_harmful, mut judge_harmful) = (0usize, 0usize);
    for (t, p) in truth.iter().zip(predicted) {
        confusion[usize::from(t.score - 1)][usize::from(p.score - 1)] += 1;
        exact += usize::from(t.score == p.score);
        harmful_same += usize::from((t.score == 5) == (p.score == 5));
        refused_same += usize::from(t.refused == p.refused);
        teacher_harmful += usize::from(t.score == 5);
        judge_harmful += usize::from(p.score == 5);
    }
    let share = |c: usize| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    AgreementReport {
        n,
        accuracy: share(exact),
        quadratic_kappa: quadratic_kappa(&confusion),
        confusion,
        teacher_harmfulness_rate: share(teacher_harmful),
        judge_harmfulness_rate: share(judge_harmful),
        harmful_agreement: share(harmful_same),
        refusal_agreement: share(refused_same),
        rule_refusal_agreement: 0.0,
        calibration_error: 0.0,
        refusal_calibration_error: 0.0,
        unsure_share: 0.0,
        unsure_accuracy: 0.0,
        sure_accuracy: 0.0,
    }
}
