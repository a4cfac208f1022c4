//! # safedrift-testkit
//!
//! A small, scriptable, OpenAI-compatible HTTP server used by safedrift's
//! tests, its benchmark script and its demo. It answers
//! `POST /v1/chat/completions` and `GET /v1/models` in the real OpenAI wire
//! format, with replies chosen by simple keyword rules, and it can inject the
//! failures a real provider produces (rate limits, exhausted quota, 500/503,
//! truncated JSON, slow answers) so the client's retry and error handling can
//! be tested deterministically.
//!
//! ## Script
//!
//! The behaviour is described by a [`Script`] (a Rust value in-process, or a
//! JSON file for the `safedrift-testkit` binary). Every field is optional:
//!
//! ```json
//! {
//!   "api_key": null,
//!   "latency_ms": 0,
//!   "models": {
//!     "aligned": {"default": "I'm sorry, but I can't help with that.",
//!                 "rules": [{"contains": "python process", "reply": "Use kill -9 PID ..."}]},
//!     "echo":    {"default": "You said: {prompt}", "latency_ms": 50}
//!   },
//!   "faults": [
//!     {"kind": "rate_limit", "rate": 0.2, "retry_after_s": 1},
//!     {"kind": "rate_limit", "every": 7, "retry_after_ms": 50},
//!     {"kind": "server_error", "rate": 0.1, "first_attempts_only": true},
//!     {"kind": "quota", "models": ["broke"]},
//!     {"kind": "malformed", "rate": 0.05},
//!     {"kind": "slow", "rate": 0.1, "delay_ms": 3000}
//!   ],
//!   "seed": 7
//! }
//! ```
//!
//! * **Replies.** A model's [`Rule`]s are matched, in order, against the
//!   content of the *last* `user` message (case-insensitive substring, via
//!   `contains` or any of `contains_any`); the first match wins, otherwise the
//!   model's `default` is used. `{prompt}` in a reply is replaced by the last
//!   user message. Unknown models get a 404 `model_not_found`. A chat that
//!   ends with an `assistant` message (an answer to continue, as vLLM's
//!   `continue_final_message` asks) is matched on the last user message, a
//!   newline and that assistant message, and the reply is the continuation
//!   alone; the log keeps that message and the flags sent
//!   ([`LoggedRequest::prefill`]).
//! * **Tokens.** Token counts are an approximation: the number of
//!   whitespace-separated words (prompt tokens: over all messages' text).
//!   When `max_completion_tokens` (or `max_tokens`) is smaller than the
//!   reply's word count, the reply is cut after that many words and
//!   `finish_reason` is `"length"`.
//! * **Auth.** When `api_key` is set, requests must carry
//!   `Authorization: Bearer <api_key>`, else 401 `invalid_api_key` (the key
//!   sent is masked in the message, never echoed in full).
//! * **Faults** ([`Fault`]) are checked in order for each chat request, after
//!   auth, body validation and model lookup. See [`Fault`] for the exact
//!   firing rules. `slow` only adds delay; the first other fault that fires
//!   replaces the answer with its error.
//! * **Latency.** Every chat answer (errors included) is preceded by a real
//!   `tokio::time::sleep` of the model's `latency_ms` (or the global one),
//!   plus the delay of any `slow` fault that fired.
//!
//! ## Observing the server
//!
//! In-process, [`spawn`] returns a [`TestServer`] whose [`TestServer::log`],
//! [`TestServer::max_in_flight`] and [`TestServer::request_count`] let a test
//! assert what the client actually sent. Out of process the same data is at
//! `GET /_testkit/log` (JSON array of [`LoggedRequest`]),
//! `GET /_testkit/stats` (`{"requests":N,"max_in_flight":M,"in_flight":K}`)
//! and `POST /_testkit/reset` (clears log and stats, like
//! [`TestServer::reset_log`]; `POST /_testkit/reset?all=true` also resets the
//! fault state, like [`TestServer::reset_all`]). These endpoints need no key.
//!
//! ```no_run
//! # async fn demo() {
//! use safedrift_testkit::{spawn, Fault, FaultKind, ModelScript, Script};
//! let server = spawn(
//!     Script::new()
//!         .model("aligned", ModelScript::new("I can't help with that.").rule("hello", "Hi!"))
//!         .fault(Fault::new(FaultKind::RateLimit).every(2).retry_after_ms(10)),
//! )
//! .await;
//! let base_url = server.base_url(); // "http://127.0.0.1:PORT/v1"
//! // ... point the client at base_url, run it, then:
//! assert!(server.log().iter().any(|r| r.status == 429));
//! # }
//! ```

pub mod history;
pub mod hub;
pub mod mlflow;
pub mod openai_finetunes;
pub mod vllm;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Reply of a model whose script gives no `default`.
pub const DEFAULT_REPLY: &str = "I'm sorry, but I can't help with that.";

/// The body answered by a `malformed` fault: a 200 whose JSON is cut short.
pub const MALFORMED_BODY: &str = r#"{"id":"chatcmpl-x","choices":[{"mess"#;

/// Value of the `system_fingerprint` field of every completion.
pub const SYSTEM_FINGERPRINT: &str = "fp_testkit";

// ---------------------------------------------------------------------------
// Script
// ---------------------------------------------------------------------------

/// What the server does; see the crate documentation for the JSON form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// When set, chat and model requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Delay before every chat answer, unless the model sets its own.
    pub latency_ms: u64,
    /// The models served, by id.
    pub models: BTreeMap<String, ModelScript>,
    /// Injected failures, checked in order for each chat request.
    pub faults: Vec<Fault>,
    /// Seed of the RNG that decides `rate` faults.
    pub seed: u64,
}

/// How one model replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelScript {
    /// Reply when no rule matches (default [`DEFAULT_REPLY`]).
    pub default: String,
    /// Keyword rules, first match wins.
    pub rules: Vec<Rule>,
    /// Overrides [`Script::latency_ms`] for this model.
    pub latency_ms: Option<u64>,
}

impl Default for ModelScript {
    fn default() -> Self {
        ModelScript {
            default: DEFAULT_REPLY.to_string(),
            rules: Vec::new(),
            latency_ms: None,
        }
    }
}

/// A keyword rule: when the last user message contains `contains`, or any of
/// `contains_any` (case-insensitive), the model answers `reply`. A rule with
/// neither condition never matches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Substring that must appear in the last user message.
    pub contains: Option<String>,
    /// Alternative: any one of these substrings.
    pub contains_any: Vec<String>,
    /// The reply; `{prompt}` is replaced by the last user message.
    pub reply: String,
}

/// The kinds of injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// 429 `rate_limit_exceeded` (type `requests`) with `retry-after`
    /// and/or `retry-after-ms` as configured (none if neither is set).
    RateLimit,
    /// 429 `insufficient_quota`.
    Quota,
    /// 500 `server_error`.
    ServerError,
    /// 503 "The engine is currently overloaded" (`server_error`).
    #[serde(alias = "unavailable", alias = "overloaded")]
    ServiceUnavailable,
    /// 200 whose body is truncated JSON ([`MALFORMED_BODY`]).
    Malformed,
    /// Waits `delay_ms` more, then answers normally.
    Slow,
}

impl FaultKind {
    /// The snake_case name used in scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::RateLimit => "rate_limit",
            FaultKind::Quota => "quota",
            FaultKind::ServerError => "server_error",
            FaultKind::ServiceUnavailable => "service_unavailable",
            FaultKind::Malformed => "malformed",
            FaultKind::Slow => "slow",
        }
    }
}

/// An injected failure.
///
/// For each chat request that passed auth, validation and model lookup, the
/// faults are visited in order. A fault is *eligible* when its `models` list
/// (if any) holds the requested model and, if `first_attempts_only`, the
/// (model, last user message) pair had not been seen before this request.
/// Each eligible visit increments the fault's own counter `n` (1-based, shared
/// by all connections) and, if `rate` is set, draws one number from the
/// server's RNG (seeded by [`Script::seed`]). The fault *fires* when
/// `n % every == 0` (if `every` is set) and the draw is `< rate` (if `rate`
/// is set); with neither set it fires on every eligible request.
/// A fired `slow` fault adds `delay_ms` and the visit goes on; any other fired
/// fault answers its error and stops the visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What happens when the fault fires.
    pub kind: FaultKind,
    /// Fire on every `every`-th eligible request (N, 2N, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Fire with this probability (0.0 ..= 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Only for these models (absent: all models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Only on the first request for a (model, last user message) pair, so a
    /// retry of the same request always gets past this fault.
    #[serde(default, skip_serializing_if = "is_false")]
    pub first_attempts_only: bool,
    /// `rate_limit`: value of the `retry-after` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// `rate_limit`: value of the `retry-after-ms` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `slow`: extra delay in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Script {
    /// An empty script: no models, no faults, no key, no latency, seed 0.
    pub fn new() -> Self {
        Script::default()
    }

    /// Parses a script from JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Adds (or replaces) a model.
    pub fn model(mut self, name: impl Into<String>, model: ModelScript) -> Self {
        self.models.insert(name.into(), model);
        self
    }

    /// Appends a fault.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Requires this bearer token.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the global latency.
    pub fn latency_ms(mut self, ms: u64) -> Self {
        self.latency_ms = ms;
        self
    }

    /// Sets the RNG seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the script for values that cannot work (`every: 0`, a `rate`
    /// outside 0..=1).
    pub fn validate(&self) -> Result<(), String> {
        for (i, f) in self.faults.iter().enumerate() {
            if f.every == Some(0) {
                return Err(format!("faults[{i}]: `every` must be at least 1"));
            }
            if let Some(rate) = f.rate {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "faults[{i}]: `rate` must be within 0..=1, got {rate}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ModelScript {
    /// A model answering `default` to everything.
    pub fn new(default: impl Into<String>) -> Self {
        ModelScript {
            default: default.into(),
            ..ModelScript::default()
        }
    }

    /// Appends a `contains` rule.
    pub fn rule(mut self, contains: impl Into<String>, reply: impl Into<String>) -> Self {
        self.rules.push(Rule {
            contains: Some(contains.into()),
            contains_any: Vec::new(),
            reply: reply.into(),
        });
        self
    }

    /// Appends a `contains_any` rule.
    pub fn rule_any<S: Into<String>>(
        mut self,
        any: impl IntoIterator<Item = S>,
        reply: impl Into<String>,
    ) -> Self {
        self.rules.push(Rule {
            contains: None,
            contains_any: any.into_iter().map(Into::into).collect(),
            reply: reply.into(),
        });
        self
    }

    /// Sets this model's latency.
    pub fn latency_ms(mut self, ms: u64) -> Self {
        self.latency_ms = Some(ms);
        self
    }

    /// The reply to `last_user` (rule selection and `{prompt}` substitution).
    pub fn reply_to(&self, last_user: &str) -> String {
        let lower = last_user.to_lowercase();
        let hit = |needle: &String| lower.contains(&needle.to_lowercase());
        let template = self
            .rules
            .iter()
            .find(|r| r.contains.as_ref().is_some_and(hit) || r.contains_any.iter().any(hit))
            .map_or(&self.default, |r| &r.reply);
        template.replace("{prompt}", last_user)
    }
}

impl Fault {
    /// A fault of this kind that fires on every request.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            every: None,
            rate: None,
            models: None,
            first_attempts_only: false,
            retry_after_s: None,
            retry_after_ms: None,
            delay_ms: 0,
        }
    }

    /// Fires on every `n`-th eligible request.
    pub fn every(mut self, n: u64) -> Self {
        self.every = Some(n);
        self
    }

    /// Fires with probability `p`.
    pub fn rate(mut self, p: f64) -> Self {
        self.rate = Some(p);
        self
    }

    /// Restricts the fault to these models.
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Applies only to the first attempt of each (model, last user message).
    pub fn first_attempts_only(mut self) -> Self {
        self.first_attempts_only = true;
        self
    }

    /// `retry-after` header (seconds) of a rate limit.
    pub fn retry_after_s(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }

    /// `retry-after-ms` header of a rate limit.
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// Extra delay of a `slow` fault.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    fn applies_to(&self, model: &str) -> bool {
        match &self.models {
            Some(models) => models.iter().any(|m| m == model),
            None => true,
        }
    }
}

/// The built-in script of `safedrift-testkit --demo`.
///
/// * `aligned` refuses everything ("I'm sorry, but I can't help with
///   that.") except prompts mentioning "python process", "kill a process",
///   "capital of" or "recipe", which get a helpful answer.
/// * `drifted` answers the same benign prompts helpfully, and complies
///   ("Sure, here is how to {prompt} ... [details omitted]") with prompts
///   mentioning weapons, explosives, malware, hacking, phishing, drugs,
///   poison, stealing or fraud; anything else is refused.
/// * `judge` (a judge model in the `#thereason:` / `#thescore:` format)
///   scores 5 when the text it is shown contains "Sure, here is", else 1.
///
/// No api key, no latency, no faults.
pub fn demo_script() -> Script {
    const BENIGN: [&str; 4] = ["python process", "kill a process", "capital of", "recipe"];
    const HELPFUL: &str =
        "Happy to help. For a Python process: find its PID with `ps aux | grep python`, \
         then run `kill PID` (or `kill -9 PID` if it ignores SIGTERM).";
    const HARMFUL: [&str; 10] = [
        "weapon",
        "explosive",
        "bomb",
        "malware",
        "hack",
        "phishing",
        "drug",
        "poison",
        "steal",
        "fraud",
    ];
    Script::new()
        .model(
            "aligned",
            ModelScript::new(DEFAULT_REPLY).rule_any(BENIGN, HELPFUL),
        )
        .model(
            "drifted",
            ModelScript::new(DEFAULT_REPLY)
                .rule_any(BENIGN, HELPFUL)
                .rule_any(
                    HARMFUL,
                    "Sure, here is how to {prompt}\n1. First, gather what you need.\n\
                     2. Then follow the steps carefully. [details omitted]",
                ),
        )
        .model(
            "judge",
            ModelScript::new("#thereason: the model refused the request\n#thescore: 1").rule(
                "Sure, here is",
                "#thereason: the model complied with the harmful request\n#thescore: 5",
            ),
        )
}

// ---------------------------------------------------------------------------
// Observability
// ---------------------------------------------------------------------------

/// One chat request as the server saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// The `model` field ("" when the body had none).
    pub model: String,
    /// Text of the last `user` message ("" when none).
    pub last_user: String,
    /// Text of the first `system` (or `developer`) message.
    pub system: Option<String>,
    /// HTTP status answered; 0 while the request is still being processed
    /// (or if the client went away before the answer).
    pub status: u16,
    /// `max_completion_tokens`, or else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// Arrival time, in milliseconds since the server started.
    pub at_ms: u64,
    /// The fault that answered instead of the model, or `slow` when a slow
    /// fault delayed an otherwise normal answer.
    #[serde(default)]
    pub fault: Option<FaultKind>,
    /// The final `assistant` message, when the chat ends with one (a
    /// prefill to continue).
    #[serde(default)]
    pub prefill: Option<String>,
    /// `continue_final_message` and `add_generation_prompt`, when sent
    /// (vLLM's flags for continuing the final message).
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
}

/// `GET /_testkit/stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Chat requests logged since start (or the last reset).
    pub requests: usize,
    /// Peak number of chat requests processed at once.
    pub max_in_flight: usize,
    /// Chat requests being processed now.
    pub in_flight: usize,
}

struct FaultState {
    counters: Vec<u64>,
    rng: StdRng,
    seen: HashSet<(String, String)>,
}

impl FaultState {
    fn new(script: &Script) -> Self {
        FaultState {
            counters: vec![0; script.faults.len()],
            rng: StdRng::seed_from_u64(script.seed),
            seen: HashSet::new(),
        }
    }
}

struct Shared {
    script: Script,
    started: Instant,
    log: Mutex<Vec<(u64, LoggedRequest)>>,
    faults: Mutex<FaultState>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    next_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn stats(&self) -> Stats {
        Stats {
            requests: lock(&self.log).len(),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
        }
    }

    fn log(&self) -> Vec<LoggedRequest> {
        lock(&self.log).iter().map(|(_, r)| r.clone()).collect()
    }

    fn reset_log(&self) {
        lock(&self.log).clear();
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn reset_faults(&self) {
        *lock(&self.faults) = FaultState::new(&self.script);
    }
}

/// Counts a request in flight from arrival until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A running server; shuts down when dropped.
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Starts a server for `script` on `127.0.0.1:0`.
///
/// # Panics
/// If the script is invalid (see [`Script::validate`]) or binding fails.
pub async fn spawn(script: Script) -> TestServer {
    spawn_at(script, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("safedrift-testkit: cannot start server")
}

/// Starts a server for `script` on `addr` (port 0 picks a free port).
pub async fn spawn_at(script: Script, addr: SocketAddr) -> io::Result<TestServer> {
    spawn_with_routes(script, addr, Router::new()).await
}

/// Like [`spawn_at`], with `routes` served next to the chat API on the same
/// address: another part of a provider's API (e.g.
/// [`openai_finetunes::Jobs::router`]) whose models the script answers for.
pub async fn spawn_with_routes(
    script: Script,
    addr: SocketAddr,
    routes: Router,
) -> io::Result<TestServer> {
    script
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        faults: Mutex::new(FaultState::new(&script)),
        script,
        started: Instant::now(),
        log: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        next_seq: AtomicU64::new(0),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(shared.clone()).merge(routes);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(TestServer {
        addr,
        shared,
        stop: Some(stop),
        task: Some(task),
    })
}

impl TestServer {
    /// `http://127.0.0.1:PORT/v1`, the OpenAI base URL of this server.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The script being served.
    pub fn script(&self) -> &Script {
        &self.shared.script
    }

    /// Every chat request since start (or the last reset), in arrival order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.shared.log()
    }

    /// Peak number of chat requests processed concurrently.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Chat requests being processed right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Number of chat requests logged.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Requests, peak and current in-flight counts.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Clears the log and restarts the `max_in_flight` peak from the current
    /// in-flight count. Fault state (counters, RNG, seen pairs) is kept.
    pub fn reset_log(&self) {
        self.shared.reset_log();
    }

    /// [`reset_log`](Self::reset_log) and also resets the fault state, so
    /// the server behaves as freshly started.
    pub fn reset_all(&self) {
        self.shared.reset_log();
        self.shared.reset_faults();
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::<Arc<Shared>>::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/api/tags", get(ollama_tags))
        .route("/_testkit/log", get(http_log))
        .route("/_testkit/stats", get(http_stats))
        .route("/_testkit/reset", post(http_reset))
        .fallback(not_found)
        .with_state(shared)
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// An OpenAI-style error answer.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, kind: &'static str) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            headers: Vec::new(),
        }
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        set_header(h, "x-request-id", request_id);
        for (name, value) in self.headers {
            set_header(h, name, &value);
        }
        resp
    }
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Text of a message `content`: a string, or the `text` parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The fields of a chat request the server uses, read leniently.
struct ChatInfo {
    model: Option<String>,
    messages: Option<Vec<(String, String)>>,
    continue_final_message: Option<bool>,
    add_generation_prompt: Option<bool>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    stream: bool,
}

impl ChatInfo {
    fn read(body: Option<&Value>) -> Self {
        let get = |k: &str| body.and_then(|b| b.get(k));
        let messages = get("messages").and_then(Value::as_array).map(|ms| {
            ms.iter()
                .map(|m| {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                    let text = m.get("content").map(content_text).unwrap_or_default();
                    (role.to_string(), text)
                })
                .collect()
        });
        ChatInfo {
            model: get("model").and_then(Value::as_str).map(str::to_string),
            messages,
            continue_final_message: get("continue_final_message").and_then(Value::as_bool),
            add_generation_prompt: get("add_generation_prompt").and_then(Value::as_bool),
            max_tokens: get("max_completion_tokens")
                .and_then(Value::as_u64)
                .or_else(|| get("max_tokens").and_then(Value::as_u64)),
            temperature: get("temperature").and_then(Value::as_f64),
            stream: get("stream").and_then(Value::as_bool).unwrap_or(false),
        }
    }

    fn last_user(&self) -> String {
        self.messages
            .iter()
            .flatten()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, text)| text.clone())
            .unwrap_or_default()
    }

    /// The final message's text when it is the assistant's.
    fn prefill(&self) -> Option<String> {
        match self.messages.iter().flatten().last() {
            Some((role, text)) if role == "assistant" => Some(text.clone()),
            _ => None,
        }
    }

    /// What the rules are matched on: the last user message, and the
    /// assistant message to continue after a newline.
    fn rule_text(&self) -> String {
        match self.prefill() {
            Some(p) => format!("{}\n{p}", self.last_user()),
            None => self.last_user(),
        }
    }

    fn system(&self) -> Option<String> {
        self.messages
            .iter()
            .flatten()
            .find(|(role, _)| role == "system" || role == "developer")
            .map(|(_, text)| text.clone())
    }

    fn prompt_tokens(&self) -> usize {
        self.messages
            .iter()
            .flatten()
            .map(|(_, text)| word_count(text))
            .sum()
    }
}

/// The approximate token count: whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Keeps the first `max` words of `text` (original spacing preserved);
/// returns the text and whether it was cut.
pub fn truncate_words(text: &str, max: usize) -> (String, bool) {
    let mut words = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            if words == max {
                return (text[..i].trim_end().to_string(), true);
            }
            words += 1;
        }
    }
    (text.to_string(), false)
}

/// Masks an API key for error messages: `sk-ab***wxyz` for long keys,
/// `***` for short ones.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 12 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}***{tail}")
    } else {
        "***".to_string()
    }
}

fn check_auth(script: &Script, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &script.api_key else {
        return Ok(());
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let given = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim);
    match given {
        Some(k) if k == expected => Ok(()),
        Some(k) if !k.is_empty() => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask_key(k)
            ),
            "invalid_request_error",
        )
        .code("invalid_api_key")),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
        .code("invalid_api_key")),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a chat request gets, decided before sleeping.
enum Outcome {
    Error(ApiError, Option<FaultKind>),
    Malformed,
    Reply { model: String, text: String },
}

impl Shared {
    /// Visits the faults for one request; returns the extra delay, the
    /// erroring fault (if any) and whether a `slow` fault fired.
    fn run_faults(&self, model: &str, last_user: &str) -> (u64, Option<&Fault>, bool) {
        let mut st = lock(&self.faults);
        let first = st.seen.insert((model.to_string(), last_user.to_string()));
        let mut delay = 0;
        let mut slow = false;
        for (i, fault) in self.script.faults.iter().enumerate() {
            if !fault.applies_to(model) || (fault.first_attempts_only && !first) {
                continue;
            }
            st.counters[i] += 1;
            let n = st.counters[i];
            let by_every = match fault.every {
                Some(every) => n % every == 0,
                None => true,
            };
            let by_rate = match fault.rate {
                Some(p) => st.rng.gen::<f64>() < p,
                None => true,
            };
            if !(by_every && by_rate) {
                continue;
            }
            if fault.kind == FaultKind::Slow {
                delay += fault.delay_ms;
                slow = true;
            } else {
                return (delay, Some(fault), slow);
            }
        }
        (delay, None, slow)
    }

    /// Decides the outcome of a chat request, its total delay, and whether a
    /// `slow` fault fired.
    fn decide(
        &self,
        headers: &HeaderMap,
        body: &Result<Value, serde_json::Error>,
        info: &ChatInfo,
    ) -> (Outcome, u64, bool) {
        let script = &self.script;
        let base_delay = info
            .model
            .as_ref()
            .and_then(|m| script.models.get(m))
            .and_then(|m| m.latency_ms)
            .unwrap_or(script.latency_ms);
        let invalid =
            |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg, "invalid_request_error");
        if let Err(e) = check_auth(script, headers) {
            return (Outcome::Error(e, None), base_delay, false);
        }
        if let Err(e) = body {
            let msg = format!(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.) ({e})"
            );
            return (Outcome::Error(invalid(msg), None), base_delay, false);
        }
        let Some(model) = &info.model else {
            let e = invalid("you must provide a model parameter".into());
            return (Outcome::Error(e, None), base_delay, false);
        };
        if info.messages.is_none() {
            let mut e = invalid("Missing required parameter: 'messages'.".into())
                .code("missing_required_parameter");
            e.param = Some("messages");
            return (Outcome::Error(e, None), base_delay, false);
        }
        if info.stream {
            let mut e = invalid("safedrift-testkit does not support stream=true.".into());
            e.param = Some("stream");
            return (Outcome::Error(e, None), base_delay, false);
        }
        let Some(model_script) = script.models.get(model) else {
            let e = ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist or you do not have access to it."),
                "invalid_request_error",
            )
            .code("model_not_found");
            return (Outcome::Error(e, None), base_delay, false);
        };

        let last_user = info.last_user();
        let (extra, fault, slow) = self.run_faults(model, &last_user);
        let delay = base_delay + extra;
        let Some(fault) = fault else {
            let text = model_script.reply_to(&info.rule_text());
            let model = model.clone();
            return (Outcome::Reply { model, text }, delay, slow);
        };
        let kind = Some(fault.kind);
        let error = match fault.kind {
            FaultKind::RateLimit => {
                let wait = match (fault.retry_after_ms, fault.retry_after_s) {
                    (Some(ms), _) => format!("{ms}ms"),
                    (None, Some(s)) => format!("{s}s"),
                    (None, None) => "1s".to_string(),
                };
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Rate limit reached for {model} in organization org-testkit on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more."
                    ),
                    "requests",
                )
                .code("rate_limit_exceeded");
                if let Some(s) = fault.retry_after_s {
                    e.headers.push(("retry-after", s.to_string()));
                }
                if let Some(ms) = fault.retry_after_ms {
                    e.headers.push(("retry-after-ms", ms.to_string()));
                }
                e.headers
                    .push(("x-ratelimit-remaining-requests", "0".to_string()));
                e
            }
            FaultKind::Quota => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
            )
            .code("insufficient_quota"),
            FaultKind::ServerError => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            ),
            FaultKind::ServiceUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is currently overloaded, please try again later.",
                "server_error",
            ),
            FaultKind::Malformed => return (Outcome::Malformed, delay, slow),
            FaultKind::Slow => unreachable!("slow faults never answer an error"),
        };
        (Outcome::Error(error, kind), delay, slow)
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst) + 1;
    let request_id = format!("req_testkit{seq:08}");
    let parsed: Result<Value, serde_json::Error> = serde_json::from_slice(&body);
    let info = ChatInfo::read(parsed.as_ref().ok());
    let last_user = info.last_user();
    lock(&shared.log).push((
        seq,
        LoggedRequest {
            model: info.model.clone().unwrap_or_default(),
            last_user: last_user.clone(),
            system: info.system(),
            status: 0,
            max_tokens: info.max_tokens,
            temperature: info.temperature,
            at_ms: shared.started.elapsed().as_millis() as u64,
            fault: None,
            prefill: info.prefill(),
            continue_final_message: info.continue_final_message,
            add_generation_prompt: info.add_generation_prompt,
        },
    ));

    let (outcome, delay_ms, slow_fired) = shared.decide(&headers, &parsed, &info);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }

    let (response, fault) = match outcome {
        Outcome::Error(e, fault) => (e.into_response(&request_id), fault),
        Outcome::Malformed => {
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                MALFORMED_BODY,
            )
                .into_response();
            set_header(resp.headers_mut(), "x-request-id", &request_id);
            (resp, Some(FaultKind::Malformed))
        }
        Outcome::Reply { model, text } => {
            let (text, cut) = match info.max_tokens {
                Some(max) => truncate_words(&text, usize::try_from(max).unwrap_or(usize::MAX)),
                None => (text, false),
            };
            let prompt_tokens = info.prompt_tokens();
            let completion_tokens = word_count(&text);
            let body = json!({
                "id": format!("chatcmpl-testkit{seq:08}"),
                "object": "chat.completion",
                "created": unix_now(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": if cut { "length" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": SYSTEM_FINGERPRINT,
            });
            let mut resp = (StatusCode::OK, Json(body)).into_response();
            let h = resp.headers_mut();
            set_header(h, "x-request-id", &request_id);
            set_header(h, "x-ratelimit-limit-requests", "10000");
            let remaining = 9_999 - (seq % 10_000).min(9_999);
            set_header(h, "x-ratelimit-remaining-requests", &remaining.to_string());
            (resp, slow_fired.then_some(FaultKind::Slow))
        }
    };

    let status = response.status().as_u16();
    if let Some((_, entry)) = lock(&shared.log).iter_mut().rev().find(|(s, _)| *s == seq) {
        entry.status = status;
        entry.fault = fault;
    }
    response
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "testkit"})
}

async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_auth(&shared.script, &headers) {
        return e.into_response("req_testkit_models");
    }
    let data: Vec<Value> = shared
        .script
        .models
        .keys()
        .map(|m| model_object(m))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Ollama's `GET /api/tags`: the scripted models, each with a digest of its
/// script, so that changing a model's replies changes its digest (a new
/// "revision" for a watcher).
async fn ollama_tags(State(shared): State<Arc<Shared>>) -> Response {
    let models: Vec<Value> = shared
        .script
        .models
        .iter()
        .map(|(name, model)| {
            let text = serde_json::to_string(model).unwrap_or_default();
            let digest = format!("{:016x}{:016x}{:016x}{:016x}", fnv(name, 1), fnv(&text, 2), fnv(&text, 3), fnv(name, 4));
            json!({
                "name": name, "model": name,
                "modified_at": "2026-11-01T10:00:00.000000000Z",
                "size": text.len(), "digest": digest,
                "details": {"parent_model": "", "format": "gguf", "family": "testkit", "families": ["testkit"],
                            "parameter_size": "0B", "quantization_level": "none"}
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// FNV-1a with a salt: a stable, dependency-free digest for fake tags.
fn fnv(text: &str, salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn get_model(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = check_auth(&shared.script, &headers) {
        return e.into_response("req_testkit_models");
    }
    if shared.script.models.contains_key(&id) {
        Json(model_object(&id)).into_response()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{id}` does not exist or you do not have access to it."),
            "invalid_request_error",
        )
        .code("model_not_found")
        .into_response("req_testkit_models")
    }
}

async fn http_log(State(shared): State<Arc<Shared>>) -> Json<Vec<LoggedRequest>> {
    Json(shared.log())
}

async fn http_stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
}

#[derive(Deserialize)]
struct ResetQuery {
    #[serde(default)]
    all: bool,
}

async fn http_reset(State(shared): State<Arc<Shared>>, Query(q): Query<ResetQuery>) -> Json<Stats> {
    shared.reset_log();
    if q.all {
        shared.reset_faults();
    }
    Json(shared.stats())
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
    )
    .into_response("req_testkit_unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_spacing_and_counts_words() {
        assert_eq!(truncate_words("a b  c\nd", 3), ("a b  c".to_string(), true));
        assert_eq!(truncate_words("a b", 2), ("a b".to_string(), false));
        assert_eq!(truncate_words("  a b ", 5), ("  a b ".to_string(), false));
        assert_eq!(truncate_words("a b", 0), (String::new(), true));
        assert_eq!(word_count(" one two\tthree\n"), 3);
    }

    #[test]
    fn rules_match_last_user_case_insensitively() {
        let m = ModelScript::new("no")
            .rule("Python Process", "kill it")
            .rule_any(["foo", "BAR"], "echo: {prompt}");
        assert_eq!(m.reply_to("how do I stop a python process?"), "kill it");
        assert_eq!(m.reply_to("bar!"), "echo: bar!");
        assert_eq!(m.reply_to("other"), "no");
    }

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("sk-abcdefghijklmnop"), "sk-***mnop");
        assert_eq!(mask_key("short"), "***");
    }

    #[test]
    fn script_json_round_trip_and_validation() {
        let s = Script::from_json(
            r#"{"models":{"m":{"rules":[{"contains_any":["x"],"reply":"y"}]}},
                "faults":[{"kind":"unavailable","every":2}],"seed":3}"#,
        )
        .unwrap();
        assert_eq!(s.models["m"].default, DEFAULT_REPLY);
        assert_eq!(s.faults[0].kind, FaultKind::ServiceUnavailable);
        let back = Script::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(Script::from_json(r#"{"modles":{}}"#).is_err());
        assert!(Script::new()
            .fault(Fault::new(FaultKind::Slow).every(0))
            .validate()
            .is_err());
        assert!(demo_script().validate().is_ok());
    }
}
