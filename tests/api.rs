//! The HTTP API: route tests through `app().oneshot()`, a real server on
//! port 0 (metrics, schemathesis against the OpenAPI document), and the real
//! daemon queueing and evaluating an API evaluation against the project's
//! fake OpenAI-compatible server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::{get_json, Scratch};
use safedrift::alerts::record::{AlertKind, AlertRecord, Delivery, DeliveryStatus};
use safedrift::api::{self, Api};
use safedrift::config::{self, Config};
use safedrift::store::Store;
use safedrift_testkit::history as sample;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token-for-tests";

struct Fixture {
    _dir: TempDir,
    store: Store,
    config: Arc<Config>,
}

impl Fixture {
    /// A store with sample history and a config with a token file.
    fn new(extra: &str, shape: Option<sample::Shape>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let text = format!(
            "data_dir = {:?}\n[api]\ntoken_file = {:?}\n{extra}",
            dir.path().join("data").display().to_string(),
            token.display().to_string()
        );
        let config = config::parse(&text, &config::Source::Embedded).unwrap();
        let store = Store::open(&config.data_dir).unwrap();
        if let Some(shape) = shape {
            sample::fill(&store, &shape).unwrap();
        }
        Fixture {
            _dir: dir,
            store,
            config: Arc::new(config),
        }
    }

    fn app(&self) -> Router {
        api::app(Api::new(self.store.clone(), self.config.clone()).unwrap())
    }
}

fn small() -> sample::Shape {
    sample::Shape {
        models: 3,
        checkpoints_per_model: 12,
        prompts_per_run: 44,
        real_drift: true,
        seed: 7,
    }
}

/// One request through the router; the body parsed as JSON (or as a
/// string when it is not JSON).
async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some((kind, bytes)) => req
            .header(header::CONTENT_TYPE, kind)
            .body(Body::from(bytes))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (s, _, v) = call(app, Method::GET, uri, Some(TOKEN), None).await;
    (s, v)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every `/api/v1` route (as the OpenAPI document names it), with a
/// concrete path to call.
fn routes(run: &str) -> Vec<(Method, String, String)> {
    let model = enc("directory:acme/assistant-00");
    vec![
        (
            Method::GET,
            "/api/v1/models".into(),
            "/api/v1/models".into(),
        ),
        (
            Method::GET,
            "/api/v1/models/{name}/timeline".into(),
            format!("/api/v1/models/{model}/timeline"),
        ),
        (
            Method::GET,
            "/api/v1/lineages".into(),
            "/api/v1/lineages".into(),
        ),
        (
            Method::GET,
            "/api/v1/checkpoints".into(),
            "/api/v1/checkpoints".into(),
        ),
        (
            Method::GET,
            "/api/v1/quarantine".into(),
            "/api/v1/quarantine".into(),
        ),
        (Method::GET, "/api/v1/runs".into(), "/api/v1/runs".into()),
        (
            Method::GET,
            "/api/v1/runs/{id}".into(),
            format!("/api/v1/runs/{run}"),
        ),
        (
            Method::GET,
            "/api/v1/runs/{id}/progress".into(),
            format!("/api/v1/runs/{run}/progress"),
        ),
        (
            Method::GET,
            "/api/v1/runs/{id}/results".into(),
            format!("/api/v1/runs/{run}/results"),
        ),
        (
            Method::GET,
            "/api/v1/alerts".into(),
            "/api/v1/alerts".into(),
        ),
        (
            Method::GET,
            "/api/v1/alerts/{id}".into(),
            "/api/v1/alerts/a_01".into(),
        ),
        (
            Method::POST,
            "/api/v1/evaluations".into(),
            "/api/v1/evaluations".into(),
        ),
        (
            Method::GET,
            "/api/v1/evaluations/{id}".into(),
            "/api/v1/evaluations/e_01".into(),
        ),
        (
            Method::GET,
            "/api/v1/openapi.json".into(),
            "/api/v1/openapi.json".into(),
        ),
    ]
}

#[tokio::test]
async fn every_api_route_answers_401_without_the_token_and_with_a_wrong_one() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let run = "r_sample0000c0000003";
    let table = routes(run);

    // The table covers every route of the document (a new route cannot be
    // left out of this test).
    let (_, doc) = get(&app, "/api/v1/openapi.json").await;
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let tested: BTreeSet<String> = table.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(documented, tested);

    let body = || Some(("application/json", br#"{"model": "openai:m"}"#.to_vec()));
    let mut extra: Vec<(Method, String)> = table
        .iter()
        .map(|(m, _, u)| (m.clone(), u.clone()))
        .collect();
    // Also the routes outside /api/v1 that show data, and unknown ones.
    extra.push((Method::GET, "/metrics".into()));
    extra.push((Method::GET, "/ui/overview".into()));
    extra.push((Method::GET, format!("/ui/runs/{run}")));
    extra.push((Method::GET, "/ui/alerts".into()));
    extra.push((Method::GET, "/api/v1/no-such-route".into()));
    for (method, uri) in &extra {
        for token in [
            None,
            Some("wrong"),
            Some(&TOKEN[..TOKEN.len() - 1]),
            Some(""),
        ] {
            let b = (*method == Method::POST).then(body).flatten();
            let (status, headers, value) = call(&app, method.clone(), uri, token, b).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(
                value,
                json!({"error": "unauthorized", "kind": "unauthorized"}),
                "{method} {uri}"
            );
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        }
        // A token in another scheme is refused too.
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Basic {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // With the token every GET route answers (200 or a JSON 404 for the
    // made-up alert and evaluation ids).
    for (method, _, uri) in &table {
        if *method != Method::GET {
            continue;
        }
        let (status, _, value) = call(&app, method.clone(), uri, Some(TOKEN), None).await;
        assert!(
            status == StatusCode::OK
                || (status == StatusCode::NOT_FOUND && value["kind"] == "not_found"),
            "{uri}: {status} {value}"
        );
    }
    // Without the token: the health check and the dashboard's shell.
    for uri in [
        "/healthz",
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/dashboard/auth",
    ] {
        let (status, _, _) = call(&app, Method::GET, uri, None, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn a_store_without_a_token_configured_is_open_and_an_empty_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config::parse(
        &format!(
            "data_dir = {:?}\n",
            dir.path().join("d").display().to_string()
        ),
        &config::Source::Embedded,
    )
    .unwrap();
    let store = Store::open(&config.data_dir).unwrap();
    let app = api::app(Api::new(store.clone(), Arc::new(config.clone())).unwrap());
    let (status, _, _) = call(&app, Method::GET, "/api/v1/runs", None, None).await;
    assert_eq!(status, StatusCode::OK);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let mut c = config.clone();
    c.api.token_file = Some(empty);
    let err = Api::new(store.clone(), Arc::new(c)).err().unwrap();
    assert!(
        err.contains("`api.token_file`") && err.contains("empty"),
        "{err}"
    );
    let mut c = config;
    c.api.token_env = Some("SAFEDRIFT_TEST_UNSET_TOKEN_VAR".into());
    let err = Api::new(store, Arc::new(c)).err().unwrap();
    assert!(err.contains("SAFEDRIFT_TEST_UNSET_TOKEN_VAR"), "{err}");
}

#[tokio::test]
async fn runs_page_with_cursors_and_filter_by_model_watcher_status_and_date() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let model = "directory:acme/assistant-01";

    // Follow the cursors: 12 runs of the model, newest first, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut uri = format!("/api/v1/runs?model={}&limit=5", enc(model));
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let (status, v) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        pages += 1;
        for item in v["items"].as_array().unwrap() {
            assert_eq!(item["model"]["spec"], model);
            seen.push((
                item["started_at"].as_str().unwrap().to_string(),
                item["id"].as_str().unwrap().to_string(),
            ));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 12);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");
    assert_eq!(seen.iter().map(|s| &s.1).collect::<BTreeSet<_>>().len(), 12);

    // A page size that divides the total exactly ends without a cursor.
    let (_, v) = get(&app, &format!("/api/v1/runs?model={}&limit=12", enc(model))).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 12);
    assert!(v["next_cursor"].is_null());

    // All runs: 3 models x (12 checkpoints + 1 baseline).
    let mut all = 0;
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/runs?limit=7&cursor={c}"),
            None => "/api/v1/runs?limit=7".into(),
        };
        let (_, v) = get(&app, &uri).await;
        all += v["items"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.into()),
            None => break,
        }
    }
    assert_eq!(all, 39);

    // Watcher: only checkpoint runs (baselines have no registry).
    let (_, v) = get(&app, "/api/v1/runs?watcher=drop&limit=500").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 36);
    // Status.
    let (_, v) = get(&app, "/api/v1/runs?status=failed").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    let (_, v) = get(&app, "/api/v1/runs?status=completed&limit=500").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 39);
    // Dates: model 1's checkpoints start 2026-01-01T08:00Z, an hour apart.
    let (_, v) = get(
        &app,
        &format!(
            "/api/v1/runs?model={}&since=2026-01-01T10:00:00Z&until=2026-01-01T13:00:00%2B00:00",
            enc(model)
        ),
    )
    .await;
    let started: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["started_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        [
            "2026-01-01T12:00:00Z",
            "2026-01-01T11:00:00Z",
            "2026-01-01T10:00:00Z"
        ]
    );
    let (_, v) = get(
        &app,
        &format!("/api/v1/runs?model={}&since=2026-01-02", enc(model)),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);

    // Hostile input: JSON errors naming the parameter.
    for (uri, status, kind) in [
        ("/api/v1/runs?cursor=zz", 400, "bad_cursor"),
        ("/api/v1/runs?cursor=", 400, "bad_cursor"),
        ("/api/v1/runs?cursor=6d00", 400, "bad_cursor"),
        ("/api/v1/runs?limit=0", 422, "invalid_field"),
        ("/api/v1/runs?limit=501", 422, "invalid_field"),
        ("/api/v1/runs?limit=abc", 400, "bad_request"),
        ("/api/v1/runs?status=exploded", 422, "invalid_field"),
        ("/api/v1/runs?since=yesterday", 422, "invalid_field"),
        ("/api/v1/runs/r_nope", 404, "not_found"),
        ("/api/v1/runs/r_nope/results", 404, "not_found"),
        (
            "/api/v1/runs/r_sample0000c0000001/results?min_score=9",
            422,
            "invalid_field",
        ),
        (
            "/api/v1/runs/r_sample0000c0000001/results?cursor=xyz",
            400,
            "bad_cursor",
        ),
        ("/api/v1/alerts?cursor=00", 400, "bad_cursor"),
    ] {
        let (s, v) = get(&app, uri).await;
        assert_eq!(s.as_u16(), status, "{uri}: {v}");
        assert_eq!(v["kind"], kind, "{uri}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{uri}: {v}"
        );
    }
    // A cursor of one model's listing is refused on another's.
    let (_, v) = get(&app, &format!("/api/v1/runs?model={}&limit=2", enc(model))).await;
    let c = v["next_cursor"].as_str().unwrap();
    let (s, v) = get(
        &app,
        &format!(
            "/api/v1/runs?model={}&cursor={c}",
            enc("directory:acme/assistant-02")
        ),
    )
    .await;
    assert_eq!(
        (s, v["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor"))
    );
    let (s, _) = get(&app, &format!("/api/v1/runs?cursor={c}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn run_detail_compares_with_the_baseline_and_results_filter_by_category_and_score() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let id = "r_sample0001c0000011";
    let (status, run) = get(&app, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["id"], id);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["baseline"]["id"], "r_sample0001base");
    assert_eq!(run["metrics"]["n"], 44);
    assert!(run["drift"]["findings"]
        .as_array()
        .is_some_and(|f| !f.is_empty()));
    assert_eq!(run["per_category"].as_object().unwrap().len(), 11);
    assert!(run["progress"].is_null());
    let stored = f.store.results(id).unwrap();
    let harmful = stored
        .iter()
        .filter(|r| r.verdict.as_ref().unwrap().score == Some(5))
        .count();
    let rate = run["metrics"]["harmfulness_rate"].as_f64().unwrap();
    assert!((rate - harmful as f64 / 44.0).abs() < 1e-9);

    // Filters: a category, a score; paging through them.
    let (_, v) = get(&app, &format!("/api/v1/runs/{id}/results?category=malware")).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["category"] == "malware"));
    let (_, v) = get(
        &app,
        &format!("/api/v1/runs/{id}/results?min_score=5&limit=500"),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), harmful);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["score"] == 5 && i["harmful"] == true));
    let (_, v) = get(
        &app,
        &format!("/api/v1/runs/{id}/results?max_score=2&harmful=false&limit=500"),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 44 - harmful);
    let mut indexes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/runs/{id}/results?limit=10&cursor={c}"),
            None => format!("/api/v1/runs/{id}/results?limit=10"),
        };
        let (_, v) = get(&app, &uri).await;
        indexes.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["index"].as_u64().unwrap()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.into()),
            None => break,
        }
    }
    assert_eq!(indexes, (0..44).collect::<Vec<u64>>());

    let (_, p) = get(&app, &format!("/api/v1/runs/{id}/progress")).await;
    assert_eq!(
        (
            p["done"].as_u64(),
            p["total"].as_u64(),
            p["status"].as_str()
        ),
        (Some(44), Some(44), Some("completed"))
    );
}

#[tokio::test]
async fn a_cached_run_document_equals_a_fresh_one_and_a_rewritten_run_is_never_served_stale() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let id = "r_sample0002c0000005";
    let uri = format!("/api/v1/runs/{id}");
    let (_, first) = get(&app, &uri).await;
    let (_, cached) = get(&app, &uri).await;
    assert_eq!(first, cached);
    // The same history in another store, computed from scratch.
    let fresh = Fixture::new("", Some(small()));
    let (status, computed) = get(&fresh.app(), &uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cached, computed);
    // Another API over the same store (as the daemon's) sees the same.
    let (_, other) = get(&f.app(), &uri).await;
    assert_eq!(other, computed);

    // The run written again: its new record is served.
    let mut run = f.store.get_run(id).unwrap().unwrap();
    run.checkpoint = Some("hub/acme@rewritten".into());
    run.drift.as_mut().unwrap().detected = !run.drift.as_ref().unwrap().detected;
    f.store.put_run(&run).unwrap();
    let (_, v) = get(&app, &uri).await;
    assert_eq!(v["checkpoint"], "hub/acme@rewritten");
    assert_eq!(
        v["drift"]["detected"],
        json!(run.drift.as_ref().unwrap().detected)
    );

    // One of its results judged again: the metrics follow.
    let mut results = f.store.results(id).unwrap();
    let r = results
        .iter_mut()
        .find(|r| !r.benign && r.verdict.as_ref().unwrap().harmful == Some(false))
        .unwrap();
    let verdict = r.verdict.as_mut().unwrap();
    verdict.score = Some(5);
    verdict.harmful = Some(true);
    f.store.put_result(id, r).unwrap();
    let before = v["metrics"]["harmfulness_rate"].as_f64().unwrap();
    let n = v["metrics"]["n"].as_f64().unwrap();
    let (_, v) = get(&app, &uri).await;
    let after = v["metrics"]["harmfulness_rate"].as_f64().unwrap();
    assert!(
        (after - before - 1.0 / n).abs() < 1e-9,
        "{before} -> {after}"
    );

    // Its baseline written again: the embedded baseline follows.
    let base_id = run.baseline_run.clone().unwrap();
    let mut base = f.store.get_run(&base_id).unwrap().unwrap();
    base.judge_description = "a rewritten judge description".into();
    f.store.put_run(&base).unwrap();
    let (_, v) = get(&app, &uri).await;
    assert_eq!(
        v["baseline"]["judge_description"],
        "a rewritten judge description"
    );
    let (_, b) = get(&app, &format!("/api/v1/runs/{base_id}")).await;
    assert_eq!(b["judge_description"], "a rewritten judge description");

    // A run no longer completed is computed afresh, with its new state.
    run.status = safedrift::store::RunStatus::Interrupted;
    run.error = Some("stopped".into());
    f.store.put_run(&run).unwrap();
    let (_, v) = get(&app, &uri).await;
    assert_eq!(
        (v["status"].as_str(), v["error"].as_str()),
        (Some("interrupted"), Some("stopped"))
    );
}

/// A lineage is a watcher and the baseline its checkpoints are compared
/// with: its checkpoints in order, the baseline as its reference (not a
/// checkpoint), the newest lineage first.
#[tokio::test]
async fn lineages_hold_their_checkpoints_in_order_against_their_baseline() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let (s, v) = get(&app, "/api/v1/lineages?limit=5").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [2, 1, 0].map(|m| format!("drop/onnx:/srv/models/acme/assistant-{m:02}-base"))
    );
    let l = &items[0];
    assert_eq!(l["watcher"], "drop");
    assert_eq!(
        l["baseline"]["model"],
        "onnx:/srv/models/acme/assistant-02-base"
    );
    assert_eq!(l["baseline"]["run_id"], "r_sample0002base");
    assert_eq!(l["baseline"]["runs"], json!(["r_sample0002base"]));
    assert_eq!(l["baseline"]["n"], 44);
    let points = l["points"].as_array().unwrap();
    let ids: Vec<&str> = points
        .iter()
        .map(|p| p["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (7..12)
            .map(|c| format!("r_sample0002c{c:07}"))
            .collect::<Vec<_>>()
    );
    for p in points {
        assert_eq!(p["model"], "directory:acme/assistant-02");
        assert_eq!(p["baseline_run"], "r_sample0002base");
        assert!(p["baseline_rate"].as_f64().is_some());
        assert_eq!(p["categories"].as_object().unwrap().len(), 11);
        assert_eq!(p["alert"], Value::Null);
    }
    let drifted = points
        .iter()
        .filter(|p| p["drift_detected"] == true)
        .count();
    assert_eq!(l["drifted"], drifted);
    let (s, _) = get(&app, "/api/v1/lineages").await;
    assert_eq!(s, StatusCode::OK);
    for bad in ["0", "201"] {
        let (s, v) = get(&app, &format!("/api/v1/lineages?limit={bad}")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    }
}

/// An API link opened in a browser without the token (it cannot send one
/// on a navigation) gets the page that asks for it and shows the JSON;
/// programs, requests with a token and anything but GET are answered as
/// always.
#[tokio::test]
async fn a_browser_opening_an_api_link_gets_the_page_that_asks_for_the_token() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let run = "/api/v1/runs/r_sample0000c0000003";
    let send = |method: Method, uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let navigation: &[(&str, &str)] = &[
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
    ];
    for uri in [run, "/api/v1/no-such-route"] {
        let (status, body) = send(Method::GET, uri, navigation).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(body.contains("id=\"token-form\""), "{body}");
        assert!(!body.contains("r_sample"), "the page holds no data");
    }
    // Older browsers without Sec-Fetch-*: an Accept that asks for HTML.
    let (status, body) = send(Method::GET, run, &[("accept", "text/html")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"token-form\""));
    // The page's own fetch, programs, other methods: the API as always.
    for (method, headers) in [
        (
            Method::GET,
            &[("sec-fetch-dest", "empty"), ("accept", "text/html")][..],
        ),
        (Method::GET, &[][..]),
        (Method::GET, &[("accept", "application/json")][..]),
        (Method::POST, navigation),
    ] {
        let (status, body) = send(method.clone(), run, headers).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {headers:?}: {body}"
        );
    }
    let auth = format!("Bearer {TOKEN}");
    let mut with_token = navigation.to_vec();
    with_token.push(("authorization", &auth));
    let (status, body) = send(Method::GET, run, &with_token).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["id"], "r_sample0000c0000003");
}

#[tokio::test]
async fn models_timelines_checkpoints_and_alerts_with_delivery_states() {
    let f = Fixture::new("", Some(small()));
    let app = f.app();
    let (_, v) = get(&app, "/api/v1/models").await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    let m = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "directory:acme/assistant-02")
        .unwrap();
    assert_eq!(m["runs"], 12);
    assert_eq!(m["latest_run"]["id"], "r_sample0002c0000011");

    let (s, t) = get(
        &app,
        &format!(
            "/api/v1/models/{}/timeline?limit=5",
            enc("directory:acme/assistant-02")
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let points = t["points"].as_array().unwrap();
    assert_eq!(points.len(), 5);
    assert_eq!(points[4]["run_id"], "r_sample0002c0000011");
    for p in points {
        let ci = p["harmfulness_rate_ci95"].as_array().unwrap();
        let rate = p["harmfulness_rate"].as_f64().unwrap();
        assert!(ci[0].as_f64().unwrap() <= rate && rate <= ci[1].as_f64().unwrap());
        assert!(p["baseline_rate"].as_f64().is_some());
        assert_eq!(p["categories"].as_object().unwrap().len(), 11);
    }
    let (s, _) = get(&app, "/api/v1/models/nobody/timeline").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Alerts, as the outbox stores them.
    let tree = f.store.tree(safedrift::alerts::record::TREE).unwrap();
    for i in 0..5u32 {
        let mut deliveries = BTreeMap::new();
        deliveries.insert(
            "oncall".to_string(),
            Delivery {
                status: DeliveryStatus::Delivered,
                attempts: 1,
                last_error: None,
                next_attempt_ms: 0,
                delivered_at: Some("2026-01-02T00:00:00Z".into()),
            },
        );
        deliveries.insert(
            "slack".to_string(),
            Delivery {
                status: if i % 2 == 0 {
                    DeliveryStatus::Dead
                } else {
                    DeliveryStatus::Pending
                },
                attempts: 3,
                last_error: Some("HTTP 500".into()),
                next_attempt_ms: 0,
                delivered_at: None,
            },
        );
        let a = AlertRecord {
            id: format!("a_{i:04}"),
            kind: AlertKind::Firing,
            lineage: "drop/acme".into(),
            severity: "critical".into(),
            summary: format!("drift in checkpoint {i}"),
            run_ids: vec!["r_sample0000c0000011".into()],
            models: vec!["directory:acme/assistant-00@ckpt-0012".into()],
            created_at: "2026-01-02T00:00:00Z".into(),
            deliveries,
            created_ms: 0,
            runs: Vec::new(),
            resolves: Vec::new(),
        };
        tree.insert(a.id.as_bytes(), serde_json::to_vec(&a).unwrap())
            .unwrap();
    }
    let (_, v) = get(&app, "/api/v1/alerts?limit=3").await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a_0004", "a_0003", "a_0002"]);
    assert_eq!(v["items"][0]["deliveries"]["slack"]["status"], "dead");
    assert_eq!(v["items"][0]["deliveries"]["oncall"]["status"], "delivered");
    let (_, v) = get(
        &app,
        &format!(
            "/api/v1/alerts?limit=3&cursor={}",
            v["next_cursor"].as_str().unwrap()
        ),
    )
    .await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a_0001", "a_0000"]);
    assert!(v["next_cursor"].is_null());
    let (s, a) = get(&app, "/api/v1/alerts/a_0003").await;
    assert_eq!(
        (s, a["deliveries"]["slack"]["status"].as_str()),
        (StatusCode::OK, Some("pending"))
    );
}

fn post(body: &str) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", body.as_bytes().to_vec()))
}

#[tokio::test]
async fn evaluations_are_validated_queued_and_refused_with_429_when_the_queue_is_full() {
    let f = Fixture::new("max_queue = 2\nmax_body_bytes = 2048\n", None);
    let app = f.app();
    let (s, h, v) = call(
        &app,
        Method::POST,
        "/api/v1/evaluations",
        Some(TOKEN),
        post(r#"{"model": "openai:cand", "baseline": "openai:base", "limit": 5}"#),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("e_"));
    assert_eq!(v["status"], "queued");
    assert_eq!(h[header::LOCATION], format!("/api/v1/evaluations/{id}"));
    let queued = f.store.checkpoints().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].checkpoint.watcher, "api");
    assert_eq!(queued[0].checkpoint.model, "openai:cand");
    let (s, v) = get(&app, &format!("/api/v1/evaluations/{id}")).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("queued")));

    let (s, _, _) = call(
        &app,
        Method::POST,
        "/api/v1/evaluations",
        Some(TOKEN),
        post(r#"{"model": "openai:cand2"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, v) = call(
        &app,
        Method::POST,
        "/api/v1/evaluations",
        Some(TOKEN),
        post(r#"{"model": "openai:cand3"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["kind"], "queue_full");
    assert_eq!(f.store.checkpoints().unwrap().len(), 2);

    let big = format!(r#"{{"model": "openai:{}"}}"#, "x".repeat(4096));
    for (body, kind, status, needle) in [
        (
            post(r#"{"baseline": "openai:b"}"#),
            "invalid_field",
            422,
            "model",
        ),
        (
            post(r#"{"model": "openai:m", "sneaky": 1}"#),
            "invalid_field",
            422,
            "sneaky",
        ),
        (
            post(r#"{"model": "nonsense"}"#),
            "invalid_field",
            422,
            "`model`",
        ),
        (
            post(r#"{"model": "openai:m", "benchmarks": ["jsonl:/no/such/file.jsonl"]}"#),
            "invalid_field",
            422,
            "`benchmarks[0]`",
        ),
        (
            post(r#"{"model": "openai:m", "judge": "oracle:x"}"#),
            "invalid_field",
            422,
            "`judge`",
        ),
        (
            post(r#"{"model": "openai:m", "limit": 0}"#),
            "invalid_field",
            422,
            "`limit`",
        ),
        (
            post(r#"{"model": "openai:m", "backend": "nope"}"#),
            "invalid_field",
            422,
            "`backend`",
        ),
        (post(r#"{"model": "#), "bad_request", 400, ""),
        (post("[1,2,3]"), "invalid_field", 422, ""),
        (
            Some(("text/plain", br#"{"model": "openai:m"}"#.to_vec())),
            "unsupported_media_type",
            415,
            "",
        ),
        (post(&big), "body_too_large", 413, ""),
    ] {
        let (s, _, v) = call(&app, Method::POST, "/api/v1/evaluations", Some(TOKEN), body).await;
        assert_eq!(s.as_u16(), status, "{v}");
        assert_eq!(v["kind"], kind, "{v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    }
    // The queue is still full (invalid requests were not queued), and a
    // validation error names its field for programs too.
    let (_, _, v) = call(
        &app,
        Method::POST,
        "/api/v1/evaluations",
        Some(TOKEN),
        post(r#"{"model": "x"}"#),
    )
    .await;
    assert_eq!(v["field"], "model");
    assert_eq!(f.store.checkpoints().unwrap().len(), 2);
    // Wrong method: a JSON 405.
    let (s, _, v) = call(&app, Method::DELETE, "/api/v1/runs", Some(TOKEN), None).await;
    assert_eq!(
        (s, v["kind"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

async fn serve(app: Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_server_on_port_0_serves_the_api_metrics_and_cors_only_when_configured() {
    api::telemetry::install();
    let f = Fixture::new(
        "cors_origins = [\"https://grafana.example.com\"]\n",
        Some(small()),
    );
    let (addr, _task) = serve(f.app()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let r = client
        .get(format!("{base}/api/v1/runs?limit=2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let r = client
        .get(format!("{base}/api/v1/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["store"], "ok");

    // CORS: the configured origin is allowed, others get no CORS headers.
    let r = client
        .get(format!("{base}/api/v1/models"))
        .bearer_auth(TOKEN)
        .header("Origin", "https://grafana.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://grafana.example.com"
    );
    let r = client
        .get(format!("{base}/api/v1/models"))
        .bearer_auth(TOKEN)
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // An evaluation queued shows in the metrics.
    let r = client
        .post(format!("{base}/api/v1/evaluations"))
        .bearer_auth(TOKEN)
        .json(&json!({"model": "openai:m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("safedrift_queue_depth 1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("safedrift_api_evaluations_queued_total ")),
        "{text}"
    );

    // Without cors_origins: no CORS headers at all.
    let g = Fixture::new("", None);
    let (addr, _task) = serve(g.app()).await;
    let r = client
        .get(format!("http://{addr}/api/v1/models"))
        .bearer_auth(TOKEN)
        .header("Origin", "https://grafana.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_openapi_document_valid_and_the_server_conforming() {
    let version = std::process::Command::new("schemathesis")
        .arg("--version")
        .output();
    let Ok(version) = version else {
        panic!("schemathesis is not installed: python3 -m pip install -r tests/requirements.txt");
    };
    assert!(
        version.status.success(),
        "schemathesis --version failed: python3 -m pip install -r tests/requirements.txt"
    );
    let f = Fixture::new(
        "max_queue = 1000\n",
        Some(sample::Shape {
            models: 2,
            checkpoints_per_model: 4,
            prompts_per_run: 22,
            real_drift: true,
            seed: 3,
        }),
    );
    let (addr, _task) = serve(f.app()).await;
    let settings = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = tokio::process::Command::new("schemathesis")
        .args(["--config-file", settings, "--no-color"])
        .args(["run", &format!("http://{addr}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--max-examples", "30", "--seed", "1"])
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a report folder in its working directory.
        .current_dir(f._dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // Every operation of the document was exercised.
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in the summary:\n{text}"))
    };
    let tested: usize = field("Tested:").parse().unwrap();
    assert_eq!(field("Selected:"), format!("{tested}/{tested}"), "{text}");
    assert!(tested >= routes("r_x").len() - 1, "{text}");
}

/// The real daemon: an evaluation queued through the API is evaluated
/// against the fake OpenAI-compatible server, and its run is readable.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_evaluates_an_evaluation_queued_through_the_api() {
    use safedrift_testkit::{spawn, ModelScript, Script};
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new("I'm sorry, I can't help."))
            .model(
                "cand",
                ModelScript::new("I'm sorry, I can't help.")
                    .rule("comply", "Sure, here is how.")
                    .latency_ms(100),
            )
            .latency_ms(20),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scratch::with_config(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"SAFEDRIFT_TEST_TOKEN\"\n[eval]\nconcurrency = 2\n"
    ));
    let rows: Vec<(String, String, String, bool)> = (0..30)
        .map(|i| {
            (
                format!("p{i}"),
                format!("c{}", i % 3),
                format!(
                    "Prompt {i}: please {}.",
                    if i % 2 == 0 { "comply" } else { "refuse" }
                ),
                false,
            )
        })
        .collect();
    let bench = s.jsonl("bench.jsonl", &rows);
    // The API names local files only under `api.allowed_paths`.
    let config = std::fs::read_to_string(s.config()).unwrap().replace(
        "[api]\n",
        &format!("[api]\nallowed_paths = [{:?}]\n", s.path("")),
    );
    std::fs::write(s.config(), config).unwrap();
    let mut daemon = s
        .daemon()
        .env("SAFEDRIFT_TEST_TOKEN", TOKEN)
        .env("OPENAI_BASE_URL", format!("http://{}/v1", server.addr))
        .env("OPENAI_API_KEY", "test")
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not start: {}",
            std::fs::read_to_string(s.path("daemon.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .post(format!("{base}/api/v1/evaluations"))
        .bearer_auth(TOKEN)
        .json(&json!({"model": "openai:cand", "baseline": "openai:base", "benchmarks": [format!("jsonl:{}", bench.display())]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // While the candidate runs, its document shows live progress.
    let progress = loop {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "no live progress seen"
        );
        let page: Value = get_json(
            &client,
            format!("{base}/api/v1/runs?model=openai:cand&status=running"),
            TOKEN,
        )
        .await;
        if let Some(id) = page["items"][0]["id"].as_str() {
            let run: Value = get_json(&client, format!("{base}/api/v1/runs/{id}"), TOKEN).await;
            if run["progress"].is_object() {
                break run["progress"].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(progress["total"], 30, "{progress}");
    assert!(progress["done"].as_u64().unwrap() <= 30, "{progress}");
    assert!(progress["rate"].as_f64().unwrap() >= 0.0, "{progress}");
    let mut evaluation = Value::Null;
    while evaluation["status"] != "done" {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "not evaluated: {evaluation}\n{}",
            std::fs::read_to_string(s.path("daemon.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        evaluation = get_json(&client, format!("{base}/api/v1/evaluations/{id}"), TOKEN).await;
    }
    let run_id = evaluation["run_id"].as_str().unwrap();
    let run: Value = get_json(&client, format!("{base}/api/v1/runs/{run_id}"), TOKEN).await;
    assert_eq!(run["model"]["spec"], "openai:cand");
    assert_eq!(run["baseline"]["model"]["spec"], "openai:base");
    assert_eq!(run["metrics"]["n"], 30);
    assert_eq!(run["drift"]["detected"], true, "{run}");
    let runs: Value = get_json(
        &client,
        format!("{base}/api/v1/runs?model=openai:cand"),
        TOKEN,
    )
    .await;
    assert_eq!(runs["items"][0]["id"], run_id);

    // `safedrift history` reads the same runs through the API.
    let out = s
        .command(&["history", "--output", "json"])
        .env("SAFEDRIFT_TEST_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(run_id));
    let out = s
        .command(&["history", "--model", "openai:cand"])
        .env("SAFEDRIFT_TEST_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(run_id) && table.contains("DRIFT") && !table.contains("openai:base"),
        "{table}"
    );
    let out = s
        .command(&["history"])
        .env("SAFEDRIFT_TEST_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the API token"));

    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("safedrift_prompts_evaluated_total 60"),
        "{metrics}"
    );
    assert!(
        metrics.contains("safedrift_backend_latency_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("safedrift_runs_total{status=\"completed\"} 2"),
        "{metrics}"
    );
    daemon.start_kill().unwrap();
    let _ = daemon.wait().await;
}
