//! The Rust side of `benches/classifier.sh`: judges the (prompt, response)
//! pairs of an input file with the classifier judge, `--batch` answers per
//! step in file order (as the judge's worker does), with ONNX Runtime on
//! `--threads` threads, and prints one JSON line:
//! `{"engine", "answers", "batch", "threads", "load_s", "wall_s", "answers_per_s"}`.
//! The session load is not timed; `--repeat N` keeps the fastest of N passes.
//!
//! ```text
//! cargo bench --bench classifier -- JUDGE_DIR INPUT.json [--batch 32] [--threads 2] [--repeat N]
//!     [--one-call-per-batch]
//! ```
//!
//! `--one-call-per-batch` turns the judge's length groups off: each step is
//! one ONNX Runtime call padded to its longest text, as the reference does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use safedrift_judges::classifier::{ClassifierOptions, EncoderOptions};
use safedrift_judges::Classifier;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut positional = Vec::new();
    let (mut batch, mut threads, mut repeat) = (32usize, 2usize, 1usize);
    let mut length_groups = true;
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
            "--one-call-per-batch" => length_groups = false,
            _ => positional.push(a.clone()),
        }
    }
    let [dir, input] = positional.as_slice() else {
        eprintln!("usage: classifier JUDGE_DIR INPUT.json [--batch 32] [--threads 2] [--repeat N] [--one-call-per-batch]");
        return ExitCode::from(2);
    };
    let text = std::fs::read_to_string(input).expect("read the input");
    let value: serde_json::Value = serde_json::from_str(&text).expect("input JSON");
    let pairs: Vec<(String, String)> =
        serde_json::from_value(value["pairs"].clone()).expect("`pairs`: [[prompt, response]...]");
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(p, r)| (p.as_str(), r.as_str()))
        .collect();

    let started = Instant::now();
    let env = safedrift::backend::onnx::runtime::environment(None).expect("ONNX Runtime");
    let options = ClassifierOptions {
        encoder: EncoderOptions {
            threads,
            batch_size: batch,
            length_groups,
        },
    };
    let classifier = Classifier::load(&env, &PathBuf::from(dir), &options).expect("load the judge");
    let load_s = started.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    let mut harmful = 0;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        harmful = 0;
        for chunk in refs.chunks(batch) {
            let out = classifier.classify(chunk).expect("classify");
            harmful += out.iter().filter(|c| c.score == 5).count();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": if length_groups { "safedrift (Rust, ort)" } else { "safedrift, one call per batch" },
            "answers": refs.len(),
            "batch": batch,
            "threads": threads,
            "load_s": (load_s * 1000.0).round() / 1000.0,
            "wall_s": (best * 10000.0).round() / 10000.0,
            "answers_per_s": ((refs.len() as f64 / best) * 100.0).round() / 100.0,
            "harmful": harmful,
        })
    );
    ExitCode::SUCCESS
}
