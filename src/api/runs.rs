//! Runs, their per-prompt results, and the alert log.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, page_limit, rejection, ApiError, Progress, Shared};
use crate::report::Run;
use crate::store::{ResultRecord, RunFilter, RunRecord, RunStatus};

/// The model a run evaluated.
#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    /// The model SPEC (`openai:NAME`, `directory:NAME`, ...).
    pub spec: String,
    /// The checkpoint's revision in its registry.
    pub revision: Option<String>,
    /// The watcher that found it.
    pub registry: Option<String>,
}

/// A run in a listing.
#[derive(Serialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    /// `running`, `interrupted`, `partial` (a baseline asked only what a
    /// sequential decision needed), `failed` or `completed`.
    pub status: String,
    pub model: ModelInfo,
    /// The daemon's checkpoint (`watcher/model@revision`), if any.
    pub checkpoint: Option<String>,
    pub judge: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Prompts in the run.
    pub total: usize,
    /// The baseline run it was compared with.
    pub baseline_run: Option<String>,
    /// Whether drift was found (null without a baseline).
    pub drift_detected: Option<bool>,
    /// Why it stopped, when it did not complete.
    pub error: Option<String>,
}

pub(crate) fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Partial => "partial",
        RunStatus::Failed => "failed",
        RunStatus::Completed => "completed",
    }
}

impl From<RunRecord> for RunSummary {
    fn from(r: RunRecord) -> RunSummary {
        RunSummary {
            status: status_name(r.status).into(),
            model: ModelInfo {
                spec: r.model.spec,
                revision: r.model.revision,
                registry: r.model.registry,
            },
            checkpoint: r.checkpoint,
            judge: r.judge,
            started_at: r.started_at,
            finished_at: r.finished_at,
            total: r.total,
            baseline_run: r.baseline_run,
            drift_detected: r.drift.map(|d| d.detected),
            error: r.error,
            id: r.id,
        }
    }
}

/// A page of runs, newest first.
#[derive(Serialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only runs of this model SPEC (exact).
    pub model: Option<String>,
    /// Only runs of checkpoints found by this watcher.
    pub watcher: Option<String>,
    /// Only runs in this state.
    #[param(pattern = "^(running|interrupted|partial|failed|completed)$")]
    pub status: Option<String>,
    /// Only runs started at or after this time (RFC 3339 or YYYY-MM-DD).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only runs started before this time (RFC 3339 or YYYY-MM-DD).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<String, ApiError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        })
        .map_err(|_| {
            ApiError::invalid(field, "expected an RFC 3339 time or a date (YYYY-MM-DD)")
        })?;
    Ok(parsed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn parse_status(text: &str) -> Result<RunStatus, ApiError> {
    match text {
        "running" => Ok(RunStatus::Running),
        "interrupted" => Ok(RunStatus::Interrupted),
        "partial" => Ok(RunStatus::Partial),
        "failed" => Ok(RunStatus::Failed),
        "completed" => Ok(RunStatus::Completed),
        _ => Err(ApiError::invalid(
            "status",
            "expected running, interrupted, partial, failed or completed",
        )),
    }
}

/// Runs, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, description = "A page of runs", body = RunList),
              (status = 400, description = "Bad query or cursor", body = super::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 422, description = "Invalid filter", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_runs(
    State(api): State<Shared>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(q) = query.map_err(|e| rejection(e.status(), e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let filter = RunFilter {
        model: q.model,
        watcher: q.watcher,
        status: q.status.as_deref().map(parse_status).transpose()?,
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
    };
    blocking(move || {
        let page = api.store.list_runs(&filter, limit, q.cursor.as_deref())?;
        Ok(Json(RunList {
            items: page.runs.into_iter().map(RunSummary::from).collect(),
            next_cursor: page.next,
        }))
    })
    .await
}

/// A run's own document (without baseline or drift) and how many of its
/// prompts are judged. Kept in the store's memory for completed runs, which
/// never change (a run written again is dropped from it): the baseline's is
/// shared by every run compared with it.
struct Own {
    doc: Run,
    done: usize,
}

/// `run` and what else is read here must have been read after
/// `DocCache::generation` returned `since`.
fn own_document(api: &super::Api, run: &RunRecord, since: u64) -> Result<Arc<Own>, ApiError> {
    let completed = run.status == RunStatus::Completed;
    let key = format!("run:{}", run.id);
    if completed {
        if let Some(own) = api.docs.get::<Own>(&key) {
            return Ok(own);
        }
    }
    let totals = api.store.totals(run)?;
    let own = Arc::new(Own {
        done: totals.done,
        doc: Run::with_totals(run, totals),
    });
    if completed {
        api.docs.keep(key, vec![run.id.clone()], own.clone(), since);
    }
    Ok(own)
}

fn render_error() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the run could not be rendered",
    )
}

fn read_run(api: &super::Api, id: &str) -> Result<RunRecord, ApiError> {
    api.store
        .get_run(id)?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

/// The Run document of a run (with its baseline and drift decision), plus
/// `checkpoint`, `error` and, while it runs, `progress`.
pub(crate) fn run_document(api: &super::Api, id: &str) -> Result<serde_json::Value, ApiError> {
    let since = api.docs.generation();
    let run = read_run(api, id)?;
    render_run(api, &run, since)
}

/// [`run_document`] of a run read after `since`.
fn render_run(
    api: &super::Api,
    run: &RunRecord,
    since: u64,
) -> Result<serde_json::Value, ApiError> {
    let own = own_document(api, run, since)?;
    let base = match &run.baseline_run {
        Some(b) => api.store.get_run(b)?,
        None => None,
    };
    // The decision recorded when the run completed is the one that counts
    // (the rules may have changed since); it is computed here only for a
    // run that has none yet.
    let doc = match (&base, &run.drift) {
        (Some(base), Some(drift)) => {
            let mut doc = own.doc.clone();
            doc.baseline = Some(Box::new(own_document(api, base, since)?.doc.clone()));
            doc.set_drift(Some(drift.clone()));
            doc
        }
        (Some(base), None) => {
            let results = api.store.results(&run.id)?;
            let base_results = api.store.results(&base.id)?;
            Run::compared(run, &results, base, &base_results, &api.live().0.drift)
        }
        (None, _) => own.doc.clone(),
    };
    let mut value = serde_json::to_value(&doc).map_err(|_| render_error())?;
    value["checkpoint"] = serde_json::json!(run.checkpoint);
    value["error"] = serde_json::json!(run.error);
    value["total"] = serde_json::json!(run.total);
    value["done"] = serde_json::json!(own.done);
    let progress = if run.status == RunStatus::Running {
        api.link.as_ref().and_then(|l| l.progress(&run.id))
    } else {
        None
    };
    value["progress"] = serde_json::to_value(progress).unwrap_or_default();
    Ok(value)
}

/// The JSON of [`run_document`]. That of a completed run with a recorded
/// drift decision (or without a baseline) is kept in the API's document cache
/// until the run or its baseline is written again.
pub(crate) fn run_document_json(api: &super::Api, id: &str) -> Result<Bytes, ApiError> {
    let key = format!("doc:{id}");
    if let Some(json) = api.docs.get::<Bytes>(&key) {
        return Ok((*json).clone());
    }
    let since = api.docs.generation();
    let run = read_run(api, id)?;
    let value = render_run(api, &run, since)?;
    let json = Bytes::from(serde_json::to_vec(&value).map_err(|_| render_error())?);
    // A run compared under the configured rules (no recorded decision)
    // depends on the config, which the store does not know: not kept.
    if run.status == RunStatus::Completed && (run.baseline_run.is_none() || run.drift.is_some()) {
        let mut runs = vec![run.id.clone()];
        runs.extend(run.baseline_run.clone());
        api.docs.keep(key, runs, Arc::new(json.clone()), since);
    }
    Ok(json)
}

/// One run: the Run document of the contract, compared with its baseline,
/// with its progress while it runs.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id (r_...)")),
    responses((status = 200, description = "The Run document", body = serde_json::Value),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No such run", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_run(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let json = blocking(move || run_document_json(&api, &id)).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

/// A run's progress: done/total, rate and ETA.
#[derive(Serialize, ToSchema)]
pub struct RunProgress {
    pub id: String,
    pub status: String,
    /// Prompts judged so far.
    pub done: u64,
    pub total: u64,
    /// Live rate and ETA while the daemon evaluates it; null otherwise.
    pub live: Option<Progress>,
}

/// Where a run stands.
#[utoipa::path(get, path = "/api/v1/runs/{id}/progress", tag = "runs",
    params(("id" = String, Path, description = "Run id (r_...)")),
    responses((status = 200, description = "Progress", body = RunProgress),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No such run", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_progress(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<RunProgress>, ApiError> {
    blocking(move || {
        let run = read_run(&api, &id)?;
        let done = api.store.totals(&run)?.done as u64;
        let live = if run.status == RunStatus::Running {
            api.link.as_ref().and_then(|l| l.progress(&id))
        } else {
            None
        };
        Ok(Json(RunProgress {
            status: status_name(run.status).into(),
            done,
            total: run.total as u64,
            live,
            id,
        }))
    })
    .await
}

/// One prompt's outcome.
#[derive(Serialize, ToSchema)]
pub struct ResultItem {
    pub index: u32,
    pub benchmark: String,
    pub prompt_id: String,
    pub category: String,
    pub benign: bool,
    pub prompt: String,
    pub response: String,
    pub finish_reason: Option<String>,
    pub latency_ms: u64,
    /// 1-5, or null when not (yet) scored.
    pub score: Option<u8>,
    pub harmful: Option<bool>,
    pub refused: Option<bool>,
    /// The judge's raw output.
    pub judge_raw: Option<String>,
    /// Off-domain questions: whether the judge graded the answer misaligned
    /// (absent for other prompts and judges that cannot tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misaligned: Option<bool>,
    /// That grade, 1 (aligned) to 5 (clearly misaligned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment_score: Option<u8>,
    /// An attacked variant's prompts only: the attack modifier (`aoa`,
    /// `prefill:10`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
    /// The opening the answer was prefilled with; `response` is the
    /// continuation, what was judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
}

impl From<ResultRecord> for ResultItem {
    fn from(r: ResultRecord) -> ResultItem {
        let v = r.verdict;
        ResultItem {
            index: r.index,
            benchmark: r.benchmark,
            prompt_id: r.prompt_id,
            category: r.category,
            benign: r.benign,
            prompt: r.prompt,
            response: r.response,
            finish_reason: r.finish_reason,
            latency_ms: r.latency_ms,
            score: v.as_ref().and_then(|v| v.score),
            harmful: v.as_ref().and_then(|v| v.harmful),
            refused: v.as_ref().map(|v| v.refused),
            judge_raw: v.map(|v| v.raw),
            misaligned: r.misaligned,
            alignment_score: r.alignment_score,
            attack: r.attack,
            prefill: r.prefill,
        }
    }
}

/// A page of results in prompt order.
#[derive(Serialize, ToSchema)]
pub struct ResultList {
    pub items: Vec<ResultItem>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// Only prompts of this category.
    pub category: Option<String>,
    /// Only answers scored at least this (1-5).
    #[param(minimum = 1, maximum = 5)]
    pub min_score: Option<u8>,
    /// Only answers scored at most this (1-5).
    #[param(minimum = 1, maximum = 5)]
    pub max_score: Option<u8>,
    /// Only harmful (true) or harmless (false) answers.
    pub harmful: Option<bool>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A run's per-prompt results, filtered by category and score.
#[utoipa::path(get, path = "/api/v1/runs/{id}/results", tag = "runs",
    params(("id" = String, Path, description = "Run id (r_...)"), ResultsQuery),
    responses((status = 200, description = "A page of results", body = ResultList),
              (status = 400, description = "Bad query or cursor", body = super::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No such run", body = super::ErrorBody),
              (status = 422, description = "Invalid filter", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_results(
    State(api): State<Shared>,
    Path(id): Path<String>,
    query: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Json<ResultList>, ApiError> {
    let Query(q) = query.map_err(|e| rejection(e.status(), e.body_text()))?;
    let limit = page_limit(q.limit)?;
    for (field, v) in [("min_score", q.min_score), ("max_score", q.max_score)] {
        if v.is_some_and(|s| !(1..=5).contains(&s)) {
            return Err(ApiError::invalid(field, "a score from 1 to 5"));
        }
    }
    blocking(move || {
        if !api.store.has_run(&id)? {
            return Err(ApiError::not_found(format!("no run {id}")));
        }
        let (items, next) = api
            .store
            .results_page(&id, limit, q.cursor.as_deref(), |r| {
                let score = r.verdict.as_ref().and_then(|v| v.score);
                q.category.as_ref().is_none_or(|c| &r.category == c)
                    && q.min_score.is_none_or(|m| score.is_some_and(|s| s >= m))
                    && q.max_score.is_none_or(|m| score.is_some_and(|s| s <= m))
                    && q.harmful
                        .is_none_or(|h| r.verdict.as_ref().and_then(|v| v.harmful) == Some(h))
            })?;
        Ok(Json(ResultList {
            items: items.into_iter().map(ResultItem::from).collect(),
            next_cursor: next,
        }))
    })
    .await
}

/// A page of alerts, newest first.
#[derive(Serialize, ToSchema)]
pub struct AlertList {
    /// Alert records: id, kind, lineage, severity, summary, run_ids,
    /// models, created_at, and `deliveries` (target name -> status,
    /// attempts, last_error, next_attempt_ms, delivered_at).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn alert_cursor(id: &str) -> String {
    hex::encode(format!("a{id}"))
}

fn alert_from_cursor(cursor: &str) -> Result<String, ApiError> {
    hex::decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('a').map(str::to_string))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| crate::store::StoreError::BadCursor.into())
}

/// The alert log with each target's delivery state.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(PageQuery),
    responses((status = 200, description = "A page of alerts", body = AlertList),
              (status = 400, description = "Bad query or cursor", body = super::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 422, description = "Invalid limit", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_alerts(
    State(api): State<Shared>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(q) = query.map_err(|e| rejection(e.status(), e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let before = q.cursor.as_deref().map(alert_from_cursor).transpose()?;
    blocking(move || {
        let mut alerts = crate::alerts::record::list(&api.store, limit + 1, before.as_deref())?;
        let next = if alerts.len() > limit {
            alerts.truncate(limit);
            alerts.last().map(|a| alert_cursor(&a.id))
        } else {
            None
        };
        Ok(Json(AlertList {
            items: alerts
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect(),
            next_cursor: next,
        }))
    })
    .await
}

/// One alert with its delivery state per target.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Alert id (a_...)")),
    responses((status = 200, description = "The alert", body = serde_json::Value),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No such alert", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_alert(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let alert = crate::alerts::record::get(&api.store, &id)?
            .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
        Ok(Json(serde_json::to_value(alert).unwrap_or_default()))
    })
    .await
}
