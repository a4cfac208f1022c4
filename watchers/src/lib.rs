//! Watchers discover new fine-tuned checkpoints in model registries: a
//! directory, MLflow, the Hugging Face Hub, OpenAI fine-tuning jobs, Ollama.
//!
//! Each registry kind is one file implementing [`Watcher`]. The daemon polls
//! each watcher on its cron schedule (and at once when the registry's webhook
//! arrives), deduplicates what it finds by (watcher, model, revision) in its
//! store, and for each new checkpoint asks the watcher to [`Watcher::fetch`]
//! it (download artifacts into the [`cache::Cache`]) and evaluates the
//! resulting [`Target`] against its baseline.
//!
//! The crate also holds [`http`], the one retry policy of everything that
//! talks HTTP (it lives here because watchers are the lowest crate that does).

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod cache;
pub mod config;
pub mod directory;
pub mod format;
pub mod http;
pub mod huggingface;
pub mod mlflow;
pub mod ollama;
pub mod openai_finetunes;

pub use cache::Cache;
pub use config::{check_cron, parse_table, Common, Settings, WatcherConfig};

/// A checkpoint a watcher found: (watcher, model, revision) identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The watcher that found it (its config name).
    pub watcher: String,
    /// The model's name in its registry (`acme/llama-sft`, `safety-candidate`,
    /// a folder name).
    pub model: String,
    /// What identifies this exact checkpoint: a commit sha, a registry
    /// version, a digest, a folder's content hash.
    pub revision: String,
    /// The aligned base model the registry names for it, if any (a
    /// configured baseline takes precedence).
    pub baseline: Option<Baseline>,
    /// Watcher-specific details `fetch` needs (e.g. an artifact URI).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Whether a model name, revision or id a registry answered is one a
/// checkpoint can carry: not empty, at most 512 bytes, no control
/// characters. Watchers skip (and warn about) listings that fail it.
pub fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && !s.chars().any(char::is_control)
}

impl Checkpoint {
    /// The identity used for deduplication: `watcher/model@revision`.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.watcher, self.model, self.revision)
    }
}

/// A baseline a registry names.
///
/// Stored in the daemon's queue (inside [`Checkpoint`]), so its encoding is
/// part of the store's schema. Both enums are adjacently tagged
/// (`{"type": "target", "value": {"type": "open_ai", "value": {...}}}`): an
/// internally tagged `Baseline` holding an internally tagged `Target` wrote
/// two `type` keys into one object, which could not be read back (store
/// schema 1; the store upgrades such records when it opens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Baseline {
    /// Another checkpoint of the same watcher (an MLflow alias's version, a
    /// Hub repo's `base_model`), fetched like any checkpoint.
    Checkpoint(Box<Checkpoint>),
    /// Something already runnable (an OpenAI job's base model).
    Target(Target),
}

/// What the daemon evaluates. Adjacently tagged, like [`Baseline`] (an
/// internally tagged enum cannot hold `Spec`'s bare string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// A local model directory (ONNX, optimum layout).
    Onnx { dir: PathBuf },
    /// A model behind an OpenAI-compatible chat endpoint.
    OpenAi {
        /// Base URL ending in `/v1`.
        base_url: String,
        model: String,
        /// Environment variable holding the API key, if one is needed.
        api_key_env: Option<String>,
        /// File holding the API key (e.g. a systemd credential).
        api_key_file: Option<PathBuf>,
    },
    /// A model SPEC or configured name, resolved like `eval --model`.
    Spec(String),
}

/// Why a registry could not be read or a checkpoint fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WatchError {
    /// `unreachable`, `http`, `malformed`, `config`, `disk`, `checksum`,
    /// `unauthorized`, `unsupported` ...
    pub kind: &'static str,
    pub message: String,
}

impl WatchError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> WatchError {
        WatchError {
            kind,
            message: message.into(),
        }
    }
}

/// A webhook delivery as received (the daemon's HTTP layer hands it over).
pub struct Webhook<'a> {
    /// Header lookup, case-insensitive.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Send + Sync),
    /// The raw body, exactly as received (signatures cover the raw bytes).
    pub body: &'a [u8],
}

/// A source of checkpoints.
#[async_trait]
pub trait Watcher: Send + Sync {
    /// The watcher's config name.
    fn name(&self) -> &str;

    /// Lists the registry's current checkpoints. Returning ones seen before
    /// is fine (the daemon deduplicates); an empty Vec means nothing there;
    /// an `Err` means the registry could not be read (the daemon backs off
    /// and retries).
    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError>;

    /// Makes a checkpoint runnable: downloads its artifacts into `cache`
    /// (atomically, checksummed, resumable) and returns what to evaluate.
    async fn fetch(&self, checkpoint: &Checkpoint, cache: &Cache) -> Result<Target, WatchError>;

    /// Checks a webhook delivery (its secret or signature). `Ok(true)`: the
    /// delivery is genuine and may announce something new (the daemon polls
    /// this watcher now); `Ok(false)`: genuine but irrelevant; `Err` with kind
    /// `unauthorized`: rejected. Watchers whose registry has no webhooks keep
    /// the default.
    fn webhook(&self, _delivery: &Webhook<'_>) -> Result<bool, WatchError> {
        Err(WatchError::new(
            "unsupported",
            format!("watcher {} takes no webhooks", self.name()),
        ))
    }

    /// A signal the watcher raises when it knows something changed (e.g.
    /// inotify), so the daemon polls it before its next scheduled time.
    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// Where a `*_file` key's secret is read from. Under systemd, a bare name
/// (no `/`) is a credential id: the file of that name in
/// `$CREDENTIALS_DIRECTORY` (the unit's `LoadCredential=`). Anything else is
/// a path.
pub fn secret_path(file: &std::path::Path) -> std::path::PathBuf {
    let bare = file.components().count() == 1 && file.is_relative();
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if bare && !dir.is_empty() => std::path::Path::new(&dir).join(file),
        _ => file.to_path_buf(),
    }
}

/// Reads a secret named by a `*_env` or `*_file` key; errors name the key
/// or variable, never the secret.
pub fn read_secret(
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, WatchError> {
    if let Some(file) = file {
        let path = secret_path(file);
        let path = path.as_path();
        let text = std::fs::read_to_string(path).map_err(|e| {
            WatchError::new(
                "config",
                format!("cannot read secret file {}: {e}", path.display()),
            )
        })?;
        let secret = text.trim().to_string();
        if secret.is_empty() {
            return Err(WatchError::new(
                "config",
                format!("secret file {} is empty", path.display()),
            ));
        }
        return Ok(Some(secret));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            _ => Err(WatchError::new(
                "config",
                format!("environment variable {var} is not set"),
            )),
        };
    }
    Ok(None)
}

/// The registry kinds, as `kind = "..."` names them in `[watchers.NAME]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Directory,
    Mlflow,
    Huggingface,
    OpenaiFinetunes,
    Ollama,
}

impl Kind {
    /// The name written in the config (`openai-finetunes`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => directory::KIND,
            Kind::Mlflow => "mlflow",
            Kind::Huggingface => "huggingface",
            Kind::OpenaiFinetunes => "openai-finetunes",
            Kind::Ollama => "ollama",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
