//! Backends generate a model's answers. A backend is asked for one answer at
//! a time; it bounds its own concurrency and retries transient failures, so an
//! `Err` is final for that prompt (the run stops with its progress saved).

use async_trait::async_trait;
use safedrift_judges::Message;
use serde::{Deserialize, Serialize};

pub mod openai;

/// Decoding settings, part of a run's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    pub max_new_tokens: u32,
    /// 0 means greedy, as in the paper.
    pub temperature: f64,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            max_new_tokens: 512,
            temperature: 0.0,
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

/// Why a backend gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// `unauthorized`, `not_found`, `insufficient_quota`, `bad_request`,
    /// `exhausted` (retries used up), `malformed` ...
    pub kind: &'static str,
    pub message: String,
}

/// Generates answers for one model.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Identity of what answers: endpoint kind and model name. Part of the
    /// run's identity (with template, decoding and benchmark).
    fn identity(&self) -> String;
    /// Returns the model's answer to `messages`; `Err` after retries failed or
    /// on an error retrying cannot fix.
    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError>;
}
