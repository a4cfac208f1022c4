//! The `safedrift` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use safedrift::config::{self, Config};
use safedrift::evaluation;
use safedrift::pipeline::{EvalError, Stopped};
use safedrift::report;
use safedrift::resolve::{ResolvedModel, Resolver};
use safedrift::store::{ModelRef, Store};

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
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["from_store", "data"])))]
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
    /// Labelled JSON lines (prompt, response, score 1-5, refused), or builtin:seed.
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
    #[arg(long, default_value_t = 0.7)]
    min_kappa: f64,
    /// The converted sentence encoder (default: all-minilm-l6-v2 in
    /// $SAFEDRIFT_MODEL_CACHE, else ~/.cache/safedrift/models).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Features of the head: response (the response's embedding) or
    /// response_prompt_product (response, prompt and their product).
    #[arg(long, default_value = "response")]
    features: String,
    /// Share of the prompts held out.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// L2 penalty of the logistic regression.
    #[arg(long, default_value_t = 0.1)]
    l2: f64,
    /// Training steps (full-batch Adam).
    #[arg(long, default_value_t = 400)]
    iterations: usize,
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
    /// At most N prompts per benchmark, taken from every category in turn.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
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
    };
    ExitCode::from(code)
}

fn load_config(flag: Option<PathBuf>) -> Result<Config, u8> {
    let source = config::locate(flag.as_deref());
    config::load(&source).map_err(|e| {
        eprintln!("{e}");
        EXIT_USAGE
    })
}

fn check_config(flag: Option<PathBuf>) -> u8 {
    let source = config::locate(flag.as_deref());
    match config::load(&source) {
        Ok(_) => {
            println!("{source}: ok");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{} problem(s) found", e.problems.len());
            EXIT_USAGE
        }
    }
}

fn store_dir(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<PathBuf, u8> {
    match data_dir {
        Some(d) => Ok(d),
        None => Ok(load_config(config)?.data_dir.clone()),
    }
}

fn export(config: Option<PathBuf>, data_dir: Option<PathBuf>, out: Option<PathBuf>) -> u8 {
    let dir = match store_dir(config, data_dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if !dir.exists() {
        return usage(format!(
            "{}: no store here (nothing to export)",
            dir.display()
        ));
    }
    let store = match safedrift::store::Store::open(&dir) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let written = match &out {
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            safedrift::backup::export(&store, &mut lock)
        }
        Some(path) => {
            let mut partial = path.as_os_str().to_owned();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let result = std::fs::File::create(&partial)
                .map_err(safedrift::backup::BackupError::Write)
                .and_then(|f| {
                    let mut w = std::io::BufWriter::new(f);
                    let n = safedrift::backup::export(&store, &mut w)?;
                    let f = w
                        .into_inner()
                        .map_err(|e| safedrift::backup::BackupError::Write(e.into_error()))?;
                    f.sync_all()
                        .map_err(safedrift::backup::BackupError::Write)?;
                    std::fs::rename(&partial, path)
                        .map_err(safedrift::backup::BackupError::Write)?;
                    Ok(n)
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            result
        }
    };
    match written {
        Ok(n) => {
            eprintln!("exported {n} records from {}", dir.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_BACKEND
        }
    }
}

fn import(file: PathBuf, config: Option<PathBuf>, data_dir: Option<PathBuf>) -> u8 {
    let dir = match store_dir(config, data_dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = if file.as_os_str() == "-" {
        let stdin = std::io::stdin();
        safedrift::backup::import(&mut stdin.lock(), "<stdin>", &dir)
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => safedrift::backup::import(
                &mut std::io::BufReader::new(f),
                &file.display().to_string(),
                &dir,
            ),
            Err(e) => return usage(format!("{}: cannot read: {e}", file.display())),
        }
    };
    match result {
        Ok(n) => {
            eprintln!("imported {n} records into {}", dir.display());
            0
        }
        Err(e) => usage(e),
    }
}

fn alert_test(name: &str, flag: Option<PathBuf>) -> u8 {
    let config = match load_config(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(kind) = config.alerts.get(name).map(|a| a.kind) else {
        let known: Vec<&str> = config.alerts.keys().map(String::as_str).collect();
        return usage(format!(
            "no alert target named {name:?} (configured: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let started = std::time::Instant::now();
    match runtime.block_on(safedrift::alerts::send_test(&config, name)) {
        Ok(id) => {
            println!(
                "{name} ({kind}): delivered test message {id} in {} ms",
                started.elapsed().as_millis()
            );
            0
        }
        Err(e) => {
            eprintln!("{name} ({kind}): failed: {e}");
            EXIT_BACKEND
        }
    }
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

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:20!} [{bar:30}] {pos}/{len} {per_sec:>9} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn stopped_code(s: &Stopped) -> u8 {
    match s.error {
        EvalError::Interrupted => EXIT_INTERRUPTED,
        _ => EXIT_BACKEND,
    }
}

/// What `eval` evaluates, resolved from its flags over the config.
struct EvalInputs {
    plan: evaluation::Plan,
    candidate: ResolvedModel,
    baseline: Option<ResolvedModel>,
    rules: config::DriftConfig,
    data_dir: PathBuf,
    concurrency: usize,
}

/// Resolves `eval`'s flags: an error is the exit code, its message printed.
async fn eval_inputs(args: &EvalArgs) -> Result<EvalInputs, u8> {
    let config = load_config(args.config.clone())?;
    let concurrency = args.concurrency.unwrap_or(config.eval.concurrency);
    if concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    let mut decoding = evaluation::decoding(&config.eval);
    decoding.max_new_tokens = args.max_new_tokens.unwrap_or(decoding.max_new_tokens);
    if decoding.max_new_tokens == 0 {
        return Err(usage("--max-new-tokens must be at least 1"));
    }
    let rules = config.drift.clone();
    let data_dir = config.data_dir.clone();
    let resolver = Resolver::new(
        config,
        args.api_base.clone(),
        args.judge_api_base.clone(),
        concurrency,
    );
    let specs = if args.benchmarks.is_empty() {
        vec!["builtin:probes".to_string()]
    } else {
        args.benchmarks.clone()
    };
    let candidate = resolver.model(&args.model).await.map_err(resolve_failed)?;
    let template = args
        .template
        .clone()
        .or_else(|| candidate.template.clone())
        .unwrap_or_else(|| "default".into());
    let plan = evaluation::Plan::resolve(
        &resolver,
        &specs,
        &args.judge,
        &template,
        decoding,
        args.limit,
    )
    .map_err(|problems| {
        usage(
            problems
                .into_iter()
                .map(|p| p.message)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let baseline = match args.baseline.as_deref() {
        Some(b) => Some(resolver.model(b).await.map_err(resolve_failed)?),
        None => None,
    };
    Ok(EvalInputs {
        plan,
        candidate,
        baseline,
        rules,
        data_dir,
        concurrency,
    })
}

/// A token cancelled by the first Ctrl-C (the prompts in flight finish);
/// a second one exits at once.
fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "interrupted: finishing the prompts in flight (Ctrl-C again to quit at once)"
            );
            token.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });
    cancel
}

async fn eval(args: EvalArgs) -> u8 {
    let inputs = match eval_inputs(&args).await {
        Ok(i) => i,
        Err(code) => return code,
    };
    let store = match Store::open(&inputs.data_dir) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let _flusher = store.spawn_flusher();
    let cancel = cancel_on_ctrl_c();
    let subject = |model: &ResolvedModel| evaluation::Subject {
        model: ModelRef {
            spec: model.spec.clone(),
            revision: None,
            registry: None,
        },
        backend: model.backend.clone(),
    };
    let bar = progress_bar();
    let locks = evaluation::KeyedLocks::default();
    let evaluator = evaluation::Evaluator {
        store: &store,
        concurrency: inputs.concurrency,
        progress: &bar,
        cancel: &cancel,
        locks: &locks,
    };
    // The candidate is evaluated afresh (an earlier completed run of it is
    // not reused); the baseline's completed run is.
    let outcome = evaluator
        .evaluate(
            &inputs.plan,
            subject(&inputs.candidate),
            inputs.baseline.as_ref().map(subject),
            false,
            None,
            &inputs.rules,
        )
        .await;
    match outcome {
        Ok(outcome) => {
            bar.finish_and_clear();
            write_eval_output(&args, &outcome)
        }
        Err(evaluation::Failure::Stopped(stopped)) => {
            bar.abandon();
            eprintln!("error: {stopped}");
            stopped_code(&stopped)
        }
        Err(e) => {
            bar.abandon();
            eprintln!("error: {e}");
            EXIT_BACKEND
        }
    }
}

/// Writes `--results` and the report; the exit code follows the drift and
/// `--fail-on-drift`.
fn write_eval_output(args: &EvalArgs, outcome: &evaluation::Outcome) -> u8 {
    if let Some(path) = &args.results {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            if let Some((base_run, base_results)) = &outcome.baseline {
                report::write_results(&mut out, base_run, base_results)?;
            }
            report::write_results(&mut out, &outcome.run, &outcome.results)?;
            out.flush()
        });
        if let Err(e) = written {
            return usage(format!("cannot write results to {}: {e}", path.display()));
        }
    }
    let doc = &outcome.report;
    let mut stdout = std::io::stdout().lock();
    let printed = match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut stdout, doc)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout)),
        Output::Table => write!(stdout, "{}", report::table(doc)),
    };
    if let Err(e) = printed {
        eprintln!("error: cannot write the report: {e}");
        return EXIT_BACKEND;
    }
    let drift = doc.drift.as_ref().is_some_and(|d| d.detected);
    if drift && args.fail_on_drift {
        EXIT_DRIFT
    } else {
        0
    }
}

/// `safedrift history`: pages through `GET /api/v1/runs` (the daemon holds
/// the store), following cursors.
async fn history(
    config: Option<PathBuf>,
    api: Option<String>,
    model: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    output: Output,
) -> u8 {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let token = match safedrift::api::load_token(&config.api) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let base = match api {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let listen = config
                .api
                .listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:");
            format!("http://{listen}")
        }
    };
    let mut url = match reqwest::Url::parse(&format!("{base}/api/v1/runs")) {
        Ok(u) => u,
        Err(e) => return usage(format!("--api {base}: {e}")),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("http client");
    let mut runs: Vec<serde_json::Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map_or(500, |l| (l - runs.len()).clamp(1, 500));
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            q.append_pair("limit", &want.to_string());
            if let Some(m) = &model {
                q.append_pair("model", m);
            }
            if let Some(s) = &status {
                q.append_pair("status", s);
            }
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
        }
        let mut request = client.get(url.clone());
        if let Some(t) = &token {
            request = request.bearer_auth(t);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot reach the daemon at {base}: {e}. Is `safedrift run` running? (--api URL)");
                return EXIT_BACKEND;
            }
        };
        let code = response.status();
        let body: serde_json::Value = match response.json().await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {base} answered {code} with something that is not JSON: {e}");
                return EXIT_BACKEND;
            }
        };
        if code == reqwest::StatusCode::UNAUTHORIZED {
            return usage(format!(
                "{base} refused the API token: set `api.token_file` or `api.token_env` in the config to the daemon's token"
            ));
        }
        if !code.is_success() {
            let message = body["error"].as_str().unwrap_or("unexpected answer");
            return if code.is_client_error() {
                usage(format!("{base}: {message}"))
            } else {
                eprintln!("error: {base} answered {code}: {message}");
                EXIT_BACKEND
            };
        }
        if let Some(items) = body["items"].as_array() {
            runs.extend(items.iter().cloned());
        }
        cursor = body["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || limit.is_some_and(|l| runs.len() >= l) {
            break;
        }
    }
    let mut out = std::io::stdout().lock();
    let written = match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(runs)).expect("json")
        ),
        Output::Table => {
            let mut text = format!(
                "{:<30} {:<11} {:<40} {:<14} {:<20} {:>6} {}\n",
                "run", "status", "model", "revision", "started", "total", "drift"
            );
            for r in &runs {
                let drift = match r["drift_detected"].as_bool() {
                    Some(true) => "DRIFT",
                    Some(false) => "ok",
                    None => "-",
                };
                let revision: String = r["model"]["revision"]
                    .as_str()
                    .unwrap_or("-")
                    .chars()
                    .take(14)
                    .collect();
                text.push_str(&format!(
                    "{:<30} {:<11} {:<40} {:<14} {:<20} {:>6} {}\n",
                    r["id"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["model"]["spec"].as_str().unwrap_or(""),
                    revision,
                    r["started_at"].as_str().unwrap_or(""),
                    r["total"].as_u64().unwrap_or(0),
                    drift
                ));
            }
            if runs.is_empty() {
                text.push_str("(no runs)\n");
            }
            write!(out, "{text}")
        }
    };
    match written {
        Ok(()) => 0,
        Err(_) => EXIT_BACKEND,
    }
}

fn distill(args: DistillArgs) -> u8 {
    use safedrift::distill as d;
    use safedrift_judges::classifier::{Encoder, EncoderOptions, Features};

    let Some(features) = Features::parse(&args.features) else {
        return usage(format!(
            "--features {:?}: expected response_prompt_product or response",
            args.features
        ));
    };
    if !(0.0 < args.test_fraction && args.test_fraction < 1.0) {
        return usage("--test-fraction must be between 0 and 1");
    }
    if args.from_store.is_some() && args.teacher.is_none() {
        return usage("--from-store needs --teacher: the judge whose stored verdicts are learned");
    }
    let mut records = Vec::new();
    let mut sources = Vec::new();
    if let Some(spec) = &args.data {
        match d::load_data(spec) {
            Ok(r) => records.extend(r),
            Err(e) => return usage(e),
        }
        sources.push(spec.clone());
    }
    if let Some(selection) = &args.from_store {
        let selection = match d::Selection::parse(selection) {
            Ok(s) => s,
            Err(e) => return usage(e),
        };
        let config = match load_config(args.config.clone()) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let teacher = args.teacher.clone().unwrap_or_default();
        let data_dir = config.data_dir.clone();
        let resolver = Resolver::new(config, None, None, 1);
        let identity = resolver.judge(&teacher).ok().map(|j| j.identity());
        let store = match Store::open(&data_dir) {
            Ok(s) => s,
            Err(e) => return usage(e),
        };
        match d::from_store(&store, &selection, &teacher, identity.as_deref()) {
            Ok(r) => {
                eprintln!(
                    "{} judged answers by {teacher} in the store {}",
                    r.len(),
                    data_dir.display()
                );
                records.extend(r);
            }
            Err(e) => return usage(e),
        }
        sources.push(format!(
            "store:{}",
            args.from_store.as_deref().unwrap_or("")
        ));
    }
    if records.is_empty() {
        return usage("no teacher-labelled records to learn from");
    }
    let teacher = match (&args.teacher, args.data.as_deref()) {
        (Some(t), _) => t.clone(),
        (None, Some("builtin:seed")) => d::SEED_TEACHER.to_string(),
        (None, Some(file)) => format!("labels of {file}"),
        (None, None) => unreachable!("--from-store needs --teacher"),
    };
    let encoder_dir = args.encoder.clone().unwrap_or_else(d::default_encoder_dir);
    if let Err(e) = d::check_encoder_dir(&encoder_dir) {
        return usage(e);
    }
    let env = match safedrift::backend::onnx::runtime::environment(None) {
        Ok(env) => env,
        Err(e) => return usage(e),
    };
    let mut options = EncoderOptions::default();
    if let Some(t) = args.threads {
        options.threads = t.max(1);
    }
    let encoder = match Encoder::load(&env, &encoder_dir, &options) {
        Ok(e) => e,
        Err(e) => return usage(e),
    };
    eprintln!(
        "embedding {} records with {} ({})...",
        records.len(),
        encoder.identity.name,
        encoder_dir.display()
    );
    let distill_options = d::DistillOptions {
        teacher,
        source: sources.join(" + "),
        seed: args.seed,
        test_fraction: args.test_fraction,
        features,
        train: d::TrainOptions {
            l2: args.l2,
            iterations: args.iterations,
            ..d::TrainOptions::default()
        },
    };
    let head = match d::distill(&encoder, &records, &distill_options) {
        Ok(h) => h,
        Err(e) => return usage(e),
    };
    print!("{}", d::format_report(&head));
    let short = d::shortfalls(
        &head.held_out,
        &d::Minimums {
            accuracy: args.min_accuracy,
            kappa: args.min_kappa,
        },
    );
    if !short.is_empty() {
        eprintln!(
            "error: not writing {}: {}",
            args.out.display(),
            short.join("; ")
        );
        return EXIT_USAGE;
    }
    if let Err(e) = d::write_judge(&args.out, &head, &encoder_dir) {
        eprintln!("error: {e}");
        return EXIT_BACKEND;
    }
    println!(
        "wrote {}: use it with --judge classifier:{}",
        args.out.display(),
        args.out.display()
    );
    0
}
