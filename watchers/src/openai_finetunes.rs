//! The OpenAI fine-tuning watcher: every succeeded fine-tuning job is a
//! checkpoint, its fine-tuned model evaluated against the base model it was
//! trained from, both over the same OpenAI-compatible API.
//!
//! Jobs are listed with `GET /fine_tuning/jobs?limit=100&after=ID` while the
//! answer `has_more`; requests go through [`crate::http::RetryPolicy`].
//! Nothing is downloaded: `fetch` only names the model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::warn;
use url::Url;

use crate::http::{JsonGet, RetryPolicy};
use crate::{is_plain, read_secret, Baseline, Cache, Checkpoint, Target, WatchError, Watcher};

/// `[watchers.NAME]` keys of `kind = "openai-finetunes"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenaiFinetunesConfig {
    /// The API's base URL, ending in `/v1`.
    pub base_url: Option<String>,
    /// Environment variable holding the API key (`OPENAI_API_KEY` unless
    /// `api_key_file` is set).
    pub api_key_env: Option<String>,
    /// File holding the API key (e.g. a systemd credential).
    pub api_key_file: Option<PathBuf>,
    /// Only fine-tuned models whose name contains this (the job's `suffix`).
    pub suffix: Option<String>,
    /// Only jobs carrying these metadata values (`metadata[k]=v`).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Connect and read timeout of each request (humantime, e.g. `30s`).
    pub timeout: Option<String>,
}

/// Watches an OpenAI organization's fine-tuning jobs.
pub struct OpenaiFinetunesWatcher {
    name: String,
    base_url: String,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    suffix: Option<String>,
    metadata: BTreeMap<String, String>,
    timeout: Duration,
    http: reqwest::Client,
    /// How requests are retried (public so tests can shorten it).
    pub retry: RetryPolicy,
}

/// `GET /fine_tuning/jobs`.
#[derive(Debug, Deserialize)]
struct JobPage {
    data: Vec<Job>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Debug, Deserialize)]
struct Job {
    id: String,
    model: String,
    fine_tuned_model: Option<String>,
    /// Kept as text: new states (paused ...) appear over time.
    status: String,
}

impl OpenaiFinetunesWatcher {
    /// Builds the watcher from its `[watchers.NAME]` table (common keys are
    /// ignored); every problem is reported, prefixed `watchers.NAME.key`.
    pub fn from_config(name: &str, table: &toml::Table) -> Result<Self, Vec<String>> {
        let crate::Settings::OpenaiFinetunes(config) =
            crate::config::settings_of(name, crate::Kind::OpenaiFinetunes, table)?
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
        config: &OpenaiFinetunesConfig,
        build: bool,
    ) -> Result<Option<Self>, Vec<String>> {
        let config = config.clone();
        let key = |k: &str| format!("`watchers.{name}.{k}`");
        let mut problems = Vec::new();

        let base_url = config
            .base_url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1")
            .trim_end_matches('/')
            .to_string();
        match Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => problems.push(format!(
                "{}: {base_url:?} is not an http(s) URL like \"https://api.openai.com/v1\"",
                key("base_url")
            )),
        }
        if config.api_key_env.is_some() && config.api_key_file.is_some() {
            problems.push(format!(
                "{}: set `api_key_env` or `api_key_file`, not both",
                key("api_key_file")
            ));
        }
        let api_key_env = match (&config.api_key_env, &config.api_key_file) {
            (None, None) => Some("OPENAI_API_KEY".to_string()),
            (env, _) => env.clone(),
        };
        if config
            .suffix
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            problems.push(format!("{}: must not be empty", key("suffix")));
        }
        let timeout = crate::http::timeout_setting(
            config.timeout.as_deref(),
            Duration::from_secs(30),
            &key("timeout"),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        if !build {
            return Ok(None);
        }
        let http = crate::http::watcher_client(name, timeout)?;
        Ok(Some(OpenaiFinetunesWatcher {
            name: name.to_string(),
            base_url,
            api_key_env,
            api_key_file: config.api_key_file,
            suffix: config.suffix,
            metadata: config.metadata.unwrap_or_default(),
            timeout,
            http,
            retry: RetryPolicy::default(),
        }))
    }

    /// The same API and key, serving `model`.
    fn target(&self, model: &str) -> Target {
        Target::OpenAi {
            base_url: self.base_url.clone(),
            model: model.to_string(),
            api_key_env: self.api_key_env.clone(),
            api_key_file: self.api_key_file.clone(),
        }
    }

    /// GETs `{base_url}{path}` under the retry policy and parses the JSON.
    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<T, WatchError> {
        let key = read_secret(self.api_key_env.as_deref(), self.api_key_file.as_deref())?;
        let key_source = match (&self.api_key_file, &self.api_key_env) {
            (Some(file), _) => format!(" (key from {})", file.display()),
            (None, Some(env)) => format!(" (key from ${env})"),
            (None, None) => String::new(),
        };
        JsonGet {
            http: &self.http,
            url: &format!("{}{path}", self.base_url),
            query,
            bearer: key.as_deref(),
            timeout: self.timeout,
            watcher: &self.name,
            key_source,
        }
        .send(&self.retry)
        .await
    }
}

#[async_trait]
impl Watcher for OpenaiFinetunesWatcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit".to_string(), "100".to_string())];
            if let Some(after) = &after {
                query.push(("after".to_string(), after.clone()));
            }
            for (k, v) in &self.metadata {
                query.push((format!("metadata[{k}]"), v.clone()));
            }
            let page: JobPage = self.get_json("/fine_tuning/jobs", &query).await?;
            let last = page.data.last().map(|job| job.id.clone());
            for job in page.data {
                let Some(model) = job.fine_tuned_model.filter(|m| !m.is_empty()) else {
                    continue;
                };
                if job.status != "succeeded" {
                    continue;
                }
                if ![&model, &job.id, &job.model]
                    .into_iter()
                    .all(|s| is_plain(s))
                {
                    warn!(watcher = %self.name, job = ?job.id, model = ?model, base = ?job.model,
                        "the API listed a job whose id or model names are not plain names; skipping it");
                    continue;
                }
                if self.suffix.as_deref().is_some_and(|s| !model.contains(s)) {
                    continue;
                }
                found.push(Checkpoint {
                    watcher: self.name.clone(),
                    model,
                    revision: job.id,
                    baseline: Some(Baseline::Target(self.target(&job.model))),
                    detail: serde_json::json!({ "base_model": job.model }),
                });
            }
            match last {
                // A page that repeats its cursor would loop forever.
                Some(last) if page.has_more && after.as_ref() != Some(&last) => after = Some(last),
                _ => return Ok(found),
            }
        }
    }

    async fn fetch(&self, checkpoint: &Checkpoint, _cache: &Cache) -> Result<Target, WatchError> {
        Ok(self.target(&checkpoint.model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let t: toml::Table =
            "kind = 'openai-finetunes'\nsuffix = 'safety'\n[metadata]\nteam = 'ml'"
                .parse()
                .unwrap();
        let w = OpenaiFinetunesWatcher::from_config("ft", &t).unwrap();
        assert_eq!(w.base_url, "https://api.openai.com/v1");
        assert_eq!(w.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(w.metadata["team"], "ml");

        let t: toml::Table = "api_key_file = '/run/key'".parse().unwrap();
        let w = OpenaiFinetunesWatcher::from_config("ft", &t).unwrap();
        assert_eq!(w.api_key_env, None);

        let t: toml::Table =
            "base_url = 'nope'\napi_key_env = 'A'\napi_key_file = '/k'\ntimeout = '0s'"
                .parse()
                .unwrap();
        let err = OpenaiFinetunesWatcher::from_config("ft", &t).err().unwrap();
        assert_eq!(err.len(), 3, "{err:?}");
        let t: toml::Table = "[metadata]\nteam = 3".parse().unwrap();
        let err = OpenaiFinetunesWatcher::from_config("ft", &t).err().unwrap();
        assert!(err[0].starts_with("`watchers.ft.metadata.team`"), "{err:?}");
    }
}
