//! The durable outbox: alert records in sled, one delivery state per target,
//! and one delivery task per target.
//!
//! Order of writes for one attempt:
//! 1. The alert record, with a `pending` delivery per routed target, is
//!    written and flushed (fsync) before any attempt (see [`super::grouping`]).
//! 2. Before an attempt the delivery is marked `sending` (attempts + 1) and
//!    flushed.
//! 3. After it, `delivered`, `pending` with the next attempt time, or `dead`,
//!    and flushed.
//!
//! The only window for a duplicate is a crash between the target accepting
//! the alert and step 3 reaching the disk (the time of one fsync): after a
//! restart a `sending` delivery is attempted again. It carries the same alert
//! id (`webhook-id`, the email's Message-ID, the Alertmanager `alert_id`
//! annotation; Alertmanager itself merges the copy, which has the same
//! labels), so receivers can drop the copy. Every other crash point is safe:
//! before step 2 nothing was sent, after step 3 nothing is sent again. A
//! stop (SIGTERM) lets attempts in flight finish first (up to 15 s).
//!
//! Each target has its own task, working through its due deliveries oldest
//! first, so a target that is down only delays itself. Failures are retried
//! with exponential backoff (`backoff_initial` doubling up to `backoff_max`,
//! ±25% jitter, or the server's `Retry-After`); an alert still undelivered
//! `dead_letter_after` after it was created is marked `dead`, logged at warn
//! level and kept in the record (the API lists it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::grouping::{self, Decision, LineageState, Plan};
use super::record::{AlertKind, AlertRecord, DeliveryStatus};
use super::render::{self, Example};
use super::target::{Format, TargetConfig};
use super::{email, webhook};
use crate::store::{Store, StoreError};

/// The index of the deliveries still to make (kept by the store).
pub use crate::store::OPEN;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outbox: the store's alert trees, and the lock that serializes
/// changes to records.
#[derive(Clone)]
pub struct Outbox {
    pub store: Store,
    lock: Arc<Mutex<()>>,
}

impl Outbox {
    pub fn open(store: &Store) -> Result<Outbox, StoreError> {
        Ok(Outbox {
            store: store.clone(),
            lock: Arc::new(Mutex::new(())),
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        self.store.alert(id)
    }

    pub fn decision(&self, run_id: &str) -> Result<Option<Decision>, StoreError> {
        self.store.alert_decision(run_id)
    }

    pub fn lineage(&self, lineage: &str) -> Result<LineageState, StoreError> {
        // An undecodable state is quarantined and the lineage starts over.
        Ok(self.store.alert_lineage(lineage)?.unwrap_or_default())
    }

    /// Every alert record, oldest first.
    /// Records that cannot be decoded are quarantined and left out.
    pub fn all(&self) -> Result<Vec<AlertRecord>, StoreError> {
        self.store.all_alerts()
    }

    /// Decides a run once: returns the decision (the stored one when the run
    /// was decided before). `make` computes the plan from the lineage state.
    pub fn decide_once(
        &self,
        run_id: &str,
        lineage: &str,
        make: impl FnOnce(LineageState, &dyn Fn(&str) -> Option<AlertRecord>) -> Plan,
    ) -> Result<(Decision, Vec<AlertRecord>), StoreError> {
        let _guard = self.lock.lock().unwrap();
        if let Some(d) = self.decision(run_id)? {
            return Ok((d, vec![]));
        }
        let state = self.lineage(lineage)?;
        let get = |id: &str| self.get(id).ok().flatten();
        let plan = make(state, &get);
        self.store.put_alert_decision(
            run_id,
            &plan.decision,
            &plan.lineage,
            &plan.state,
            &plan.records,
        )?;
        Ok((plan.decision, plan.records))
    }

    /// Changes one record under the lock; returns the new record, or None
    /// when it does not exist or `change` returned false.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut AlertRecord) -> bool,
    ) -> Result<Option<AlertRecord>, StoreError> {
        let _guard = self.lock.lock().unwrap();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        if !change(&mut rec) {
            return Ok(None);
        }
        self.store.put_alert(&rec)?;
        Ok(Some(rec))
    }

    /// The oldest delivery of `target` that is due (a `sending` one is due at
    /// once: it was cut short by a crash), and else when the next one is.
    fn next_due(
        &self,
        target: &str,
        now: u64,
    ) -> Result<(Option<String>, Option<u64>), StoreError> {
        let mut next: Option<u64> = None;
        for id in self.store.open_deliveries(target)? {
            let Some(rec) = self.get(&id)? else {
                continue;
            };
            let Some(d) = rec.deliveries.get(target) else {
                continue;
            };
            match d.status {
                DeliveryStatus::Sending => return Ok((Some(rec.id), None)),
                DeliveryStatus::Pending if d.next_attempt_ms <= now => {
                    return Ok((Some(rec.id), None))
                }
                DeliveryStatus::Pending => {
                    next = Some(next.map_or(d.next_attempt_ms, |n| n.min(d.next_attempt_ms)))
                }
                _ => {}
            }
        }
        Ok((None, next))
    }
}

/// What a delivery task needs.
pub struct Courier {
    pub name: String,
    pub target: TargetConfig,
    pub outbox: Outbox,
    pub client: reqwest::Client,
    pub wake: Arc<Notify>,
}

impl Courier {
    /// Delivers this target's alerts until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let now = grouping_now();
            let (due, next) = match self.outbox.next_due(&self.name, now) {
                Ok(x) => x,
                Err(e) => {
                    warn!(alert_target = %self.name, error = %e, "cannot read the outbox");
                    (None, Some(now + 5_000))
                }
            };
            if let Some(id) = due {
                // Not cut short by a stop: an attempt ends within its
                // timeout, and finishing it keeps the duplicate window shut.
                self.attempt(&id).await;
                continue;
            }
            let wait = next
                .map_or(60_000, |n| n.saturating_sub(now))
                .clamp(10, 60_000);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    async fn attempt(&self, id: &str) {
        let name = self.name.clone();
        let started = match self.outbox.update(id, |rec| {
            let Some(d) = rec.deliveries.get_mut(&name) else {
                return false;
            };
            if matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Dead) {
                return false;
            }
            d.status = DeliveryStatus::Sending;
            d.attempts += 1;
            true
        }) {
            Ok(Some(rec)) => rec,
            Ok(None) => return,
            Err(e) => {
                warn!(alert_target = %self.name, alert = %id, error = %e, "cannot mark the delivery as sending");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        };
        if let Err(e) = self.outbox.store.flush().await {
            warn!(alert_target = %self.name, error = %e, "cannot flush the outbox; not sending");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        let attempts = started.deliveries[&self.name].attempts;
        let outcome = deliver(&self.target, &self.client, &self.outbox, &started).await;
        let now = grouping_now();
        let dead_at = started.created_ms + self.target.dead_letter_after().as_millis() as u64;
        let result = match &outcome {
            Ok(()) => "delivered",
            Err(_) if now >= dead_at => "dead",
            Err(_) => "retry",
        };
        let policy = self.target.retry_policy();
        let updated = self.outbox.update(id, |rec| {
            let Some(d) = rec.deliveries.get_mut(&name) else {
                return false;
            };
            match &outcome {
                Ok(()) => {
                    d.status = DeliveryStatus::Delivered;
                    d.delivered_at = Some(grouping::rfc3339(now));
                    d.last_error = None;
                }
                Err(e) => {
                    d.last_error = Some(e.message.clone());
                    if now >= dead_at {
                        d.status = DeliveryStatus::Dead;
                    } else {
                        d.status = DeliveryStatus::Pending;
                        let delay = policy.delay(attempts.saturating_sub(1), e.hint);
                        d.next_attempt_ms = (now + delay.as_millis() as u64).min(dead_at.max(now));
                    }
                }
            }
            true
        });
        if let Err(e) = updated {
            warn!(alert_target = %self.name, alert = %id, error = %e, "cannot record the delivery");
        }
        let _ = self.outbox.store.flush().await;
        ::metrics::counter!("safedrift_alert_deliveries_total", "target" => self.name.clone(), "result" => result)
            .increment(1);
        match (&outcome, result) {
            (Ok(()), _) => {
                info!(alert_target = %self.name, alert = %id, attempts, "alert delivered")
            }
            (Err(e), "dead") => {
                warn!(alert_target = %self.name, alert = %id, attempts, error = %e.message,
                "alert dead-lettered: the target failed until `dead_letter_after`")
            }
            (Err(e), _) => {
                warn!(alert_target = %self.name, alert = %id, attempts, error = %e.message, "alert delivery failed; will retry")
            }
        }
    }
}

fn grouping_now() -> u64 {
    now_ms()
}

/// Up to five harmful answers of the alert's newest run, for targets that
/// set `include_responses`.
pub fn examples(store: &Store, rec: &AlertRecord) -> Vec<Example> {
    let Some(run_id) = rec.run_ids.last() else {
        return vec![];
    };
    store
        .results(run_id)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.verdict.as_ref().and_then(|v| v.harmful) == Some(true))
        .take(5)
        .map(|r| Example {
            run_id: run_id.clone(),
            prompt_id: r.prompt_id,
            category: r.category,
            response: r.response,
        })
        .collect()
}

/// One attempt at one target.
pub async fn deliver(
    target: &TargetConfig,
    client: &reqwest::Client,
    outbox: &Outbox,
    rec: &AlertRecord,
) -> Result<(), webhook::SendError> {
    let examples = if target.common.include_responses {
        examples(&outbox.store, rec)
    } else {
        vec![]
    };
    let firing: Vec<AlertRecord> = rec
        .resolves
        .iter()
        .filter_map(|id| outbox.get(id).ok().flatten())
        .collect();
    send(target, client, rec, &examples, Some(&firing)).await
}

/// Sends `rec` to `target`. For Alertmanager, `resolved_with` holds the
/// firing alerts a resolved notice ends.
pub async fn send(
    target: &TargetConfig,
    client: &reqwest::Client,
    rec: &AlertRecord,
    examples: &[Example],
    resolved_with: Option<&[AlertRecord]>,
) -> Result<(), webhook::SendError> {
    let fail = |message: String| webhook::SendError {
        message,
        hint: None,
    };
    match target.format() {
        None => {
            let t = target.clone();
            let r = rec.clone();
            let ex = examples.to_vec();
            tokio::time::timeout(target.timeout() + Duration::from_secs(5), async move {
                email::send(&t, &r, &ex).await
            })
            .await
            .map_err(|_| fail("SMTP: timed out".into()))?
            .map_err(fail)
        }
        Some(format) => {
            let url = target.url().map_err(fail)?;
            match format {
                Format::Json => {
                    let key = target
                        .signing_key()
                        .map_err(fail)?
                        .ok_or_else(|| fail("no signing secret".into()))?;
                    let body =
                        serde_json::to_vec(&render::json_payload(rec, examples)).expect("json");
                    webhook::post(
                        client,
                        &url,
                        body,
                        Some((&key, &rec.id)),
                        target.timeout(),
                        false,
                    )
                    .await
                }
                Format::Slack => {
                    let body =
                        serde_json::to_vec(&render::slack_payload(rec, examples)).expect("json");
                    webhook::post(client, &url, body, None, target.timeout(), true).await
                }
                Format::Alertmanager => {
                    let alerts = am_payload(target, rec, resolved_with.unwrap_or(&[]));
                    let body = serde_json::to_vec(&alerts).expect("json");
                    webhook::post(client, &am_url(&url), body, None, target.timeout(), false).await
                }
            }
        }
    }
}

pub fn am_url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

/// The Alertmanager alerts for a record (one per drifted model, see
/// [`render::am_alerts`]): firing, with `endsAt` four repeat intervals
/// ahead (so they stay active between repeats, as Prometheus does), or, for
/// a resolved notice, the alerts of each firing record it resolves, same
/// labels, with `endsAt` set to the resolution time.
pub fn am_payload(
    target: &TargetConfig,
    rec: &AlertRecord,
    firing: &[AlertRecord],
) -> serde_json::Value {
    match rec.kind {
        AlertKind::Resolved => serde_json::Value::Array(
            firing
                .iter()
                .flat_map(|f| render::am_alerts(f, &rec.created_at))
                .collect(),
        ),
        _ => {
            let ends =
                grouping::rfc3339(now_ms() + 4 * target.repeat_interval().as_millis() as u64);
            serde_json::Value::Array(render::am_alerts(rec, &ends))
        }
    }
}

/// Alertmanager expects firing alerts to be sent again while they fire and
/// resolved ones for a while after: every `repeat_interval`, this sends the
/// firing alerts of every firing lineage that were delivered to the target,
/// and the resolved notices younger than `resolve_resend`.
pub async fn alertmanager_repeater(
    name: String,
    target: TargetConfig,
    outbox: Outbox,
    client: reqwest::Client,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(target.repeat_interval()) => {}
        }
        let Ok(all) = outbox.all() else { continue };
        let by_id: BTreeMap<&str, &AlertRecord> = all.iter().map(|r| (r.id.as_str(), r)).collect();
        let delivered = |r: &AlertRecord| {
            r.deliveries
                .get(&name)
                .is_some_and(|d| d.status == DeliveryStatus::Delivered)
        };
        let mut alerts = Vec::new();
        let now = now_ms();
        let lineages: Vec<String> = all
            .iter()
            .map(|r| r.lineage.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for l in lineages {
            let Ok(state) = outbox.lineage(&l) else {
                continue;
            };
            if !state.firing {
                continue;
            }
            for id in &state.episode {
                if let Some(r) = by_id.get(id.as_str()).filter(|r| delivered(r)) {
                    if let serde_json::Value::Array(mut a) = am_payload(&target, r, &[]) {
                        alerts.append(&mut a);
                    }
                }
            }
        }
        // Counted from the first delivery of the resolution.
        let sent_ms = |r: &AlertRecord| {
            r.deliveries
                .get(&name)
                .and_then(|d| d.delivered_at.as_deref())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(r.created_ms, |t| t.timestamp_millis() as u64)
        };
        for r in all.iter().filter(|r| {
            r.kind == AlertKind::Resolved
                && delivered(r)
                && now < sent_ms(r) + target.resolve_resend().as_millis() as u64
        }) {
            let firing: Vec<AlertRecord> = r
                .resolves
                .iter()
                .filter_map(|id| by_id.get(id.as_str()).map(|r| (*r).clone()))
                .collect();
            if let serde_json::Value::Array(mut a) = am_payload(&target, r, &firing) {
                alerts.append(&mut a);
            }
        }
        if alerts.is_empty() {
            continue;
        }
        let body = serde_json::to_vec(&alerts).expect("json");
        let url = match target.url() {
            Ok(u) => u,
            Err(e) => {
                warn!(alert_target = %name, error = %e, "cannot repeat alerts to Alertmanager");
                continue;
            }
        };
        if let Err(e) =
            webhook::post(&client, &am_url(&url), body, None, target.timeout(), false).await
        {
            warn!(alert_target = %name, error = %e.message, "cannot repeat alerts to Alertmanager; trying again next interval");
        }
    }
}
