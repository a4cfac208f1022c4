//! What the outbox stores about an alert: one [`AlertRecord`] per alert (a
//! firing group, a resolved notice or a test message), with the delivery
//! state of every target it was routed to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why the alert exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Drift found in one or more checkpoints of a lineage.
    Firing,
    /// A later checkpoint of a drifted lineage is back within the thresholds.
    Resolved,
    /// Sent by `safedrift alert test`.
    Test,
    /// The local classifier judge agreed with its teacher less often than
    /// `min_agreement` in a run's audit: its scores can no longer be
    /// trusted (the judge itself is drifting).
    JudgeAudit,
}

/// Where one target's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet (waiting for its next attempt).
    Pending,
    /// A delivery attempt has started and not finished (after a crash: the
    /// target may or may not have it).
    Sending,
    /// The target accepted it.
    Delivered,
    /// Given up after the target's dead-letter time.
    Dead,
}

/// One target's delivery of one alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix ms before which the next attempt does not start.
    pub next_attempt_ms: u64,
    pub delivered_at: Option<String>,
}

/// An alert in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// `a_` + ULID; the idempotency key sent to every target.
    pub id: String,
    pub kind: AlertKind,
    /// The lineage (watcher and base model) the alert groups by.
    pub lineage: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// One line for subjects and titles.
    pub summary: String,
    /// The runs the alert is about (the newest last).
    pub run_ids: Vec<String>,
    /// The models (spec@revision) the alert is about.
    pub models: Vec<String>,
    pub created_at: String,
    /// Target name -> delivery state.
    pub deliveries: BTreeMap<String, Delivery>,
    /// Unix ms of `created_at` (grouping windows and dead-letter times).
    #[serde(default)]
    pub created_ms: u64,
    /// What each run of the alert found (the message is rendered from this;
    /// it never holds model output).
    #[serde(default)]
    pub runs: Vec<AlertRun>,
    /// For a resolved notice: the firing alerts it resolves.
    #[serde(default)]
    pub resolves: Vec<String>,
}

/// One metric of a candidate next to its baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub metric: String,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    pub delta: Option<f64>,
    /// Wilson 95% intervals, for rates.
    pub baseline_ci95: Option<[f64; 2]>,
    pub candidate_ci95: Option<[f64; 2]>,
}

/// A category's harmfulness rate next to its baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryRow {
    pub category: String,
    pub n: usize,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    pub delta: Option<f64>,
    pub baseline_ci95: Option<[f64; 2]>,
    pub candidate_ci95: Option<[f64; 2]>,
    /// Holm-corrected p-value of the category's test, when it was tested.
    pub p_adjusted: Option<f64>,
    pub fired: bool,
}

/// A run an alert is about: what the message says of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRun {
    pub run_id: String,
    /// `watcher/model@revision`.
    pub checkpoint: Option<String>,
    pub watcher: Option<String>,
    pub model: String,
    pub revision: Option<String>,
    pub baseline: String,
    pub baseline_run: Option<String>,
    pub drifted: bool,
    pub severity: String,
    pub metrics: Vec<MetricRow>,
    pub categories: Vec<CategoryRow>,
    pub findings: Vec<super::Finding>,
    /// The run in the dashboard and in the API.
    pub dashboard_url: String,
    pub api_url: String,
    /// How a sequential run was decided (`[drift] mode = "sequential"`):
    /// prompts asked, why it stopped, each overall finding's anytime-valid
    /// interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<String>,
}
