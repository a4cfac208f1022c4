//! The head's training (a multinomial logistic regression, full-batch Adam)
//! and its agreement with the teacher.

use std::collections::BTreeSet;

use ndarray::{Array1, Array2, Axis};
use safedrift_judges::classifier::{AgreementReport, Label};

use super::{err, DistillError};

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// L2 penalty on the weights (not the biases).
    pub l2: f64,
    /// Full-batch Adam steps.
    pub iterations: usize,
    pub learning_rate: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            l2: 0.1,
            iterations: 400,
            learning_rate: 0.05,
        }
    }
}

/// A fitted multinomial logistic regression.
#[derive(Clone, Debug, PartialEq)]
pub struct Fitted {
    pub labels: Vec<Label>,
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    /// `[labels][features]`
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

fn softmax_rows(logits: &mut Array2<f64>) {
    for mut row in logits.rows_mut() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

/// Fits the head on `features` with their `labels`. Deterministic: zero
/// initial weights, full-batch updates in a fixed order.
pub fn train(
    features: &[Vec<f32>],
    labels: &[Label],
    options: &TrainOptions,
) -> Result<Fitted, DistillError> {
    let n = features.len();
    if n == 0 || n != labels.len() {
        return Err(err("no training records"));
    }
    let d = features[0].len();
    let classes: Vec<Label> = labels
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        return Err(err(format!(
            "the training split has a single label ({:?}); a judge needs examples of at least two",
            classes[0]
        )));
    }
    let k = classes.len();
    let mut x = Array2::<f64>::zeros((n, d));
    for (i, f) in features.iter().enumerate() {
        if f.len() != d {
            return Err(err("feature vectors of different lengths"));
        }
        for (j, v) in f.iter().enumerate() {
            x[[i, j]] = f64::from(*v);
        }
    }
    let mean = x.mean_axis(Axis(0)).expect("n > 0");
    let scale = x
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-6 { s } else { 1.0 });
    // Round the standardization to what the head file stores, so that
    // training and inference see the same features.
    let mean = mean.mapv(|v| f64::from(v as f32));
    let scale = scale.mapv(|v| f64::from(v as f32));
    let x = (&x - &mean) / &scale;
    let mut y = Array2::<f64>::zeros((n, k));
    for (i, l) in labels.iter().enumerate() {
        y[[i, classes.binary_search(l).expect("a class")]] = 1.0;
    }

    let mut w = Array2::<f64>::zeros((d, k));
    let mut b = Array1::<f64>::zeros(k);
    let (mut mw, mut vw) = (Array2::<f64>::zeros((d, k)), Array2::<f64>::zeros((d, k)));
    let (mut mb, mut vb) = (Array1::<f64>::zeros(k), Array1::<f64>::zeros(k));
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let xt = x.t();
    for step in 1..=options.iterations {
        let mut p = x.dot(&w) + &b;
        softmax_rows(&mut p);
        let diff = (p - &y) / n as f64;
        let gw = xt.dot(&diff) + &w * options.l2;
        let gb = diff.sum_axis(Axis(0));
        mw = &mw * beta1 + &gw * (1.0 - beta1);
        vw = &vw * beta2 + &gw.mapv(|g| g * g) * (1.0 - beta2);
        mb = &mb * beta1 + &gb * (1.0 - beta1);
        vb = &vb * beta2 + &gb.mapv(|g| g * g) * (1.0 - beta2);
        let c1 = 1.0 - beta1.powi(step as i32);
        let c2 = 1.0 - beta2.powi(step as i32);
        let lr = options.learning_rate;
        w = &w - &((&mw / c1) / ((&vw / c2).mapv(f64::sqrt) + eps) * lr);
        b = &b - &((&mb / c1) / ((&vb / c2).mapv(f64::sqrt) + eps) * lr);
    }
    Ok(Fitted {
        labels: classes,
        mean: mean.iter().map(|v| *v as f32).collect(),
        scale: scale.iter().map(|v| *v as f32).collect(),
        weights: (0..k)
            .map(|c| w.column(c).iter().map(|v| *v as f32).collect())
            .collect(),
        bias: b.iter().map(|v| *v as f32).collect(),
    })
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

/// Agreement of predicted labels with the teacher's.
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
    }
}
