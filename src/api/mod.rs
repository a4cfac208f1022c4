//! The HTTP API (`/api/v1`), `/healthz`, `/metrics` and the dashboard.
//!
//! [`app`] builds the whole router from an [`Api`]: the daemon mounts it on
//! its listener (next to the registry webhooks), the tests call it directly.
//!
//! Security:
//! - With `[api] token_file` or `token_env` set, every `/api/v1` route, the
//!   dashboard's fragments (`/ui/*`) and `/metrics` need
//!   `Authorization: Bearer <token>`. The token is compared in constant time
//!   (both sides are hashed first, so not even its length leaks). A missing
//!   or wrong token gets a bare 401. `/healthz` and the dashboard's page
//!   shell (`/`, which asks for the token and keeps it in the browser's
//!   session storage) need none; the registry webhooks check their own
//!   secrets.
//! - Request bodies are limited (`[api] max_body_bytes`), every request has
//!   a deadline (`[api] request_timeout`) and at most `[api] max_concurrency`
//!   requests are handled at once (the rest wait).
//! - CORS is off unless `[api] cors_origins` lists origins.
//! - A request whose `Host` is not the listen address, a loopback name,
//!   the host of `public_url` or one of `[api] allowed_hosts` gets 421: a
//!   page that rebinds its own name to this address cannot use the API.
//! - What a queued evaluation may name is checked by [`boundary`].
//! - Every error is JSON (`{"error": "...", "kind": "..."}`) and says what
//!   was wrong with the request, never how the server is built.

pub mod boundary;
pub mod cache;
pub mod dashboard;
pub mod evaluations;
pub mod models;
pub mod openapi;
pub mod request;
pub mod runs;
pub mod telemetry;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiConfig, Config};
use crate::store::{Store, StoreError};

/// What the daemon shares with the API: live progress, health, and a way to
/// wake the evaluator when an evaluation is queued.
pub trait DaemonLink: Send + Sync {
    /// Progress of a run being evaluated right now.
    fn progress(&self, run_id: &str) -> Option<Progress>;
    /// Whether the daemon is healthy, and each component's state.
    fn health(&self) -> (bool, serde_json::Value);
    /// An evaluation was queued through the API.
    fn queued(&self);
    /// The config in force now (reloaded on SIGHUP) and the daemon's
    /// resolver over it (shared: a local judge is loaded once, not per
    /// request).
    fn live(&self) -> (Arc<Config>, Arc<crate::resolve::Resolver>);
}

/// A running run's progress.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Prompts answered and judged.
    pub done: u64,
    pub total: u64,
    /// Prompts per second, recently.
    pub rate: f64,
    /// Seconds until done at that rate (null while unknown).
    pub eta_seconds: Option<f64>,
}

/// Everything the API needs.
pub struct Api {
    pub store: Store,
    /// Documents of completed runs, never stale (see [`cache`]).
    pub docs: cache::DocCache,
    /// The daemon's evaluation queue, over `store`.
    pub queue: crate::queue::Queue,
    /// The config the API started with: its `[api]` settings (listen
    /// address, token, limits) hold until a restart. What requests are
    /// checked and compared against follows SIGHUP ([`Api::live`]).
    pub config: Arc<Config>,
    /// SHA-256 of the bearer token; `None` when no token is configured.
    pub token: Option<[u8; 32]>,
    pub link: Option<Arc<dyn DaemonLink>>,
    /// The resolver over `config` when no daemon is linked (built once).
    resolver: std::sync::OnceLock<Arc<crate::resolve::Resolver>>,
}

impl Api {
    /// An API over a store, with the token the config names (an unreadable
    /// or empty token is an error: the API never opens up by accident).
    pub fn new(store: Store, config: Arc<Config>) -> Result<Api, String> {
        let token = load_token(&config.api)?.map(|t| digest(t.as_bytes()));
        Ok(Api::with_token(store, config, token))
    }

    /// An API over a store with a token already read (its SHA-256).
    pub fn with_token(store: Store, config: Arc<Config>, token: Option<[u8; 32]>) -> Api {
        Api {
            docs: cache::DocCache::new(&store),
            queue: crate::queue::Queue::new(&store),
            store,
            config,
            token,
            link: None,
            resolver: std::sync::OnceLock::new(),
        }
    }

    /// The config requests are checked and compared against, and its
    /// resolver: the daemon's current ones when linked to a daemon.
    pub fn live(&self) -> (Arc<Config>, Arc<crate::resolve::Resolver>) {
        match &self.link {
            Some(link) => link.live(),
            None => {
                let resolver = self.resolver.get_or_init(|| {
                    Arc::new(crate::resolve::Resolver::new(
                        (*self.config).clone(),
                        None,
                        None,
                        self.config.eval.concurrency,
                    ))
                });
                (self.config.clone(), resolver.clone())
            }
        }
    }

    pub fn with_link(mut self, link: Arc<dyn DaemonLink>) -> Api {
        self.link = Some(link);
        self
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The configured token: `token_file` (trailing newline trimmed) else the
/// variable `token_env` names. `Ok(None)` when neither is set.
pub fn load_token(api: &ApiConfig) -> Result<Option<String>, String> {
    let token = if let Some(path) = &api.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("`api.token_file`: cannot read {}: {e}", path.display()))?;
        Some((text.trim().to_string(), "`api.token_file`"))
    } else if let Some(var) = &api.token_env {
        let value = std::env::var(var)
            .map_err(|_| format!("`api.token_env`: the environment variable {var} is not set"))?;
        Some((value.trim().to_string(), "`api.token_env`"))
    } else {
        None
    };
    match token {
        Some((t, key)) if t.is_empty() => Err(format!("{key}: the token is empty")),
        Some((t, _)) => Ok(Some(t)),
        None => Ok(None),
    }
}

pub(crate) type Shared = Arc<Api>;

/// An error answer: JSON with a message meant for the caller and a stable
/// machine-readable kind.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub field: Option<String>,
}

/// The error document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: `not_found`, `bad_request`,
    /// `invalid_field`, `unauthorized`, `queue_full`, `internal`, ...
    pub kind: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            field: None,
        }
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_field",
            message: format!("`{field}`: {}", message.into()),
            field: Some(field.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::BadCursor => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "`cursor`: not a cursor this listing gave out; start again without it",
            ),
            StoreError::RunNotFound(id) => ApiError::not_found(format!("no run {id}")),
            other => {
                // The details go to the log, not to the caller.
                tracing::error!(error = %other, "store error while answering a request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store could not be read; see the daemon's log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            kind: self.kind.to_string(),
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Maps an extractor's rejection (bad query, bad JSON) to a JSON 400/413/415.
pub(crate) fn rejection(status: StatusCode, text: String) -> ApiError {
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_field",
        _ => "bad_request",
    };
    let status = if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, kind, text)
}

/// Checks the bearer token of every request it wraps.
async fn require_token(State(api): State<Shared>, request: Request, next: Next) -> Response {
    let Some(expected) = api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let ok = given.is_some_and(|t| bool::from(digest(t.as_bytes()).ct_eq(&expected)));
    if ok {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(ErrorBody {
                error: "unauthorized".into(),
                kind: "unauthorized".into(),
                field: None,
            }),
        )
            .into_response()
    }
}

/// Turns the bare error answers of the middleware (408 timeout, 413 body
/// limit, 405, ...) into the JSON error shape.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let kind = match status {
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        let mut answer = ApiError::new(
            status,
            kind,
            status.canonical_reason().unwrap_or("error").to_lowercase(),
        )
        .into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            answer.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return answer;
    }
    response
}

/// The host names a request may carry in `Host` (lowercase, no port).
#[derive(Clone, Debug)]
pub struct HostAllowlist(Arc<Vec<String>>);

impl HostAllowlist {
    /// The listen address, `localhost`, `127.0.0.1`, `::1`, the host of
    /// `public_url` and `allowed_hosts`.
    pub fn new(api: &ApiConfig) -> HostAllowlist {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        if let Ok(addr) = api.listen.parse::<std::net::SocketAddr>() {
            hosts.push(addr.ip().to_string());
        }
        if let Some(host) = api
            .public_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_string))
        {
            hosts.push(normalize_host(&host));
        }
        hosts.extend(api.allowed_hosts.iter().map(|h| normalize_host(h)));
        HostAllowlist(Arc::new(hosts))
    }

    /// Whether a `Host` header's value (`name[:port]`, `[v6][:port]`) is
    /// allowed.
    pub fn allows(&self, value: &str) -> bool {
        let Ok(authority) = value.parse::<axum::http::uri::Authority>() else {
            return false;
        };
        if authority.as_str() != value || value.contains('@') {
            return false;
        }
        let host = normalize_host(authority.host());
        self.0.contains(&host)
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Refuses requests for a host this server does not answer to (421). A
/// request without `Host` (HTTP/1.0, tests) is let through: browsers
/// always send one.
async fn check_host(State(hosts): State<HostAllowlist>, request: Request, next: Next) -> Response {
    let host = match request.headers().get(header::HOST) {
        Some(v) => Some(v.to_str().unwrap_or("\u{0}").to_string()),
        None => request.uri().authority().map(|a| a.as_str().to_string()),
    };
    match host {
        Some(h) if !hosts.allows(&h) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
            "this server does not answer to that host name (see `api.allowed_hosts`)",
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Wraps a router in the `Host` check of `[api]`.
pub fn guard_hosts(router: Router, api: &ApiConfig) -> Router {
    router.layer(middleware::from_fn_with_state(
        HostAllowlist::new(api),
        check_host,
    ))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The whole HTTP surface: `/api/v1`, `/healthz`, `/metrics`, the dashboard.
pub fn app(api: Api) -> Router {
    let settings = api.config.api.clone();
    let api: Shared = Arc::new(api);
    let v1 = Router::new()
        .route("/models", get(models::list_models))
        .route("/models/{name}/timeline", get(models::timeline))
        .route("/lineages", get(models::lineages::list_lineages))
        .route("/checkpoints", get(models::list_checkpoints))
        .route("/quarantine", get(models::list_quarantine))
        .route("/runs", get(runs::list_runs))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/progress", get(runs::get_progress))
        .route("/runs/{id}/results", get(runs::list_results))
        .route("/alerts", get(runs::list_alerts))
        .route("/alerts/{id}", get(runs::get_alert))
        .route(
            "/evaluations",
            axum::routing::post(evaluations::create_evaluation),
        )
        .route("/evaluations/{id}", get(evaluations::get_evaluation))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found);
    // `layer`, not `route_layer`: unknown /api/v1 paths need the token too
    // (a 404 would tell a stranger which routes exist).
    let auth = middleware::from_fn_with_state(api.clone(), require_token);
    let protected = Router::new()
        .nest(
            "/api/v1",
            v1.layer(auth.clone()).layer(middleware::from_fn_with_state(
                api.clone(),
                dashboard::api_in_browser,
            )),
        )
        .nest("/ui", dashboard::fragments().layer(auth.clone()))
        .route("/metrics", get(telemetry::render).layer(auth));
    let mut router = Router::new()
        .merge(protected)
        .route("/healthz", get(healthz))
        .merge(dashboard::pages())
        .fallback(not_found)
        .with_state(api);
    if !settings.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = settings
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        router = router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    guard_hosts(router, &settings)
        .layer(middleware::from_fn(json_errors))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout(),
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            settings.max_body_bytes,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            settings.max_concurrency.max(1),
        ))
}

/// `/healthz`: each component's state (the daemon's view when it runs,
/// else the store's alone). 200 when healthy, 503 otherwise.
async fn healthz(State(api): State<Shared>) -> Response {
    let (ok, doc) = match &api.link {
        Some(link) => link.health(),
        None => {
            let store_ok = api.store.ping().is_ok();
            (
                store_ok,
                serde_json::json!({
                    "status": if store_ok { "ok" } else { "failing" },
                    "store": if store_ok { "ok" } else { "failing" },
                }),
            )
        }
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(doc)).into_response()
}

/// Default and maximum page sizes.
pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 500;

pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::invalid("limit", "must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::invalid("limit", format!("at most {MAX_LIMIT}"))),
        Some(n) => Ok(n),
    }
}

/// Runs a blocking store read off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; see the daemon's log",
        )
    })?
}
