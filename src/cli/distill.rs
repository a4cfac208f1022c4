//! `safedrift distill`: trains the local classifier judge on a teacher's
//! verdicts.

use std::path::Path;

use safedrift::distill as d;
use safedrift::resolve::Resolver;
use safedrift::store::Store;
use safedrift_judges::classifier::{Encoder, EncoderOptions, Features, Head};

use crate::{load_config, usage, DistillArgs, EXIT_BACKEND, EXIT_USAGE};

/// The widest hidden layer `--hidden` accepts (its weights, 4 x 1,543
/// values per unit for the default features, are held in memory and in
/// head.json).
const MAX_HIDDEN_UNITS: usize = 1024;
/// The most networks `--members` averages.
const MAX_MEMBERS: usize = 16;

pub(crate) fn distill(args: DistillArgs) -> u8 {
    let Some(features) = Features::parse(&args.features) else {
        return usage(format!(
            "--features {:?}: expected combined, segments, response_prompt_product or response",
            args.features
        ));
    };
    if !(0.0 < args.test_fraction && args.test_fraction < 1.0) {
        return usage("--test-fraction must be between 0 and 1");
    }
    if args.hidden > MAX_HIDDEN_UNITS {
        return usage(format!(
            "--hidden {}: at most {MAX_HIDDEN_UNITS} units",
            args.hidden
        ));
    }
    if !(1..=MAX_MEMBERS).contains(&args.members) {
        return usage(format!(
            "--members {}: between 1 and {MAX_MEMBERS} networks",
            args.members
        ));
    }
    if args.l2.is_some_and(|l2| !(l2.is_finite() && l2 >= 0.0)) {
        return usage("--l2 must be a number, 0 or more");
    }
    if args.iterations == Some(0) {
        return usage("--iterations must be at least 1");
    }
    if args.calibration_folds == 1 {
        return usage("--calibration-folds must be 0 (no calibration) or at least 2");
    }
    if args.from_store.is_some() && args.teacher.is_none() {
        return usage("--from-store needs --teacher: the judge whose stored verdicts are learned");
    }
    let (records, sources) = match labelled_records(&args) {
        Ok(found) => found,
        Err(code) => return code,
    };
    if records.is_empty() {
        return usage("no teacher-labelled records to learn from");
    }
    let teacher = match (&args.teacher, data_spec(&args)) {
        (Some(t), _) => t.clone(),
        (None, Some(spec)) => {
            d::builtin_teacher(spec).map_or_else(|| format!("labels of {spec}"), str::to_string)
        }
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
    if args.encoder.is_none() && encoder_dir.ends_with(d::ENCODER_CACHE_NAME) {
        eprintln!(
            "note: the encoder is not fine-tuned; `python3 tools/finetune_minilm.py` fine-tunes it on the judge corpus, which makes a judge that agrees better on unseen answers (README, \"A local judge\")"
        );
    }
    let distill_options = d::DistillOptions {
        teacher,
        source: sources.join(" + "),
        seed: args.seed,
        test_fraction: args.test_fraction,
        features,
        train: train_options(&args),
        calibration_folds: args.calibration_folds,
    };
    let head = match d::distill(&encoder, &records, &distill_options) {
        Ok(h) => h,
        Err(e) => return usage(e),
    };
    print!("{}", d::format_report(&head));
    write_judge(&args, &head, &encoder_dir)
}

/// The labelled file to learn from: `--data`, else the built-in corpus
/// unless the records come from the store alone.
/// The training settings: the defaults of a hidden layer or of logistic
/// heads, with `--l2` and `--iterations` where given.
fn train_options(args: &DistillArgs) -> d::TrainOptions {
    let base = if args.hidden == 0 {
        d::TrainOptions::logistic()
    } else {
        d::TrainOptions {
            hidden_units: args.hidden,
            members: args.members,
            ..d::TrainOptions::default()
        }
    };
    d::TrainOptions {
        l2: args.l2.unwrap_or(base.l2),
        iterations: args.iterations.unwrap_or(base.iterations),
        seed: args.seed,
        ..base
    }
}

fn data_spec(args: &DistillArgs) -> Option<&str> {
    match (&args.data, &args.from_store) {
        (Some(spec), _) => Some(spec),
        (None, None) => Some(d::DEFAULT_DATA),
        (None, Some(_)) => None,
    }
}

/// The teacher-labelled records of `--data` and `--from-store`, with the
/// names of their sources; an error is the exit code, its message printed.
fn labelled_records(args: &DistillArgs) -> Result<(Vec<d::Record>, Vec<String>), u8> {
    let mut records = Vec::new();
    let mut sources = Vec::new();
    if let Some(spec) = data_spec(args) {
        records.extend(d::load_data(spec).map_err(usage)?);
        sources.push(spec.to_string());
    }
    if let Some(selection) = &args.from_store {
        let selection = d::Selection::parse(selection).map_err(usage)?;
        let config = load_config(args.config.clone())?;
        let teacher = args.teacher.clone().unwrap_or_default();
        let data_dir = config.data_dir.clone();
        let resolver = Resolver::new(config, None, None, 1);
        let identity = resolver.judge(&teacher).ok().map(|j| j.identity());
        let store = Store::open(&data_dir).map_err(usage)?;
        let r = d::from_store(&store, &selection, &teacher, identity.as_deref()).map_err(usage)?;
        eprintln!(
            "{} judged answers by {teacher} in the store {}",
            r.len(),
            data_dir.display()
        );
        records.extend(r);
        sources.push(format!(
            "store:{}",
            args.from_store.as_deref().unwrap_or("")
        ));
    }
    Ok((records, sources))
}

/// Writes the judge when its held-out agreement meets the minimums.
fn write_judge(args: &DistillArgs, head: &Head, encoder_dir: &Path) -> u8 {
    let short = d::shortfalls(
        &head.held_out,
        &d::Minimums {
            accuracy: args.min_accuracy,
            kappa: args.min_kappa,
            harmful: args.min_harmful_agreement,
            refused: args.min_refusal_agreement,
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
    if let Err(e) = d::write_judge(&args.out, head, encoder_dir) {
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
