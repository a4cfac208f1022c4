//! Lineages: a watcher and the baseline its checkpoints are compared with
//! (`watcher/baseline-spec`, what alerts group by), each with its
//! checkpoints in order; and, for the dashboard, the models outside every
//! lineage and the runs in progress.

use std::collections::{BTreeMap, HashSet};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{timeline_limit, Points, TimelinePoint, TimelineQuery};
use crate::api::{blocking, rejection, Api, ApiError, ErrorBody, Shared};
use crate::store::{ModelSummary, RunFilter, RunRecord, RunStatus};

/// A lineage's baseline: the reference its checkpoints are compared with.
#[derive(Clone, Serialize, ToSchema)]
pub struct LineageBaseline {
    /// The baseline's model SPEC.
    pub model: String,
    pub revision: Option<String>,
    /// The baseline run the newest checkpoint was compared with.
    pub run_id: String,
    pub started_at: String,
    /// Harmful prompts scored.
    pub n: usize,
    /// Benign prompts.
    pub n_benign: usize,
    pub harmfulness_rate: Option<f64>,
    /// 95% Wilson interval of the rate.
    pub harmfulness_rate_ci95: Option<[f64; 2]>,
    pub refusal_rate: Option<f64>,
    pub over_refusal_rate: Option<f64>,
    /// Every baseline run the checkpoints shown were compared with, oldest
    /// first (more than one when the evaluation plan changed).
    pub runs: Vec<String>,
}

/// A lineage: the checkpoints one watcher found, each compared with the
/// same baseline model.
#[derive(Clone, Serialize, ToSchema)]
pub struct Lineage {
    /// `watcher/baseline-spec`: what alerts group by (their `lineage`).
    pub name: String,
    pub watcher: String,
    pub baseline: LineageBaseline,
    /// How many of the checkpoints shown drifted.
    pub drifted: usize,
    /// The checkpoints' completed runs, oldest first (the newest `limit`),
    /// each with the alert it opened, joined or resolved.
    pub points: Vec<TimelinePoint>,
}

#[derive(Serialize, ToSchema)]
pub struct LineageList {
    /// The lineage with the newest checkpoint first.
    pub items: Vec<Lineage>,
}

/// A model with runs outside every lineage: `safedrift eval` runs,
/// evaluations queued through the API.
pub(crate) struct OtherModel {
    pub spec: String,
    /// All runs of the model.
    pub runs: usize,
    /// Its newest run outside a lineage.
    pub latest: RunRecord,
    /// Its newest completed run outside a lineage.
    pub point: Option<TimelinePoint>,
}

/// Everything the dashboard's overview shows.
pub(crate) struct Overview {
    pub lineages: Vec<Lineage>,
    pub others: Vec<OtherModel>,
    /// Runs being evaluated (checkpoints, their baselines, one-off
    /// evaluations), newest first.
    pub running: Vec<RunRecord>,
}

/// How many models the overview reads (the most recently run first).
const OVERVIEW_MODELS: usize = 200;

/// Whether a run is a checkpoint of a lineage: found by a watcher,
/// completed and compared with a baseline run.
fn in_lineage(run: &RunRecord) -> bool {
    run.status == RunStatus::Completed
        && run.model.registry.is_some()
        && run.baseline_run.as_ref().is_some_and(|b| b != &run.id)
}

/// Runs, each with the index of its model.
type ModelRuns = Vec<(usize, RunRecord)>;

/// The newest `limit` runs of each of the most recently run models, with
/// the index of their model.
fn recent_runs(api: &Api, limit: usize) -> Result<(Vec<ModelSummary>, ModelRuns), ApiError> {
    let mut models = api.store.models()?;
    let newest = |m: &ModelSummary| m.latest.as_ref().map(|r| r.started_at.clone());
    models.sort_by(|a, b| newest(b).cmp(&newest(a)).then_with(|| a.spec.cmp(&b.spec)));
    models.truncate(OVERVIEW_MODELS);
    let mut runs = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let filter = RunFilter {
            model: Some(m.spec.clone()),
            ..RunFilter::default()
        };
        let page = api.store.list_runs(&filter, limit, None)?;
        runs.extend(page.runs.into_iter().map(|r| (i, r)));
    }
    Ok((models, runs))
}

/// The lineages (each with its newest `limit` checkpoints) and the models
/// outside them, from the newest `limit` runs of the most recently run
/// models. A baseline run is its lineage's reference, not a model of its own.
pub(crate) fn overview(api: &Api, limit: usize) -> Result<Overview, ApiError> {
    let (models, runs) = recent_runs(api, limit)?;
    let referenced: HashSet<String> = runs
        .iter()
        .filter(|(_, r)| in_lineage(r))
        .filter_map(|(_, r)| r.baseline_run.clone())
        .collect();
    let mut points = Points::new(api);
    let mut groups: BTreeMap<(String, String), Vec<RunRecord>> = BTreeMap::new();
    let mut others: BTreeMap<usize, Vec<RunRecord>> = BTreeMap::new();
    let mut running = Vec::new();
    for (i, run) in runs {
        // In progress: not yet a checkpoint of a lineage, a reference or a
        // model of its own.
        if run.status == RunStatus::Running {
            running.push(run);
            continue;
        }
        if in_lineage(&run) {
            let base = run.baseline_run.as_deref().unwrap_or_default();
            let base_spec = points.baseline(base)?.map(|(b, _)| b.model.spec.clone());
            if let (Some(watcher), Some(base_spec)) = (run.model.registry.clone(), base_spec) {
                groups.entry((watcher, base_spec)).or_default().push(run);
                continue;
            }
        }
        // A lineage's reference, or a checkpoint whose evaluation stopped
        // (the daemon tries it again; it joins its lineage once compared).
        if referenced.contains(&run.id)
            || (run.model.registry.is_some() && run.status != RunStatus::Completed)
        {
            continue;
        }
        others.entry(i).or_default().push(run);
    }
    let mut lineages = Vec::with_capacity(groups.len());
    for ((watcher, base_spec), members) in groups {
        lineages.extend(lineage(&mut points, watcher, &base_spec, members, limit)?);
    }
    let newest_point = |l: &Lineage| l.points.last().map(|p| p.started_at.clone());
    lineages.sort_by(|a, b| {
        newest_point(b)
            .cmp(&newest_point(a))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut rest = Vec::with_capacity(others.len());
    for (i, runs) in others {
        rest.extend(other_model(&mut points, &models[i], runs)?);
    }
    rest.sort_by(|a, b| {
        b.latest
            .started_at
            .cmp(&a.latest.started_at)
            .then_with(|| a.spec.cmp(&b.spec))
    });
    running.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    Ok(Overview {
        lineages,
        others: rest,
        running,
    })
}

/// A lineage from its checkpoints' runs: the newest `limit` in order, and
/// the baseline the newest was compared with (`None` when that run is not
/// stored).
fn lineage(
    points: &mut Points,
    watcher: String,
    base_spec: &str,
    mut members: Vec<RunRecord>,
    limit: usize,
) -> Result<Option<Lineage>, ApiError> {
    members.sort_by(|a, b| {
        (a.started_at.as_str(), a.id.as_str()).cmp(&(b.started_at.as_str(), b.id.as_str()))
    });
    if members.len() > limit {
        members.drain(..members.len() - limit);
    }
    let pts = members
        .into_iter()
        .map(|run| points.point(run))
        .collect::<Result<Vec<_>, _>>()?;
    let mut base_runs: Vec<String> = Vec::new();
    for b in pts.iter().filter_map(|p| p.baseline_run.as_ref()) {
        if !base_runs.contains(b) {
            base_runs.push(b.clone());
        }
    }
    let newest = pts
        .last()
        .and_then(|p| p.baseline_run.clone())
        .unwrap_or_default();
    let Some((run, totals)) = points.baseline(&newest)? else {
        return Ok(None);
    };
    let m = &totals.metrics;
    let baseline = LineageBaseline {
        model: run.model.spec.clone(),
        revision: run.model.revision.clone(),
        run_id: run.id.clone(),
        started_at: run.started_at.clone(),
        n: m.n,
        n_benign: m.n_benign,
        harmfulness_rate: m.harmfulness_rate,
        harmfulness_rate_ci95: m.harmfulness_rate_ci95,
        refusal_rate: m.refusal_rate,
        over_refusal_rate: m.over_refusal_rate,
        runs: base_runs,
    };
    Ok(Some(Lineage {
        name: format!("{watcher}/{base_spec}"),
        watcher,
        baseline,
        drifted: pts
            .iter()
            .filter(|p| p.drift_detected == Some(true))
            .count(),
        points: pts,
    }))
}

/// A model with runs outside every lineage (newest first): its newest run,
/// and its newest completed one as a point.
fn other_model(
    points: &mut Points,
    model: &ModelSummary,
    runs: Vec<RunRecord>,
) -> Result<Option<OtherModel>, ApiError> {
    let point = match runs.iter().find(|r| r.status == RunStatus::Completed) {
        Some(r) => Some(points.point(r.clone())?),
        None => None,
    };
    Ok(runs.into_iter().next().map(|latest| OtherModel {
        spec: model.spec.clone(),
        runs: model.runs,
        latest,
        point,
    }))
}

/// Every lineage (a watcher and the baseline its checkpoints are compared
/// with: what alerts group by) with its checkpoints in order, their rates
/// against the baseline and the alerts they fired.
#[utoipa::path(get, path = "/api/v1/lineages", tag = "models",
    params(TimelineQuery),
    responses((status = 200, description = "The lineages", body = LineageList),
              (status = 400, description = "Bad query", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 422, description = "Invalid limit", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_lineages(
    State(api): State<Shared>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<LineageList>, ApiError> {
    let Query(q) = query.map_err(|e| rejection(e.status(), e.body_text()))?;
    let limit = timeline_limit(q.limit)?;
    blocking(move || {
        let items = overview(&api, limit)?.lineages;
        Ok(Json(LineageList { items }))
    })
    .await
}
