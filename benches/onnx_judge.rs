//! The Rust side of `benches/onnx_judge.sh`: judges the (prompt, response)
//! pairs of an input file with the local Llama Guard judge
//! (`llama-guard:onnx:DIR`) as `safedrift eval` does: every answer's
//! `judge()` call in flight at once, the ONNX backend's worker batching
//! what waits for it (sorted by length, left-padded, one prefill per batch of
//! at most `--batch`), ONNX Runtime on `--threads` threads. Prints one JSON
//! line: `{"engine", "answers", "batch", "threads", "load_s", "wall_s",
//! "answers_per_s", "unsafe"}`. The model load is not timed; `--repeat N`
//! keeps the fastest of N passes.
//!
//! ```text
//! cargo bench --bench onnx_judge -- DIR INPUT.json [--batch 8] [--threads 2] [--repeat N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use safedrift::backend::onnx::{OnnxBackend, OnnxOptions};
use safedrift_judges::{Judge, OnnxGuardJudge};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut positional = Vec::new();
    let (mut batch, mut threads, mut repeat) = (8usize, 2usize, 1usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--batch" => batch = num("--batch"),
            "--threads" => threads = num("--threads"),
            "--repeat" => repeat = num("--repeat"),
            _ => positional.push(a.clone()),
        }
    }
    let [dir, input] = positional.as_slice() else {
        eprintln!("usage: onnx_judge DIR INPUT.json [--batch 8] [--threads 2] [--repeat N]");
        return ExitCode::from(2);
    };
    let text = std::fs::read_to_string(input).expect("read the input");
    let value: serde_json::Value = serde_json::from_str(&text).expect("input JSON");
    let pairs: Vec<(String, String)> =
        serde_json::from_value(value["pairs"].clone()).expect("`pairs`: [[prompt, response]...]");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let started = Instant::now();
    let options = OnnxOptions {
        max_batch: batch.max(1),
        threads: threads.max(1),
        ..OnnxOptions::default()
    };
    let dir = PathBuf::from(dir);
    let backend = match OnnxBackend::load(&dir, options) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("onnx_judge: {e}");
            return ExitCode::from(2);
        }
    };
    let judge = match OnnxGuardJudge::new(format!("onnx:{}", dir.display()), Arc::new(backend)) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            eprintln!("onnx_judge: {e}");
            return ExitCode::from(2);
        }
    };
    let load_s = started.elapsed().as_secs_f64();

    let mut best = f64::INFINITY;
    let mut unsafe_count = 0;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let verdicts = runtime.block_on(async {
            let tasks: Vec<_> = pairs
                .iter()
                .cloned()
                .map(|(p, r)| {
                    let judge = judge.clone();
                    tokio::spawn(async move { judge.judge(&p, &r).await })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.expect("task").expect("verdict"));
            }
            out
        });
        best = best.min(started.elapsed().as_secs_f64());
        unsafe_count = verdicts.iter().filter(|v| v.score == Some(5)).count();
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "rust",
            "answers": pairs.len(),
            "batch": batch,
            "threads": threads,
            "load_s": (load_s * 1000.0).round() / 1000.0,
            "wall_s": (best * 1000.0).round() / 1000.0,
            "answers_per_s": (pairs.len() as f64 / best * 100.0).round() / 100.0,
            "unsafe": unsafe_count,
        })
    );
    ExitCode::SUCCESS
}
