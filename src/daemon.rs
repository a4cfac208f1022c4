//! `safedrift run`: the long-running daemon.
//!
//! - Watchers are polled on their cron schedules (tokio-cron-scheduler,
//!   seconds field), when their registry's webhook arrives, and when they
//!   raise their own wake signal (inotify). A failing registry is backed off
//!   with jitter; its state changes are logged once each and shown by
//!   `/healthz`.
//! - What a poll finds goes into the durable queue in the store, keyed by
//!   (watcher, model, revision, evaluation plan): inserted once, so a
//!   checkpoint announced twice, or again after a restart, is evaluated once.
//! - Queued checkpoints run in lanes, one per backend (a `[backends.NAME]`
//!   entry, the local ONNX runtime, an OpenAI-compatible endpoint), each with
//!   its own `max_parallel`: a slow local evaluation never holds back the
//!   API-served checkpoints queued behind it. Within a lane the oldest due
//!   checkpoint starts first; a checkpoint never runs twice at once. Each
//!   evaluation fetches its checkpoint, resolves its baseline (configured, or
//!   named by the registry), reuses the baseline's completed run when the
//!   plan is unchanged (one evaluation per run identity at a time, so two
//!   lanes never evaluate a shared baseline twice), evaluates, decides drift
//!   and hands the run to the alert hook. A failed attempt is recorded and
//!   retried with backoff; a crash resumes the run where it stopped.
//! - SIGTERM/SIGINT stop at a prompt boundary with progress saved; SIGHUP
//!   reloads the config (an invalid one is rejected and the old one kept);
//!   systemd hears READY, WATCHDOG (only while healthy) and STOPPING.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use safedrift_judges::Judge;
use safedrift_watchers::{Baseline, Cache, Checkpoint, Target, Watcher, Webhook};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::Decoding;
use crate::benchmark::Benchmark;
use crate::config::{self, BackendConfig, Config, LaneMode, Source, WatcherConfig};
use crate::pipeline::{self, EvalError, Job};
use crate::queue::{self, Queue};
use crate::report::Run;
use crate::resolve::Resolver;
use crate::store::{CheckpointRecord, CheckpointStatus, ModelRef, RunRecord, Store, Template};
use crate::watchers;

/// Why the daemon could not start (exit 2) or stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonError(pub String);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How a watcher's checkpoints are evaluated.
struct Plan {
    benchmarks: Arc<Vec<Benchmark>>,
    judge: Arc<dyn Judge>,
    judge_spec: String,
    template: Template,
    decoding: Decoding,
    /// Digest of the above: part of each queued checkpoint's key.
    key: String,
    /// `[backends.NAME]` whose ONNX settings local checkpoints use.
    backend: Option<String>,
    /// A configured baseline SPEC (wins over what the registry names).
    baseline: Option<String>,
    /// At most this many prompts per benchmark (API evaluations only).
    limit: Option<usize>,
    /// The audit of a local classifier judge against its teacher.
    audit: Option<pipeline::AuditPlan>,
}

/// The plan of an evaluation queued through the API: its request over the
/// config's defaults (the same as `eval`'s).
fn api_plan(
    config: &Config,
    resolver: &Resolver,
    request: &crate::api::evaluations::EvaluationRequest,
    model_template: Option<String>,
) -> Result<Plan, String> {
    let mut benchmarks = Vec::new();
    for spec in request.benchmark_specs() {
        benchmarks.push(
            resolver
                .benchmark(&spec)
                .map_err(|e| format!("benchmark {spec}: {}", e.public_message()))?,
        );
    }
    let judge_spec = request.judge_spec();
    let judge = resolver
        .judge(&judge_spec)
        .map_err(|e| format!("judge {judge_spec}: {}", e.public_message()))?;
    let template_name = request
        .template
        .clone()
        .or(model_template)
        .unwrap_or_else(|| "default".into());
    let template = resolver
        .template(&template_name)
        .map_err(|_| format!("template {template_name}: not in the config"))?;
    let decoding = Decoding {
        max_new_tokens: config.eval.max_new_tokens,
        temperature: config.eval.temperature,
        top_p: config.eval.top_p,
        seed: config.eval.seed,
    };
    let key = plan_key(&benchmarks, judge.as_ref(), &template, &decoding);
    let audit = resolver
        .audit(&judge_spec)
        .map_err(|e| format!("judge {judge_spec}: {}", e.public_message()))?;
    Ok(Plan {
        benchmarks: Arc::new(benchmarks),
        judge,
        judge_spec,
        template,
        decoding,
        key,
        backend: request.backend.clone(),
        baseline: request.baseline.clone(),
        limit: request.limit,
        audit,
    })
}

/// A configured watcher with its plan and poll state.
struct WatcherSlot {
    name: String,
    kind: String,
    schedule: String,
    watcher: Arc<dyn Watcher>,
    plan: Arc<Plan>,
    trigger: Arc<Notify>,
    /// Where its checkpoints are evaluated.
    lane: Lane,
}

/// A lane of evaluations: those that run on one backend, at most
/// `max_parallel` of them at once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lane {
    name: String,
    max_parallel: usize,
}

/// The one lane of `[eval] lanes = "single"`.
const SINGLE_LANE: &str = "all";
/// Local ONNX models run without a `[backends.NAME]` entry of their own.
const LOCAL_LANE: &str = "onnx";
/// A checkpoint whose lane cannot be known (its watcher is gone, its
/// request unreadable): its evaluation fails at once and is retried.
const UNKNOWN_LANE: &str = "unassigned";

/// The lane of the `[backends.NAME]` entry, if there is one.
fn backend_lane(config: &Config, name: &str) -> Option<Lane> {
    let max_parallel = match config.backends.get(name)? {
        BackendConfig::Onnx(o) => o.max_parallel.unwrap_or(config.eval.max_parallel.onnx),
        BackendConfig::Openai(o) => o.max_parallel.unwrap_or(config.eval.max_parallel.openai),
    };
    Some(Lane {
        name: name.to_string(),
        max_parallel: max_parallel.max(1),
    })
}

/// A local ONNX model: the lane of its `[backends.NAME]` ONNX settings, else
/// the shared `onnx` lane.
fn local_lane(config: &Config, backend: Option<&str>) -> Lane {
    backend
        .filter(|b| matches!(config.backends.get(*b), Some(BackendConfig::Onnx(_))))
        .and_then(|b| backend_lane(config, b))
        .unwrap_or_else(|| Lane {
            name: LOCAL_LANE.to_string(),
            max_parallel: config.eval.max_parallel.onnx.max(1),
        })
}

/// An OpenAI-compatible endpoint: the lane of the `[backends.NAME]` entry
/// that lists its base URL, else a lane named by the URL.
fn endpoint_lane(config: &Config, base_url: &str) -> Lane {
    let norm = |u: &str| u.trim().trim_end_matches('/').to_string();
    let url = norm(base_url);
    for (name, b) in &config.backends {
        if let BackendConfig::Openai(o) = b {
            if o.base_url
                .iter()
                .chain(&o.base_urls)
                .any(|u| norm(u) == url)
            {
                if let Some(lane) = backend_lane(config, name) {
                    return lane;
                }
            }
        }
    }
    Lane {
        name: url,
        max_parallel: config.eval.max_parallel.openai.max(1),
    }
}

/// The lane of a model SPEC, read as [`Resolver::model`] reads it, without
/// resolving (or loading, or downloading) anything.
fn spec_lane(config: &Config, spec: &str) -> Lane {
    let spec = spec.trim();
    if let Some(lane) = config
        .models
        .get(spec)
        .and_then(|m| backend_lane(config, &m.backend))
    {
        return lane;
    }
    if let Some(lane) = backend_lane(config, spec) {
        return lane;
    }
    match spec.split_once(':') {
        Some(("openai", _)) => {
            let base = std::env::var("OPENAI_BASE_URL")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| crate::resolve::OPENAI_DEFAULT_BASE.to_string());
            endpoint_lane(config, &base)
        }
        Some((kind, _)) if config.backends.contains_key(kind) => {
            backend_lane(config, kind).expect("configured")
        }
        // `onnx:`, `hf:` and `mlflow:` models run with the only ONNX
        // backend's settings, if there is exactly one.
        _ => {
            let mut onnx = config
                .backends
                .iter()
                .filter(|(_, b)| matches!(b, BackendConfig::Onnx(_)))
                .map(|(n, _)| n.as_str());
            let only = match (onnx.next(), onnx.next()) {
                (Some(name), None) => Some(name),
                _ => None,
            };
            local_lane(config, only)
        }
    }
}

/// The lane of a watcher's checkpoints: its endpoint for the watchers of
/// served models (ollama, openai-finetunes), else the local ONNX lane of its
/// `backend`.
fn watcher_lane(config: &Config, w: &WatcherConfig, backend: Option<&str>) -> Lane {
    let url = |default: &str| {
        w.rest
            .get("base_url")
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    };
    match w.kind.as_str() {
        "ollama" => endpoint_lane(config, &format!("{}/v1", url("http://localhost:11434"))),
        "openai-finetunes" => endpoint_lane(config, &url(crate::resolve::OPENAI_DEFAULT_BASE)),
        _ => local_lane(config, backend),
    }
}

/// The lane a queued checkpoint runs in, from its record and the config.
fn record_lane(config: &Config, slots: &[WatcherSlot], record: &CheckpointRecord) -> Lane {
    if config.eval.lanes == LaneMode::Single {
        return Lane {
            name: SINGLE_LANE.to_string(),
            max_parallel: 1,
        };
    }
    let cp = &record.checkpoint;
    let unknown = || Lane {
        name: UNKNOWN_LANE.to_string(),
        max_parallel: 1,
    };
    if cp.watcher == crate::api::evaluations::SOURCE {
        return serde_json::from_value::<crate::api::evaluations::EvaluationRequest>(
            cp.detail.clone(),
        )
        .map(|r| spec_lane(config, &r.model_spec()))
        .unwrap_or_else(|_| unknown());
    }
    slots
        .iter()
        .find(|s| s.name == cp.watcher)
        .map(|s| s.lane.clone())
        .unwrap_or_else(unknown)
}

/// One async lock per key (a run identity, a checkpoint being fetched),
/// forgotten once nobody holds or waits for it.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap();
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// A watcher's health, as `/healthz` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatcherHealth {
    pub kind: String,
    pub state: &'static str,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub checkpoints_seen: usize,
}

/// An evaluation under way, by its queue record's key.
struct Evaluation {
    lane: Lane,
    /// The checkpoint's own key (without the plan).
    checkpoint: String,
    attempt: u32,
    started: String,
    /// Its run's progress (the bar's prefix is the run id once it starts).
    progress: indicatif::ProgressBar,
}

#[derive(Default)]
struct Health {
    watchers: BTreeMap<String, WatcherHealth>,
    /// The evaluations under way, by queue record key.
    evaluating: BTreeMap<String, Evaluation>,
    /// The dispatcher loop ended while the daemon was not stopping.
    evaluator_dead: bool,
}

/// The daemon's state shared by its tasks.
struct Daemon {
    config: RwLock<Arc<Config>>,
    source: Source,
    resolver: RwLock<Arc<Resolver>>,
    watchers: RwLock<Arc<Vec<WatcherSlot>>>,
    store: Store,
    cache: Cache,
    health: Mutex<Health>,
    queue: Notify,
    cancel: CancellationToken,
    /// Cancels the current watcher tasks (replaced on reload).
    watcher_tasks: Mutex<CancellationToken>,
    alerts: crate::alerts::Alerts,
    /// One evaluation per run identity at a time (a baseline shared by
    /// checkpoints in two lanes is evaluated once), and one download per
    /// checkpoint.
    locks: KeyedLocks,
    /// Checkpoint folders that evaluations under way use: never evicted.
    /// Evictions happen under this lock.
    in_use: Mutex<Vec<PathBuf>>,
}

/// What the API sees of the daemon.
struct Link(Arc<Daemon>);

impl crate::api::DaemonLink for Link {
    fn progress(&self, run_id: &str) -> Option<crate::api::Progress> {
        let bar = self
            .0
            .health
            .lock()
            .unwrap()
            .evaluating
            .values()
            .find(|e| e.progress.prefix() == run_id)?
            .progress
            .clone();
        let done = bar.position();
        let total = bar.length().unwrap_or(0);
        let rate = bar.per_sec();
        let eta = (rate > 0.0 && total >= done).then(|| (total - done) as f64 / rate);
        Some(crate::api::Progress {
            done,
            total,
            rate,
            eta_seconds: eta,
        })
    }

    fn health(&self) -> (bool, serde_json::Value) {
        self.0.health_report()
    }

    fn live(&self) -> (Arc<Config>, Arc<Resolver>) {
        (self.0.config(), self.0.resolver.read().unwrap().clone())
    }

    fn queued(&self) {
        self.0.queue.notify_one();
    }
}

fn plan_key(
    benchmarks: &[Benchmark],
    judge: &dyn Judge,
    template: &Template,
    decoding: &Decoding,
) -> String {
    let text = serde_json::json!({
        "benchmarks": benchmarks.iter().map(|b| &b.sha256).collect::<Vec<_>>(),
        "judge": judge.identity(),
        "template": template.sha256(),
        "decoding": decoding,
    })
    .to_string();
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn string_key(
    w: &WatcherConfig,
    key: &str,
    problems: &mut Vec<String>,
    name: &str,
) -> Option<String> {
    match w.rest.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push(format!("`watchers.{name}.{key}`: expected a string"));
            None
        }
    }
}

/// Builds every configured watcher with its plan; all problems at once.
fn build_watchers(config: &Config, resolver: &Resolver) -> Result<Vec<WatcherSlot>, Vec<String>> {
    let mut problems = Vec::new();
    let mut slots = Vec::new();
    for (name, w) in &config.watchers {
        let watcher = match watchers::build(name, w) {
            Ok(w) => Some(w),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        let bench_specs: Vec<String> = match w.rest.get("benchmarks") {
            None => vec!["builtin:probes".into()],
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                problems.push(format!(
                    "`watchers.{name}.benchmarks`: expected a list of names"
                ));
                vec![]
            }
        };
        let mut benchmarks = Vec::new();
        for spec in &bench_specs {
            match resolver.benchmark(spec) {
                Ok(b) => benchmarks.push(b),
                Err(e) => problems.push(format!("`watchers.{name}.benchmarks`: {e}")),
            }
        }
        let judge_spec =
            string_key(w, "judge", &mut problems, name).unwrap_or_else(|| "keyword".into());
        let judge = match resolver.judge(&judge_spec) {
            Ok(j) => Some(j),
            Err(e) => {
                problems.push(format!("`watchers.{name}.judge`: {e}"));
                None
            }
        };
        let audit = match resolver.audit(&judge_spec) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("`watchers.{name}.judge`: {e}"));
                None
            }
        };
        let template_name =
            string_key(w, "template", &mut problems, name).unwrap_or_else(|| "default".into());
        let template = match resolver.template(&template_name) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("`watchers.{name}.template`: {e}"));
                None
            }
        };
        let backend = string_key(w, "backend", &mut problems, name);
        let baseline = string_key(w, "baseline", &mut problems, name);
        let schedule = w.schedule.clone().unwrap_or_else(|| "0 */5 * * * *".into());
        if let Err(e) = config::check_cron(&schedule) {
            problems.push(format!("`watchers.{name}.schedule`: {e}"));
        }
        if let (Some(watcher), Some(judge), Some(template)) = (watcher, judge, template) {
            let decoding = Decoding {
                max_new_tokens: config.eval.max_new_tokens,
                temperature: config.eval.temperature,
                top_p: config.eval.top_p,
                seed: config.eval.seed,
            };
            let key = plan_key(&benchmarks, judge.as_ref(), &template, &decoding);
            let lane = watcher_lane(config, w, backend.as_deref());
            slots.push(WatcherSlot {
                name: name.clone(),
                kind: w.kind.clone(),
                schedule,
                watcher,
                plan: Arc::new(Plan {
                    benchmarks: Arc::new(benchmarks),
                    judge,
                    judge_spec,
                    template,
                    decoding,
                    key,
                    backend,
                    baseline,
                    limit: None,
                    audit,
                }),
                trigger: Arc::new(Notify::new()),
                lane,
            });
        }
    }
    if problems.is_empty() {
        Ok(slots)
    } else {
        Err(problems)
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Errors before it is ready exit 2.
pub async fn run(source: Source) -> Result<(), DaemonError> {
    // Installed first: a SIGTERM or SIGINT that arrives while the daemon
    // starts is kept and acted on once it is up (a clean stop, the store
    // flushed) instead of killing the process halfway through its start.
    let signals = Signals::install()?;
    // Before the store is opened: what start-up counts (records moved to
    // the quarantine) is in `/metrics`.
    crate::api::metrics::install();
    info!(config = %source, version = env!("CARGO_PKG_VERSION"), "safedrift is starting");
    let config = config::load(&source).map_err(|e| DaemonError(e.to_string()))?;
    let resolver = Resolver::new(config.clone(), None, None, config.eval.concurrency);
    let slots = build_watchers(&config, &resolver).map_err(|p| {
        DaemonError(
            p.iter()
                .map(|p| format!("{source}: {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let store = Store::open(&config.data_dir).map_err(|e| DaemonError(e.to_string()))?;
    let cache_dir = config
        .cache
        .path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("cache"));
    let cache =
        Cache::new(cache_dir, config.cache.max_bytes()).map_err(|e| DaemonError(e.to_string()))?;
    let api_config = Arc::new(config.clone());
    let api_token =
        crate::api::load_token(&config.api).map_err(|e| DaemonError(format!("{source}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .map_err(|e| {
            DaemonError(format!(
                "cannot listen on {} (`api.listen`): {e}",
                config.api.listen
            ))
        })?;
    let alerts = crate::alerts::Alerts::new(&store, &config).map_err(DaemonError)?;
    let daemon = Arc::new(Daemon {
        config: RwLock::new(Arc::new(config)),
        source,
        resolver: RwLock::new(Arc::new(resolver)),
        watchers: RwLock::new(Arc::new(slots)),
        store,
        cache,
        health: Mutex::new(Health::default()),
        queue: Notify::new(),
        cancel: CancellationToken::new(),
        watcher_tasks: Mutex::new(CancellationToken::new()),
        alerts,
        locks: KeyedLocks::default(),
        in_use: Mutex::new(Vec::new()),
    });
    let _flusher = daemon.store.spawn_flusher();
    daemon.recover()?;
    daemon.alerts.start(&daemon.cancel).await;

    let api = crate::api::Api::with_token(
        daemon.store.clone(),
        api_config,
        api_token.map(|t| Sha256::digest(t.as_bytes()).into()),
    )
    .with_link(Arc::new(Link(daemon.clone())));
    let app = crate::api::guard_hosts(router(daemon.clone()), &daemon.config().api)
        .merge(crate::api::app(api));
    let server = {
        let cancel = daemon.cancel.clone();
        tokio::spawn(async move {
            let shutdown = async move { cancel.cancelled().await };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                error!(error = %e, "the HTTP server stopped");
            }
        })
    };
    let mut scheduler = tokio_cron_scheduler::JobScheduler::new()
        .await
        .map_err(|e| DaemonError(format!("cannot start the scheduler: {e}")))?;
    daemon.start_watchers(&scheduler).await?;
    scheduler
        .start()
        .await
        .map_err(|e| DaemonError(format!("cannot start the scheduler: {e}")))?;
    let evaluator = tokio::spawn(daemon.clone().evaluator());
    signals.spawn(daemon.clone(), scheduler.clone());
    spawn_watchdog(daemon.clone());
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(listen = %daemon.config().api.listen, "safedrift is running");

    daemon.cancel.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!("stopping: the evaluations of every lane stop at a prompt boundary");
    daemon.watcher_tasks.lock().unwrap().cancel();
    let _ = scheduler.shutdown().await;
    let _ = evaluator.await;
    let _ = server.await;
    daemon.alerts.stopped(Duration::from_secs(15)).await;
    daemon
        .store
        .flush()
        .await
        .map_err(|e| DaemonError(e.to_string()))?;
    info!("stopped; the store is flushed");
    Ok(())
}

/// The daemon's signal streams: SIGTERM and SIGINT stop it, SIGHUP reloads
/// its configuration.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        let fail = |e: std::io::Error| DaemonError(format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(fail)?,
            int: signal(SignalKind::interrupt()).map_err(fail)?,
            hup: signal(SignalKind::hangup()).map_err(fail)?,
        })
    }

    /// Acts on the signals (those received since `install` first).
    fn spawn(self, daemon: Arc<Daemon>, scheduler: tokio_cron_scheduler::JobScheduler) {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = self;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                        match daemon.reload(&scheduler).await {
                            Ok(()) => info!("configuration reloaded"),
                            Err(e) => error!(error = %e, "the new configuration is invalid; keeping the old one"),
                        }
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    }
                }
            }
            daemon.cancel.cancel();
        });
    }
}

/// Sends WATCHDOG=1 at half the configured interval, but only while the
/// daemon is healthy: a stuck daemon gets restarted by systemd.
fn spawn_watchdog(daemon: Arc<Daemon>) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else {
        return;
    };
    let every = interval / 2;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = daemon.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if daemon.healthy() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                warn!("unhealthy: not petting the systemd watchdog");
            }
        }
    });
}

impl Daemon {
    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// The store answers and the evaluator loop is alive (evaluations may
    /// take hours; what matters is that the loop has not died).
    fn healthy(&self) -> bool {
        let store_ok = self.store.ping().is_ok();
        let evaluator_ok = !self.health.lock().unwrap().evaluator_dead;
        store_ok && evaluator_ok
    }

    /// After a crash, checkpoints left `running` are queued again (their run
    /// resumes where it stopped).
    fn recover(&self) -> Result<(), DaemonError> {
        let requeued = self
            .jobs()
            .recover()
            .map_err(|e| DaemonError(e.to_string()))?;
        for r in requeued {
            info!(checkpoint = %r.key, "resuming an evaluation interrupted by a stop or crash");
        }
        Ok(())
    }

    /// The durable queue over the daemon's store.
    fn jobs(&self) -> Queue {
        Queue::new(&self.store)
    }

    async fn start_watchers(
        self: &Arc<Self>,
        scheduler: &tokio_cron_scheduler::JobScheduler,
    ) -> Result<(), DaemonError> {
        let token = CancellationToken::new();
        *self.watcher_tasks.lock().unwrap() = token.clone();
        let slots = self.watchers.read().unwrap().clone();
        for (index, slot) in slots.iter().enumerate() {
            let trigger = slot.trigger.clone();
            let job = tokio_cron_scheduler::Job::new_async(slot.schedule.as_str(), move |_, _| {
                let trigger = trigger.clone();
                Box::pin(async move { trigger.notify_one() })
            })
            .map_err(|e| DaemonError(format!("`watchers.{}.schedule`: {e}", slot.name)))?;
            let id = scheduler
                .add(job)
                .await
                .map_err(|e| DaemonError(format!("cannot schedule watcher {}: {e}", slot.name)))?;
            let scheduler = scheduler.clone();
            let cleanup = token.clone();
            tokio::spawn(async move {
                cleanup.cancelled().await;
                let _ = scheduler.remove(&id).await;
            });
            self.health.lock().unwrap().watchers.insert(
                slot.name.clone(),
                WatcherHealth {
                    kind: slot.kind.clone(),
                    state: "starting",
                    ..WatcherHealth::default()
                },
            );
            tokio::spawn(self.clone().watch(slots.clone(), index, token.clone()));
        }
        Ok(())
    }

    /// Polls one watcher whenever it is triggered, with backoff on failure.
    async fn watch(
        self: Arc<Self>,
        slots: Arc<Vec<WatcherSlot>>,
        index: usize,
        stop: CancellationToken,
    ) {
        let slot = &slots[index];
        let wake = slot.watcher.wake();
        let mut failures = 0u32;
        let mut backoff_until: Option<Instant> = None;
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = slot.trigger.notified() => {}
                    _ = async { match &wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
                }
            }
            first = false;
            if let Some(until) = backoff_until {
                if Instant::now() < until {
                    continue;
                }
            }
            match slot.watcher.poll().await {
                Ok(found) => {
                    if failures > 0 {
                        info!(watcher = %slot.name, "the registry answers again");
                    }
                    failures = 0;
                    backoff_until = None;
                    let added = self.enqueue(slot, &found);
                    let mut health = self.health.lock().unwrap();
                    let h = health.watchers.entry(slot.name.clone()).or_default();
                    h.state = "ok";
                    h.last_success = Some(now_rfc3339());
                    h.consecutive_failures = 0;
                    h.checkpoints_seen = found.len();
                    drop(health);
                    if added > 0 {
                        info!(watcher = %slot.name, added, "new checkpoints queued");
                        self.queue.notify_one();
                    }
                }
                Err(e) => {
                    failures += 1;
                    ::metrics::counter!("safedrift_watcher_errors_total", "watcher" => slot.name.clone()).increment(1);
                    if failures == 1 {
                        warn!(watcher = %slot.name, error = %e, "the registry cannot be read; backing off");
                    }
                    let base =
                        Duration::from_secs(5).saturating_mul(2u32.saturating_pow(failures.min(8)));
                    let delay = base
                        .min(Duration::from_secs(600))
                        .mul_f64(rand::thread_rng().gen_range(0.75..1.25));
                    backoff_until = Some(Instant::now() + delay);
                    let mut health = self.health.lock().unwrap();
                    let h = health.watchers.entry(slot.name.clone()).or_default();
                    h.state = "backing_off";
                    h.last_error = Some(e.to_string());
                    h.consecutive_failures = failures;
                    // Poll again once the backoff ends.
                    let trigger = slot.trigger.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        trigger.notify_one();
                    });
                }
            }
        }
    }

    /// Queues what a poll found; returns how many were new.
    fn enqueue(&self, slot: &WatcherSlot, found: &[Checkpoint]) -> usize {
        let mut added = 0;
        for cp in found {
            let record = queue::new_record(cp.clone(), &slot.plan.key, now_rfc3339());
            match self.jobs().enqueue(&record) {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(e) => error!(error = %e, "cannot queue a checkpoint"),
            }
        }
        added
    }

    /// The dispatcher: starts the oldest due queued checkpoint of every lane
    /// that has room, until the daemon stops; then waits for the evaluations
    /// of every lane to stop at a prompt boundary.
    async fn evaluator(self: Arc<Self>) {
        struct Alive<'a>(&'a Daemon);
        impl Drop for Alive<'_> {
            fn drop(&mut self) {
                if !self.0.cancel.is_cancelled() {
                    error!("the evaluator stopped unexpectedly");
                    self.0.health.lock().unwrap().evaluator_dead = true;
                }
            }
        }
        let _alive = Alive(&self);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if self.cancel.is_cancelled() {
                break;
            }
            let wait = self.dispatch(&mut tasks);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                // Something was queued, or an evaluation ended.
                _ = self.queue.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Starts what the lanes have room for; returns how long to wait before
    /// the next queued checkpoint is due (when nothing else wakes the loop).
    fn dispatch(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) -> Duration {
        let now = now_ms();
        let due = match self.jobs().due(now) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot read the queue");
                queue::Due {
                    ready: Vec::new(),
                    next_ms: None,
                }
            }
        };
        let config = self.config();
        let slots = self.watchers.read().unwrap().clone();
        let mut health = self.health.lock().unwrap();
        let mut busy: HashMap<String, usize> = HashMap::new();
        let mut running: HashSet<String> = HashSet::new();
        for (key, e) in &health.evaluating {
            *busy.entry(e.lane.name.clone()).or_default() += 1;
            running.insert(key.clone());
            running.insert(e.checkpoint.clone());
        }
        for record in &due.ready {
            let checkpoint = record.checkpoint.key();
            // Never the same checkpoint twice at once (under two plans, say).
            if running.contains(&record.key) || running.contains(&checkpoint) {
                continue;
            }
            let lane = record_lane(&config, &slots, record);
            let in_lane = busy.entry(lane.name.clone()).or_default();
            if *in_lane >= lane.max_parallel || self.cancel.is_cancelled() {
                continue;
            }
            *in_lane += 1;
            running.insert(record.key.clone());
            running.insert(checkpoint.clone());
            let progress = indicatif::ProgressBar::hidden();
            health.evaluating.insert(
                record.key.clone(),
                Evaluation {
                    lane: lane.clone(),
                    checkpoint,
                    attempt: record.attempts + 1,
                    started: now_rfc3339(),
                    progress: progress.clone(),
                },
            );
            let record = record.clone();
            let me = self.clone();
            tasks.spawn(async move {
                // Each evaluation runs in its own task so that a panic (a
                // bug, a hostile input nobody foresaw) fails that checkpoint,
                // not its lane or the dispatcher.
                let key = record.key.clone();
                let inner = {
                    let me = me.clone();
                    tokio::spawn(async move { me.process(record, &lane.name, progress).await })
                };
                if let Err(e) = inner.await {
                    error!(checkpoint = %key, error = %e, "the evaluation crashed; will retry");
                    me.fail_after_crash(&key, e.to_string());
                }
                me.health.lock().unwrap().evaluating.remove(&key);
                me.queue.notify_one();
            });
        }
        drop(health);
        let wait = due.next_ms.map_or(60_000, |n| n - now).clamp(100, 60_000);
        Duration::from_millis(wait)
    }

    /// Records a crashed evaluation as failed, to be retried with backoff.
    fn fail_after_crash(&self, key: &str, error: String) {
        if let Err(e) = self.jobs().crashed(key, error, now_rfc3339()) {
            error!(error = %e, "cannot update the queue");
        }
    }

    async fn process(
        &self,
        mut record: CheckpointRecord,
        lane: &str,
        progress: indicatif::ProgressBar,
    ) {
        let jobs = self.jobs();
        if let Err(e) = jobs.start(&mut record, now_rfc3339()) {
            error!(error = %e, "cannot update the queue");
            return;
        }
        let _ = self.store.flush().await;
        info!(checkpoint = %record.checkpoint.key(), lane, attempt = record.attempts, "evaluating");
        let outcome = self.evaluate(&record, &progress).await;
        match outcome {
            Ok((run, baseline)) => {
                record.status = CheckpointStatus::Done;
                record.run_id = Some(run.id.clone());
                record.baseline_run_id = baseline;
                record.last_error = None;
                let drift = run.drift.as_ref().is_some_and(|d| d.detected);
                info!(checkpoint = %record.checkpoint.key(), run = %run.id, drift, "evaluated");
            }
            Err(Failure::Superseded) => {
                record.status = CheckpointStatus::Done;
                record.last_error = Some(
                    "superseded: the evaluation plan changed; queued again under the new plan"
                        .into(),
                );
                info!(checkpoint = %record.checkpoint.key(), "skipped: queued under an old evaluation plan");
            }
            Err(Failure::Stopped) => {
                record.status = CheckpointStatus::Queued;
                info!(checkpoint = %record.checkpoint.key(), "stopped at a prompt boundary; resumes on the next start");
            }
            Err(Failure::Error(e)) => {
                let retry_in_s = queue::backoff_ms(record.attempts) / 1000;
                warn!(checkpoint = %record.checkpoint.key(), error = %e, retry_in_s, "evaluation failed; will retry");
                Queue::retry_later(&mut record, e);
            }
        }
        record.updated = now_rfc3339();
        if let Err(e) = jobs.put(&record) {
            error!(error = %e, "cannot update the queue");
        }
        let _ = self.store.flush().await;
    }

    fn slot(&self, watcher: &str) -> Option<(Arc<Vec<WatcherSlot>>, usize)> {
        let slots = self.watchers.read().unwrap().clone();
        let index = slots.iter().position(|s| s.name == watcher)?;
        Some((slots, index))
    }

    /// Fetches, resolves the baseline, evaluates and decides drift.
    async fn evaluate(
        &self,
        record: &CheckpointRecord,
        progress: &indicatif::ProgressBar,
    ) -> Result<(RunRecord, Option<String>), Failure> {
        let cp = &record.checkpoint;
        let resolver = self.resolver.read().unwrap().clone();
        let err = |e: String| Failure::Error(e);
        let from_api = cp.watcher == crate::api::evaluations::SOURCE;
        let found = if from_api {
            None
        } else {
            Some(self.slot(&cp.watcher).ok_or_else(|| {
                Failure::Error(format!("watcher {} is no longer configured", cp.watcher))
            })?)
        };
        let slot = found.as_ref().map(|(slots, index)| &slots[*index]);
        let (plan, candidate, model_ref, target) = match slot {
            Some(slot) => {
                let plan = slot.plan.clone();
                if record.eval_key != plan.key {
                    return Err(Failure::Superseded);
                }
                let target = self
                    .fetch(slot, cp)
                    .await?
                    .map_err(|e| err(e.to_string()))?;
                let candidate = resolver
                    .target(&target, plan.backend.as_deref())
                    .map_err(|e| err(e.to_string()))?;
                let model_ref = ModelRef {
                    spec: format!("{}:{}", slot.kind, cp.model),
                    revision: Some(cp.revision.clone()),
                    registry: Some(cp.watcher.clone()),
                };
                (plan, candidate, model_ref, Some(target))
            }
            None => {
                // Queued through the API: the request is the plan.
                let request: crate::api::evaluations::EvaluationRequest =
                    serde_json::from_value(cp.detail.clone())
                        .map_err(|e| err(format!("the queued request is unreadable: {e}")))?;
                // The API's boundary holds here too: the config (or the
                // files) may have changed since the request was queued.
                crate::api::boundary::check(&self.config(), &request)
                    .map_err(|e| err(e.message))?;
                let spec = request.model_spec();
                let model = resolver
                    .model(&spec)
                    .map_err(|e| err(format!("model {spec}: {}", e.public_message())))?;
                let plan = Arc::new(
                    api_plan(&self.config(), &resolver, &request, model.template.clone())
                        .map_err(err)?,
                );
                let model_ref = ModelRef {
                    spec,
                    revision: None,
                    registry: None,
                };
                (plan, model.backend, model_ref, None)
            }
        };

        // The baseline: configured, else what the registry names.
        let mut baseline_dir: Option<std::path::PathBuf> = None;
        let baseline: Option<(ModelRef, Arc<dyn crate::backend::Backend>)> =
            match (&plan.baseline, &cp.baseline) {
                (Some(spec), _) => {
                    let b = resolver.model(spec).map_err(|e| {
                        // API clients read this error: no paths or contents.
                        let e = if from_api {
                            e.public_message().to_string()
                        } else {
                            e.to_string()
                        };
                        err(format!("baseline {spec}: {e}"))
                    })?;
                    Some((
                        ModelRef {
                            spec: spec.clone(),
                            revision: None,
                            registry: None,
                        },
                        b.backend,
                    ))
                }
                (None, Some(Baseline::Checkpoint(base))) => {
                    let slot =
                        slot.ok_or_else(|| err("no watcher to fetch the baseline".into()))?;
                    let t = self
                        .fetch(slot, base)
                        .await?
                        .map_err(|e| err(format!("baseline {}: {e}", base.key())))?;
                    if let Target::Onnx { dir } = &t {
                        baseline_dir = Some(dir.clone());
                    }
                    let b = resolver
                        .target(&t, plan.backend.as_deref())
                        .map_err(|e| err(e.to_string()))?;
                    let r = ModelRef {
                        spec: format!("{}:{}", slot.kind, base.model),
                        revision: Some(base.revision.clone()),
                        registry: Some(base.watcher.clone()),
                    };
                    Some((r, b))
                }
                (None, Some(Baseline::Target(t))) => {
                    let b = resolver
                        .target(t, plan.backend.as_deref())
                        .map_err(|e| err(e.to_string()))?;
                    let spec = match t {
                        Target::OpenAi { model, .. } => format!("openai:{model}"),
                        Target::Onnx { dir } => format!("onnx:{}", dir.display()),
                        Target::Spec(s) => s.clone(),
                    };
                    Some((
                        ModelRef {
                            spec,
                            revision: None,
                            registry: None,
                        },
                        b,
                    ))
                }
                (None, None) => None,
            };

        // Keep the cache under its limit, never evicting what this or any
        // other lane's evaluation is about to run or running.
        let mut mine: Vec<PathBuf> = baseline_dir.into_iter().collect();
        if let Some(Target::Onnx { dir }) = &target {
            mine.push(dir.clone());
        }
        let _in_use = self.use_dirs(mine);

        let job = |model: ModelRef, backend: Arc<dyn crate::backend::Backend>| Job {
            model,
            backend,
            template: plan.template.clone(),
            decoding: plan.decoding.clone(),
            benchmarks: plan.benchmarks.clone(),
            judge: plan.judge.clone(),
            judge_spec: plan.judge_spec.clone(),
            limit: plan.limit,
        };
        let concurrency = self.config().eval.concurrency;
        let stopped = |s: pipeline::Stopped| match s.error {
            EvalError::Interrupted => Failure::Stopped,
            _ => Failure::Error(s.to_string()),
        };

        let baseline_done = match baseline {
            Some((r, backend)) => {
                let base_job = job(r, backend);
                let identity = pipeline::identity(&base_job);
                // Another lane may be evaluating this baseline right now:
                // wait for it and reuse its run.
                let _one = self.lock_identity(&identity).await?;
                let reused = self
                    .store
                    .completed_run(&identity)
                    .map_err(|e| err(e.to_string()))?;
                let done = match reused {
                    Some(run) => {
                        info!(baseline = %run.model.spec, run = %run.id, "reusing the baseline's completed run");
                        let results = self
                            .store
                            .results(&run.id)
                            .map_err(|e| err(e.to_string()))?;
                        (run, results)
                    }
                    None => pipeline::evaluate(
                        &self.store,
                        &base_job,
                        concurrency,
                        progress,
                        &self.cancel,
                    )
                    .await
                    .map_err(stopped)?,
                };
                Some(done)
            }
            None => None,
        };
        let cand_job = job(model_ref, candidate);
        // A completed run of this very checkpoint (a crash came after it
        // completed) is not evaluated again, and its alert is not repeated; a
        // completed run of the same model (evaluated as another checkpoint's
        // baseline) is reused.
        let identity = pipeline::identity(&cand_job);
        // Held until the run is stored with its checkpoint: the same model
        // queued twice (two plans' watchers, the API) is evaluated once.
        let _one = self.lock_identity(&identity).await?;
        let (mut run, results) = match self
            .store
            .completed_run(&identity)
            .map_err(|e| err(e.to_string()))?
        {
            Some(run) if run.checkpoint.as_deref() == Some(cp.key().as_str()) => {
                info!(checkpoint = %cp.key(), run = %run.id, "already evaluated before a restart");
                let baseline = run.baseline_run.clone();
                return Ok((run, baseline));
            }
            Some(run) => {
                let results = self
                    .store
                    .results(&run.id)
                    .map_err(|e| err(e.to_string()))?;
                (run, results)
            }
            None => pipeline::evaluate(&self.store, &cand_job, concurrency, progress, &self.cancel)
                .await
                .map_err(stopped)?,
        };
        if let Some(plan_audit) = &plan.audit {
            pipeline::audit_run(&self.store, &mut run, &results, plan_audit, concurrency).await;
        }
        run.checkpoint = Some(cp.key());
        let baseline_id = baseline_done.as_ref().map(|(b, _)| b.id.clone());
        let doc = match &baseline_done {
            Some((base_run, base_results)) => {
                let doc =
                    Run::compared(&run, &results, base_run, base_results, &self.config().drift);
                run.baseline_run = Some(base_run.id.clone());
                run.drift = doc.drift.clone();
                doc
            }
            None => Run::new(&run, &results),
        };
        self.store.put_run(&run).map_err(|e| err(e.to_string()))?;
        self.store.flush().await.map_err(|e| err(e.to_string()))?;
        self.alerts.run_completed(&doc).await;
        Ok((run, baseline_id))
    }

    /// Fetches a checkpoint through its watcher, one download per checkpoint
    /// at a time (two lanes may need the same baseline); `Err` when the
    /// daemon stops while waiting.
    async fn fetch(
        &self,
        slot: &WatcherSlot,
        cp: &Checkpoint,
    ) -> Result<Result<Target, safedrift_watchers::WatchError>, Failure> {
        let key = format!("fetch {}", cp.key());
        let _one = tokio::select! {
            g = self.locks.lock(&key) => g,
            _ = self.cancel.cancelled() => return Err(Failure::Stopped),
        };
        Ok(slot.watcher.fetch(cp, &self.cache).await)
    }

    /// Waits until no other evaluation of this run identity is under way
    /// (or the daemon stops).
    async fn lock_identity(
        &self,
        identity: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Failure> {
        let key = format!("run {identity}");
        tokio::select! {
            g = self.locks.lock(&key) => Ok(g),
            _ = self.cancel.cancelled() => Err(Failure::Stopped),
        }
    }

    /// Marks checkpoint folders as in use until the guard drops, then keeps
    /// the cache under its limit without evicting any folder in use.
    fn use_dirs(&self, dirs: Vec<PathBuf>) -> InUse<'_> {
        let mut in_use = self.in_use.lock().unwrap();
        in_use.extend(dirs.iter().cloned());
        let keep: Vec<&Path> = in_use.iter().map(|d| d.as_path()).collect();
        match self.cache.evict(&keep) {
            Ok(0) => {}
            Ok(freed) => info!(
                freed_mb = freed / (1024 * 1024),
                "evicted least recently used checkpoints from the cache"
            ),
            Err(e) => warn!(error = %e, "cannot evict from the download cache"),
        }
        InUse { daemon: self, dirs }
    }

    /// Applies a new config: rejected as a whole if any part is invalid.
    async fn reload(
        self: &Arc<Self>,
        scheduler: &tokio_cron_scheduler::JobScheduler,
    ) -> Result<(), DaemonError> {
        let config = config::load(&self.source).map_err(|e| DaemonError(e.to_string()))?;
        let resolver = Resolver::new(config.clone(), None, None, config.eval.concurrency);
        let slots = build_watchers(&config, &resolver).map_err(|p| DaemonError(p.join("; ")))?;
        crate::alerts::targets(&config).map_err(|p| DaemonError(p.join("; ")))?;
        if config.data_dir != self.config().data_dir {
            warn!("`data_dir` changes take effect on restart");
        }
        self.watcher_tasks.lock().unwrap().cancel();
        *self.config.write().unwrap() = Arc::new(config);
        *self.resolver.write().unwrap() = Arc::new(resolver);
        *self.watchers.write().unwrap() = Arc::new(slots);
        self.health.lock().unwrap().watchers.clear();
        self.start_watchers(scheduler).await?;
        self.alerts
            .reload(&self.config(), &self.cancel)
            .await
            .map_err(DaemonError)
    }

    fn webhook(&self, kind: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let slots = self.watchers.read().unwrap().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let delivery = Webhook {
            header: &header,
            body,
        };
        let mut any = false;
        let mut accepted = false;
        for slot in slots.iter().filter(|s| s.kind == kind) {
            any = true;
            match slot.watcher.webhook(&delivery) {
                Ok(relevant) => {
                    accepted = true;
                    if relevant {
                        info!(watcher = %slot.name, "webhook: polling now");
                        slot.trigger.notify_one();
                    }
                }
                Err(e) if e.kind == "unauthorized" => {}
                Err(e) => warn!(watcher = %slot.name, error = %e, "webhook rejected"),
            }
        }
        match (any, accepted) {
            (false, _) => StatusCode::NOT_FOUND,
            (true, true) => StatusCode::OK,
            (true, false) => StatusCode::UNAUTHORIZED,
        }
    }

    fn health_report(&self) -> (bool, serde_json::Value) {
        let healthy = self.healthy();
        let health = self.health.lock().unwrap();
        let jobs = self.jobs();
        let counts = jobs.counts().unwrap_or_default();
        let queued = jobs.queued().unwrap_or_default();
        let store_ok = self.store.ping().is_ok();
        let quarantined = self.store.quarantined_len();
        let watchers_ok = health.watchers.values().all(|w| w.state != "backing_off");
        let ok = store_ok && healthy;
        let doc = serde_json::json!({
            "status": if ok && watchers_ok && quarantined == 0 { "ok" } else if ok { "degraded" } else { "failing" },
            "store": if store_ok { "ok" } else { "failing" },
            // Records moved aside because they could not be decoded
            // (listed by `GET /api/v1/quarantine`).
            "quarantined": quarantined,
            "watchers": health.watchers,
            "queue": {
                "queued": counts.queued,
                "running": counts.running,
                "done": counts.done,
                "retrying": counts.retrying,
            },
            // The evaluation that started first of those under way (every
            // one is under `lanes`).
            "evaluating": health
                .evaluating
                .values()
                .min_by(|a, b| a.started.cmp(&b.started))
                .map(|e| e.checkpoint.clone()),
            "lanes": self.lanes_report(&health, &queued),
            "evaluator": if health.evaluator_dead { "failing" } else { "ok" },
        });
        (ok, doc)
    }

    /// Each lane: its `max_parallel`, the evaluations it runs (with their
    /// run's progress) and how many checkpoints wait in it. Lanes of the
    /// configured watchers are listed even when idle.
    fn lanes_report(&self, health: &Health, queued: &[CheckpointRecord]) -> serde_json::Value {
        #[derive(Default)]
        struct LaneDoc {
            max_parallel: usize,
            running: Vec<serde_json::Value>,
            queued: usize,
        }
        let config = self.config();
        let slots = self.watchers.read().unwrap().clone();
        let mut lanes: BTreeMap<String, LaneDoc> = BTreeMap::new();
        fn add<'a>(lanes: &'a mut BTreeMap<String, LaneDoc>, lane: &Lane) -> &'a mut LaneDoc {
            let doc = lanes.entry(lane.name.clone()).or_default();
            doc.max_parallel = doc.max_parallel.max(lane.max_parallel);
            doc
        }
        if config.eval.lanes == LaneMode::Single {
            add(
                &mut lanes,
                &Lane {
                    name: SINGLE_LANE.to_string(),
                    max_parallel: 1,
                },
            );
        } else {
            for slot in slots.iter() {
                add(&mut lanes, &slot.lane);
            }
        }
        for r in queued
            .iter()
            .filter(|r| !health.evaluating.contains_key(&r.key))
        {
            add(&mut lanes, &record_lane(&config, &slots, r)).queued += 1;
        }
        for e in health.evaluating.values() {
            let run = e.progress.prefix();
            let total = e.progress.length();
            add(&mut lanes, &e.lane).running.push(serde_json::json!({
                "checkpoint": e.checkpoint,
                "attempt": e.attempt,
                "started": e.started,
                "run": (!run.is_empty()).then_some(run),
                "done": total.map(|_| e.progress.position()),
                "total": total,
            }));
        }
        serde_json::Value::Object(
            lanes
                .into_iter()
                .map(|(name, l)| {
                    (
                        name,
                        serde_json::json!({
                            "max_parallel": l.max_parallel,
                            "running": l.running,
                            "queued": l.queued,
                        }),
                    )
                })
                .collect(),
        )
    }
}

/// Checkpoint folders an evaluation uses (see [`Daemon::use_dirs`]).
struct InUse<'a> {
    daemon: &'a Daemon,
    dirs: Vec<PathBuf>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut in_use = self.daemon.in_use.lock().unwrap();
        for d in &self.dirs {
            if let Some(i) = in_use.iter().position(|x| x == d) {
                in_use.swap_remove(i);
            }
        }
    }
}

/// Why an evaluation attempt ended without a run.
enum Failure {
    /// Queued under an evaluation plan the config no longer has; the
    /// watcher queues the checkpoint again under the new plan.
    Superseded,
    /// Stopped by shutdown at a prompt boundary: resumes on the next start.
    Stopped,
    Error(String),
}

/// The registry webhooks; the API (and `/healthz`) is merged in by `run`.
fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/hooks/mlflow", post(hook_mlflow))
        .route("/hooks/huggingface", post(hook_huggingface))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(daemon)
}

async fn hook_mlflow(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    hook_answer(d.webhook("mlflow", &headers, &body))
}

async fn hook_huggingface(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    hook_answer(d.webhook("huggingface", &headers, &body))
}

fn hook_answer(status: StatusCode) -> impl IntoResponse {
    let (error, kind) = match status {
        StatusCode::OK => return (status, Json(serde_json::json!({"ok": true}))),
        StatusCode::NOT_FOUND => ("no watcher takes these webhooks", "not_found"),
        _ => ("unauthorized", "unauthorized"),
    };
    (
        status,
        Json(serde_json::json!({"error": error, "kind": kind})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        config::parse(text, &Source::Embedded).unwrap()
    }

    fn record(watcher: &str, detail: serde_json::Value) -> CheckpointRecord {
        CheckpointRecord {
            key: format!("{watcher}/m@1|k"),
            checkpoint: Checkpoint {
                watcher: watcher.into(),
                model: "m".into(),
                revision: "1".into(),
                baseline: None,
                detail,
            },
            eval_key: "k".into(),
            status: CheckpointStatus::Queued,
            attempts: 0,
            last_error: None,
            next_attempt_ms: 0,
            run_id: None,
            baseline_run_id: None,
            first_seen: now_rfc3339(),
            updated: now_rfc3339(),
        }
    }

    fn lane(name: &str, max_parallel: usize) -> Lane {
        Lane {
            name: name.into(),
            max_parallel,
        }
    }

    const BACKENDS: &str = r#"
[eval]
max_parallel = { openai = 6 }

[backends.local]
kind = "onnx"

[backends.fast]
kind = "onnx"
max_parallel = 2

[backends.vllm]
kind = "openai"
base_urls = ["http://10.0.0.11:8000/v1", "http://10.0.0.12:8000/v1/"]
max_parallel = 3

[backends.other]
kind = "openai"
base_url = "http://10.0.0.13:8000/v1"

[models.tuned]
backend = "vllm"
model = "tuned"
"#;

    #[test]
    fn every_backend_is_a_lane_with_its_own_max_parallel() {
        let c = config(BACKENDS);
        assert_eq!(spec_lane(&c, "tuned"), lane("vllm", 3));
        assert_eq!(spec_lane(&c, "vllm:some-model"), lane("vllm", 3));
        assert_eq!(spec_lane(&c, "other:m"), lane("other", 6));
        assert_eq!(spec_lane(&c, "local:/srv/m"), lane("local", 1));
        assert_eq!(spec_lane(&c, "fast:/srv/m"), lane("fast", 2));
        // Two ONNX backends: `onnx:DIR` uses neither's settings.
        assert_eq!(spec_lane(&c, "onnx:/srv/m"), lane(LOCAL_LANE, 1));
        // An endpoint configured as a backend is that backend's lane; any
        // other is a lane of its own, named by its URL.
        assert_eq!(
            endpoint_lane(&c, "http://10.0.0.12:8000/v1"),
            lane("vllm", 3)
        );
        assert_eq!(
            endpoint_lane(&c, "http://ollama:11434/v1/"),
            lane("http://ollama:11434/v1", 6)
        );
    }

    #[test]
    fn the_only_onnx_backend_takes_onnx_specs() {
        let c = config("[backends.local]\nkind = \"onnx\"\nmax_parallel = 2\n");
        assert_eq!(spec_lane(&c, "onnx:/srv/m"), lane("local", 2));
        assert_eq!(spec_lane(&c, "hf:acme/m"), lane("local", 2));
        let c = config("");
        assert_eq!(spec_lane(&c, "mlflow:m/3"), lane(LOCAL_LANE, 1));
    }

    #[test]
    fn watchers_of_served_models_run_in_their_endpoints_lane() {
        let c = config(BACKENDS);
        let w = |kind: &str, extra: &str| -> WatcherConfig {
            toml::from_str(&format!("kind = {kind:?}\n{extra}")).unwrap()
        };
        assert_eq!(
            watcher_lane(
                &c,
                &w("ollama", "base_url = \"http://10.0.0.11:8000/\""),
                None
            ),
            lane("vllm", 3)
        );
        assert_eq!(
            watcher_lane(&c, &w("ollama", ""), None),
            lane("http://localhost:11434/v1", 6)
        );
        assert_eq!(
            watcher_lane(&c, &w("openai-finetunes", ""), None),
            lane("https://api.openai.com/v1", 6)
        );
        assert_eq!(
            watcher_lane(&c, &w("directory", "path = \"/x\""), Some("fast")),
            lane("fast", 2)
        );
        assert_eq!(
            watcher_lane(&c, &w("huggingface", ""), Some("vllm")),
            lane(LOCAL_LANE, 1)
        );
    }

    #[test]
    fn records_queued_through_the_api_take_their_models_lane() {
        let c = config(BACKENDS);
        let api = crate::api::evaluations::SOURCE;
        let r = record(api, serde_json::json!({"model": "m", "backend": "vllm"}));
        assert_eq!(record_lane(&c, &[], &r), lane("vllm", 3));
        let r = record(api, serde_json::json!({"model": "onnx:/x"}));
        assert_eq!(record_lane(&c, &[], &r), lane(LOCAL_LANE, 1));
        let r = record(api, serde_json::json!({"nonsense": true}));
        assert_eq!(record_lane(&c, &[], &r), lane(UNKNOWN_LANE, 1));
        // A watcher that is gone.
        assert_eq!(
            record_lane(&c, &[], &record("gone", serde_json::Value::Null)),
            lane(UNKNOWN_LANE, 1)
        );
        // One lane for everything: the order of the queue, one at a time.
        let single = config(
            &format!("{BACKENDS}\n[eval]\nlanes = \"single\"\n")
                .replace("[eval]\nmax_parallel = { openai = 6 }\n", ""),
        );
        let r = record(api, serde_json::json!({"model": "tuned"}));
        assert_eq!(record_lane(&single, &[], &r), lane(SINGLE_LANE, 1));
    }

    #[test]
    fn max_parallel_must_be_at_least_one() {
        let p = config::parse(
            "[eval]\nmax_parallel = { onnx = 0 }\n[backends.b]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmax_parallel = 0\n",
            &Source::Embedded,
        )
        .unwrap_err()
        .problems
        .join("\n");
        assert!(p.contains("`eval.max_parallel.onnx`"), "{p}");
        assert!(p.contains("`backends.b.max_parallel`"), "{p}");
        let p = config::parse("[eval]\nlanes = \"several\"\n", &Source::Embedded)
            .unwrap_err()
            .problems
            .join("\n");
        assert!(p.contains("lanes"), "{p}");
    }

    #[tokio::test]
    async fn keyed_locks_exclude_per_key_and_are_forgotten() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is free.
        let _b = locks.lock("b").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _a = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        drop(_b);
        let _c = locks.lock("c").await;
        assert_eq!(
            locks.0.lock().unwrap().len(),
            1,
            "unheld keys are forgotten"
        );
    }
}
