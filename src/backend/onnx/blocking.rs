//! Blocking entry points on token ids, for tests and benchmarks that
//! compare batch sizes or runtimes: the model is opened on the calling
//! thread (no worker), the inputs run in batches of `max_batch` in the order
//! given.

use std::path::Path;

use safedrift_judges::NextToken;

use super::decode::{Decoder, RepetitionGuard, Sampling, SeqRequest};
use super::forced::check_forced;
use super::model::ModelDir;
use super::{model_error, runtime, BackendError, OnnxBackend, OnnxOptions};

impl OnnxBackend {
    /// Generates token ids for prompts given as ids (for tests and
    /// benchmarks that compare with other runtimes token for token).
    pub fn generate_ids(
        dir: &Path,
        options: OnnxOptions,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        max_batch: usize,
    ) -> Result<Vec<Vec<u32>>, BackendError> {
        let (_, mut decoder) = open_decoder(dir, &options)?;
        let requests: Vec<SeqRequest> = prompts
            .iter()
            .map(|ids| SeqRequest {
                ids: ids.clone(),
                max_new_tokens,
                sampling: Sampling::default(),
                guard: RepetitionGuard {
                    window: 0,
                    max_period: 0,
                },
            })
            .collect();
        let mut out = vec![Vec::new(); prompts.len()];
        for (chunk_index, chunk) in requests.chunks(max_batch.max(1)).enumerate() {
            let base = chunk_index * max_batch.max(1);
            decoder
                .generate(chunk, |i, o| out[base + i] = o.tokens)
                .map_err(|e| model_error(e.0))?;
        }
        Ok(out)
    }

    /// The next token's logits at `candidates` after each of `prompts`, in
    /// batches of `max_batch` in the order given (for tests and benchmarks
    /// that compare batch sizes or runtimes).
    pub fn next_token_ids(
        dir: &Path,
        options: OnnxOptions,
        prompts: &[Vec<u32>],
        candidates: &[u32],
        max_batch: usize,
    ) -> Result<Vec<NextToken>, BackendError> {
        let (_, mut decoder) = open_decoder(dir, &options)?;
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(max_batch.max(1)) {
            let rows: Vec<(&[u32], &[u32])> = chunk.iter().map(|p| (&p[..], candidates)).collect();
            out.extend(
                decoder
                    .next_token_logits(&rows)
                    .map_err(|e| model_error(e.0))?,
            );
        }
        Ok(out)
    }

    /// [`OnnxBackend::forced_log_probs`] of each `(prompt, answer)` row, in
    /// batches of `max_batch` in the order given (for tests and benchmarks
    /// that compare batch sizes or runtimes). Every row is checked before
    /// anything runs: a bad one is a `bad_request` error naming it.
    pub fn forced_log_probs_ids(
        dir: &Path,
        options: OnnxOptions,
        rows: &[(Vec<u32>, Vec<u32>)],
        max_batch: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>, BackendError> {
        let (model, mut decoder) = open_decoder(dir, &options)?;
        let vocab = decoder.vocab_size().or(model.config.vocab_size);
        for (i, (prompt, answer)) in rows.iter().enumerate() {
            check_forced(prompt, answer, vocab, model.config.max_positions).map_err(|e| {
                BackendError {
                    kind: e.kind,
                    message: format!("row {i}: {}", e.message),
                }
            })?;
        }
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(max_batch.max(1)) {
            let batch: Vec<(&[u32], &[u32])> =
                chunk.iter().map(|(p, a)| (&p[..], &a[..])).collect();
            out.extend(
                decoder
                    .forced_log_probs(&batch)
                    .map_err(|e| model_error(e.0))?,
            );
        }
        Ok(out)
    }
}

/// The model directory of `dir` and a decoder for it, opened on the calling
/// thread.
fn open_decoder(dir: &Path, options: &OnnxOptions) -> Result<(ModelDir, Decoder), BackendError> {
    let model = ModelDir::open(dir).map_err(|e| model_error(e.0))?;
    let env = runtime::environment(options.ort_dylib.as_deref()).map_err(|e| model_error(e.0))?;
    let (session, _) = runtime::open_session(
        &env,
        &model.onnx,
        options.device,
        options.cpu_fallback,
        options.threads,
    )
    .map_err(|e| model_error(e.0))?;
    let c = &model.config;
    let decoder = Decoder::new(
        session,
        c.layers,
        c.kv_heads,
        c.head_dim,
        c.eos.clone(),
        c.pad,
    )
    .map_err(|e| model_error(e.0))?;
    Ok((model, decoder))
}
