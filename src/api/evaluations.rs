//! `POST /api/v1/evaluations`: queue an evaluation in the daemon's durable
//! queue, under the synthetic watcher name [`SOURCE`].

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{blocking, rejection, ApiError, Shared};
use crate::config::Config;
use crate::store::CheckpointRecord;

/// The watcher name of checkpoints queued through the API.
pub const SOURCE: &str = crate::config::API_SOURCE;

pub use super::request::EvaluationRequest;

/// Checks a request against the config: every field it names must be
/// within the API's boundary ([`super::boundary`]) and resolve. Errors name
/// the field and never carry a file's name or content: a benchmark that
/// does not load is described by its line and error class only.
pub fn validate(
    config: &Config,
    resolver: &crate::resolve::Resolver,
    req: &EvaluationRequest,
) -> Result<(), ApiError> {
    if req.limit.is_some_and(|l| !(1..=100_000).contains(&l)) {
        return Err(ApiError::invalid("limit", "from 1 to 100000"));
    }
    let specs = req.benchmark_specs();
    if specs.is_empty() || specs.len() > 32 {
        return Err(ApiError::invalid("benchmarks", "from 1 to 32 benchmarks"));
    }
    super::boundary::check(config, req)?;
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = resolver.benchmarks(spec) {
            return Err(ApiError::invalid(
                &format!("benchmarks[{i}]"),
                format!("the benchmark does not load: {}", e.public_message()),
            ));
        }
    }
    if let Err(e) = resolver.judge(&req.judge_spec()) {
        return Err(ApiError::invalid("judge", e.public_message()));
    }
    if let Some(t) = &req.template {
        if resolver.template(t).is_err() {
            return Err(ApiError::invalid(
                "template",
                "no such entry in the config's [templates] (built in: default)",
            ));
        }
    }
    Ok(())
}

/// Held while the queue's depth is checked and an evaluation added, so that
/// concurrent requests cannot together pass `api.max_queue`.
static ENQUEUE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The answer to a queued evaluation.
#[derive(Serialize, ToSchema)]
pub struct EvaluationStatus {
    /// The evaluation id (`e_...`).
    pub id: String,
    /// `queued`, `running` or `done`.
    pub status: String,
    /// The run, once it has one (follow it at `/api/v1/runs/{run_id}`).
    pub run_id: Option<String>,
    pub baseline_run_id: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Checkpoints queued or running ahead of and including this one.
    pub queue_depth: usize,
}

fn status_of(r: &CheckpointRecord, depth: usize) -> EvaluationStatus {
    EvaluationStatus {
        id: r.checkpoint.revision.clone(),
        status: super::models::checkpoint_status(r.status).into(),
        run_id: r.run_id.clone(),
        baseline_run_id: r.baseline_run_id.clone(),
        attempts: r.attempts,
        last_error: r.last_error.clone(),
        queue_depth: depth,
    }
}

/// Queue an evaluation. 202 with its id; 429 while the queue is full.
#[utoipa::path(post, path = "/api/v1/evaluations", tag = "evaluations",
    request_body = EvaluationRequest,
    responses((status = 202, description = "Queued", body = EvaluationStatus),
              (status = 400, description = "Malformed JSON", body = super::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 413, description = "Body too large", body = super::ErrorBody),
              (status = 415, description = "Not JSON", body = super::ErrorBody),
              (status = 422, description = "A field is invalid (named in `field`)", body = super::ErrorBody),
              (status = 429, description = "The queue is full", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_evaluation(
    State(api): State<Shared>,
    body: Result<Json<EvaluationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| rejection(e.status(), e.body_text()))?;
    blocking(move || {
        let (config, resolver) = api.live();
        validate(&config, &resolver, &req)?;
        let _queue = ENQUEUE.lock().unwrap_or_else(|e| e.into_inner());
        let depth = api.queue.depth()?;
        if depth >= api.config.api.max_queue {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "{depth} evaluations are queued or running (the limit is `api.max_queue` = {}); try again later",
                    api.config.api.max_queue
                ),
            ));
        }
        let id = format!("e_{}", ulid::Ulid::new().to_string().to_lowercase());
        let detail = serde_json::to_value(&req).unwrap_or_default();
        let eval_key = hex::encode(&Sha256::digest(detail.to_string().as_bytes())[..8]);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let checkpoint = safedrift_watchers::Checkpoint {
            watcher: SOURCE.into(),
            model: req.model_spec(),
            revision: id.clone(),
            baseline: None,
            detail,
        };
        let record = crate::queue::new_record(checkpoint, &eval_key, now);
        api.queue.enqueue(&record)?;
        if let Some(link) = &api.link {
            link.queued();
        }
        ::metrics::counter!("safedrift_api_evaluations_queued_total").increment(1);
        let location = format!("/api/v1/evaluations/{id}");
        Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(status_of(&record, depth + 1)),
        )
            .into_response())
    })
    .await
}

/// Where a queued evaluation stands, and its run once it has one.
#[utoipa::path(get, path = "/api/v1/evaluations/{id}", tag = "evaluations",
    params(("id" = String, Path, description = "Evaluation id (e_...)")),
    responses((status = 200, description = "The evaluation", body = EvaluationStatus),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
              (status = 404, description = "No such evaluation", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_evaluation(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<EvaluationStatus>, ApiError> {
    blocking(move || {
        let depth = api.queue.depth()?;
        api.queue
            .by_revision(SOURCE, &id)?
            .map(|r| Json(status_of(&r, depth)))
            .ok_or_else(|| ApiError::not_found(format!("no evaluation {id}")))
    })
    .await
}
