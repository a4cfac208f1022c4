//! The hidden-layer heads: one layer of rectified linear units over the
//! standardized features, read by both the score head (a softmax over the
//! scores the teacher used) and the refusal head (a logistic unit). The two
//! are trained together, by full-batch Adam on the sum of their mean
//! cross-entropies plus `l2 / 2` times the squared weights (not the biases),
//! from weights drawn uniformly in the Glorot range by a generator seeded
//! with `TrainOptions::seed`: the result is a pure function of its inputs.
//!
//! Why a hidden layer: logistic heads draw one straight boundary per label
//! through the features, but the answers of one label lie in separate
//! regions of them: a 5 is a direct answer or a refusal line followed by
//! the task done; a 1 is a refusal or an answer in the very shape of
//! compliance to a harmless prompt. Trained on the same corpus, the hidden
//! layer agreed with the labels of `data/judge-eval/blind.jsonl` on
//! "harmful" for 0.895 of the answers, the logistic heads for 0.812
//! (commit a4ab8c4, README "How far to trust each judge").

use ndarray::{Array1, Array2, Axis};
use rand::{rngs::StdRng, Rng, SeedableRng};
use safedrift_judges::classifier::{sigmoid, HiddenLayer};

use super::model::{softmax_rows, Adam, Heads, TrainOptions};

/// Glorot-uniform weights of a `rows x cols` layer.
fn glorot(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<f64> {
    let a = (6.0 / (rows + cols) as f64).sqrt();
    Array2::from_shape_simple_fn((rows, cols), || rng.gen_range(-a..a))
}

/// One network's weights: `w1` (features x units), `b1`, `w2` (units x
/// (scores + 1): the score head's columns, then the refusal head's), `b2`.
struct Network {
    w1: Array2<f64>,
    b1: Array1<f64>,
    w2: Array2<f64>,
    b2: Array1<f64>,
}

/// Fits `options.members` networks (seeds `seed`, `seed + 1`, ...) on the
/// standardized rows of `x` (`y[i]` indexes `scores`, `refused[i]` is the
/// refusal label) and returns their average as one layer: the mean of the
/// networks' logits is a network whose hidden layer is all of their units
/// and whose head weights are theirs divided by the number of networks.
/// Averaging steadies what one network learns from where it started: on
/// the evaluation sets, single networks' harmful agreement spread over 3 to
/// 6 points across seeds.
pub(super) fn fit(
    x: &Array2<f64>,
    y: &[usize],
    scores: Vec<u8>,
    refused: &[bool],
    options: &TrainOptions,
) -> Heads {
    let members = options.members.max(1);
    let k = scores.len();
    let nets: Vec<Network> = (0..members)
        .map(|m| {
            fit_one(
                x,
                y,
                k,
                refused,
                options,
                options.seed.wrapping_add(m as u64),
            )
        })
        .collect();
    let share = 1.0 / members as f64;
    let column =
        |m: &Array2<f64>, c: usize| m.column(c).iter().map(|v| *v as f32).collect::<Vec<f32>>();
    let head_row = |c: usize| -> Vec<f32> {
        nets.iter()
            .flat_map(|n| {
                n.w2.column(c)
                    .iter()
                    .map(|v| (v * share) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let bias = |c: usize| nets.iter().map(|n| n.b2[c]).sum::<f64>() * share;
    Heads {
        hidden: Some(HiddenLayer {
            weights: nets
                .iter()
                .flat_map(|n| (0..n.w1.ncols()).map(|j| column(&n.w1, j)))
                .collect(),
            bias: nets
                .iter()
                .flat_map(|n| n.b1.iter().map(|v| *v as f32))
                .collect(),
        }),
        score_weights: (0..k).map(head_row).collect(),
        score_bias: (0..k).map(|c| bias(c) as f32).collect(),
        refusal_weights: head_row(k),
        refusal_bias: bias(k) as f32,
        scores,
    }
}

/// One network, from weights drawn with `seed`.
fn fit_one(
    x: &Array2<f64>,
    y: &[usize],
    k: usize,
    refused: &[bool],
    options: &TrainOptions,
    seed: u64,
) -> Network {
    let (n, d) = x.dim();
    let h = options.hidden_units;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w1 = glorot(&mut rng, d, h);
    let mut b1 = Array1::<f64>::zeros(h);
    // Columns 0..k: the score head; column k: the refusal head.
    let mut w2 = glorot(&mut rng, h, k + 1);
    let mut b2 = Array1::<f64>::zeros(k + 1);
    let (mut a1, mut ab1) = (Adam::new(&w1), Adam::new(&b1));
    let (mut a2, mut ab2) = (Adam::new(&w2), Adam::new(&b2));
    let xt = x.t();
    for step in 1..=options.iterations {
        let pre = x.dot(&w1) + &b1;
        let units = pre.mapv(|v| v.max(0.0));
        let out = units.dot(&w2) + &b2;
        // The gradient of the mean loss with respect to the outputs.
        let mut grad = out.clone();
        {
            let mut score_part = grad.slice_mut(ndarray::s![.., ..k]).to_owned();
            softmax_rows(&mut score_part);
            grad.slice_mut(ndarray::s![.., ..k]).assign(&score_part);
        }
        for i in 0..n {
            grad[[i, y[i]]] -= 1.0;
            grad[[i, k]] = sigmoid(out[[i, k]]) - if refused[i] { 1.0 } else { 0.0 };
        }
        grad /= n as f64;
        let gw2 = units.t().dot(&grad) + &w2 * options.l2;
        let gb2 = grad.sum_axis(Axis(0));
        let mut gpre = grad.dot(&w2.t());
        gpre.zip_mut_with(&pre, |g, &p| {
            if p <= 0.0 {
                *g = 0.0;
            }
        });
        let gw1 = xt.dot(&gpre) + &w1 * options.l2;
        let gb1 = gpre.sum_axis(Axis(0));
        let lr = options.learning_rate;
        a1.step(&mut w1, &gw1, step, lr);
        ab1.step(&mut b1, &gb1, step, lr);
        a2.step(&mut w2, &gw2, step, lr);
        ab2.step(&mut b2, &gb2, step, lr);
    }
    Network { w1, b1, w2, b2 }
}
