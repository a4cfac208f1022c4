//! Finding and loading the ONNX Runtime shared library, and opening sessions
//! on the requested device.
//!
//! The library is looked for, in order: the backend's `ort_dylib` config key,
//! `$ORT_DYLIB_PATH`, then the `onnxruntime` package (from the `onnxruntime`
//! or `onnxruntime-gpu` wheel) in the site-packages of `python3`. The wheel
//! ships only the versioned name (`libonnxruntime.so.1.32.0`), which is found
//! by globbing. It is loaded once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tracing::{info, warn};

/// Why the runtime or a session could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

const INSTALL_HINT: &str = "install it with `pip install onnxruntime==1.32.0` (or onnxruntime-gpu for CUDA) so that `python3` can import it, or point `ort_dylib` in the backend's config (or $ORT_DYLIB_PATH) at libonnxruntime.so";

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

/// Finds libonnxruntime: `configured`, then `$ORT_DYLIB_PATH`, then python3's site-packages.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(RuntimeError(format!(
                "ONNX Runtime library {} (from `ort_dylib`) does not exist",
                path.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError(format!(
                "ONNX Runtime library {} (from $ORT_DYLIB_PATH) does not exist",
                path.display()
            )))
        };
    }
    if let Some(dir) = python_package_dir() {
        if let Some(lib) = library_in(&dir.join("capi")) {
            return Ok(lib);
        }
    }
    Err(RuntimeError(format!(
        "the ONNX Runtime library was not found: {INSTALL_HINT}"
    )))
}

/// The directory of python3's `onnxruntime` package, found without importing it.
fn python_package_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s else '')",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `libonnxruntime.so` or its newest versioned name in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    found.sort();
    found.pop()
}

static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), RuntimeError>> = OnceLock::new();

/// Loads the library (once per process) and returns the environment.
pub fn environment(configured: Option<&Path>) -> Result<Environment, RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = find_library(configured)?;
        let builder = ort::init_from(&path).map_err(|e| {
            RuntimeError(format!(
                "cannot load the ONNX Runtime library {}: {e}; {INSTALL_HINT}",
                path.display()
            ))
        })?;
        let env = builder
            .with_name("safedrift")
            .build()
            .map_err(|e| RuntimeError(format!("cannot start ONNX Runtime: {e}")))?;
        info!(library = %path.display(), "loaded ONNX Runtime");
        Ok((path, env))
    });
    match result {
        Ok((path, env)) => {
            if let Some(wanted) = configured {
                if wanted != path {
                    warn!(loaded = %path.display(), wanted = %wanted.display(), "ONNX Runtime is already loaded from another library; one per process");
                }
            }
            Ok(env.clone())
        }
        Err(e) => Err(e.clone()),
    }
}

/// Opens a session for `model` on `device`. With `cpu_fallback`, a CUDA
/// device that cannot be used falls back to the CPU (and says so in the log);
/// without it, that is an error.
pub fn open_session(
    env: &Environment,
    model: &Path,
    device: Device,
    cpu_fallback: bool,
    threads: usize,
) -> Result<(Session, Device), RuntimeError> {
    let fail = |e: String| {
        RuntimeError(format!(
            "cannot load {}: {e} (is the file, and its external data file, complete?)",
            model.display()
        ))
    };
    let builder = || -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
        Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| fail(e.to_string()))
    };
    if device == Device::Cuda {
        let cuda = ort::ep::CUDA::default().build().error_on_failure();
        let attempt = builder()?
            .with_execution_providers([cuda])
            .map_err(|e| RuntimeError(e.to_string()))
            .and_then(|mut b| {
                b.commit_from_file(model)
                    .map_err(|e| RuntimeError(e.to_string()))
            });
        match attempt {
            Ok(session) => return Ok((session, Device::Cuda)),
            Err(e) if cpu_fallback => {
                warn!(model = %model.display(), error = %e, "CUDA is not usable; falling back to the CPU as configured (cpu_fallback = true)");
            }
            Err(e) => {
                return Err(RuntimeError(format!(
                    "device = \"cuda\" but the CUDA execution provider cannot be used for {}: {e}. Install onnxruntime-gpu with a matching CUDA, or set cpu_fallback = true",
                    model.display()
                )))
            }
        }
    }
    let session = builder()?
        .commit_from_file(model)
        .map_err(|e| fail(e.to_string()))?;
    Ok((session, Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_library_that_is_missing_is_named() {
        let e = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(
            e.0.contains("/nonexistent/libonnxruntime.so") && e.0.contains("ort_dylib"),
            "{e}"
        );
    }

    #[test]
    fn versioned_library_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        let lib = library_in(dir.path()).unwrap();
        assert!(lib.ends_with("libonnxruntime.so.1.32.0"), "{lib:?}");
        assert!(library_in(&dir.path().join("missing")).is_none());
    }
}
