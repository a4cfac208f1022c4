//! Batched decoding with a KV cache for decoders in HF optimum's I/O layout
//! (`input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key/value`
//! -> `logits`, `present.N.key/value`).
//!
//! A batch is left-padded (padding masked out, positions counted from each
//! row's first real token), prefilled in one run, then decoded a token per
//! run. A row that finishes (end-of-sequence, `max_new_tokens`, or the
//! repetition guard) leaves the batch at once: its rows are dropped from the
//! KV cache, so one long answer does not make the others wait or pay for it.
//! Greedy by default (first maximum, as numpy's argmax); seeded sampling with
//! temperature and top-p optional, seeded per prompt so a row's tokens do not
//! depend on what it was batched with.

use std::borrow::Cow;

use half::f16;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorElementType;
use ort::value::{DynValue, Tensor, ValueType};
use rand::rngs::StdRng;
use rand::SeedableRng;
use safedrift_judges::NextToken;
use std::time::{Duration, Instant};
use tracing::debug;

/// A decoding failure; the message says what and where.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn ort_err(what: &str) -> impl Fn(ort::Error) -> DecodeError + '_ {
    move |e| DecodeError(format!("{what}: {e}"))
}

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Stops a sequence stuck in a loop: when the last `window` tokens repeat
/// a cycle of at most `max_period` tokens. `window = 0` turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepetitionGuard {
    pub window: usize,
    pub max_period: usize,
}

impl Default for RepetitionGuard {
    fn default() -> Self {
        RepetitionGuard {
            window: 64,
            max_period: 16,
        }
    }
}

impl RepetitionGuard {
    /// Whether `tokens` ends in a loop.
    pub fn stuck(&self, tokens: &[u32]) -> bool {
        if self.window == 0 || tokens.len() < self.window {
            return false;
        }
        let tail = &tokens[tokens.len() - self.window..];
        (1..=self.max_period.min(self.window / 2))
            .any(|p| tail[p..].iter().zip(tail).all(|(a, b)| a == b))
    }
}

/// One prompt to decode.
#[derive(Clone, Debug)]
pub struct SeqRequest {
    pub ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub guard: RepetitionGuard,
}

/// Why a sequence ended; recorded as the result's finish reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Repetition,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Repetition => "repetition",
        }
    }
}

/// The generated tokens (without the end-of-sequence token).
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOutput {
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Float {
    F32,
    F16,
}

fn float_type(ty: &ValueType, name: &str) -> Result<Float, DecodeError> {
    match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            ..
        } => Ok(Float::F32),
        ValueType::Tensor {
            ty: TensorElementType::Float16,
            ..
        } => Ok(Float::F16),
        other => Err(DecodeError(format!(
            "`{name}` has type {other:?}; expected float32 or float16"
        ))),
    }
}

/// A decoder session with its I/O checked.
pub struct Decoder {
    session: Session,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    kv_type: Float,
    logits_type: Float,
    has_position_ids: bool,
    eos: Vec<u32>,
    pad: u32,
    past_names: Vec<String>,
    present_names: Vec<String>,
}

/// One row of a running batch.
struct Row {
    request: usize,
    tokens: Vec<u32>,
    mask: Vec<i64>,
    next_position: i64,
    rng: StdRng,
}

impl Decoder {
    /// Checks that `session` has the optimum layout for a model with
    /// `layers` layers of `kv_heads` x `head_dim` keys and values.
    pub fn new(
        session: Session,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        eos: Vec<u32>,
        pad: u32,
    ) -> Result<Decoder, DecodeError> {
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let mut past_names = Vec::with_capacity(2 * layers);
        let mut present_names = Vec::with_capacity(2 * layers);
        for i in 0..layers {
            for kind in ["key", "value"] {
                past_names.push(format!("past_key_values.{i}.{kind}"));
                present_names.push(format!("present.{i}.{kind}"));
            }
        }
        let missing_in: Vec<&str> = ["input_ids", "attention_mask"]
            .into_iter()
            .chain(past_names.iter().map(String::as_str))
            .filter(|n| !inputs.contains(n))
            .collect();
        let missing_out: Vec<&str> = ["logits"]
            .into_iter()
            .chain(present_names.iter().map(String::as_str))
            .filter(|n| !outputs.contains(n))
            .collect();
        if !missing_in.is_empty() || !missing_out.is_empty() {
            let show = |v: &[&str]| v.iter().take(6).copied().collect::<Vec<_>>().join(", ");
            return Err(DecodeError(format!(
                "the model does not have the optimum decoder layout for {layers} layers: missing inputs [{}], missing outputs [{}]; it has inputs [{}] and outputs [{}]",
                show(&missing_in),
                show(&missing_out),
                show(&inputs),
                show(&outputs)
            )));
        }
        let outlet = |list: &[ort::value::Outlet], name: &str| {
            list.iter()
                .find(|o| o.name() == name)
                .map(|o| o.dtype().clone())
        };
        let past_type = outlet(session.inputs(), &past_names[0]).expect("checked above");
        let kv_type = float_type(&past_type, &past_names[0])?;
        if let ValueType::Tensor { shape, .. } = &past_type {
            if shape.len() != 4 {
                return Err(DecodeError(format!(
                    "`{}` has {} dimensions; expected [batch, kv_heads, past, head_dim]",
                    past_names[0],
                    shape.len()
                )));
            }
            for (dim, want, what) in [
                (shape[1], kv_heads, "num_key_value_heads"),
                (shape[3], head_dim, "head_dim"),
            ] {
                if dim > 0 && dim as usize != want {
                    return Err(DecodeError(format!(
                        "`{}` has {dim} for {what} but config.json says {want}",
                        past_names[0]
                    )));
                }
            }
        }
        let logits_type = float_type(
            &outlet(session.outputs(), "logits").expect("checked above"),
            "logits",
        )?;
        let has_position_ids = inputs.contains(&"position_ids");
        Ok(Decoder {
            session,
            layers,
            kv_heads,
            head_dim,
            kv_type,
            logits_type,
            has_position_ids,
            eos,
            pad,
            past_names,
            present_names,
        })
    }

    /// Bytes of KV cache one token of one sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        let size = match self.kv_type {
            Float::F32 => 4,
            Float::F16 => 2,
        };
        2 * self.layers * self.kv_heads * self.head_dim * size
    }

    fn empty_past(&self, batch: usize) -> Result<DynValue, DecodeError> {
        let shape = [batch, self.kv_heads, 0, self.head_dim];
        match self.kv_type {
            Float::F32 => Tensor::from_array((shape, Vec::<f32>::new())).map(|t| t.into_dyn()),
            Float::F16 => Tensor::from_array((shape, Vec::<f16>::new())).map(|t| t.into_dyn()),
        }
        .map_err(ort_err("cannot create the empty KV cache"))
    }

    /// Decodes `requests` as one batch; `done(i, output)` is called as soon as
    /// request `i` finishes.
    pub fn generate(
        &mut self,
        requests: &[SeqRequest],
        mut done: impl FnMut(usize, SeqOutput),
    ) -> Result<(), DecodeError> {
        let batch = requests.len();
        if batch == 0 {
            return Ok(());
        }
        if let Some(r) = requests.iter().position(|r| r.ids.is_empty()) {
            return Err(DecodeError(format!("prompt {r} has no tokens")));
        }
        let width = requests.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let (mut ids, mut positions, mut rows) = self.first_step(requests, width);
        let mut past: Vec<DynValue> = (0..2 * self.layers)
            .map(|_| self.empty_past(batch))
            .collect::<Result<_, _>>()?;
        let mut step_len = width;
        let started = Instant::now();
        let (mut steps, mut in_run, mut in_compact) = (0usize, Duration::ZERO, Duration::ZERO);
        loop {
            let b = rows.len();
            let mask: Vec<i64> = rows.iter().flat_map(|r| r.mask.iter().copied()).collect();
            let inputs = Self::step_inputs(
                &self.past_names,
                self.has_position_ids,
                b,
                (
                    std::mem::take(&mut ids),
                    std::mem::take(&mut positions),
                    step_len,
                ),
                (mask, rows[0].mask.len()),
                &mut past,
            )?;
            let run_started = Instant::now();
            let mut outputs = self
                .session
                .run(inputs)
                .map_err(ort_err("ONNX Runtime failed"))?;
            in_run += run_started.elapsed();
            steps += 1;

            // Next token of every row.
            let logits = outputs.get("logits").expect("checked in new()");
            let next: Vec<u32> = match self.logits_type {
                Float::F32 => {
                    let (shape, data) = logits
                        .try_extract_tensor::<f32>()
                        .map_err(ort_err("logits"))?;
                    pick_all(shape, data, b, &mut rows, requests, |x| *x)?
                }
                Float::F16 => {
                    let (shape, data) = logits
                        .try_extract_tensor::<f16>()
                        .map_err(ort_err("logits"))?;
                    pick_all(shape, data, b, &mut rows, requests, |x| x.to_f32())?
                }
            };
            let presents: Vec<DynValue> = self
                .present_names
                .iter()
                .map(|n| outputs.remove(n).expect("checked in new()"))
                .collect();
            drop(outputs);

            let keep = self.finish_rows(&mut rows, &next, requests, &mut done);
            if keep.iter().all(|k| !k) {
                let total = started.elapsed();
                debug!(
                    batch,
                    steps,
                    total_ms = total.as_secs_f64() * 1e3,
                    run_ms = in_run.as_secs_f64() * 1e3,
                    compact_ms = in_compact.as_secs_f64() * 1e3,
                    other_ms = (total - in_run - in_compact).as_secs_f64() * 1e3,
                    "batch decoded"
                );
                return Ok(());
            }
            let compact = keep.iter().any(|k| !k);
            let compact_started = Instant::now();
            past = if compact {
                presents
                    .iter()
                    .map(|v| self.select_rows(v, &keep))
                    .collect::<Result<_, _>>()?
            } else {
                presents
            };
            in_compact += compact_started.elapsed();
            (rows, ids, positions) = next_step(rows, next, keep);
            step_len = 1;
        }
    }

    /// The first step's input ids and positions (every prompt left-padded
    /// to `width`) and the batch's rows.
    fn first_step(&self, requests: &[SeqRequest], width: usize) -> (Vec<i64>, Vec<i64>, Vec<Row>) {
        let (ids, positions, masks) = self.left_pad(requests.iter().map(|r| &r.ids[..]), width);
        let rows = requests
            .iter()
            .zip(masks)
            .enumerate()
            .map(|(i, (r, mask))| {
                let mut seed = r.sampling.seed;
                for &id in &r.ids {
                    seed = seed.rotate_left(5) ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                }
                Row {
                    request: i,
                    tokens: Vec::new(),
                    mask,
                    next_position: r.ids.len() as i64,
                    rng: StdRng::seed_from_u64(seed),
                }
            })
            .collect();
        (ids, positions, rows)
    }

    /// Prompts left-padded to `width`: their ids and positions (flattened)
    /// and each one's attention mask.
    fn left_pad<'p>(
        &self,
        prompts: impl ExactSizeIterator<Item = &'p [u32]>,
        width: usize,
    ) -> (Vec<i64>, Vec<i64>, Vec<Vec<i64>>) {
        let batch = prompts.len();
        let mut ids = vec![self.pad as i64; batch * width];
        let mut positions = vec![0i64; batch * width];
        let mut masks = Vec::with_capacity(batch);
        for (i, prompt) in prompts.enumerate() {
            let pad = width - prompt.len();
            let mut mask = vec![0i64; width];
            for (j, &id) in prompt.iter().enumerate() {
                ids[i * width + pad + j] = id as i64;
                positions[i * width + pad + j] = j as i64;
                mask[pad + j] = 1;
            }
            masks.push(mask);
        }
        (ids, positions, masks)
    }

    /// One prefill of `prompts` as a left-padded batch, no decoding: for
    /// each prompt, the logits of the token that would come next at its
    /// candidates, and the log of the softmax normalizer over the whole
    /// vocabulary. A row's numbers do not depend on what it is batched with
    /// (padding is masked out), up to the runtime's float arithmetic.
    pub fn next_token_logits(
        &mut self,
        prompts: &[(&[u32], &[u32])],
    ) -> Result<Vec<NextToken>, DecodeError> {
        let batch = prompts.len();
        if batch == 0 {
            return Ok(Vec::new());
        }
        if let Some(r) = prompts.iter().position(|(ids, _)| ids.is_empty()) {
            return Err(DecodeError(format!("prompt {r} has no tokens")));
        }
        let rows: Vec<&[u32]> = prompts.iter().map(|(ids, _)| *ids).collect();
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let started = Instant::now();
        let logits_type = self.logits_type;
        let outputs = self.padded_pass(&rows)?;
        let logits = outputs.get("logits").expect("checked in new()");
        let candidates: Vec<&[u32]> = prompts.iter().map(|(_, c)| *c).collect();
        let read = match logits_type {
            Float::F32 => {
                let (shape, data) = logits
                    .try_extract_tensor::<f32>()
                    .map_err(ort_err("logits"))?;
                read_next(shape, data, &candidates, |x| *x)?
            }
            Float::F16 => {
                let (shape, data) = logits
                    .try_extract_tensor::<f16>()
                    .map_err(ort_err("logits"))?;
                read_next(shape, data, &candidates, |x| x.to_f32())?
            }
        };
        debug!(
            batch,
            width,
            run_ms = started.elapsed().as_secs_f64() * 1e3,
            "prefill read"
        );
        Ok(read)
    }

    /// The inputs of one step: the new tokens, the attention mask, the
    /// positions (when the model takes them) and the KV cache, taken out of
    /// `past`.
    #[allow(clippy::type_complexity)]
    fn step_inputs<'a>(
        past_names: &'a [String],
        has_position_ids: bool,
        b: usize,
        (ids, positions, step_len): (Vec<i64>, Vec<i64>, usize),
        (mask, mask_width): (Vec<i64>, usize),
        past: &mut Vec<DynValue>,
    ) -> Result<Vec<(Cow<'a, str>, SessionInputValue<'a>)>, DecodeError> {
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(3 + past.len());
        let tensor = |shape: [usize; 2], data: Vec<i64>, what: &str| {
            Tensor::from_array((shape, data))
                .map(|t| SessionInputValue::from(t.into_dyn()))
                .map_err(|e| DecodeError(format!("cannot create {what}: {e}")))
        };
        inputs.push(("input_ids".into(), tensor([b, step_len], ids, "input_ids")?));
        inputs.push((
            "attention_mask".into(),
            tensor([b, mask_width], mask, "attention_mask")?,
        ));
        if has_position_ids {
            inputs.push((
                "position_ids".into(),
                tensor([b, step_len], positions, "position_ids")?,
            ));
        }
        for (name, value) in past_names.iter().zip(past.drain(..)) {
            inputs.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }
        Ok(inputs)
    }

    /// Adds each row's next token, reporting the rows that finish through
    /// `done`: which rows go on.
    fn finish_rows(
        &self,
        rows: &mut [Row],
        next: &[u32],
        requests: &[SeqRequest],
        done: &mut impl FnMut(usize, SeqOutput),
    ) -> Vec<bool> {
        let mut keep = Vec::with_capacity(rows.len());
        for (row, token) in rows.iter_mut().zip(next) {
            let request = &requests[row.request];
            let finish = if self.eos.contains(token) {
                Some(Finish::Stop)
            } else {
                row.tokens.push(*token);
                if row.tokens.len() >= request.max_new_tokens {
                    Some(Finish::Length)
                } else if request.guard.stuck(&row.tokens) {
                    Some(Finish::Repetition)
                } else {
                    None
                }
            };
            keep.push(finish.is_none());
            if let Some(finish) = finish {
                done(
                    row.request,
                    SeqOutput {
                        tokens: std::mem::take(&mut row.tokens),
                        finish,
                    },
                );
            }
        }
        keep
    }

    /// Copies the rows of `value` (first axis) where `keep` is true.
    fn select_rows(&self, value: &DynValue, keep: &[bool]) -> Result<DynValue, DecodeError> {
        fn select<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
            value: &DynValue,
            keep: &[bool],
        ) -> Result<DynValue, DecodeError> {
            let (shape, data) = value
                .try_extract_tensor::<T>()
                .map_err(ort_err("KV cache"))?;
            let row = data.len() / keep.len().max(1);
            let mut out = Vec::with_capacity(row * keep.iter().filter(|k| **k).count());
            for (i, k) in keep.iter().enumerate() {
                if *k {
                    out.extend_from_slice(&data[i * row..(i + 1) * row]);
                }
            }
            let mut dims: Vec<i64> = shape.to_vec();
            dims[0] = keep.iter().filter(|k| **k).count() as i64;
            Tensor::from_array((dims, out))
                .map(|t| t.into_dyn())
                .map_err(ort_err("KV cache"))
        }
        match self.kv_type {
            Float::F32 => select::<f32>(value, keep),
            Float::F16 => select::<f16>(value, keep),
        }
    }
}

/// The rows that go on, each with its new token as the next step's input.
fn next_step(rows: Vec<Row>, next: Vec<u32>, keep: Vec<bool>) -> (Vec<Row>, Vec<i64>, Vec<i64>) {
    let b = rows.len();
    let mut kept_rows = Vec::with_capacity(b);
    let mut ids = Vec::with_capacity(b);
    let mut positions = Vec::with_capacity(b);
    for ((mut row, token), k) in rows.into_iter().zip(next).zip(keep) {
        if k {
            ids.push(token as i64);
            positions.push(row.next_position);
            row.next_position += 1;
            row.mask.push(1);
            kept_rows.push(row);
        }
    }
    (kept_rows, ids, positions)
}

mod forced;
mod pick;
use pick::{pick_all, read_next};
#[cfg(test)]
mod tests;
