//! `tools/finetune_minilm.py` end to end: it fine-tunes the converted
//! all-MiniLM-L6-v2 (fetched once per machine by `tools/fetch_minilm.py`) on a
//! small sample of the built-in corpus, `safedrift distill --encoder` trains
//! a judge on the result, and `safedrift judge-eval` runs that judge through
//! the binary. Bad input stops with the file and line and writes nothing.
//! The plumbing is checked here, not the quality: the README's figures come
//! from the full run.
//!
//! Needs `python3` with `tools/requirements.txt` installed (JAX and optax).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{minilm, repo, run_json, stderr, stdout};
use safedrift_judges::classifier::encoder_identity;

/// A directory under the target directory, removed when the test ends (the
/// encoders written there are 90 MB each).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("finetune-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn finetune(args: &[&str]) -> Output {
    Command::new("python3")
        .arg("tools/finetune_minilm.py")
        .arg("--base")
        .arg(minilm())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3 runs")
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn distill(cache: &Path, extra: &[&str], judge: &Path) -> Output {
    Command::new(common::bin())
        .args(["distill", "--out"])
        .arg(judge)
        .args(["--min-accuracy", "0", "--min-kappa", "0"])
        .args([
            "--min-harmful-agreement",
            "0",
            "--min-refusal-agreement",
            "0",
        ])
        .args(extra)
        .env("SAFEDRIFT_MODEL_CACHE", cache)
        .env_remove("SAFEDRIFT_CONFIG")
        .output()
        .unwrap()
}

fn head_encoder(judge: &Path) -> serde_json::Value {
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(judge.join("head.json")).unwrap()).unwrap();
    head["encoder"]["sha256"].clone()
}

#[test]
fn a_fine_tuned_encoder_is_distilled_into_a_judge_that_judge_eval_runs() {
    let scratch = scratch("e2e");
    let dir = scratch.path();
    // A model cache like a user's: the base, then the fine-tuned encoder beside it.
    let cache = dir.join("models");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(minilm(), cache.join("all-minilm-l6-v2")).unwrap();
    let (base_sha, enc) = (
        sha256(&minilm().join("model.onnx")),
        cache.join("all-minilm-l6-v2-judge"),
    );
    let identity = |dir: &Path| encoder_identity(dir).unwrap().sha256;

    // Before fine-tuning, distill takes the base and says how to do better.
    let judge = dir.join("judge-base");
    let out = distill(&cache, &["--data", "builtin:seed"], &judge);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("tools/finetune_minilm.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(head_encoder(&judge), identity(minilm()).as_str());

    let args = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--limit",
        "48",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ];
    let out = finetune(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), enc.to_str().unwrap());
    assert!(stderr(&out).contains("training on"), "{}", stderr(&out));

    // The weights moved, and the record says what they were trained on.
    let tuned_sha = sha256(&enc.join("model.onnx"));
    assert_ne!(tuned_sha, base_sha);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(enc.join("finetune.json")).unwrap()).unwrap();
    assert_eq!(info["records"], 48);
    let held = info["held_out_answers"].as_u64().unwrap();
    assert!(held > 0 && held < 48, "{info}");
    assert_eq!(
        info["steps"],
        (48 - held).div_ceil(8),
        "one epoch of 8: {info}"
    );
    assert_eq!(info["base_model_sha256"], base_sha.as_str());
    assert_eq!(
        info["data_sha256"],
        sha256(&repo().join("src/builtin/judge_corpus.jsonl"))
    );
    assert!(info["final_loss"].as_f64().unwrap().is_finite(), "{info}");

    // The same inputs again: found done, not trained twice.
    let again = finetune(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        !stderr(&again).contains("training on"),
        "{}",
        stderr(&again)
    );
    // Trained again elsewhere: the same weights (seeded, on the CPU).
    let elsewhere = dir.join("again");
    let out = finetune(&[&args[2..], &["--out", elsewhere.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&elsewhere.join("model.onnx")), tuned_sha);

    // Now distill's default encoder is the fine-tuned one; the head names it.
    let judge = dir.join("judge");
    let out = distill(&cache, &["--data", "builtin:seed"], &judge);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        !stderr(&out).contains("tools/finetune_minilm.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(head_encoder(&judge), identity(&enc).as_str());

    // judge-eval through the binary scores every labelled answer with it.
    let out = Command::new(common::bin())
        .arg("judge-eval")
        .arg("--judge")
        .arg(format!("classifier:{}", judge.display()))
        .arg("--data")
        .arg(repo().join("data/judge-eval/heldout.jsonl"))
        .args(["--output", "json"])
        .env_remove("SAFEDRIFT_CONFIG")
        .output()
        .unwrap();
    let report = run_json(&out);
    assert_eq!(report["n"], 221);
    assert_eq!(report["unscored"], 0);
    let agreement = report["harmful_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement), "{report}");
}

#[test]
fn the_jax_forward_pass_matches_onnx_runtime() {
    let out = finetune(&["--check-forward"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("JAX against ONNX Runtime"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bad_labelled_file_stops_with_its_line_and_writes_nothing() {
    let scratch = scratch("bad");
    let dir = scratch.path();
    let good = r#"{"prompt": "p", "response": "No.", "score": 1, "refused": true}"#;
    let cases = [
        (
            "not JSON",
            format!("{good}\n{good}\n{{\"prompt\": \n"),
            ":3: not JSON",
        ),
        (
            "score out of range",
            format!("{good}\n{}\n", good.replace("\"score\": 1", "\"score\": 7")),
            ":2: `score` must be an integer 1-5",
        ),
        (
            "refused missing",
            format!("{}\n", good.replace(", \"refused\": true", "")),
            ":1: `refused` must be true or false",
        ),
        ("empty", String::new(), "no records"),
    ];
    for (what, text, expected) in cases {
        let data = dir.join("bad.jsonl");
        std::fs::write(&data, text).unwrap();
        let enc = dir.join("out");
        let out = finetune(&[
            "--data",
            data.to_str().unwrap(),
            "--out",
            enc.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("bad.jsonl") && err.contains(expected),
            "{what}: {err}"
        );
        assert!(!enc.exists(), "{what}: wrote {}", enc.display());
    }
}

#[test]
fn a_missing_base_or_a_bad_setting_is_a_usage_error() {
    let scratch = scratch("usage");
    let dir = scratch.path();
    let out = Command::new("python3")
        .arg("tools/finetune_minilm.py")
        .arg("--base")
        .arg(dir.join("nowhere"))
        .arg("--out")
        .arg(dir.join("out"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("fetch_minilm.py"), "{}", stderr(&out));
    for bad in [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--test-fraction", "1"],
    ] {
        let out = finetune(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(bad[0]), "{bad:?}: {}", stderr(&out));
    }
}

/// The answers the fine-tuning leaves out are the ones `distill` holds out
/// with the same seed and fraction (a seed and fraction other than the
/// defaults), so distill's held-out report measures answers the encoder
/// never saw.
#[test]
fn the_fine_tuning_leaves_out_what_distill_holds_out() {
    let scratch = scratch("split");
    let dir = scratch.path();
    let corpus = std::fs::read_to_string(repo().join("src/builtin/judge_corpus.jsonl")).unwrap();
    // The corpus's first 120 answers: 21 prompts with 1 to 12 answers each,
    // so another seed or fraction holds out another number of answers.
    let sample: Vec<&str> = corpus.lines().take(120).collect();
    let data = dir.join("sample.jsonl");
    std::fs::write(&data, sample.join("\n") + "\n").unwrap();
    let enc = dir.join("encoder");
    let split = ["--test-fraction", "0.25"];
    let out = finetune(
        &[
            &[
                "--data",
                data.to_str().unwrap(),
                "--out",
                enc.to_str().unwrap(),
            ][..],
            &[
                "--holdout-seed",
                "6",
                "--epochs",
                "0.1",
                "--batch-size",
                "8",
            ],
            &split,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(enc.join("finetune.json")).unwrap()).unwrap();
    let held = info["held_out_answers"].as_u64().unwrap();

    let judge = dir.join("judge");
    let out = distill(
        dir,
        &[
            &["--data", data.to_str().unwrap(), "--seed", "6"][..],
            &split,
            &["--encoder", enc.to_str().unwrap()],
        ]
        .concat(),
        &judge,
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report = stdout(&out);
    let line = report
        .lines()
        .find(|l| l.starts_with("split"))
        .expect("a split line");
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(held.to_string().as_str()),
        "fine-tuning held out {held}; distill: {line}"
    );
    assert!(held > 0 && held < 120, "{info}");
}
