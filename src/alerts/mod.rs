//! Alerts: drift decisions become alerts that reach every configured target
//! exactly once in the common case, and at least once always.
//!
//! - [`grouping`]: after each run with a baseline, the run's drift decision
//!   (stored with the run) is turned into an alert at most once, grouped per
//!   lineage within `[alerting] group_window`, and resolved once when a later
//!   checkpoint of the lineage is back within the thresholds.
//! - [`routing`]: which targets take which alert (`watchers`, `models`,
//!   `min_severity`), and how severity follows from the fired findings.
//! - [`outbox`]: the records in sled, written and flushed before any attempt;
//!   one delivery task per target; retries with backoff; dead letters. Its
//!   docs describe the one window in which a crash can cause a second
//!   delivery (a crash between the target accepting and the `delivered` mark
//!   reaching the disk), and that the copy carries the same id.
//! - [`email`], [`webhook`], [`render`]: the targets and their messages,
//!   which never hold a secret, and hold model output only for targets that
//!   set `include_responses = true`.
//! - [`record`]: the [`record::AlertRecord`] the outbox stores and the API lists.
//!
//! Changes to `[alerts.*]` and `[alerting]` take effect on SIGHUP: the
//! delivery tasks finish the attempts in flight and are restarted with the
//! new targets (deliveries already recorded for a target that is gone stay
//! in the outbox, pending, until it is configured again).

pub mod email;
pub mod grouping;
pub mod outbox;
pub mod record;
pub mod render;
pub mod routing;
pub mod target;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::report::Run;
use crate::store::{RunStatus, Store};
use outbox::{Courier, Outbox};
use record::AlertRecord;
use target::{Format, TargetConfig};

/// Where links in alerts point: `[api] public_url`, else `http://<listen>`.
pub fn public_url(config: &Config) -> String {
    config
        .api
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.api.listen))
}

/// What a reload replaces: the config the alerts follow, its targets and
/// each target's wake-up signal.
struct Live {
    config: Arc<Config>,
    targets: Arc<BTreeMap<String, TargetConfig>>,
    wake: Arc<BTreeMap<String, Arc<Notify>>>,
}

impl Live {
    fn new(config: &Config) -> Result<Live, String> {
        let targets = config.alerts.clone();
        let wake = targets
            .keys()
            .map(|k| (k.clone(), Arc::new(Notify::new())))
            .collect();
        Ok(Live {
            config: Arc::new(config.clone()),
            targets: Arc::new(targets),
            wake: Arc::new(wake),
        })
    }

    fn wake(&self, target: &str) {
        if let Some(w) = self.wake.get(target) {
            w.notify_one();
        }
    }
}

/// The daemon's alert dispatcher.
#[derive(Clone)]
pub struct Alerts {
    outbox: Outbox,
    live: Arc<RwLock<Arc<Live>>>,
    client: reqwest::Client,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Stops the current delivery tasks (a child of the daemon's token,
    /// replaced on reload).
    couriers: Arc<Mutex<Option<CancellationToken>>>,
}

impl Alerts {
    pub fn new(store: &Store, config: &Config) -> Result<Alerts, String> {
        Ok(Alerts {
            outbox: Outbox::open(store).map_err(|e| e.to_string())?,
            live: Arc::new(RwLock::new(Arc::new(Live::new(config)?))),
            client: reqwest::Client::builder()
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            tasks: Arc::default(),
            couriers: Arc::default(),
        })
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap().clone()
    }

    /// Decides the runs that completed without a decision (a crash came
    /// between storing a run and deciding on it), then starts one delivery
    /// task per target (and the Alertmanager repeaters).
    pub async fn start(&self, cancel: &CancellationToken) {
        if let Err(e) = self.reconcile().await {
            error!(error = %e, "cannot reconcile alerts with the stored runs");
        }
        self.spawn_couriers(cancel.child_token());
    }

    fn spawn_couriers(&self, cancel: CancellationToken) {
        let live = self.live();
        for (name, target) in live.targets.iter() {
            let courier = Courier {
                name: name.clone(),
                target: target.clone(),
                outbox: self.outbox.clone(),
                client: self.client.clone(),
                wake: live.wake[name].clone(),
            };
            let task = tokio::spawn(courier.run(cancel.clone()));
            self.tasks.lock().unwrap().push(task);
            if target.format() == Some(Format::Alertmanager) {
                let task = tokio::spawn(outbox::alertmanager_repeater(
                    name.clone(),
                    target.clone(),
                    self.outbox.clone(),
                    self.client.clone(),
                    cancel.clone(),
                ));
                self.tasks.lock().unwrap().push(task);
            }
        }
        *self.couriers.lock().unwrap() = Some(cancel);
    }

    /// Applies a new config's `[alerts.*]` and `[alerting]`: the current
    /// delivery tasks finish their attempts in flight (at most 15 s), then
    /// tasks for the new targets start. Errs, changing nothing, when a
    /// target does not parse (the daemon checks the whole config first).
    pub async fn reload(&self, config: &Config, daemon: &CancellationToken) -> Result<(), String> {
        let live = Live::new(config)?;
        let old = self.couriers.lock().unwrap().take();
        if let Some(old) = old {
            old.cancel();
            self.stopped(Duration::from_secs(15)).await;
        }
        *self.live.write().unwrap() = Arc::new(live);
        if !daemon.is_cancelled() {
            self.spawn_couriers(daemon.child_token());
            // Deliveries due now are picked up by the new tasks at once.
            let live = self.live();
            for name in live.targets.keys() {
                live.wake(name);
            }
        }
        Ok(())
    }

    /// Waits (after the cancel) for the delivery attempts in flight to end,
    /// at most `limit`, so that a stop rarely leaves a delivery `sending`.
    pub async fn stopped(&self, limit: Duration) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("alert deliveries still in flight at stop; they are retried on the next start");
        }
    }

    /// Decides, once, what a crash left undecided: the drift of a
    /// checkpoint's run compared with its baseline, and the judge audit of
    /// a run whose local judge fell below its teacher.
    async fn reconcile(&self) -> Result<(), String> {
        let store = &self.outbox.store;
        let runs = store.runs().map_err(|e| e.to_string())?;
        let undecided = |key: &str| -> Result<bool, String> {
            Ok(self
                .outbox
                .decision(key)
                .map_err(|e| e.to_string())?
                .is_none())
        };
        for run in runs.iter().filter(|r| r.status == RunStatus::Completed) {
            let drift = run.checkpoint.is_some()
                && run.drift.is_some()
                && run.baseline_run.is_some()
                && undecided(&run.id)?;
            let audit = run.audit.as_ref().is_some_and(|a| a.below_threshold)
                && undecided(&audit_key(&run.id))?;
            if !drift && !audit {
                continue;
            }
            let results = store.results(&run.id).map_err(|e| e.to_string())?;
            let base_id = run.baseline_run.as_deref().unwrap_or_default();
            let base = match run.baseline_run {
                Some(_) => store.get_run(base_id).map_err(|e| e.to_string())?,
                None => None,
            };
            let mut doc = match &base {
                Some(base) => {
                    let base_results = store.results(&base.id).map_err(|e| e.to_string())?;
                    let config = self.live().config.clone();
                    Run::compared(run, &results, base, &base_results, &config.drift)
                }
                None => Run::new(run, &results),
            };
            doc.set_drift(run.drift.clone());
            if audit {
                info!(run = %run.id, "recording the judge audit alert of a run that completed before a restart");
                if let Err(e) = self.ingest_audit(&doc).await {
                    error!(run = %run.id, error = %e, "cannot record the judge audit alert");
                }
            }
            if drift {
                if base.is_none() {
                    warn!(run = %run.id, baseline = %base_id, "the baseline run is gone; no alert decision");
                    continue;
                }
                info!(run = %run.id, "deciding on a run that completed before a restart");
                if let Err(e) = self.ingest(&doc).await {
                    error!(run = %doc.id, error = %e, "cannot record the alert decision; retried on restart");
                }
            }
        }
        Ok(())
    }

    /// Called once per completed checkpoint evaluation (again after a
    /// restart is harmless: a run is decided once).
    pub async fn run_completed(&self, doc: &Run) {
        if let Err(e) = self.ingest_audit(doc).await {
            error!(run = %doc.id, error = %e, "cannot record the judge audit alert");
        }
        if let Err(e) = self.ingest(doc).await {
            // The run is stored; the next start decides on it.
            error!(run = %doc.id, error = %e, "cannot record the alert decision; retried on restart");
        }
    }

    /// A run whose local-judge audit fell below `min_agreement` raises one
    /// `judge_audit` alert (decided once per run, like drift), to every
    /// target that takes the run's watcher and model.
    async fn ingest_audit(&self, doc: &Run) -> Result<(), String> {
        let Some(audit) = doc.audit.as_ref().filter(|a| a.below_threshold) else {
            return Ok(());
        };
        let lineage = format!("judge:{}", doc.judge);
        let summary = format!(
            "{} agreed with its teacher {} on {} of {} audited answers ({}; minimum {:.0}%)",
            doc.judge,
            audit.teacher,
            audit.agreed,
            audit.checked,
            audit
                .agreement
                .map(|a| format!("{:.0}%", a * 100.0))
                .unwrap_or_else(|| "n/a".into()),
            audit.min_agreement * 100.0
        );
        let live = self.live();
        let public_url = public_url(&live.config);
        let now = outbox::now_ms();
        let run = grouping::summarize(doc, &public_url);
        let subject = routing::Subject {
            watcher: run.watcher.as_deref(),
            spec: &run.model,
            revision: run.revision.as_deref(),
            severity: routing::Severity::Warning,
        };
        let deliveries = live
            .targets
            .iter()
            .filter(|(_, t)| routing::matches(t, &subject))
            .map(|(n, _)| (n.clone(), grouping::pending(now)))
            .collect();
        let id = grouping::new_alert_id();
        let rec = AlertRecord {
            id: id.clone(),
            kind: record::AlertKind::JudgeAudit,
            lineage: lineage.clone(),
            severity: "warning".into(),
            summary,
            run_ids: vec![doc.id.clone()],
            models: vec![doc.model.spec.clone()],
            created_at: grouping::rfc3339(now),
            deliveries,
            created_ms: now,
            runs: vec![run],
            resolves: vec![],
        };
        let (_, records) = self
            .outbox
            .decide_once(&audit_key(&doc.id), &lineage, |state, _| grouping::Plan {
                decision: grouping::Decision {
                    action: "judge_audit".into(),
                    alert: Some(id.clone()),
                    at: rec.created_at.clone(),
                },
                lineage: lineage.clone(),
                state,
                records: vec![rec],
            })
            .map_err(|e| e.to_string())?;
        self.outbox.store.flush().await.map_err(|e| e.to_string())?;
        for rec in &records {
            warn!(alert = %rec.id, run = %doc.id, summary = %rec.summary, "judge audit alert queued");
            for t in rec.deliveries.keys() {
                live.wake(t);
            }
        }
        Ok(())
    }

    async fn ingest(&self, doc: &Run) -> Result<(), String> {
        let Some(lineage) = grouping::lineage(doc) else {
            return Ok(());
        };
        if doc.drift.is_none() {
            return Ok(());
        }
        let live = self.live();
        let window = live
            .config
            .alerting
            .group_window
            .unwrap_or(Duration::from_secs(60))
            .as_millis() as u64;
        let public_url = public_url(&live.config);
        let now = outbox::now_ms();
        let targets = live.targets.clone();
        let (decision, records) = self
            .outbox
            .decide_once(&doc.id, &lineage, |state, get| {
                grouping::decide(
                    doc,
                    &lineage,
                    state,
                    get,
                    &targets,
                    &public_url,
                    window,
                    now,
                )
            })
            .map_err(|e| e.to_string())?;
        self.outbox.store.flush().await.map_err(|e| e.to_string())?;
        if records.is_empty() {
            return Ok(());
        }
        for rec in &records {
            let targets: Vec<&String> = rec.deliveries.keys().collect();
            match decision.action.as_str() {
                "grouped" => {
                    info!(alert = %rec.id, run = %doc.id, lineage = %lineage, "drifted checkpoint joins an alert still inside its group window")
                }
                _ => {
                    warn!(alert = %rec.id, kind = ?rec.kind, severity = %rec.severity, run = %doc.id, lineage = %lineage, targets = ?targets, summary = %rec.summary, "alert queued")
                }
            }
            for t in rec.deliveries.keys() {
                live.wake(t);
            }
        }
        Ok(())
    }
}

/// The decision key of a run's judge audit (its drift decision is keyed by
/// the run id alone).
fn audit_key(run_id: &str) -> String {
    format!("{run_id}#audit")
}

/// A test alert for `safedrift alert test NAME` (never stored).
pub fn test_record(name: &str) -> AlertRecord {
    let now = outbox::now_ms();
    AlertRecord {
        id: grouping::new_alert_id(),
        kind: record::AlertKind::Test,
        lineage: "test".into(),
        severity: "info".into(),
        summary: format!("test message for target {name}"),
        run_ids: vec![],
        models: vec![],
        created_at: grouping::rfc3339(now),
        deliveries: BTreeMap::new(),
        created_ms: now,
        runs: vec![],
        resolves: vec![],
    }
}

/// Sends a test message to one target; the error says why it failed.
pub async fn send_test(config: &Config, name: &str) -> Result<String, String> {
    let targets = &config.alerts;
    let target = targets.get(name).ok_or_else(|| {
        let known: Vec<&str> = targets.keys().map(String::as_str).collect();
        format!(
            "no alert target named {name:?} (configured: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    })?;
    let rec = test_record(name);
    let client = reqwest::Client::new();
    outbox::send(target, &client, &rec, &[], Some(&[]))
        .await
        .map(|()| rec.id.clone())
        .map_err(|e| e.message)
}
