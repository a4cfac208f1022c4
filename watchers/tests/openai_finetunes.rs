//! The OpenAI fine-tuning watcher against a fake `/v1/fine_tuning/jobs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use safedrift_watchers::http::RetryPolicy;
use safedrift_watchers::openai_finetunes::OpenaiFinetunesWatcher;
use safedrift_watchers::{Baseline, Cache, Target, Watcher};
use serde_json::json;

const KEY: &str = "sk-test-0123456789";

#[derive(Default)]
struct Seen {
    queries: Vec<HashMap<String, String>>,
    failed_once: bool,
}

type Shared = Arc<Mutex<Seen>>;

fn job(id: &str, status: &str, fine_tuned: Option<&str>) -> serde_json::Value {
    json!({
        "object": "fine_tuning.job", "id": id, "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1_721_764_800, "finished_at": if status == "succeeded" { json!(1_721_768_400) } else { json!(null) },
        "fine_tuned_model": fine_tuned, "organization_id": "org-123", "result_files": [],
        "status": status, "validation_file": null, "training_file": "file-abc123",
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8},
        "method": {"type": "supervised"}, "trained_tokens": 5768, "seed": 42,
        "error": if status == "failed" { json!({"code": "invalid_training_file", "message": "bad file", "param": "training_file"}) } else { json!(null) },
        "estimated_finish": null, "integrations": [], "metadata": {"team": "ml"},
    })
}

async fn jobs(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_start_matches("Bearer ")
            .to_string();
        // The real API masks most of the key; a careless proxy might not.
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {
                "message": format!("Incorrect API key provided: {given}. You can find your API key at https://platform.openai.com/account/api-keys."),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        )
            .into_response();
    }
    let first_failure = {
        let mut seen = seen.lock().unwrap();
        seen.queries.push(query.clone());
        !std::mem::replace(&mut seen.failed_once, true)
    };
    if first_failure {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}})),
        )
            .into_response();
    }
    match query.get("after").map(String::as_str) {
        None => Json(json!({
            "object": "list",
            "data": [
                job("ftjob-4", "running", None),
                job("ftjob-3", "succeeded", Some("ft:gpt-4o-mini-2024-07-18:acme:safety-v2:AbC123")),
                job("ftjob-2x", "paused", None),
                job("ftjob-2", "failed", None),
            ],
            "has_more": true,
        }))
        .into_response(),
        Some("ftjob-2") => Json(json!({
            "object": "list",
            "data": [
                job("ftjob-1", "succeeded", Some("ft:gpt-4o-mini-2024-07-18:acme:chat:XyZ789")),
                job("ftjob-0", "cancelled", Some("ft:gpt-4o-mini-2024-07-18:acme:safety-v1:Old000")),
                job("ftjob-00", "some_future_state", None),
            ],
            "has_more": false,
        }))
        .into_response(),
        Some(other) => (StatusCode::BAD_REQUEST, format!("unexpected cursor {other}")).into_response(),
    }
}

async fn start() -> (SocketAddr, Shared, tempfile::TempDir) {
    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/fine_tuning/jobs", get(jobs))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), format!("{KEY}\n")).unwrap();
    (addr, seen, dir)
}

fn watcher(addr: SocketAddr, dir: &tempfile::TempDir, extra: &str) -> OpenaiFinetunesWatcher {
    let config = format!(
        "kind = 'openai-finetunes'\nbase_url = 'http://{addr}/v1/'\napi_key_file = '{}'\n{extra}",
        dir.path().join("key").display()
    );
    let mut w = OpenaiFinetunesWatcher::from_config("ft", &config.parse().unwrap()).unwrap();
    w.retry = RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_hint: Duration::from_secs(2),
    };
    w
}

#[tokio::test]
async fn succeeded_jobs_across_pages_become_checkpoints() {
    let (addr, seen, dir) = start().await;
    let w = watcher(addr, &dir, "[metadata]\nteam = 'ml'");
    let found = w.poll().await.unwrap();
    let base_url = format!("http://{addr}/v1");
    let key_file = Some(dir.path().join("key"));

    let got: Vec<(&str, &str)> = found
        .iter()
        .map(|c| (c.model.as_str(), c.revision.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("ft:gpt-4o-mini-2024-07-18:acme:safety-v2:AbC123", "ftjob-3"),
            ("ft:gpt-4o-mini-2024-07-18:acme:chat:XyZ789", "ftjob-1"),
        ]
    );
    for cp in &found {
        assert_eq!(cp.watcher, "ft");
        assert_eq!(
            cp.baseline,
            Some(Baseline::Target(Target::OpenAi {
                base_url: base_url.clone(),
                model: "gpt-4o-mini-2024-07-18".into(),
                api_key_env: None,
                api_key_file: key_file.clone(),
            }))
        );
    }

    // One 500 retried, then two pages; every request filtered and sized.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.queries.len(), 3);
        for q in &seen.queries {
            assert_eq!(q.get("limit").map(String::as_str), Some("100"));
            assert_eq!(q.get("metadata[team]").map(String::as_str), Some("ml"));
        }
        assert_eq!(
            seen.queries[2].get("after").map(String::as_str),
            Some("ftjob-2")
        );
    }

    let cache = Cache::new(dir.path().join("cache"), 1 << 20).unwrap();
    assert_eq!(
        w.fetch(&found[0], &cache).await.unwrap(),
        Target::OpenAi {
            base_url,
            model: "ft:gpt-4o-mini-2024-07-18:acme:safety-v2:AbC123".into(),
            api_key_env: None,
            api_key_file: key_file,
        }
    );
}

#[tokio::test]
async fn suffix_filters_models() {
    let (addr, _, dir) = start().await;
    let w = watcher(addr, &dir, "suffix = 'safety'");
    let found = w.poll().await.unwrap();
    let models: Vec<&str> = found.iter().map(|c| c.model.as_str()).collect();
    // The cancelled safety-v1 job is not a checkpoint.
    assert_eq!(models, ["ft:gpt-4o-mini-2024-07-18:acme:safety-v2:AbC123"]);
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_never_shown() {
    let (addr, seen, dir) = start().await;
    std::fs::write(dir.path().join("key"), "sk-wrong-secret-key\n").unwrap();
    let w = watcher(addr, &dir, "");
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "unauthorized");
    assert!(!err.message.contains("sk-wrong-secret-key"), "{err}");
    assert!(err.message.contains("key"), "{err}");
    assert!(seen.lock().unwrap().queries.is_empty());

    // A key that cannot be read is a config problem naming the variable.
    let config = format!("base_url = 'http://{addr}/v1'\napi_key_env = 'SAFEDRIFT_TEST_UNSET_KEY'");
    let w = OpenaiFinetunesWatcher::from_config("ft", &config.parse().unwrap()).unwrap();
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "config");
    assert!(err.message.contains("SAFEDRIFT_TEST_UNSET_KEY"), "{err}");
}

#[tokio::test]
async fn persistent_server_errors_give_up() {
    let router = Router::new().route(
        "/v1/fine_tuning/jobs",
        get(|| async { (StatusCode::BAD_GATEWAY, "upstream down").into_response() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), KEY).unwrap();
    let err = watcher(addr, &dir, "").poll().await.unwrap_err();
    assert_eq!(err.kind, "http");
    assert!(err.message.contains("gave up after 3 attempts"), "{err}");
}
