//! Models, their timelines across checkpoints, and the checkpoint queue;
//! lineages in [`lineages`].

use std::collections::{BTreeMap, HashMap};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::runs::RunSummary;
use super::{blocking, rejection, Api, ApiError, Shared};
use crate::alerts::record::AlertRecord;
use crate::safety_metrics::Totals;
use crate::store::{CheckpointStatus, RunFilter, RunRecord, RunStatus};

pub mod lineages;

pub(crate) use lineages::{overview, OtherModel};
pub use lineages::{Lineage, LineageBaseline, LineageList};

/// A model with runs.
#[derive(Serialize, ToSchema)]
pub struct ModelItem {
    /// The model SPEC; runs of every checkpoint of a watched model share it.
    pub name: String,
    pub runs: usize,
    /// Its newest run.
    pub latest_run: Option<RunSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub items: Vec<ModelItem>,
}

/// Every model that has runs, by name.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, description = "Models", body = ModelList),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_models(State(api): State<Shared>) -> Result<Json<ModelList>, ApiError> {
    blocking(move || {
        let items = api
            .store
            .models()?
            .into_iter()
            .map(|m| ModelItem {
                name: m.spec,
                runs: m.runs,
                latest_run: m.latest.map(RunSummary::from),
            })
            .collect();
        Ok(Json(ModelList { items }))
    })
    .await
}

/// A category's rate at one checkpoint.
#[derive(Clone, Serialize, ToSchema)]
pub struct CategoryPoint {
    pub harmfulness_rate: Option<f64>,
    pub baseline_rate: Option<f64>,
    /// Candidate minus baseline.
    pub delta: Option<f64>,
}

/// The alert a checkpoint's run opened, joined or resolved.
#[derive(Clone, Serialize, ToSchema)]
pub struct PointAlert {
    /// The alert (`GET /api/v1/alerts/{id}`).
    pub id: String,
    /// What this run did to it: `opened`, `grouped` (joined an open alert)
    /// or `resolved`.
    pub action: String,
    /// `firing` or `resolved`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub summary: String,
    pub created_at: String,
}

/// One completed run of a model: one checkpoint.
#[derive(Clone, Serialize, ToSchema)]
pub struct TimelinePoint {
    pub run_id: String,
    /// The model SPEC the run evaluated.
    pub model: String,
    pub revision: Option<String>,
    pub started_at: String,
    /// Harmful prompts scored.
    pub n: usize,
    /// Benign prompts (over-refusal).
    pub n_benign: usize,
    pub harmfulness_rate: Option<f64>,
    /// 95% Wilson interval of the rate.
    pub harmfulness_rate_ci95: Option<[f64; 2]>,
    /// Benign prompts refused (null without benign prompts).
    pub over_refusal_rate: Option<f64>,
    pub baseline_run: Option<String>,
    pub baseline_rate: Option<f64>,
    pub baseline_over_refusal_rate: Option<f64>,
    pub drift_detected: Option<bool>,
    /// The alert this run opened, joined or resolved, if any.
    pub alert: Option<PointAlert>,
    pub categories: BTreeMap<String, CategoryPoint>,
}

#[derive(Serialize, ToSchema)]
pub struct Timeline {
    pub model: String,
    /// Oldest first.
    pub points: Vec<TimelinePoint>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// The newest this many completed runs (1 to 200, default 30); for
    /// lineages, per lineage.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// Builds timeline points, reading each baseline run and alert once.
pub(crate) struct Points<'a> {
    api: &'a Api,
    baselines: HashMap<String, Option<(RunRecord, Totals)>>,
    alerts: HashMap<String, Option<AlertRecord>>,
}

impl<'a> Points<'a> {
    pub(crate) fn new(api: &'a Api) -> Points<'a> {
        Points {
            api,
            baselines: HashMap::new(),
            alerts: HashMap::new(),
        }
    }

    /// A baseline run and its totals (`None` when it is not stored).
    pub(crate) fn baseline(&mut self, id: &str) -> Result<Option<&(RunRecord, Totals)>, ApiError> {
        if !self.baselines.contains_key(id) {
            let found = match self.api.store.get_run(id)? {
                Some(base) => {
                    let totals = self.api.store.totals(&base)?;
                    Some((base, totals))
                }
                None => None,
            };
            self.baselines.insert(id.to_string(), found);
        }
        Ok(self.baselines.get(id).and_then(Option::as_ref))
    }

    /// An alert record by id (`None` when it is not stored).
    pub(crate) fn alert(&mut self, id: &str) -> Result<Option<&AlertRecord>, ApiError> {
        if !self.alerts.contains_key(id) {
            let found = crate::alerts::record::get(&self.api.store, id)?;
            self.alerts.insert(id.to_string(), found);
        }
        Ok(self.alerts.get(id).and_then(Option::as_ref))
    }

    /// The alert a run opened, joined or resolved (its grouping decision).
    pub(crate) fn run_alert(&mut self, run_id: &str) -> Result<Option<PointAlert>, ApiError> {
        let decision: Option<crate::alerts::grouping::Decision> =
            self.api.store.alert_decision(run_id)?;
        let Some(d) = decision else { return Ok(None) };
        let Some(id) = d.alert else { return Ok(None) };
        let action = d.action;
        Ok(self.alert(&id)?.map(|a| PointAlert {
            id: a.id.clone(),
            action,
            kind: serde_json::to_value(a.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            severity: a.severity.clone(),
            summary: a.summary.clone(),
            created_at: a.created_at.clone(),
        }))
    }

    /// A completed run as a point: its rates, its baseline's and the
    /// per-category deltas.
    pub(crate) fn point(&mut self, run: RunRecord) -> Result<TimelinePoint, ApiError> {
        let Totals {
            metrics: m,
            per_category: cats,
            ..
        } = self.api.store.totals(&run)?;
        let base = match &run.baseline_run {
            Some(b) => self.baseline(b)?.map(|(_, t)| t.clone()),
            None => None,
        };
        let base_m = base.as_ref().map(|t| &t.metrics);
        let base_cats = base.as_ref().map(|t| &t.per_category);
        let categories = cats
            .iter()
            .map(|(name, c)| {
                let b = base_cats
                    .and_then(|bc| bc.get(name))
                    .and_then(|c| c.harmfulness_rate);
                let delta = match (c.harmfulness_rate, b) {
                    (Some(x), Some(y)) => Some(x - y),
                    _ => None,
                };
                (
                    name.clone(),
                    CategoryPoint {
                        harmfulness_rate: c.harmfulness_rate,
                        baseline_rate: b,
                        delta,
                    },
                )
            })
            .collect();
        let alert = self.run_alert(&run.id)?;
        Ok(TimelinePoint {
            model: run.model.spec.clone(),
            revision: run.model.revision.clone(),
            started_at: run.started_at.clone(),
            n: m.n,
            n_benign: m.n_benign,
            harmfulness_rate: m.harmfulness_rate,
            harmfulness_rate_ci95: m.harmfulness_rate_ci95,
            over_refusal_rate: m.over_refusal_rate,
            baseline_run: run.baseline_run.clone(),
            baseline_rate: base_m.and_then(|b| b.harmfulness_rate),
            baseline_over_refusal_rate: base_m.and_then(|b| b.over_refusal_rate),
            drift_detected: run.drift.as_ref().map(|d| d.detected),
            alert,
            categories,
            run_id: run.id,
        })
    }
}

/// The newest `limit` completed runs of a model, oldest first, with their
/// rates, intervals, baseline rates and per-category deltas.
pub(crate) fn timeline_points(
    api: &Api,
    model: &str,
    limit: usize,
) -> Result<Vec<TimelinePoint>, ApiError> {
    let filter = RunFilter {
        model: Some(model.to_string()),
        status: Some(RunStatus::Completed),
        ..RunFilter::default()
    };
    let page = api.store.list_runs(&filter, limit, None)?;
    let mut points = Points::new(api);
    page.runs
        .into_iter()
        .rev()
        .map(|run| points.point(run))
        .collect()
}

/// A model's harmfulness rate across its checkpoints, with the baseline.
#[utoipa::path(get, path = "/api/v1/models/{name}/timeline", tag = "models",
    params(("name" = String, Path, description = "Model SPEC"), TimelineQuery),
    responses((status = 200, description = "The timeline", body = Timeline),
              (status = 400, description = "Bad query", body = super::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No runs of this model", body = super::ErrorBody),
              (status = 422, description = "Invalid limit", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn timeline(
    State(api): State<Shared>,
    Path(name): Path<String>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Timeline>, ApiError> {
    let Query(q) = query.map_err(|e| rejection(e.status(), e.body_text()))?;
    let limit = timeline_limit(q.limit)?;
    blocking(move || {
        let any = api.store.list_runs(
            &RunFilter {
                model: Some(name.clone()),
                ..RunFilter::default()
            },
            1,
            None,
        )?;
        if any.runs.is_empty() {
            return Err(ApiError::not_found(format!("no runs of model {name}")));
        }
        let points = timeline_points(&api, &name, limit)?;
        Ok(Json(Timeline {
            model: name,
            points,
        }))
    })
    .await
}

fn timeline_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(30),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", "from 1 to 200")),
    }
}

/// A checkpoint in the daemon's queue.
#[derive(Serialize, ToSchema)]
pub struct CheckpointItem {
    /// `watcher/model@revision`.
    pub key: String,
    pub watcher: String,
    pub model: String,
    pub revision: String,
    /// `queued`, `running` or `done`.
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub run_id: Option<String>,
    pub baseline_run_id: Option<String>,
    pub first_seen: String,
    pub updated: String,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    pub items: Vec<CheckpointItem>,
}

pub(crate) fn checkpoint_status(s: CheckpointStatus) -> &'static str {
    match s {
        CheckpointStatus::Queued => "queued",
        CheckpointStatus::Running => "running",
        CheckpointStatus::Done => "done",
    }
}

/// Every checkpoint the daemon has queued, newest first.
#[utoipa::path(get, path = "/api/v1/checkpoints", tag = "models",
    responses((status = 200, description = "Checkpoints", body = CheckpointList),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_checkpoints(State(api): State<Shared>) -> Result<Json<CheckpointList>, ApiError> {
    blocking(move || {
        let mut records = api.queue.all()?;
        records.sort_by(|a, b| b.first_seen.cmp(&a.first_seen).then(b.key.cmp(&a.key)));
        let items = records
            .into_iter()
            .map(|r| CheckpointItem {
                key: r.checkpoint.key(),
                watcher: r.checkpoint.watcher.clone(),
                model: r.checkpoint.model.clone(),
                revision: r.checkpoint.revision.clone(),
                status: checkpoint_status(r.status).into(),
                attempts: r.attempts,
                last_error: r.last_error,
                run_id: r.run_id,
                baseline_run_id: r.baseline_run_id,
                first_seen: r.first_seen,
                updated: r.updated,
            })
            .collect();
        Ok(Json(CheckpointList { items }))
    })
    .await
}

/// A record the store could not decode, moved aside (see the store's doc).
#[derive(Serialize, ToSchema)]
pub struct QuarantineItem {
    /// The tree it was read from (`checkpoints`, `runs`, `alerts` ...).
    pub tree: String,
    /// Its key (bytes that are not UTF-8 replaced).
    pub key: String,
    /// Why it could not be decoded.
    pub error: String,
    /// Its size in bytes (the bytes themselves are kept in the store and
    /// carried by `safedrift export`, not served here).
    pub bytes: usize,
    pub quarantined_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct QuarantineList {
    pub items: Vec<QuarantineItem>,
}

/// Records the store could not decode and moved aside, so that the rest
/// went on without them.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "models",
    responses((status = 200, description = "Quarantined records", body = QuarantineList),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_quarantine(State(api): State<Shared>) -> Result<Json<QuarantineList>, ApiError> {
    blocking(move || {
        let items = api
            .store
            .quarantined()?
            .into_iter()
            .map(|q| QuarantineItem {
                tree: q.tree,
                key: q.key,
                error: q.error,
                bytes: q.bytes,
                quarantined_at: q.quarantined_at,
            })
            .collect();
        Ok(Json(QuarantineList { items }))
    })
    .await
}
