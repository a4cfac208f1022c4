//! What an API request may name, checked before anything is read.
//!
//! An evaluation queued through the API names only what the operator
//! configured: `[benchmarks.*]`, `[models.*]`, `[backends.*]`, `[judges.*]`
//! and `[templates.*]` entries by name, the built-in probes and keyword
//! judge, models at the endpoints the daemon's environment configures
//! (`openai:MODEL`, `rubric:MODEL`, `llama-guard:MODEL`), and registry
//! models (`hf:`, `mlflow:`) that a configured watcher covers. A local path
//! (`onnx:DIR`, `jsonl:FILE`, `hex-phi:DIR`, `classifier:DIR`, `BACKEND:DIR`
//! ...) is accepted only when it is absolute and, after symlinks and `..`
//! are resolved, lies under one of `[api] allowed_paths` (none by default);
//! a directory's every entry is checked the same way, and FIFOs, sockets
//! and device files are refused (opening one could block or read a
//! device).
//!
//! A refusal names the request's field, never the file: whether a path
//! outside `allowed_paths` exists, or what it holds, is never told. The
//! check runs when the request is posted and again when the daemon
//! evaluates it.

use std::fs;
use std::path::{Path, PathBuf};

use super::request::EvaluationRequest;
use super::ApiError;
use crate::config::{BackendConfig, Config};

/// Longest SPEC or name accepted.
pub const MAX_SPEC_CHARS: usize = 1000;
/// Entries of a directory checked before it is refused as too large.
const MAX_ENTRIES: usize = 10_000;
/// Depth of a directory walk.
const MAX_DEPTH: usize = 8;

/// What a local path must be.
#[derive(Clone, Copy)]
enum Want {
    File,
    Dir,
}

/// Checks every SPEC and name a request carries against the boundary.
pub fn check(config: &Config, req: &EvaluationRequest) -> Result<(), ApiError> {
    if let Some(b) = &req.backend {
        text("backend", b)?;
        if !config.backends.contains_key(b) {
            return Err(ApiError::invalid(
                "backend",
                "no such entry in the config's [backends]",
            ));
        }
    }
    text("model", &req.model)?;
    model(config, "model", &req.model_spec())?;
    if let Some(b) = &req.baseline {
        model(config, "baseline", b)?;
    }
    for (i, spec) in req.benchmark_specs().iter().enumerate() {
        benchmark(config, &format!("benchmarks[{i}]"), spec)?;
    }
    judge(config, "judge", &req.judge_spec())?;
    if let Some(t) = &req.template {
        text("template", t)?;
    }
    Ok(())
}

/// Characters that would let a name forge log lines, mail headers or
/// reorder text on screen.
fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_SPEC_CHARS || value.chars().any(forbidden) {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_SPEC_CHARS} characters, no control or line-separator characters"),
        ));
    }
    Ok(())
}

fn model(config: &Config, field: &str, spec: &str) -> Result<(), ApiError> {
    text(field, spec)?;
    let spec = spec.trim();
    if config.models.contains_key(spec) || config.backends.contains_key(spec) {
        return Ok(());
    }
    let expected = "expected a configured model or backend name, BACKEND:MODEL, openai:MODEL, \
                    hf:OWNER/NAME, mlflow:NAME/VERSION or onnx:DIR";
    let Some((kind, rest)) = spec.split_once(':') else {
        return Err(ApiError::invalid(
            field,
            format!("not a model SPEC: {expected}"),
        ));
    };
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("not a model SPEC: {expected}"),
        ));
    }
    match kind {
        "openai" => Ok(()),
        "onnx" => local(config, field, rest, Want::Dir),
        "hf" | "mlflow" => registry(config, field, kind, rest),
        name => match config.backends.get(name) {
            Some(BackendConfig::Openai(_) | BackendConfig::Vllm(_)) => Ok(()),
            Some(BackendConfig::Onnx(_) | BackendConfig::Launch(_)) => {
                local(config, field, rest, Want::Dir)
            }
            None => Err(ApiError::invalid(
                field,
                format!("not a model SPEC: {expected}"),
            )),
        },
    }
}

fn registry(config: &Config, field: &str, kind: &str, rest: &str) -> Result<(), ApiError> {
    let shape_ok = if kind == "hf" {
        let (repo, rev) = rest
            .split_once('@')
            .map_or((rest, None), |(r, v)| (r, Some(v)));
        let name_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && !s.contains("..")
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        repo.split('/').count() == 2
            && repo.split('/').all(name_ok)
            && rev.is_none_or(|r| {
                !r.is_empty()
                    && r.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            })
    } else {
        rest.rsplit_once('/').is_some_and(|(name, version)| {
            !name.trim().is_empty()
                && !version.is_empty()
                && version.chars().all(|c| c.is_ascii_digit())
        })
    };
    if !shape_ok {
        let expected = if kind == "hf" {
            "hf:OWNER/NAME[@REVISION]"
        } else {
            "mlflow:NAME/VERSION"
        };
        return Err(ApiError::invalid(field, format!("expected {expected}")));
    }
    if crate::resolve::covering_watcher(config, kind, rest).is_none() {
        let which = if kind == "hf" {
            "a configured huggingface watcher (in its `models`, or its `author`)"
        } else {
            "a configured mlflow watcher (in its `models`, or one with a `filter`)"
        };
        return Err(ApiError::invalid(
            field,
            format!("{kind}: models are accepted only when {which} covers them"),
        ));
    }
    Ok(())
}

fn benchmark(config: &Config, field: &str, spec: &str) -> Result<(), ApiError> {
    text(field, spec)?;
    // Attack modifiers (`+aoa`) name no path: the benchmark before them is
    // what is checked.
    let (spec, _) = crate::benchmark::attacks::split_spec(spec)
        .map_err(|_| ApiError::invalid(field, "not a benchmark: an unknown attack modifier"))?;
    if config.benchmarks.contains_key(spec) {
        return Ok(());
    }
    let refused = || {
        ApiError::invalid(
            field,
            "not a benchmark: expected a configured benchmark name, builtin:probes or KIND:PATH",
        )
    };
    let (kind, path) = spec.trim().split_once(':').ok_or_else(refused)?;
    let kind = kind.trim().to_ascii_lowercase();
    match kind.as_str() {
        "builtin" => Ok(()),
        "hex-phi" => local(config, field, path.trim(), Want::Dir),
        k if crate::benchmark::KINDS.contains(&k) => local(config, field, path.trim(), Want::File),
        _ => Err(refused()),
    }
}

fn judge(config: &Config, field: &str, spec: &str) -> Result<(), ApiError> {
    text(field, spec)?;
    let spec = spec.trim();
    if config.judges.contains_key(spec) || spec == "keyword" {
        return Ok(());
    }
    let refused = || {
        ApiError::invalid(
            field,
            "not a judge: expected a configured judge name, keyword, rubric:MODEL, \
             llama-guard:MODEL or classifier:DIR",
        )
    };
    let (kind, rest) = spec.split_once(':').ok_or_else(refused)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(refused());
    }
    match kind {
        // A local generative judge names a directory.
        "rubric" | "llama-guard" => match rest.strip_prefix("onnx:") {
            Some(dir) => local(config, field, dir.trim(), Want::Dir),
            None => Ok(()),
        },
        "classifier" => local(config, field, rest, Want::Dir),
        _ => Err(refused()),
    }
}

/// The canonical `[api] allowed_paths` that exist.
fn roots(config: &Config) -> Vec<PathBuf> {
    config
        .api
        .allowed_paths
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect()
}

fn outside(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        "names a local path that is not an existing path under `api.allowed_paths`",
    )
}

/// A local path: absolute, under an allowed root once resolved, and of the
/// wanted type (a directory's entries checked too).
fn local(config: &Config, field: &str, raw: &str, want: Want) -> Result<(), ApiError> {
    if config.api.allowed_paths.is_empty() {
        return Err(ApiError::invalid(
            field,
            "names a local path, and this server accepts none through the API \
             (`api.allowed_paths` is empty): name a configured entry instead",
        ));
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(ApiError::invalid(field, "a local path must be absolute"));
    }
    let roots = roots(config);
    // canonicalize() resolves every symlink and `..` without opening the
    // file; a path that does not resolve is refused like one outside.
    let real = fs::canonicalize(path).map_err(|_| outside(field))?;
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(outside(field));
    }
    let meta = fs::metadata(&real).map_err(|_| outside(field))?;
    match want {
        Want::File if !meta.is_file() => Err(ApiError::invalid(field, "is not a regular file")),
        Want::Dir if !meta.is_dir() => Err(ApiError::invalid(field, "is not a directory")),
        Want::File => Ok(()),
        Want::Dir => {
            let mut seen = 0;
            walk(field, &real, &roots, 0, &mut seen)
        }
    }
}

/// Every entry of a directory: links must resolve under a root, and only
/// regular files and directories are allowed.
fn walk(
    field: &str,
    dir: &Path,
    roots: &[PathBuf],
    depth: usize,
    seen: &mut usize,
) -> Result<(), ApiError> {
    if depth > MAX_DEPTH {
        return Err(ApiError::invalid(
            field,
            "the directory is nested too deeply",
        ));
    }
    let entries = fs::read_dir(dir).map_err(|_| outside(field))?;
    for entry in entries {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(ApiError::invalid(
                field,
                format!("the directory holds more than {MAX_ENTRIES} entries"),
            ));
        }
        let entry = entry.map_err(|_| outside(field))?;
        let real = fs::canonicalize(entry.path()).map_err(|_| {
            ApiError::invalid(field, "the directory holds a link that does not resolve")
        })?;
        if !roots.iter().any(|r| real.starts_with(r)) {
            return Err(ApiError::invalid(
                field,
                "the directory holds a link to a path outside `api.allowed_paths`",
            ));
        }
        let meta = fs::metadata(&real).map_err(|_| outside(field))?;
        if meta.is_dir() {
            walk(field, &real, roots, depth + 1, seen)?;
        } else if !meta.is_file() {
            return Err(ApiError::invalid(
                field,
                "the directory holds a FIFO, socket or device file",
            ));
        }
    }
    Ok(())
}
