//! `safedrift eval`: one evaluation of the models on the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use safedrift::config;
use safedrift::evaluation;
use safedrift::pipeline::{EvalError, Stopped};
use safedrift::report;
use safedrift::resolve::{ResolvedModel, Resolver};
use safedrift::store::{ModelRef, Store};

use crate::{
    load_config, resolve_failed, usage, EvalArgs, EvalOutput, EXIT_BACKEND, EXIT_DRIFT,
    EXIT_INTERRUPTED,
};

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
    // `--probe prefill:K` is the prefilling attack, as `--attack prefill:K`.
    let names = (!args.probes.is_empty()).then_some(&args.probes[..]);
    let mut probes = config
        .eval
        .probes(names, &[])
        .map_err(|e| usage(format!("--probe: {e}")))?;
    let attacks = config
        .eval
        .probes(Some(&[]), &args.attacks)
        .map_err(|e| usage(format!("--attack: {e}")))?;
    for m in attacks.attacks {
        if !probes.attacks.contains(&m) {
            probes.attacks.push(m);
        }
    }
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
    let plan = plan.with_probes(probes);
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

pub(crate) async fn eval(args: EvalArgs) -> u8 {
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
        Err(evaluation::Failure::Unsupported(why)) => {
            bar.abandon();
            usage(why)
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
        EvalOutput::Json => serde_json::to_writer_pretty(&mut stdout, doc)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout)),
        EvalOutput::Table => write!(stdout, "{}", report::table(doc)),
        EvalOutput::Junit => write!(stdout, "{}", report::junit(doc)),
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
