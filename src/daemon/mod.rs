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
//!   checkpoint starts first; a checkpoint never runs twice at once, and a
//!   watcher's checkpoints run one at a time in queue order (its lineages'
//!   alerts are grouped and resolved in that order). Each evaluation fetches
//!   its checkpoint, resolves its baseline (configured, or named by the
//!   registry) and hands both to [`crate::evaluation`] (which reuses the
//!   baseline's completed run, one evaluation per run identity at a time,
//!   evaluates, audits and decides drift), then the decision to the alerts. A failed attempt is recorded and
//!   retried with backoff; a crash resumes the run where it stopped.
//! - SIGTERM/SIGINT stop at a prompt boundary with progress saved; SIGHUP
//!   reloads the config (an invalid one is rejected and the old one kept);
//!   systemd hears READY, WATCHDOG (only while healthy) and STOPPING.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use safedrift_watchers::{Baseline, Cache, Checkpoint, Target, Watcher, Webhook};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{
    self, BackendConfig, Config, LaneMode, Source, WatcherConfig, WatcherSettings,
};
use crate::evaluation::{self, KeyedLocks};
use crate::pipeline::EvalError;
use crate::queue::{self, Queue};
use crate::resolve::Resolver;
use crate::store::{CheckpointRecord, CheckpointStatus, ModelRef, RunRecord, Store};

mod evaluate;
mod health;
mod lanes;
mod plan;
mod watch;

use health::*;
use lanes::*;
use plan::*;
use watch::*;

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

/// Runs the daemon until SIGTERM/SIGINT. Errors before it is ready exit 2.
pub async fn run(source: Source) -> Result<(), DaemonError> {
    // Installed first: a SIGTERM or SIGINT that arrives while the daemon
    // starts is kept and acted on once it is up (a clean stop, the store
    // flushed) instead of killing the process halfway through its start.
    let signals = Signals::install()?;
    // Before the store is opened: what start-up counts (records moved to
    // the quarantine) is in `/metrics`.
    crate::api::telemetry::install();
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
    daemon.undo_what_a_killed_run_left().await;
    daemon.alerts.start(&daemon.cancel).await;

    let server = serve(&daemon, listener, api_config, api_token);
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

/// Serves the API, the dashboard and the daemon's own routes on `listener`
/// until the daemon stops.
fn serve(
    daemon: &Arc<Daemon>,
    listener: tokio::net::TcpListener,
    api_config: Arc<Config>,
    api_token: Option<String>,
) -> tokio::task::JoinHandle<()> {
    let api = crate::api::Api::with_token(
        daemon.store.clone(),
        api_config,
        api_token.map(|t| Sha256::digest(t.as_bytes()).into()),
    )
    .with_link(Arc::new(Link(daemon.clone())));
    let app = crate::api::guard_hosts(router(daemon.clone()), &daemon.config().api)
        .merge(crate::api::app(api));
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
    /// What a daemon killed mid-evaluation left on other machines and
    /// processes, undone before any evaluation starts its own: LoRA
    /// adapters loaded on its vLLM fleets, and servers it launched.
    async fn undo_what_a_killed_run_left(&self) {
        let resolver = self.resolver.read().unwrap().clone();
        resolver.unload_stale_adapters().await;
        let launch_dir = self.config().data_dir.join("launch");
        let reaped = tokio::task::spawn_blocking(move || {
            crate::backend::launch::reap_leftovers(&launch_dir)
        })
        .await
        .unwrap_or(0);
        if reaped > 0 {
            info!(
                servers = reaped,
                "stopped the servers a previous run launched and left behind"
            );
        }
    }

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
        self.start_watchers(scheduler).await?;
        self.alerts
            .reload(&self.config(), &self.cancel)
            .await
            .map_err(DaemonError)
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
