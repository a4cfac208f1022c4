//! LoRA checkpoints on a vLLM fleet: a checkpoint folder holding
//! `adapter_config.json` and `adapter_model.safetensors`, found by a watcher
//! whose `backend` is a `[backends.NAME] kind = "vllm"` entry, is loaded on
//! every replica under a name of its own ([`adapter_name`]), asked over the
//! chat API, and unloaded when its evaluation ends. Its baseline, unless the
//! watcher configures one, is its base model (`base_model_name_or_path`) on
//! the same fleet, which must serve it.
//!
//! `lora_path`, what the replicas are told to load: the copy in
//! `shared_dir` (the default when it is set), the checkpoint's registry id
//! (`"registry"`: a Hub repo id the server downloads itself) or the
//! checkpoint's own path (`"local"`, the default without `shared_dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use safedrift_watchers::{Checkpoint, Target};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::{invalid, ResolveError, Resolver};
use crate::backend::vllm::{LoraAdmin, LoraModel};
use crate::backend::Backend;
use crate::config::{read_secret, BackendConfig, OpenAiBackendConfig};

/// The adapter's own config, which names its base model.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights (vLLM also reads the older `.bin`).
const ADAPTER_WEIGHTS: &[&str] = &["adapter_model.safetensors", "adapter_model.bin"];
/// How long the start waits for each fleet to unload what a killed daemon
/// left loaded.
const STARTUP_CLEANUP: Duration = Duration::from_secs(30);
/// Longest adapter name sent to the fleet.
const MAX_NAME: usize = 96;

/// A LoRA checkpoint's base model on its fleet: its SPEC and its backend.
pub type BaseModel = (String, Arc<dyn Backend>);

/// Whether `dir` is a LoRA adapter folder.
pub fn is_lora_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file() && ADAPTER_WEIGHTS.iter().any(|w| dir.join(w).is_file())
}

/// `base_model_name_or_path` of the adapter in `dir`.
pub fn base_model(dir: &Path) -> Result<String, ResolveError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text =
        std::fs::read_to_string(&path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("{}: not JSON: {e}", path.display())))?;
    match v["base_model_name_or_path"].as_str().map(str::trim) {
        Some(base) if !base.is_empty() => Ok(base.to_string()),
        _ => Err(invalid(format!(
            "{}: `base_model_name_or_path` is missing: the base model the adapter was trained on",
            path.display()
        ))),
    }
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// Keeps `[A-Za-z0-9._-]`; anything else becomes `-`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// What starts the name of every adapter this daemon (its store,
/// `data_dir`) loads: `safedrift-<hash of data_dir>-`.
pub fn adapter_prefix(data_dir: &Path) -> String {
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("safedrift-{}-", short_hash(&dir.display().to_string()))
}

/// The adapter's name on the fleet, stable for (daemon, watcher, model,
/// revision): `<prefix><watcher>-<model>-<revision, 12 characters>`,
/// sanitized; a long one keeps its start and gains a hash of the whole.
pub fn adapter_name(prefix: &str, cp: &Checkpoint) -> String {
    let revision = cp.revision.rsplit(':').next().unwrap_or(&cp.revision);
    let revision: String = revision.chars().take(12).collect();
    let name = sanitize(&format!("{prefix}{}-{}-{revision}", cp.watcher, cp.model));
    if name.len() <= MAX_NAME {
        return name;
    }
    let tail = short_hash(&name);
    format!("{}-{tail}", &name[..MAX_NAME - tail.len() - 1])
}

/// Copies the adapter folder to `to` (through a hidden temporary folder,
/// renamed when complete).
fn copy_adapter(from: &Path, to: &Path) -> std::io::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("."));
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = copy_tree(from, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(to);
    std::fs::rename(&tmp, to)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() || kind.is_symlink() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

impl Resolver {
    /// The `[backends.NAME]` entry named, if it is a vLLM fleet.
    fn vllm_backend<'a>(
        &'a self,
        name: Option<&'a str>,
    ) -> Option<(&'a str, &'a OpenAiBackendConfig)> {
        let name = name?;
        match self.config.backends.get(name) {
            Some(BackendConfig::Vllm(o)) => Some((name, o)),
            _ => None,
        }
    }

    fn lora_admin(
        &self,
        name: &str,
        o: &OpenAiBackendConfig,
    ) -> Result<Arc<LoraAdmin>, ResolveError> {
        let api_key = read_secret(o.api_key_env.as_deref(), o.api_key_file.as_deref())
            .map_err(|e| invalid(format!("`backends.{name}`: {e}")))?;
        let urls: Vec<String> = o.base_url.iter().chain(&o.base_urls).cloned().collect();
        let timeout = o.timeout.unwrap_or(Duration::from_secs(120));
        Ok(Arc::new(LoraAdmin::new(&urls, api_key, timeout)))
    }

    /// The LoRA adapter folder a watcher found, when its `backend` is a
    /// vLLM fleet: loaded on every replica, ready to be asked. `None` for
    /// anything else (resolved by [`Resolver::target`]).
    pub async fn lora_candidate(
        &self,
        target: &Target,
        backend: Option<&str>,
        cp: &Checkpoint,
    ) -> Result<Option<Arc<dyn Backend>>, ResolveError> {
        let (Target::Onnx { dir }, Some((fleet, o))) = (target, self.vllm_backend(backend)) else {
            return Ok(None);
        };
        if !is_lora_dir(dir) {
            return Ok(None);
        }
        let base = base_model(dir)?;
        let name = adapter_name(&adapter_prefix(&self.config.data_dir), cp);
        let (lora_path, copy) = match (o.lora_path.as_deref(), &o.shared_dir) {
            (Some("registry"), _) => (cp.model.clone(), None),
            (Some("local"), _) | (None, None) => (dir.display().to_string(), None),
            (_, Some(shared)) => {
                let to = shared.join(&name);
                (to.display().to_string(), Some(to))
            }
            (Some(other), None) => {
                return Err(invalid(format!(
                    "`backends.{fleet}.lora_path`: {other:?} is not understood"
                )))
            }
        };
        let fleet_err =
            |e: crate::backend::BackendError| invalid(format!("backend {fleet}: {}", e.message));
        let admin = self.lora_admin(fleet, o)?;
        admin.check_base(&base, &name).await.map_err(fleet_err)?;
        if let Some(to) = &copy {
            let (from, to) = (dir.clone(), to.clone());
            tokio::task::spawn_blocking(move || copy_adapter(&from, &to))
                .await
                .map_err(|e| invalid(format!("copying the adapter failed: {e}")))?
                .map_err(|e| {
                    invalid(format!(
                        "`backends.{fleet}.shared_dir`: cannot copy {} there: {e}",
                        dir.display()
                    ))
                })?;
        }
        let lease = admin
            .load_everywhere(&name, &lora_path, copy)
            .await
            .map_err(fleet_err)?;
        let client = self.backend_endpoint(fleet, o)?;
        Ok(Some(Arc::new(LoraModel {
            client,
            name,
            lease,
        })))
    }

    /// The baseline of a LoRA checkpoint on a vLLM fleet: its base model on
    /// that fleet, as the SPEC `FLEET:BASE` and its backend; `None` when
    /// the checkpoint is not one.
    pub fn lora_baseline(
        &self,
        target: &Target,
        backend: Option<&str>,
    ) -> Result<Option<BaseModel>, ResolveError> {
        let (Target::Onnx { dir }, Some((fleet, o))) = (target, self.vllm_backend(backend)) else {
            return Ok(None);
        };
        if !is_lora_dir(dir) {
            return Ok(None);
        }
        let base = base_model(dir)?;
        let client = self.backend_endpoint(fleet, o)?;
        Ok(Some((
            format!("{fleet}:{base}"),
            self.openai_model(client, &base),
        )))
    }

    /// Unloads, from every vLLM fleet configured, the adapters this daemon
    /// loaded and did not unload (it was killed mid-evaluation). Failures
    /// are logged: the fleet may be down now and the adapters stay loaded.
    pub async fn unload_stale_adapters(&self) {
        let prefix = adapter_prefix(&self.config.data_dir);
        for (name, b) in &self.config.backends {
            let BackendConfig::Vllm(o) = b else { continue };
            let admin = match self.lora_admin(name, o) {
                Ok(a) => a,
                Err(e) => {
                    warn!(backend = %name, error = %e, "cannot check the fleet for LoRA adapters left loaded");
                    continue;
                }
            };
            // Bounded: a fleet that does not answer must not hold the start
            // (an adapter left loaded is reloaded when its checkpoint is).
            match tokio::time::timeout(STARTUP_CLEANUP, admin.unload_prefixed(&prefix)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(backend = %name, error = %e, "cannot unload the LoRA adapters left loaded")
                }
                Err(_) => warn!(
                    backend = %name,
                    "the fleet did not answer within {STARTUP_CLEANUP:?}; LoRA adapters left loaded stay loaded"
                ),
            }
            if let Some(shared) = &o.shared_dir {
                remove_stale_copies(shared, &prefix);
            }
        }
    }
}

/// Removes the adapter copies (and partial copies) a killed daemon left in
/// the shared folder.
fn remove_stale_copies(shared: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(shared) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.trim_start_matches('.').starts_with(prefix) {
            let path: PathBuf = entry.path();
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(watcher: &str, model: &str, revision: &str) -> Checkpoint {
        Checkpoint {
            watcher: watcher.into(),
            model: model.into(),
            revision: revision.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn adapter_names_are_sanitized_stable_and_bounded() {
        let prefix = adapter_prefix(Path::new("/var/lib/safedrift"));
        assert!(
            prefix.starts_with("safedrift-") && prefix.len() == 19,
            "{prefix}"
        );
        let a = adapter_name(
            &prefix,
            &cp("hub", "acme/llama sft", "sha256:0123456789abcdef"),
        );
        assert_eq!(a, format!("{prefix}hub-acme-llama-sft-0123456789ab"));
        assert_eq!(
            a,
            adapter_name(
                &prefix,
                &cp("hub", "acme/llama sft", "sha256:0123456789abcdef")
            )
        );
        // Another revision, another name.
        assert_ne!(
            a,
            adapter_name(&prefix, &cp("hub", "acme/llama sft", "fedcba9876543210"))
        );
        let long = adapter_name(&prefix, &cp("w", &"m".repeat(300), "r"));
        assert!(
            long.len() <= MAX_NAME && long.starts_with(&prefix),
            "{long}"
        );
        assert_ne!(long, adapter_name(&prefix, &cp("w", &"m".repeat(301), "r")));
        // Another daemon (store), another prefix.
        assert_ne!(prefix, adapter_prefix(Path::new("/srv/other")));
    }

    #[test]
    fn reads_the_base_model_and_names_the_file_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_lora_dir(dir.path()));
        let config = dir.path().join(ADAPTER_CONFIG);
        std::fs::write(
            &config,
            r#"{"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "r": 8}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("adapter_model.safetensors"), b"x").unwrap();
        assert!(is_lora_dir(dir.path()));
        assert_eq!(base_model(dir.path()).unwrap(), "Qwen/Qwen2.5-7B-Instruct");
        std::fs::write(&config, r#"{"r": 8}"#).unwrap();
        let e = base_model(dir.path()).unwrap_err().message;
        assert!(
            e.contains("adapter_config.json") && e.contains("base_model_name_or_path"),
            "{e}"
        );
    }
}
