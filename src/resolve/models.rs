//! Model SPECs and what watchers find: `[models.NAME]` and
//! `[backends.NAME]` entries, `openai:MODEL`, `onnx:DIR`, `NAME:MODEL` on a
//! configured backend, and the registry SPECs `hf:` and `mlflow:`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{check_base_url, invalid, ResolveError, Resolver};
use crate::backend::onnx::{decode::RepetitionGuard, Device, OnnxBackend, OnnxOptions};
use crate::backend::openai::{EndpointConfig, OpenAiClient};
use crate::backend::Backend;
use crate::config::{read_secret, BackendConfig, OnnxBackendConfig, OpenAiBackendConfig};
use crate::http::RetryPolicy;

/// A model ready to be asked.
pub struct ResolvedModel {
    pub spec: String,
    pub backend: Arc<dyn Backend>,
    /// The template its config entry names, if any.
    pub template: Option<String>,
}

impl ResolvedModel {
    fn new(spec: &str, backend: Arc<dyn Backend>, template: Option<String>) -> ResolvedModel {
        ResolvedModel {
            spec: spec.to_string(),
            backend,
            template,
        }
    }
}

impl Resolver {
    /// Resolves a model SPEC. Only the registry SPECs (`hf:`, `mlflow:`)
    /// wait on anything: their download.
    pub async fn model(&self, spec: &str) -> Result<ResolvedModel, ResolveError> {
        let spec = spec.trim();
        if let Some(m) = self.configured_model(spec)? {
            return Ok(m);
        }
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| invalid(format!("model {spec:?}: expected openai:MODEL, onnx:DIR, hf:OWNER/NAME, mlflow:NAME/VERSION or a configured name")))?;
        if rest.trim().is_empty() {
            return Err(invalid(format!(
                "model {spec:?}: the model name after `{kind}:` is empty"
            )));
        }
        if let Some(BackendConfig::Launch(l)) = self.config.backends.get(kind) {
            let backend = self.launch(kind, l, Path::new(rest.trim())).await?;
            return Ok(ResolvedModel::new(spec, backend, l.template.clone()));
        }
        if matches!(kind, "hf" | "mlflow") {
            let dir = self.fetch_from_registry(kind, rest.trim(), spec).await?;
            let only = self.only_onnx_backend();
            return Ok(ResolvedModel::new(
                spec,
                self.onnx_model(&dir, only)?,
                only.and_then(|o| o.template.clone()),
            ));
        }
        self.kind_model(spec, kind, rest)
    }

    /// A SPEC that names a `[models.NAME]` entry or a `[backends.NAME]`
    /// entry; `None` for any other SPEC.
    fn configured_model(&self, spec: &str) -> Result<Option<ResolvedModel>, ResolveError> {
        let resolved = |backend: Arc<dyn Backend>, template: Option<String>| {
            Ok(Some(ResolvedModel::new(spec, backend, template)))
        };
        if let Some(m) = self.config.models.get(spec) {
            let model = m.model.as_deref();
            return match self.config.backends.get(&m.backend) {
                Some(BackendConfig::Openai(o) | BackendConfig::Vllm(o)) => {
                    let model = model.or(o.model.as_deref()).ok_or_else(|| {
                        invalid(format!(
                            "`models.{spec}`: set `model` (the name the endpoint serves)"
                        ))
                    })?;
                    let client = self.backend_endpoint(&m.backend, o)?;
                    resolved(
                        self.openai_model(client, model),
                        m.template.clone().or(o.template.clone()),
                    )
                }
                Some(BackendConfig::Onnx(o)) => {
                    let dir = model.map(PathBuf::from).or(o.path.clone()).ok_or_else(|| {
                        invalid(format!(
                            "`models.{spec}`: set `model` to the model directory"
                        ))
                    })?;
                    resolved(
                        self.onnx_model(&dir, Some(o))?,
                        m.template.clone().or(o.template.clone()),
                    )
                }
                Some(BackendConfig::Launch(_)) => Err(invalid(format!(
                    "`models.{spec}.backend`: {:?} launches a server per checkpoint; name the checkpoint as {}:DIR",
                    m.backend, m.backend
                ))),
                None => Err(invalid(format!(
                    "`models.{spec}.backend`: no backend named {:?}",
                    m.backend
                ))),
            };
        }
        match self.config.backends.get(spec) {
            Some(BackendConfig::Openai(o) | BackendConfig::Vllm(o)) => {
                let model = o.model.as_deref().ok_or_else(|| {
                    invalid(format!(
                        "model {spec:?}: `backends.{spec}` has no `model`; use {spec}:MODEL"
                    ))
                })?;
                let client = self.backend_endpoint(spec, o)?;
                resolved(self.openai_model(client, model), o.template.clone())
            }
            Some(BackendConfig::Onnx(o)) => {
                let dir = o.path.as_ref().ok_or_else(|| {
                    invalid(format!(
                        "model {spec:?}: `backends.{spec}` has no `path`; use {spec}:DIR"
                    ))
                })?;
                resolved(self.onnx_model(dir, Some(o))?, o.template.clone())
            }
            Some(BackendConfig::Launch(_)) => Err(invalid(format!(
                "model {spec:?}: `backends.{spec}` launches a server per checkpoint; use {spec}:DIR"
            ))),
            None => Ok(None),
        }
    }

    /// `KIND:REST` for every kind but the registries': `openai:MODEL`,
    /// `onnx:DIR`, or `NAME:MODEL` on a configured backend.
    fn kind_model(
        &self,
        spec: &str,
        kind: &str,
        rest: &str,
    ) -> Result<ResolvedModel, ResolveError> {
        let resolved = |backend: Arc<dyn Backend>, template: Option<String>| {
            Ok(ResolvedModel::new(spec, backend, template))
        };
        match kind {
            "openai" => {
                let client = self.cli_endpoint(self.api_base.as_deref(), &["OPENAI_API_KEY"])?;
                resolved(self.openai_model(client, rest), None)
            }
            "onnx" => {
                let only = self.only_onnx_backend();
                resolved(self.onnx_model(Path::new(rest), only)?, only.and_then(|o| o.template.clone()))
            }
            name => match self.config.backends.get(name) {
                Some(BackendConfig::Openai(o) | BackendConfig::Vllm(o)) => {
                    let client = self.backend_endpoint(name, o)?;
                    resolved(self.openai_model(client, rest), o.template.clone())
                }
                Some(BackendConfig::Onnx(o)) => resolved(self.onnx_model(Path::new(rest), Some(o))?, o.template.clone()),
                _ => Err(invalid(format!(
                    "model {spec:?}: unknown kind `{kind}` (expected openai, onnx, hf, mlflow or a configured backend)"
                ))),
            },
        }
    }

    /// Resolves what a watcher found: a local directory (run with the
    /// `[backends.NAME]` ONNX settings named by `backend`, if any), a model
    /// behind an OpenAI-compatible endpoint, or a SPEC.
    pub async fn target(
        &self,
        target: &safedrift_watchers::Target,
        backend: Option<&str>,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        use safedrift_watchers::Target;
        match target {
            Target::Onnx { dir } => {
                if let Some((name, BackendConfig::Launch(l))) =
                    backend.and_then(|b| self.config.backends.get_key_value(b))
                {
                    return self.launch(name, l, dir).await;
                }
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
            Target::Spec(spec) => Ok(self.model(spec).await?.backend),
        }
    }

    /// The client of a `[backends.NAME]` OpenAI-compatible endpoint.
    pub(super) fn backend_endpoint(
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
                continue_final_message: o.continue_final_message.unwrap_or(matches!(
                    self.config.backends.get(name),
                    Some(BackendConfig::Vllm(_))
                )),
            })
        })
    }

    /// Loads a local model, shared by the evaluations that use it at the
    /// same time. Only weak references are kept: once the last evaluation
    /// using it ends, its session and buffers are freed (a checkpoint's
    /// weights are gigabytes; an idle daemon holds none).
    fn onnx_model(
        &self,
        dir: &Path,
        config: Option<&OnnxBackendConfig>,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        let key = dir.display().to_string();
        let mut local = self.local.lock().unwrap();
        local.retain(|_, b| b.strong_count() > 0);
        if let Some(b) = local.get(&key).and_then(Weak::upgrade) {
            return Ok(b);
        }
        // Loading holds the lock: two evaluations of one model load it once.
        let backend = self.load_onnx(dir, config)?;
        local.insert(key, Arc::downgrade(&backend));
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
}

impl Resolver {
    /// A server launched for the checkpoint in `dir` by the `launch`
    /// backend `name`; stopped when the returned model is dropped.
    async fn launch(
        &self,
        name: &str,
        config: &crate::config::LaunchBackendConfig,
        dir: &Path,
    ) -> Result<Arc<dyn Backend>, ResolveError> {
        if !dir.is_dir() {
            return Err(invalid(format!(
                "backend {name}: {} is not a checkpoint folder",
                dir.display()
            )));
        }
        let launch_dir = self.config.data_dir.join("launch");
        let model = crate::backend::launch::LaunchedModel::launch(
            name,
            config,
            dir,
            &launch_dir,
            self.concurrency,
        )
        .await
        .map_err(|e| ResolveError {
            message: e.message,
            registry: false,
        })?;
        Ok(Arc::new(model))
    }
}
