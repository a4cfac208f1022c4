//! A Hugging Face Hub for tests, speaking the Hub's API shapes (hub-docs
//! `api.md`, `huggingface_hub`'s `hf_api.py` and `file_download.py`) for
//! model repos held in memory, and the CDN its LFS downloads redirect to.
//!
//! * `GET /api/models?author=&filter=&search=&full=true&cardData=true`: a
//!   JSON array, `page_size` repos a page, the next page named by
//!   `Link: <...&cursor=N>; rel="next"`.
//! * `GET /api/models/{org}/{name}` (and `/revision/{rev}`): the repo's
//!   info: `id`, `sha`, `cardData.base_model`, `tags` with the derived
//!   `base_model:...` tags, `siblings`, ...
//! * `GET /api/models/{org}/{name}/tree/{rev}[/{path}][?recursive=true]`:
//!   `[{type, path, size, oid, lfs: {oid, size, pointerSize}}]`.
//! * `GET|HEAD /{org}/{name}/resolve/{rev}/{path}`: a small file is served
//!   with `ETag` (its oid) and `X-Repo-Commit`; an LFS file (`*.onnx`,
//!   `*.onnx_data`, `*.safetensors`, ...) is a 302 to a presigned CDN URL on
//!   another origin, with `X-Linked-Etag` (its sha256) and `X-Linked-Size`.
//!   The CDN honours `Range` and, like a presigned S3 URL, answers 400 to a
//!   request that also carries an `Authorization` header.
//! * Errors as the Hub gives them: `X-Error-Code` (`RepoNotFound`,
//!   `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message` headers;
//!   with a token configured, a request without it (or with another) is
//!   answered 401 like a private repo.
//!
//! A repo's commit sha is derived from its files; git blob oids are
//! stand-ins (40 hex digits of the content's sha256), LFS oids are the real
//! sha256.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::task::JoinHandle;

/// One model repo at its current commit.
#[derive(Clone, Debug)]
pub struct HubRepo {
    /// `org/name`.
    pub id: String,
    /// The model card's `base_model`.
    pub base_model: Option<String>,
    /// Extra tags (the Hub adds `base_model:...` ones itself).
    pub tags: Vec<String>,
    /// (path in the repo, content), sorted by path.
    pub files: Vec<(String, Bytes)>,
}

impl HubRepo {
    pub fn new(id: &str) -> HubRepo {
        HubRepo {
            id: id.to_string(),
            base_model: None,
            tags: Vec::new(),
            files: vec![(
                ".gitattributes".into(),
                Bytes::from_static(b"*.onnx filter=lfs diff=lfs merge=lfs -text\n*.onnx_data filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"),
            )],
        }
    }

    /// Sets the model card's `base_model`.
    pub fn base_model(mut self, id: &str) -> HubRepo {
        self.base_model = Some(id.to_string());
        self
    }

    pub fn tag(mut self, tag: &str) -> HubRepo {
        self.tags.push(tag.to_string());
        self
    }

    /// Adds (or replaces) one file.
    pub fn file(mut self, path: &str, content: impl Into<Bytes>) -> HubRepo {
        self.files.retain(|(p, _)| p != path);
        self.files.push((path.to_string(), content.into()));
        self.files.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }

    /// Adds every file of the local directory `dir` (not recursive) under
    /// `prefix` (`""` for the repo root), except those `skip` returns true for.
    pub fn files_from(mut self, dir: &Path, prefix: &str, skip: impl Fn(&str) -> bool) -> HubRepo {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if skip(&name) {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{}/{name}", prefix.trim_end_matches('/'))
            };
            let content = std::fs::read(entry.path()).unwrap();
            self = self.file(&path, content);
        }
        self
    }

    /// The commit sha: 40 hex digits derived from the files.
    pub fn sha(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.id.as_bytes());
        for (path, content) in &self.files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(sha2::Sha256::digest(content));
        }
        hex::encode(h.finalize())[..40].to_string()
    }

    fn author(&self) -> &str {
        self.id.split('/').next().unwrap_or_default()
    }

    fn all_tags(&self) -> Vec<String> {
        let mut tags = vec!["onnx".to_string(), "text-generation".to_string()];
        if let Some(base) = &self.base_model {
            tags.push(format!("base_model:{base}"));
            tags.push(format!("base_model:finetune:{base}"));
        }
        tags.extend(self.tags.iter().cloned());
        tags
    }

    fn info(&self) -> Value {
        let sha = self.sha();
        let card = match &self.base_model {
            Some(base) => {
                json!({"base_model": base, "license": "apache-2.0", "library_name": "transformers.js"})
            }
            None => json!({"license": "apache-2.0", "library_name": "transformers.js"}),
        };
        json!({
            "_id": format!("66{}", &sha[..22]),
            "id": self.id,
            "modelId": self.id,
            "author": self.author(),
            "sha": sha,
            "lastModified": "2026-11-20T10:12:03.000Z",
            "createdAt": "2026-11-19T08:00:00.000Z",
            "private": false,
            "gated": false,
            "disabled": false,
            "downloads": 12,
            "likes": 0,
            "tags": self.all_tags(),
            "pipeline_tag": "text-generation",
            "library_name": "transformers.js",
            "cardData": card,
            "siblings": self.files.iter().map(|(p, _)| json!({"rfilename": p})).collect::<Vec<_>>(),
            "spaces": [],
        })
    }
}

/// Whether the Hub keeps `path` in LFS (per the repo's `.gitattributes`).
fn is_lfs(path: &str) -> bool {
    [".onnx", ".onnx_data", ".onnx.data", ".safetensors", ".bin"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One request either server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `hub` or `cdn`.
    pub server: &'static str,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

struct HubState {
    repos: Mutex<Vec<HubRepo>>,
    token: Option<String>,
    page_size: usize,
    hub: SocketAddr,
    cdn: SocketAddr,
    seen: Mutex<Vec<Seen>>,
}

/// The running Hub and CDN; both stop when it is dropped.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`, the watcher's `endpoint`.
    pub endpoint: String,
    state: Arc<HubState>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeHub {
    /// Serves `repos`; with `token`, every Hub request must carry
    /// `Authorization: Bearer <token>`. Listings give `page_size` repos a page.
    pub async fn start(repos: Vec<HubRepo>, token: Option<&str>, page_size: usize) -> FakeHub {
        let hub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(HubState {
            repos: Mutex::new(repos),
            token: token.map(str::to_string),
            page_size: page_size.max(1),
            hub: hub.local_addr().unwrap(),
            cdn: cdn.local_addr().unwrap(),
            seen: Mutex::new(Vec::new()),
        });
        let hub_app = Router::new()
            .fallback(hub_handler)
            .with_state(state.clone());
        let cdn_app = Router::new()
            .fallback(cdn_handler)
            .with_state(state.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(hub, hub_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(cdn, cdn_app).await;
            }),
        ];
        FakeHub {
            endpoint: format!("http://{}", state.hub),
            state,
            tasks,
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests to `server` (`hub` or `cdn`) whose path starts with `prefix`.
    pub fn count(&self, server: &str, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.server == server && r.uri.starts_with(prefix))
            .count()
    }

    /// The commit sha `id` is at now.
    pub fn sha(&self, id: &str) -> String {
        self.repo(id).expect("a repo of the fake Hub").sha()
    }

    /// Adds a repo, or replaces it (a new commit).
    pub fn push(&self, repo: HubRepo) {
        let mut repos = self.state.repos.lock().unwrap();
        repos.retain(|r| r.id != repo.id);
        repos.push(repo);
    }

    fn repo(&self, id: &str) -> Option<HubRepo> {
        self.state
            .repos
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn record(state: &HubState, server: &'static str, method: &Method, uri: &Uri, headers: &HeaderMap) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.seen.lock().unwrap().push(Seen {
        server,
        method: method.to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: h("authorization"),
        range: h("range"),
    });
}

fn hub_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-error-code", code.to_string()),
            ("x-error-message", message.to_string()),
            ("content-type", "application/json".to_string()),
        ],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn hub_handler(
    State(state): State<Arc<HubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&state, "hub", &method, &uri, &headers);
    if let Some(token) = &state.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if g == token => {}
            Some(_) => {
                return hub_error(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Invalid credentials in Authorization header",
                )
            }
            None => {
                return hub_error(
                    StatusCode::UNAUTHORIZED,
                    "RepoNotFound",
                    "Repository not found",
                )
            }
        }
    }
    let segments: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["api", "models"] => list_models(&state, &uri),
        ["api", "models", org, name] => model_info(&state, &format!("{org}/{name}"), None),
        ["api", "models", org, name, "revision", rev] => {
            model_info(&state, &format!("{org}/{name}"), Some(rev))
        }
        ["api", "models", org, name, "tree", rev, rest @ ..] => {
            let recursive = query_pairs(&uri)
                .iter()
                .any(|(k, v)| k == "recursive" && (v == "true" || v == "1"));
            tree(
                &state,
                &format!("{org}/{name}"),
                rev,
                &rest.join("/"),
                recursive,
            )
        }
        [org, name, "resolve", rev, rest @ ..] if !rest.is_empty() => {
            resolve(&state, &format!("{org}/{name}"), rev, &rest.join("/"))
        }
        _ => hub_error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!(
                "Sorry, we can't find the page you are looking for: {}",
                uri.path()
            ),
        ),
    }
}

fn find(state: &HubState, id: &str) -> Option<HubRepo> {
    state
        .repos
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.id == id)
        .cloned()
}

fn at_revision(state: &HubState, id: &str, rev: Option<&str>) -> Result<HubRepo, Box<Response>> {
    let repo = find(state, id).ok_or_else(|| {
        Box::new(hub_error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        ))
    })?;
    match rev {
        None | Some("main") => Ok(repo),
        Some(rev) if rev == repo.sha() => Ok(repo),
        Some(rev) => Err(Box::new(hub_error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        ))),
    }
}

fn list_models(state: &HubState, uri: &Uri) -> Response {
    let pairs = query_pairs(uri);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let author = get("author");
    let filter = get("filter");
    let search = get("search");
    let cursor: usize = get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut repos: Vec<HubRepo> = state
        .repos
        .lock()
        .unwrap()
        .iter()
        .filter(|r| author.as_deref().is_none_or(|a| r.author() == a))
        .filter(|r| {
            filter
                .as_deref()
                .is_none_or(|f| r.all_tags().iter().any(|t| t == f))
        })
        .filter(|r| search.as_deref().is_none_or(|s| r.id.contains(s)))
        .cloned()
        .collect();
    repos.sort_by(|a, b| a.id.cmp(&b.id));
    let page: Vec<Value> = repos
        .iter()
        .skip(cursor)
        .take(state.page_size)
        .map(|r| {
            let mut info = r.info();
            if get("full").as_deref() != Some("true") {
                // Without full=true the Hub leaves out siblings and the sha.
                info.as_object_mut().unwrap().remove("siblings");
                info.as_object_mut().unwrap().remove("sha");
            }
            if get("cardData").as_deref() != Some("true") {
                info.as_object_mut().unwrap().remove("cardData");
            }
            info
        })
        .collect();
    let mut response = Json(page).into_response();
    let next = cursor + state.page_size;
    if next < repos.len() {
        let mut rest: Vec<(String, String)> =
            pairs.into_iter().filter(|(k, _)| k != "cursor").collect();
        rest.push(("cursor".into(), next.to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(rest)
            .finish();
        let link = format!("<http://{}/api/models?{query}>; rel=\"next\"", state.hub);
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

fn model_info(state: &HubState, id: &str, rev: Option<&str>) -> Response {
    match at_revision(state, id, rev) {
        Ok(repo) => Json(repo.info()).into_response(),
        Err(r) => *r,
    }
}

fn entry(path: &str, content: &Bytes) -> Value {
    let oid = &sha256_hex(content)[..40];
    if is_lfs(path) {
        json!({"type": "file", "oid": oid, "size": content.len(), "path": path,
               "lfs": {"oid": sha256_hex(content), "size": content.len(), "pointerSize": 134}})
    } else {
        json!({"type": "file", "oid": oid, "size": content.len(), "path": path})
    }
}

fn tree(state: &HubState, id: &str, rev: &str, dir: &str, recursive: bool) -> Response {
    let repo = match at_revision(state, id, Some(rev)) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let dir = dir.trim_matches('/');
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut out = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, content) in &repo.files {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((sub, _)) => {
                dirs.insert(format!("{prefix}{sub}"));
                if recursive {
                    out.push(entry(path, content));
                }
            }
            None => out.push(entry(path, content)),
        }
    }
    if out.is_empty() && dirs.is_empty() && !dir.is_empty() {
        return hub_error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{dir} does not exist on \"{rev}\""),
        );
    }
    for d in dirs {
        let oid = &sha256_hex(d.as_bytes())[..40];
        out.push(json!({"type": "directory", "oid": oid, "size": 0, "path": d}));
    }
    Json(out).into_response()
}

fn resolve(state: &HubState, id: &str, rev: &str, path: &str) -> Response {
    let repo = match at_revision(state, id, Some(rev)) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let sha = repo.sha();
    let Some((_, content)) = repo.files.iter().find(|(p, _)| p == path) else {
        return hub_error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{path} does not exist on \"{rev}\""),
        );
    };
    if is_lfs(path) {
        let oid = sha256_hex(content);
        let location = format!(
            "http://{}/repos/{}/{}/{oid}?response-content-disposition=attachment&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=5f1b2c",
            state.cdn,
            &oid[..2],
            &oid[2..4]
        );
        return (
            StatusCode::FOUND,
            [
                ("location", location),
                ("x-repo-commit", sha),
                ("x-linked-etag", format!("\"{oid}\"")),
                ("x-linked-size", content.len().to_string()),
                ("etag", format!("\"{}\"", &oid[..40])),
                ("content-type", "text/plain; charset=utf-8".to_string()),
            ],
            format!("Found. Redirecting to http://{}/repos/...", state.cdn),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            ("x-repo-commit", sha),
            ("etag", format!("\"{}\"", &sha256_hex(content)[..40])),
            ("content-type", "application/octet-stream".to_string()),
        ],
        content.clone(),
    )
        .into_response()
}

async fn cdn_handler(
    State(state): State<Arc<HubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&state, "cdn", &method, &uri, &headers);
    if headers.contains_key("authorization") {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified</Message></Error>",
        )
            .into_response();
    }
    let oid = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let content = state.repos.lock().unwrap().iter().find_map(|r| {
        r.files
            .iter()
            .find(|(p, c)| is_lfs(p) && sha256_hex(c) == oid)
            .map(|(_, c)| c.clone())
    });
    let Some(content) = content else {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response();
    };
    let etag = format!("\"{oid}\"");
    let start = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(start) if start < content.len() => (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    "content-range",
                    format!("bytes {start}-{}/{}", content.len() - 1, content.len()),
                ),
                ("etag", etag),
                ("accept-ranges", "bytes".to_string()),
            ],
            content.slice(start..),
        )
            .into_response(),
        _ => (
            StatusCode::OK,
            [("etag", etag), ("accept-ranges", "bytes".to_string())],
            content,
        )
            .into_response(),
    }
}
