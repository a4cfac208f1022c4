//! The local backend: a decoder LLM in ONNX, run by ONNX Runtime.
//!
//! One dedicated worker thread owns the session (inference never runs on the
//! async runtime) and serves requests from a channel. It gathers what is
//! queued, sorts it by prompt length so that batches need little padding,
//! sizes each batch to the KV-cache budget, and answers each prompt as soon
//! as its row finishes. The model is loaded once, when the backend is made;
//! a broken directory or a missing ONNX Runtime is reported then.
//!
//! The same worker serves the local generative judges
//! ([`safedrift_judges::onnx_judge`]) through [`OnnxBackend::next_token`]: a
//! prompt run once, no decoding, and the next token's logits read at the
//! tokens the judge asks about. Those requests are batched the same way
//! (sorted by length, left-padded, one prefill per batch, sized to the
//! memory budget). Teacher-forced runs ([`OnnxBackend::forced_log_probs`]:
//! a prompt and a given answer, the answer's distributions over the whole
//! vocabulary) are served and batched the same way.

mod blocking;
pub mod chat_template;
pub mod decode;
mod forced;
pub mod model;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use safedrift_judges::{JudgeError, Message, NextToken, NextTokenModel};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{Backend, BackendError, Decoding, Generation};
use chat_template::ChatMessage;
use decode::{Decoder, RepetitionGuard, Sampling, SeqRequest};
pub use forced::kl_per_position;
use forced::Forced;
use model::ModelDir;
pub use runtime::Device;

/// Settings of the ONNX backend (from `[backends.NAME]` with `kind = "onnx"`).
#[derive(Clone, Debug)]
pub struct OnnxOptions {
    pub device: Device,
    pub cpu_fallback: bool,
    pub ort_dylib: Option<PathBuf>,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Budget for the KV cache and logits of a batch, in MiB; the batch size
    /// shrinks to fit it.
    pub kv_cache_mb: usize,
    /// ONNX Runtime intra-op threads (default: all cores).
    pub threads: usize,
    pub guard: RepetitionGuard,
    /// Longest answer this backend allows, whatever the run asks for.
    pub max_new_tokens: Option<usize>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions {
            device: Device::Cpu,
            cpu_fallback: false,
            ort_dylib: None,
            max_batch: 16,
            kv_cache_mb: 2048,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            guard: RepetitionGuard::default(),
            max_new_tokens: None,
        }
    }
}

fn model_error(message: impl Into<String>) -> BackendError {
    BackendError {
        kind: "model",
        message: message.into(),
    }
}

struct Job {
    messages: Vec<Message>,
    decoding: Decoding,
    reply: oneshot::Sender<Result<Generation, BackendError>>,
}

/// A prompt to run once, for the logits of the token that would follow.
struct Prefill {
    ids: Vec<u32>,
    candidates: Arc<[u32]>,
    reply: oneshot::Sender<Result<NextToken, BackendError>>,
}

enum Msg {
    Job(Job),
    Prefill(Prefill),
    Forced(Forced),
    Cancel,
}

/// A tokenized job waiting for a batch.
struct Ready {
    ids: Vec<u32>,
    max_new_tokens: usize,
    sampling: Sampling,
    reply: oneshot::Sender<Result<Generation, BackendError>>,
}

/// A model directory served by a worker thread.
pub struct OnnxBackend {
    tx: mpsc::Sender<Msg>,
    identity: String,
    dir: PathBuf,
    /// [`crate::backend::content::digest`] of `dir`, read once.
    content: std::sync::OnceLock<Option<String>>,
    /// The tokenizer and chat template, shared with the worker.
    model: Arc<ModelDir>,
}

impl OnnxBackend {
    /// Checks `dir`, loads ONNX Runtime and the model on a worker thread, and
    /// returns once the model is ready (or with the reason it is not).
    pub fn load(dir: &Path, options: OnnxOptions) -> Result<OnnxBackend, BackendError> {
        let model = Arc::new(ModelDir::open(dir).map_err(|e| model_error(e.0))?);
        let env =
            runtime::environment(options.ort_dylib.as_deref()).map_err(|e| model_error(e.0))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let shared = model.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Device, BackendError>>();
        let identity = format!("onnx:{}@{}", dir.display(), model::fingerprint(dir));
        std::thread::Builder::new()
            .name("safedrift-onnx".into())
            .spawn(move || {
                let started = Instant::now();
                let opened = runtime::open_session(&env, &model.onnx, options.device, options.cpu_fallback, options.threads)
                    .map_err(|e| model_error(e.0))
                    .and_then(|(session, device)| {
                        let c = &model.config;
                        Decoder::new(session, c.layers, c.kv_heads, c.head_dim, c.eos.clone(), c.pad)
                            .map(|d| (d, device))
                            .map_err(|e| model_error(format!("{}: {e}", model.onnx.display())))
                    });
                match opened {
                    Ok((decoder, device)) => {
                        info!(model = %model.dir.display(), ?device, secs = started.elapsed().as_secs_f32(), "model loaded");
                        let _ = ready_tx.send(Ok(device));
                        Worker { model, decoder, options }.serve(rx);
                        // The last handle is gone and the session with the
                        // worker: its weights are free, hand them back.
                        safedrift_judges::give_memory_back();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| model_error(format!("cannot start the inference thread: {e}")))?;
        let wait = || {
            ready_rx.recv().unwrap_or_else(|_| {
                Err(model_error(
                    "the inference thread stopped while loading the model",
                ))
            })
        };
        let loaded = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        loaded?;
        Ok(OnnxBackend {
            tx,
            identity,
            dir: dir.to_path_buf(),
            content: std::sync::OnceLock::new(),
            model: shared,
        })
    }

    /// The model's directory, tokenizer and chat template.
    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// Runs `ids` once, batched with the other prompts waiting, and returns
    /// the logits of the token that would come next at `candidates` (and the
    /// log of the softmax normalizer over the whole vocabulary). `Err` when
    /// the prompt is empty or longer than the model takes, a candidate is
    /// outside the vocabulary, or the runtime fails.
    pub async fn next_token(
        &self,
        ids: Vec<u32>,
        candidates: Arc<[u32]>,
    ) -> Result<NextToken, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Prefill(Prefill {
                ids,
                candidates,
                reply,
            }))
            .map_err(|_| model_error("the inference thread has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(model_error("the inference thread has stopped")))
    }
}

/// The prompt token ids of a chat, as the backend decodes them: the model's
/// chat template rendered with the generation prompt, then tokenized without
/// added special tokens.
pub fn prompt_ids(model: &ModelDir, messages: &[Message]) -> Result<Vec<u32>, BackendError> {
    tokenize(model, &prompt_text(model, messages)?)
}

/// The prompt text of a chat: the model's chat template rendered with the
/// generation prompt, or, when the last message is the assistant's (a
/// prefill), rendered and cut right after that message's content for the
/// model to continue ([`chat_template::ChatTemplate::render_continuing`]).
pub fn prompt_text(model: &ModelDir, messages: &[Message]) -> Result<String, BackendError> {
    let chat = chat_messages(messages);
    let rendered = if super::ends_with_assistant(messages) {
        model.chat_template.render_continuing(&chat)
    } else {
        model.chat_template.render(&chat, true)
    };
    rendered.map_err(|e| BackendError {
        kind: "template",
        message: e.to_string(),
    })
}

/// The chat as the template reads it.
fn chat_messages(messages: &[Message]) -> Vec<ChatMessage<'_>> {
    messages
        .iter()
        .map(|m| ChatMessage {
            role: m.role.as_str(),
            content: m.content.as_str(),
        })
        .collect()
}

/// A judge's prompt: the chat template rendered with the generation prompt,
/// whatever the last message's role (the answer being judged is not a
/// prefill to continue).
fn judge_prompt_text(model: &ModelDir, messages: &[Message]) -> Result<String, BackendError> {
    let chat = chat_messages(messages);
    model
        .chat_template
        .render(&chat, true)
        .map_err(|e| BackendError {
            kind: "template",
            message: e.to_string(),
        })
}

/// Token ids of `text`, without added special tokens.
fn tokenize(model: &ModelDir, text: &str) -> Result<Vec<u32>, BackendError> {
    let encoding = model
        .tokenizer
        .encode(text, false)
        .map_err(|e| BackendError {
            kind: "tokenizer",
            message: format!("cannot tokenize the prompt: {e}"),
        })?;
    Ok(encoding.get_ids().to_vec())
}

struct Worker {
    model: Arc<ModelDir>,
    decoder: Decoder,
    options: OnnxOptions,
}

impl Worker {
    fn serve(mut self, rx: mpsc::Receiver<Msg>) {
        let mut pending: Vec<Ready> = Vec::new();
        let mut prefills: Vec<Prefill> = Vec::new();
        let mut forced: Vec<Forced> = Vec::new();
        loop {
            if pending.is_empty() && prefills.is_empty() && forced.is_empty() {
                match rx.recv() {
                    Ok(msg) => self.accept(msg, &mut pending, &mut prefills, &mut forced),
                    Err(_) => return,
                }
            }
            // Gather what is queued, so batches can be formed by length.
            loop {
                match rx.recv_timeout(Duration::from_millis(2)) {
                    Ok(msg) => self.accept(msg, &mut pending, &mut prefills, &mut forced),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if pending.is_empty() && prefills.is_empty() && forced.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
            prefills.retain(|p| !p.reply.is_closed());
            if !prefills.is_empty() {
                prefills.sort_by_key(|p| std::cmp::Reverse(p.ids.len()));
                let batch = self.next_batch(&mut prefills, |p| (p.ids.len(), 0));
                self.run_prefill(batch);
            }
            self.serve_forced(&mut forced);
            pending.retain(|r| !r.reply.is_closed());
            if !pending.is_empty() {
                pending.sort_by_key(|r| std::cmp::Reverse(r.ids.len()));
                let batch = self.next_batch(&mut pending, |r| (r.ids.len(), r.max_new_tokens));
                self.run_batch(batch);
            }
        }
    }

    /// Takes the shortest requests (the end of `pending`, sorted longest
    /// first) that fit the budget; `shape` gives a request's prompt length
    /// and the most tokens it may add.
    fn next_batch<T>(&self, pending: &mut Vec<T>, shape: impl Fn(&T) -> (usize, usize)) -> Vec<T> {
        let per_token = self.decoder.kv_bytes_per_token();
        let vocab = self.model.config.vocab_size.unwrap_or(32_000);
        let budget = self.options.kv_cache_mb.max(1) * 1024 * 1024;
        let mut batch: Vec<T> = Vec::new();
        let mut max_new = 0;
        while let Some(next) = pending.last() {
            let (longest, new_tokens) = shape(next);
            let max_new_with = max_new.max(new_tokens);
            let per_seq = per_token * (longest + max_new_with) + longest * vocab * 4;
            let fits = per_seq * (batch.len() + 1) <= budget;
            if batch.len() >= self.options.max_batch.max(1) || (!batch.is_empty() && !fits) {
                break;
            }
            max_new = max_new_with;
            batch.push(pending.pop().expect("checked"));
        }
        batch
    }

    fn accept(
        &self,
        msg: Msg,
        pending: &mut Vec<Ready>,
        prefills: &mut Vec<Prefill>,
        forced: &mut Vec<Forced>,
    ) {
        match msg {
            Msg::Forced(f) => self.accept_forced(f, forced),
            Msg::Prefill(p) => match self.check_prompt(&p.ids) {
                Ok(()) => prefills.push(p),
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            },
            Msg::Cancel => {
                for r in pending.drain(..) {
                    let _ = r.reply.send(Err(BackendError {
                        kind: "cancelled",
                        message: "cancelled before it started".into(),
                    }));
                }
            }
            Msg::Job(job) => match self.prepare(&job) {
                Ok((ids, max_new_tokens, sampling)) => pending.push(Ready {
                    ids,
                    max_new_tokens,
                    sampling,
                    reply: job.reply,
                }),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            },
        }
    }

    /// A prompt the model can take: not empty, shorter than its context.
    fn check_prompt(&self, ids: &[u32]) -> Result<(), BackendError> {
        let too_long = self
            .model
            .config
            .max_positions
            .filter(|&limit| ids.len() >= limit);
        if ids.is_empty() || too_long.is_some() {
            return Err(BackendError {
                kind: "bad_request",
                message: match too_long {
                    Some(limit) => format!(
                        "the prompt has {} tokens; the model takes at most {limit}",
                        ids.len()
                    ),
                    None => "the prompt has no tokens".into(),
                },
            });
        }
        Ok(())
    }

    /// Renders the chat template and tokenizes.
    fn prepare(&self, job: &Job) -> Result<(Vec<u32>, usize, Sampling), BackendError> {
        let ids = prompt_ids(&self.model, &job.messages)?;
        self.check_prompt(&ids)?;
        let mut max_new = job.decoding.max_new_tokens as usize;
        if let Some(cap) = self.options.max_new_tokens {
            max_new = max_new.min(cap);
        }
        if let Some(limit) = self.model.config.max_positions {
            max_new = max_new.min(limit - ids.len());
        }
        let sampling = Sampling {
            temperature: job.decoding.temperature,
            top_p: job.decoding.top_p.unwrap_or(1.0),
            seed: job.decoding.seed.unwrap_or(0),
        };
        Ok((ids, max_new.max(1), sampling))
    }

    /// One prefill for the batch; each request gets its row's logits.
    fn run_prefill(&mut self, batch: Vec<Prefill>) {
        let rows: Vec<(&[u32], &[u32])> = batch
            .iter()
            .map(|p| (&p.ids[..], &p.candidates[..]))
            .collect();
        match self.decoder.next_token_logits(&rows) {
            Ok(read) => {
                for (p, next) in batch.into_iter().zip(read) {
                    let _ = p.reply.send(Ok(next));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(model_error(e.0.clone())));
                }
            }
        }
    }

    fn run_batch(&mut self, batch: Vec<Ready>) {
        let started = Instant::now();
        let requests: Vec<SeqRequest> = batch
            .iter()
            .map(|r| SeqRequest {
                ids: r.ids.clone(),
                max_new_tokens: r.max_new_tokens,
                sampling: r.sampling.clone(),
                guard: self.options.guard,
            })
            .collect();
        debug!(
            batch = batch.len(),
            longest = requests.iter().map(|r| r.ids.len()).max().unwrap_or(0),
            "decoding a batch"
        );
        let mut replies: Vec<Option<oneshot::Sender<_>>> =
            batch.into_iter().map(|r| Some(r.reply)).collect();
        let tokenizer = &self.model.tokenizer;
        let result = self.decoder.generate(&requests, |i, out| {
            let text = tokenizer.decode(&out.tokens, true).unwrap_or_default();
            let generation = Generation {
                text,
                finish_reason: Some(out.finish.as_str().to_string()),
                prompt_tokens: Some(requests[i].ids.len() as u64),
                completion_tokens: Some(out.tokens.len() as u64),
                latency_ms: started.elapsed().as_millis() as u64,
            };
            if let Some(reply) = replies[i].take() {
                let _ = reply.send(Ok(generation));
            }
        });
        if let Err(e) = result {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(model_error(e.0.clone())));
            }
        }
    }
}

#[async_trait]
impl Backend for OnnxBackend {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn content_digest(&self) -> Option<String> {
        self.content
            .get_or_init(|| crate::backend::content::digest(&self.dir).ok())
            .clone()
    }

    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            messages: messages.to_vec(),
            decoding: decoding.clone(),
            reply,
        };
        self.tx
            .send(Msg::Job(job))
            .map_err(|_| model_error("the inference thread has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(model_error("the inference thread has stopped")))
    }

    fn queue_depth(&self) -> Option<usize> {
        Some(4096)
    }

    fn cancel_pending(&self) {
        let _ = self.tx.send(Msg::Cancel);
    }

    fn prefill(&self) -> Result<(), String> {
        Ok(())
    }

    /// The first `units` tokens of `text` as this model's tokenizer reads
    /// it, decoded back to text.
    fn prefill_text(&self, text: &str, units: usize) -> Result<String, BackendError> {
        let mut ids = tokenize(&self.model, text)?;
        ids.truncate(units);
        let opening = self
            .model
            .tokenizer
            .decode(&ids, false)
            .map_err(|e| BackendError {
                kind: "tokenizer",
                message: format!("cannot decode the prefill: {e}"),
            })?;
        Ok(opening.trim_end().to_string())
    }

    async fn answer_log_probs(
        &self,
        messages: &[Message],
        answer: &str,
        max_tokens: usize,
    ) -> Result<Option<crate::backend::AnswerLogProbs>, BackendError> {
        let prompt = prompt_ids(&self.model, messages)?;
        let mut ids = tokenize(&self.model, answer)?;
        ids.truncate(max_tokens);
        if ids.is_empty() {
            return Ok(Some(crate::backend::AnswerLogProbs {
                ids,
                log_probs: Vec::new(),
            }));
        }
        let log_probs = self.forced_log_probs(prompt, ids.clone()).await?;
        Ok(Some(crate::backend::AnswerLogProbs { ids, log_probs }))
    }
}

fn judge_error(e: BackendError) -> JudgeError {
    JudgeError {
        kind: e.kind,
        message: e.message,
    }
}

/// The local generative judges read a model on this backend.
#[async_trait]
impl NextTokenModel for OnnxBackend {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    /// A judge's chat ends with the answer it reads (Llama Guard's layout):
    /// rendered with the generation prompt, never continued as a prefill.
    fn render(&self, messages: &[Message]) -> Result<String, JudgeError> {
        judge_prompt_text(&self.model, messages).map_err(judge_error)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, JudgeError> {
        tokenize(&self.model, text).map_err(judge_error)
    }

    async fn next_token(
        &self,
        ids: Vec<u32>,
        candidates: Arc<[u32]>,
    ) -> Result<NextToken, JudgeError> {
        OnnxBackend::next_token(self, ids, candidates)
            .await
            .map_err(judge_error)
    }
}
