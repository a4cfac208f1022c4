//! The MLflow Model Registry watcher: every READY version of the watched
//! registered models is a checkpoint (revision: the version number). Models
//! are named in `models` or found with a `registered-models/search` filter.
//! With `baseline_alias`, the version holding that alias (e.g. `champion`) is
//! the baseline of every other version of its model; it is itself returned
//! without a baseline, so the daemon evaluates it once too.
//!
//! Artifacts are downloaded through the server's artifact proxy
//! (`mlflow-artifacts:/` URIs, on by default with `mlflow server`), so the
//! watcher needs no credentials for the storage behind it. Webhooks must be
//! signed (`X-MLflow-Signature`, HMAC-SHA256 over delivery id, timestamp and
//! body); unsigned or stale deliveries are refused.
//!
//! ```toml
//! [watchers.registry]
//! kind = "mlflow"
//! tracking_uri = "http://mlflow.internal:5000"
//! models = ["safety-candidate"]        # or: filter = "name LIKE 'safety-%'"
//! baseline_alias = "champion"
//! webhook_secret_env = "MLFLOW_WEBHOOK_SECRET"
//! token_env = "MLFLOW_TRACKING_TOKEN"  # servers behind auth
//! timeout = "30s"
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};
use url::Url;

use crate::cache::{DownloadRequest, COMPLETE_FILE, LAST_USED_FILE, PARTIAL_SUFFIX};
use crate::http::{send_once, Disposition, RetryPolicy};
use crate::{
    is_plain, read_secret, Baseline, Cache, Checkpoint, Target, WatchError, Watcher, Webhook,
};

/// How far a webhook's `X-MLflow-Timestamp` may be from now.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);

/// Deepest artifact folder nesting followed, and most files fetched, for one
/// version (a guard against a runaway listing).
const MAX_DEPTH: usize = 32;
const MAX_FILES: usize = 100_000;

/// `[watchers.NAME]` keys of `kind = "mlflow"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// The tracking server, e.g. `http://127.0.0.1:5000`.
    pub tracking_uri: String,
    /// Registered model names.
    pub models: Option<Vec<String>>,
    /// A `registered-models/search` filter, e.g. `name LIKE 'safety-%'`.
    pub filter: Option<String>,
    /// The alias whose version is the baseline of the model's other versions.
    pub baseline_alias: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    /// Bearer token for servers behind auth.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Timeout of each API request (humantime; default 30s).
    pub timeout: Option<String>,
}

/// Which registered models are watched.
#[derive(Debug, Clone)]
enum Source {
    Models(Vec<String>),
    Filter(String),
}

/// Watches versions of registered models on one MLflow tracking server.
pub struct MlflowWatcher {
    name: String,
    /// The tracking URI, its path ending in `/`.
    base: Url,
    source: Source,
    baseline_alias: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    timeout: Duration,
    http: reqwest::Client,
    /// How API requests are retried (public so tests can shorten it;
    /// downloads follow the cache's policy).
    pub retry: RetryPolicy,
    /// `max_results` of each search page (public so tests can force paging).
    pub page_size: u32,
    /// Models whose baseline alias was missing at the last poll (logged once).
    alias_missing: Mutex<HashSet<String>>,
}

/// `GET registered-models/search`.
#[derive(Debug, Deserialize)]
struct RegisteredModels {
    #[serde(default)]
    registered_models: Vec<RegisteredModel>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RegisteredModel {
    name: String,
}

/// `GET model-versions/search`.
#[derive(Debug, Deserialize)]
struct ModelVersions {
    #[serde(default)]
    model_versions: Vec<ModelVersion>,
    next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ModelVersion {
    name: String,
    version: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// `GET registered-models/alias`.
#[derive(Debug, Deserialize)]
struct AliasAnswer {
    model_version: ModelVersion,
}

/// `GET model-versions/get-download-uri`.
#[derive(Debug, Deserialize)]
struct DownloadUri {
    artifact_uri: String,
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=`.
#[derive(Debug, Deserialize)]
struct ArtifactList {
    #[serde(default)]
    files: Vec<ArtifactFile>,
}

#[derive(Debug, Deserialize)]
struct ArtifactFile {
    path: String,
    #[serde(default)]
    is_dir: bool,
    file_size: Option<u64>,
}

/// A failed API request: the error to return, and the HTTP answer it came
/// from (so callers can treat some answers, like a missing alias, as data).
struct ApiError {
    status: Option<StatusCode>,
    body: String,
    error: WatchError,
}

impl From<ApiError> for WatchError {
    fn from(e: ApiError) -> WatchError {
        e.error
    }
}

impl MlflowWatcher {
    /// Builds the watcher from its `[watchers.NAME]` table (common keys are
    /// ignored); every problem is reported, prefixed `watchers.NAME.key`.
    pub fn from_config(name: &str, table: &toml::Table) -> Result<Self, Vec<String>> {
        let crate::Settings::Mlflow(config) =
            crate::config::settings_of(name, crate::Kind::Mlflow, table)?
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
        config: &MlflowConfig,
        build: bool,
    ) -> Result<Option<MlflowWatcher>, Vec<String>> {
        let config = config.clone();
        let key = |k: &str| format!("`watchers.{name}.{k}`");
        let mut problems = Vec::new();

        let base = match Url::parse(config.tracking_uri.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    problems.push(format!(
                        "{}: {:?} has a query or fragment; give the server's address only",
                        key("tracking_uri"),
                        config.tracking_uri
                    ));
                }
                if !u.username().is_empty() || u.password().is_some() {
                    problems.push(format!(
                        "{}: credentials in the URL are not supported; use `token_env` or `token_file`",
                        key("tracking_uri")
                    ));
                }
                let mut u = u;
                if !u.path().ends_with('/') {
                    let path = format!("{}/", u.path());
                    u.set_path(&path);
                }
                u
            }
            Ok(_) => {
                problems.push(format!(
                    "{}: {:?} is not an http(s) URL like \"http://127.0.0.1:5000\"",
                    key("tracking_uri"),
                    config.tracking_uri
                ));
                Url::parse("http://127.0.0.1:5000/").expect("static URL")
            }
            Err(e) => {
                problems.push(format!(
                    "{}: {:?} is not a URL: {e}",
                    key("tracking_uri"),
                    config.tracking_uri
                ));
                Url::parse("http://127.0.0.1:5000/").expect("static URL")
            }
        };

        let source = match (config.models, config.filter) {
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{}: name models with `models` or search with `filter`, not both",
                    key("models")
                ));
                Source::Models(Vec::new())
            }
            (None, None) => {
                problems.push(format!(
                    "`watchers.{name}`: set `models` (registered model names) or `filter` (e.g. \"name LIKE 'safety-%'\")"
                ));
                Source::Models(Vec::new())
            }
            (Some(models), None) => {
                if models.is_empty() {
                    problems.push(format!("{}: the list is empty", key("models")));
                }
                for m in &models {
                    if m.trim().is_empty() {
                        problems.push(format!("{}: a model name is empty", key("models")));
                    } else if quote_filter_value(m).is_none() {
                        problems.push(format!(
                            "{}: {m:?} holds both kinds of quote and cannot be searched for in MLflow",
                            key("models")
                        ));
                    }
                }
                Source::Models(models)
            }
            (None, Some(filter)) => {
                if filter.trim().is_empty() {
                    problems.push(format!("{}: the filter is empty", key("filter")));
                }
                Source::Filter(filter)
            }
        };

        if let Some(alias) = &config.baseline_alias {
            if alias.trim().is_empty() {
                problems.push(format!("{}: the alias is empty", key("baseline_alias")));
            }
        }
        if config.webhook_secret_env.is_some() && config.webhook_secret_file.is_some() {
            problems.push(format!(
                "{}: set `webhook_secret_env` or `webhook_secret_file`, not both",
                key("webhook_secret_file")
            ));
        }
        if config.token_env.is_some() && config.token_file.is_some() {
            problems.push(format!(
                "{}: set `token_env` or `token_file`, not both",
                key("token_file")
            ));
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
        // API requests set `timeout` each; artifact downloads fail on a
        // stalled read.
        let http = crate::http::watcher_client(name, timeout)?;

        Ok(Some(MlflowWatcher {
            name: name.to_string(),
            base,
            source,
            baseline_alias: config.baseline_alias,
            webhook_secret_env: config.webhook_secret_env,
            webhook_secret_file: config.webhook_secret_file,
            token_env: config.token_env,
            token_file: config.token_file,
            timeout,
            http,
            retry: RetryPolicy::default(),
            page_size: 1000,
            alias_missing: Mutex::new(HashSet::new()),
        }))
    }

    /// The tracking server's address as configured (path ending in `/`).
    pub fn tracking_uri(&self) -> &Url {
        &self.base
    }

    fn token(&self) -> Result<Option<String>, WatchError> {
        read_secret(self.token_env.as_deref(), self.token_file.as_deref())
    }

    /// `{tracking_uri}/seg/seg/...`, each segment percent-encoded.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `GET {tracking_uri}/api/2.0/mlflow/{route}?query` under the retry
    /// policy, the answer parsed as JSON.
    async fn get_json<T: DeserializeOwned>(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let mut url = self.url(["api", "2.0", "mlflow"].into_iter().chain(route.split('/')));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.get_json_url(route, url).await
    }

    async fn get_json_url<T: DeserializeOwned>(
        &self,
        route: &str,
        url: Url,
    ) -> Result<T, ApiError> {
        let token = self.token().map_err(|error| ApiError {
            status: None,
            body: String::new(),
            error,
        })?;
        let shown = format!(
            "MLflow {} GET {route}",
            self.base.as_str().trim_end_matches('/')
        );
        let mut attempt = 0;
        loop {
            let mut request = self.http.get(url.clone()).timeout(self.timeout);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let mut answer = None;
            let disposition = match send_once(request).await {
                Err(reason) => Disposition::Retry { hint: None, reason },
                Ok((status, _, body)) if status.is_success() => {
                    return serde_json::from_str(&body).map_err(|e| {
                        let excerpt: String = body.chars().take(120).collect();
                        ApiError {
                            status: Some(status),
                            body: String::new(),
                            error: WatchError::new(
                                "malformed",
                                format!("{shown}: the answer is not what the route returns ({e}): {excerpt:?}"),
                            ),
                        }
                    });
                }
                Ok((status, headers, body)) => {
                    let disposition = self.retry.classify(status, &headers, &body);
                    answer = Some((status, body));
                    disposition
                }
            };
            match disposition {
                Disposition::Fatal { kind, message } => {
                    let (status, body) = answer.unzip();
                    return Err(ApiError {
                        status,
                        body: body.unwrap_or_default(),
                        error: WatchError::new(
                            if kind == "unauthorized" { kind } else { "http" },
                            format!("{shown}: {message}"),
                        ),
                    });
                }
                Disposition::Retry { hint, reason } => {
                    if attempt >= self.retry.max_retries {
                        let (status, body) = answer.unzip();
                        return Err(ApiError {
                            error: WatchError::new(
                                if status.is_some() {
                                    "http"
                                } else {
                                    "unreachable"
                                },
                                format!(
                                    "{shown}: gave up after {} attempts: {reason}",
                                    attempt + 1
                                ),
                            ),
                            status,
                            body: body.unwrap_or_default(),
                        });
                    }
                    let delay = self.retry.delay(attempt, hint);
                    debug!(watcher = %self.name, route, %reason, ?delay, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The watched registered models' names.
    async fn model_names(&self) -> Result<Vec<String>, WatchError> {
        let filter = match &self.source {
            Source::Models(models) => return Ok(models.clone()),
            Source::Filter(filter) => filter,
        };
        let page_size = self.page_size.max(1).to_string();
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("filter", filter.as_str()),
                ("max_results", page_size.as_str()),
                ("order_by", "name ASC"),
            ];
            if let Some(t) = &token {
                query.push(("page_token", t));
            }
            let page: RegisteredModels = self.get_json("registered-models/search", &query).await?;
            names.extend(page.registered_models.into_iter().map(|m| m.name));
            match page.next_page_token {
                Some(t) if !t.is_empty() && token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        Ok(names)
    }

    /// Every version of `model`, all pages.
    async fn versions(&self, model: &str) -> Result<Vec<ModelVersion>, WatchError> {
        let Some(quoted) = quote_filter_value(model) else {
            return Err(WatchError::new(
                "unsupported",
                format!(
                    "model name {model:?} holds both kinds of quote and cannot be searched for"
                ),
            ));
        };
        let filter = format!("name={quoted}");
        let page_size = self.page_size.max(1).to_string();
        let mut versions = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("filter", filter.as_str()),
                ("max_results", page_size.as_str()),
            ];
            if let Some(t) = &token {
                query.push(("page_token", t));
            }
            let page: ModelVersions = self.get_json("model-versions/search", &query).await?;
            // The filter is exact; a server that ignored it must not leak
            // other models in.
            versions.extend(page.model_versions.into_iter().filter(|v| v.name == model));
            match page.next_page_token {
                Some(t) if !t.is_empty() && token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        Ok(versions)
    }

    /// The version holding the baseline alias, if the model has it.
    async fn aliased_version(
        &self,
        model: &str,
        alias: &str,
    ) -> Result<Option<ModelVersion>, WatchError> {
        let query = [("name", model), ("alias", alias)];
        match self
            .get_json::<AliasAnswer>("registered-models/alias", &query)
            .await
        {
            Ok(answer) => {
                self.alias_missing
                    .lock()
                    .expect("alias_missing lock")
                    .remove(model);
                Ok(Some(answer.model_version))
            }
            // MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE
            // "... alias X not found", a missing model with 404.
            Err(e) if is_missing_alias(e.status, &e.body) => {
                if self
                    .alias_missing
                    .lock()
                    .expect("alias_missing lock")
                    .insert(model.to_string())
                {
                    info!(
                        watcher = %self.name, model, alias,
                        "the model has no version with the baseline alias; its versions get no registry baseline"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e.error),
        }
    }

    /// Whether the registry gave `v` a version number, as MLflow always
    /// does; anything else is skipped with a warning.
    fn numbered(&self, v: &ModelVersion) -> bool {
        let ok = !v.version.is_empty()
            && v.version.len() <= 20
            && v.version.bytes().all(|b| b.is_ascii_digit())
            && is_plain(&v.name);
        if !ok {
            warn!(watcher = %self.name, model = %v.name, version = ?v.version,
                "the registry listed a version that is not a version number; skipping it");
        }
        ok
    }

    fn checkpoint(&self, v: &ModelVersion, baseline: Option<Baseline>) -> Checkpoint {
        Checkpoint {
            watcher: self.name.clone(),
            model: v.name.clone(),
            revision: v.version.clone(),
            baseline,
            detail: serde_json::json!({ "source": v.source, "run_id": v.run_id }),
        }
    }

    /// Whether a webhook about `model` concerns this watcher.
    fn watches(&self, model: &str) -> bool {
        match &self.source {
            Source::Models(models) => models.iter().any(|m| m == model),
            // The filter cannot be evaluated here: any model may match it.
            Source::Filter(_) => true,
        }
    }

    /// Lists the files under artifact path `root` (recursively): each as
    /// (path relative to `root`, size).
    async fn list_artifacts(&self, root: &str) -> Result<Vec<(String, Option<u64>)>, WatchError> {
        let mut files = Vec::new();
        let mut pending = vec![(String::new(), 0usize)];
        while let Some((rel, depth)) = pending.pop() {
            let path = if rel.is_empty() {
                root.to_string()
            } else {
                format!("{root}/{rel}")
            };
            let mut url = self.url(["api", "2.0", "mlflow-artifacts", "artifacts"]);
            url.query_pairs_mut().append_pair("path", &path);
            let list: ArtifactList = self.get_json_url("mlflow-artifacts/artifacts", url).await?;
            for f in list.files {
                // Servers answer base names; older ones answered paths from
                // the listed folder or from the artifact root.
                let name = f
                    .path
                    .strip_prefix(&format!("{path}/"))
                    .or_else(|| {
                        f.path
                            .strip_prefix(&format!("{rel}/"))
                            .filter(|_| !rel.is_empty())
                    })
                    .unwrap_or(&f.path);
                if name.is_empty() || name.contains('/') {
                    return Err(WatchError::new(
                        "unsafe_path",
                        format!("refusing artifact name {:?} listed under {path:?}", f.path),
                    ));
                }
                let child = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                // Rejects `..`, `.`, absolute names, backslashes, NUL.
                Cache::safe_join(std::path::Path::new(""), &child)?;
                if f.is_dir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(WatchError::new(
                            "unsupported",
                            format!(
                                "artifact folders nest deeper than {MAX_DEPTH} levels at {path:?}"
                            ),
                        ));
                    }
                    pending.push((child, depth + 1));
                } else {
                    files.push((child, f.file_size));
                    if files.len() > MAX_FILES {
                        return Err(WatchError::new(
                            "unsupported",
                            format!("the version has more than {MAX_FILES} artifact files"),
                        ));
                    }
                }
            }
        }
        files.sort();
        Ok(files)
    }
}

#[async_trait]
impl Watcher for MlflowWatcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError> {
        let mut found = Vec::new();
        for model in self.model_names().await? {
            if quote_filter_value(&model).is_none() {
                warn!(watcher = %self.name, model, "skipping a model whose name holds both kinds of quote");
                continue;
            }
            let mut versions: Vec<ModelVersion> = self
                .versions(&model)
                .await?
                .into_iter()
                .filter(|v| v.status.as_deref().unwrap_or("READY") == "READY")
                .filter(|v| self.numbered(v))
                .collect();
            versions.sort_by_key(|v| v.version.parse::<u64>().unwrap_or(u64::MAX));
            versions.dedup_by(|a, b| a.version == b.version);

            let baseline = match &self.baseline_alias {
                // No versions (or no such model): nothing needs a baseline.
                Some(_) if versions.is_empty() => None,
                Some(alias) => match self.aliased_version(&model, alias).await? {
                    Some(v) if !self.numbered(&v) => None,
                    Some(v) if v.status.as_deref().unwrap_or("READY") == "READY" => Some(v),
                    Some(v) => {
                        debug!(watcher = %self.name, model, version = %v.version, "the aliased version is not READY");
                        None
                    }
                    None => None,
                },
                None => None,
            };
            let baseline_cp = baseline.as_ref().map(|v| self.checkpoint(v, None));
            for v in &versions {
                let b = match (&baseline_cp, &baseline) {
                    (Some(cp), Some(bv)) if bv.version != v.version => {
                        Some(Baseline::Checkpoint(Box::new(cp.clone())))
                    }
                    _ => None,
                };
                found.push(self.checkpoint(v, b));
            }
            debug!(watcher = %self.name, model, versions = versions.len(), "polled");
        }
        Ok(found)
    }

    async fn fetch(&self, checkpoint: &Checkpoint, cache: &Cache) -> Result<Target, WatchError> {
        let dir = cache.checkpoint_dir(checkpoint);
        if Cache::is_complete(&dir) {
            Cache::touch(&dir);
            return Ok(Target::Onnx { dir });
        }
        let (model, version) = (checkpoint.model.as_str(), checkpoint.revision.as_str());
        let uri: DownloadUri = self
            .get_json(
                "model-versions/get-download-uri",
                &[("name", model), ("version", version)],
            )
            .await?;
        let root = artifact_path(&uri.artifact_uri).ok_or_else(|| {
            WatchError::new(
                "unsupported",
                format!(
                    "{model} version {version} keeps its artifacts at {:?}, which this watcher cannot read: \
                     it downloads through the server's artifact proxy (mlflow-artifacts:/ URIs; \
                     `mlflow server` serves artifacts unless started with --no-serve-artifacts)",
                    uri.artifact_uri
                ),
            )
        })?;
        let files = self.list_artifacts(&root).await?;
        if files.is_empty() {
            return Err(WatchError::new(
                "not_found",
                format!(
                    "{model} version {version} has no artifact files under {:?}",
                    uri.artifact_uri
                ),
            ));
        }
        let token = self.token()?;
        let mut total = 0u64;
        for (rel, size) in &files {
            if rel == COMPLETE_FILE || rel == LAST_USED_FILE || rel.ends_with(PARTIAL_SUFFIX) {
                return Err(WatchError::new(
                    "unsafe_path",
                    format!(
                        "refusing artifact {rel:?}: the name is reserved by the download cache"
                    ),
                ));
            }
            let dest = Cache::safe_join(&dir, rel)?;
            let url = self.url(
                ["api", "2.0", "mlflow-artifacts", "artifacts"]
                    .into_iter()
                    .chain(root.split('/'))
                    .chain(rel.split('/')),
            );
            total += cache
                .download(
                    &self.http,
                    DownloadRequest {
                        url: url.as_str(),
                        dest: &dest,
                        sha256: None,
                        size: *size,
                        bearer: token.as_deref(),
                    },
                )
                .await?;
        }
        Cache::mark_complete(&dir)?;
        Cache::touch(&dir);
        info!(watcher = %self.name, model, version, files = files.len(), bytes = total, "checkpoint fetched");
        Ok(Target::Onnx { dir })
    }

    fn webhook(&self, delivery: &Webhook<'_>) -> Result<bool, WatchError> {
        let secret = read_secret(self.webhook_secret_env.as_deref(), self.webhook_secret_file.as_deref())?
            .ok_or_else(|| {
                WatchError::new(
                    "unauthorized",
                    format!(
                        "watcher {} has no webhook secret configured (set webhook_secret_env or webhook_secret_file); \
                         unsigned deliveries are refused",
                        self.name
                    ),
                )
            })?;
        verify_signature(delivery, secret.as_bytes(), chrono::Utc::now().timestamp())?;

        let payload: serde_json::Value = serde_json::from_slice(delivery.body)
            .map_err(|e| WatchError::new("malformed", format!("webhook body is not JSON: {e}")))?;
        let str_at = |p: &str| payload.pointer(p).and_then(|v| v.as_str());
        let (Some(entity), Some(action)) = (str_at("/entity"), str_at("/action")) else {
            return Err(WatchError::new(
                "malformed",
                "webhook body lacks entity or action",
            ));
        };
        if !entity.eq_ignore_ascii_case("model_version") || !action.eq_ignore_ascii_case("created")
        {
            debug!(watcher = %self.name, entity, action, "ignoring webhook event");
            return Ok(false);
        }
        let Some(model) = str_at("/data/name") else {
            return Err(WatchError::new(
                "malformed",
                "model_version webhook lacks data.name",
            ));
        };
        Ok(self.watches(model))
    }
}

/// Checks `X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
/// "{delivery id}.{timestamp}.{body}")>` and the timestamp's freshness
/// against `now` (unix seconds).
fn verify_signature(delivery: &Webhook<'_>, secret: &[u8], now: i64) -> Result<(), WatchError> {
    let refuse = |why: &str| {
        Err(WatchError::new(
            "unauthorized",
            format!("webhook refused: {why}"),
        ))
    };
    let header = |name: &str| {
        (delivery.header)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(signature) = header("x-mlflow-signature") else {
        return refuse("no X-MLflow-Signature header (is a secret set on the MLflow webhook?)");
    };
    let Some(delivery_id) = header("x-mlflow-delivery-id") else {
        return refuse("no X-MLflow-Delivery-Id header");
    };
    let Some(timestamp) = header("x-mlflow-timestamp") else {
        return refuse("no X-MLflow-Timestamp header");
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return refuse("X-MLflow-Timestamp is not unix seconds");
    };
    if now.abs_diff(ts) > WEBHOOK_TOLERANCE.as_secs() {
        return refuse(
            "X-MLflow-Timestamp is more than 5 minutes from now (a replay, or a clock out of sync)",
        );
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(delivery.body);
    let expected = mac.finalize().into_bytes();
    // Several space-separated signatures may be sent during a secret rotation.
    let mut matched = false;
    for candidate in signature.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        if given.len() == expected.len() {
            matched |= bool::from(given.as_slice().ct_eq(expected.as_slice()));
        }
    }
    if matched {
        Ok(())
    } else {
        refuse("the signature does not match (wrong secret, or the body was altered)")
    }
}

/// `name` as a filter string literal: single-quoted, or double-quoted when it
/// holds a single quote. MLflow's filter parser has no escapes, so a name
/// with both cannot be written.
fn quote_filter_value(name: &str) -> Option<String> {
    if !name.contains('\'') {
        Some(format!("'{name}'"))
    } else if !name.contains('"') {
        Some(format!("\"{name}\""))
    } else {
        None
    }
}

/// The path behind an `mlflow-artifacts:/p` or `mlflow-artifacts://host/p`
/// URI; `None` for other schemes.
fn artifact_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => &authority_and_path[authority_and_path.find('/')?..],
        None => rest,
    };
    let path = path.trim_matches('/');
    if path.is_empty()
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some(path.to_string())
}

/// Whether an alias lookup failed because the alias (or the model) is not
/// there, rather than because the server failed.
fn is_missing_alias(status: Option<StatusCode>, body: &str) -> bool {
    match status {
        Some(StatusCode::NOT_FOUND) => true,
        Some(StatusCode::BAD_REQUEST) => {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            v.get("error_code").and_then(|c| c.as_str()) == Some("INVALID_PARAMETER_VALUE")
                && v.get("message")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| m.to_ascii_lowercase().contains("not found"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn config_is_checked_key_by_key() {
        let w = MlflowWatcher::from_config(
            "reg",
            &table("kind = 'mlflow'\nschedule = '*/5 * * * *'\ntracking_uri = 'http://h:5000/mlflow'\nmodels = ['a']\nbaseline_alias = 'champion'\ntimeout = '5s'"),
        )
        .unwrap();
        assert_eq!(w.tracking_uri().as_str(), "http://h:5000/mlflow/");
        assert_eq!(w.timeout, Duration::from_secs(5));
        assert_eq!(
            w.url([
                "api",
                "2.0",
                "mlflow-artifacts",
                "artifacts",
                "1",
                "a b#?.bin"
            ])
            .as_str(),
            "http://h:5000/mlflow/api/2.0/mlflow-artifacts/artifacts/1/a%20b%23%3F.bin"
        );

        let err = MlflowWatcher::from_config(
            "reg",
            &table("tracking_uri = 'http://h'\nmodels = ['a']\nmodel = 'x'"),
        )
        .err()
        .unwrap();
        assert!(err[0].starts_with("`watchers.reg.model`"), "{err:?}");
        let err = MlflowWatcher::from_config("reg", &table("models = ['a']"))
            .err()
            .unwrap();
        assert!(err[0].starts_with("`watchers.reg.tracking_uri`"), "{err:?}");
        let err = MlflowWatcher::from_config(
            "reg",
            &table("tracking_uri = 'ftp://h'\nmodels = []\ntimeout = 'soon'\ntoken_env = 'A'\ntoken_file = '/b'"),
        )
        .err()
        .unwrap();
        for k in ["tracking_uri", "models", "timeout", "token_file"] {
            assert!(
                err.iter()
                    .any(|e| e.starts_with(&format!("`watchers.reg.{k}`"))),
                "{k}: {err:?}"
            );
        }
        let err = MlflowWatcher::from_config(
            "reg",
            &table("tracking_uri = 'http://h'\nmodels = ['a']\nfilter = 'x'"),
        )
        .err()
        .unwrap();
        assert!(err[0].starts_with("`watchers.reg.models`"), "{err:?}");
        let err = MlflowWatcher::from_config("reg", &table("tracking_uri = 'http://h'"))
            .err()
            .unwrap();
        assert!(err[0].starts_with("`watchers.reg`"), "{err:?}");
        let err = MlflowWatcher::from_config(
            "reg",
            &table("tracking_uri = 'http://h'\nmodels = [\"a'\\\"b\"]"),
        )
        .err()
        .unwrap();
        assert!(err[0].contains("quote"), "{err:?}");
    }

    #[test]
    fn filter_quoting_and_artifact_uris() {
        assert_eq!(quote_filter_value("safety-a").unwrap(), "'safety-a'");
        assert_eq!(quote_filter_value("it's").unwrap(), "\"it's\"");
        assert_eq!(quote_filter_value("say \"hi\"").unwrap(), "'say \"hi\"'");
        assert_eq!(quote_filter_value("a'\"b"), None);
        assert_eq!(
            artifact_path("mlflow-artifacts:/1/abc/artifacts/model").unwrap(),
            "1/abc/artifacts/model"
        );
        assert_eq!(
            artifact_path("mlflow-artifacts://host:5000/1/abc/artifacts/model/").unwrap(),
            "1/abc/artifacts/model"
        );
        assert_eq!(artifact_path("s3://bucket/1/abc"), None);
        assert_eq!(artifact_path("mlflow-artifacts:/1/../etc"), None);
        assert_eq!(artifact_path("mlflow-artifacts:/"), None);
        assert!(is_missing_alias(
            Some(StatusCode::BAD_REQUEST),
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Registered model alias nope not found."}"#
        ));
        assert!(is_missing_alias(Some(StatusCode::NOT_FOUND), ""));
        assert!(!is_missing_alias(
            Some(StatusCode::BAD_REQUEST),
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "bad alias"}"#
        ));
        assert!(!is_missing_alias(None, ""));
    }

    #[test]
    fn signatures_and_freshness() {
        let body = br#"{"entity":"model_version","action":"created","data":{"name":"m"}}"#;
        let sign = |secret: &[u8], id: &str, ts: &str, body: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        };
        let now = 1_800_000_000i64;
        let check = |sig: Option<String>, ts: i64, body: &[u8]| {
            let headers = move |name: &str| match name {
                "x-mlflow-signature" => sig.clone(),
                "x-mlflow-delivery-id" => Some("d-1".to_string()),
                "x-mlflow-timestamp" => Some(ts.to_string()),
                _ => None,
            };
            verify_signature(
                &Webhook {
                    header: &headers,
                    body,
                },
                b"s3cret",
                now,
            )
        };
        assert!(check(
            Some(sign(b"s3cret", "d-1", &now.to_string(), body)),
            now,
            body
        )
        .is_ok());
        let two = format!("v1,AAAA {}", sign(b"s3cret", "d-1", &now.to_string(), body));
        assert!(check(Some(two), now, body).is_ok());
        let stale = now - 301;
        let e = check(
            Some(sign(b"s3cret", "d-1", &stale.to_string(), body)),
            stale,
            body,
        )
        .unwrap_err();
        assert_eq!(e.kind, "unauthorized");
        assert!(e.message.contains("5 minutes"), "{e}");
        let e = check(
            Some(sign(b"other", "d-1", &now.to_string(), body)),
            now,
            body,
        )
        .unwrap_err();
        assert_eq!(e.kind, "unauthorized");
        let e = check(
            Some(sign(b"s3cret", "d-1", &now.to_string(), body)),
            now,
            b"{}",
        )
        .unwrap_err();
        assert_eq!(e.kind, "unauthorized");
        assert_eq!(check(None, now, body).unwrap_err().kind, "unauthorized");
        assert_eq!(
            check(Some("v1,!!!".into()), now, body).unwrap_err().kind,
            "unauthorized"
        );
    }
}
