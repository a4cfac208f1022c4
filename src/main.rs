//! The `safedrift` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use safedrift::backend::Decoding;
use safedrift::config::{self, Config};
use safedrift::pipeline::{self, EvalError, Job, Stopped};
use safedrift::report::{self, Run};
use safedrift::resolve::Resolver;
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
    /// Train the local classifier judge on a teacher's verdicts and report
    /// its held-out agreement with the teacher.
    Distill(Box<DistillArgs>),
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
        Command::Eval(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(eval(*args))
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

async fn eval(args: EvalArgs) -> u8 {
    let config = match load_config(args.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let concurrency = args.concurrency.unwrap_or(config.eval.concurrency);
    if concurrency == 0 {
        return usage("--concurrency must be at least 1");
    }
    let decoding = Decoding {
        max_new_tokens: args.max_new_tokens.unwrap_or(config.eval.max_new_tokens),
        temperature: config.eval.temperature,
        top_p: config.eval.top_p,
        seed: config.eval.seed,
    };
    if decoding.max_new_tokens == 0 {
        return usage("--max-new-tokens must be at least 1");
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
    let mut benchmarks = Vec::new();
    for spec in &specs {
        match resolver.benchmark(spec) {
            Ok(b) => benchmarks.push(b),
            Err(e) => return usage(e),
        }
    }
    let benchmarks = Arc::new(benchmarks);
    let judge = match resolver.judge(&args.judge) {
        Ok(j) => j,
        Err(e) => return usage(e),
    };
    let audit = match resolver.audit(&args.judge) {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    let candidate = match resolver.model(&args.model) {
        Ok(m) => m,
        Err(e) => return resolve_failed(e),
    };
    let baseline = match args
        .baseline
        .as_deref()
        .map(|b| resolver.model(b))
        .transpose()
    {
        Ok(b) => b,
        Err(e) => return resolve_failed(e),
    };
    let template_name = args
        .template
        .clone()
        .or_else(|| candidate.template.clone())
        .unwrap_or_else(|| "default".into());
    let template = match resolver.template(&template_name) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let store = match Store::open(&data_dir) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let _flusher = store.spawn_flusher();

    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: finishing the prompts in flight (Ctrl-C again to quit at once)"
                );
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
            }
        });
    }

    let job_for = |model: &safedrift::resolve::ResolvedModel| Job {
        model: ModelRef {
            spec: model.spec.clone(),
            revision: None,
            registry: None,
        },
        backend: model.backend.clone(),
        template: template.clone(),
        decoding: decoding.clone(),
        benchmarks: benchmarks.clone(),
        judge: judge.clone(),
        judge_spec: args.judge.clone(),
        limit: args.limit,
    };
    let bar = progress_bar();
    let mut baseline_done = None;
    if let Some(base) = &baseline {
        match pipeline::evaluate(&store, &job_for(base), concurrency, &bar, &cancel).await {
            Ok(mut done) => {
                if let Some(plan) = &audit {
                    pipeline::audit_run(&store, &mut done.0, &done.1, plan, concurrency).await;
                }
                baseline_done = Some(done)
            }
            Err(stopped) => {
                bar.abandon();
                eprintln!("error: {stopped}");
                return stopped_code(&stopped);
            }
        }
    }
    let (mut run, results) =
        match pipeline::evaluate(&store, &job_for(&candidate), concurrency, &bar, &cancel).await {
            Ok(done) => done,
            Err(stopped) => {
                bar.abandon();
                eprintln!("error: {stopped}");
                return stopped_code(&stopped);
            }
        };
    bar.finish_and_clear();
    if let Some(plan) = &audit {
        pipeline::audit_run(&store, &mut run, &results, plan, concurrency).await;
    }

    let doc = match &baseline_done {
        Some((base_run, base_results)) => {
            let doc = Run::compared(&run, &results, base_run, base_results, &rules);
            run.baseline_run = Some(base_run.id.clone());
            run.drift = doc.drift.clone();
            if let Err(e) = store.put_run(&run) {
                eprintln!("error: {e}");
                return EXIT_BACKEND;
            }
            doc
        }
        None => Run::new(&run, &results),
    };
    let _ = store.flush().await;

    if let Some(path) = &args.results {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            if let Some((base_run, base_results)) = &baseline_done {
                report::write_results(&mut out, base_run, base_results)?;
            }
            report::write_results(&mut out, &run, &results)?;
            out.flush()
        });
        if let Err(e) = written {
            return usage(format!("cannot write results to {}: {e}", path.display()));
        }
    }
    let mut stdout = std::io::stdout().lock();
    let printed = match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut stdout, &doc)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout)),
        Output::Table => write!(stdout, "{}", report::table(&doc)),
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
