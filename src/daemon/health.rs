//! What `/healthz` shows of the daemon: watchers, queue, lanes, quarantine.

use super::*;

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
pub(super) struct Evaluation {
    pub(super) lane: Lane,
    /// The watcher that found the checkpoint (`api` for API requests).
    pub(super) watcher: String,
    /// The checkpoint's own key (without the plan).
    pub(super) checkpoint: String,
    pub(super) attempt: u32,
    pub(super) started: String,
    /// Its run's progress (the bar's prefix is the run id once it starts).
    pub(super) progress: indicatif::ProgressBar,
}

#[derive(Default)]
pub(super) struct Health {
    pub(super) watchers: BTreeMap<String, WatcherHealth>,
    /// The evaluations under way, by queue record key.
    pub(super) evaluating: BTreeMap<String, Evaluation>,
    /// The dispatcher loop ended while the daemon was not stopping.
    pub(super) evaluator_dead: bool,
}

impl Daemon {
    pub(super) fn health_report(&self) -> (bool, serde_json::Value) {
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
    pub(super) fn lanes_report(
        &self,
        health: &Health,
        queued: &[CheckpointRecord],
    ) -> serde_json::Value {
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
