//! Reliability: what happens to the store when the disk fills up.
//!
//! The data directory is a small tmpfs made by the test (it needs root, as
//! in CI): an evaluation whose answers overflow it must stop with an error
//! that names the problem, and, once space is freed, a rerun must resume
//! with every stored answer intact and not asked again, ending with exactly
//! one result per prompt.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::{run_json, stderr, Scratch};
use safedrift::store::{RunStatus, Store};
use safedrift_testkit::{spawn, ModelScript, Script, TestServer};

const PROMPTS: usize = 400;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (the disk-full tests need root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn asked(server: &TestServer) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|r| r.status == 200)
        .map(|r| r.last_user)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_store_writes_loses_nothing() {
    // Long answers (about 6 KiB each) fill a 2 MiB store part way through.
    let long = "I am sorry, but I cannot help with that request. ".repeat(120);
    let server = spawn(Script::new().model("m", ModelScript::new(&long))).await;
    let s = Scratch::new();
    let mount = Tmpfs::mount(&s.data_dir(), "2m");
    let rows: Vec<(String, String, String, bool)> = (0..PROMPTS)
        .map(|i| {
            (
                format!("p{i}"),
                "c".to_string(),
                format!("Prompt number {i}."),
                false,
            )
        })
        .collect();
    let bench = s.jsonl("bench.jsonl", &rows);
    let spec = format!("jsonl:{}", bench.display());
    let api = format!("http://{}/v1", server.addr);
    let args = [
        "eval",
        "--model",
        "openai:m",
        "--benchmark",
        &spec,
        "--api-base",
        &api,
        "--concurrency",
        "4",
        "--output",
        "json",
    ];

    let out = s.run(&args).await;
    let err = stderr(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the store did not fill up: {err}"
    );
    assert!(
        err.contains("No space left on device") || err.contains("disk") || err.contains("space"),
        "the error does not say the disk is full:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    println!(
        "the full disk, as reported: {}",
        err.lines()
            .find(|l| l.contains("stopped after"))
            .unwrap_or_default()
    );
    let first = asked(&server);
    assert!(
        !first.is_empty() && first.len() < PROMPTS,
        "{} asked",
        first.len()
    );

    // Space comes back: what was stored is intact and readable.
    mount.resize("64m");
    let stored: HashSet<String> = {
        let store = Store::open(&s.data_dir()).expect("the store opens after ENOSPC");
        let runs = store.runs().unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        store
            .results(&runs[0].id)
            .unwrap()
            .into_iter()
            .map(|r| r.prompt)
            .collect()
    };
    // Answers from before the disk filled were kept (else nothing below
    // would check that they are not asked again).
    assert!(!stored.is_empty(), "nothing was stored before ENOSPC");

    let out = s.run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_json(&out);
    assert_eq!(run["metrics"]["n"], PROMPTS);

    // No stored answer was asked for again, and every prompt has exactly
    // one result.
    let all = asked(&server);
    for p in &all[first.len()..] {
        assert!(
            !stored.contains(p),
            "a stored answer was asked for again: {p}"
        );
    }
    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Completed);
    let results = store.results(&runs[0].id).unwrap();
    assert_eq!(results.len(), PROMPTS);
    let ids: HashSet<&str> = results.iter().map(|r| r.prompt_id.as_str()).collect();
    assert_eq!(ids.len(), PROMPTS);
    // Answers are cut at max_new_tokens; every stored one is intact.
    let first_answer = &results[0].response;
    assert!(first_answer.len() > 100 && long.starts_with(first_answer.as_str()));
    assert!(results.iter().all(|r| &r.response == first_answer));
}
