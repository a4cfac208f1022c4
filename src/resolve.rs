//! Turns the SPECs of the command line and the config (models, judges,
//! templates, benchmarks) into the parts an evaluation runs with.
//!
//! Model SPECs: `openai:MODEL` (the endpoint of `--api-base`, else
//! `$OPENAI_BASE_URL`, else OpenAI; key `$OPENAI_API_KEY`), `NAME` for a
//! `[models.NAME]` entry or a `[backends.NAME]` entry with a `model` key, and
//! `NAME:MODEL` for a model on the `[backends.NAME]` endpoint. Models on one
//! endpoint share one client, so its concurrency limit holds across them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use safedrift_judges::classifier::{ClassifierOptions, EncoderOptions};
use safedrift_judges::{
    Classifier, ClassifierJudge, Judge, KeywordJudge, LlamaGuardJudge, RubricJudge,
};

use crate::backend::onnx::{decode::RepetitionGuard, Device, OnnxBackend, OnnxOptions};
use crate::backend::openai::{EndpointConfig, OpenAiClient, OpenAiModel};
use crate::backend::Backend;
use crate::benchmark::{self, Benchmark};
use crate::config::{
    read_secret, BackendConfig, ClassifierJudgeConfig, Config, JudgeConfig, ModelJudgeConfig,
    OnnxBackendConfig, OpenAiBackendConfig,
};
use crate::http::RetryPolicy;
use crate::pipeline::AuditPlan;
use crate::store::Template;

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

/// The configured watcher that covers a registry SPEC's model: for
/// `hf:OWNER/NAME[@REV]` a `huggingface` watcher listing the repo in
/// `models` or watching its `author`; for `mlflow:NAME/VERSION` an `mlflow`
/// watcher listing NAME in `models` or searching with a `filter`.
pub fn covering_watcher<'c>(
    config: &'c Config,
    kind: &str,
    rest: &str,
) -> Option<(&'c str, &'c crate::config::WatcherConfig)> {
    let lists = |w: &crate::config::WatcherConfig, name: &str| {
        w.rest
            .get("models")
            .and_then(|m| m.as_array())
            .is_some_and(|m| m.iter().any(|v| v.as_str() == Some(name)))
    };
    let found = config.watchers.iter().find(|(_, w)| match kind {
        "hf" => {
            let repo = rest.split_once('@').map_or(rest, |(repo, _)| repo);
            let owner = repo.split('/').next().unwrap_or_default();
            w.kind == crate::config::WatcherKind::Huggingface
                && (lists(w, repo) || w.rest.get("author").and_then(|a| a.as_str()) == Some(owner))
        }
        "mlflow" => {
            let name = rest.rsplit_once('/').map_or(rest, |(name, _)| name);
            w.kind == crate::config::WatcherKind::Mlflow
                && (lists(w, name) || w.rest.contains_key("filter"))
        }
        _ => false,
    });
    found.map(|(name, w)| (name.as_str(), w))
}

/// A bad SPEC or config (exit 2).
fn invalid(message: String) -> ResolveError {
    ResolveError {
        message,
        registry: false,
    }
}

/// A model ready to be asked.
pub struct ResolvedModel {
    pub spec: String,
    pub backend: Arc<dyn Backend>,
    /// The template its config entry names, if any.
    pub template: Option<String>,
}

/// Resolution context: the config plus command-line overrides.
pub struct Resolver {
    pub config: Config,
    pub api_base: Option<String>,
    pub judge_api_base: Option<String>,
    /// Default concurrency for endpoints that configure none.
    pub concurrency: usize,
    clients: Mutex<HashMap<String, Arc<OpenAiClient>>>,
    local: Mutex<HashMap<String, Arc<dyn Backend>>>,
    classifiers: Mutex<HashMap<String, Arc<dyn Judge>>>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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

    fn backend_endpoint(
        &self,
        name: &str,
        o: &OpenAiBackendConfig,
    ) -> Result<Arc<OpenAiClient>, ResolveError> {
        let concurrency = self.concurrency;
        self.client(format!("backend {name}"), || {
            let api_key = read_secret(o.api_key_env.as_deref(), o.api_key_file.as_deref())
                .map_err(|e| invalid(format!("`backends.{name}`: {e}")))?;
            let retry = RetryPolicy {
                max_retries: o.max_retries.unwrap_or(RetryPolicy::default().max_retries),
                ..RetryPolicy::default()
            };
            Ok(EndpointConfig {
                base_urls: o.base_url.iter().chain(&o.base_urls).cloned().collect(),
                api_key,
                max_concurrency: o.max_concurrency.unwrap_or(concurrency),
                requests_per_minute: o.requests_per_minute,
                tokens_per_minute: o.tokens_per_minute,
                timeout: o.timeout.unwrap_or(Duration::from_secs(120)),
                retry,
                max_tokens_field: o
                    .max_tokens_field
                    .clone()
                    .unwrap_or_else(|| "max_tokens".into()),
            })
        })
    }

    fn openai_model(&self, client: Arc<OpenAiClient>, model: &str) -> Arc<OpenAiModel> {
        Arc::new(OpenAiModel {
            client,
            model: model.to_string(),
        })
    }

    /// Loads a local model once per resolver (an eval run), unless `fresh`.
    fn onnx_model(
        &self,
        dir: &Path,
        config: Option<&OnnxBackendConfig>,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        let key = dir.display().to_string();
        if let Some(b) = self.local.lock().unwrap().get(&key) {
            return Ok(b.clone());
        }
        let backend = self.load_onnx(dir, config)?;
        self.local.lock().unwrap().insert(key, backend.clone());
        Ok(backend)
    }

    fn load_onnx(
        &self,
        dir: &Path,
        config: Option<&OnnxBackendConfig>,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        let mut options = OnnxOptions::default();
        if let Some(c) = config {
            options.device = if c.device == "cuda" {
                Device::Cuda
            } else {
                Device::Cpu
            };
            options.cpu_fallback = c.cpu_fallback;
            options.ort_dylib = c.ort_dylib.clone();
            options.max_batch = c.max_batch.unwrap_or(options.max_batch);
            options.kv_cache_mb = c.kv_cache_mb.unwrap_or(options.kv_cache_mb);
            options.threads = c.threads.unwrap_or(options.threads);
            options.max_new_tokens = c.max_new_tokens.map(|n| n as usize);
            let d = RepetitionGuard::default();
            options.guard = RepetitionGuard {
                window: c.repetition_window.unwrap_or(d.window),
                max_period: c.repetition_max_period.unwrap_or(d.max_period),
            };
        }
        Ok(Arc::new(
            OnnxBackend::load(dir, options).map_err(|e| invalid(e.message))?,
        ))
    }

    /// Resolves what a watcher found: a local directory (run with the
    /// `[backends.NAME]` ONNX settings named by `backend`, if any), a model
    /// behind an OpenAI-compatible endpoint, or a SPEC.
    pub fn target(
        &self,
        target: &safedrift_watchers::Target,
        backend: Option<&str>,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        use safedrift_watchers::Target;
        match target {
            Target::Onnx { dir } => {
                let onnx = backend.and_then(|b| match self.config.backends.get(b) {
                    Some(BackendConfig::Onnx(o)) => Some(o),
                    _ => None,
                });
                // Loaded afresh each time: a checkpoint folder rewritten in
                // place is a new model, and the daemon frees each model (its
                // session and thread) when its evaluation ends.
                self.load_onnx(dir, onnx)
            }
            Target::OpenAi {
                base_url,
                model,
                api_key_env,
                api_key_file,
            } => {
                check_base_url(base_url)?;
                let concurrency = self.concurrency;
                let client = self.client(
                    format!("target {base_url} {api_key_env:?} {api_key_file:?}"),
                    || {
                        let api_key = read_secret(api_key_env.as_deref(), api_key_file.as_deref())
                            .map_err(invalid)?;
                        Ok(EndpointConfig {
                            base_urls: vec![base_url.clone()],
                            api_key,
                            max_concurrency: concurrency,
                            ..EndpointConfig::default()
                        })
                    },
                )?;
                Ok(self.openai_model(client, model))
            }
            Target::Spec(spec) => Ok(self.model(spec)?.backend),
        }
    }

    /// The only `[backends.*]` entry of kind onnx, whose settings `onnx:`,
    /// `hf:` and `mlflow:` models use.
    fn only_onnx_backend(&self) -> Option<&OnnxBackendConfig> {
        let mut onnx = self.config.backends.values().filter_map(|b| match b {
            BackendConfig::Onnx(o) => Some(o),
            _ => None,
        });
        match (onnx.next(), onnx.next()) {
            (Some(o), None) => Some(o),
            _ => None,
        }
    }

    /// Downloads `hf:OWNER/NAME[@REV]` (REV: a commit sha; default the
    /// current head) or `mlflow:NAME/VERSION` (from the tracking server of
    /// the config's mlflow watcher, else `$MLFLOW_TRACKING_URI`) into the
    /// download cache, through the same watcher code the daemon uses.
    fn fetch_from_registry(
        &self,
        kind: &str,
        rest: &str,
        spec: &str,
    ) -> Result<std::path::PathBuf, ResolveError> {
        use safedrift_watchers::{
            huggingface::HuggingfaceWatcher, mlflow::MlflowWatcher, Cache, Checkpoint, Target,
            Watcher,
        };
        let fail = |message: String| ResolveError {
            message: format!("model {spec:?}: {message}"),
            registry: true,
        };
        let mut table = toml::Table::new();
        let (watcher, checkpoint): (Box<dyn Watcher>, Option<Checkpoint>) = if kind == "hf" {
            let (repo, rev) = match rest.split_once('@') {
                Some((repo, rev)) => (repo, Some(rev)),
                None => (rest, None),
            };
            if repo.split('/').count() != 2 || repo.contains("..") {
                return Err(invalid(format!(
                    "model {spec:?}: expected hf:OWNER/NAME[@REVISION]"
                )));
            }
            if let Some((_, w)) = covering_watcher(&self.config, kind, rest) {
                // The watcher's Hub, token and file selection.
                for key in [
                    "endpoint",
                    "token_env",
                    "token_file",
                    "subfolder",
                    "allow",
                    "timeout",
                ] {
                    if let Some(v) = w.rest.get(key) {
                        table.insert(key.into(), v.clone());
                    }
                }
            } else {
                if let Some(endpoint) = env_nonempty("HF_ENDPOINT") {
                    table.insert("endpoint".into(), endpoint.into());
                }
                if env_nonempty("HF_TOKEN").is_some() {
                    table.insert("token_env".into(), "HF_TOKEN".into());
                }
            }
            table.insert("models".into(), toml::Value::Array(vec![repo.into()]));
            let w =
                HuggingfaceWatcher::from_config("hf", &table).map_err(|p| invalid(p.join("; ")))?;
            let cp = rev.map(|rev| Checkpoint {
                watcher: "hf".into(),
                model: repo.into(),
                revision: rev.into(),
                baseline: None,
                detail: serde_json::Value::Null,
            });
            (Box::new(w), cp)
        } else {
            let Some((name, version)) = rest.rsplit_once('/') else {
                return Err(invalid(format!(
                    "model {spec:?}: expected mlflow:NAME/VERSION"
                )));
            };
            // The watcher covering the model, else the first mlflow watcher.
            let watcher = covering_watcher(&self.config, kind, rest)
                .map(|(_, w)| w)
                .or_else(|| {
                    self.config
                        .watchers
                        .values()
                        .find(|w| w.kind == crate::config::WatcherKind::Mlflow)
                });
            for key in ["token_env", "token_file", "timeout"] {
                if let Some(v) = watcher.and_then(|w| w.rest.get(key)) {
                    table.insert(key.into(), v.clone());
                }
            }
            let uri = watcher
                .and_then(|w| w.rest.get("tracking_uri"))
                .and_then(|v| v.as_str().map(str::to_string))
                .or_else(|| env_nonempty("MLFLOW_TRACKING_URI"))
                .ok_or_else(|| invalid(format!("model {spec:?}: no MLflow server: configure an mlflow watcher or set $MLFLOW_TRACKING_URI")))?;
            table.insert("tracking_uri".into(), uri.into());
            table.insert("models".into(), toml::Value::Array(vec![name.into()]));
            let w =
                MlflowWatcher::from_config("mlflow", &table).map_err(|p| invalid(p.join("; ")))?;
            let cp = Checkpoint {
                watcher: "mlflow".into(),
                model: name.into(),
                revision: version.into(),
                baseline: None,
                detail: serde_json::Value::Null,
            };
            (Box::new(w), Some(cp))
        };
        let cache_dir = self
            .config
            .cache
            .path
            .clone()
            .unwrap_or_else(|| self.config.data_dir.join("cache"));
        let cache =
            Cache::new(cache_dir, self.config.cache.max_bytes()).map_err(|e| fail(e.message))?;
        let fetch = async {
            let cp = match checkpoint {
                Some(cp) => cp,
                None => watcher.poll().await?.into_iter().next().ok_or_else(|| {
                    safedrift_watchers::WatchError::new(
                        "not_found",
                        "the repository has no ONNX export",
                    )
                })?,
            };
            watcher.fetch(&cp, &cache).await
        };
        // Resolution is synchronous; the download runs on this runtime
        // thread, which the multi-threaded runtime allows to block.
        let target = match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(fetch)),
            Err(_) => tokio::runtime::Runtime::new()
                .map_err(|e| fail(e.to_string()))?
                .block_on(fetch),
        }
        .map_err(|e| fail(e.message))?;
        match target {
            Target::Onnx { dir } => Ok(dir),
            other => Err(fail(format!(
                "the registry gave {other:?}, not a model directory"
            ))),
        }
    }

    /// Resolves a model SPEC.
    pub fn model(&self, spec: &str) -> Result<ResolvedModel, ResolveError> {
        let spec = spec.trim();
        let resolved = |backend: Arc<dyn Backend>, template: Option<String>| ResolvedModel {
            spec: spec.to_string(),
            backend,
            template,
        };
        if let Some(m) = self.config.models.get(spec) {
            let model = m.model.as_deref();
            return match self.config.backends.get(&m.backend) {
                Some(BackendConfig::Openai(o)) => {
                    let model = model.or(o.model.as_deref()).ok_or_else(|| {
                        invalid(format!(
                            "`models.{spec}`: set `model` (the name the endpoint serves)"
                        ))
                    })?;
                    let client = self.backend_endpoint(&m.backend, o)?;
                    Ok(resolved(
                        self.openai_model(client, model),
                        m.template.clone().or(o.template.clone()),
                    ))
                }
                Some(BackendConfig::Onnx(o)) => {
                    let dir = model
                        .map(std::path::PathBuf::from)
                        .or(o.path.clone())
                        .ok_or_else(|| {
                            invalid(format!(
                                "`models.{spec}`: set `model` to the model directory"
                            ))
                        })?;
                    Ok(resolved(
                        self.onnx_model(&dir, Some(o))?,
                        m.template.clone().or(o.template.clone()),
                    ))
                }
                None => Err(invalid(format!(
                    "`models.{spec}.backend`: no backend named {:?}",
                    m.backend
                ))),
            };
        }
        if let Some(b) = self.config.backends.get(spec) {
            return match b {
                BackendConfig::Openai(o) => {
                    let model = o.model.as_deref().ok_or_else(|| {
                        invalid(format!(
                            "model {spec:?}: `backends.{spec}` has no `model`; use {spec}:MODEL"
                        ))
                    })?;
                    let client = self.backend_endpoint(spec, o)?;
                    Ok(resolved(
                        self.openai_model(client, model),
                        o.template.clone(),
                    ))
                }
                BackendConfig::Onnx(o) => {
                    let dir = o.path.as_ref().ok_or_else(|| {
                        invalid(format!(
                            "model {spec:?}: `backends.{spec}` has no `path`; use {spec}:DIR"
                        ))
                    })?;
                    Ok(resolved(self.onnx_model(dir, Some(o))?, o.template.clone()))
                }
            };
        }
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| invalid(format!("model {spec:?}: expected openai:MODEL, onnx:DIR, hf:OWNER/NAME, mlflow:NAME/VERSION or a configured name")))?;
        if rest.trim().is_empty() {
            return Err(invalid(format!(
                "model {spec:?}: the model name after `{kind}:` is empty"
            )));
        }
        match kind {
            "openai" => {
                let client = self.cli_endpoint(self.api_base.as_deref(), &["OPENAI_API_KEY"])?;
                Ok(resolved(self.openai_model(client, rest), None))
            }
            "onnx" => {
                let only = self.only_onnx_backend();
                Ok(resolved(self.onnx_model(Path::new(rest), only)?, only.and_then(|o| o.template.clone())))
            }
            "hf" | "mlflow" => {
                let dir = self.fetch_from_registry(kind, rest.trim(), spec)?;
                let only = self.only_onnx_backend();
                Ok(resolved(self.onnx_model(&dir, only)?, only.and_then(|o| o.template.clone())))
            }
            name => match self.config.backends.get(name) {
                Some(BackendConfig::Openai(o)) => {
                    let client = self.backend_endpoint(name, o)?;
                    Ok(resolved(self.openai_model(client, rest), o.template.clone()))
                }
                Some(BackendConfig::Onnx(o)) => Ok(resolved(self.onnx_model(Path::new(rest), Some(o))?, o.template.clone())),
                _ => Err(invalid(format!(
                    "model {spec:?}: unknown kind `{kind}` (expected openai, onnx, hf, mlflow or a configured backend)"
                ))),
            },
        }
    }

    fn judge_client(
        &self,
        name: &str,
        m: &ModelJudgeConfig,
    ) -> Result<Arc<OpenAiClient>, ResolveError> {
        let base = m
            .base_url
            .clone()
            .or_else(|| self.judge_api_base.clone())
            .or_else(|| env_nonempty("OPENAI_BASE_URL"))
            .unwrap_or_else(|| OPENAI_DEFAULT_BASE.to_string());
        let concurrency = self.concurrency;
        self.client(format!("judge {name}"), || {
            let api_key = match read_secret(m.api_key_env.as_deref(), m.api_key_file.as_deref())
                .map_err(|e| invalid(format!("`judges.{name}`: {e}")))?
            {
                Some(k) => Some(k),
                None => env_nonempty("JUDGE_API_KEY").or_else(|| env_nonempty("OPENAI_API_KEY")),
            };
            Ok(EndpointConfig {
                base_urls: vec![base.clone()],
                api_key,
                max_concurrency: m.max_concurrency.unwrap_or(concurrency),
                requests_per_minute: m.requests_per_minute,
                tokens_per_minute: m.tokens_per_minute,
                ..EndpointConfig::default()
            })
        })
    }

    /// Resolves a judge SPEC: `keyword`, `rubric:MODEL`, `llama-guard:MODEL`,
    /// `classifier:DIR` or a `[judges.NAME]` entry.
    pub fn judge(&self, spec: &str) -> Result<Arc<dyn Judge>, ResolveError> {
        let spec = spec.trim();
        if let Some(j) = self.config.judges.get(spec) {
            return match j {
                JudgeConfig::Keyword(_) => Ok(Arc::new(KeywordJudge)),
                JudgeConfig::Rubric(m) => {
                    let chat = self.openai_model(self.judge_client(spec, m)?, &m.model);
                    Ok(Arc::new(RubricJudge::new(m.model.clone(), chat)))
                }
                JudgeConfig::LlamaGuard(m) => {
                    let chat = self.openai_model(self.judge_client(spec, m)?, &m.model);
                    Ok(Arc::new(LlamaGuardJudge::new(m.model.clone(), chat)))
                }
                JudgeConfig::Classifier(c) => self.classifier(spec, c),
            };
        }
        if spec == "keyword" {
            return Ok(Arc::new(KeywordJudge));
        }
        let (kind, model) = spec.split_once(':').ok_or_else(|| {
            invalid(format!(
                "judge {spec:?}: expected keyword, rubric:MODEL, llama-guard:MODEL, classifier:DIR or a configured name"
            ))
        })?;
        if model.trim().is_empty() {
            return Err(invalid(format!(
                "judge {spec:?}: the model after `{kind}:` is empty"
            )));
        }
        let cli = || {
            self.cli_endpoint(
                self.judge_api_base.as_deref(),
                &["JUDGE_API_KEY", "OPENAI_API_KEY"],
            )
        };
        match kind {
            "rubric" => Ok(Arc::new(RubricJudge::new(model, self.openai_model(cli()?, model)))),
            "llama-guard" => Ok(Arc::new(LlamaGuardJudge::new(model, self.openai_model(cli()?, model)))),
            "classifier" => self.classifier(
                spec,
                &ClassifierJudgeConfig {
                    path: model.into(),
                    teacher: None,
                    audit_fraction: 0.0,
                    unsure_below: 0.0,
                    min_agreement: 0.0,
                    batch_size: 32,
                    threads: None,
                    ort_dylib: None,
                },
            ),
            _ => Err(invalid(format!(
                "judge {spec:?}: unknown kind `{kind}` (expected keyword, rubric, llama-guard or classifier)"
            ))),
        }
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

    /// Loads a benchmark SPEC or a `[benchmarks.NAME]` entry.
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

fn check_base_url(base: &str) -> Result<(), ResolveError> {
    match url::Url::parse(base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(invalid(format!("API base {base:?} is not an http(s) URL"))),
    }
}

impl Resolver {
    /// Loads a classifier judge once per resolver. ONNX Runtime is set up
    /// (and its library discovered) before the judge is loaded.
    fn classifier(
        &self,
        spec: &str,
        c: &ClassifierJudgeConfig,
    ) -> Result<Arc<dyn Judge>, ResolveError> {
        let key = classifier_key(c);
        if let Some(j) = self.classifiers.lock().unwrap().get(&key) {
            return Ok(j.clone());
        }
        let env = crate::backend::onnx::runtime::environment(c.ort_dylib.as_deref())
            .map_err(|e| invalid(format!("judge {spec:?}: {e}")))?;
        let mut encoder = EncoderOptions {
            batch_size: c.batch_size.max(1),
            ..EncoderOptions::default()
        };
        if let Some(t) = c.threads {
            encoder.threads = t.max(1);
        }
        let classifier = Classifier::load(&env, &c.path, &ClassifierOptions { encoder })
            .map_err(|e| invalid(format!("judge {spec:?}: {e}")))?;
        let judge: Arc<dyn Judge> = Arc::new(ClassifierJudge::new(classifier, c.batch_size));
        self.classifiers.lock().unwrap().insert(key, judge.clone());
        Ok(judge)
    }

    /// The audit of a judge SPEC: a `[judges.NAME]` classifier entry with a
    /// `teacher`. `None` for every other judge.
    pub fn audit(&self, judge_spec: &str) -> Result<Option<AuditPlan>, ResolveError> {
        let Some(JudgeConfig::Classifier(c)) = self.config.judges.get(judge_spec.trim()) else {
            return Ok(None);
        };
        let Some(teacher_spec) = c.teacher.as_deref() else {
            return Ok(None);
        };
        let teacher = self
            .judge(teacher_spec)
            .map_err(|e| invalid(format!("`judges.{}.teacher`: {e}", judge_spec.trim())))?;
        Ok(Some(AuditPlan {
            teacher,
            teacher_spec: teacher_spec.to_string(),
            fraction: c.audit_fraction,
            unsure_below: c.unsure_below,
            min_agreement: c.min_agreement,
        }))
    }
}

/// What a loaded classifier judge is shared under: everything that changes
/// its answers. Its options (batch size and threads change the padding and
/// the arithmetic order), the runtime library, and its directory's files as
/// they are now (name, size, modification time), so a judge retrained into
/// the same directory is loaded afresh.
fn classifier_key(c: &ClassifierJudgeConfig) -> String {
    let dir = std::fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Some(format!(
                "{}:{}:{modified}",
                e.file_name().to_string_lossy(),
                meta.len()
            ))
        })
        .collect();
    files.sort();
    serde_json::json!({
        "dir": dir,
        "files": files,
        "batch_size": c.batch_size,
        "threads": c.threads,
        "ort_dylib": c.ort_dylib,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_is_shared_only_while_nothing_that_changes_its_answers_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"one").unwrap();
        let config = |batch_size: usize, threads: Option<usize>| ClassifierJudgeConfig {
            path: dir.path().to_path_buf(),
            teacher: None,
            audit_fraction: 0.1,
            unsure_below: 0.6,
            min_agreement: 0.8,
            batch_size,
            threads,
            ort_dylib: None,
        };
        let key = classifier_key(&config(16, None));
        assert_eq!(key, classifier_key(&config(16, None)));
        assert_ne!(key, classifier_key(&config(8, None)));
        assert_ne!(key, classifier_key(&config(16, Some(1))));
        // Retrained into the same directory.
        std::fs::write(dir.path().join("model.onnx"), b"two, longer").unwrap();
        assert_ne!(key, classifier_key(&config(16, None)));
    }
}
