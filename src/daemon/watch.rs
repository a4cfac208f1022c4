//! Watching registries: each watcher polled on its schedule, its webhook
//! and its own wake signal, with backoff; what it finds is queued once.

use super::*;

impl Daemon {
    pub(super) async fn start_watchers(
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
    pub(super) async fn watch(
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
    pub(super) fn enqueue(&self, slot: &WatcherSlot, found: &[Checkpoint]) -> usize {
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

    pub(super) fn webhook(&self, kind: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
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
}

/// The registry webhooks; the API (and `/healthz`) is merged in by `run`.
pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/hooks/mlflow", post(hook_mlflow))
        .route("/hooks/huggingface", post(hook_huggingface))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(daemon)
}

pub(super) async fn hook_mlflow(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    hook_answer(d.webhook("mlflow", &headers, &body))
}

pub(super) async fn hook_huggingface(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    hook_answer(d.webhook("huggingface", &headers, &body))
}

pub(super) fn hook_answer(status: StatusCode) -> impl IntoResponse {
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
