//! One padded pass (the prefill the judges read and teacher forcing share),
//! and teacher forcing: a prompt and a given answer run as one left-padded
//! prefill (no KV cache kept, nothing generated), and the log-softmax over
//! the whole vocabulary read at every answer position. Position `k` of a
//! row's answer is predicted by the logits at input position
//! `len(prompt) - 1 + k`, so the answer's last token is never an input that
//! matters and is left out of the pass (the logits before it do not depend
//! on it: attention is causal).

use half::f16;
use ort::value::{DynValue, ValueType};
use std::time::Instant;
use tracing::debug;

use super::{ort_err, DecodeError, Decoder, Float};

impl Decoder {
    /// One run of `rows` as a left-padded batch with an empty KV cache (a
    /// prefill, nothing decoded): the runtime's outputs, `logits` at every
    /// input position.
    pub(super) fn padded_pass(
        &mut self,
        rows: &[&[u32]],
    ) -> Result<ort::session::SessionOutputs<'_>, DecodeError> {
        let batch = rows.len();
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let (ids, positions, masks) = self.left_pad(rows.iter().copied(), width);
        let mut past: Vec<DynValue> = (0..2 * self.layers)
            .map(|_| self.empty_past(batch))
            .collect::<Result<_, _>>()?;
        let inputs = Self::step_inputs(
            &self.past_names,
            self.has_position_ids,
            batch,
            (ids, positions, width),
            (masks.concat(), width),
            &mut past,
        )?;
        self.session
            .run(inputs)
            .map_err(ort_err("ONNX Runtime failed"))
    }

    /// The vocabulary size, when the graph's `logits` output fixes it.
    pub fn vocab_size(&self) -> Option<usize> {
        let logits = self
            .session
            .outputs()
            .iter()
            .find(|o| o.name() == "logits")?;
        match logits.dtype() {
            ValueType::Tensor { shape, .. } => {
                shape.get(2).copied().filter(|&d| d > 0).map(|d| d as usize)
            }
            _ => None,
        }
    }

    /// For each `(prompt, answer)` row, the log-softmax over the whole
    /// vocabulary of the logits that predict each answer token
    /// (`answer.len()` vectors of the vocabulary's size), from one
    /// run of the rows as a left-padded batch. A row's numbers do not depend
    /// on what it is batched with (padding is masked out), up to the
    /// runtime's float arithmetic.
    pub fn forced_log_probs(
        &mut self,
        rows: &[(&[u32], &[u32])],
    ) -> Result<Vec<Vec<Vec<f32>>>, DecodeError> {
        let batch = rows.len();
        if batch == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.vocab_size();
        for (r, (prompt, answer)) in rows.iter().enumerate() {
            if prompt.is_empty() {
                return Err(DecodeError(format!("prompt {r} has no tokens")));
            }
            if answer.is_empty() {
                return Err(DecodeError(format!("answer {r} has no tokens")));
            }
            if let Some(vocab) = vocab {
                check_vocab(prompt.iter().chain(answer.iter()), vocab)?;
            }
        }
        let inputs: Vec<Vec<u32>> = rows
            .iter()
            .map(|(prompt, answer)| [*prompt, &answer[..answer.len() - 1]].concat())
            .collect();
        let width = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let rows_in: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        let logits_type = self.logits_type;
        let outputs = self.padded_pass(&rows_in)?;
        let logits = outputs.get("logits").expect("checked in new()");
        let read = match logits_type {
            Float::F32 => {
                let (shape, data) = logits
                    .try_extract_tensor::<f32>()
                    .map_err(ort_err("logits"))?;
                read_forced(shape, data, rows, |x| *x)?
            }
            Float::F16 => {
                let (shape, data) = logits
                    .try_extract_tensor::<f16>()
                    .map_err(ort_err("logits"))?;
                read_forced(shape, data, rows, |x| x.to_f32())?
            }
        };
        debug!(
            batch,
            width,
            run_ms = started.elapsed().as_secs_f64() * 1e3,
            "teacher-forced read"
        );
        Ok(read)
    }
}

/// An error naming the first id that is not below `vocab`.
fn check_vocab<'a>(ids: impl Iterator<Item = &'a u32>, vocab: usize) -> Result<(), DecodeError> {
    match ids.copied().find(|&id| id as usize >= vocab) {
        Some(id) => Err(DecodeError(format!(
            "token {id} is outside the model's vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// Each row's answer distributions from the logits of a left-padded batch
/// whose inputs were `prompt ++ answer[..len - 1]`: row `i`'s answer
/// position `k` is at sequence index `pad + len(prompt) - 1 + k`.
fn read_forced<T>(
    shape: &[i64],
    data: &[T],
    rows: &[(&[u32], &[u32])],
    to_f32: impl Fn(&T) -> f32,
) -> Result<Vec<Vec<Vec<f32>>>, DecodeError> {
    let batch = rows.len();
    let width = rows
        .iter()
        .map(|(p, a)| p.len() + a.len() - 1)
        .max()
        .unwrap_or(0);
    if shape.len() != 3 || shape[0] as usize != batch || shape[1] as usize != width {
        return Err(DecodeError(format!(
            "logits have shape {shape:?}; expected [{batch}, {width}, vocab]"
        )));
    }
    let vocab = shape[2] as usize;
    let mut scratch = Vec::with_capacity(vocab);
    rows.iter()
        .enumerate()
        .map(|(i, (prompt, answer))| {
            check_vocab(prompt.iter().chain(answer.iter()), vocab)?;
            let first = width - (prompt.len() + answer.len() - 1) + prompt.len() - 1;
            Ok((0..answer.len())
                .map(|k| {
                    let start = (i * width + first + k) * vocab;
                    log_softmax(&data[start..start + vocab], &to_f32, &mut scratch)
                })
                .collect())
        })
        .collect()
}

/// `x - log Σ exp(x)`, accumulated in f64 (negative infinity stays so);
/// NaN everywhere when a value is NaN or positive infinity, or none is above
/// negative infinity.
pub(super) fn log_softmax<T>(
    logits: &[T],
    to_f32: impl Fn(&T) -> f32,
    scratch: &mut Vec<f64>,
) -> Vec<f32> {
    scratch.clear();
    scratch.extend(logits.iter().map(|x| f64::from(to_f32(x))));
    let max = scratch.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() || scratch.iter().any(|v| v.is_nan()) {
        return vec![f32::NAN; scratch.len()];
    }
    let log_sum = scratch.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    scratch
        .iter()
        .map(|v| ((v - max) - log_sum) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes_in_f64() {
        let mut scratch = Vec::new();
        let out = log_softmax(&[1.0f32, 2.0, 3.0], |x| *x, &mut scratch);
        let total: f64 = out.iter().map(|v| f64::from(*v).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{out:?}");
        assert!((out[2] - out[1] - 1.0).abs() < 1e-6);
        // Large logits do not overflow.
        let out = log_softmax(&[1e30f32, 1e30], |x| *x, &mut scratch);
        assert!((out[0] + std::f32::consts::LN_2).abs() < 1e-6, "{out:?}");
        // A masked-out token is impossible, not NaN.
        let out = log_softmax(&[f32::NEG_INFINITY, 0.0], |x| *x, &mut scratch);
        assert_eq!(out, vec![f32::NEG_INFINITY, 0.0]);
        let out = log_softmax(&[f32::NAN, 0.0], |x| *x, &mut scratch);
        assert!(out.iter().all(|v| v.is_nan()));
        let h: Vec<f16> = [1.0f32, 2.0, 3.0]
            .iter()
            .map(|x| f16::from_f32(*x))
            .collect();
        let out16 = log_softmax(&h, |x| x.to_f32(), &mut scratch);
        let out32 = log_softmax(&[1.0f32, 2.0, 3.0], |x| *x, &mut scratch);
        assert_eq!(out16, out32);
    }

    #[test]
    fn rows_are_read_at_their_answer_positions() {
        // Two rows, vocab 2: row 0 = prompt [1] + answer [0, 1] (inputs
        // [1, 0], no pad); row 1 = prompt [1] + answer [1] (inputs [1],
        // one pad). Each position's logits are [index, 0].
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1], &[0, 1]), (&[1], &[1])];
        let data: Vec<f32> = (0..4).flat_map(|i| [i as f32, 0.0]).collect();
        let out = read_forced(&[2, 2, 2], &data, &rows, |x| *x).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 2);
        assert_eq!(out[1].len(), 1);
        let first = |v: &[f32]| (v[0] - v[1]).round() as i64;
        assert_eq!(first(&out[0][0]), 0);
        assert_eq!(first(&out[0][1]), 1);
        assert_eq!(first(&out[1][0]), 3, "after the pad");
        let e = read_forced(&[2, 3, 2], &data, &rows, |x| *x).unwrap_err();
        assert!(e.0.contains("expected [2, 2, vocab]"), "{e}");
        let bad: Vec<(&[u32], &[u32])> = vec![(&[1], &[0, 1]), (&[1], &[2])];
        let e = read_forced(&[2, 2, 2], &data, &bad, |x| *x).unwrap_err();
        assert!(e.0.contains("token 2 is outside"), "{e}");
    }
}
