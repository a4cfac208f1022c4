//! The `launch` backend end to end through the real binary: a server is
//! started for each checkpoint folder from the command template, the
//! evaluation asks it over its OpenAI-compatible API, and it is stopped
//! after; no server outlives `eval`, a daemon's evaluation, or (after a
//! restart) a daemon killed with SIGKILL. The server launched is
//! `tests/chat_server.py`, a stand-in for vLLM's or llama.cpp's server that
//! answers with its folder's `answer.txt`.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{harmful_rows, kill9, stderr, stop, wait_for, Scratch};
use registry::Harness;
use safedrift::store::Store;

const REFUSE: &str = "I'm sorry, I can't help with that.";
const COMPLY: &str = "Sure, here is exactly how to do it, step by step.";

fn chat_server() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/chat_server.py")
        .display()
        .to_string()
}

/// A scratch directory whose config has the `launcher` backend, and a
/// benchmark of 12 harmful prompts.
fn setup(extra: &str) -> (Scratch, String) {
    let s = Scratch::with_config(&format!(
        r#"
[backends.launcher]
kind = "launch"
command = ["python3", {server:?}, "--port", "{{port}}", "--dir", "{{dir}}"]
startup_timeout = "60s"
stop_timeout = "3s"
{extra}"#,
        server = chat_server(),
    ));
    let rows = harmful_rows(12);
    let bench = s.jsonl("bench.jsonl", &rows);
    (s, format!("jsonl:{}", bench.display()))
}

/// A checkpoint folder answering `answer`.
fn checkpoint(parent: &Path, name: &str, answer: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("answer.txt"), answer).unwrap();
    std::fs::write(dir.join("model.safetensors"), name.as_bytes()).unwrap();
    dir
}

/// The pids of the stand-in servers running for folders under `root`.
fn servers_under(root: &Path) -> Vec<u32> {
    common::processes_with(&["chat_server.py", &root.display().to_string()])
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_launches_a_server_per_checkpoint_and_stops_it() {
    let (s, bench) = setup("");
    let models = s.path("models");
    let aligned = checkpoint(&models, "aligned", REFUSE);
    let drifted = checkpoint(&models, "drifted", COMPLY);
    // A server that ignores SIGTERM is killed after `stop_timeout`.
    std::fs::write(drifted.join("ignore-sigterm"), "").unwrap();
    let out = s
        .run(&[
            "eval",
            "--model",
            &format!("launcher:{}", drifted.display()),
            "--baseline",
            &format!("launcher:{}", aligned.display()),
            "--benchmark",
            &bench,
            "--judge",
            "keyword",
            "--output",
            "json",
            "--fail-on-drift",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let run = common::run_json(&out);
    assert_eq!(run["metrics"]["harmfulness_rate"], 1.0, "{run:#}");
    assert_eq!(run["baseline"]["metrics"]["harmfulness_rate"], 0.0);
    assert_eq!(run["drift"]["detected"], true);
    let log = stderr(&out);
    assert!(
        log.contains("launched a server for the checkpoint"),
        "{log}"
    );
    // `eval` has exited: no server is left, and no record of one.
    assert_eq!(servers_under(&models), Vec::<u32>::new());
    let records: Vec<_> = std::fs::read_dir(s.data_dir().join("launch"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(records.is_empty(), "{records:?}");

    // A server that exits at start: the error names the backend and shows
    // the end of its output; nothing is left running.
    let (s, bench) = setup("");
    let broken = checkpoint(&s.path("models"), "broken", COMPLY);
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("\"{dir}\"]", "\"{dir}\", \"--exit-at-start\"]");
    std::fs::write(s.config(), config).unwrap();
    let out = s
        .run(&[
            "eval",
            "--model",
            &format!("launcher:{}", broken.display()),
            "--benchmark",
            &bench,
            "--judge",
            "keyword",
        ])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert!(log.contains("backend launcher: the server exited"), "{log}");
    assert!(log.contains("cannot load the model"), "{log}");
    assert_eq!(servers_under(&s.path("models")), Vec::<u32>::new());

    // A server that never answers within `startup_timeout`: stopped, and
    // the error says so; a `{gguf}` command on a folder without one is
    // refused before anything starts.
    let (s, bench) = setup("");
    let slow = checkpoint(&s.path("models"), "slow-start", COMPLY);
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("\"{dir}\"]", "\"{dir}\", \"--startup-delay\", \"30\"]")
        .replace("startup_timeout = \"60s\"", "startup_timeout = \"2s\"");
    std::fs::write(s.config(), config).unwrap();
    let eval = |model: String| {
        let (s, bench) = (&s, bench.clone());
        async move {
            s.run(&[
                "eval",
                "--model",
                &model,
                "--benchmark",
                &bench,
                "--judge",
                "keyword",
            ])
            .await
        }
    };
    let out = eval(format!("launcher:{}", slow.display())).await;
    assert_ne!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert!(log.contains("did not answer /v1/models within 2s"), "{log}");
    assert_eq!(servers_under(&s.path("models")), Vec::<u32>::new());
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("\"--dir\", \"{dir}\"", "\"--dir\", \"{gguf}\"");
    std::fs::write(s.config(), config).unwrap();
    let out = eval(format!("launcher:{}", slow.display())).await;
    assert_ne!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert!(
        log.contains("needs {gguf}") && log.contains("no .gguf file"),
        "{log}"
    );
}

/// config/launch.toml as it is, with its command pointed at the stand-in,
/// its folders at this test's, and a poll every second.
fn use_launch_config(h: &Harness, watched: &Path, base: &Path) {
    h.use_config(
        "launch.toml",
        &[
            ("watchers.checkpoints.path", watched.display().to_string()),
            (
                "watchers.checkpoints.baseline",
                format!("launcher:{}", base.display()),
            ),
            ("watchers.checkpoints.schedule", "*/1 * * * * *".into()),
            ("backends.launcher.startup_timeout", "60s".into()),
            ("backends.launcher.stop_timeout", "3s".into()),
        ],
    );
    let text = std::fs::read_to_string(h.s.config()).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    let launcher = doc["backends"]["launcher"].as_table_mut().unwrap();
    assert!(launcher.contains_key("command"), "{text}");
    let command = [
        "python3",
        &chat_server(),
        "--port",
        "{port}",
        "--dir",
        "{dir}",
    ]
    .iter()
    .map(|a| toml::Value::String(a.to_string()))
    .collect();
    launcher.insert("command".into(), toml::Value::Array(command));
    std::fs::write(h.s.config(), toml::to_string(&doc).unwrap()).unwrap();
}

/// A harness with config/launch.toml pointed at a baseline folder under
/// `models` (returned) and a watched folder (returned).
async fn launch_daemon_setup() -> (Harness, PathBuf, PathBuf) {
    let h = Harness::new().await;
    let models = h.s.path("models");
    let base = checkpoint(&models, "base", REFUSE);
    let watched = h.s.path("checkpoints");
    std::fs::create_dir_all(&watched).unwrap();
    use_launch_config(&h, &watched, &base);
    (h, models, watched)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_stops_its_servers_and_reaps_those_a_killed_daemon_left() {
    let (h, models, watched) = launch_daemon_setup().await;

    // A slow checkpoint: the daemon is killed while its server answers.
    let slow = checkpoint(&h.s.path("staging"), "slow", COMPLY);
    std::fs::write(slow.join("delay"), "0.2").unwrap();
    std::fs::write(slow.join("COMPLETE"), "").unwrap();
    std::fs::rename(&slow, watched.join("slow")).unwrap();
    let mut daemon = h.start();
    wait_for(
        "a server for the slow checkpoint",
        Duration::from_secs(90),
        async || !servers_under(&watched).is_empty(),
    )
    .await;
    kill9(&mut daemon).await;
    let left = servers_under(&watched);
    assert_eq!(left.len(), 1, "the killed daemon's server is still up");

    // The restart stops it before evaluating anything, then evaluates the
    // checkpoint on a server of its own, alerts, and stops that one too.
    let mut daemon = h.start();
    h.wait_for(
        "the slow checkpoint to be evaluated and alerted on",
        Duration::from_secs(120),
        async || {
            h.health().await.is_some_and(|v| v["queue"]["done"] == 1) && !h.deliveries().is_empty()
        },
    )
    .await;
    for pid in &left {
        assert!(
            !servers_under(&watched).contains(pid),
            "the leftover server {pid} was not stopped"
        );
    }
    wait_for(
        "every launched server to be stopped",
        Duration::from_secs(20),
        async || servers_under(&models).is_empty() && servers_under(&watched).is_empty(),
    )
    .await;
    assert!(
        !h.messages(
            0,
            "stopped the servers a previous run launched and left behind"
        )
        .is_empty(),
        "no reaping logged"
    );
    stop(&mut daemon).await;
    assert_eq!(
        h.deliveries().len(),
        1,
        "one alert for the drifted checkpoint"
    );

    let store = Store::open(&h.s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let run = runs
        .iter()
        .find(|r| r.model.spec.ends_with(":slow"))
        .unwrap_or_else(|| panic!("no run of the slow checkpoint: {runs:#?}"));
    assert!(run.drift.as_ref().is_some_and(|d| d.detected), "{run:#?}");
    assert!(
        run.backend.starts_with("launch:launcher:"),
        "{}",
        run.backend
    );
}

/// A watcher that routes by format: a safetensors folder to one launch
/// backend, a GGUF folder to another, and a folder of neither fails with
/// its format named; the runs say which backend served them.
#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_routes_each_checkpoint_to_the_backend_for_its_format() {
    let (h, _, watched) = launch_daemon_setup().await;
    // A second launcher for GGUF files, and the routes.
    let text = std::fs::read_to_string(h.s.config()).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    let launcher = doc["backends"]["launcher"].clone();
    doc["backends"]
        .as_table_mut()
        .unwrap()
        .insert("gguf-server".into(), launcher);
    let watcher = doc["watchers"]["checkpoints"].as_table_mut().unwrap();
    watcher.remove("backend");
    let routes: toml::Table = "safetensors = \"launcher\"\ngguf = \"gguf-server\""
        .parse()
        .unwrap();
    watcher.insert("backends".into(), toml::Value::Table(routes));
    std::fs::write(h.s.config(), toml::to_string(&doc).unwrap()).unwrap();

    let staging = h.s.path("staging");
    let st = checkpoint(&staging, "full-sft", COMPLY);
    let gguf = checkpoint(&staging, "quantized", COMPLY);
    std::fs::remove_file(gguf.join("model.safetensors")).unwrap();
    std::fs::write(gguf.join("model.Q4_K_M.gguf"), b"GGUF").unwrap();
    let odd = checkpoint(&staging, "notes-only", COMPLY);
    std::fs::remove_file(odd.join("model.safetensors")).unwrap();
    for dir in [&st, &gguf, &odd] {
        std::fs::write(dir.join("COMPLETE"), "").unwrap();
        std::fs::rename(dir, watched.join(dir.file_name().unwrap())).unwrap();
    }
    let mut daemon = h.start();
    h.wait_for("the daemon to start", Duration::from_secs(60), async || {
        h.health().await.is_some()
    })
    .await;
    h.wait_for(
        "two checkpoints evaluated and one failed",
        Duration::from_secs(120),
        async || {
            let list = h.api("checkpoints?limit=10").await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let status = |m: &str| {
                items
                    .iter()
                    .find(|c| c["model"] == m)
                    .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            };
            status("full-sft").as_deref() == Some("done")
                && status("quantized").as_deref() == Some("done")
                && items
                    .iter()
                    .any(|c| c["model"] == "notes-only" && !c["last_error"].is_null())
        },
    )
    .await;
    let list = h.api("checkpoints?limit=10").await;
    let odd = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "notes-only")
        .unwrap();
    let error = odd["last_error"].as_str().unwrap();
    assert!(
        error.contains("cannot tell the checkpoint's format"),
        "{error}"
    );
    stop(&mut daemon).await;

    let store = Store::open(&h.s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let backend_of = |suffix: &str| {
        runs.iter()
            .find(|r| r.model.spec.ends_with(suffix))
            .unwrap_or_else(|| panic!("no run of {suffix}: {runs:#?}"))
            .backend
            .clone()
    };
    assert!(backend_of(":full-sft").starts_with("launch:launcher:"));
    assert!(backend_of(":quantized").starts_with("launch:gguf-server:"));
    assert_eq!(servers_under(&watched), Vec::<u32>::new());
}
