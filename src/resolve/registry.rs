//! Registry SPECs: `hf:OWNER/NAME[@REV]` and `mlflow:NAME/VERSION`,
//! downloaded into the download cache through the same watcher code the
//! daemon uses, with the settings of the configured watcher that covers the
//! model. The download is async: it runs on the caller's runtime without
//! blocking a thread.

use std::path::PathBuf;
use std::sync::Arc;

use safedrift_watchers::{
    huggingface::HuggingfaceConfig, mlflow::MlflowConfig, Cache, Checkpoint, Target, WatchError,
    Watcher,
};

use super::{env_nonempty, invalid, ResolveError, Resolver};
use crate::config::{Config, WatcherConfig, WatcherSettings};

/// The configured watcher that covers a registry SPEC's model: for
/// `hf:OWNER/NAME[@REV]` a `huggingface` watcher listing the repo in
/// `models` or watching its `author`; for `mlflow:NAME/VERSION` an `mlflow`
/// watcher listing NAME in `models` or searching with a `filter`.
pub fn covering_watcher<'c>(
    config: &'c Config,
    kind: &str,
    rest: &str,
) -> Option<(&'c str, &'c WatcherConfig)> {
    let lists =
        |models: &Option<Vec<String>>, name: &str| models.iter().flatten().any(|m| m == name);
    let found = config
        .watchers
        .iter()
        .find(|(_, w)| match (&w.settings, kind) {
            (WatcherSettings::Huggingface(c), "hf") => {
                let repo = rest.split_once('@').map_or(rest, |(repo, _)| repo);
                let owner = repo.split('/').next().unwrap_or_default();
                lists(&c.models, repo) || c.author.as_deref() == Some(owner)
            }
            (WatcherSettings::Mlflow(c), "mlflow") => {
                let name = rest.rsplit_once('/').map_or(rest, |(name, _)| name);
                lists(&c.models, name) || c.filter.is_some()
            }
            _ => false,
        });
    found.map(|(name, w)| (name.as_str(), w))
}

/// A watcher for one registry SPEC, and the checkpoint to fetch (`None`:
/// the registry's current one).
type Fetcher = (Arc<dyn Watcher>, Option<Checkpoint>);

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
        let covering = covering_watcher(&self.config, "hf", rest).map(|(_, w)| &w.settings);
        let config = match covering {
            // The covering watcher's Hub, token and file selection.
            Some(WatcherSettings::Huggingface(c)) => HuggingfaceConfig {
                author: None,
                filter: None,
                webhook_secret_env: None,
                webhook_secret_file: None,
                ..c.clone()
            },
            _ => HuggingfaceConfig {
                endpoint: env_nonempty("HF_ENDPOINT"),
                token_env: env_nonempty("HF_TOKEN").map(|_| "HF_TOKEN".to_string()),
                ..HuggingfaceConfig::default()
            },
        };
        let config = HuggingfaceConfig {
            models: Some(vec![repo.into()]),
            ..config
        };
        let w = WatcherSettings::Huggingface(config)
            .build("hf")
            .map_err(|p| invalid(p.join("; ")))?;
        let cp = rev.map(|rev| Checkpoint {
            watcher: "hf".into(),
            model: repo.into(),
            revision: rev.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        });
        Ok((w, cp))
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
        let mlflow = |w: &'_ WatcherConfig| match &w.settings {
            WatcherSettings::Mlflow(c) => Some(c.clone()),
            _ => None,
        };
        let watcher = covering_watcher(&self.config, "mlflow", rest)
            .and_then(|(_, w)| mlflow(w))
            .or_else(|| self.config.watchers.values().find_map(mlflow));
        let uri = watcher
            .as_ref()
            .map(|w| w.tracking_uri.clone())
            .or_else(|| env_nonempty("MLFLOW_TRACKING_URI"))
            .ok_or_else(|| invalid(format!("model {spec:?}: no MLflow server: configure an mlflow watcher or set $MLFLOW_TRACKING_URI")))?;
        // The server, token and timeout of that watcher; one model.
        let config = MlflowConfig {
            tracking_uri: uri,
            models: Some(vec![name.into()]),
            filter: None,
            baseline_alias: None,
            webhook_secret_env: None,
            webhook_secret_file: None,
            token_env: watcher.as_ref().and_then(|w| w.token_env.clone()),
            token_file: watcher.as_ref().and_then(|w| w.token_file.clone()),
            timeout: watcher.and_then(|w| w.timeout),
        };
        let w = WatcherSettings::Mlflow(config)
            .build("mlflow")
            .map_err(|p| invalid(p.join("; ")))?;
        let cp = Checkpoint {
            watcher: "mlflow".into(),
            model: name.into(),
            revision: version.into(),
            baseline: None,
            detail: serde_json::Value::Null,
        };
        Ok((w, Some(cp)))
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
