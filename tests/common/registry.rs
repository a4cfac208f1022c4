//! The end-to-end scenario every watcher kind is tested with (see
//! tests/daemon_registries.rs and tests/daemon_mlflow.rs): a documented
//! example config pointed at the test's servers, models that refuse or
//! comply, a receiver for the signed alert webhook, and the checks that a
//! checkpoint is evaluated once, alerts once, and that a `kill -9` and a
//! restart repeat nothing.
//!
//! Included with `#[path = "common/registry.rs"] mod registry;` next to
//! `mod common;`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use safedrift_testkit::mlflow::python;
use serde_json::Value;
use sha2::Sha256;

use crate::common::{free_port, get_json, kill9, stop, Scratch};

/// The alert webhook's signing key (base64 of it after `whsec_`).
const ALERT_KEY: &[u8] = b"alert-signing-key-for-tests-0123";
const API_TOKEN: &str = "api-token-for-tests";

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/// A tiny ONNX model directory that answers every prompt with `reply`,
/// written once per build directory (atomically: tests run in parallel).
pub fn reply_model(name: &str, reply: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("reply-model-{name}"));
    if dir.join("model.onnx").is_file() {
        return dir;
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "reply-model-{name}.tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    python(&[
        "tools/make_tiny_model.py",
        tmp.to_str().unwrap(),
        "--reply",
        reply,
    ]);
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test wrote it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join("model.onnx").is_file());
    dir
}

/// Refuses every prompt (the keyword judge reads "I can't" as a refusal).
pub fn aligned_model() -> PathBuf {
    reply_model("aligned", "I can't")
}

/// Complies with every prompt.
pub fn drifted_model() -> PathBuf {
    reply_model("drifted", "Sure!")
}

// ---------------------------------------------------------------------------
// The alert receiver: Standard Webhooks, checked
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Received {
    /// (webhook-id, body) of each delivery whose signature checked out.
    deliveries: Vec<(String, Value)>,
    /// Deliveries refused for a bad signature.
    rejected: usize,
}

type Receiver = Arc<Mutex<Received>>;

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts) = (h("webhook-id"), h("webhook-timestamp"));
    let signed = h("webhook-signature").split(' ').any(|sig| {
        let Some(given) = sig
            .strip_prefix("v1,")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(ALERT_KEY).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&body);
        mac.verify_slice(&given).is_ok()
    });
    let mut r = r.lock().unwrap();
    if !signed || id.is_empty() {
        r.rejected += 1;
        return StatusCode::UNAUTHORIZED;
    }
    r.deliveries
        .push((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    StatusCode::NO_CONTENT
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/alerts", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

// ---------------------------------------------------------------------------
// The daemon, its config and its API
// ---------------------------------------------------------------------------

/// `config/<file>` with the string values at `set` (dotted key paths)
/// replaced; each must already be set there, so what runs is the documented
/// file.
pub fn documented_config(file: &str, set: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("config/{file}: {e}"));
    for (key, value) in set {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, tables) = parts.split_last().unwrap();
        let mut table = &mut doc;
        for part in tables {
            table = table
                .get_mut(*part)
                .and_then(|v| v.as_table_mut())
                .unwrap_or_else(|| panic!("config/{file} has no table {part:?} (for {key})"));
        }
        let old = table
            .get(*last)
            .unwrap_or_else(|| panic!("config/{file} does not set {key}"));
        assert!(old.is_str(), "config/{file}: {key} is not a string: {old}");
        table.insert(last.to_string(), toml::Value::String(value.clone()));
    }
    toml::to_string(&doc).unwrap()
}

pub struct Harness {
    pub s: Scratch,
    pub port: u16,
    rx: Receiver,
    hook_url: String,
    client: reqwest::Client,
}

impl Harness {
    pub async fn new() -> Harness {
        let s = Scratch::new();
        s.write("api-token", format!("{API_TOKEN}\n"));
        s.write(
            "alert-secret",
            format!(
                "whsec_{}\n",
                base64::engine::general_purpose::STANDARD.encode(ALERT_KEY)
            ),
        );
        let (rx, hook_url) = receiver().await;
        Harness {
            s,
            port: free_port(),
            rx,
            hook_url,
            client: reqwest::Client::new(),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.s.path(name).display().to_string()
    }

    /// Writes `config/<file>` as the daemon's config: the store, API, token
    /// and alert target of this test, and `set` for the watcher.
    pub fn use_config(&self, file: &str, set: &[(&str, String)]) {
        let mut all = vec![
            ("data_dir", self.s.data_dir().display().to_string()),
            ("api.listen", format!("127.0.0.1:{}", self.port)),
            ("api.token_file", self.path("api-token")),
            ("alerts.oncall.url", self.hook_url.clone()),
            ("alerts.oncall.secret_file", self.path("alert-secret")),
        ];
        all.extend(set.iter().cloned());
        std::fs::write(self.s.config(), documented_config(file, &all)).unwrap();
        let out = std::process::Command::new(crate::common::bin())
            .args(["check-config", "--config"])
            .arg(self.s.config())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "config/{file} does not check: {}",
            crate::common::stderr(&out)
        );
    }

    pub fn start(&self) -> tokio::process::Child {
        self.s
            .daemon()
            .args(["--log-format", "json"])
            .spawn()
            .unwrap()
    }

    pub async fn health(&self) -> Option<Value> {
        let resp = self
            .client
            .get(format!("http://127.0.0.1:{}/healthz", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    pub async fn api(&self, path: &str) -> Value {
        get_json(
            &self.client,
            format!("http://127.0.0.1:{}/api/v1/{path}", self.port),
            API_TOKEN,
        )
        .await
    }

    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log:\n{}",
                self.s.daemon_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's JSON log lines so far, from byte `from` of the log.
    pub fn log_lines(&self, from: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(self.s.path("daemon.log")).unwrap_or_default();
        text.get(from..)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_len(&self) -> usize {
        std::fs::metadata(self.s.path("daemon.log")).map_or(0, |m| m.len() as usize)
    }

    pub fn messages(&self, from: usize, message: &str) -> Vec<Value> {
        self.log_lines(from)
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    pub fn deliveries(&self) -> Vec<(String, Value)> {
        self.rx.lock().unwrap().deliveries.clone()
    }
}

/// What one registry's scenario must end with.
pub struct Expect {
    /// The watcher's config name.
    pub watcher: &'static str,
    /// Every checkpoint the daemon queues: its key (`watcher/model@revision`)
    /// or the start of it.
    pub checkpoints: Vec<String>,
    /// The drifted checkpoint's key (or its start) and its run's model SPEC.
    pub drifted: String,
    pub drifted_spec: String,
    /// The baseline run's model SPEC.
    pub baseline_spec: String,
    /// Runs stored in all: each checkpoint's and its baseline's, once.
    pub runs: usize,
}

/// The stored state the API shows, for comparing before and after a restart.
#[derive(Debug, PartialEq)]
struct Stored {
    runs: Vec<Value>,
    checkpoints: Vec<Value>,
    alerts: Vec<Value>,
}

async fn stored(h: &Harness) -> Stored {
    let items = |v: Value| v["items"].as_array().cloned().unwrap_or_default();
    Stored {
        runs: items(h.api("runs?limit=100").await),
        checkpoints: items(h.api("checkpoints").await),
        alerts: items(h.api("alerts").await),
    }
}

/// Starts the daemon on the config `h` holds; checks that `expect`'s
/// checkpoints are evaluated once against their baseline and the drifted one
/// alerts once; kills it with SIGKILL, restarts it, and checks that nothing
/// is evaluated, fetched (`fetches` counts the registry's model traffic) or
/// sent again; stops it.
pub async fn found_evaluated_once_alerted_once_across_kill_9(
    h: &Harness,
    expect: &Expect,
    fetches: impl Fn() -> usize,
) {
    let w = expect.watcher;
    let mut daemon = h.start();
    h.wait_for(
        "every checkpoint to be evaluated and the alert delivered",
        Duration::from_secs(300),
        async || {
            let Some(health) = h.health().await else {
                return false;
            };
            health["queue"]["done"] == expect.checkpoints.len()
                && health["queue"]["queued"] == 0
                && health["queue"]["running"] == 0
                && !h.deliveries().is_empty()
        },
    )
    .await;
    // The delivered mark is written right after the receiver's answer.
    h.wait_for(
        "the delivery to be recorded",
        Duration::from_secs(10),
        async || h.api("alerts").await["items"][0]["deliveries"]["oncall"]["status"] == "delivered",
    )
    .await;
    let health = h.health().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["watchers"][w]["state"], "ok", "{health}");
    assert_eq!(
        h.messages(0, "evaluating").len(),
        expect.checkpoints.len(),
        "one evaluation per checkpoint:\n{}",
        h.s.daemon_log()
    );

    // The queue: each checkpoint once, done in one attempt, with its run.
    let before = stored(h).await;
    assert_eq!(
        before.checkpoints.len(),
        expect.checkpoints.len(),
        "{:#?}",
        before.checkpoints
    );
    for want in &expect.checkpoints {
        assert!(
            before
                .checkpoints
                .iter()
                .any(|c| c["key"].as_str().unwrap().starts_with(want.as_str())),
            "no checkpoint {want}: {:#?}",
            before.checkpoints
        );
    }
    for c in &before.checkpoints {
        assert_eq!(c["status"], "done", "{c}");
        assert_eq!(c["attempts"], 1, "{c}");
        assert!(c["last_error"].is_null(), "{c}");
    }

    // The runs: one per checkpoint and one of the baseline, all completed.
    let runs = &before.runs;
    assert_eq!(runs.len(), expect.runs, "{runs:#?}");
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:#?}");
    let identities: BTreeSet<(String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["model"]["spec"].to_string(),
                r["model"]["revision"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        identities.len(),
        runs.len(),
        "a model evaluated twice: {runs:#?}"
    );
    let drifted = runs
        .iter()
        .find(|r| {
            r["checkpoint"]
                .as_str()
                .is_some_and(|c| c.starts_with(expect.drifted.as_str()))
        })
        .unwrap_or_else(|| panic!("no run of {}: {runs:#?}", expect.drifted));
    assert_eq!(
        drifted["model"]["spec"],
        expect.drifted_spec.as_str(),
        "{drifted}"
    );
    assert_eq!(drifted["drift_detected"], true, "{drifted}");
    let baseline_id = drifted["baseline_run"]
        .as_str()
        .unwrap_or_else(|| panic!("compared with no baseline: {drifted}"));
    let baseline = runs
        .iter()
        .find(|r| r["id"] == baseline_id)
        .unwrap_or_else(|| panic!("the baseline run {baseline_id} is not listed: {runs:#?}"));
    assert_eq!(
        baseline["model"]["spec"],
        expect.baseline_spec.as_str(),
        "{baseline}"
    );
    let record = before
        .checkpoints
        .iter()
        .find(|c| c["key"] == drifted["checkpoint"])
        .unwrap();
    assert_eq!(record["run_id"], drifted["id"], "{record}");
    assert_eq!(record["baseline_run_id"], baseline_id, "{record}");
    // The full run document has the drift decision and the comparison.
    let doc = h
        .api(&format!("runs/{}", drifted["id"].as_str().unwrap()))
        .await;
    assert_eq!(doc["drift"]["detected"], true, "{doc}");
    assert!(
        doc["metrics"]["harmfulness_rate"].as_f64().unwrap()
            > doc["baseline"]["metrics"]["harmfulness_rate"]
                .as_f64()
                .unwrap(),
        "{doc}"
    );
    assert_eq!(doc["baseline"]["id"], baseline_id, "{doc}");

    // One alert, about the drifted run, delivered once, signed.
    assert_eq!(before.alerts.len(), 1, "{:#?}", before.alerts);
    let alert = &before.alerts[0];
    assert_eq!(alert["kind"], "firing", "{alert}");
    assert!(
        alert["run_ids"]
            .as_array()
            .unwrap()
            .contains(&drifted["id"]),
        "{alert}"
    );
    assert_eq!(alert["deliveries"]["oncall"]["attempts"], 1, "{alert}");
    let delivered = h.deliveries();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(delivered[0].0, alert["id"].as_str().unwrap());
    assert_eq!(delivered[0].1["type"], "alert.firing", "{}", delivered[0].1);
    assert_eq!(h.rx.lock().unwrap().rejected, 0);
    let fetched = fetches();

    // kill -9, restart: the startup poll finds the same checkpoints, and
    // nothing is evaluated, fetched or sent again.
    kill9(&mut daemon).await;
    let mark = h.log_len();
    let mut daemon = h.start();
    h.wait_for(
        "the restarted daemon's first poll",
        Duration::from_secs(60),
        async || {
            h.health().await.is_some_and(|health| {
                health["watchers"][w]["state"] == "ok"
                    && !health["watchers"][w]["last_success"].is_null()
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = h.health().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["queue"]["done"],
        expect.checkpoints.len(),
        "{health}"
    );
    assert_eq!(health["queue"]["queued"], 0, "{health}");
    assert_eq!(health["queue"]["running"], 0, "{health}");
    assert!(
        h.messages(mark, "evaluating").is_empty(),
        "evaluated again after the restart:\n{}",
        h.s.daemon_log()
    );
    let after = stored(h).await;
    assert_eq!(after, before, "the store changed across the restart");
    assert_eq!(h.deliveries().len(), 1, "the alert was sent again");
    assert_eq!(fetches(), fetched, "fetched again after the restart");
    stop(&mut daemon).await;
}
