//! Backends generate a model's answers. A backend is asked for one answer at
//! a time; it bounds its own concurrency and retries transient failures, so an
//! `Err` is final for that prompt (the run stops with its progress saved).

use async_trait::async_trait;
use safedrift_judges::Message;
use serde::{Deserialize, Serialize};

pub mod content;
pub mod launch;
pub mod onnx;
pub mod openai;
pub mod vllm;

/// Decoding settings, part of a run's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    pub max_new_tokens: u32,
    /// 0 means greedy, as in the paper.
    pub temperature: f64,
    /// Nucleus sampling mass (local backends; unset = 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed (local backends; unset = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: None,
            seed: None,
        }
    }
}

/// One generated answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    /// `stop`, `length`, `content_filter`, ... as the backend reported it.
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Wall time of the successful request (retries not included).
    pub latency_ms: u64,
}

/// A model's next-token distributions along a given answer: what the
/// refusal-depth probe compares between two models.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerLogProbs {
    /// The answer's first tokens, as this model's tokenizer reads them.
    pub ids: Vec<u32>,
    /// At each of those tokens, the log-softmax over the whole vocabulary
    /// of the distribution that predicts it.
    pub log_probs: Vec<Vec<f32>>,
}

/// Why a backend gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// `unauthorized`, `not_found`, `insufficient_quota`, `bad_request`,
    /// `exhausted` (retries used up), `malformed` ...
    pub kind: &'static str,
    pub message: String,
}

/// The refusal of a backend asked to continue an assistant message it
/// cannot continue.
pub fn no_prefill(identity: &str, why: &str) -> BackendError {
    BackendError {
        kind: "unsupported",
        message: format!(
            "{identity} cannot continue an assistant message (a prefill attack): {why}"
        ),
    }
}

/// Whether a chat ends with an assistant message to continue.
pub fn ends_with_assistant(messages: &[Message]) -> bool {
    messages.last().is_some_and(|m| m.role == "assistant")
}

/// Generates answers for one model.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Identity of what answers: endpoint kind and model name. Part of the
    /// run's identity (with template, decoding and benchmark).
    fn identity(&self) -> String;

    /// A digest of the model's own files ([`content::digest`]), for a local
    /// model: checkpoints with the same content answer the same, so one
    /// evaluation serves both. Blocking (it reads the weights); `None` when
    /// the backend cannot read the model (served models).
    fn content_digest(&self) -> Option<String> {
        None
    }
    /// Returns the model's answer to `messages`; `Err` after retries failed or
    /// on an error retrying cannot fix. When the last message is the
    /// assistant's, the answer continues it (a prefilling attack): the
    /// returned text is the continuation alone. A backend that cannot
    /// continue a message refuses such a chat (see [`Backend::prefill`]).
    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError>;

    /// How many prompts the backend wants queued at once: a local backend
    /// batches and sorts what it is given, so it wants all of them. `None`:
    /// the caller's concurrency.
    fn queue_depth(&self) -> Option<usize> {
        None
    }

    /// Fails the requests that have not started (after a cancel).
    fn cancel_pending(&self) {}

    /// Whether [`Backend::generate`] continues a final assistant message;
    /// `Err` says why this backend cannot (checked before a run with a
    /// `prefill:K` attack asks anything).
    fn prefill(&self) -> Result<(), String> {
        Err(format!(
            "{} cannot continue an assistant message",
            self.identity()
        ))
    }

    /// The opening of a prefill of `units` units of `text`, as this backend
    /// counts them: whitespace-separated words here; a local model counts
    /// its tokenizer's tokens.
    fn prefill_text(&self, text: &str, units: usize) -> Result<String, BackendError> {
        Ok(crate::benchmark::attacks::first_words(text, units))
    }

    /// The model's next-token distributions over the first `max_tokens`
    /// tokens of `answer`, teacher-forced after `messages` (one forward
    /// pass, no generation). `Ok(None)`: this backend cannot give full
    /// distributions (models served through an API).
    async fn answer_log_probs(
        &self,
        _messages: &[Message],
        _answer: &str,
        _max_tokens: usize,
    ) -> Result<Option<AnswerLogProbs>, BackendError> {
        Ok(None)
    }
}
