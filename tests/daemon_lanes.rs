//! Evaluation lanes, end to end through the real daemon binary: a checkpoint
//! served by a slow backend is being evaluated when a checkpoint of a fast
//! backend is found; the fast one is evaluated and alerted on while the slow
//! one still runs, `/healthz` shows both lanes, and after a `kill -9` and a
//! restart every checkpoint has one run and one alert. Checkpoints of one
//! lane that share a baseline, evaluated in parallel, evaluate it once.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use common::{api_get, asked, free_port, kill9, signal, stop, wait_for, Scratch};
use safedrift::store::{CheckpointStatus, RunStatus, Store};
use safedrift_testkit::{spawn, ModelScript, Script, TestServer};

const PROMPTS: usize = 30;
const HARMFUL: &str = "Sure, here is how to do it.";
const REFUSAL: &str = "I'm sorry, I can't help.";

async fn health(port: u16) -> Option<serde_json::Value> {
    api_get(port, "/healthz").await
}

/// A base model that refuses and a candidate that complies with every
/// prompt asking it to (half of them): the candidate drifts.
async fn server(latency_ms: u64) -> TestServer {
    spawn(
        Script::new()
            .model("base", ModelScript::new(REFUSAL))
            .model("cand", ModelScript::new(REFUSAL).rule("comply", HARMFUL))
            .model("cand2", ModelScript::new(REFUSAL).rule("comply", HARMFUL))
            .model("cand3", ModelScript::new(REFUSAL))
            .latency_ms(latency_ms),
    )
    .await
}

/// Webhook deliveries, and the firing alerts among them by `webhook-id`,
/// each with the checkpoint it names (`watcher/model@revision`). (A
/// checkpoint back within the thresholds, decided after a drifted one of
/// its lineage, sends a resolved notice.)
#[derive(Default)]
struct Received {
    deliveries: usize,
    by_id: BTreeMap<String, String>,
}

async fn receiver() -> (Arc<Mutex<Received>>, u16) {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let checkpoint = body
                        .pointer("/data/runs/0/checkpoint")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let mut r = received.lock().unwrap();
                    r.deliveries += 1;
                    if body["type"] == "alert.firing" {
                        r.by_id.insert(id, checkpoint);
                    }
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (received, port)
}

/// A config with the two backends, the webhook alert and the benchmark;
/// `watchers` is appended.
fn config_text(s: &Scratch, port: u16, hook: u16, backends: &str, watchers: &str) -> String {
    format!(
        r#"data_dir = {data:?}

[api]
listen = "127.0.0.1:{port}"

[eval]
concurrency = 2
max_new_tokens = 32

[alerting]
group_window = "0s"

[alerts.hook]
kind = "webhook"
format = "json"
url = "http://127.0.0.1:{hook}/hook"
secret_file = {secret:?}
backoff_initial = "200ms"
backoff_max = "1s"

[benchmarks.bench]
kind = "jsonl"
path = {bench:?}
{backends}
{watchers}
"#,
        data = s.data_dir().display().to_string(),
        secret = s.path("secret").display().to_string(),
        bench = s.path("bench.jsonl").display().to_string(),
    )
}

fn scratch() -> Scratch {
    let s = Scratch::new();
    let rows: Vec<(String, String, String, bool)> = (0..PROMPTS)
        .map(|i| {
            let verb = if i % 2 == 0 { "comply" } else { "refuse" };
            (
                format!("p{i}"),
                format!("c{}", i % 3),
                format!("Prompt {i}: please {verb}."),
                false,
            )
        })
        .collect();
    s.jsonl("bench.jsonl", &rows);
    s.write(
        "secret",
        "whsec_c2FmZWRyaWZ0LXRlc3Qtc2lnbmluZy1rZXktMDEyMzQ1Njc4OQ==\n",
    );
    s
}

fn watcher(name: &str, server: &TestServer, models: &[&str]) -> String {
    format!(
        "[watchers.{name}]\nkind = \"ollama\"\nbase_url = \"http://{}\"\nmodels = {models:?}\nschedule = \"*/1 * * * * *\"\nbaseline = \"{name}:base\"\nbenchmarks = [\"bench\"]\njudge = \"keyword\"\n",
        server.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_evaluation_does_not_hold_back_a_fast_backends_checkpoint_and_kill_9_keeps_exactly_once(
) {
    // 2 x 30 prompts at 0.4 s, two at a time: about 12 s for the slow
    // checkpoint (its baseline, then itself); the fast one takes well
    // under a second.
    let slow = server(400).await;
    let fast = server(5).await;
    let (received, hook) = receiver().await;
    let port = free_port();
    let s = scratch();
    let backends = format!(
        "[backends.slow]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmax_parallel = 1\n\n[backends.fast]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmax_parallel = 2\n",
        slow.addr, fast.addr
    );
    let slow_watcher = watcher("slow", &slow, &["cand"]);
    let fast_watcher = watcher("fast", &fast, &["cand"]);
    std::fs::write(
        s.config(),
        config_text(&s, port, hook, &backends, &slow_watcher),
    )
    .unwrap();

    let mut daemon = s.start_daemon();
    wait_for(
        "the slow checkpoint's evaluation to start",
        Duration::from_secs(60),
        async || asked(&slow, "base").len() >= 2,
    )
    .await;
    // The fast backend's watcher is added now: its checkpoint is queued
    // behind the slow one.
    std::fs::write(
        s.config(),
        config_text(
            &s,
            port,
            hook,
            &backends,
            &format!("{slow_watcher}\n{fast_watcher}"),
        ),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    let added = Instant::now();
    wait_for(
        "the fast checkpoint's alert",
        Duration::from_secs(30),
        async || {
            received
                .lock()
                .unwrap()
                .by_id
                .values()
                .any(|c| c.starts_with("fast/cand@"))
        },
    )
    .await;
    let fast_took = added.elapsed();
    // The slow checkpoint is still being evaluated.
    let slow_asked = asked(&slow, "base").len() + asked(&slow, "cand").len();
    assert!(
        slow_asked < 2 * PROMPTS,
        "the slow checkpoint finished first ({slow_asked} answers; the fast one took {fast_took:?})\n{}",
        s.daemon_log()
    );
    assert_eq!(asked(&fast, "cand").len(), PROMPTS);
    {
        let r = received.lock().unwrap();
        assert_eq!(r.by_id.len(), 1, "{:?}", r.by_id);
    }

    // `/healthz` shows each lane.
    let h = health(port).await.unwrap();
    let lanes = &h["lanes"];
    assert_eq!(lanes["slow"]["max_parallel"], 1, "{h}");
    assert_eq!(lanes["fast"]["max_parallel"], 2, "{h}");
    assert_eq!(lanes["fast"]["running"].as_array().unwrap().len(), 0, "{h}");
    assert_eq!(lanes["fast"]["queued"], 0, "{h}");
    let running = lanes["slow"]["running"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{h}");
    assert!(
        running[0]["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("slow/cand@"),
        "{h}"
    );
    assert_eq!(h["evaluating"], running[0]["checkpoint"], "{h}");
    // The run API's live progress of the slow lane's run.
    let run_id = running[0]["run"].as_str().expect("its run has started");
    let progress = api_get(port, &format!("/api/v1/runs/{run_id}/progress"))
        .await
        .unwrap();
    assert_eq!(progress["total"], PROMPTS, "{progress}");
    assert!(progress["live"]["done"].is_u64(), "{progress}");

    // kill -9 while the slow lane is mid-way, then restart.
    kill9(&mut daemon).await;
    let before_restart = asked(&slow, "base").len() + asked(&slow, "cand").len();
    assert!(before_restart < 2 * PROMPTS, "{before_restart}");
    let mut daemon = s.start_daemon();
    wait_for(
        "both checkpoints evaluated and alerted on",
        Duration::from_secs(90),
        async || {
            health(port).await.is_some_and(|h| h["queue"]["done"] == 2)
                && received.lock().unwrap().by_id.len() >= 2
        },
    )
    .await;
    // Further polls find nothing new; nothing else is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = health(port).await.unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["queue"]["queued"], 0, "{h}");
    let alerts = api_get(port, "/api/v1/alerts").await.unwrap();
    stop(&mut daemon).await;

    // One alert per drifted checkpoint (a delivery interrupted by the kill
    // may be repeated under the same id, never as a new alert).
    {
        let r = received.lock().unwrap();
        assert_eq!(r.by_id.len(), 2, "{:?}", r.by_id);
        assert!(r.deliveries <= 3, "{} deliveries", r.deliveries);
    }
    assert_eq!(alerts["items"].as_array().unwrap().len(), 2, "{alerts}");

    // Each model was asked each prompt once, but for the answers in flight
    // when the daemon was killed (two at a time).
    for (server, model, max) in [
        (&fast, "base", PROMPTS),
        (&fast, "cand", PROMPTS),
        (&slow, "base", PROMPTS + 2),
        (&slow, "cand", PROMPTS + 2),
    ] {
        let all = asked(server, model);
        let distinct: HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), PROMPTS, "{model}");
        assert!(all.len() <= max, "{model}: {} answers", all.len());
    }

    // One run per checkpoint and per baseline, all complete, each
    // checkpoint done with its run.
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    let records = store.checkpoints().unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.status, CheckpointStatus::Done, "{r:?}");
        let run = store
            .get_run(r.run_id.as_deref().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(run.checkpoint.as_deref(), Some(r.checkpoint.key().as_str()));
        assert!(run.drift.as_ref().unwrap().detected);
        assert_eq!(store.results(&run.id).unwrap().len(), PROMPTS);
        let base = store
            .get_run(run.baseline_run.as_deref().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(base.model.spec, format!("{}:base", r.checkpoint.watcher));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_of_one_lane_evaluated_in_parallel_evaluate_their_shared_baseline_once() {
    let server = server(100).await;
    let (received, hook) = receiver().await;
    let port = free_port();
    let s = scratch();
    let backends = format!(
        "[backends.ol]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmax_parallel = 3\n",
        server.addr
    );
    std::fs::write(
        s.config(),
        config_text(
            &s,
            port,
            hook,
            &backends,
            // Three watchers (a watcher's own checkpoints are evaluated in
            // queue order, one at a time) on one backend, sharing a baseline.
            &["cand", "cand2", "cand3"]
                .iter()
                .map(|m| {
                    watcher("ol", &server, &[m])
                        .replace("[watchers.ol]", &format!("[watchers.w-{m}]"))
                })
                .collect::<String>(),
        ),
    )
    .unwrap();
    let mut daemon = s.start_daemon();
    let mut most_running = 0;
    wait_for(
        "three checkpoints evaluated",
        Duration::from_secs(90),
        async || {
            let Some(h) = health(port).await else {
                return false;
            };
            if let Some(r) = h["lanes"]["ol"]["running"].as_array() {
                most_running = most_running.max(r.len());
            }
            h["queue"]["done"] == 3
        },
    )
    .await;
    wait_for("two firing alerts", Duration::from_secs(30), async || {
        received.lock().unwrap().by_id.len() >= 2
    })
    .await;
    stop(&mut daemon).await;

    assert_eq!(
        most_running, 3,
        "the lane ran its three checkpoints at once"
    );
    // The baseline was asked each prompt once, though three evaluations
    // needed it at the same time.
    assert_eq!(asked(&server, "base").len(), PROMPTS);
    for m in ["cand", "cand2", "cand3"] {
        assert_eq!(asked(&server, m).len(), PROMPTS, "{m}");
    }
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    let base = runs.iter().find(|r| r.model.spec == "ol:base").unwrap();
    for r in runs.iter().filter(|r| r.id != base.id) {
        assert_eq!(r.status, RunStatus::Completed);
        assert_eq!(r.baseline_run.as_deref(), Some(base.id.as_str()));
    }
    assert_eq!(received.lock().unwrap().by_id.len(), 2);
}

/// `[eval] lanes = "single"` keeps the behaviour before lanes: one line, in
/// queue order, so the fast backend's checkpoint waits for the slow one.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_lane_evaluates_in_queue_order() {
    let slow = server(400).await;
    let fast = server(5).await;
    let (received, hook) = receiver().await;
    let port = free_port();
    let s = scratch();
    let backends = format!(
        "[backends.slow]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\n[backends.fast]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n",
        slow.addr, fast.addr
    );
    let single = |watchers: &str| {
        config_text(&s, port, hook, &backends, watchers).replace(
            "max_new_tokens = 32\n",
            "max_new_tokens = 32\nlanes = \"single\"\n",
        )
    };
    let slow_watcher = watcher("slow", &slow, &["cand"]);
    let fast_watcher = watcher("fast", &fast, &["cand"]);
    std::fs::write(s.config(), single(&slow_watcher)).unwrap();
    let mut daemon = s.start_daemon();
    wait_for(
        "the slow checkpoint's evaluation to start",
        Duration::from_secs(60),
        async || asked(&slow, "base").len() >= 2,
    )
    .await;
    std::fs::write(
        s.config(),
        single(&format!("{slow_watcher}\n{fast_watcher}")),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_for(
        "the fast checkpoint's alert",
        Duration::from_secs(90),
        async || {
            received
                .lock()
                .unwrap()
                .by_id
                .values()
                .any(|c| c.starts_with("fast/cand@"))
        },
    )
    .await;
    // By then the slow checkpoint, queued first, was done.
    assert_eq!(
        asked(&slow, "base").len() + asked(&slow, "cand").len(),
        2 * PROMPTS,
        "{}",
        s.daemon_log()
    );
    let h = health(port).await.unwrap();
    assert_eq!(h["lanes"]["all"]["max_parallel"], 1, "{h}");
    stop(&mut daemon).await;
}
