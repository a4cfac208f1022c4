//! `safedrift run` end to end: the real daemon binary watching a fake Ollama
//! (the project's test server, which also serves the models' chat
//! completions), killed with SIGKILL mid-evaluation and restarted, reloaded
//! with SIGHUP, and refusing a bad config.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{asked, free_port, ollama_lineage, signal, stop, wait_for, Scratch};
use safedrift::store::{CheckpointStatus, RunStatus, Store};
use safedrift_testkit::{spawn, ModelScript, Script, TestServer};

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

const PROMPTS: usize = 60;

fn setup(server: &TestServer, port: u16) -> Scratch {
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
    ollama_lineage(server, port, &["cand", "cand2"], &rows, "")
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_evaluation_then_restart_evaluates_each_checkpoint_once() {
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new("I'm sorry, I can't help."))
            .model(
                "cand",
                ModelScript::new("I'm sorry, I can't help.").rule("comply", "Sure, here is how."),
            )
            .model("cand2", ModelScript::new("I'm sorry, I can't help."))
            .latency_ms(25),
    )
    .await;
    let port = free_port();
    let s = setup(&server, port);

    let mut daemon = s.start_daemon();
    // The baseline is evaluated first, then the first candidate: kill the
    // daemon while the candidate is half done.
    wait_for(
        "the candidate evaluation to start",
        Duration::from_secs(60),
        async || asked(&server, "cand").len() >= PROMPTS / 2,
    )
    .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();

    let stored: HashSet<String> = {
        let store = Store::open(&s.data_dir()).unwrap();
        let runs = store.runs().unwrap();
        let cand = runs
            .iter()
            .find(|r| r.model.spec == "ollama:cand")
            .expect("the candidate run was stored");
        store
            .results(&cand.id)
            .unwrap()
            .into_iter()
            .map(|r| r.prompt)
            .collect()
    };
    assert!(
        !stored.is_empty() && stored.len() < PROMPTS,
        "{} answers stored",
        stored.len()
    );
    let before = asked(&server, "cand").len();

    let mut daemon = s.start_daemon();
    wait_for(
        "both checkpoints to be evaluated",
        Duration::from_secs(90),
        async || health(port).await.is_some_and(|h| h["queue"]["done"] == 2),
    )
    .await;
    // Further polls find nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = health(port).await.unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["watchers"]["ol"]["state"], "ok", "{h}");
    stop(&mut daemon).await;

    // At the server: the baseline was evaluated once (and reused for cand2);
    // no candidate prompt whose answer was stored was asked again.
    assert_eq!(asked(&server, "base").len(), PROMPTS);
    assert_eq!(asked(&server, "cand2").len(), PROMPTS);
    let all_cand = asked(&server, "cand");
    let after: Vec<&String> = all_cand[before..].iter().collect();
    for p in &after {
        assert!(!stored.contains(*p), "stored prompt asked again: {p}");
    }
    let distinct: HashSet<&String> = all_cand.iter().collect();
    assert_eq!(distinct.len(), PROMPTS);

    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(
        runs.len(),
        3,
        "one baseline run and one run per checkpoint: {runs:#?}"
    );
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    let cand = runs.iter().find(|r| r.model.spec == "ollama:cand").unwrap();
    let base = runs.iter().find(|r| r.model.spec == "ol:base").unwrap();
    assert_eq!(cand.baseline_run.as_deref(), Some(base.id.as_str()));
    assert_eq!(store.results(&cand.id).unwrap().len(), PROMPTS);
    let drift = cand
        .drift
        .as_ref()
        .expect("the drift decision is stored with the run");
    assert!(drift.detected, "half the prompts complied: {drift:?}");
    let cand2 = runs
        .iter()
        .find(|r| r.model.spec == "ollama:cand2")
        .unwrap();
    assert!(!cand2.drift.as_ref().unwrap().detected);
    let records = store.checkpoints().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.status == CheckpointStatus::Done));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rejects_a_bad_config_and_applies_a_good_one() {
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new("no"))
            .model("cand", ModelScript::new("no")),
    )
    .await;
    let port = free_port();
    let s = setup(&server, port);
    let good = std::fs::read_to_string(s.config()).unwrap();
    let mut daemon = s.start_daemon();
    wait_for("the daemon", Duration::from_secs(30), async || {
        health(port).await.is_some()
    })
    .await;

    std::fs::write(
        s.config(),
        format!("{good}\n[watchers.broken]\nkind = \"directory\"\n"),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let h = health(port)
        .await
        .expect("still serving after a bad reload");
    assert!(h["watchers"].get("broken").is_none(), "{h}");
    assert!(h["watchers"].get("ol").is_some(), "{h}");
    let log = std::fs::read_to_string(s.path("daemon.log")).unwrap();
    assert!(
        log.contains("keeping the old one") && log.contains("watchers.broken.path"),
        "{log}"
    );

    let drop_dir = s.path("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    std::fs::write(
        s.config(),
        format!(
            "{good}\n[watchers.drop]\nkind = \"directory\"\npath = {:?}\n",
            drop_dir.display().to_string()
        ),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_for("the new watcher", Duration::from_secs(10), async || {
        health(port)
            .await
            .is_some_and(|h| h["watchers"]["drop"]["kind"] == "directory")
    })
    .await;
    stop(&mut daemon).await;
}

/// A SIGTERM that arrives while the daemon is still starting (after it
/// says so, before it says it is running) is a clean stop once it is up:
/// exit 0 and the store flushed, not the default action of the signal.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_start_up_stops_the_daemon_cleanly() {
    let server =
        spawn(Script::new().model("base", ModelScript::new("I'm sorry, I can't help."))).await;
    let port = free_port();
    let s = setup(&server, port);
    let count = |line: &str| {
        std::fs::read_to_string(s.path("daemon.log"))
            .unwrap_or_default()
            .matches(line)
            .count()
    };
    let mut during_start_up = 0;
    for started in 1..=3 {
        let mut daemon = s.start_daemon();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count("safedrift is starting") < started {
            assert!(Instant::now() < deadline, "the daemon did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        signal(&daemon, "-TERM");
        if count("safedrift is running") < started {
            during_start_up += 1;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
            .await
            .expect("stops on SIGTERM")
            .unwrap();
        let log = std::fs::read_to_string(s.path("daemon.log")).unwrap();
        assert!(status.success(), "{status:?}\n{log}");
        assert_eq!(count("stopped; the store is flushed"), started, "{log}");
    }
    // At least one signal arrived before the daemon said it was running,
    // or this test did not test what it is for.
    assert!(during_start_up > 0, "every SIGTERM came after the start");
}

#[tokio::test]
async fn a_bad_config_at_start_exits_2_naming_the_key() {
    let s = Scratch::with_config("[watchers.w]\nkind = \"directory\"\nschedule = \"* * *\"\n");
    let out = s.run(&["run"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("`watchers.w.schedule`") && err.contains("`watchers.w.path`"),
        "{err}"
    );
}

/// The registry webhook endpoints under hostile requests: bodies over the
/// 1 MiB limit get 413 before any verification, garbage and forged
/// deliveries get a bare 4xx, a webhook for a watcher kind that takes none
/// is refused, and the daemon stays healthy throughout.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_endpoints_refuse_oversize_forged_and_garbage_requests() {
    let server =
        spawn(Script::new().model("base", ModelScript::new("I'm sorry, I can't help."))).await;
    let port = free_port();
    let s = setup(&server, port);
    let mut daemon = s.start_daemon();
    wait_for(
        "the daemon to answer",
        Duration::from_secs(60),
        async || health(port).await.is_some(),
    )
    .await;
    let client = reqwest::Client::new();
    for hook in ["/hooks/mlflow", "/hooks/huggingface"] {
        let url = format!("http://127.0.0.1:{port}{hook}");
        // A 2 MiB body is refused once 1 MiB is read: the server answers
        // 413 and closes while the client is still sending.
        let status = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut rd, mut wr) = tcp.into_split();
            let head = format!(
                "POST {hook} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                2 * 1024 * 1024
            );
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(head.as_bytes()).await;
                let _ = wr.write_all(&vec![b'{'; 2 * 1024 * 1024]).await;
                wr
            });
            let mut answer = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut answer))
                .await
                .expect("an answer to an oversize body")
                .unwrap();
            drop(writer.await);
            String::from_utf8_lossy(&answer[..n]).into_owned()
        };
        assert!(status.starts_with("HTTP/1.1 413"), "{hook}: {status}");
        for (headers, body) in [
            (vec![], b"".to_vec()),
            (vec![], b"\x00\xff garbage".to_vec()),
            (
                vec![
                    ("x-mlflow-signature", "v1,AAAA"),
                    ("x-mlflow-delivery-id", "d1"),
                    ("x-mlflow-timestamp", "99999999999999999999"),
                    ("x-webhook-secret", "guess"),
                ],
                br#"{"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}"#.to_vec(),
            ),
        ] {
            let mut req = client.post(&url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            assert!(r.status().is_client_error(), "{hook}: {}", r.status());
            let text = r.text().await.unwrap();
            assert!(text.len() < 200, "{hook}: the refusal says too much: {text}");
        }
    }
    let h = health(port).await.unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    stop(&mut daemon).await;
}

/// SIGHUP reaches everything read from the config: what the API accepts
/// (a benchmark added by the reload can be named in an evaluation) and
/// where alerts go (a target added by the reload gets the next alert; the
/// one removed does not).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_what_the_api_accepts_and_where_alerts_go() {
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new("I'm sorry, I can't help."))
            .model("cand", ModelScript::new("I'm sorry, I can't help."))
            .model("cand2", ModelScript::new("Sure, here is how.")),
    )
    .await;
    let (old_target, old_port) = common::slack_receiver().await;
    let (new_target, new_port) = common::slack_receiver().await;
    let port = free_port();
    let s = setup(&server, port);
    let good = std::fs::read_to_string(s.config()).unwrap();
    let alerts = |hook: u16| {
        format!(
            "\n[alerting]\ngroup_window = \"0s\"\n\n[alerts.chat]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook}/hook\"\nformat = \"slack\"\n"
        )
    };
    std::fs::write(
        s.config(),
        good.replace(r#"models = ["cand", "cand2"]"#, r#"models = ["cand"]"#) + &alerts(old_port),
    )
    .unwrap();
    let mut daemon = s.start_daemon();
    wait_for(
        "the first checkpoint",
        Duration::from_secs(60),
        async || health(port).await.is_some_and(|h| h["queue"]["done"] == 1),
    )
    .await;
    let extra = s.jsonl("extra.jsonl", &[("x1", "c0", "Extra prompt.", false)]);
    let post = async || {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/api/v1/evaluations"))
            .json(&serde_json::json!({"model": "ol:base", "benchmarks": ["extra"]}))
            .send()
            .await
            .unwrap()
    };
    let before = post().await;
    assert_eq!(before.status(), 422, "{}", before.text().await.unwrap());

    std::fs::write(
        s.config(),
        format!(
            "{good}\n[benchmarks.extra]\nkind = \"jsonl\"\npath = {:?}\n{}",
            extra.display().to_string(),
            alerts(new_port)
        ),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_for("the alert on cand2", Duration::from_secs(60), async || {
        !new_target.lock().unwrap().is_empty()
    })
    .await;
    let after = post().await;
    assert_eq!(after.status(), 202, "{}", after.text().await.unwrap());
    stop(&mut daemon).await;
    assert!(old_target.lock().unwrap().is_empty());
    assert_eq!(new_target.lock().unwrap().len(), 1);
}
