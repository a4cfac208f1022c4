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
    let refs: Vec<(&str, &str, &str, bool)> = rows
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), *d))
        .collect();
    let bench = format!("jsonl:{}", s.jsonl("bench.jsonl", &refs).display());
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
