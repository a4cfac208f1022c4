//! Watchers discover new fine-tuned checkpoints in model registries (a
//! directory, MLflow, the Hugging Face Hub, OpenAI fine-tuning jobs, Ollama).
//!
//! Each registry kind is one file implementing [`Watcher`]; the daemon polls
//! each watcher on its cron schedule and feeds what it finds to a durable
//! evaluation queue. The implementations arrive with the daemon.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A checkpoint a watcher found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The watcher that found it (its config name).
    pub watcher: String,
    /// The model's name in its registry (`acme/llama-sft`, `safety-candidate`).
    pub model: String,
    /// What identifies this exact checkpoint: a commit sha, a registry
    /// version, a digest, a directory's content hash.
    pub revision: String,
    /// The model SPEC to evaluate it with (`onnx:/cache/...`, `openai:ft:...`).
    pub spec: String,
    /// Its aligned base model's SPEC, when the registry names one.
    pub baseline: Option<String>,
}

/// Why a registry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WatchError {
    pub kind: &'static str,
    pub message: String,
}

/// A source of checkpoints.
#[async_trait]
pub trait Watcher: Send + Sync {
    /// The watcher's config name.
    fn name(&self) -> &str;
    /// Returns the checkpoints not seen before; an empty Vec means nothing
    /// new, an Err means the registry could not be read (the daemon backs off
    /// and retries on the next tick).
    async fn poll(&mut self) -> Result<Vec<Checkpoint>, WatchError>;
}
