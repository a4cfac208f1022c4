//! OpenAI's fine-tuning jobs API, for tests: `GET /v1/fine_tuning/jobs`
//! (newest first, `limit` 1-100 (default 20) and `after=<job id>` paging,
//! `{"object": "list", "data": [...], "has_more": ...}`, `metadata[k]=v`
//! filters) and `GET /v1/fine_tuning/jobs/{id}`, in the shapes of the real
//! API (openai-python's `types/fine_tuning`), with its errors: 401
//! `invalid_api_key` (the key masked), 400 `invalid_request_error` for a bad
//! `limit`, 404 for an unknown job.
//!
//! Serve it next to a [`crate::Script`] with [`crate::spawn_with_routes`],
//! so the fine-tuned models the jobs name answer on the same base URL, as
//! they do at OpenAI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A fine-tuning job as the API returns it. `status` is `validating_files`,
/// `queued`, `running`, `succeeded`, `failed` or `cancelled`;
/// `fine_tuned_model` is set once it succeeded.
pub fn job(id: &str, base: &str, status: &str, fine_tuned_model: Option<&str>) -> Value {
    let created_at: u64 = 1_764_000_000
        + id.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            % 1_000_000;
    let finished = matches!(status, "succeeded" | "failed" | "cancelled");
    json!({
        "object": "fine_tuning.job",
        "id": id,
        "model": base,
        "created_at": created_at,
        "finished_at": if finished { json!(created_at + 3_600) } else { Value::Null },
        "fine_tuned_model": fine_tuned_model,
        "organization_id": "org-Kz3rV1Qb8mJx5n0Tq2WcYf7d",
        "result_files": if status == "succeeded" { json!(["file-Rs7kPq2LmN9vXa4Bc1Dw"]) } else { json!([]) },
        "status": status,
        "validation_file": null,
        "training_file": "file-9hTq1XcVbN3mLp8Zr5Ka",
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8},
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}},
        },
        "trained_tokens": if status == "succeeded" { json!(5_768) } else { Value::Null },
        "integrations": [],
        "seed": 683_058_546,
        "estimated_finish": if finished { Value::Null } else { json!(created_at + 3_600) },
        "error": if status == "failed" {
            json!({"code": "invalid_training_file", "message": "The job failed due to an invalid training file.", "param": "training_file"})
        } else {
            Value::Null
        },
        "metadata": null,
        "user_provided_suffix": null,
        "usage_metrics": null,
        "shared_with_openai": false,
        "eval_id": null,
    })
}

/// What the fake API was asked.
#[derive(Default)]
struct Seen {
    /// The query of each authorized `GET /v1/fine_tuning/jobs`.
    list_queries: Vec<HashMap<String, String>>,
}

/// The jobs the API serves and what it was asked.
#[derive(Clone)]
pub struct Jobs {
    jobs: Arc<Mutex<Vec<Value>>>,
    api_key: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

impl Jobs {
    /// `jobs` newest first, as the API lists them; with `api_key`, requests
    /// need `Authorization: Bearer <api_key>`.
    pub fn new(jobs: Vec<Value>, api_key: Option<&str>) -> Jobs {
        Jobs {
            jobs: Arc::new(Mutex::new(jobs)),
            api_key: api_key.map(str::to_string),
            seen: Arc::default(),
        }
    }

    /// The routes, to serve with [`crate::spawn_with_routes`].
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/fine_tuning/jobs", get(list))
            .route("/v1/fine_tuning/jobs/{id}", get(retrieve))
            .with_state(self.clone())
    }

    /// A new job, listed first from now on.
    pub fn push(&self, job: Value) {
        self.jobs.lock().unwrap().insert(0, job);
    }

    /// The query of each authorized list request, in order.
    pub fn list_queries(&self) -> Vec<HashMap<String, String>> {
        self.seen.lock().unwrap().list_queries.clone()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if given == key {
            return Ok(());
        }
        let message = if given.is_empty() {
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_string()
        } else {
            // The real API shows the key's first and last characters only.
            let shown: String = given.chars().take(3).collect();
            let tail: String = given
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("Incorrect API key provided: {shown}***************{tail}. You can find your API key at https://platform.openai.com/account/api-keys.")
        };
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            &message,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )))
    }
}

fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    (
        status,
        [("x-request-id", "req_testkit_fine_tuning")],
        Json(json!({"error": {"message": message, "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

async fn list(
    State(api): State<Jobs>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = api.authorize(&headers) {
        return *r;
    }
    api.seen.lock().unwrap().list_queries.push(query.clone());
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid 'limit': integer must be between 1 and 100.",
                "invalid_request_error",
                Some("limit"),
                Some("integer_out_of_range"),
            )
        }
    };
    let filters: Vec<(String, String)> = query
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_string(), v.clone()))
        })
        .collect();
    let jobs = api.jobs.lock().unwrap().clone();
    let matching: Vec<&Value> = jobs
        .iter()
        .filter(|j| {
            filters
                .iter()
                .all(|(k, v)| j["metadata"][k.as_str()].as_str() == Some(v.as_str()))
        })
        .collect();
    let start = match query.get("after") {
        None => 0,
        Some(after) => match matching.iter().position(|j| j["id"] == after.as_str()) {
            Some(i) => i + 1,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Could not find fine-tune: {after}"),
                    "invalid_request_error",
                    Some("after"),
                    Some("fine_tune_not_found"),
                )
            }
        },
    };
    let page: Vec<&Value> = matching.iter().skip(start).take(limit).copied().collect();
    let has_more = start + page.len() < matching.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more})).into_response()
}

async fn retrieve(State(api): State<Jobs>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = api.authorize(&headers) {
        return *r;
    }
    let jobs = api.jobs.lock().unwrap();
    match jobs.iter().find(|j| j["id"] == id.as_str()) {
        Some(job) => Json(job.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("Could not find fine-tune: {id}"),
            "invalid_request_error",
            Some("fine_tune_id"),
            Some("fine_tune_not_found"),
        ),
    }
}
