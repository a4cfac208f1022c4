//! vLLM's runtime LoRA API, next to its OpenAI-compatible chat
//! ([`super::openai`]): a LoRA checkpoint is loaded on every replica of a
//! `[backends.NAME] kind = "vllm"` fleet, asked over the chat API under its
//! adapter name, and unloaded when the evaluation drops it.
//!
//! The routes (vLLM's `serving_models.py`; the server runs with
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):
//! - `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 and a plain
//!   text "Success: ..."; 400 `{"object": "error", "message": ...}` when the
//!   name is already loaded or the adapter cannot be loaded, 404 when no
//!   adapter is found at the path. Newer versions nest the error:
//!   `{"error": {"message": ...}}`; both are read.
//! - `POST /v1/unload_lora_adapter {"lora_name"}`: 200; 404 (400 in older
//!   versions) when no adapter of that name is loaded.
//! - `GET /v1/models`: base models, and loaded adapters with `parent` set to
//!   their base model.
//!
//! Every error names the replica's URL; the API key never appears in one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use safedrift_judges::Message;
use serde::Deserialize;
use tracing::{info, warn};

use super::openai::OpenAiClient;
use super::{Backend, BackendError, Decoding, Generation};

/// The admin side of a vLLM fleet: its replicas' LoRA routes.
pub struct LoraAdmin {
    http: reqwest::Client,
    base_urls: Vec<String>,
    api_key: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// The base model, for a LoRA adapter.
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelCard>,
}

fn fleet_error(kind: &'static str, message: String) -> BackendError {
    BackendError { kind, message }
}

/// The message of a vLLM error body (flat or nested), else the body.
fn error_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let m = v["message"].as_str().or(v["error"]["message"].as_str());
    let text = m.map_or_else(|| body.trim().to_string(), str::to_string);
    text.chars().take(500).collect()
}

impl LoraAdmin {
    pub fn new(base_urls: &[String], api_key: Option<String>, timeout: Duration) -> LoraAdmin {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("safedrift/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        LoraAdmin {
            http,
            base_urls: base_urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            api_key,
        }
    }

    pub fn replicas(&self) -> &[String] {
        &self.base_urls
    }

    fn redact(&self, text: String) -> String {
        match &self.api_key {
            Some(key) if key.len() >= 4 => text.replace(key.as_str(), "***"),
            _ => text,
        }
    }

    /// Sends one request; `Ok` with the body on 2xx, else the status and
    /// vLLM's message, naming the replica.
    async fn send(
        &self,
        replica: &str,
        route: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, (u16, String)> {
        let url = format!("{replica}/{route}");
        let mut request = match &body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            (
                0,
                self.redact(format!(
                    "{replica}: unreachable ({})",
                    crate::http::transport_reason(&e.without_url())
                )),
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        Err((
            status.as_u16(),
            self.redact(format!(
                "{replica}: {route} answered {status}: {}",
                error_message(&text)
            )),
        ))
    }

    /// What one replica serves (`GET /v1/models`).
    pub async fn models(&self, replica: &str) -> Result<Vec<ModelCard>, BackendError> {
        let text = self
            .send(replica, "models", None)
            .await
            .map_err(|(_, m)| fleet_error("fleet", m))?;
        let list: ModelList = serde_json::from_str(&text).map_err(|e| {
            fleet_error(
                "malformed",
                format!("{replica}: unreadable /v1/models ({e})"),
            )
        })?;
        Ok(list.data)
    }

    /// Checks that every replica serves `base` as a base model.
    pub async fn check_base(&self, base: &str, adapter: &str) -> Result<(), BackendError> {
        for replica in &self.base_urls {
            let models = self.models(replica).await?;
            if !models.iter().any(|m| m.parent.is_none() && m.id == base) {
                let served: Vec<&str> = models
                    .iter()
                    .filter(|m| m.parent.is_none())
                    .map(|m| m.id.as_str())
                    .collect();
                return Err(fleet_error(
                    "base_mismatch",
                    format!(
                        "LoRA adapter {adapter}: its base model `{base}` (base_model_name_or_path \
                         in adapter_config.json) is not served by {replica}, which serves `{}`",
                        served.join("`, `")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Loads the adapter on one replica.
    pub async fn load(&self, replica: &str, name: &str, path: &str) -> Result<(), BackendError> {
        let body = serde_json::json!({"lora_name": name, "lora_path": path});
        self.send(replica, "load_lora_adapter", Some(body))
            .await
            .map(|_| ())
            .map_err(|(status, m)| {
                let kind = match status {
                    0 => "unreachable",
                    404 => "not_found",
                    400 if m.contains("already") => "already_loaded",
                    _ => "fleet",
                };
                fleet_error(kind, format!("cannot load LoRA adapter {name}: {m}"))
            })
    }

    /// Unloads the adapter from one replica; one that is not loaded there
    /// (404, or 400 from older versions) counts as unloaded.
    pub async fn unload(&self, replica: &str, name: &str) -> Result<(), BackendError> {
        let body = serde_json::json!({"lora_name": name});
        match self.send(replica, "unload_lora_adapter", Some(body)).await {
            Ok(_) => Ok(()),
            Err((404, _)) => Ok(()),
            Err((400, m)) if m.contains("cannot be found") => Ok(()),
            Err((_, m)) => Err(fleet_error(
                "fleet",
                format!("cannot unload LoRA adapter {name}: {m}"),
            )),
        }
    }

    /// Loads the adapter on every replica; on a failure, unloads it from
    /// those that loaded it and removes `cleanup` (its copy).
    pub async fn load_everywhere(
        self: &Arc<Self>,
        name: &str,
        path: &str,
        cleanup: Option<std::path::PathBuf>,
    ) -> Result<Lease, BackendError> {
        let mut lease = Lease {
            admin: self.clone(),
            name: name.to_string(),
            loaded: Vec::new(),
            cleanup,
        };
        for replica in &self.base_urls {
            match self.load(replica, name, path).await {
                // The name is this daemon's, which never evaluates a
                // checkpoint twice at once: a load whose unload failed (the
                // replica was down then, and at the last start). Reloaded.
                Err(e) if e.kind == "already_loaded" => {
                    warn!(adapter = name, replica = %replica, "the LoRA adapter was left loaded; reloading it");
                    self.unload(replica, name).await?;
                    self.load(replica, name, path).await?;
                }
                loaded => loaded?,
            }
            lease.loaded.push(replica.clone());
        }
        info!(
            adapter = name,
            replicas = self.base_urls.len(),
            "loaded the LoRA adapter"
        );
        Ok(lease)
    }

    /// Unloads, from every replica, the adapters whose name starts with
    /// `prefix` (those a daemon left loaded when it was killed); returns
    /// how many were unloaded.
    pub async fn unload_prefixed(&self, prefix: &str) -> Result<usize, BackendError> {
        let mut n = 0;
        for replica in &self.base_urls {
            for m in self.models(replica).await? {
                if m.parent.is_some() && m.id.starts_with(prefix) {
                    self.unload(replica, &m.id).await?;
                    info!(adapter = %m.id, replica = %replica, "unloaded a LoRA adapter left loaded");
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// An adapter loaded on the replicas in `loaded`: unloaded from them when
/// dropped (in a task of its own), and its copy in the shared folder
/// removed after.
pub struct Lease {
    admin: Arc<LoraAdmin>,
    name: String,
    loaded: Vec<String>,
    cleanup: Option<std::path::PathBuf>,
}

impl Lease {
    /// Unloads now; the lease is spent.
    pub async fn release(mut self) {
        let loaded = std::mem::take(&mut self.loaded);
        let cleanup = self.cleanup.take();
        unload_all(self.admin.clone(), self.name.clone(), loaded, cleanup).await;
    }
}

async fn unload_all(
    admin: Arc<LoraAdmin>,
    name: String,
    loaded: Vec<String>,
    cleanup: Option<std::path::PathBuf>,
) {
    let mut all = true;
    for replica in &loaded {
        if let Err(e) = admin.unload(replica, &name).await {
            all = false;
            warn!(error = %e, "the LoRA adapter stays loaded until the next start");
        }
    }
    if !loaded.is_empty() && all {
        info!(adapter = %name, "unloaded the LoRA adapter");
    }
    if let Some(dir) = cleanup {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.loaded.is_empty() && self.cleanup.is_none() {
            return;
        }
        let (loaded, cleanup) = (std::mem::take(&mut self.loaded), self.cleanup.take());
        let (admin, name) = (self.admin.clone(), self.name.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(unload_all(admin, name, loaded, cleanup));
            }
            Err(_) => {
                warn!(adapter = %name, "no runtime to unload the LoRA adapter; the next start unloads it")
            }
        }
    }
}

/// A LoRA adapter loaded on the fleet, asked over the chat API by its name.
pub struct LoraModel {
    pub client: Arc<OpenAiClient>,
    pub name: String,
    pub lease: Lease,
}

#[async_trait]
impl Backend for LoraModel {
    fn identity(&self) -> String {
        format!("vllm-lora:{}@{}", self.name, self.client.endpoint())
    }

    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError> {
        self.client.chat(&self.name, messages, decoding).await
    }

    fn prefill(&self) -> Result<(), String> {
        self.client.prefill(&self.name).map_err(|e| e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn reads_flat_and_nested_vllm_errors() {
        let flat = r#"{"object":"error","message":"The lora adapter 'a' has already been loaded.","type":"InvalidUserInput","param":null,"code":400}"#;
        assert_eq!(
            error_message(flat),
            "The lora adapter 'a' has already been loaded."
        );
        let nested = r#"{"error":{"message":"The lora adapter 'a' cannot be found.","type":"NotFoundError","code":404}}"#;
        assert_eq!(
            error_message(nested),
            "The lora adapter 'a' cannot be found."
        );
        assert_eq!(error_message("Bad Gateway\n"), "Bad Gateway");
    }
}
