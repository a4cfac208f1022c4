//! The Hugging Face watcher against a fake Hub (and a fake CDN it redirects
//! LFS downloads to) speaking the API's real shapes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use safedrift_watchers::cache::Cache;
use safedrift_watchers::http::RetryPolicy;
use safedrift_watchers::huggingface::HuggingfaceWatcher;
use safedrift_watchers::{Baseline, Checkpoint, Target, Watcher, Webhook};
use serde_json::json;
use sha2::Digest;

const SHA_A: &str = "575db8b7a51b6f85eb06eee540738584589f131c";
const SHA_B: &str = "1111111111111111111111111111111111111111";
const SHA_BASE: &str = "2222222222222222222222222222222222222222";
const TOKEN: &str = "hf_test_token";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_hint: Duration::from_secs(5),
    }
}

/// What the fake servers saw.
#[derive(Default)]
struct Seen {
    /// (path and query, Authorization header, Range header, when)
    requests: Vec<(String, Option<String>, Option<String>, Instant)>,
    base_calls: u32,
    cut_once: bool,
}

#[derive(Clone)]
struct Hub {
    addr: SocketAddr,
    cdn: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// The big LFS file the CDN serves.
    weights: Bytes,
}

impl Hub {
    fn count(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.requests
            .iter()
            .filter(|r| r.0.starts_with(prefix))
            .count()
    }
}

fn json_response(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn record(hub: &Hub, uri: &Uri, headers: &HeaderMap) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    hub.seen.lock().unwrap().requests.push((
        uri.path_and_query().unwrap().to_string(),
        h("authorization"),
        h("range"),
        Instant::now(),
    ));
}

fn onnx_siblings(subfolder: &str) -> serde_json::Value {
    json!([
        {"rfilename": "README.md"},
        {"rfilename": "config.json"},
        {"rfilename": format!("{subfolder}/model.onnx")},
    ])
}

fn model(id: &str, sha: &str, base: serde_json::Value) -> serde_json::Value {
    json!({
        "_id": "66a0", "id": id, "author": "acme", "sha": sha,
        "lastModified": "2026-11-20T10:12:03.000Z", "private": false, "gated": false,
        "disabled": false, "downloads": 12, "likes": 0,
        "tags": ["onnx", "base_model:acme/base"], "pipeline_tag": "text-generation",
        "library_name": "transformers.js",
        "cardData": {"base_model": base, "license": "apache-2.0"},
        "siblings": onnx_siblings("onnx"),
    })
}

fn lfs_sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn hub_handler(State(hub): State<Hub>, uri: Uri, headers: HeaderMap) -> Response {
    record(&hub, &uri, &headers);
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [("x-error-code", "RepoNotFound")],
            "{\"error\":\"Invalid credentials\"}",
        )
            .into_response();
    }
    let addr = hub.addr;
    match path {
        "/api/models" if query.contains("cursor=p2") => json_response(json!([model(
            "acme/model-b",
            SHA_B,
            json!(["acme/base", "other/merge"])
        ),])),
        "/api/models" => {
            assert!(query.contains("author=acme"), "{query}");
            assert!(
                query.contains("full=true") && query.contains("cardData=true"),
                "{query}"
            );
            let mut no_onnx = model("acme/pytorch-only", SHA_B, json!("acme/base"));
            no_onnx["siblings"] = json!([{"rfilename": "model.safetensors"}]);
            let mut r = json_response(json!([
                model("acme/model-a", SHA_A, json!("acme/base")),
                no_onnx
            ]));
            let h = r.headers_mut();
            h.insert(
                "link",
                format!("<http://{addr}/api/models?author=acme&full=true&cardData=true&cursor=p2>; rel=\"next\"")
                    .parse()
                    .unwrap(),
            );
            // The quota is spent for a second: the next call must wait.
            h.insert("ratelimit", "\"api\";r=0;t=1".parse().unwrap());
            h.insert(
                "ratelimit-policy",
                "\"fixed window\";\"api\";q=1000;w=300".parse().unwrap(),
            );
            r
        }
        "/api/models/acme/base" => {
            let first = {
                let mut seen = hub.seen.lock().unwrap();
                seen.base_calls += 1;
                seen.base_calls == 1
            };
            if first {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1"), ("ratelimit", "\"api\";r=0;t=1")],
                    "{\"error\":\"You have exceeded our rate limit\"}",
                )
                    .into_response();
            }
            json_response(model("acme/base", SHA_BASE, serde_json::Value::Null))
        }
        "/api/models/acme/model-a" => {
            json_response(model("acme/model-a", SHA_A, json!("acme/base")))
        }
        "/api/models/acme/missing" => (
            StatusCode::NOT_FOUND,
            [
                ("x-error-code", "RepoNotFound"),
                ("x-error-message", "Repository not found"),
            ],
            "",
        )
            .into_response(),
        p if p == format!("/api/models/acme/model-a/tree/{SHA_A}/onnx") => {
            assert_eq!(query, "recursive=true");
            json_response(json!([
                {"type": "file", "path": "onnx/model.onnx", "size": hub.weights.len(),
                 "oid": "a1b2", "lfs": {"oid": lfs_sha(&hub.weights), "size": hub.weights.len(), "pointerSize": 134}},
                {"type": "file", "path": "onnx/config.json", "size": 17, "oid": "c0ffee"},
                {"type": "file", "path": "onnx/model_quantized.onnx", "size": 5, "oid": "d00d",
                 "lfs": {"oid": lfs_sha(b"quant"), "size": 5, "pointerSize": 130}},
                {"type": "directory", "path": "onnx/extra", "size": 0, "oid": "beef"},
                {"type": "file", "path": "onnx/extra/notes.json", "size": 2, "oid": "feed"},
            ]))
        }
        p if p == format!("/api/models/acme/model-a/tree/{SHA_A}") => json_response(json!([
            {"type": "file", "path": "README.md", "size": 5, "oid": "aa"},
            {"type": "file", "path": "config.json", "size": 2, "oid": "bb"},
            {"type": "file", "path": "tokenizer.json", "size": 14, "oid": "cc"},
            {"type": "directory", "path": "onnx", "size": 0, "oid": "dd"},
        ])),
        p if p == format!("/api/models/acme/evil/tree/{SHA_A}/onnx") => json_response(json!([
            {"type": "file", "path": "onnx/model.onnx", "size": 4, "oid": "aa"},
            {"type": "file", "path": "onnx/../../../escape.json", "size": 4, "oid": "bb"},
        ])),
        p if p == format!("/api/models/acme/badsum/tree/{SHA_A}/onnx") => json_response(json!([
            {"type": "file", "path": "onnx/model.onnx", "size": 5, "oid": "aa",
             "lfs": {"oid": lfs_sha(b"other"), "size": 5, "pointerSize": 130}},
        ])),
        p if p == format!("/api/models/acme/badsum/tree/{SHA_A}") => json_response(json!([])),
        p if p == format!("/acme/model-a/resolve/{SHA_A}/onnx/model.onnx") => {
            let mut r = StatusCode::FOUND.into_response();
            let h = r.headers_mut();
            h.insert(
                "location",
                format!("http://{}/xet/blob-1?sig=abc", hub.cdn)
                    .parse()
                    .unwrap(),
            );
            h.insert("x-repo-commit", SHA_A.parse().unwrap());
            h.insert(
                "x-linked-etag",
                format!("\"{}\"", lfs_sha(&hub.weights)).parse().unwrap(),
            );
            h.insert(
                "x-linked-size",
                hub.weights.len().to_string().parse().unwrap(),
            );
            r
        }
        p if p == format!("/acme/model-a/resolve/{SHA_A}/onnx/config.json") => (
            StatusCode::OK,
            [("x-repo-commit", SHA_A)],
            "{\"model\":\"tiny\"}\n",
        )
            .into_response(),
        p if p == format!("/acme/model-a/resolve/{SHA_A}/tokenizer.json") => {
            (StatusCode::OK, "{\"version\":1}\n").into_response()
        }
        p if p == format!("/acme/badsum/resolve/{SHA_A}/onnx/model.onnx") => {
            (StatusCode::OK, "fives").into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            format!("{{\"error\":\"no route {path}\"}}"),
        )
            .into_response(),
    }
}

/// The CDN: the first download is cut halfway; later ones honour Range.
async fn cdn_handler(State(hub): State<Hub>, uri: Uri, headers: HeaderMap) -> Response {
    record(&hub, &uri, &headers);
    let weights = hub.weights.clone();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cut = {
        let mut seen = hub.seen.lock().unwrap();
        !std::mem::replace(&mut seen.cut_once, true)
    };
    if cut {
        let half = weights.slice(..weights.len() / 2);
        let stream = futures::stream::unfold(0, move |step| {
            let half = half.clone();
            async move {
                match step {
                    0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("connection reset")), 2))
                    }
                    _ => None,
                }
            }
        });
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut()
            .insert("content-length", weights.len().to_string().parse().unwrap());
        return r;
    }
    match range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
    {
        Some(start) => {
            let start: usize = start.parse().unwrap();
            let total = weights.len();
            (
                StatusCode::PARTIAL_CONTENT,
                [(
                    "content-range",
                    format!("bytes {start}-{}/{total}", total - 1),
                )],
                weights.slice(start..),
            )
                .into_response()
        }
        None => (StatusCode::OK, weights).into_response(),
    }
}

async fn start() -> (Hub, tempfile::TempDir) {
    let hub_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cdn_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let weights: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hub = Hub {
        addr: hub_listener.local_addr().unwrap(),
        cdn: cdn_listener.local_addr().unwrap(),
        seen: Arc::default(),
        weights: Bytes::from(weights),
    };
    let hub_router = Router::new().fallback(hub_handler).with_state(hub.clone());
    let cdn_router = Router::new().fallback(cdn_handler).with_state(hub.clone());
    tokio::spawn(async move { axum::serve(hub_listener, hub_router).await.unwrap() });
    tokio::spawn(async move { axum::serve(cdn_listener, cdn_router).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("hook-secret"), "s3cret-hook\n").unwrap();
    (hub, dir)
}

fn watcher(hub: &Hub, dir: &tempfile::TempDir, extra: &str) -> HuggingfaceWatcher {
    let config = format!(
        "kind = 'huggingface'\nschedule = '0 */5 * * * *'\nendpoint = 'http://{}'\ntoken_file = '{}'\n{extra}",
        hub.addr,
        dir.path().join("token").display()
    );
    let mut w = HuggingfaceWatcher::from_config("acme-hf", &config.parse().unwrap()).unwrap();
    w.retry = fast_retry();
    w
}

fn cache(dir: &tempfile::TempDir) -> Cache {
    Cache::new(dir.path().join("cache"), 1 << 30)
        .unwrap()
        .with_retry_policy(fast_retry())
}

#[tokio::test]
async fn listing_follows_links_honours_rate_limits_and_finds_base_models() {
    let (hub, dir) = start().await;
    let w = watcher(&hub, &dir, "author = 'acme'\nsubfolder = 'onnx'");
    let mut found = w.poll().await.unwrap();
    found.sort_by(|a, b| a.model.cmp(&b.model));

    let base = Checkpoint {
        watcher: "acme-hf".into(),
        model: "acme/base".into(),
        revision: SHA_BASE.into(),
        baseline: None,
        detail: serde_json::Value::Null,
    };
    let models: Vec<(&str, &str)> = found
        .iter()
        .map(|c| (c.model.as_str(), c.revision.as_str()))
        .collect();
    // The repo without an ONNX graph is left out.
    assert_eq!(models, [("acme/model-a", SHA_A), ("acme/model-b", SHA_B)]);
    for cp in &found {
        assert_eq!(
            cp.baseline,
            Some(Baseline::Checkpoint(Box::new(base.clone()))),
            "{}",
            cp.model
        );
    }

    let seen = hub.seen.lock().unwrap();
    let at = |prefix: &str| -> Vec<Instant> {
        seen.requests
            .iter()
            .filter(|r| r.0.starts_with(prefix))
            .map(|r| r.3)
            .collect()
    };
    let page1 = at("/api/models?author=acme&full=true&cardData=true")[0];
    let page2 = seen
        .requests
        .iter()
        .find(|r| r.0.contains("cursor=p2"))
        .unwrap()
        .3;
    assert!(
        page2 - page1 >= Duration::from_millis(950),
        "RateLimit r=0;t=1 ignored: {:?}",
        page2 - page1
    );
    // The base model: one 429 (Retry-After: 1), then one answer, shared by
    // both checkpoints.
    let base_calls = at("/api/models/acme/base");
    assert_eq!(base_calls.len(), 2);
    assert!(base_calls[1] - base_calls[0] >= Duration::from_millis(950));
    assert!(seen
        .requests
        .iter()
        .all(|r| r.1.as_deref() == Some(&format!("Bearer {TOKEN}"))));
}

#[tokio::test]
async fn configured_repos_survive_one_missing_repo() {
    let (hub, dir) = start().await;
    let w = watcher(
        &hub,
        &dir,
        "models = ['acme/missing', 'acme/model-a']\nsubfolder = 'onnx'",
    );
    let found = w.poll().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].revision, SHA_A);

    let w = watcher(&hub, &dir, "models = ['acme/missing']");
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "not_found");
    assert!(err.message.contains("Repository not found"), "{err}");

    // A wrong token: refused, and the token is not in the message.
    std::fs::write(dir.path().join("token"), "hf_wrong").unwrap();
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "unauthorized");
    assert!(!err.message.contains("hf_wrong"), "{err}");
}

#[tokio::test]
async fn fetch_downloads_the_onnx_layout_through_the_cdn_and_resumes() {
    let (hub, dir) = start().await;
    let w = watcher(&hub, &dir, "author = 'acme'\nsubfolder = 'onnx'");
    let cache = cache(&dir);
    let cp = Checkpoint {
        watcher: "acme-hf".into(),
        model: "acme/model-a".into(),
        revision: SHA_A.into(),
        baseline: None,
        detail: serde_json::Value::Null,
    };
    let target = w.fetch(&cp, &cache).await.unwrap();
    let root = cache.checkpoint_dir(&cp);
    let Target::Onnx { dir: onnx } = &target else {
        panic!("{target:?}")
    };
    assert_eq!(onnx, &root.join("onnx"));
    assert_eq!(
        std::fs::read(onnx.join("model.onnx")).unwrap(),
        hub.weights.to_vec()
    );
    assert_eq!(
        std::fs::read_to_string(onnx.join("config.json")).unwrap(),
        "{\"model\":\"tiny\"}\n"
    );
    // The tokenizer comes from the repo root, next to the graph.
    assert_eq!(
        std::fs::read_to_string(onnx.join("tokenizer.json")).unwrap(),
        "{\"version\":1}\n"
    );
    // Not in `allow`: the quantized graph, nested files, the README.
    assert!(!onnx.join("model_quantized.onnx").exists());
    assert!(!onnx.join("extra").exists());
    assert!(!onnx.join("README.md").exists());
    assert!(Cache::is_complete(&root));

    {
        let seen = hub.seen.lock().unwrap();
        let cdn: Vec<_> = seen
            .requests
            .iter()
            .filter(|r| r.0.starts_with("/xet/"))
            .collect();
        assert_eq!(cdn.len(), 2, "one cut download, one resumed");
        assert_eq!(cdn[0].2, None);
        let half = hub.weights.len() / 2;
        assert_eq!(cdn[1].2.as_deref(), Some(format!("bytes={half}-").as_str()));
        // The token stays on the Hub.
        assert!(
            cdn.iter().all(|r| r.1.is_none()),
            "Authorization leaked to the CDN"
        );
        let resolves: Vec<_> = seen
            .requests
            .iter()
            .filter(|r| r.0.contains("/resolve/"))
            .collect();
        assert!(resolves
            .iter()
            .all(|r| r.1.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    }

    // A complete checkpoint is not fetched again.
    let before = hub.count("/");
    assert_eq!(w.fetch(&cp, &cache).await.unwrap(), target);
    assert_eq!(hub.count("/"), before);
}

#[tokio::test]
async fn hostile_paths_and_bad_checksums_are_refused() {
    let (hub, dir) = start().await;
    let w = watcher(&hub, &dir, "author = 'acme'\nsubfolder = 'onnx'");
    let cache = cache(&dir);
    let cp = |model: &str| Checkpoint {
        watcher: "acme-hf".into(),
        model: model.into(),
        revision: SHA_A.into(),
        baseline: None,
        detail: serde_json::Value::Null,
    };
    let err = w.fetch(&cp("acme/evil"), &cache).await.unwrap_err();
    assert_eq!(err.kind, "unsafe_path", "{err}");
    assert_eq!(hub.count("/acme/evil/resolve/"), 0, "nothing downloaded");
    assert!(!dir.path().join("escape.json").exists());
    assert!(!Cache::is_complete(&cache.checkpoint_dir(&cp("acme/evil"))));

    let err = w.fetch(&cp("acme/badsum"), &cache).await.unwrap_err();
    assert_eq!(err.kind, "checksum", "{err}");
    assert!(!Cache::is_complete(
        &cache.checkpoint_dir(&cp("acme/badsum"))
    ));

    // Not a Hub checkpoint at all.
    let mut bad = cp("acme/model-a");
    bad.revision = "../../etc".into();
    assert_eq!(w.fetch(&bad, &cache).await.unwrap_err().kind, "malformed");
}

fn deliver(
    w: &HuggingfaceWatcher,
    secret: Option<&str>,
    body: &serde_json::Value,
) -> Result<bool, safedrift_watchers::WatchError> {
    let headers: HashMap<String, String> = secret
        .map(|s| [("x-webhook-secret".to_string(), s.to_string())].into())
        .unwrap_or_default();
    let header = move |name: &str| headers.get(&name.to_ascii_lowercase()).cloned();
    let body = body.to_string();
    w.webhook(&Webhook {
        header: &header,
        body: body.as_bytes(),
    })
}

fn event(scope: &str, action: &str, repo: &str) -> serde_json::Value {
    json!({
        "event": {"action": action, "scope": scope},
        "repo": {"type": "model", "name": repo, "id": "6560", "private": false,
                 "url": {"web": format!("https://huggingface.co/{repo}"), "api": format!("https://huggingface.co/api/models/{repo}")},
                 "owner": {"id": "6550"}, "headSha": SHA_A},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": SHA_B, "newSha": SHA_A}],
        "webhook": {"id": "6570", "version": 3}
    })
}

#[tokio::test]
async fn webhooks_check_the_secret_and_the_repo() {
    let (hub, dir) = start().await;
    let secret_file = format!(
        "webhook_secret_file = '{}'",
        dir.path().join("hook-secret").display()
    );
    let w = watcher(&hub, &dir, &format!("author = 'acme'\n{secret_file}"));
    let push = event("repo.content", "update", "acme/model-a");

    let relevant = |w: &HuggingfaceWatcher, body: &serde_json::Value| {
        deliver(w, Some("s3cret-hook"), body).unwrap()
    };
    assert!(relevant(&w, &push));
    assert!(relevant(&w, &event("repo", "create", "acme/new")));
    // Genuine but irrelevant: another owner, a config change, a deletion,
    // a discussion.
    assert!(!relevant(&w, &event("repo.content", "update", "other/x")));
    assert!(!relevant(
        &w,
        &event("repo.config", "update", "acme/model-a")
    ));
    assert!(!relevant(&w, &event("repo", "delete", "acme/model-a")));
    assert!(!relevant(
        &w,
        &event("discussion", "create", "acme/model-a")
    ));

    for wrong in [
        Some("s3cret-hoo"),
        Some("s3cret-hook-and-more"),
        Some(""),
        None,
    ] {
        let err = deliver(&w, wrong, &push).unwrap_err();
        assert_eq!(err.kind, "unauthorized", "{wrong:?}");
        assert!(!err.message.contains("s3cret"), "{err}");
    }

    let header = |name: &str| (name == "x-webhook-secret").then(|| "s3cret-hook".to_string());
    let err = w
        .webhook(&Webhook {
            header: &header,
            body: b"{not json",
        })
        .unwrap_err();
    assert_eq!(err.kind, "malformed");

    let listed = watcher(
        &hub,
        &dir,
        &format!("models = ['acme/model-b']\n{secret_file}"),
    );
    assert!(!relevant(&listed, &push));
    assert!(relevant(
        &listed,
        &event("repo.content", "update", "acme/model-b")
    ));

    // No secret configured: every delivery is refused.
    let open = watcher(&hub, &dir, "author = 'acme'");
    assert_eq!(
        deliver(&open, Some("anything"), &push).unwrap_err().kind,
        "unauthorized"
    );
}

#[tokio::test]
async fn formats_say_which_repos_are_checkpoints() {
    let (hub, dir) = start().await;
    // By default a checkpoint is an ONNX export: the repo holding only
    // safetensors weights is left out.
    let w = watcher(&hub, &dir, "author = 'acme'");
    let found = w.poll().await.unwrap();
    assert!(
        found.iter().all(|c| c.model != "acme/pytorch-only"),
        "{found:?}"
    );
    // Watching full checkpoints too, it is one.
    let w = watcher(
        &hub,
        &dir,
        "author = 'acme'\nformats = ['onnx', 'safetensors']",
    );
    let found = w.poll().await.unwrap();
    let models: Vec<&str> = found.iter().map(|c| c.model.as_str()).collect();
    assert!(models.contains(&"acme/pytorch-only"), "{models:?}");
    // An unknown format and an empty list are config errors, by key.
    let config = |formats: &str| -> toml::Table {
        format!("kind = 'huggingface'\nauthor = 'acme'\nformats = {formats}")
            .parse()
            .unwrap()
    };
    let problems = HuggingfaceWatcher::from_config("hf", &config("['onnx', 'pt']"))
        .err()
        .unwrap()
        .join("\n");
    assert!(
        problems.contains("formats") && problems.contains("unknown format \"pt\""),
        "{problems}"
    );
    let problems = HuggingfaceWatcher::from_config("hf", &config("[]"))
        .err()
        .unwrap()
        .join("\n");
    assert!(problems.contains("the list is empty"), "{problems}");
}
