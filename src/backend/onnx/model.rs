//! A model directory in HF optimum's layout: `model.onnx` (+ external data),
//! `config.json`, optional `generation_config.json`, `tokenizer.json` and
//! `tokenizer_config.json`. Everything is checked before a session is opened,
//! so that a broken directory gets a message naming the file at fault.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;

/// A problem with a model directory; the message names the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

/// What the decoder needs to know about a model, from its config files.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: Option<usize>,
    pub max_positions: Option<usize>,
    /// Token ids that end an answer.
    pub eos: Vec<u32>,
    /// Id used for left padding (masked out, so any valid id works).
    pub pad: u32,
}

/// A checked model directory.
pub struct ModelDir {
    pub dir: PathBuf,
    pub onnx: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError(format!("{}: invalid JSON: {e}", path.display())))
}

fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn usize_key(config: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(Value::as_u64))
        .map(|n| n as usize)
}

/// The directory's `model.onnx`, checked to exist and not be truncated.
fn check_onnx(dir: &Path) -> Result<PathBuf, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError(format!(
            "model directory {} does not exist",
            dir.display()
        )));
    }
    let onnx = dir.join("model.onnx");
    let meta = std::fs::metadata(&onnx).map_err(|_| {
        ModelError(format!(
            "{}: not found (expected an ONNX decoder in the optimum layout)",
            onnx.display()
        ))
    })?;
    if meta.len() < 64 {
        return Err(ModelError(format!(
            "{}: {} bytes is too small to be a model (truncated?)",
            onnx.display(),
            meta.len()
        )));
    }
    Ok(onnx)
}

/// The directory's `tokenizer.json`, loaded.
fn open_tokenizer(dir: &Path) -> Result<(PathBuf, Tokenizer), ModelError> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError(format!(
            "{}: not found (the model needs its tokenizer)",
            tokenizer_path.display()
        )));
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
        ModelError(format!(
            "{}: cannot load the tokenizer: {e}",
            tokenizer_path.display()
        ))
    })?;
    Ok((tokenizer_path, tokenizer))
}

/// The id of the tokenizer config's `eos_token`, when the tokenizer has it.
fn tokenizer_eos(
    tokenizer_config: &Path,
    tokenizer: &Tokenizer,
) -> Result<Option<u32>, ModelError> {
    let tc = read_json(tokenizer_config)?;
    let name = match tc.get("eos_token") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    Ok(name.and_then(|n| tokenizer.token_to_id(&n)))
}

impl ModelDir {
    /// Checks and reads a model directory.
    pub fn open(dir: &Path) -> Result<ModelDir, ModelError> {
        let onnx = check_onnx(dir)?;
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let need = |keys: &[&str]| {
            usize_key(&config, keys).ok_or_else(|| {
                ModelError(format!("{}: missing `{}`", config_path.display(), keys[0]))
            })
        };
        let layers = need(&["num_hidden_layers", "n_layer", "num_layers"])?;
        let heads = need(&["num_attention_heads", "n_head"])?;
        if heads == 0 || layers == 0 {
            return Err(ModelError(format!(
                "{}: `num_attention_heads` and `num_hidden_layers` must be at least 1",
                config_path.display()
            )));
        }
        let kv_heads = usize_key(&config, &["num_key_value_heads"]).unwrap_or(heads);
        let head_dim = match usize_key(&config, &["head_dim"]) {
            Some(d) => d,
            None => need(&["hidden_size", "n_embd"])? / heads,
        };
        let generation_path = dir.join("generation_config.json");
        let generation = if generation_path.exists() {
            Some(read_json(&generation_path)?)
        } else {
            None
        };
        let mut eos = ids(generation.as_ref().and_then(|g| g.get("eos_token_id")));
        if eos.is_empty() {
            eos = ids(config.get("eos_token_id"));
        }

        let (tokenizer_path, tokenizer) = open_tokenizer(dir)?;
        let tokenizer_config = dir.join("tokenizer_config.json");
        if !tokenizer_config.is_file() {
            return Err(ModelError(format!(
                "{}: not found (the model needs its chat template)",
                tokenizer_config.display()
            )));
        }
        let chat_template = ChatTemplate::from_tokenizer_config(&tokenizer_config)
            .map_err(|e| ModelError(e.to_string()))?;
        if eos.is_empty() {
            // Fall back to the tokenizer's eos token.
            eos.extend(tokenizer_eos(&tokenizer_config, &tokenizer)?);
        }
        if eos.is_empty() {
            return Err(ModelError(format!(
                "{}: no eos_token_id (nor in {} or the tokenizer config): answers would never end",
                generation_path.display(),
                config_path.display()
            )));
        }
        let vocab_size = usize_key(&config, &["vocab_size"]);
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if let Some(v) = vocab_size {
            if tokenizer_vocab > v {
                return Err(ModelError(format!(
                    "{}: the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {v} ({}): they do not belong together",
                    tokenizer_path.display(),
                    config_path.display()
                )));
            }
        }
        let pad = ids(config.get("pad_token_id"))
            .first()
            .copied()
            .unwrap_or(eos[0]);
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            onnx,
            config: ModelConfig {
                layers,
                kv_heads,
                head_dim,
                vocab_size,
                max_positions: usize_key(&config, &["max_position_embeddings", "n_positions"]),
                eos,
                pad,
            },
            tokenizer,
            chat_template,
        })
    }
}

/// Digest of a model directory's files (names, sizes, modification times):
/// a new checkpoint written to the same path is a different model.
pub(crate) fn fingerprint(dir: &Path) -> String {
    let mut entries: Vec<(String, u64, u128)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            // Followed through symlinks: a snapshot of linked files (the HF
            // cache's layout) is a model like any other.
            let meta = std::fs::metadata(e.path()).ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            let name = e.file_name().to_string_lossy().into_owned();
            // Dot-files are bookkeeping (the download cache's `.complete`
            // and `.last-used`), not the model.
            (meta.is_file() && !name.starts_with('.')).then_some((name, meta.len(), modified))
        })
        .collect();
    entries.sort();
    let mut h = Sha256::new();
    for (name, len, modified) in entries {
        h.update(format!("{name}\0{len}\0{modified}\n"));
    }
    hex::encode(&h.finalize()[..8])
}
