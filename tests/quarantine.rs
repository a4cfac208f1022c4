//! A bad record costs that record only: the real daemon evaluates and alerts,
//! then garbage is written into every tree of its store; restarted, it reads
//! past the garbage (moving each bad record it meets to the quarantine,
//! shown by `/healthz`, `/metrics` and `GET /api/v1/quarantine`), evaluates
//! the next checkpoint against the stored baseline run and alerts on it, and
//! every API listing still answers.

mod common;

use std::time::Duration;

use common::{free_port, slack_receiver, stop, wait_for_daemon as wait_for, Scratch};
use safedrift::store::{RunStatus, Store};
use safedrift_testkit::{spawn, ModelScript, Script};

const PROMPTS: usize = 12;

async fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn config(
    s: &Scratch,
    tk: std::net::SocketAddr,
    port: u16,
    hook: u16,
    models: &[&str],
    bench: &str,
) -> String {
    let data = s.data_dir();
    let models = models
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
data_dir = "{data}"

[api]
listen = "127.0.0.1:{port}"

[eval]
max_new_tokens = 32

[benchmarks.bench]
kind = "jsonl"
path = "{bench}"

[backends.ol]
kind = "openai"
base_url = "http://{tk}/v1"

[watchers.ol]
kind = "ollama"
base_url = "http://{tk}"
models = [{models}]
schedule = "*/1 * * * * *"
baseline = "ol:base"
benchmarks = ["bench"]
judge = "keyword"

[alerting]
group_window = "0s"

[alerts.chat]
kind = "webhook"
url = "http://127.0.0.1:{hook}/hook"
format = "slack"
"#,
        data = data.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_every_tree_costs_only_itself() {
    let refuse = "I'm sorry, I can't help with that.";
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new(refuse))
            .model("cand", ModelScript::new("Sure, here is how."))
            .model("cand2", ModelScript::new("Sure, here is exactly how.")),
    )
    .await;
    let (got, hook) = slack_receiver().await;
    let port = free_port();
    let s = Scratch::new();
    let rows: Vec<(String, String, String, bool)> = (0..PROMPTS)
        .map(|i| {
            (
                format!("p{i}"),
                format!("c{}", i % 2),
                format!("Harmful request {i}."),
                false,
            )
        })
        .collect();
    let bench = s.jsonl("bench.jsonl", &rows);
    let bench = bench.to_str().unwrap();
    std::fs::write(
        s.config(),
        config(&s, server.addr, port, hook, &["cand"], bench),
    )
    .unwrap();

    // 1. One drifted checkpoint, evaluated and alerted on.
    let mut daemon = s.start_daemon();
    wait_for(&s, "the first alert", Duration::from_secs(90), async || {
        !got.lock().unwrap().is_empty()
    })
    .await;
    stop(&mut daemon).await;

    // 2. Garbage into every tree of the store: new keys, and the first
    //    queue record overwritten in place.
    let (cand_run, trees) = {
        let store = Store::open(&s.data_dir()).unwrap();
        let cand = store
            .runs()
            .unwrap()
            .into_iter()
            .find(|r| r.model.spec == "ollama:cand")
            .expect("the candidate's run");
        let trees = store.tree_names();
        for name in &trees {
            let tree = store.tree(name).unwrap();
            let key: Vec<u8> = match name.as_str() {
                // A result of the stored run, at an index after its own.
                "results" => {
                    let mut k = cand.id.as_bytes().to_vec();
                    k.push(0);
                    k.extend_from_slice(&(PROMPTS as u32 + 5).to_be_bytes());
                    k
                }
                // Sorts before the daemon's runs and alerts ids.
                "runs" => b"r_0000garbage".to_vec(),
                "alerts" => b"a_0000garbage".to_vec(),
                _ => b"\x00garbage".to_vec(),
            };
            tree.insert(key, &b"\xff{\"type\":\"target\",\"type\": truncated"[..])
                .unwrap();
        }
        // A run's stored totals that no longer decode.
        store
            .tree("run_totals")
            .unwrap()
            .insert(cand.id.as_bytes(), &b"{\"done\": \"x\"}"[..])
            .unwrap();
        store.tree("meta").unwrap().flush().unwrap();
        (cand.id, trees)
    };
    for must in ["checkpoints", "runs", "results", "alerts", "run_totals"] {
        assert!(trees.iter().any(|t| t == must), "no tree {must}: {trees:?}");
    }

    // 3. Restarted with a second drifted checkpoint: it is evaluated
    //    against the stored baseline run and alerted on.
    std::fs::write(
        s.config(),
        config(&s, server.addr, port, hook, &["cand", "cand2"], bench),
    )
    .unwrap();
    let mut daemon = s.start_daemon();
    wait_for(
        &s,
        "the second checkpoint's alert",
        Duration::from_secs(90),
        async || got.lock().unwrap().len() >= 2,
    )
    .await;

    // Every listing answers; the garbage is listed in the quarantine.
    for path in [
        "/api/v1/runs",
        "/api/v1/models",
        "/api/v1/checkpoints",
        "/api/v1/alerts",
        &format!("/api/v1/runs/{cand_run}"),
        &format!("/api/v1/runs/{cand_run}/results"),
    ] {
        let (status, body) = get(port, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, runs) = get(port, "/api/v1/runs").await;
    let specs: Vec<&str> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"]["spec"].as_str().unwrap())
        .collect();
    assert!(specs.contains(&"ollama:cand2"), "{runs}");
    let (_, cand) = get(port, &format!("/api/v1/runs/{cand_run}")).await;
    assert_eq!(cand["metrics"]["n"], PROMPTS, "{cand}");
    let (_, quarantine) = get(port, "/api/v1/quarantine").await;
    let moved: Vec<&str> = quarantine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["tree"].as_str().unwrap())
        .collect();
    for tree in ["checkpoints", "runs", "results", "alerts", "run_totals"] {
        assert!(
            moved.contains(&tree),
            "{tree} not quarantined: {quarantine}"
        );
    }
    let (_, health) = get(port, "/healthz").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["quarantined"].as_u64().unwrap() >= 5, "{health}");
    assert_eq!(health["queue"]["done"], 2, "{health}");
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        resp.lines()
            .any(|l| l.starts_with("safedrift_store_quarantined_records ") && !l.ends_with(" 0")),
        "{resp}"
    );
    assert!(
        resp.contains("safedrift_store_quarantined_total{tree=\"checkpoints\"} 1"),
        "{resp}"
    );
    stop(&mut daemon).await;

    // Logged once per record, however often the queue was read.
    let log = s.daemon_log();
    let logged = log
        .lines()
        .filter(|l| l.contains("moved it to the quarantine") && l.contains("checkpoints"))
        .count();
    assert_eq!(logged, 1, "{log}");
    // One alert per drifted checkpoint; the stored runs are intact.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(got.lock().unwrap().len(), 2);
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    assert_eq!(store.results(&cand_run).unwrap().len(), PROMPTS);
}
