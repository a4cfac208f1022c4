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
//! - One evaluator takes queued checkpoints in order: fetches them, resolves
//!   their baseline (configured, or named by the registry), reuses the
//!   baseline's completed run when the plan is unchanged, evaluates, decides
//!   drift and hands the run to the alert hook. A failed attempt is recorded
//!   and retried with backoff; a crash resumes the run where it stopped.
//! - SIGTERM/SIGINT stop at a prompt boundary with progress saved; SIGHUP
//!   reloads the config (an invalid one is rejected and the old one kept);
//!   systemd hears READY, WATCHDOG (only while healthy) and STOPPING.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
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
use crate::config::{self, Config, Source, WatcherConfig};
use crate::pipeline::{self, EvalError, Job};
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

#[derive(Default)]
struct Health {
    watchers: BTreeMap<String, WatcherHealth>,
    evaluating: Option<String>,
    /// The evaluator loop ended while the daemon was not stopping.
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
    /// The progress of the run being evaluated (its prefix is the run id).
    progress: Mutex<Option<indicatif::ProgressBar>>,
}

/// What the API sees of the daemon.
struct Link(Arc<Daemon>);

impl crate::api::DaemonLink for Link {
    fn progress(&self, run_id: &str) -> Option<crate::api::Progress> {
        let bar = self.0.progress.lock().unwrap().clone()?;
        if bar.prefix() != run_id {
            return None;
        }
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
        progress: Mutex::new(None),
    });
    let _flusher = daemon.store.spawn_flusher();
    daemon.recover()?;
    daemon.alerts.start(&daemon.cancel).await;

    crate::api::metrics::install();
    let api = crate::api::Api {
        store: daemon.store.clone(),
        config: api_config,
        token: api_token.map(|t| Sha256::digest(t.as_bytes()).into()),
        link: None,
    }
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
    info!("stopping: the current evaluation stops at a prompt boundary");
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
        let records = self
            .store
            .checkpoints()
            .map_err(|e| DaemonError(e.to_string()))?;
        for mut r in records
            .into_iter()
            .filter(|r| r.status == CheckpointStatus::Running)
        {
            info!(checkpoint = %r.key, "resuming an evaluation interrupted by a stop or crash");
            r.status = CheckpointStatus::Queued;
            self.store
                .put_checkpoint(&r)
                .map_err(|e| DaemonError(e.to_string()))?;
        }
        Ok(())
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
            let record = CheckpointRecord {
                key: format!("{}|{}", cp.key(), slot.plan.key),
                checkpoint: cp.clone(),
                eval_key: slot.plan.key.clone(),
                status: CheckpointStatus::Queued,
                attempts: 0,
                last_error: None,
                next_attempt_ms: 0,
                run_id: None,
                baseline_run_id: None,
                first_seen: now_rfc3339(),
                updated: now_rfc3339(),
            };
            match self.store.enqueue(&record) {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(e) => error!(error = %e, "cannot queue a checkpoint"),
            }
        }
        added
    }

    /// Takes queued checkpoints one at a time until the daemon stops.
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
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let records = match self.store.checkpoints() {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "cannot read the queue");
                    Vec::new()
                }
            };
            let now = now_ms();
            let next = records
                .iter()
                .filter(|r| r.status == CheckpointStatus::Queued && r.next_attempt_ms <= now)
                .min_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.key.cmp(&b.key)))
                .cloned();
            let Some(record) = next else {
                let wait = records
                    .iter()
                    .filter(|r| r.status == CheckpointStatus::Queued)
                    .map(|r| r.next_attempt_ms.saturating_sub(now))
                    .min()
                    .unwrap_or(60_000)
                    .clamp(100, 60_000);
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = self.queue.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
                continue;
            };
            // Each evaluation runs in its own task so that a panic (a bug, a
            // hostile input nobody foresaw) fails that checkpoint, not the
            // evaluator.
            let key = record.key.clone();
            let me = self.clone();
            if let Err(e) = tokio::spawn(async move { me.process(record).await }).await {
                error!(checkpoint = %key, error = %e, "the evaluation crashed; will retry");
                self.fail_after_crash(&key, e.to_string());
            }
        }
    }

    /// Records a crashed evaluation as failed, to be retried with backoff.
    fn fail_after_crash(&self, key: &str, error: String) {
        let Ok(records) = self.store.checkpoints() else {
            return;
        };
        if let Some(mut r) = records.into_iter().find(|r| r.key == key) {
            let delay = (30_000u64 << r.attempts.min(7)).min(3_600_000);
            r.status = CheckpointStatus::Queued;
            r.next_attempt_ms = now_ms() + delay;
            r.last_error = Some(format!("crashed: {error}"));
            r.updated = now_rfc3339();
            let _ = self.store.put_checkpoint(&r);
        }
    }

    async fn process(&self, mut record: CheckpointRecord) {
        record.status = CheckpointStatus::Running;
        record.attempts += 1;
        record.updated = now_rfc3339();
        if let Err(e) = self.store.put_checkpoint(&record) {
            error!(error = %e, "cannot update the queue");
            return;
        }
        let _ = self.store.flush().await;
        self.health.lock().unwrap().evaluating = Some(record.checkpoint.key());
        info!(checkpoint = %record.checkpoint.key(), attempt = record.attempts, "evaluating");
        let outcome = self.evaluate(&record).await;
        self.health.lock().unwrap().evaluating = None;
        *self.progress.lock().unwrap() = None;
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
                let delay = (30_000u64 << record.attempts.min(7)).min(3_600_000);
                record.status = CheckpointStatus::Queued;
                record.next_attempt_ms = now_ms() + delay;
                warn!(checkpoint = %record.checkpoint.key(), error = %e, retry_in_s = delay / 1000, "evaluation failed; will retry");
                record.last_error = Some(e);
            }
        }
        record.updated = now_rfc3339();
        if let Err(e) = self.store.put_checkpoint(&record) {
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
                let target = slot
                    .watcher
                    .fetch(cp, &self.cache)
                    .await
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
                    let t = slot
                        .watcher
                        .fetch(base, &self.cache)
                        .await
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

        // Keep the cache under its limit, never evicting what is about to run.
        let mut keep: Vec<&std::path::Path> = baseline_dir.iter().map(|d| d.as_path()).collect();
        if let Some(Target::Onnx { dir }) = &target {
            keep.push(dir);
        }
        match self.cache.evict(&keep) {
            Ok(0) => {}
            Ok(freed) => info!(
                freed_mb = freed / (1024 * 1024),
                "evicted least recently used checkpoints from the cache"
            ),
            Err(e) => warn!(error = %e, "cannot evict from the download cache"),
        }

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
        let progress = indicatif::ProgressBar::hidden();
        *self.progress.lock().unwrap() = Some(progress.clone());
        let stopped = |s: pipeline::Stopped| match s.error {
            EvalError::Interrupted => Failure::Stopped,
            _ => Failure::Error(s.to_string()),
        };

        let baseline_done = match baseline {
            Some((r, backend)) => {
                let base_job = job(r, backend);
                let identity = pipeline::identity(&base_job);
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
                        &progress,
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
            None => {
                pipeline::evaluate(&self.store, &cand_job, concurrency, &progress, &self.cancel)
                    .await
                    .map_err(stopped)?
            }
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

    /// Applies a new config: rejected as a whole if any part is invalid.
    async fn reload(
        self: &Arc<Self>,
        scheduler: &tokio_cron_scheduler::JobScheduler,
    ) -> Result<(), DaemonError> {
        let config = config::load(&self.source).map_err(|e| DaemonError(e.to_string()))?;
        let resolver = Resolver::new(config.clone(), None, None, config.eval.concurrency);
        let slots = build_watchers(&config, &resolver).map_err(|p| DaemonError(p.join("; ")))?;
        if config.data_dir != self.config().data_dir {
            warn!("`data_dir` changes take effect on restart");
        }
        self.watcher_tasks.lock().unwrap().cancel();
        *self.config.write().unwrap() = Arc::new(config);
        *self.resolver.write().unwrap() = Arc::new(resolver);
        *self.watchers.write().unwrap() = Arc::new(slots);
        self.health.lock().unwrap().watchers.clear();
        self.start_watchers(scheduler).await
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
        let records = self.store.checkpoints().unwrap_or_default();
        let count = |s: CheckpointStatus| records.iter().filter(|r| r.status == s).count();
        let failing = records
            .iter()
            .filter(|r| r.last_error.is_some() && r.status != CheckpointStatus::Done)
            .count();
        let store_ok = self.store.ping().is_ok();
        let watchers_ok = health.watchers.values().all(|w| w.state != "backing_off");
        let ok = store_ok && healthy;
        let doc = serde_json::json!({
            "status": if ok && watchers_ok { "ok" } else if ok { "degraded" } else { "failing" },
            "store": if store_ok { "ok" } else { "failing" },
            "watchers": health.watchers,
            "queue": {
                "queued": count(CheckpointStatus::Queued),
                "running": count(CheckpointStatus::Running),
                "done": count(CheckpointStatus::Done),
                "retrying": failing,
            },
            "evaluating": health.evaluating,
            "evaluator": if health.evaluator_dead { "failing" } else { "ok" },
        });
        (ok, doc)
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
