//! `safedrift run` end to end for the directory, Hugging Face, OpenAI
//! fine-tuning and Ollama watchers, each started from its documented example
//! config (`config/<kind>.toml`, only URLs, ports and paths pointed at this
//! test's servers and files): the real binary finds the drifted checkpoint
//! in a server that speaks the registry's real API, evaluates it once
//! against its baseline, stores the runs, and sends one signed webhook
//! alert; after a `kill -9` and a restart nothing is evaluated, downloaded
//! or sent again. Everything is read back through the API
//! (`/api/v1/checkpoints`, `/api/v1/runs`, `/api/v1/alerts`).
//! The MLflow watcher has its own file (tests/daemon_mlflow.rs), against a
//! real MLflow server.
//!
//! The servers: the Hub and OpenAI's fine-tuning API cannot run in a test,
//! so `safedrift_testkit::hub` and `safedrift_testkit::openai_finetunes`
//! speak their wire formats (after the Hub's and OpenAI's API docs and their
//! Python clients' sources). Ollama is not installable from the package
//! registries this project builds with, so the testkit's chat server stands
//! in for it: it answers `/api/tags` in Ollama's shape (name, model,
//! modified_at, size, 64-hex digest, details) and `/v1/chat/completions` as
//! Ollama's OpenAI-compatible API does.
//! The models: local checkpoints are tiny ONNX decoders whose weights are set
//! to answer every prompt with "I can't" (aligned) or "Sure!" (drifted)
//! (`tools/make_tiny_model.py --reply`); API models are the testkit's demo
//! script, whose "aligned" model refuses harmful prompts and "drifted" one
//! complies with many.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::copy_dir;
use registry::{
    aligned_model, drifted_model, found_evaluated_once_alerted_once_across_kill_9, Expect, Harness,
};
use safedrift_testkit::hub::{FakeHub, HubRepo};
use safedrift_testkit::openai_finetunes::{self, Jobs};
use safedrift_testkit::{demo_script, spawn, spawn_with_routes, ModelScript, Script, TestServer};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The registries
// ---------------------------------------------------------------------------

/// The directory watcher: a training job drops the drifted checkpoint into
/// the watched folder, marker last.
#[tokio::test(flavor = "multi_thread")]
async fn directory_checkpoint_is_evaluated_once_and_alerts_once_across_kill_9() {
    let h = Harness::new().await;
    let drop_dir = h.s.path("checkpoints");
    std::fs::create_dir(&drop_dir).unwrap();
    let base = h.s.path("base-instruct");
    copy_dir(&aligned_model(), &base);
    h.use_config(
        "directory.toml",
        &[
            ("watchers.drop.path", drop_dir.display().to_string()),
            ("watchers.drop.baseline", format!("onnx:{}", base.display())),
        ],
    );
    let checkpoint = drop_dir.join("support-bot-sft");
    copy_dir(&drifted_model(), &checkpoint);
    std::fs::write(checkpoint.join("COMPLETE"), "").unwrap();
    // A folder still being written (no marker) is not a checkpoint yet.
    copy_dir(&drifted_model(), &drop_dir.join("still-training"));

    // The revision is a digest of the folder's files.
    let expect = Expect {
        watcher: "drop",
        checkpoints: vec!["drop/support-bot-sft@".into()],
        drifted: "drop/support-bot-sft@".into(),
        drifted_spec: "directory:support-bot-sft".into(),
        baseline_spec: format!("onnx:{}", base.display()),
        runs: 2,
    };
    found_evaluated_once_alerted_once_across_kill_9(&h, &expect, || 0).await;
}

/// A checkpoint published with its base's files unchanged (the same bytes
/// under another name and path) is not evaluated again: its run copies the
/// baseline run's answers and verdicts, says which run it copied, and shows
/// no drift. A drifted checkpoint dropped next is evaluated as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_with_its_bases_files_reuses_the_bases_run() {
    let h = Harness::new().await;
    let drop_dir = h.s.path("checkpoints");
    std::fs::create_dir(&drop_dir).unwrap();
    let base = h.s.path("base-instruct");
    copy_dir(&aligned_model(), &base);
    h.use_config(
        "directory.toml",
        &[
            ("watchers.drop.path", drop_dir.display().to_string()),
            ("watchers.drop.baseline", format!("onnx:{}", base.display())),
        ],
    );
    let same = drop_dir.join("assistant-v1");
    copy_dir(&aligned_model(), &same);
    std::fs::write(same.join("COMPLETE"), "").unwrap();
    let mut daemon = h.start();
    let done = async |n: usize| {
        h.health()
            .await
            .is_some_and(|health| health["queue"]["done"] == n && health["queue"]["running"] == 0)
    };
    h.wait_for(
        "the copy to be evaluated",
        Duration::from_secs(120),
        async || done(1).await,
    )
    .await;
    let drifted = drop_dir.join("assistant-v2");
    copy_dir(&drifted_model(), &drifted);
    std::fs::write(drifted.join("COMPLETE"), "").unwrap();
    h.wait_for(
        "the drifted one to be evaluated",
        Duration::from_secs(120),
        async || done(2).await,
    )
    .await;

    let runs = h.api("runs?limit=100").await["items"]
        .as_array()
        .cloned()
        .unwrap();
    let run_of = |spec: &str| {
        runs.iter()
            .find(|r| r["model"]["spec"] == spec)
            .unwrap_or_else(|| panic!("no run of {spec}: {runs:#?}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let base_id = run_of(&format!("onnx:{}", base.display()));
    let copy = h
        .api(&format!("runs/{}", run_of("directory:assistant-v1")))
        .await;
    let original = h.api(&format!("runs/{base_id}")).await;
    assert_eq!(copy["copied_from"], base_id.as_str(), "{copy:#}");
    assert_eq!(copy["metrics"], original["metrics"]);
    assert_eq!(copy["drift"]["detected"], false, "{copy:#}");
    let copied = h.messages(
        0,
        "the model's files are the same as an evaluated model's: reusing its answers",
    );
    assert_eq!(copied.len(), 1, "{}", h.s.daemon_log());
    // The drifted checkpoint's files differ: evaluated, and it drifted.
    let v2 = h
        .api(&format!("runs/{}", run_of("directory:assistant-v2")))
        .await;
    assert!(v2["copied_from"].is_null(), "{v2:#}");
    assert_eq!(v2["drift"]["detected"], true, "{v2:#}");
    daemon.kill().await.unwrap();
}

/// The Hugging Face watcher: acme's fine-tune of an upstream model, whose
/// model card names its base model; both are ONNX exports in the
/// transformers.js layout (the graph in onnx/, configs at the root),
/// downloaded through the Hub's 302 to its CDN and checked against their
/// LFS sha256.
#[tokio::test(flavor = "multi_thread")]
async fn huggingface_checkpoint_is_evaluated_once_and_alerts_once_across_kill_9() {
    let h = Harness::new().await;
    let token = "hf_testTokenForTheFakeHub";
    let export = |id: &str, model: &Path| {
        HubRepo::new(id)
            .files_from(model, "", |f| f == "model.onnx")
            .files_from(model, "onnx", |f| f != "model.onnx")
            .file(
                "README.md",
                format!("---\nlicense: apache-2.0\n---\n# {id}\n"),
            )
    };
    let sft = export("acme/support-bot-sft", &drifted_model())
        .base_model("upstream/chat-base")
        // PyTorch weights next to the export: never downloaded.
        .file("model.safetensors", vec![7u8; 4096]);
    let base = export("upstream/chat-base", &aligned_model());
    // An acme repo without an ONNX export is not a checkpoint.
    let pytorch_only = HubRepo::new("acme/pytorch-only")
        .base_model("upstream/chat-base")
        .file("config.json", "{}")
        .file("model.safetensors", vec![1u8; 1024]);
    let hub = FakeHub::start(vec![sft, base, pytorch_only], Some(token), 1).await;
    h.s.write("hf-token", format!("{token}\n"));
    h.s.write("hf-webhook-secret", "hook-secret\n");
    h.use_config(
        "huggingface.toml",
        &[
            ("watchers.acme-hf.endpoint", hub.endpoint.clone()),
            ("watchers.acme-hf.token_file", h.path("hf-token")),
            (
                "watchers.acme-hf.webhook_secret_file",
                h.path("hf-webhook-secret"),
            ),
        ],
    );
    let sha = hub.sha("acme/support-bot-sft");
    let key = format!("acme-hf/acme/support-bot-sft@{sha}");
    let expect = Expect {
        watcher: "acme-hf",
        checkpoints: vec![key.clone()],
        drifted: key,
        drifted_spec: "huggingface:acme/support-bot-sft".into(),
        baseline_spec: "huggingface:upstream/chat-base".into(),
        runs: 2,
    };
    let downloads = || {
        hub.requests()
            .iter()
            .filter(|r| {
                r.server == "cdn" || r.uri.contains("/resolve/") || r.uri.contains("/tree/")
            })
            .count()
    };
    found_evaluated_once_alerted_once_across_kill_9(&h, &expect, downloads).await;

    let seen = hub.requests();
    // The listing was paged (one repo a page: acme has two) and followed
    // to its end.
    assert!(
        seen.iter()
            .any(|r| r.uri.starts_with("/api/models?") && r.uri.contains("cursor=1")),
        "{seen:#?}"
    );
    // Both exports' graphs came from the CDN, without the token; the Hub
    // got it on every request.
    let cdn: Vec<_> = seen.iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 2, "{cdn:#?}");
    assert!(cdn.iter().all(|r| r.authorization.is_none()), "{cdn:#?}");
    assert!(seen
        .iter()
        .filter(|r| r.server == "hub")
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {token}"))));
    assert!(
        !seen.iter().any(|r| r.uri.contains("model.safetensors")),
        "downloaded PyTorch weights"
    );
}

/// The OpenAI fine-tuning watcher: a page of jobs in every other state, then
/// on the next page (`after=`) the succeeded job whose fine-tuned model
/// "drifted" was trained from "aligned", both served by the same API.
#[tokio::test(flavor = "multi_thread")]
async fn openai_finetune_is_evaluated_once_and_alerts_once_across_kill_9() {
    let h = Harness::new().await;
    let key = "sk-proj-testKeyForTheFakeApi0123456789";
    // Newest first, as the API lists them: 100 jobs that are not (yet)
    // checkpoints fill the first page.
    let mut jobs: Vec<Value> = (0..100)
        .map(|i| {
            let status = [
                "running",
                "queued",
                "validating_files",
                "failed",
                "cancelled",
            ][i % 5];
            openai_finetunes::job(&format!("ftjob-newer{i:03}"), "aligned", status, None)
        })
        .collect();
    jobs.push(openai_finetunes::job(
        "ftjob-abc123",
        "aligned",
        "succeeded",
        Some("drifted"),
    ));
    jobs.push(openai_finetunes::job(
        "ftjob-older",
        "aligned",
        "failed",
        None,
    ));
    let api = Jobs::new(jobs, Some(key));
    let server = spawn_with_routes(
        demo_script().api_key(key),
        "127.0.0.1:0".parse().unwrap(),
        api.router(),
    )
    .await
    .unwrap();
    h.s.write("openai-api-key", format!("{key}\n"));
    h.use_config(
        "openai-finetunes.toml",
        &[
            ("watchers.finetunes.base_url", server.base_url()),
            ("watchers.finetunes.api_key_file", h.path("openai-api-key")),
        ],
    );
    let expect = Expect {
        watcher: "finetunes",
        checkpoints: vec!["finetunes/drifted@ftjob-abc123".into()],
        drifted: "finetunes/drifted@ftjob-abc123".into(),
        drifted_spec: "openai-finetunes:drifted".into(),
        baseline_spec: "openai:aligned".into(),
        runs: 2,
    };
    let chats = || server.log().len();
    found_evaluated_once_alerted_once_across_kill_9(&h, &expect, chats).await;

    // Every listing went through both pages.
    let queries = api.list_queries();
    assert!(
        queries
            .iter()
            .any(|q| q.get("after").map(String::as_str) == Some("ftjob-newer099")),
        "{queries:#?}"
    );
    // Each model answered each prompt once, every request with the key.
    let log = server.log();
    for model in ["aligned", "drifted"] {
        let asked: Vec<_> = log.iter().filter(|r| r.model == model).collect();
        let distinct: BTreeSet<&str> = asked.iter().map(|r| r.last_user.as_str()).collect();
        assert_eq!(asked.len(), distinct.len(), "{model} asked twice");
        assert!(asked.iter().all(|r| r.status == 200), "{model}");
    }
}

/// The Ollama watcher: `support-bot` (created from llama3.2:3b, compared
/// with it) is found in /api/tags and evaluated over /v1.
#[tokio::test(flavor = "multi_thread")]
async fn ollama_model_is_evaluated_once_and_alerts_once_across_kill_9() {
    let h = Harness::new().await;
    let demo = demo_script();
    let model = |name: &str| -> ModelScript { demo.models[name].clone() };
    let server: TestServer = spawn(
        Script::new()
            .model("llama3.2:3b", model("aligned"))
            .model("support-bot:latest", model("drifted"))
            // Another model on the server, not watched.
            .model("qwen2.5:0.5b", model("drifted")),
    )
    .await;
    let tags: Value = reqwest::get(format!("http://{}/api/tags", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let digest = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "support-bot:latest")
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .unwrap();
    h.use_config(
        "ollama.toml",
        &[
            ("backends.ollama.base_url", server.base_url()),
            (
                "watchers.ollama.base_url",
                format!("http://{}", server.addr),
            ),
        ],
    );
    let key = format!("ollama/support-bot:latest@{digest}");
    let expect = Expect {
        watcher: "ollama",
        checkpoints: vec![key.clone()],
        drifted: key,
        drifted_spec: "ollama:support-bot:latest".into(),
        baseline_spec: "ollama:llama3.2:3b".into(),
        runs: 2,
    };
    let chats = || server.log().len();
    found_evaluated_once_alerted_once_across_kill_9(&h, &expect, chats).await;
    assert!(
        !server.log().iter().any(|r| r.model == "qwen2.5:0.5b"),
        "an unwatched model was evaluated"
    );
    let per_model: BTreeMap<String, usize> =
        server.log().iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.model.clone()).or_default() += 1;
            m
        });
    assert_eq!(
        per_model.get("llama3.2:3b"),
        per_model.get("support-bot:latest"),
        "{per_model:?}"
    );
}
