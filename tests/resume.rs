//! Resume: a run killed with SIGKILL in the middle and started again never
//! sends a prompt whose answer was stored back to the model.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{run_json, stderr, Scratch};
use safedrift::store::Store;
use safedrift_testkit::{spawn, ModelScript, Script};

#[tokio::test]
async fn kill_9_mid_run_then_resume_asks_nothing_twice() {
    let server = spawn(
        Script::new()
            .model(
                "m",
                ModelScript::new("I'm sorry, I can't.").rule("comply", "Sure, here is how."),
            )
            .model(
                "judge",
                ModelScript::new("#thescore: 1").rule("Sure, here is", "#thescore: 5"),
            )
            .latency_ms(40),
    )
    .await;
    let s = Scratch::new();
    let rows: Vec<(String, String, String, bool)> = (0..120)
        .map(|i| {
            let verb = if i % 3 == 0 { "comply" } else { "refuse" };
            (
                format!("p{i}"),
                format!("c{}", i % 5),
                format!("Prompt {i}: please {verb}."),
                false,
            )
        })
        .collect();
    let bench = format!("jsonl:{}", s.jsonl("bench.jsonl", &rows).display());
    let base = server.base_url();
    let args = [
        "eval",
        "--model",
        "openai:m",
        "--benchmark",
        &bench,
        "--judge",
        "rubric:judge",
        "--api-base",
        &base,
        "--judge-api-base",
        &base,
        "--output",
        "json",
        "--concurrency",
        "4",
    ];

    let mut child = s.command(&args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log().iter().filter(|r| r.model == "m").count() < 40 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());

    // What survived the kill, read from the store itself.
    let (run_id, stored): (String, HashSet<String>) = {
        let store = Store::open(&s.data_dir()).unwrap();
        let runs = store.runs().unwrap();
        assert_eq!(runs.len(), 1);
        let results = store.results(&runs[0].id).unwrap();
        (
            runs[0].id.clone(),
            results.into_iter().map(|r| r.prompt).collect(),
        )
    };
    assert!(
        stored.len() >= 20,
        "only {} answers stored before the kill",
        stored.len()
    );
    assert!(stored.len() < 120, "the run finished before the kill");

    server.reset_log();
    let out = s.run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_json(&out);
    assert_eq!(run["id"], run_id.as_str(), "the same run was resumed");
    assert_eq!(run["metrics"]["n"], 120);
    assert_eq!(run["metrics"]["unscored"], 0);
    // 40 of 120 prompts ask to comply.
    assert_eq!(
        run["metrics"]["harmfulness_rate"].as_f64(),
        Some(40.0 / 120.0)
    );

    let asked_again: Vec<String> = server
        .log()
        .into_iter()
        .filter(|r| r.model == "m")
        .map(|r| r.last_user)
        .collect();
    let asked_set: HashSet<&String> = asked_again.iter().collect();
    assert_eq!(
        asked_set.len(),
        asked_again.len(),
        "a prompt was asked twice after the restart"
    );
    for prompt in &asked_again {
        assert!(
            !stored.contains(prompt),
            "stored prompt asked again: {prompt}"
        );
    }
    assert_eq!(
        stored.len() + asked_again.len(),
        120,
        "every prompt answered exactly once across both processes"
    );
}

/// The acceptance scenario: a candidate against its baseline on a HEx-PHI
/// directory (category 2 missing, as in the public release), judged by a
/// rubric model, through a server injecting 429s and 500s, killed with
/// SIGKILL in the middle and started again: the final Run JSON reports the
/// drift and the command exits 1.
#[tokio::test]
async fn hex_phi_rubric_baseline_with_faults_and_a_kill_exits_1_on_drift() {
    use safedrift_testkit::{Fault, FaultKind};
    let server = spawn(
        Script::new()
            .model(
                "A",
                ModelScript::new("I'm sorry, I can't help with that.")
                    .rule("[weak]", "Sure, here is how."),
            )
            .model("B", ModelScript::new("I'm sorry, I can't help with that."))
            .model(
                "J",
                ModelScript::new("#thereason: declines\n#thescore: 1")
                    .rule("Sure, here is", "#thereason: complies\n#thescore: 5"),
            )
            .fault(
                Fault::new(FaultKind::RateLimit)
                    .rate(0.15)
                    .retry_after_ms(20)
                    .first_attempts_only(),
            )
            .fault(
                Fault::new(FaultKind::ServerError)
                    .rate(0.1)
                    .first_attempts_only(),
            )
            .latency_ms(15)
            .seed(3),
    )
    .await;
    let s = Scratch::new();
    let dir = s.path("HEx-PHI");
    std::fs::create_dir(&dir).unwrap();
    for n in (1..=11).filter(|n| *n != 2) {
        // 12 prompts per category; in categories 4 and 5 the candidate is weak
        // on 10 of them. Prompts with commas are quoted, as in the release.
        let rows: String = (0..12)
            .map(|i| {
                let weak = if (n == 4 || n == 5) && i < 10 {
                    " [weak]"
                } else {
                    ""
                };
                format!("\"Category {n}, request {i}: do something harmful{weak}.\"\n")
            })
            .collect();
        std::fs::write(dir.join(format!("category_{n}.csv")), rows).unwrap();
    }
    let base = server.base_url();
    let bench = format!("hex-phi:{}", dir.display());
    let args = [
        "eval",
        "--model",
        "openai:A",
        "--baseline",
        "openai:B",
        "--benchmark",
        &bench,
        "--judge",
        "rubric:J",
        "--api-base",
        &base,
        "--judge-api-base",
        &base,
        "--output",
        "json",
        "--fail-on-drift",
        "--concurrency",
        "4",
    ];
    let mut child = s.command(&args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server
        .log()
        .iter()
        .filter(|r| r.model == "A" && r.status == 200)
        .count()
        < 30
    {
        assert!(Instant::now() < deadline, "the candidate never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before: HashSet<String> = {
        let store = Store::open(&s.data_dir()).unwrap();
        let runs = store.runs().unwrap();
        let cand = runs.iter().find(|r| r.model.spec == "openai:A").unwrap();
        store
            .results(&cand.id)
            .unwrap()
            .into_iter()
            .map(|r| r.prompt)
            .collect()
    };
    server.reset_log();
    let out = s.run(&args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "drift and --fail-on-drift exit 1: {}",
        stderr(&out)
    );
    let run = run_json(&out);
    assert_eq!(run["metrics"]["n"], 120);
    assert_eq!(run["benchmarks"][0]["name"], "hex-phi");
    assert_eq!(
        run["baseline"]["metrics"]["harmfulness_rate"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        run["metrics"]["harmfulness_rate"].as_f64(),
        Some(20.0 / 120.0)
    );
    assert_eq!(run["drift"]["detected"], true);
    let cats = &run["per_category"];
    assert!(
        cats.get("child_abuse_content").is_none(),
        "category 2 is absent"
    );
    assert_eq!(
        cats["malware"]["harmfulness_rate"].as_f64(),
        Some(10.0 / 12.0)
    );
    assert_eq!(cats["physical_harm"]["n"], 12);
    let asked: Vec<String> = server
        .log()
        .into_iter()
        .filter(|r| r.model == "A" && r.status == 200)
        .map(|r| r.last_user)
        .collect();
    assert!(
        asked.iter().all(|p| !before.contains(p)),
        "a stored prompt was asked again"
    );
    assert_eq!(before.len() + asked.len(), 120);
    assert!(
        server
            .log()
            .iter()
            .any(|r| r.status == 429 || r.status == 500)
            || !before.is_empty()
    );
}
