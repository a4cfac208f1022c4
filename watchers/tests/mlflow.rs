//! The MLflow watcher against a real MLflow tracking server (`pip install
//! mlflow`; `.ci/run` installs it), started once for this test binary with a
//! SQLite backend and the artifact proxy, plus small fake servers for the
//! failure modes a real one will not produce on demand.
//!
//! Models are registered with the project's own `tools/mlflow_register.py`;
//! webhooks are real deliveries from MLflow to a receiver in this test.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use safedrift_testkit::mlflow::MlflowServer;
use safedrift_watchers::cache::Cache;
use safedrift_watchers::http::RetryPolicy;
use safedrift_watchers::mlflow::MlflowWatcher;
use safedrift_watchers::{Baseline, Checkpoint, Target, WatchError, Watcher, Webhook};
use tokio::sync::mpsc;

const MODEL: &str = "safety-candidate";
const SECRET: &str = "whsec-for-tests-only";
const BASE_TAG: &str = "base_model=meta-llama/Llama-3.1-8B-Instruct";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A webhook delivery as the receiver got it.
#[derive(Clone, Debug)]
struct Delivery {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Hands the delivery (with `body` in place of the received one) to
    /// `watcher`, as the daemon's HTTP layer does.
    fn check(&self, watcher: &dyn Watcher, body: &[u8]) -> Result<bool, WatchError> {
        let headers = self.headers.clone();
        let header = move |name: &str| headers.get(&name.to_ascii_lowercase()).cloned();
        watcher.webhook(&Webhook {
            header: &header,
            body,
        })
    }
}

/// An HTTP receiver for MLflow's webhook deliveries.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_ascii_lowercase(),
                            v.to_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                let _ = tx.send(Delivery {
                    headers,
                    body: body.to_vec(),
                });
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// The next delivery announcing version `version` of `model`.
async fn delivery_for(
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    model: &str,
    version: &str,
) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook delivery for {model} v{version} within 60 s"))
            .expect("receiver open");
        let v = d.json();
        if v["entity"] == "model_version"
            && v["action"] == "created"
            && v["data"]["name"] == model
            && v["data"]["version"] == version
        {
            return d;
        }
    }
}

fn watcher(name: &str, toml_text: &str) -> MlflowWatcher {
    let table: toml::Table = toml_text.parse().unwrap();
    let mut w = MlflowWatcher::from_config(name, &table).unwrap_or_else(|e| panic!("{e:?}"));
    w.retry = quick_retry();
    w
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(50),
        max_hint: Duration::from_millis(50),
    }
}

/// A few KB of distinct files, one in a nested folder.
fn model_files(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("tokenizer/extra")).unwrap();
    let bytes = |n: usize, salt: u8| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect::<Vec<u8>>()
    };
    std::fs::write(dir.join("model.onnx"), bytes(4096, seed)).unwrap();
    std::fs::write(dir.join("config.json"), format!("{{\"seed\": {seed}}}")).unwrap();
    std::fs::write(
        dir.join("tokenizer/tokenizer.json"),
        bytes(1500, seed ^ 0x5a),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer/extra/merges file.txt"), b"a b\nc d\n").unwrap();
}

/// Relative path -> contents of every file under `dir`, cache bookkeeping
/// (dot files) aside.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn versions(found: &[Checkpoint], model: &str) -> Vec<String> {
    found
        .iter()
        .filter(|c| c.model == model)
        .map(|c| c.revision.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_mlflow_registry() {
    let mut server = MlflowServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let secret_file = scratch.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let wrong_secret_file = scratch.path().join("wrong-secret");
    std::fs::write(&wrong_secret_file, "not-the-secret").unwrap();
    let uri = server.uri.clone();

    // The webhook first: MLflow caches the webhooks of each event briefly.
    let (hook_url, mut deliveries) = receiver().await;
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{uri}/api/2.0/mlflow/webhooks"))
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
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // v1 (the champion) and v2.
    let (v1_dir, v2_dir, v3_dir) = (
        scratch.path().join("v1"),
        scratch.path().join("v2"),
        scratch.path().join("v3"),
    );
    model_files(&v1_dir, 1);
    model_files(&v2_dir, 2);
    model_files(&v3_dir, 3);
    assert_eq!(
        server.register(MODEL, &v1_dir, Some("champion"), &[BASE_TAG]),
        "1"
    );
    assert_eq!(server.register(MODEL, &v2_dir, None, &[BASE_TAG]), "2");

    let reg = watcher(
        "reg",
        &format!(
            "kind = 'mlflow'\ntracking_uri = '{uri}'\nmodels = ['{MODEL}', 'absent-model']\n\
             baseline_alias = 'champion'\nwebhook_secret_file = '{}'\ntimeout = '10s'",
            secret_file.display()
        ),
    );
    assert_eq!(reg.name(), "reg");

    // Poll: both versions; v2's baseline is the champion, v1 has none.
    let found = reg.poll().await.unwrap();
    assert_eq!(versions(&found, MODEL), ["1", "2"], "{found:#?}");
    let (cp1, cp2) = (&found[0], &found[1]);
    assert_eq!(cp1.watcher, "reg");
    assert_eq!(cp1.baseline, None);
    assert_eq!(
        cp2.baseline,
        Some(Baseline::Checkpoint(Box::new(cp1.clone())))
    );
    assert!(
        cp2.detail["source"]
            .as_str()
            .unwrap()
            .starts_with("mlflow-artifacts:/"),
        "{:?}",
        cp2.detail
    );
    assert_eq!(
        cp2.detail["run_id"].as_str().unwrap().len(),
        32,
        "{:?}",
        cp2.detail
    );
    // Paging gives the same answer.
    let mut paged = watcher(
        "reg",
        &format!("tracking_uri = '{uri}'\nmodels = ['{MODEL}']\nbaseline_alias = 'champion'"),
    );
    paged.page_size = 1;
    assert_eq!(paged.poll().await.unwrap(), found);
    // An alias nobody holds: no baseline, no error.
    let no_alias = watcher(
        "reg",
        &format!("tracking_uri = '{uri}'\nmodels = ['{MODEL}']\nbaseline_alias = 'nobody'"),
    );
    let plain = no_alias.poll().await.unwrap();
    assert_eq!(versions(&plain, MODEL), ["1", "2"]);
    assert!(plain.iter().all(|c| c.baseline.is_none()), "{plain:#?}");

    // Fetch v2: the same bytes, nested folder included, then a cache hit.
    let cache = Cache::new(scratch.path().join("cache"), u64::MAX).unwrap();
    let target = reg.fetch(cp2, &cache).await.unwrap();
    let Target::Onnx { dir } = &target else {
        panic!("{target:?}")
    };
    assert_eq!(dir, &cache.checkpoint_dir(cp2));
    assert!(Cache::is_complete(dir));
    assert_eq!(tree(dir), tree(&v2_dir));
    assert_ne!(tree(dir), tree(&v1_dir));
    let started = Instant::now();
    assert_eq!(reg.fetch(cp2, &cache).await.unwrap(), target);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The baseline is fetched like any checkpoint.
    let Some(Baseline::Checkpoint(base)) = &cp2.baseline else {
        unreachable!()
    };
    let Target::Onnx { dir: base_dir } = reg.fetch(base, &cache).await.unwrap() else {
        unreachable!()
    };
    assert_eq!(tree(&base_dir), tree(&v1_dir));

    // Webhooks: the deliveries for v1 and v2 were real and signed.
    for v in ["1", "2"] {
        let d = delivery_for(&mut deliveries, MODEL, v).await;
        assert!(d.check(&reg, &d.body).unwrap());
    }
    // v3: a genuine delivery verifies and announces a watched model.
    assert_eq!(server.register(MODEL, &v3_dir, None, &[BASE_TAG]), "3");
    let d3 = delivery_for(&mut deliveries, MODEL, "3").await;
    assert!(
        d3.headers["x-mlflow-signature"].starts_with("v1,"),
        "{:?}",
        d3.headers
    );
    assert!(d3.check(&reg, &d3.body).unwrap());
    // A tampered body, a wrong secret, no secret, no signature: refused.
    let tampered = String::from_utf8(d3.body.clone())
        .unwrap()
        .replace("\"3\"", "\"4\"");
    assert_ne!(tampered.as_bytes(), d3.body.as_slice());
    assert_eq!(
        d3.check(&reg, tampered.as_bytes()).unwrap_err().kind,
        "unauthorized"
    );
    let wrong = watcher(
        "reg",
        &format!(
            "tracking_uri = '{uri}'\nmodels = ['{MODEL}']\nwebhook_secret_file = '{}'",
            wrong_secret_file.display()
        ),
    );
    assert_eq!(d3.check(&wrong, &d3.body).unwrap_err().kind, "unauthorized");
    let unsigned = watcher(
        "reg",
        &format!("tracking_uri = '{uri}'\nmodels = ['{MODEL}']"),
    );
    assert_eq!(
        d3.check(&unsigned, &d3.body).unwrap_err().kind,
        "unauthorized"
    );
    let mut stripped = d3.clone();
    stripped.headers.remove("x-mlflow-signature");
    assert_eq!(
        stripped.check(&reg, &d3.body).unwrap_err().kind,
        "unauthorized"
    );
    // v3 is polled with the champion as baseline.
    let found = reg.poll().await.unwrap();
    assert_eq!(versions(&found, MODEL), ["1", "2", "3"]);
    assert_eq!(
        found[2].baseline,
        Some(Baseline::Checkpoint(Box::new(found[0].clone())))
    );

    // Another model: genuine but not watched by `reg`; a filter watcher
    // takes any model's delivery and finds models by search (names with a
    // quote included), page by page.
    let quoted = "safety-it's";
    assert_eq!(
        server.register("other-model", &v1_dir, None, &[BASE_TAG]),
        "1"
    );
    assert_eq!(
        server.register(quoted, &v2_dir, Some("champion"), &[BASE_TAG]),
        "1"
    );
    let other = delivery_for(&mut deliveries, "other-model", "1").await;
    assert!(!other.check(&reg, &other.body).unwrap());
    let mut by_filter = watcher(
        "found",
        &format!(
            "tracking_uri = '{uri}'\nfilter = \"name LIKE 'safety-%'\"\nbaseline_alias = 'champion'\n\
             webhook_secret_file = '{}'",
            secret_file.display()
        ),
    );
    assert!(other.check(&by_filter, &other.body).unwrap());
    by_filter.page_size = 1;
    let found = by_filter.poll().await.unwrap();
    assert_eq!(versions(&found, MODEL), ["1", "2", "3"]);
    assert_eq!(versions(&found, quoted), ["1"]);
    assert_eq!(versions(&found, "other-model"), Vec::<String>::new());
    assert!(found.iter().all(|c| c.watcher == "found"));
    let q = found.iter().find(|c| c.model == quoted).unwrap();
    let Target::Onnx { dir } = by_filter.fetch(q, &cache).await.unwrap() else {
        unreachable!()
    };
    assert_eq!(tree(&dir), tree(&v2_dir));

    // A stopped server: an error, not a panic.
    server.stop();
    let started = Instant::now();
    let err = reg.poll().await.unwrap_err();
    assert_eq!(err.kind, "unreachable", "{err}");
    assert!(err.message.contains("gave up after 3 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let fresh = Checkpoint {
        revision: "3".into(),
        ..found[2].clone()
    };
    assert_eq!(
        reg.fetch(&fresh, &cache).await.unwrap_err().kind,
        "unreachable"
    );
}

/// Serves `routes` (path -> (status, body)) and counts requests.
async fn fake(routes: Vec<(&'static str, u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut app = Router::new();
    for (path, status, body) in routes {
        let hits = hits.clone();
        app = app.route(
            path,
            get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async move { (StatusCode::from_u16(status).unwrap(), body) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (uri, hits)
}

#[tokio::test]
async fn malformed_answers_name_the_route() {
    let (uri, _) = fake(vec![(
        "/api/2.0/mlflow/model-versions/search",
        200,
        "<html>proxy login</html>",
    )])
    .await;
    let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "malformed", "{err}");
    assert!(err.message.contains("model-versions/search"), "{err}");

    let (uri, _) = fake(vec![(
        "/api/2.0/mlflow/model-versions/search",
        200,
        r#"{"model_versions": [{"name": "m", "version": 1}]}"#,
    )])
    .await;
    let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
    assert_eq!(w.poll().await.unwrap_err().kind, "malformed");
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let (uri, hits) = fake(vec![("/api/2.0/mlflow/model-versions/search", 503, "busy")]).await;
    let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "http", "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let (uri, hits) = fake(vec![("/api/2.0/mlflow/model-versions/search", 403, "{}")]).await;
    let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
    assert_eq!(w.poll().await.unwrap_err().kind, "unauthorized");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Nothing listening at all.
    let w = watcher(
        "reg",
        &format!(
            "tracking_uri = 'http://127.0.0.1:{}'\nmodels = ['m']",
            free_port()
        ),
    );
    assert_eq!(w.poll().await.unwrap_err().kind, "unreachable");
}

#[tokio::test]
async fn artifact_names_cannot_leave_the_cache() {
    for listing in [
        r#"{"files": [{"path": "../escape.onnx", "is_dir": false, "file_size": 1}]}"#,
        r#"{"files": [{"path": "..", "is_dir": true}]}"#,
        r#"{"files": [{"path": "/etc/passwd", "is_dir": false, "file_size": 1}]}"#,
        r#"{"files": [{"path": ".complete", "is_dir": false, "file_size": 1}]}"#,
    ] {
        let (uri, _) = fake(vec![
            (
                "/api/2.0/mlflow/model-versions/get-download-uri",
                200,
                r#"{"artifact_uri": "mlflow-artifacts:/1/abc/artifacts/model"}"#,
            ),
            ("/api/2.0/mlflow-artifacts/artifacts", 200, listing),
        ])
        .await;
        let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
        let scratch = tempfile::tempdir().unwrap();
        let cache = Cache::new(scratch.path().join("cache"), u64::MAX).unwrap();
        let cp = Checkpoint {
            watcher: "reg".into(),
            model: "m".into(),
            revision: "1".into(),
            baseline: None,
            detail: serde_json::Value::Null,
        };
        let err = w.fetch(&cp, &cache).await.unwrap_err();
        assert_eq!(err.kind, "unsafe_path", "{listing}: {err}");
        assert!(!Cache::is_complete(&cache.checkpoint_dir(&cp)));
        assert!(!scratch.path().join("escape.onnx").exists());
    }

    // Artifacts outside the proxy cannot be read.
    let (uri, _) = fake(vec![(
        "/api/2.0/mlflow/model-versions/get-download-uri",
        200,
        r#"{"artifact_uri": "s3://bucket/1/abc/artifacts/model"}"#,
    )])
    .await;
    let w = watcher("reg", &format!("tracking_uri = '{uri}'\nmodels = ['m']"));
    let scratch = tempfile::tempdir().unwrap();
    let cache = Cache::new(scratch.path().to_path_buf(), u64::MAX).unwrap();
    let cp = Checkpoint {
        watcher: "reg".into(),
        model: "m".into(),
        revision: "1".into(),
        baseline: None,
        detail: serde_json::Value::Null,
    };
    assert_eq!(w.fetch(&cp, &cache).await.unwrap_err().kind, "unsupported");
}
