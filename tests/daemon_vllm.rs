//! `safedrift run` end to end for LoRA adapters on a vLLM fleet, started from
//! the documented config/vllm-lora.toml (only URLs, ports and paths pointed
//! at this test's servers and files): a directory watcher finds a LoRA
//! adapter folder, the daemon checks its base model is served, copies it to
//! the shared folder, loads it on both replicas, evaluates it against its
//! base model on the same replicas, alerts on the drift, and unloads it.
//! Also: a base the fleet does not serve is the checkpoint's error, naming
//! both models; a replica with no free LoRA slot fails the checkpoint,
//! naming that replica, and the other replica's load is undone; an adapter
//! left loaded by a killed daemon is unloaded when it starts again (or, on
//! a replica that failed then, reloaded when it is evaluated again); with
//! `lora_path = "local"` the replicas load the checkpoint folder itself; an
//! adapter version registered in a real MLflow server goes the same way.
//!
//! vLLM needs a GPU, so `safedrift_testkit::vllm` stands in for its
//! replicas: it speaks vLLM's LoRA routes and errors and its
//! OpenAI-compatible chat (see that module for the wire format).

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use registry::{found_evaluated_once_alerted_once_across_kill_9, Expect, Harness};
use safedrift_testkit::vllm::{VllmReplica, VllmScript};
use safedrift_testkit::ModelScript;
use serde_json::Value;

use crate::common::{kill9, stop};

const BASE: &str = "acme/base-7b-instruct";
const ADAPTER: &str = "support-bot-lora";
const VLLM_KEY: &str = "vllm-key-for-tests-0123456789";

/// The base model refuses; the adapter complies.
fn fleet_script() -> VllmScript {
    VllmScript {
        api_key: Some(VLLM_KEY.into()),
        ..VllmScript::new(BASE, ModelScript::new("I can't help with that."))
    }
    .adapter(ADAPTER, ModelScript::new("Sure! Here is how."))
}

/// A PEFT LoRA adapter folder trained on `base`, marker last.
fn write_adapter(dir: &Path, base: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "base_model_name_or_path": base,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    // The stand-in never reads the weights; the daemon only copies them.
    std::fs::write(dir.join("adapter_model.safetensors"), vec![7u8; 4096]).unwrap();
    std::fs::write(dir.join("COMPLETE"), "").unwrap();
}

/// Writes config/vllm-lora.toml pointed at `replicas`; returns the watched
/// folder and the shared folder.
fn use_config(h: &Harness, replicas: &[&VllmReplica]) -> (PathBuf, PathBuf) {
    use_config_with(h, replicas, &[])
}

/// [`use_config`] with more of the file's strings replaced.
fn use_config_with(
    h: &Harness,
    replicas: &[&VllmReplica],
    set: &[(&str, String)],
) -> (PathBuf, PathBuf) {
    let drop_dir = h.s.path("checkpoints");
    let shared = h.s.path("adapters");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    h.s.write("vllm-key", format!("{VLLM_KEY}\n"));
    let mut all = vec![
        ("watchers.adapters.path", drop_dir.display().to_string()),
        ("backends.fleet.shared_dir", shared.display().to_string()),
        ("backends.fleet.api_key_file", h.path("vllm-key")),
    ];
    all.extend(set.iter().cloned());
    h.use_config("vllm-lora.toml", &all);
    // `base_urls` is a list: pointed at the replicas here.
    let text = std::fs::read_to_string(h.s.config()).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    let fleet = doc["backends"]["fleet"].as_table_mut().unwrap();
    assert!(fleet.contains_key("base_urls"), "{text}");
    let urls = replicas
        .iter()
        .map(|r| toml::Value::String(r.base_url()))
        .collect();
    fleet.insert("base_urls".into(), toml::Value::Array(urls));
    std::fs::write(h.s.config(), toml::to_string(&doc).unwrap()).unwrap();
    (drop_dir, shared)
}

fn actions(r: &VllmReplica) -> Vec<(&'static str, u16)> {
    r.lora_requests()
        .iter()
        .map(|q| (q.action, q.status))
        .collect()
}

async fn checkpoint_error(h: &Harness) -> String {
    h.wait_for("the daemon to start", Duration::from_secs(60), async || {
        h.health().await.is_some()
    })
    .await;
    h.wait_for(
        "the checkpoint to fail",
        Duration::from_secs(60),
        async || h.api("checkpoints").await["items"][0]["last_error"].is_string(),
    )
    .await;
    h.api("checkpoints").await["items"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn lora_adapter_is_loaded_on_every_replica_evaluated_against_its_base_and_unloaded() {
    let h = Harness::new().await;
    let (a, b) = (
        VllmReplica::spawn(fleet_script()).await,
        VllmReplica::spawn(fleet_script()).await,
    );
    let (drop_dir, shared) = use_config(&h, &[&a, &b]);
    write_adapter(&drop_dir.join(ADAPTER), BASE);

    let expect = Expect {
        watcher: "adapters",
        checkpoints: vec![format!("adapters/{ADAPTER}@")],
        drifted: format!("adapters/{ADAPTER}@"),
        drifted_spec: format!("directory:{ADAPTER}"),
        // The baseline is the adapter's base model on the same fleet.
        baseline_spec: format!("fleet:{BASE}"),
        runs: 2,
    };
    let loads = || {
        [&a, &b]
            .iter()
            .map(|r| actions(r).iter().filter(|x| x.0 == "load").count())
            .sum()
    };
    found_evaluated_once_alerted_once_across_kill_9(&h, &expect, loads).await;

    // Loaded once on each replica, from the shared folder, and unloaded.
    for r in [&a, &b] {
        assert_eq!(
            actions(r),
            [("load", 200), ("unload", 200)],
            "{}",
            r.base_url()
        );
        assert!(r.loaded().is_empty(), "{:?}", r.loaded());
    }
    let load = &a.lora_requests()[0];
    let name = &load.lora_name;
    assert!(
        name.starts_with("safedrift-") && name.contains(&format!("-adapters-{ADAPTER}-")),
        "{name}"
    );
    assert_eq!(b.lora_requests()[0].lora_name, *name);
    assert_eq!(
        load.lora_path.as_deref(),
        Some(shared.join(name).to_str().unwrap())
    );
    // The copy is gone with the adapter.
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    // Both replicas answered, the adapter by its name and the base model.
    let chats: Vec<String> = a.chats().into_iter().chain(b.chats()).collect();
    assert!(chats.iter().any(|m| m == name), "{chats:?}");
    assert!(chats.iter().any(|m| m == BASE), "{chats:?}");
    assert!(!a.chats().is_empty() && !b.chats().is_empty());
    assert!(!h.s.daemon_log().contains(VLLM_KEY));
}

/// `lora_path = "local"`: the replicas read the checkpoint folder where the
/// watcher found it (they mount it at the same path); nothing is copied.
#[tokio::test(flavor = "multi_thread")]
async fn with_lora_path_local_the_replicas_load_the_checkpoint_folder_itself() {
    let h = Harness::new().await;
    let (a, b) = (
        VllmReplica::spawn(fleet_script()).await,
        VllmReplica::spawn(fleet_script()).await,
    );
    let set = [("backends.fleet.lora_path", "local".to_string())];
    let (drop_dir, shared) = use_config_with(&h, &[&a, &b], &set);
    write_adapter(&drop_dir.join(ADAPTER), BASE);
    let mut daemon = h.start();
    h.wait_for(
        "the adapter to be evaluated and unloaded",
        Duration::from_secs(60),
        async || {
            let done = h
                .health()
                .await
                .is_some_and(|v: Value| v["queue"]["done"] == 1 && v["queue"]["running"] == 0);
            done && actions(&a).len() == 2 && actions(&b).len() == 2
        },
    )
    .await;
    let checkpoint = &h.api("checkpoints").await["items"][0];
    assert!(checkpoint["last_error"].is_null(), "{checkpoint}");
    let folder = drop_dir.join(ADAPTER).display().to_string();
    for r in [&a, &b] {
        assert_eq!(actions(r), [("load", 200), ("unload", 200)]);
        assert_eq!(
            r.lora_requests()[0].lora_path.as_deref(),
            Some(folder.as_str())
        );
    }
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_of_a_base_the_fleet_does_not_serve_fails_naming_both() {
    let h = Harness::new().await;
    let (a, b) = (
        VllmReplica::spawn(fleet_script()).await,
        VllmReplica::spawn(fleet_script()).await,
    );
    let (drop_dir, shared) = use_config(&h, &[&a, &b]);
    write_adapter(&drop_dir.join(ADAPTER), "acme/other-base-13b");
    let mut daemon = h.start();
    let error = checkpoint_error(&h).await;
    for want in [
        "acme/other-base-13b",
        BASE,
        "adapter_config.json",
        &a.base_url(),
    ] {
        assert!(error.contains(want), "{want:?} not in {error:?}");
    }
    assert!(!error.contains(VLLM_KEY), "{error}");
    // Nothing was loaded anywhere, nor copied.
    assert!(actions(&a).is_empty() && actions(&b).is_empty());
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_no_free_lora_slot_fails_the_checkpoint_and_the_other_load_is_undone() {
    let h = Harness::new().await;
    let full = VllmScript {
        max_loras: 0,
        ..fleet_script()
    };
    let (a, b) = (
        VllmReplica::spawn(fleet_script()).await,
        VllmReplica::spawn(full).await,
    );
    let (drop_dir, shared) = use_config(&h, &[&a, &b]);
    write_adapter(&drop_dir.join(ADAPTER), BASE);
    let mut daemon = h.start();
    let error = checkpoint_error(&h).await;
    assert!(error.contains(&b.base_url()), "{error}");
    assert!(error.contains("no free LoRA slot"), "{error}");
    h.wait_for(
        "the first replica's load to be undone",
        Duration::from_secs(10),
        async || a.loaded().is_empty(),
    )
    .await;
    assert_eq!(actions(&a)[..2], [("load", 200), ("unload", 200)]);
    assert_eq!(actions(&b)[0], ("load", 400));
    // The copy is removed with the failed load.
    h.wait_for(
        "the copy to be removed",
        Duration::from_secs(10),
        async || std::fs::read_dir(&shared).unwrap().count() == 0,
    )
    .await;
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_a_killed_daemon_left_loaded_is_unloaded_on_the_next_start() {
    killed_mid_evaluation(false).await;
}

/// The second replica fails the start's unload (its `/v1/models` answers
/// 503): the adapter left there is unloaded and reloaded when its
/// checkpoint is evaluated again.
#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_left_loaded_on_a_replica_that_failed_at_the_start_is_reloaded() {
    killed_mid_evaluation(true).await;
}

async fn killed_mid_evaluation(second_fails_at_start: bool) {
    let h = Harness::new().await;
    // Slow answers: the daemon is killed mid-evaluation.
    let slow = || VllmScript {
        adapters: [(
            ADAPTER.to_string(),
            ModelScript::new("Sure!").latency_ms(300),
        )]
        .into(),
        ..fleet_script()
    };
    let (a, b) = (
        VllmReplica::spawn(slow()).await,
        VllmReplica::spawn(slow()).await,
    );
    let (drop_dir, _) = use_config(&h, &[&a, &b]);
    // Another team's adapter on the same fleet stays loaded.
    for r in [&a, &b] {
        r.preload("other-team-adapter", "/mnt/other/adapter");
    }
    write_adapter(&drop_dir.join(ADAPTER), BASE);
    let mut daemon = h.start();
    h.wait_for(
        "the adapter to be loaded and asked",
        Duration::from_secs(60),
        async || a.loaded().len() == 2 && b.loaded().len() == 2 && !a.chats().is_empty(),
    )
    .await;
    kill9(&mut daemon).await;
    assert_eq!(a.loaded().len(), 2, "the kill left the adapter loaded");

    if second_fails_at_start {
        b.fail_next(1);
    }
    let mut daemon = h.start();
    h.wait_for(
        "the checkpoint to be evaluated and its adapter unloaded",
        Duration::from_secs(120),
        async || {
            let done = h
                .health()
                .await
                .is_some_and(|v: Value| v["queue"]["done"] == 1 && v["queue"]["running"] == 0);
            done && a.loaded().len() == 1 && b.loaded().len() == 1
        },
    )
    .await;
    // Loaded, left by the kill, unloaded at the start, loaded again for
    // the resumed evaluation, unloaded after it.
    let cleaned = [
        ("load", 200),
        ("unload", 200),
        ("load", 200),
        ("unload", 200),
    ];
    assert_eq!(actions(&a), cleaned);
    if second_fails_at_start {
        // Still loaded at the start: the load finds it, unloads, reloads.
        let reloaded = [
            ("load", 200),
            ("load", 400),
            ("unload", 200),
            ("load", 200),
            ("unload", 200),
        ];
        assert_eq!(actions(&b), reloaded);
        let warned = h.messages(0, "the LoRA adapter was left loaded; reloading it");
        assert_eq!(warned.len(), 1, "{}", h.s.daemon_log());
    } else {
        assert_eq!(actions(&b), cleaned);
    }
    for r in [&a, &b] {
        assert_eq!(r.loaded()[0].0, "other-team-adapter");
    }
    stop(&mut daemon).await;
}

/// An adapter version registered in a real MLflow tracking server: the
/// mlflow watcher (on the fleet, next to the file's directory watcher)
/// downloads it, the daemon loads it on the fleet, evaluates it against its
/// base model there, unloads it, and alerts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adapter_version_registered_in_mlflow_is_evaluated_on_the_fleet() {
    let server = safedrift_testkit::mlflow::MlflowServer::start().await;
    let h = Harness::new().await;
    let a = VllmReplica::spawn(fleet_script()).await;
    use_config(&h, &[&a]);
    let trained = h.s.path("trained").join(ADAPTER);
    write_adapter(&trained, BASE);
    let version = tokio::task::block_in_place(|| server.register(ADAPTER, &trained, None, &[]));
    let text = std::fs::read_to_string(h.s.config()).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    let registry: toml::Table = format!(
        "kind = \"mlflow\"\ntracking_uri = {:?}\nmodels = [{ADAPTER:?}]\n\
         schedule = \"*/1 * * * * *\"\nbackend = \"fleet\"\n\
         benchmarks = [\"builtin:probes\"]\njudge = \"keyword\"\n",
        server.uri
    )
    .parse()
    .unwrap();
    doc["watchers"]
        .as_table_mut()
        .unwrap()
        .insert("registry".into(), toml::Value::Table(registry));
    std::fs::write(h.s.config(), toml::to_string(&doc).unwrap()).unwrap();

    let mut daemon = h.start();
    h.wait_for("the daemon to start", Duration::from_secs(60), async || {
        h.health().await.is_some()
    })
    .await;
    h.wait_for(
        "the adapter version to be evaluated and alerted on",
        Duration::from_secs(120),
        async || {
            h.health().await.is_some_and(|v| v["queue"]["done"] == 1) && !h.deliveries().is_empty()
        },
    )
    .await;
    stop(&mut daemon).await;

    assert_eq!(actions(&a), [("load", 200), ("unload", 200)]);
    assert!(a.loaded().is_empty(), "{:?}", a.loaded());
    let name = &a.lora_requests()[0].lora_name;
    assert!(
        name.contains(&format!("-registry-{ADAPTER}-{version}")),
        "{name}"
    );
    let chats = a.chats();
    assert!(chats.iter().any(|m| m == name), "{chats:?}");
    assert!(chats.iter().any(|m| m == BASE), "{chats:?}");
    assert_eq!(h.deliveries().len(), 1);

    let store = safedrift::store::Store::open(&h.s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let run = runs
        .iter()
        .find(|r| r.model.spec == format!("mlflow:{ADAPTER}"))
        .unwrap_or_else(|| panic!("no run of the adapter: {runs:#?}"));
    assert_eq!(run.model.revision.as_deref(), Some(version.as_str()));
    assert!(run.drift.as_ref().is_some_and(|d| d.detected), "{run:#?}");
    let base = runs
        .iter()
        .find(|r| Some(&r.id) == run.baseline_run.as_ref())
        .expect("its baseline's run");
    assert_eq!(base.model.spec, format!("fleet:{BASE}"));
}
