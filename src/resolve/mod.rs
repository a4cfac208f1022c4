//! Turns the SPECs of the command line and the config (models, judges,
//! templates, benchmarks) into the parts an evaluation runs with.
//!
//! Model SPECs: `openai:MODEL` (the endpoint of `--api-base`, else
//! `$OPENAI_BASE_URL`, else OpenAI; key `$OPENAI_API_KEY`), `NAME` for a
//! `[models.NAME]` entry or a `[backends.NAME]` entry with a `model` key, and
//! `NAME:MODEL` for a model on the `[backends.NAME]` endpoint. Models on one
//! endpoint share one client, so its concurrency limit holds across them.
//!
//! The parts: [`models`] (model SPECs, backends and watcher targets),
//! [`judges`] (judge SPECs, the classifier cache, the teacher audit) and
//! [`registry`] (`hf:` and `mlflow:` models, downloaded through the
//! configured watcher). One resolver serves many evaluations: the daemon
//! owns one (rebuilt on SIGHUP) and shares it with the API, so endpoint
//! clients, local models and classifier judges are set up once.

mod judges;
mod lora;
mod models;
mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use safedrift_judges::Judge;

use crate::backend::openai::{EndpointConfig, OpenAiClient, OpenAiModel};
use crate::backend::Backend;
use crate::benchmark::{self, Benchmark};
use crate::config::Config;
use crate::store::Template;

pub use models::ResolvedModel;
pub use registry::covering_watcher;

pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

/// A SPEC that cannot be used; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub message: String,
    /// A registry could not deliver the model (exit 3), rather than a bad
    /// SPEC or config (exit 2).
    pub registry: bool,
}

impl ResolveError {
    /// What an API client is told: no path, file content or server detail
    /// (the command line, run on the host, shows those).
    pub fn public_message(&self) -> &'static str {
        if self.registry {
            "the registry could not deliver it"
        } else {
            "cannot be loaded (`safedrift eval` on the host shows why)"
        }
    }
}

/// A bad SPEC or config (exit 2).
fn invalid(message: String) -> ResolveError {
    ResolveError {
        message,
        registry: false,
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn check_base_url(base: &str) -> Result<(), ResolveError> {
    match url::Url::parse(base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(invalid(format!("API base {base:?} is not an http(s) URL"))),
    }
}

/// Resolution context: the config plus command-line overrides, and what is
/// shared between the evaluations resolved through it.
pub struct Resolver {
    pub config: Config,
    pub api_base: Option<String>,
    pub judge_api_base: Option<String>,
    /// Default concurrency for endpoints that configure none.
    pub concurrency: usize,
    /// One client per endpoint.
    clients: Mutex<HashMap<String, Arc<OpenAiClient>>>,
    /// Local models by directory, while an evaluation uses them.
    local: Mutex<HashMap<String, Weak<dyn Backend>>>,
    /// Classifier judges by everything that changes their answers.
    classifiers: Mutex<HashMap<String, Arc<dyn Judge>>>,
}

impl Resolver {
    pub fn new(
        config: Config,
        api_base: Option<String>,
        judge_api_base: Option<String>,
        concurrency: usize,
    ) -> Resolver {
        Resolver {
            config,
            api_base,
            judge_api_base,
            concurrency: concurrency.max(1),
            clients: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            classifiers: Mutex::new(HashMap::new()),
        }
    }

    /// One shared client per endpoint (identified by `key`).
    fn client(
        &self,
        key: String,
        make: impl FnOnce() -> Result<EndpointConfig, ResolveError>,
    ) -> Result<Arc<OpenAiClient>, ResolveError> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = Arc::new(OpenAiClient::new(make()?).map_err(|e| invalid(e.message))?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The endpoint a command-line SPEC names: `base`, else
    /// `$OPENAI_BASE_URL`, else OpenAI; the key from the first of
    /// `key_vars` that is set.
    fn cli_endpoint(
        &self,
        base: Option<&str>,
        key_vars: &[&str],
    ) -> Result<Arc<OpenAiClient>, ResolveError> {
        let base = base
            .map(str::to_string)
            .or_else(|| env_nonempty("OPENAI_BASE_URL"))
            .unwrap_or_else(|| OPENAI_DEFAULT_BASE.to_string());
        check_base_url(&base)?;
        let key_var = key_vars.iter().find(|v| env_nonempty(v).is_some()).copied();
        let concurrency = self.concurrency;
        self.client(format!("cli {base} {key_var:?}"), || {
            Ok(EndpointConfig {
                base_urls: vec![base.clone()],
                api_key: key_var.and_then(env_nonempty),
                max_concurrency: concurrency,
                ..EndpointConfig::default()
            })
        })
    }

    fn openai_model(&self, client: Arc<OpenAiClient>, model: &str) -> Arc<OpenAiModel> {
        Arc::new(OpenAiModel {
            client,
            model: model.to_string(),
        })
    }

    /// Resolves a template name: `default` (the prompt alone) or a `[templates.NAME]` entry.
    pub fn template(&self, name: &str) -> Result<Template, ResolveError> {
        if let Some(t) = self.config.templates.get(name) {
            return Ok(Template {
                name: name.to_string(),
                system: t.system.clone(),
                user_prefix: t.user_prefix.clone(),
                user_suffix: t.user_suffix.clone(),
            });
        }
        if name == "default" {
            return Ok(Template::default_template());
        }
        Err(invalid(format!(
            "template {name:?}: no [templates.{name}] in the config (built in: default)"
        )))
    }

    /// Loads a benchmark SPEC or a `[benchmarks.NAME]` entry, either
    /// followed by attack modifiers (`builtin:probes+prefill:10`): the
    /// plain benchmark, then one attacked variant per modifier (the
    /// entry's `modifiers`, then the SPEC's).
    pub fn benchmarks(&self, spec: &str) -> Result<Vec<Benchmark>, benchmark::BenchmarkError> {
        let (base, mut modifiers) = benchmark::attacks::split_spec(spec).map_err(|reason| {
            benchmark::BenchmarkError::BadSpec {
                spec: spec.to_string(),
                reason,
            }
        })?;
        if let Some(b) = self.config.benchmarks.get(base) {
            let configured: Result<Vec<_>, String> = b
                .modifiers
                .iter()
                .map(|m| benchmark::Modifier::parse(m))
                .collect();
            let configured = configured.map_err(|reason| benchmark::BenchmarkError::BadSpec {
                spec: base.to_string(),
                reason,
            })?;
            modifiers.splice(0..0, configured);
        }
        benchmark::attacks::with_variants(self.benchmark(base)?, &modifiers)
    }

    /// Loads a benchmark SPEC or a `[benchmarks.NAME]` entry, plain (its
    /// modifiers, if any, left out).
    pub fn benchmark(&self, spec: &str) -> Result<Benchmark, benchmark::BenchmarkError> {
        if let Some(b) = self.config.benchmarks.get(spec) {
            let mut bench = if b.kind == "builtin" {
                benchmark::load_spec(&format!("builtin:{}", b.path.display()), b.benign)?
            } else {
                benchmark::load(&b.kind, &b.path, b.benign)?
            };
            bench.spec = spec.to_string();
            return Ok(bench);
        }
        benchmark::load_spec(spec, false)
    }
}
