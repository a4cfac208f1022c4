//! Registry SPECs: `hf:OWNER/NAME[@REV]` and `mlflow:NAME/VERSION`,
//! downloaded into the download cache through the same watcher code the
//! daemon uses, with the settings of the configured watcher that covers the
//! model. The download is async: it runs on the caller's runtime without
//! blocking a thread.

use std::path::PathBuf;

use safedrift_watchers::{
    huggingface::HuggingfaceWatcher, mlflow::MlflowWatcher, Cache, Checkpoint, Target, WatchError,
    Watcher,
};

use super::{env_nonempty, invalid, ResolveError, Resolver};
use crate::config::{Config, WatcherConfig, WatcherKind};

/// The configured watcher that covers a registry SPEC's model: for
/// `hf:OWNER/NAME[@REV]` a `huggingface` watcher listing the repo in
/// `models` or watching its `author`; for `mlflow:NAME/VERSION` an `mlflow`
/// watcher listing NAME in `models` or searching with a `filter`.
pub fn covering_watcher<'c>(
    config: &'c Config,
    kind: &str,
    rest: &str,
) -> Option<(&'c str, &'c WatcherConfig)> {
    let lists = |w: &WatcherConfig, name: &str| {
        w.rest
            .get("models")
            .and_then(|m| m.as_array())
            .is_some_and(|m| m.iter().any(|v| v.as_str() == Some(name)))
    };
    let found = config.watchers.iter().find(|(_, w)| match kind {
        "hf" => {
            let repo = rest.split_once('@').map_or(rest, |(repo, _)| repo);
            let owner = repo.split('/').next().unwrap_or_default();
            w.kind == WatcherKind::Huggingface
                && (lists(w, repo) || w.rest.get("author").and_then(|a| a.as_str()) == Some(owner))
        }
        "mlflow" => {
            let name = rest.rsplit_once('/').map_or(rest, |(name, _)| name);
            w.kind == WatcherKind::Mlflow && (lists(w, name) || w.rest.contains_key("filter"))
        }
        _ => false,
    });
    found.map(|(name, w)| (name.as_str(), w))
}

/// A watcher for one registry SPEC, and the checkpoint to fetch (`None`:
/// the registry's current one).
type Fetcher = (Box<dyn Watcher>, Option<Checkpoint>);

impl Resolver {
    /// Downloads `hf:OWNER/NAME[@REV]` (REV: a commit sha; default the
    /// current head) or `mlflow:NAME/VERSION` (from the tracking server of
    /// the config's mlflow watcher, else `$MLFLOW_TRACKING_URI`) into the
    /// download cache, through the same watcher code the daemon uses.
    pub(super) async fn fetch_from_registry(
        &self,
        kind: &str,
        rest: &str,
        spec: &str,
    ) -> Result<PathBuf, ResolveError> {
        let fail = |message: String| ResolveError {
            message: format!("model {spec:?}: {message}"),
            registry: true,
        };
        let (watcher, checkpoint) = if kind == "hf" {
            self.hf_fetcher(rest, spec)?
        } else {
            self.mlflow_fetcher(rest, spec)?
        };
        let cache_dir = self
            .config
            .cache
            .path
            .clone()
            .unwrap_or_else(|| self.config.data_dir.join("cache"));
        let cache =
            Cache::new(cache_dir, self.config.cache.max_bytes()).map_err(|e| fail(e.message))?;
        let target = fetch(watcher.as_ref(), checkpoint, &cache)
            .await
            .map_err(|e| fail(e.message))?;
        match target {
            Target::Onnx { dir } => Ok(dir),
            other => Err(fail(format!(
                "the registry gave {other:?}, not a model directory"
            ))),
        }
    }

    /// A Hugging Face watcher for one repo: the covering watcher's Hub,
    /// token and file selection, else `$HF_ENDPOINT` and `$HF_TOKEN`.
    fn hf_fetcher(&self, rest: &str, spec: &str) -> Result<Fetcher, ResolveError> {
        let (repo, rev) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (rest, None),
        };
        if repo.split('/').count() != 2 || repo.contains("..") {
            return Err(invalid(format!(
                "model {spec:?}: expected hf:OWNER/NAME[@REVISION]"
            )));
        }
        let mut table = toml::Table::new();
        if let Some((_, w)) = covering_watcher(&self.config, "hf", rest) {
            for key in [
                "endpoint",
                "token_env",
                "token_file",
                "subfolder",
                "allow",
                "timeout",
            ] {
                if let Some(v) = w.rest.get(key) {
                    table.insert(key.into(), v.clone());
                }
            }
        } else {
            if let Some(endpoint) = env_nonempty("HF_ENDPOINT") {
                table.insert("endpoint".into(), endpoint.into());
            }
            if env_nonempty("HF_TOKEN").is_some() {
                table.insert("token_env".into(), "HF_TOKEN".into());
            }
        }
        table.insert("models".into(), toml::Value::Array(vec![repo.into()]));
        let w = HuggingfaceWatcher::from_config("hf", &table).map_err(|p| invalid(p.join("; ")))?;
        let cp = rev.map(|rev| Checkpoint {
            watcher: "hf".into(),
            model: repo.into(),
            revision: rev.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        });
        Ok((Box::new(w), cp))
    }

    /// An MLflow watcher for one registered model version: the tracking
    /// server and token of the watcher covering the model, else of the first
    /// mlflow watcher, else `$MLFLOW_TRACKING_URI`.
    fn mlflow_fetcher(&self, rest: &str, spec: &str) -> Result<Fetcher, ResolveError> {
        let Some((name, version)) = rest.rsplit_once('/') else {
            return Err(invalid(format!(
                "model {spec:?}: expected mlflow:NAME/VERSION"
            )));
        };
        let watcher = covering_watcher(&self.config, "mlflow", rest)
            .map(|(_, w)| w)
            .or_else(|| {
                self.config
                    .watchers
                    .values()
                    .find(|w| w.kind == WatcherKind::Mlflow)
            });
        let mut table = toml::Table::new();
        for key in ["token_env", "token_file", "timeout"] {
            if let Some(v) = watcher.and_then(|w| w.rest.get(key)) {
                table.insert(key.into(), v.clone());
            }
        }
        let uri = watcher
            .and_then(|w| w.rest.get("tracking_uri"))
            .and_then(|v| v.as_str().map(str::to_string))
            .or_else(|| env_nonempty("MLFLOW_TRACKING_URI"))
            .ok_or_else(|| invalid(format!("model {spec:?}: no MLflow server: configure an mlflow watcher or set $MLFLOW_TRACKING_URI")))?;
        table.insert("tracking_uri".into(), uri.into());
        table.insert("models".into(), toml::Value::Array(vec![name.into()]));
        let w = MlflowWatcher::from_config("mlflow", &table).map_err(|p| invalid(p.join("; ")))?;
        let cp = Checkpoint {
            watcher: "mlflow".into(),
            model: name.into(),
            revision: version.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        };
        Ok((Box::new(w), Some(cp)))
    }
}

/// Fetches `checkpoint`, else the registry's current checkpoint.
async fn fetch(
    watcher: &dyn Watcher,
    checkpoint: Option<Checkpoint>,
    cache: &Cache,
) -> Result<Target, WatchError> {
    let cp = match checkpoint {
        Some(cp) => cp,
        None => watcher
            .poll()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| WatchError::new("not_found", "the repository has no ONNX export"))?,
    };
    watcher.fetch(&cp, cache).await
}
