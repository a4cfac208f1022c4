//! Greedy decoding of token-id prompts with safedrift's ONNX backend pieces,
//! timed: the Rust side of `benches/onnx_decode.sh`.
//!
//! ```text
//! onnx_decode decode MODEL_DIR INPUT.json [--batch N] [--ignore-eos] [--threads N]
//! onnx_decode tokenize MODEL_DIR BENCHMARK.jsonl
//! onnx_decode detok MODEL_DIR OUTPUTS.json
//! ```
//!
//! `decode` reads `{"prompts": [[ids...], ...], "max_new_tokens": N}`, opens
//! the model as the backend does (`ModelDir`, `runtime::open_session`,
//! `Decoder`), decodes the prompts greedily in batches of `--batch` (in file
//! order, each batch through `Decoder::generate`, which drops finished rows)
//! with the repetition guard off, and prints one JSON document:
//! `{"engine", "batch", "prompts", "load_s", "wall_s", "tokens", "tokens_per_s",
//! "outputs"}`. `wall_s` is the decoding time (prefill included, session load
//! excluded); `tokens` the ids generated (end-of-sequence not counted).
//! `--ignore-eos` decodes exactly `max_new_tokens` per prompt: the end token
//! is then an ordinary token.
//!
//! `tokenize` prints `{"ids": [prompt ids...], "prompts": [[token ids...]]}` for
//! a `jsonl` benchmark: each prompt normalized as `safedrift eval` loads it,
//! put in the default template's messages, rendered with the model's chat
//! template and tokenized exactly as the backend does.
//!
//! `detok` reads `{"outputs": [[ids...], ...]}` and prints `{"texts": [...]}`,
//! decoded as the backend decodes answers (special tokens skipped).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use safedrift::backend::onnx::decode::{Decoder, RepetitionGuard, Sampling, SeqRequest};
use safedrift::backend::onnx::model::ModelDir;
use safedrift::backend::onnx::{prompt_ids, runtime, Device};
use safedrift::store::Template;
use serde_json::{json, Value};

fn usage() -> ExitCode {
    eprintln!(
        "usage: onnx_decode decode MODEL_DIR INPUT.json [--batch N] [--ignore-eos] [--threads N]\n       onnx_decode tokenize MODEL_DIR BENCHMARK.jsonl\n       onnx_decode detok MODEL_DIR OUTPUTS.json"
    );
    ExitCode::from(2)
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("onnx_decode: error: {message}");
    ExitCode::from(1)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}

fn id_lists(value: Option<&Value>, what: &str) -> Result<Vec<Vec<u32>>, String> {
    value
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{what}` must be a list of lists of token ids"))?
        .iter()
        .map(|p| {
            p.as_array()
                .ok_or_else(|| format!("`{what}` must be a list of lists of token ids"))?
                .iter()
                .map(|t| {
                    t.as_u64()
                        .map(|t| t as u32)
                        .ok_or_else(|| format!("`{what}`: {t} is not a token id"))
                })
                .collect()
        })
        .collect()
}

fn main() -> ExitCode {
    // RUST_LOG=safedrift=debug shows where each batch's time went.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return usage();
    }
    let (command, dir, file) = (&args[0], PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let result = match command.as_str() {
        "decode" => decode(&dir, &file, &args[3..]),
        "tokenize" if args.len() == 3 => tokenize(&dir, &file),
        "detok" if args.len() == 3 => detok(&dir, &file),
        _ => return usage(),
    };
    match result {
        Ok(doc) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn tokenize(dir: &Path, bench: &Path) -> Result<Value, String> {
    let model = ModelDir::open(dir).map_err(|e| e.0)?;
    let benchmark = safedrift::benchmark::load("jsonl", bench, false).map_err(|e| e.to_string())?;
    let template = Template::default_template();
    let mut ids = Vec::new();
    let mut prompts = Vec::new();
    for p in &benchmark.prompts {
        ids.push(p.id.clone());
        prompts.push(prompt_ids(&model, &template.messages(&p.text)).map_err(|e| e.message)?);
    }
    Ok(json!({"ids": ids, "prompts": prompts}))
}

fn detok(dir: &Path, outputs: &Path) -> Result<Value, String> {
    let model = ModelDir::open(dir).map_err(|e| e.0)?;
    let outputs = id_lists(read_json(outputs)?.get("outputs"), "outputs")?;
    let texts: Vec<String> = outputs
        .iter()
        .map(|o| model.tokenizer.decode(o, true).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(json!({ "texts": texts }))
}

fn decode(dir: &Path, input: &Path, flags: &[String]) -> Result<Value, String> {
    let mut batch = 1usize;
    let mut ignore_eos = false;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} takes a positive integer"))
        };
        match flag.as_str() {
            "--batch" => batch = number("--batch")?,
            "--threads" => threads = number("--threads")?,
            "--ignore-eos" => ignore_eos = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let request = read_json(input)?;
    let prompts = id_lists(request.get("prompts"), "prompts")?;
    let max_new_tokens = request
        .get("max_new_tokens")
        .and_then(Value::as_u64)
        .ok_or("`max_new_tokens` must be a non-negative integer")?
        as usize;

    let loading = Instant::now();
    let model = ModelDir::open(dir).map_err(|e| e.0)?;
    let env = runtime::environment(None).map_err(|e| e.0)?;
    let (session, _) =
        runtime::open_session(&env, &model.onnx, Device::Cpu, false, threads).map_err(|e| e.0)?;
    let c = &model.config;
    let eos = if ignore_eos {
        Vec::new()
    } else {
        c.eos.clone()
    };
    let mut decoder =
        Decoder::new(session, c.layers, c.kv_heads, c.head_dim, eos, c.pad).map_err(|e| e.0)?;
    let load_s = loading.elapsed().as_secs_f64();

    let requests: Vec<SeqRequest> = prompts
        .iter()
        .map(|ids| SeqRequest {
            ids: ids.clone(),
            max_new_tokens,
            sampling: Sampling::default(),
            guard: RepetitionGuard {
                window: 0,
                max_period: 0,
            },
        })
        .collect();
    let mut outputs = vec![Vec::new(); prompts.len()];
    let started = Instant::now();
    for (index, chunk) in requests.chunks(batch).enumerate() {
        decoder
            .generate(chunk, |i, o| outputs[index * batch + i] = o.tokens)
            .map_err(|e| e.0)?;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let tokens: usize = outputs.iter().map(Vec::len).sum();
    Ok(json!({
        "engine": "safedrift",
        "batch": batch,
        "prompts": prompts.len(),
        "load_s": load_s,
        "wall_s": wall_s,
        "tokens": tokens,
        "tokens_per_s": tokens as f64 / wall_s,
        "outputs": outputs,
    }))
}
