//! The next token from the logits: chosen (greedy or sampled) for decoding,
//! or read at the candidates a judge asks about.

use rand::rngs::StdRng;
use rand::Rng;

use super::{DecodeError, NextToken, Row, Sampling, SeqRequest};

/// Chooses the next token of each row from the last position's logits.
pub(super) fn pick_all<T>(
    shape: &[i64],
    data: &[T],
    batch: usize,
    rows: &mut [Row],
    requests: &[SeqRequest],
    to_f32: impl Fn(&T) -> f32,
) -> Result<Vec<u32>, DecodeError> {
    if shape.len() != 3 || shape[0] as usize != batch {
        return Err(DecodeError(format!(
            "logits have shape {shape:?}; expected [{batch}, sequence, vocab]"
        )));
    }
    let (seq, vocab) = (shape[1] as usize, shape[2] as usize);
    let mut scratch = Vec::new();
    Ok(rows
        .iter_mut()
        .enumerate()
        .map(|(i, row)| {
            let start = (i * seq + seq - 1) * vocab;
            let logits = &data[start..start + vocab];
            let sampling = &requests[row.request].sampling;
            if sampling.temperature <= 0.0 {
                argmax(logits, &to_f32)
            } else {
                scratch.clear();
                scratch.extend(logits.iter().map(&to_f32));
                sample(&scratch, sampling, &mut row.rng)
            }
        })
        .collect())
}

/// Each row's next-token logits at its candidates, and the log of the
/// softmax normalizer over the whole vocabulary, from the last position's
/// logits (a left-padded batch: every row's prompt ends there).
pub(super) fn read_next<T>(
    shape: &[i64],
    data: &[T],
    candidates: &[&[u32]],
    to_f32: impl Fn(&T) -> f32,
) -> Result<Vec<NextToken>, DecodeError> {
    let batch = candidates.len();
    if shape.len() != 3 || shape[0] as usize != batch {
        return Err(DecodeError(format!(
            "logits have shape {shape:?}; expected [{batch}, sequence, vocab]"
        )));
    }
    let (seq, vocab) = (shape[1] as usize, shape[2] as usize);
    candidates
        .iter()
        .enumerate()
        .map(|(i, wanted)| {
            let start = (i * seq + seq - 1) * vocab;
            let logits = &data[start..start + vocab];
            let at = wanted
                .iter()
                .map(|&c| {
                    logits.get(c as usize).map(&to_f32).ok_or_else(|| {
                        DecodeError(format!(
                            "token {c} is outside the model's vocabulary of {vocab}"
                        ))
                    })
                })
                .collect::<Result<Vec<f32>, _>>()?;
            Ok(NextToken {
                logits: at,
                log_total: log_sum_exp(logits, &to_f32),
            })
        })
        .collect()
}

/// log Σ exp(x), computed stably; NaN when a value is NaN.
pub(super) fn log_sum_exp<T>(values: &[T], to_f32: impl Fn(&T) -> f32) -> f32 {
    let max =
        values.iter().map(&to_f32).fold(
            f32::NEG_INFINITY,
            |m, v| {
                if v > m || v.is_nan() {
                    v
                } else {
                    m
                }
            },
        );
    if !max.is_finite() {
        return max;
    }
    let sum: f32 = values.iter().map(|v| (to_f32(v) - max).exp()).sum();
    max + sum.ln()
}

/// Index of the first maximum (0 when nothing is above negative infinity,
/// NaNs never win). Two passes the compiler vectorizes, because a running
/// `best` index makes each step wait for the last: a vocabulary of 49k is
/// scanned for every row at every step.
pub(super) fn argmax<T>(logits: &[T], to_f32: impl Fn(&T) -> f32) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            let v = to_f32(v);
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for v in lanes
        .into_iter()
        .chain(chunks.remainder().iter().map(&to_f32))
    {
        if v > max {
            max = v;
        }
    }
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|v| to_f32(v) == max).unwrap_or(0) as u32
}

/// Samples with temperature and top-p.
pub(super) fn sample(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let t = sampling.temperature as f32;
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let total: f32 = probs.iter().map(|(_, p)| p).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    if sampling.top_p < 1.0 {
        for (i, (_, p)) in probs.iter().enumerate() {
            kept += p / total;
            if kept >= sampling.top_p as f32 {
                cut = i + 1;
                break;
            }
        }
    }
    probs.truncate(cut.max(1));
    let mass: f32 = probs.iter().map(|(_, p)| p).sum();
    let mut x = rng.gen::<f32>() * mass;
    for (id, p) in &probs {
        if x < *p {
            return *id;
        }
        x -= p;
    }
    probs.last().map_or(0, |(id, _)| *id)
}
