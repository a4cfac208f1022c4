//! The Ollama watcher against a fake `/api/tags`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use safedrift_watchers::http::RetryPolicy;
use safedrift_watchers::ollama::OllamaWatcher;
use safedrift_watchers::{Cache, Checkpoint, Target, Watcher};
use serde_json::json;

const LLAMA_1: &str = "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1";
const LLAMA_2: &str = "a6990ed6be412c6a217614b0ec8e9cd6800a743d5dd7e1d7fbe9df09e61d5615";
const QWEN: &str = "6f48b936a09f7743b3c1d0eb4ee2de8e8d6d3a4e5c4c4b0e0c31f7d1c5a2e1b9";

#[derive(Clone, Default)]
struct Fake {
    llama_digest: Arc<Mutex<&'static str>>,
    fail_next: Arc<Mutex<bool>>,
}

fn tag(name: &str, digest: &str, family: &str) -> serde_json::Value {
    json!({
        "name": name, "model": name,
        "modified_at": "2025-10-03T23:34:03.409490317-07:00",
        "size": 4_661_224_676u64, "digest": digest,
        "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                    "parameter_size": "8.0B", "quantization_level": "Q4_0"}
    })
}

async fn tags(State(fake): State<Fake>) -> Response {
    if std::mem::take(&mut *fake.fail_next.lock().unwrap()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "loading"})),
        )
            .into_response();
    }
    let llama = *fake.llama_digest.lock().unwrap();
    Json(json!({"models": [tag("llama3:8b", llama, "llama"), tag("qwen2:0.5b", QWEN, "qwen2")]}))
        .into_response()
}

async fn start() -> (SocketAddr, Fake) {
    let fake = Fake::default();
    *fake.llama_digest.lock().unwrap() = LLAMA_1;
    let router = Router::new()
        .route("/api/tags", get(tags))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, fake)
}

fn watcher(base_url: &str, extra: &str) -> OllamaWatcher {
    let config = format!("kind = 'ollama'\nbase_url = '{base_url}'\n{extra}");
    let mut w = OllamaWatcher::from_config("local", &config.parse().unwrap()).unwrap();
    w.retry = RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_hint: Duration::from_secs(1),
    };
    w
}

fn revisions(found: &[Checkpoint]) -> Vec<(&str, &str)> {
    found
        .iter()
        .map(|c| (c.model.as_str(), c.revision.as_str()))
        .collect()
}

#[tokio::test]
async fn models_are_checkpoints_and_a_new_digest_is_a_new_revision() {
    let (addr, fake) = start().await;
    let w = watcher(&format!("http://{addr}/"), "");
    let first = w.poll().await.unwrap();
    assert_eq!(
        revisions(&first),
        [("llama3:8b", LLAMA_1), ("qwen2:0.5b", QWEN)]
    );
    assert!(first
        .iter()
        .all(|c| c.baseline.is_none() && c.watcher == "local"));

    // `ollama pull llama3:8b` brought new weights; a 503 on the way is retried.
    *fake.llama_digest.lock().unwrap() = LLAMA_2;
    *fake.fail_next.lock().unwrap() = true;
    let second = w.poll().await.unwrap();
    assert_eq!(
        revisions(&second),
        [("llama3:8b", LLAMA_2), ("qwen2:0.5b", QWEN)]
    );
    assert_ne!(first[0].key(), second[0].key());
    assert_eq!(first[1].key(), second[1].key());

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().to_path_buf(), 1 << 20).unwrap();
    assert_eq!(
        w.fetch(&second[0], &cache).await.unwrap(),
        Target::OpenAi {
            base_url: format!("http://{addr}/v1"),
            model: "llama3:8b".into(),
            api_key_env: None,
            api_key_file: None,
        }
    );
}

#[tokio::test]
async fn only_configured_models_are_watched() {
    let (addr, _) = start().await;
    let w = watcher(
        &format!("http://{addr}"),
        "models = ['qwen2:0.5b', 'mistral']",
    );
    assert_eq!(revisions(&w.poll().await.unwrap()), [("qwen2:0.5b", QWEN)]);
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let w = watcher(&format!("http://{addr}"), "");
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "unreachable", "{err}");
    assert!(err.message.contains("could not connect"), "{err}");
}
