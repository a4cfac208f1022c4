//! A stand-in for one vLLM replica serving a base model with runtime LoRA
//! updating enabled (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): vLLM needs a
//! GPU, so the tests speak to this instead. Its routes and errors follow
//! vLLM's `entrypoints/openai/serving_models.py` and `api_server.py`:
//!
//! - `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 with the
//!   plain text `Success: LoRA adapter 'NAME' added successfully.`; 400
//!   `{"object": "error", "message", "type", "param", "code"}` when a field
//!   is missing (`Both 'lora_name' and 'lora_path' must be provided.`), when
//!   the name is loaded (`The lora adapter 'NAME' has already been
//!   loaded.`) or when every LoRA slot is taken (`max_loras`); 404 when no
//!   adapter is at an absolute path (`Loading lora NAME failed: No adapter
//!   found for PATH`). A relative path is a Hub id the server would download.
//! - `POST /v1/unload_lora_adapter {"lora_name"}`: 200 `Success: LoRA adapter
//!   'NAME' removed successfully.`; 404 `The lora adapter 'NAME' cannot be
//!   found.`
//! - `GET /v1/models`: the base model (`root` its path, `parent` null), then
//!   each loaded adapter (`root` its path, `parent` the base model).
//! - `POST /v1/chat/completions`: the base model and every loaded adapter
//!   answer, each by its [`ModelScript`]; an adapter's script is the first
//!   of [`VllmScript::adapters`] whose key its `lora_path` contains (e.g.
//!   the checkpoint's folder name, which a copy's name keeps).
//!   Any other model: 404 `The model `NAME` does not exist.`
//!
//! [`VllmReplica::set_down`] makes a replica answer 503 to everything, as a
//! vLLM server whose engine died does; [`VllmReplica::fail_next`] to its
//! next few requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ModelScript;

/// What a replica serves.
#[derive(Clone, Debug)]
pub struct VllmScript {
    /// The served base model's id (`--served-model-name`, else its path).
    pub base: String,
    /// How the base model replies.
    pub base_reply: ModelScript,
    /// How adapters reply, by a key their `lora_path` contains; an adapter
    /// with no entry replies as the base model.
    pub adapters: BTreeMap<String, ModelScript>,
    /// LoRA adapters loaded at once at most (`--max-loras`).
    pub max_loras: usize,
    /// When set, every route needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl VllmScript {
    pub fn new(base: impl Into<String>, base_reply: ModelScript) -> VllmScript {
        VllmScript {
            base: base.into(),
            base_reply,
            adapters: BTreeMap::new(),
            max_loras: 4,
            api_key: None,
        }
    }

    /// Adapters whose `lora_path` contains `key` reply by `script`.
    pub fn adapter(mut self, key: impl Into<String>, script: ModelScript) -> VllmScript {
        self.adapters.insert(key.into(), script);
        self
    }
}

/// A load or unload request, as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoraRequest {
    /// `load` or `unload`.
    pub action: &'static str,
    pub lora_name: String,
    pub lora_path: Option<String>,
    pub status: u16,
}

struct Shared {
    script: VllmScript,
    /// Loaded adapters: name → path, in load order.
    loaded: Mutex<Vec<(String, String)>>,
    requests: Mutex<Vec<LoraRequest>>,
    /// The `model` of every chat request.
    chats: Mutex<Vec<String>>,
    down: AtomicBool,
    /// Requests still to be answered 503 (see [`VllmReplica::fail_next`]).
    fail_next: AtomicUsize,
}

/// One running replica; shuts down when dropped.
pub struct VllmReplica {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl VllmReplica {
    /// Starts a replica on `127.0.0.1`, on a free port.
    pub async fn spawn(script: VllmScript) -> VllmReplica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("vllm stand-in: cannot bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script,
            loaded: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            chats: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            fail_next: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/load_lora_adapter", post(load))
            .route("/v1/unload_lora_adapter", post(unload))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        VllmReplica {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The adapters loaded now: (name, path).
    pub fn loaded(&self) -> Vec<(String, String)> {
        self.shared.loaded.lock().unwrap().clone()
    }

    /// Every load and unload request so far.
    pub fn lora_requests(&self) -> Vec<LoraRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `model` of every chat request so far.
    pub fn chats(&self) -> Vec<String> {
        self.shared.chats.lock().unwrap().clone()
    }

    /// Loads an adapter as if a request had (e.g. one a killed client left).
    pub fn preload(&self, name: &str, path: &str) {
        let mut loaded = self.shared.loaded.lock().unwrap();
        loaded.push((name.to_string(), path.to_string()));
    }

    /// While `down`, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` requests (of any route) are answered 503.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for VllmReplica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// vLLM's `ErrorResponse`.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({
        "object": "error",
        "message": message,
        "type": kind,
        "param": null,
        "code": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// 503 while down, 401 without the key; `None` when the request may go on.
fn refuse(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let failing = shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing || shared.down.load(Ordering::SeqCst) {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "The engine is not running".into(),
        ));
    }
    let key = shared.script.api_key.as_deref()?;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(key)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Unauthorized"})),
        )
            .into_response()
    })
}

fn field(body: &Value, key: &str) -> Option<String> {
    body[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn log(shared: &Shared, action: &'static str, name: &str, path: Option<&str>, status: StatusCode) {
    shared.requests.lock().unwrap().push(LoraRequest {
        action,
        lora_name: name.to_string(),
        lora_path: path.map(str::to_string),
        status: status.as_u16(),
    });
}

async fn load(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&shared, &headers) {
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(name), Some(path)) = (field(&body, "lora_name"), field(&body, "lora_path")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidUserInput",
            "Both 'lora_name' and 'lora_path' must be provided.".into(),
        );
    };
    let mut loaded = shared.loaded.lock().unwrap();
    let (status, response) = if loaded.iter().any(|(n, _)| *n == name) {
        let m = format!("The lora adapter '{name}' has already been loaded.");
        (
            StatusCode::BAD_REQUEST,
            error(StatusCode::BAD_REQUEST, "InvalidUserInput", m),
        )
    } else if path.starts_with('/')
        && !std::path::Path::new(&path)
            .join("adapter_config.json")
            .is_file()
    {
        let m = format!("Loading lora {name} failed: No adapter found for {path}");
        (
            StatusCode::NOT_FOUND,
            error(StatusCode::NOT_FOUND, "NotFoundError", m),
        )
    } else if loaded.len() >= shared.script.max_loras {
        let m = format!(
            "Loading lora {name} failed: no free LoRA slot ({} adapters loaded, --max-loras {})",
            loaded.len(),
            shared.script.max_loras
        );
        (
            StatusCode::BAD_REQUEST,
            error(StatusCode::BAD_REQUEST, "BadRequestError", m),
        )
    } else {
        loaded.push((name.clone(), path.clone()));
        let text = format!("Success: LoRA adapter '{name}' added successfully.");
        (StatusCode::OK, (StatusCode::OK, text).into_response())
    };
    log(&shared, "load", &name, Some(&path), status);
    response
}

async fn unload(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&shared, &headers) {
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(name) = field(&body, "lora_name") else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidUserInput",
            "either 'lora_name' and 'lora_int_id' needs to be provided.".into(),
        );
    };
    let mut loaded = shared.loaded.lock().unwrap();
    let before = loaded.len();
    loaded.retain(|(n, _)| *n != name);
    let (status, response) = if loaded.len() == before {
        let m = format!("The lora adapter '{name}' cannot be found.");
        (
            StatusCode::NOT_FOUND,
            error(StatusCode::NOT_FOUND, "NotFoundError", m),
        )
    } else {
        let text = format!("Success: LoRA adapter '{name}' removed successfully.");
        (StatusCode::OK, (StatusCode::OK, text).into_response())
    };
    log(&shared, "unload", &name, None, status);
    response
}

fn card(id: &str, root: &str, parent: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": 1_700_000_000u64,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": 4096,
        "permission": [],
    })
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&shared, &headers) {
        return r;
    }
    let base = &shared.script.base;
    let mut data = vec![card(base, base, None)];
    for (name, path) in shared.loaded.lock().unwrap().iter() {
        data.push(card(name, path, Some(base)));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// The script that answers for `model`, if it is served.
fn script_for(shared: &Shared, model: &str) -> Option<ModelScript> {
    if model == shared.script.base {
        return Some(shared.script.base_reply.clone());
    }
    let loaded = shared.loaded.lock().unwrap();
    let (_, path) = loaded.iter().find(|(n, _)| n == model)?;
    let scripted = shared
        .script
        .adapters
        .iter()
        .find(|(k, _)| path.contains(k.as_str()));
    Some(scripted.map_or_else(|| shared.script.base_reply.clone(), |(_, s)| s.clone()))
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&shared, &headers) {
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    shared.chats.lock().unwrap().push(model.clone());
    let Some(script) = script_for(&shared, &model) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The model `{model}` does not exist."),
        );
    };
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    if let Some(ms) = script.latency_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let text = script.reply_to(last_user);
    let completion = crate::word_count(&text);
    Json(json!({
        "id": "chatcmpl-vllm",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": null,
            "finish_reason": "stop",
            "stop_reason": null,
        }],
        "usage": {
            "prompt_tokens": crate::word_count(last_user),
            "completion_tokens": completion,
            "total_tokens": crate::word_count(last_user) + completion,
        },
    }))
    .into_response()
}
