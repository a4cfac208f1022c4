//! The Hugging Face Hub watcher: finds new commits of model repos (one
//! author's, one tag's, or a configured list) and downloads their ONNX export
//! (or, with `formats`, their LoRA adapter, GGUF file or safetensors
//! weights).
//!
//! A checkpoint is a repo at a commit sha. The repo's model card names its
//! parent in `base_model`; when that parent has an ONNX export too it becomes
//! the checkpoint's baseline. Fetching lists the commit's tree, keeps the
//! files `allow` names (by default the ONNX layout the `onnx` backend loads)
//! and downloads each through `/resolve/`, checksummed (LFS sha256) and
//! resumable, into the cache.
//!
//! Every API request goes through [`crate::http::RetryPolicy`]; the Hub's
//! `RateLimit: "api";r=0;t=N` header additionally holds back the next request
//! for `t` seconds, so a busy watcher slows down before it is answered 429.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};
use url::Url;

use crate::cache::{Cache, DownloadRequest};
use crate::http::{send_once, Disposition, RetryPolicy};
use crate::{read_secret, Baseline, Checkpoint, Target, WatchError, Watcher, Webhook};

/// The files an ONNX export needs (the layout optimum writes and the `onnx`
/// backend loads): the graph, its external weights, configs and tokenizer.
pub const DEFAULT_ALLOW: &[&str] = &[
    "model.onnx",
    "model.onnx.data",
    "model.onnx_data",
    "*.json",
    "tokenizer.model",
    "*.txt",
    "*.jinja",
];

/// The files each format adds to the default `allow` (beyond
/// [`DEFAULT_ALLOW`]'s configs and tokenizer files).
pub const FORMAT_FILES: &[(&str, &[&str])] = &[
    (
        "onnx",
        &["model.onnx", "model.onnx.data", "model.onnx_data"],
    ),
    (
        "lora",
        &[
            "adapter_model.safetensors",
            "adapter_model.bin",
            "adapter_config.json",
        ],
    ),
    ("gguf", &["*.gguf"]),
    ("safetensors", &["*.safetensors"]),
];

/// `[watchers.NAME]` keys of `kind = "huggingface"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HuggingfaceConfig {
    /// The Hub's base URL (a mirror or a test server).
    pub endpoint: Option<String>,
    /// Watch every model repo of this user or organization.
    pub author: Option<String>,
    /// Watch these repos (`org/name`).
    pub models: Option<Vec<String>>,
    /// Watch every model repo carrying this tag (with `author`: that
    /// author's repos carrying it).
    pub filter: Option<String>,
    /// Environment variable holding a Hub token (private repos, higher limits).
    pub token_env: Option<String>,
    /// File holding a Hub token (e.g. a systemd credential).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the webhook secret.
    pub webhook_secret_env: Option<String>,
    /// File holding the webhook secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// The folder of the repo holding the ONNX export (e.g. `onnx`); the
    /// repo root by default.
    #[serde(default)]
    pub subfolder: String,
    /// Which files to download: names relative to `subfolder`, `*` matching
    /// within one path segment (e.g. `*.json`). Default: what `formats`
    /// need ([`DEFAULT_ALLOW`] and [`FORMAT_FILES`]).
    pub allow: Option<Vec<String>>,
    /// The checkpoint formats a repo may hold ([`crate::format::FORMATS`]:
    /// `onnx`, `lora`, `gguf`, `safetensors`); default `["onnx"]`. A repo is
    /// a checkpoint when it holds the defining file of one of them: a
    /// `.onnx` graph, `adapter_config.json`, a `.gguf` file, `.safetensors`
    /// weights. Route each to its backend with the watcher's `backends`.
    pub formats: Option<Vec<String>>,
    /// Connect and read timeout of each request (humantime, e.g. `30s`).
    pub timeout: Option<String>,
}

/// What to list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// `/api/models?author=..&filter=..`, following `Link: rel="next"`.
    Listing {
        author: Option<String>,
        filter: Option<String>,
    },
    /// `/api/models/{id}` for each.
    Repos(Vec<String>),
}

/// Watches Hugging Face Hub model repos.
pub struct HuggingfaceWatcher {
    name: String,
    endpoint: Url,
    source: Source,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    subfolder: String,
    allow: Vec<String>,
    /// The formats a repo may hold (`formats`).
    formats: Vec<String>,
    timeout: Duration,
    http: reqwest::Client,
    /// How API requests are retried (public so tests can shorten it).
    pub retry: RetryPolicy,
    /// The Hub said the quota is spent until then (`RateLimit: ..;r=0;t=N`).
    not_before: Mutex<Option<Instant>>,
}

/// One entry of `/api/models` or `/api/models/{id}`.
#[derive(Debug, Deserialize)]
struct ModelInfo {
    id: String,
    sha: Option<String>,
    #[serde(rename = "cardData")]
    card_data: Option<serde_json::Value>,
    siblings: Option<Vec<Sibling>>,
    #[serde(default)]
    disabled: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
}

/// One entry of `/api/models/{id}/tree/{rev}/{path}`.
#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    oid: String,
    size: Option<u64>,
}

impl HuggingfaceWatcher {
    /// Builds the watcher from its `[watchers.NAME]` table (common keys are
    /// ignored); every problem is reported, prefixed `watchers.NAME.key`.
    pub fn from_config(name: &str, table: &toml::Table) -> Result<Self, Vec<String>> {
        let crate::Settings::Huggingface(config) =
            crate::config::settings_of(name, crate::Kind::Huggingface, table)?
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
        config: &HuggingfaceConfig,
        build: bool,
    ) -> Result<Option<Self>, Vec<String>> {
        let config = config.clone();
        let key = |k: &str| format!("`watchers.{name}.{k}`");
        let mut problems = Vec::new();

        let endpoint = config
            .endpoint
            .as_deref()
            .unwrap_or("https://huggingface.co");
        let endpoint = match Url::parse(endpoint.trim_end_matches('/')) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) => {
                problems.push(format!(
                    "{}: {endpoint:?} is not an http(s) URL",
                    key("endpoint")
                ));
                Url::parse("https://huggingface.co").expect("static URL")
            }
            Err(e) => {
                problems.push(format!(
                    "{}: {endpoint:?} is not a URL: {e}",
                    key("endpoint")
                ));
                Url::parse("https://huggingface.co").expect("static URL")
            }
        };

        let source = match (&config.author, &config.models, &config.filter) {
            (None, None, None) => {
                problems.push(format!(
                    "`watchers.{name}`: set one of `author`, `filter` (listing) or `models` (a list of repo ids)"
                ));
                Source::Repos(Vec::new())
            }
            (Some(_), Some(_), _) | (_, Some(_), Some(_)) => {
                problems.push(format!(
                    "{}: list repos with `models` or search with `author`/`filter`, not both",
                    key("models")
                ));
                Source::Repos(Vec::new())
            }
            (_, Some(models), None) => {
                if models.is_empty() {
                    problems.push(format!("{}: the list is empty", key("models")));
                }
                for m in models {
                    if !is_repo_id(m) {
                        problems.push(format!(
                            "{}: {m:?} is not a repo id like \"org/name\"",
                            key("models")
                        ));
                    }
                }
                Source::Repos(models.clone())
            }
            (author, None, filter) => {
                for (k, v) in [("author", author), ("filter", filter)] {
                    if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                        problems.push(format!("{}: must not be empty", key(k)));
                    }
                }
                Source::Listing {
                    author: author.clone(),
                    filter: filter.clone(),
                }
            }
        };

        for (env, file, what) in [
            (&config.token_env, &config.token_file, "token"),
            (
                &config.webhook_secret_env,
                &config.webhook_secret_file,
                "webhook_secret",
            ),
        ] {
            if env.is_some() && file.is_some() {
                problems.push(format!(
                    "{}: set `{what}_env` or `{what}_file`, not both",
                    key(&format!("{what}_file"))
                ));
            }
        }

        let subfolder = config.subfolder.trim_matches('/').to_string();
        if subfolder
            .split('/')
            .any(|s| matches!(s, "." | "..") || s.contains('\\'))
            || (!config.subfolder.is_empty() && subfolder.is_empty())
        {
            problems.push(format!(
                "{}: {:?} must be a folder inside the repo, like \"onnx\"",
                key("subfolder"),
                config.subfolder
            ));
        }

        let known: Vec<&str> = crate::format::FORMATS.iter().map(|(n, _)| *n).collect();
        let formats: Vec<String> = config.formats.unwrap_or_else(|| vec!["onnx".into()]);
        if formats.is_empty() {
            problems.push(format!("{}: the list is empty", key("formats")));
        }
        for f in &formats {
            if !known.contains(&f.as_str()) {
                problems.push(format!(
                    "{}: unknown format {f:?} (expected {})",
                    key("formats"),
                    known.join(", ")
                ));
            }
        }
        let allow: Vec<String> = match config.allow {
            Some(list) => {
                if list.is_empty() {
                    problems.push(format!("{}: the list is empty", key("allow")));
                }
                for p in &list {
                    if p.is_empty() || p.starts_with('/') || p.split('/').any(|s| s == "..") {
                        problems.push(format!(
                            "{}: {p:?} must be a file name or pattern relative to `subfolder`",
                            key("allow")
                        ));
                    }
                }
                list
            }
            None => {
                let mut allow: Vec<String> = DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect();
                for (format, files) in FORMAT_FILES {
                    if formats.iter().any(|f| f == format) {
                        allow.extend(files.iter().map(|s| s.to_string()));
                    }
                }
                allow.dedup();
                allow
            }
        };

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
        Ok(Some(HuggingfaceWatcher {
            name: name.to_string(),
            endpoint,
            source,
            token_env: config.token_env,
            token_file: config.token_file,
            webhook_secret_env: config.webhook_secret_env,
            webhook_secret_file: config.webhook_secret_file,
            subfolder,
            allow,
            formats,
            timeout,
            http,
            retry: RetryPolicy::default(),
            not_before: Mutex::new(None),
        }))
    }

    fn token(&self) -> Result<Option<String>, WatchError> {
        read_secret(self.token_env.as_deref(), self.token_file.as_deref())
    }

    /// `{endpoint}/seg/seg/...`, each segment percent-encoded.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Whether `url` is on the Hub itself (the token goes nowhere else).
    fn is_hub(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    /// Holds back while the Hub's `RateLimit` header said the quota is spent.
    async fn wait_for_quota(&self) {
        let until = *self.not_before.lock().expect("not_before lock");
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                debug!(watcher = %self.name, wait = ?(until - now), "waiting for the Hub's rate limit window");
                tokio::time::sleep_until(until.into()).await;
            }
        }
    }

    fn note_rate_limit(&self, headers: &HeaderMap) {
        if let Some(reset) = rate_limit_reset(headers) {
            let reset = reset.min(self.retry.max_hint);
            let mut not_before = self.not_before.lock().expect("not_before lock");
            let until = Instant::now() + reset;
            if not_before.is_none_or(|t| t < until) {
                *not_before = Some(until);
            }
        }
    }

    /// GETs a Hub API URL under the retry policy; returns the headers and
    /// body of the successful answer.
    async fn get(&self, url: &Url) -> Result<(HeaderMap, String), WatchError> {
        let token = if self.is_hub(url) {
            self.token()?
        } else {
            None
        };
        let mut attempt = 0;
        loop {
            self.wait_for_quota().await;
            let mut request = self.http.get(url.clone()).timeout(self.timeout);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let mut transport = true;
            let disposition = match send_once(request).await {
                Err(reason) => Disposition::Retry { hint: None, reason },
                Ok((status, headers, body)) => {
                    self.note_rate_limit(&headers);
                    if status.is_success() {
                        return Ok((headers, body));
                    }
                    transport = false;
                    let body = hub_error_body(&headers, body);
                    match self.retry.classify(status, &headers, &body) {
                        // A 429 without Retry-After still says when its
                        // window resets.
                        Disposition::Retry { hint: None, reason } => Disposition::Retry {
                            hint: rate_limit_reset(&headers),
                            reason,
                        },
                        other => other,
                    }
                }
            };
            match disposition {
                Disposition::Fatal { kind, message } => {
                    return Err(WatchError::new(
                        kind,
                        format!("{}: {message}", path_of(url)),
                    ))
                }
                Disposition::Retry { hint, reason } => {
                    if attempt >= self.retry.max_retries {
                        return Err(WatchError::new(
                            if transport { "unreachable" } else { "http" },
                            format!(
                                "{}: gave up after {} attempts: {reason}",
                                path_of(url),
                                attempt + 1
                            ),
                        ));
                    }
                    let delay = self.retry.delay(attempt, hint);
                    debug!(watcher = %self.name, url = %url, %reason, ?delay, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// GETs a JSON array, following `Link: <..>; rel="next"` to the end.
    async fn get_pages<T: DeserializeOwned>(&self, first: Url) -> Result<Vec<T>, WatchError> {
        let mut url = first;
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let (headers, body) = self.get(&url).await?;
            let page: Vec<T> = serde_json::from_str(&body).map_err(|e| {
                WatchError::new(
                    "malformed",
                    format!("{}: unexpected answer: {e}", path_of(&url)),
                )
            })?;
            items.extend(page);
            seen.insert(url.clone());
            let Some(next) = next_link(&headers) else {
                return Ok(items);
            };
            let next = url.join(&next).map_err(|e| {
                WatchError::new(
                    "malformed",
                    format!("{}: bad Link header: {e}", path_of(&url)),
                )
            })?;
            if !self.is_hub(&next) {
                return Err(WatchError::new(
                    "malformed",
                    format!(
                        "{}: Link points off the Hub ({})",
                        path_of(&url),
                        next.origin().ascii_serialization()
                    ),
                ));
            }
            if seen.contains(&next) {
                return Err(WatchError::new(
                    "malformed",
                    format!("{}: Link pagination loops", path_of(&url)),
                ));
            }
            url = next;
        }
    }

    async fn model_info(&self, id: &str) -> Result<ModelInfo, WatchError> {
        let url = self.url(
            std::iter::once("api")
                .chain(["models"])
                .chain(id.split('/')),
        );
        let (_, body) = self.get(&url).await?;
        serde_json::from_str(&body).map_err(|e| {
            WatchError::new(
                "malformed",
                format!("{}: unexpected answer: {e}", path_of(&url)),
            )
        })
    }

    /// Whether the repo (per its `siblings`, when listed) has the defining
    /// file of a watched format (an ONNX graph by default) that `allow`
    /// keeps under `subfolder`.
    fn has_checkpoint(&self, info: &ModelInfo) -> bool {
        let Some(siblings) = &info.siblings else {
            return true;
        };
        siblings.iter().any(|s| {
            self.relative(&s.rfilename)
                .is_some_and(|rel| self.is_checkpoint_file(rel) && self.allowed(rel))
        })
    }

    /// Whether `rel` is the defining file of a watched format.
    fn is_checkpoint_file(&self, rel: &str) -> bool {
        crate::format::format_of_file(rel)
            .is_some_and(|f| self.formats.iter().any(|w| w == f.as_str()))
    }

    /// The watched formats, for messages.
    fn formats_text(&self) -> String {
        self.formats.join(", ")
    }

    /// A repo path relative to `subfolder`, if it lies inside it.
    fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.subfolder.is_empty() {
            return Some(path);
        }
        path.strip_prefix(self.subfolder.as_str())?
            .strip_prefix('/')
    }

    fn allowed(&self, relative: &str) -> bool {
        self.allow.iter().any(|p| glob_match(p, relative))
    }

    /// The checkpoint a listed repo is, with its `base_model` as baseline.
    async fn checkpoint(
        &self,
        info: ModelInfo,
        bases: &mut HashMap<String, Option<Checkpoint>>,
    ) -> Option<Checkpoint> {
        if !is_repo_id(&info.id) {
            warn!(watcher = %self.name, model = ?info.id, "the Hub listed a repo whose id is not a repo id; skipping it");
            return None;
        }
        if info.disabled.as_ref().and_then(|d| d.as_bool()) == Some(true) {
            debug!(watcher = %self.name, model = %info.id, "skipping a disabled repo");
            return None;
        }
        let Some(sha) = info.sha.clone().filter(|s| is_commit(s)) else {
            warn!(watcher = %self.name, model = %info.id, "the Hub listed a repo without a commit sha");
            return None;
        };
        if !self.has_checkpoint(&info) {
            debug!(watcher = %self.name, model = %info.id, subfolder = %self.subfolder, "no checkpoint file of the watched formats in the repo");
            return None;
        }
        let baseline = match base_model(info.card_data.as_ref()).filter(|b| *b != info.id) {
            Some(base) => {
                if !bases.contains_key(&base) {
                    let found = self.base_checkpoint(&base).await;
                    bases.insert(base.clone(), found);
                }
                bases[&base]
                    .clone()
                    .map(|cp| Baseline::Checkpoint(Box::new(cp)))
            }
            None => None,
        };
        Some(Checkpoint {
            watcher: self.name.clone(),
            model: info.id,
            revision: sha,
            baseline,
            detail: serde_json::Value::Null,
        })
    }

    /// The base model's current commit, if it can be read and has an ONNX
    /// export this watcher can fetch; otherwise the configured baseline is
    /// the only one.
    async fn base_checkpoint(&self, base: &str) -> Option<Checkpoint> {
        match self.model_info(base).await {
            Ok(info) => {
                let sha = info.sha.clone().filter(|s| is_commit(s))?;
                if !self.has_checkpoint(&info) {
                    info!(watcher = %self.name, base = %base, subfolder = %self.subfolder,
                        "the base model has no ONNX export; only a configured baseline applies");
                    return None;
                }
                Some(Checkpoint {
                    watcher: self.name.clone(),
                    model: info.id,
                    revision: sha,
                    baseline: None,
                    detail: serde_json::Value::Null,
                })
            }
            Err(e) => {
                warn!(watcher = %self.name, base = %base, kind = e.kind, error = %e,
                    "cannot read the base model; only a configured baseline applies");
                None
            }
        }
    }

    /// The files of `repo@rev` to download: (repo path, where it goes
    /// relative to the checkpoint directory, sha256, size).
    async fn files(&self, repo: &str, rev: &str) -> Result<Vec<Wanted>, WatchError> {
        let mut tree_url = self.url(
            ["api", "models"]
                .into_iter()
                .chain(repo.split('/'))
                .chain(["tree", rev])
                .chain(self.subfolder.split('/').filter(|s| !s.is_empty())),
        );
        tree_url.query_pairs_mut().append_pair("recursive", "true");
        let tree: Vec<TreeEntry> = self.get_pages(tree_url).await?;
        // A hostile listing is refused whole, not filtered quietly.
        for entry in &tree {
            Cache::safe_join(Path::new("."), &entry.path)?;
        }
        let mut wanted = Vec::new();
        for entry in tree.into_iter().filter(|e| e.kind == "file") {
            let relative = self.relative(&entry.path).ok_or_else(|| {
                WatchError::new(
                    "malformed",
                    format!(
                        "{repo}@{rev}: the tree of {:?} lists {:?} outside it",
                        self.subfolder, entry.path
                    ),
                )
            })?;
            if self.allowed(relative) {
                wanted.push(Wanted::new(entry.path.clone(), entry));
            }
        }
        // transformers.js-style repos keep the graph in `onnx/` and the
        // configs and tokenizer at the root: bring those next to the graph.
        if !self.subfolder.is_empty() {
            let root_url = self.url(
                ["api", "models"]
                    .into_iter()
                    .chain(repo.split('/'))
                    .chain(["tree", rev]),
            );
            let root: Vec<TreeEntry> = self.get_pages(root_url).await?;
            for entry in root.into_iter().filter(|e| e.kind == "file") {
                Cache::safe_join(Path::new("."), &entry.path)?;
                let name = entry.path.clone();
                let dest = format!("{}/{name}", self.subfolder);
                if !name.contains('/')
                    && !name.contains(".onnx")
                    && self.allowed(&name)
                    && !wanted.iter().any(|w| w.dest == dest)
                {
                    wanted.push(Wanted::new(dest, entry));
                }
            }
        }
        Ok(wanted)
    }
}

/// A file to download.
struct Wanted {
    /// Its path in the repo.
    source: String,
    /// Its path under the checkpoint directory.
    dest: String,
    sha256: Option<String>,
    size: Option<u64>,
}

impl Wanted {
    fn new(dest: String, entry: TreeEntry) -> Wanted {
        let sha256 = entry
            .lfs
            .as_ref()
            .map(|l| l.oid.to_ascii_lowercase())
            .filter(|o| o.len() == 64 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        let size = entry.lfs.as_ref().and_then(|l| l.size).or(entry.size);
        Wanted {
            source: entry.path,
            dest,
            sha256,
            size,
        }
    }
}

#[async_trait]
impl Watcher for HuggingfaceWatcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError> {
        let mut bases = HashMap::new();
        let mut found = Vec::new();
        match &self.source {
            Source::Listing { author, filter } => {
                let mut url = self.url(["api", "models"]);
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(author) = author {
                        q.append_pair("author", author);
                    }
                    if let Some(filter) = filter {
                        q.append_pair("filter", filter);
                    }
                    q.append_pair("full", "true")
                        .append_pair("cardData", "true");
                }
                let listed: Vec<ModelInfo> = self.get_pages(url).await?;
                for info in listed {
                    found.extend(self.checkpoint(info, &mut bases).await);
                }
            }
            Source::Repos(ids) => {
                let mut failures = Vec::new();
                for id in ids {
                    match self.model_info(id).await {
                        Ok(info) => {
                            if !self.has_checkpoint(&info) {
                                warn!(watcher = %self.name, model = %id, subfolder = %self.subfolder,
                                    formats = %self.formats_text(),
                                    "the repo has no checkpoint file of the watched formats that `allow` keeps");
                            }
                            found.extend(self.checkpoint(info, &mut bases).await);
                        }
                        Err(e) => {
                            warn!(watcher = %self.name, model = %id, kind = e.kind, error = %e, "cannot read repo");
                            failures.push(e);
                        }
                    }
                }
                // One unreadable repo must not hide the others; all of them
                // failing means the Hub could not be read.
                if failures.len() == ids.len() {
                    if let Some(first) = failures.into_iter().next() {
                        return Err(first);
                    }
                }
            }
        }
        Ok(found)
    }

    async fn fetch(&self, checkpoint: &Checkpoint, cache: &Cache) -> Result<Target, WatchError> {
        let repo = &checkpoint.model;
        let rev = &checkpoint.revision;
        if !is_repo_id(repo) || !is_commit(rev) {
            return Err(WatchError::new(
                "malformed",
                format!("not a Hub checkpoint: {}", checkpoint.key()),
            ));
        }
        let dir = cache.checkpoint_dir(checkpoint);
        let target = if self.subfolder.is_empty() {
            dir.clone()
        } else {
            Cache::safe_join(&dir, &self.subfolder)?
        };
        if Cache::is_complete(&dir) {
            Cache::touch(&dir);
            return Ok(Target::Onnx { dir: target });
        }

        let files = self.files(repo, rev).await?;
        // Every path is checked before anything is written.
        let mut planned = Vec::with_capacity(files.len());
        for file in &files {
            planned.push((Cache::safe_join(&dir, &file.dest)?, file));
        }
        if !files.iter().any(|f| self.is_checkpoint_file(&f.dest)) {
            return Err(WatchError::new(
                "unsupported",
                format!(
                    "{repo}@{rev} has no checkpoint file of the watched formats ({}) under {:?} matching `allow` ({})",
                    self.formats_text(),
                    if self.subfolder.is_empty() {
                        "/"
                    } else {
                        &self.subfolder
                    },
                    self.allow.join(", ")
                ),
            ));
        }
        let token = self.token()?;
        let mut total = 0;
        for (dest, file) in planned {
            let url = self.url(
                repo.split('/')
                    .chain(["resolve", rev.as_str()])
                    .chain(file.source.split('/')),
            );
            debug!(watcher = %self.name, model = %repo, file = %file.source, "downloading");
            total += cache
                .download(
                    &self.http,
                    DownloadRequest {
                        url: url.as_str(),
                        dest: &dest,
                        sha256: file.sha256.as_deref(),
                        size: file.size,
                        // reqwest drops it when a redirect leaves the Hub.
                        bearer: token.as_deref(),
                    },
                )
                .await?;
        }
        Cache::mark_complete(&dir)?;
        info!(watcher = %self.name, model = %repo, revision = %rev, files = files.len(), bytes = total, "checkpoint fetched");
        Ok(Target::Onnx { dir: target })
    }

    fn webhook(&self, delivery: &Webhook<'_>) -> Result<bool, WatchError> {
        let secret = read_secret(
            self.webhook_secret_env.as_deref(),
            self.webhook_secret_file.as_deref(),
        )?
        .ok_or_else(|| {
            WatchError::new(
                "unauthorized",
                format!("watcher {} has no webhook secret configured", self.name),
            )
        })?;
        let given = (delivery.header)("x-webhook-secret").unwrap_or_default();
        // Hashing first makes the comparison independent of the lengths too.
        let same = sha256(given.as_bytes()).ct_eq(&sha256(secret.as_bytes()));
        if given.is_empty() || !bool::from(same) {
            return Err(WatchError::new(
                "unauthorized",
                "wrong or missing X-Webhook-Secret",
            ));
        }
        let payload: serde_json::Value = serde_json::from_slice(delivery.body)
            .map_err(|e| WatchError::new("malformed", format!("webhook body is not JSON: {e}")))?;
        let str_at = |p: &str| payload.pointer(p).and_then(|v| v.as_str());
        let (Some(scope), Some(repo)) = (str_at("/event/scope"), str_at("/repo/name")) else {
            return Err(WatchError::new(
                "malformed",
                "webhook body lacks event.scope or repo.name",
            ));
        };
        if str_at("/repo/type").is_some_and(|t| t != "model")
            || str_at("/event/action") == Some("delete")
        {
            return Ok(false);
        }
        // Unknown sub-scopes count as updates of their parent (`repo`);
        // config and discussion changes bring no new weights.
        let relevant_scope = (scope == "repo" || scope.starts_with("repo."))
            && scope != "repo.config"
            && !scope.starts_with("repo.config.");
        let watched = match &self.source {
            Source::Repos(ids) => ids.iter().any(|id| id.eq_ignore_ascii_case(repo)),
            Source::Listing {
                author: Some(author),
                ..
            } => repo
                .split_once('/')
                .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(author)),
            // Tags are not in the payload: any model repo may carry the tag.
            Source::Listing { author: None, .. } => true,
        };
        Ok(relevant_scope && watched)
    }
}

/// The Hub names errors in headers (`X-Error-Message`); surface that when
/// the body says nothing.
fn hub_error_body(headers: &HeaderMap, body: String) -> String {
    let message = headers.get("x-error-message").and_then(|v| v.to_str().ok());
    match message {
        Some(m) if body.trim().is_empty() => serde_json::json!({ "message": m }).to_string(),
        _ => body,
    }
}

/// The URL's path and query, for messages (the endpoint is in the config).
fn path_of(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let mut rest = value.to_str().ok()?;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>')?;
            let target = &rest[start + 1..end];
            let params_end = rest[end..].find('<').map_or(rest.len(), |i| end + i);
            let params = &rest[end + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.strip_prefix("rel=")
                    .map(|v| {
                        v.trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                    })
                    .unwrap_or(false)
            });
            if is_next {
                return Some(target.to_string());
            }
            rest = &rest[params_end..];
        }
    }
    None
}

/// How long until a spent quota resets, from `RateLimit: "api";r=0;t=N`
/// (IETF draft-09; several policies may be listed, comma-separated).
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    for value in headers.get_all("ratelimit") {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut remaining = None;
            let mut reset = None;
            for param in item.split(';').skip(1) {
                match param.trim().split_once('=') {
                    Some(("r", v)) => remaining = v.trim().parse::<u64>().ok(),
                    Some(("t", v)) => reset = v.trim().parse::<u64>().ok(),
                    _ => {}
                }
            }
            if let (Some(0), Some(t)) = (remaining, reset) {
                let t = Duration::from_secs(t);
                longest = Some(longest.map_or(t, |l| l.max(t)));
            }
        }
    }
    longest
}

/// `cardData.base_model`: a repo id, or the first of a list (a merge).
fn base_model(card: Option<&serde_json::Value>) -> Option<String> {
    let base = card?.get("base_model")?;
    let id = match base {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Array(list) => list.first()?.as_str()?,
        _ => return None,
    };
    let id = id.trim();
    is_repo_id(id).then(|| id.to_string())
}

/// `name` or `org/name`, with the Hub's characters only (model cards carry
/// junk like local paths).
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        && !id.contains("..")
}

fn is_commit(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `*` matches any run of characters within one path segment, `?` one.
fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && go(p, &s[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn config_problems_name_their_keys() {
        let err =
            HuggingfaceWatcher::from_config("hf", &table("kind = 'huggingface'\nauthr = 'acme'"))
                .err()
                .unwrap();
        // The misspelt key, and then what its absence leaves unset.
        assert!(err[0].starts_with("`watchers.hf.authr`"), "{err:?}");
        assert!(err[1..].iter().all(|e| !e.contains("authr")), "{err:?}");

        let err = HuggingfaceWatcher::from_config(
            "hf",
            &table("models = ['acme/a', 'bad/../x']\nauthor = 'acme'\nsubfolder = '../up'\ntimeout = 'soon'\ntoken_env = 'A'\ntoken_file = '/b'"),
        )
        .err()
        .unwrap();
        for key in ["models", "subfolder", "timeout", "token_file"] {
            assert!(
                err.iter()
                    .any(|e| e.starts_with(&format!("`watchers.hf.{key}`"))),
                "{key}: {err:?}"
            );
        }
        let err = HuggingfaceWatcher::from_config("hf", &table("models = 'acme/a'"))
            .err()
            .unwrap();
        assert!(err[0].starts_with("`watchers.hf.models`"), "{err:?}");

        let w = HuggingfaceWatcher::from_config(
            "hf",
            &table("kind = 'huggingface'\nschedule = '0 * * * * *'\nauthor = 'acme'\nfilter = 'onnx'\nsubfolder = 'onnx/'"),
        )
        .unwrap();
        assert_eq!(w.subfolder, "onnx");
        assert_eq!(w.endpoint.as_str(), "https://huggingface.co/");
    }

    #[test]
    fn link_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                r#"<https://huggingface.co/api/models?cursor=a,b>; rel="prev", <https://huggingface.co/api/models?cursor=xyz>; rel="next""#,
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://huggingface.co/api/models?cursor=xyz")
        );
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(r#"<https://x/?c=1>; rel="prev""#),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn rate_limit_headers() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit", HeaderValue::from_static(r#""api";r=0;t=17"#));
        assert_eq!(rate_limit_reset(&h), Some(Duration::from_secs(17)));
        h.insert("ratelimit", HeaderValue::from_static(r#""api";r=12;t=17"#));
        assert_eq!(rate_limit_reset(&h), None);
    }

    #[test]
    fn base_models_and_globs() {
        let card = serde_json::json!({"base_model": ["acme/base", "other/x"]});
        assert_eq!(base_model(Some(&card)).as_deref(), Some("acme/base"));
        let card = serde_json::json!({"base_model": "/home/me/ckpt"});
        assert_eq!(base_model(Some(&card)), None);
        assert!(glob_match("*.json", "tokenizer.json"));
        assert!(!glob_match("*.json", "sub/tokenizer.json"));
        assert!(glob_match("model.onnx", "model.onnx"));
        assert!(!glob_match("model.onnx", "model.onnx.data"));
        assert!(glob_match("model.onnx?data", "model.onnx_data"));
    }
}
