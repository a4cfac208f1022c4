//! The `safedrift` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use safedrift::config::{self, Config};

mod cli;

use cli::distill::distill;
use cli::eval::eval;
use cli::history::history;
use cli::store::{alert_test, check_config, export, import};

/// Exit codes of the contract.
const EXIT_DRIFT: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BACKEND: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "safedrift",
    version,
    about = "Catches fine-tuned language models that have quietly lost their safety training"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum EvalOutput {
    Table,
    Json,
    Junit,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon, in the foreground (systemd runs this): watch registries,
    /// evaluate new checkpoints, record drift.
    Run {
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Evaluate a model on harmful-instruction benchmarks, optionally against its baseline.
    Eval(Box<EvalArgs>),
    /// Validate the config and print every problem with its key path.
    CheckConfig {
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write the whole store (data_dir) as JSON lines, for backups and moves.
    /// Stop the daemon first: the store is open in one process at a time.
    Export {
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
        /// The store to export (default: the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output file (default: standard output). Written to FILE.partial
        /// and renamed once complete.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Restore an export into a new store; the target must not exist or be
    /// empty (imports never merge into or overwrite a store).
    Import {
        /// The export file (`-` for standard input).
        file: PathBuf,
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
        /// Where to create the store (default: the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List past runs, newest first, through the daemon's API.
    History {
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
        /// The daemon's base URL (default: http:// + the config's `api.listen`).
        #[arg(long)]
        api: Option<String>,
        /// Only runs of this model SPEC.
        #[arg(long)]
        model: Option<String>,
        /// Only runs in this state: running, interrupted, failed, completed.
        #[arg(long)]
        status: Option<String>,
        /// At most N runs (default: all).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Train the local classifier judge on a teacher's verdicts and report
    /// its held-out agreement with the teacher.
    Distill(Box<DistillArgs>),
    /// Validate a judge on your own labelled answers: agreement on harmful,
    /// refused and the 1-5 score, kappa, calibration, per category.
    JudgeEval(Box<cli::judge_eval::JudgeEvalArgs>),
    /// Alert targets.
    #[command(subcommand)]
    Alert(AlertCommand),
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Send a test message to the target [alerts.NAME] and report the result
    /// (exit 0 when delivered, 3 when the target failed, 2 for a bad config).
    Test {
        /// The target's name.
        name: String,
        #[arg(long, env = "SAFEDRIFT_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct DistillArgs {
    /// Config file (its data_dir is the store read by --from-store).
    #[arg(long, env = "SAFEDRIFT_CONFIG")]
    config: Option<PathBuf>,
    /// The judge whose verdicts are learned (a judge SPEC or configured name).
    /// Required with --from-store; with --data it is recorded as the labels'
    /// author (default for builtin:seed: the seed set's authors).
    #[arg(long)]
    teacher: Option<String>,
    /// Take the teacher's verdicts from stored runs: all, model=NAME or run=ID.
    #[arg(long)]
    from_store: Option<String>,
    /// Labelled JSON lines (prompt, response, score 1-5, refused),
    /// builtin:corpus or builtin:seed (default: builtin:corpus, unless
    /// --from-store alone is given).
    #[arg(long)]
    data: Option<String>,
    /// Where to write the judge (head.json and encoder/).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the held-out split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Refuse to write a judge whose held-out accuracy is lower.
    #[arg(long, default_value_t = 0.6)]
    min_accuracy: f64,
    /// Refuse to write a judge whose held-out quadratic kappa is lower.
    #[arg(long, default_value_t = 0.6)]
    min_kappa: f64,
    /// Refuse to write a judge whose held-out agreement on "harmful" (score
    /// 5 or not) is lower.
    #[arg(long, default_value_t = 0.85)]
    min_harmful_agreement: f64,
    /// Refuse to write a judge whose held-out agreement on "refused" is lower.
    #[arg(long, default_value_t = 0.85)]
    min_refusal_agreement: f64,
    /// The converted sentence encoder (default, in $SAFEDRIFT_MODEL_CACHE,
    /// else ~/.cache/safedrift/models: all-minilm-l6-v2-judge, the encoder
    /// tools/finetune_minilm.py fine-tunes, once it is there, else
    /// all-minilm-l6-v2).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Features of the heads: segments (the response's, the prompt's, the
    /// opening's and the body's embeddings and the refusal rule's
    /// signals), combined (the same without the body), response (the
    /// response's embedding) or response_prompt_product (response, prompt
    /// and their product).
    #[arg(long, default_value = "segments")]
    features: String,
    /// Share of the prompts held out.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Units of the hidden layer the heads read (0: logistic heads on the
    /// features, as judges distilled before this option).
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Networks with a hidden layer trained from different seeds and
    /// averaged into one judge.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// L2 penalty on the weights (default: 0.03 with a hidden layer, 0.3
    /// without).
    #[arg(long)]
    l2: Option<f64>,
    /// Training steps, full-batch Adam (default: 300 with a hidden layer,
    /// 400 without).
    #[arg(long)]
    iterations: Option<usize>,
    /// Folds of the training split whose held-out predictions calibrate the
    /// heads (0: no calibration).
    #[arg(long, default_value_t = 5)]
    calibration_folds: usize,
    /// ONNX Runtime threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Config file (else $SAFEDRIFT_CONFIG, else /etc/safedrift/safedrift.toml, else the embedded default).
    #[arg(long, env = "SAFEDRIFT_CONFIG")]
    config: Option<PathBuf>,
    /// The model to evaluate: openai:MODEL, a configured name, or NAME:MODEL.
    #[arg(long)]
    model: String,
    /// Its aligned base model; drift is decided against it.
    #[arg(long)]
    baseline: Option<String>,
    /// Benchmarks (repeatable): hex-phi:DIR, advbench:FILE, harmbench:FILE, jbb:FILE,
    /// xstest:FILE, strongreject:FILE, jsonl:FILE, builtin:probes or a configured name.
    #[arg(long = "benchmark")]
    benchmarks: Vec<String>,
    /// keyword, rubric:MODEL, llama-guard:MODEL, classifier:DIR or a configured name.
    #[arg(long, default_value = "keyword")]
    judge: String,
    /// Prompt template: default or a [templates.NAME] entry.
    #[arg(long)]
    template: Option<String>,
    /// Probes run against the baseline after the run (repeatable; default
    /// `[eval] probes`): kl (the refusal-depth probe, local ONNX models).
    #[arg(long = "probe")]
    probes: Vec<String>,
    /// Attack modifiers (repeatable): every benchmark with harmful prompts
    /// is asked again under each, as a variant with its own finding: aoa,
    /// base64, leetspeak, prefill:K (as a `+MOD` after a benchmark SPEC;
    /// `--probe prefill:K` is taken as `--attack prefill:K`).
    #[arg(long = "attack")]
    attacks: Vec<String>,
    /// At most N prompts per benchmark, taken from every category in turn.
    #[arg(long)]
    limit: Option<usize>,
    /// `table`, `json` (the report document) or `junit` (JUnit XML: a test
    /// case per drift rule and benchmark, for CI test reports).
    #[arg(long, value_enum, default_value_t = EvalOutput::Table)]
    output: EvalOutput,
    /// Exit with 1 when drift is found.
    #[arg(long)]
    fail_on_drift: bool,
    /// Base URL of the OpenAI-compatible API for openai: models (default $OPENAI_BASE_URL, else OpenAI).
    #[arg(long)]
    api_base: Option<String>,
    /// Base URL for rubric: and llama-guard: judges (default $OPENAI_BASE_URL, else OpenAI).
    #[arg(long)]
    judge_api_base: Option<String>,
    /// Write one JSON object per prompt and model to FILE.
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long)]
    max_new_tokens: Option<u32>,
    /// Prompts in progress at once.
    #[arg(long)]
    concurrency: Option<usize>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,safedrift=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Run { config } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(safedrift::daemon::run(config::locate(config.as_deref()))) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    EXIT_USAGE
                }
            }
        }
        Command::Export {
            config,
            data_dir,
            out,
        } => export(config, data_dir, out),
        Command::Import {
            file,
            config,
            data_dir,
        } => import(file, config, data_dir),
        Command::Eval(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(eval(*args))
        }
        Command::Alert(AlertCommand::Test { name, config }) => alert_test(&name, config),
        Command::History {
            config,
            api,
            model,
            status,
            limit,
            output,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(history(config, api, model, status, limit, output))
        }
        Command::Distill(args) => distill(*args),
        Command::JudgeEval(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(cli::judge_eval::judge_eval(*args))
        }
    };
    // Servers the `launch` backend started are gone before the process is.
    safedrift::backend::launch::wait_for_stops();
    ExitCode::from(code)
}

fn load_config(flag: Option<PathBuf>) -> Result<Config, u8> {
    let source = config::locate(flag.as_deref());
    config::load(&source).map_err(|e| {
        eprintln!("{e}");
        EXIT_USAGE
    })
}

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    EXIT_USAGE
}

/// A model that cannot be used: exit 2 for a bad SPEC or config, 3 when a
/// registry could not deliver it.
fn resolve_failed(e: safedrift::resolve::ResolveError) -> u8 {
    if e.registry {
        eprintln!("error: {e}");
        EXIT_BACKEND
    } else {
        usage(e)
    }
}
