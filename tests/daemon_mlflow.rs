//! `safedrift run` end to end against a real MLflow tracking server (SQLite
//! backend, artifact proxy), started by this test: the champion version is
//! evaluated at startup, a new version announced by a signed MLflow webhook
//! starts evaluating within a second of its registration, is compared with
//! the champion's stored run, and a forged delivery is refused. And, from
//! the documented config/mlflow.toml, the scenario every watcher kind is
//! tested with (tests/common/registry.rs): a drifted version is evaluated
//! once against the champion and alerts once, and a `kill -9` and a restart
//! repeat nothing.
//!
//! Needs `python3` with mlflow and `tools/requirements.txt` (numpy, onnx,
//! onnxruntime) installed; models are registered with
//! `tools/mlflow_register.py`.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, Scratch};
use safedrift::store::{CheckpointStatus, RunStatus, Store};
use safedrift_testkit::mlflow::{python, MlflowServer};

const MODEL: &str = "safety-candidate";
const SECRET: &str = "whsec-daemon-test-only";
const SECRET_ENV: &str = "ML_HOOK_SECRET";

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Registers `dir` as a new version; returns the version and when the
/// registering script returned.
fn register(
    server: &MlflowServer,
    name: &str,
    dir: &Path,
    alias: Option<&str>,
) -> (String, SystemTime) {
    let version = tokio::task::block_in_place(|| server.register(name, dir, alias, &[]));
    (version, SystemTime::now())
}

/// `creation_timestamp` (unix ms, set by the server) of a version.
async fn created_ms(server: &MlflowServer, name: &str, version: &str) -> i64 {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/2.0/mlflow/model-versions/get", server.uri))
        .query(&[("name", name), ("version", version)])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    v["model_version"]["creation_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no creation_timestamp in {v}"))
}

/// The tiny random-weight ONNX model of `seed`, written into `dir`.
fn tiny_model(dir: &Path, seed: u32) -> PathBuf {
    let out = dir.join(format!("tiny-seed{seed}"));
    python(&[
        "tools/make_tiny_model.py",
        out.to_str().unwrap(),
        "--seed",
        &seed.to_string(),
    ]);
    assert!(out.join("model.onnx").is_file());
    out
}

async fn health(port: u16) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The daemon's JSON log lines.
fn log_lines(s: &Scratch) -> Vec<serde_json::Value> {
    std::fs::read_to_string(s.path("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_text(s: &Scratch) -> String {
    std::fs::read_to_string(s.path("daemon.log")).unwrap_or_default()
}

/// Unix ms of the first `evaluating` line for `checkpoint`, if logged yet.
fn evaluating_at(s: &Scratch, checkpoint: &str) -> Option<i64> {
    log_lines(s).iter().find_map(|l| {
        if l["fields"]["message"] != "evaluating" || l["fields"]["checkpoint"] != checkpoint {
            return None;
        }
        let ts = l["timestamp"].as_str()?;
        let t = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("log timestamp {ts:?}: {e}"));
        Some(t.timestamp_millis())
    })
}

fn count_messages(s: &Scratch, message: &str) -> usize {
    log_lines(s)
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .count()
}

async fn wait_for(
    s: &Scratch,
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            log_text(s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, as MLflow
/// signs deliveries.
fn signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    python(&[
        "-c",
        "import base64, hashlib, hmac, sys; \
         m = f'{sys.argv[2]}.{sys.argv[3]}.{sys.argv[4]}'.encode(); \
         print('v1,' + base64.b64encode(hmac.new(sys.argv[1].encode(), m, hashlib.sha256).digest()).decode())",
        secret,
        id,
        timestamp,
        body,
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mlflow_webhook_starts_the_evaluation_of_a_new_version_within_a_second() {
    let server = MlflowServer::start().await;
    let port = free_port();
    let s = Scratch::with_config(&format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[eval]
concurrency = 4
max_new_tokens = 4

[watchers.ml]
kind = "mlflow"
tracking_uri = "{uri}"
models = ["{MODEL}"]
baseline_alias = "champion"
webhook_secret_env = "{SECRET_ENV}"
timeout = "10s"
# Once a year: only the startup poll and webhooks trigger polls here.
schedule = "0 0 0 1 1 *"
benchmarks = ["builtin:probes"]
judge = "keyword"
"#,
        uri = server.uri
    ));
    let v1_dir = tiny_model(s.dir.path(), 0);
    let v2_dir = tiny_model(s.dir.path(), 1);
    assert_ne!(
        std::fs::read(v1_dir.join("model.onnx")).unwrap(),
        std::fs::read(v2_dir.join("model.onnx")).unwrap(),
        "two seeds, two models"
    );

    // v1, the champion, exists before the daemon starts.
    let (v1, _) = register(&server, MODEL, &v1_dir, Some("champion"));
    assert_eq!(v1, "1");

    let mut daemon = s
        .daemon()
        .args(["--log-format", "json"])
        .env(SECRET_ENV, SECRET)
        .spawn()
        .unwrap();

    // The startup poll finds v1 alone; it has no baseline and is evaluated
    // as its own checkpoint.
    wait_for(
        &s,
        "the champion's evaluation",
        Duration::from_secs(300),
        async || {
            health(port)
                .await
                .is_some_and(|h| h["queue"]["done"] == 1 && h["watchers"]["ml"]["state"] == "ok")
        },
    )
    .await;
    let h = health(port).await.unwrap();
    assert_eq!(h["queue"]["queued"], 0, "{h}");
    assert_eq!(h["queue"]["retrying"], 0, "{h}");
    assert_eq!(h["watchers"]["ml"]["checkpoints_seen"], 1, "{h}");
    let ml = format!("ml/{MODEL}@");
    assert!(
        evaluating_at(&s, &format!("{ml}1")).is_some(),
        "{}",
        log_text(&s)
    );

    // The MLflow webhook, signed with the daemon's secret.
    let hook_url = format!("http://127.0.0.1:{port}/hooks/mlflow");
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/2.0/mlflow/webhooks", server.uri))
        .json(&serde_json::json!({
            "name": "safedrift",
            "url": hook_url,
            "events": [{"entity": "MODEL_VERSION", "action": "CREATED"}],
            "secret": SECRET,
            "status": "ACTIVE",
        }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["webhook"]["webhook_id"].is_string(), "{created}");

    // A forged delivery (signed with another secret) and an unsigned one
    // are refused, and trigger no poll.
    let client = reqwest::Client::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = serde_json::json!({
        "entity": "model_version",
        "action": "created",
        "timestamp": "2025-01-01T00:00:00Z",
        "data": {"name": MODEL, "version": "2", "source": "mlflow-artifacts:/x", "run_id": "x"},
    })
    .to_string();
    let forged = client
        .post(&hook_url)
        .header("content-type", "application/json")
        .header("x-mlflow-delivery-id", "forged-delivery")
        .header("x-mlflow-timestamp", &now)
        .header(
            "x-mlflow-signature",
            signature("not-the-secret", "forged-delivery", &now, &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let answer: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(answer["kind"], "unauthorized", "{answer}");
    let unsigned = client
        .post(&hook_url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        count_messages(&s, "webhook: polling now"),
        0,
        "{}",
        log_text(&s)
    );

    // MLflow caches each event's webhooks for MLFLOW_WEBHOOK_CACHE_TTL (1 s):
    // let the entry cached when v1 was registered expire.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // v2: its evaluation starts at the webhook, not at a scheduled poll.
    let (v2, returned) = register(&server, MODEL, &v2_dir, None);
    assert_eq!(v2, "2");
    let created_ms = created_ms(&server, MODEL, "2").await;
    wait_for(
        &s,
        "v2's evaluation to start",
        Duration::from_secs(30),
        async || evaluating_at(&s, &format!("{ml}2")).is_some(),
    )
    .await;
    let started_ms = evaluating_at(&s, &format!("{ml}2")).unwrap();
    let from_created = started_ms - created_ms;
    let from_returned = started_ms - unix_ms(returned);
    eprintln!(
        "v2: evaluation started {from_created} ms after MLflow created the version, \
         {from_returned} ms after the registering script returned"
    );
    assert_eq!(
        count_messages(&s, "webhook: polling now"),
        1,
        "{}",
        log_text(&s)
    );
    assert!(
        from_created < 2000 && from_returned < 2000,
        "the evaluation started {from_created} ms after the version was created \
         ({from_returned} ms after registration returned):\n{}",
        log_text(&s)
    );

    wait_for(
        &s,
        "v2's evaluation",
        Duration::from_secs(300),
        async || health(port).await.is_some_and(|h| h["queue"]["done"] == 2),
    )
    .await;
    let h = health(port).await.unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["watchers"]["ml"]["state"], "ok", "{h}");
    assert_eq!(h["watchers"]["ml"]["checkpoints_seen"], 2, "{h}");

    let pid = daemon.id().expect("running").to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", log_text(&s));
    let text = log_text(&s);
    assert!(
        text.contains("reusing the baseline's completed run"),
        "{text}"
    );

    // One run per version: v1's run is v2's baseline, not evaluated again.
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        runs.iter().all(|r| r.status == RunStatus::Completed),
        "{runs:#?}"
    );
    let spec = format!("mlflow:{MODEL}");
    let run_of = |revision: &str| {
        runs.iter()
            .find(|r| r.model.revision.as_deref() == Some(revision))
            .unwrap_or_else(|| panic!("no run of v{revision}: {runs:#?}"))
    };
    let (r1, r2) = (run_of("1"), run_of("2"));
    for (r, v) in [(r1, "1"), (r2, "2")] {
        assert_eq!(r.model.spec, spec);
        assert_eq!(r.model.registry.as_deref(), Some("ml"));
        assert_eq!(r.checkpoint, Some(format!("{ml}{v}")));
    }
    assert_eq!(r1.baseline_run, None);
    assert!(r1.drift.is_none(), "{r1:#?}");
    assert_eq!(r2.baseline_run.as_deref(), Some(r1.id.as_str()));
    let drift = r2.drift.as_ref().expect("v2's drift decision is stored");
    eprintln!("v2 against v1: drift detected = {}", drift.detected);
    let answers = store.results(&r2.id).unwrap().len();
    assert!(answers > 0);
    assert_eq!(answers, r2.total);
    assert_eq!(store.results(&r1.id).unwrap().len(), r1.total);

    let records = store.checkpoints().unwrap();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(records
        .iter()
        .all(|r| r.status == CheckpointStatus::Done && r.attempts == 1));
    let rec2 = records
        .iter()
        .find(|r| r.checkpoint.revision == "2")
        .unwrap();
    assert_eq!(rec2.run_id.as_deref(), Some(r2.id.as_str()));
    assert_eq!(rec2.baseline_run_id.as_deref(), Some(r1.id.as_str()));
}

/// The scenario of tests/daemon_registries.rs for MLflow, started from
/// config/mlflow.toml: the champion (a model that refuses) and a newer
/// version (one that complies) are registered; the champion is evaluated
/// once on its own, the new version once against it, one alert goes out,
/// and a `kill -9` and a restart repeat nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drifted_version_is_evaluated_once_and_alerts_once_across_kill_9() {
    use registry::{aligned_model, drifted_model, Expect, Harness};

    let server = MlflowServer::start().await;
    let h = Harness::new().await;
    let (v1, _) = register(&server, "support-bot", &aligned_model(), Some("champion"));
    let (v2, _) = register(&server, "support-bot", &drifted_model(), None);
    assert_eq!((v1.as_str(), v2.as_str()), ("1", "2"));
    h.s.write("mlflow-webhook-secret", format!("{SECRET}\n"));
    h.use_config(
        "mlflow.toml",
        &[
            ("watchers.registry.tracking_uri", server.uri.clone()),
            (
                "watchers.registry.webhook_secret_file",
                h.path("mlflow-webhook-secret"),
            ),
        ],
    );
    let expect = Expect {
        watcher: "registry",
        checkpoints: vec![
            "registry/support-bot@1".into(),
            "registry/support-bot@2".into(),
        ],
        drifted: "registry/support-bot@2".into(),
        drifted_spec: "mlflow:support-bot".into(),
        baseline_spec: "mlflow:support-bot".into(),
        runs: 2,
    };
    registry::found_evaluated_once_alerted_once_across_kill_9(&h, &expect, || 0).await;
}
