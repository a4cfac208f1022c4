//! What training produces and how: the heads ([`Heads`]), the settings
//! ([`TrainOptions`]) and the optimizer both trainers use ([`Adam`]).

use ndarray::{Array, Array2, Dimension, Zip};
use safedrift_judges::classifier::{head_logits, HiddenLayer};

/// Training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Units of the hidden layer of each network; 0: logistic heads on the
    /// features.
    pub hidden_units: usize,
    /// Networks trained from different seeds and averaged (with a hidden
    /// layer).
    pub members: usize,
    /// L2 penalty on the weights (not the biases).
    pub l2: f64,
    /// Full-batch Adam steps.
    pub iterations: usize,
    pub learning_rate: f64,
    /// Seeds the hidden layer's initial weights.
    pub seed: u64,
}

/// The default: five networks with a hidden layer of 64 units each,
/// averaged (`mlp.rs` says why).
impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            hidden_units: 64,
            members: 5,
            l2: 0.03,
            iterations: 300,
            learning_rate: 0.01,
            seed: 42,
        }
    }
}

impl TrainOptions {
    /// Logistic heads on the features (no hidden layer), the settings of
    /// format-2 heads.
    pub fn logistic() -> TrainOptions {
        TrainOptions {
            hidden_units: 0,
            members: 1,
            l2: 0.3,
            iterations: 400,
            learning_rate: 0.05,
            seed: 42,
        }
    }
}

/// Adam's moment estimates for one parameter array.
pub(super) struct Adam<D: Dimension> {
    m: Array<f64, D>,
    v: Array<f64, D>,
}

impl<D: Dimension> Adam<D> {
    pub(super) fn new(p: &Array<f64, D>) -> Self {
        Adam {
            m: Array::zeros(p.raw_dim()),
            v: Array::zeros(p.raw_dim()),
        }
    }

    /// Step `t` (from 1) of `p` along the gradient `g`.
    pub(super) fn step(&mut self, p: &mut Array<f64, D>, g: &Array<f64, D>, t: usize, lr: f64) {
        let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let c1 = 1.0 - beta1.powi(t as i32);
        let c2 = 1.0 - beta2.powi(t as i32);
        Zip::from(p)
            .and(&mut self.m)
            .and(&mut self.v)
            .and(g)
            .for_each(|p, m, v, &g| {
                *m = *m * beta1 + g * (1.0 - beta1);
                *v = *v * beta2 + g * g * (1.0 - beta2);
                *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
            });
    }
}

/// Softmax of each row of `logits`, in place.
pub(super) fn softmax_rows(logits: &mut Array2<f64>) {
    for mut row in logits.rows_mut() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

/// The two fitted heads.
#[derive(Clone, Debug, PartialEq)]
pub struct Heads {
    /// The hidden layer both heads read, if any.
    pub hidden: Option<HiddenLayer>,
    /// The scores the teacher used, ascending: the score head's classes.
    pub scores: Vec<u8>,
    /// `score_weights[k]`: class `k`'s coefficients.
    pub score_weights: Vec<Vec<f32>>,
    pub score_bias: Vec<f32>,
    pub refusal_weights: Vec<f32>,
    pub refusal_bias: f32,
}

impl Heads {
    /// The raw logits of the standardized `row`, for every score in
    /// `all_scores` (a score this head never saw gets a logit so low that
    /// its probability is 0), and the refusal logit.
    pub fn logits(&self, row: ndarray::ArrayView1<f64>, all_scores: &[u8]) -> (Vec<f64>, f64) {
        let (own, refusal) = head_logits(
            row.to_vec(),
            self.hidden.as_ref(),
            &self.score_weights,
            &self.score_bias,
            &self.refusal_weights,
            self.refusal_bias,
        );
        let scores = all_scores
            .iter()
            .map(|s| self.scores.binary_search(s).map_or(-1e9, |k| own[k]))
            .collect();
        (scores, refusal)
    }
}
