//! The Ollama watcher: each local model (`GET /api/tags`) is a checkpoint
//! whose revision is its digest, so `ollama pull` or `ollama create` over an
//! existing name shows up as a new revision. Models are evaluated through
//! Ollama's OpenAI-compatible API at `{base_url}/v1`; nothing is downloaded.
//! Ollama names no base model: the baseline is configured.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::warn;
use url::Url;

use crate::http::{JsonGet, RetryPolicy};
use crate::{is_plain, Cache, Checkpoint, Target, WatchError, Watcher};

/// `[watchers.NAME]` keys of `kind = "ollama"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaConfig {
    /// Ollama's address.
    pub base_url: Option<String>,
    /// Only these models (`llama3` means `llama3:latest`); all by default.
    pub models: Option<Vec<String>>,
    /// Connect and read timeout of each request (humantime, e.g. `10s`).
    pub timeout: Option<String>,
    /// A bearer token, for an Ollama behind an authenticating proxy: the
    /// environment variable or file holding it (sent when listing models
    /// and when the models are evaluated).
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
}

/// Watches the models of one Ollama server.
pub struct OllamaWatcher {
    name: String,
    base_url: String,
    models: Option<Vec<String>>,
    timeout: Duration,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    http: reqwest::Client,
    /// How requests are retried (public so tests can shorten it).
    pub retry: RetryPolicy,
}

/// `GET /api/tags`.
#[derive(Debug, Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    name: String,
    digest: String,
    size: Option<u64>,
    modified_at: Option<String>,
}

impl OllamaWatcher {
    /// Builds the watcher from its `[watchers.NAME]` table (common keys are
    /// ignored); every problem is reported, prefixed `watchers.NAME.key`.
    pub fn from_config(name: &str, table: &toml::Table) -> Result<Self, Vec<String>> {
        let crate::Settings::Ollama(config) =
            crate::config::settings_of(name, crate::Kind::Ollama, table)?
        else {
            unreachable!("settings of the kind asked for")
        };
        Self::configure(name, &config, true)
            .map(|w| w.expect("configure builds the watcher when asked to"))
    }

    /// Checks the settings; with `build` false it stops there
    /// (`Ok(None)`: the config is valid) without building an HTTP client.
    pub(crate) fn configure(
        name: &str,
        config: &OllamaConfig,
        build: bool,
    ) -> Result<Option<Self>, Vec<String>> {
        let config = config.clone();
        let key = |k: &str| format!("`watchers.{name}.{k}`");
        let mut problems = Vec::new();
        let base_url = config
            .base_url
            .as_deref()
            .unwrap_or("http://localhost:11434")
            .trim_end_matches('/')
            .to_string();
        match Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.path().ends_with("/v1") {
                    problems.push(format!(
                        "{}: {base_url:?} is Ollama's OpenAI API; give its root, like \"http://localhost:11434\"",
                        key("base_url")
                    ));
                }
            }
            _ => problems.push(format!(
                "{}: {base_url:?} is not an http(s) URL like \"http://localhost:11434\"",
                key("base_url")
            )),
        }
        if let Some(models) = &config.models {
            if models.is_empty() {
                problems.push(format!(
                    "{}: the list is empty (leave it out to watch every model)",
                    key("models")
                ));
            }
            if models.iter().any(|m| m.trim().is_empty()) {
                problems.push(format!("{}: names must not be empty", key("models")));
            }
        }
        let timeout = crate::http::timeout_setting(
            config.timeout.as_deref(),
            Duration::from_secs(10),
            &key("timeout"),
            &mut problems,
        );
        if config.api_key_env.is_some() && config.api_key_file.is_some() {
            problems.push(format!(
                "{}: set `api_key_env` or `api_key_file`, not both",
                key("api_key_env")
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        if !build {
            return Ok(None);
        }
        let http = crate::http::watcher_client(name, timeout)?;
        Ok(Some(OllamaWatcher {
            name: name.to_string(),
            base_url,
            models: config
                .models
                .map(|m| m.iter().map(|n| with_tag(n.trim())).collect()),
            timeout,
            api_key_env: config.api_key_env,
            api_key_file: config.api_key_file,
            http,
            retry: RetryPolicy::default(),
        }))
    }

    fn watched(&self, name: &str) -> bool {
        match &self.models {
            None => true,
            Some(models) => models.iter().any(|m| *m == with_tag(name)),
        }
    }

    /// GETs `{base_url}{path}` under the retry policy and parses the JSON.
    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, WatchError> {
        let key = crate::read_secret(self.api_key_env.as_deref(), self.api_key_file.as_deref())?;
        JsonGet {
            http: &self.http,
            url: &format!("{}{path}", self.base_url),
            query: &[],
            bearer: key.as_deref(),
            timeout: self.timeout,
            watcher: &self.name,
            key_source: String::new(),
        }
        .send(&self.retry)
        .await
    }
}

/// Ollama's default tag: `llama3` is `llama3:latest`.
fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[async_trait]
impl Watcher for OllamaWatcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError> {
        let tags: Tags = self.get_json("/api/tags").await?;
        Ok(tags
            .models
            .into_iter()
            .filter(|m| {
                let plain = is_plain(&m.name) && is_plain(&m.digest);
                if !plain {
                    warn!(watcher = %self.name, model = ?m.name, digest = ?m.digest,
                        "the server listed a model whose name or digest is not plain; skipping it");
                }
                plain && self.watched(&m.name)
            })
            .map(|m| Checkpoint {
                watcher: self.name.clone(),
                model: m.name,
                revision: m.digest,
                baseline: None,
                detail: serde_json::json!({ "size": m.size, "modified_at": m.modified_at }),
            })
            .collect())
    }

    async fn fetch(&self, checkpoint: &Checkpoint, _cache: &Cache) -> Result<Target, WatchError> {
        Ok(Target::OpenAi {
            base_url: format!("{}/v1", self.base_url),
            model: checkpoint.model.clone(),
            api_key_env: self.api_key_env.clone(),
            api_key_file: self.api_key_file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_names() {
        let t: toml::Table = "kind = 'ollama'\nmodels = ['llama3', 'qwen2:0.5b']"
            .parse()
            .unwrap();
        let w = OllamaWatcher::from_config("local", &t).unwrap();
        assert!(w.watched("llama3:latest"));
        assert!(w.watched("qwen2:0.5b"));
        assert!(!w.watched("qwen2:7b"));
        let t: toml::Table = "base_url = 'http://localhost:11434/v1'\nmodel = 'x'"
            .parse()
            .unwrap();
        let err = OllamaWatcher::from_config("local", &t).err().unwrap();
        assert!(err[0].starts_with("`watchers.local.model`"), "{err:?}");
        let t: toml::Table = "base_url = 'http://localhost:11434/v1'".parse().unwrap();
        let err = OllamaWatcher::from_config("local", &t).err().unwrap();
        assert!(err[0].starts_with("`watchers.local.base_url`"), "{err:?}");
    }
}
