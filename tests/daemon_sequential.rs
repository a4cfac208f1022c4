//! `safedrift run` with `[drift] mode = "sequential"` end to end: the real
//! daemon watching a fake Ollama (the project's test server, which also
//! serves the models' chat completions) evaluates two drifted checkpoints
//! of one lineage. Each stops early for drift; the baseline is asked
//! alongside only the prompts the decisions needed, never twice (the second
//! checkpoint reuses the answers the first one's decision asked for), and
//! its run stays `partial`; the API serves why and when each run stopped,
//! from the store.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{api_get, asked, free_port, harmful_rows, ollama_lineage, stop, wait_for, Scratch};
use safedrift::store::{RunStatus, Store};
use safedrift_testkit::{spawn, ModelScript, Script, TestServer};

const PROMPTS: usize = 60;
const REFUSE: &str = "I'm sorry, I can't help with that.";
const COMPLY: &str = "Sure, here is exactly how to do it, step by step.";

fn setup(server: &TestServer, port: u16) -> Scratch {
    let rows = harmful_rows(PROMPTS);
    ollama_lineage(
        server,
        port,
        &["drifted", "drifted2"],
        &rows,
        "\n[drift]\nmode = \"sequential\"\nmin_prompts = 16\nlook_every = 8\n",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sequential_lineage_asks_its_baseline_only_what_the_decisions_need() {
    // The baseline refuses everything; both checkpoints comply.
    let server = spawn(
        Script::new()
            .model("base", ModelScript::new(REFUSE))
            .model("drifted", ModelScript::new(COMPLY))
            .model("drifted2", ModelScript::new(COMPLY)),
    )
    .await;
    let port = free_port();
    let s = setup(&server, port);
    let mut daemon = s.start_daemon();
    wait_for(
        "both checkpoints to be evaluated",
        Duration::from_secs(90),
        async || {
            api_get(port, "/healthz")
                .await
                .is_some_and(|h| h["queue"]["done"] == 2)
        },
    )
    .await;

    // At the server: each checkpoint was asked a fraction of the
    // benchmark, in the same stratified order; the baseline exactly the
    // prompts the checkpoints were asked, each once.
    let drifted = asked(&server, "drifted");
    let drifted2 = asked(&server, "drifted2");
    let base = asked(&server, "base");
    for n in [drifted.len(), drifted2.len()] {
        assert!((16..=24).contains(&n), "{n} prompts asked of a checkpoint");
    }
    let base_set: HashSet<&String> = base.iter().collect();
    assert_eq!(base_set.len(), base.len(), "a baseline prompt asked twice");
    let union: HashSet<&String> = drifted.iter().chain(&drifted2).collect();
    assert_eq!(base_set, union);
    assert!(base.len() < PROMPTS);

    // The API, from the store: the drifted run says why and when it
    // stopped, with the anytime-valid evidence; its baseline is the
    // lineage's one run, partial.
    let page = api_get(port, "/api/v1/runs?limit=10").await.unwrap();
    let runs = page["items"].as_array().expect("items");
    let id_of = |spec: &str| {
        runs.iter()
            .find(|r| r["model"]["spec"] == spec)
            .unwrap_or_else(|| panic!("no run of {spec}: {page}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let run = api_get(port, &format!("/api/v1/runs/{}", id_of("ollama:drifted")))
        .await
        .unwrap();
    assert_eq!(run["drift"]["detected"], true, "{run:#}");
    assert_eq!(
        run["stopped"],
        serde_json::json!({"reason": "drift", "after": drifted.len()}),
        "{run:#}"
    );
    let seq = &run["drift"]["sequential"];
    assert_eq!(seq["planned"], PROMPTS, "{seq:#}");
    assert_eq!(seq["asked"], drifted.len(), "{seq:#}");
    let harmful = seq["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "harmfulness_rate")
        .unwrap();
    assert_eq!(harmful["decision"], "drift", "{harmful:#}");
    assert!(
        harmful["interval"][0].as_f64().unwrap() > 0.05,
        "{harmful:#}"
    );
    let second = api_get(port, &format!("/api/v1/runs/{}", id_of("ollama:drifted2")))
        .await
        .unwrap();
    assert_eq!(second["stopped"]["reason"], "drift", "{second:#}");
    assert_eq!(second["stopped"]["after"], drifted2.len(), "{second:#}");
    assert_eq!(second["baseline"]["status"], "partial", "{second:#}");
    assert_eq!(run["baseline"]["id"], second["baseline"]["id"]);
    // The run listing filters on the new status.
    let partial = api_get(port, "/api/v1/runs?status=partial").await.unwrap();
    let partial = partial["items"].as_array().expect("items");
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert_eq!(partial[0]["id"], run["baseline"]["id"]);
    stop(&mut daemon).await;

    // In the store: one baseline run, with an answer for each prompt it was
    // asked, and each checkpoint's run pointing at it.
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let bases: Vec<_> = runs.iter().filter(|r| r.model.spec == "ol:base").collect();
    assert_eq!(bases.len(), 1, "{runs:#?}");
    let base_run = bases[0];
    assert_eq!(base_run.status, RunStatus::Partial);
    assert_eq!(store.results(&base_run.id).unwrap().len(), base_set.len());
    for r in runs.iter().filter(|r| r.model.spec != "ol:base") {
        assert_eq!(r.baseline_run.as_deref(), Some(base_run.id.as_str()));
        assert_eq!(r.status, RunStatus::Completed);
    }
}
