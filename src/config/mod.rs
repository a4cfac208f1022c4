//! The configuration file: parsed with the key path in every error, then
//! validated as a whole so that `check-config` reports every problem at once.
//!
//! Secrets are never written in the file: a `*_env` key names an environment
//! variable and a `*_file` key a file (e.g. a systemd credential). A secret
//! written inline is rejected with a message saying which key to use instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod alerts;
mod api;
mod backends;
mod drift;
mod eval;
mod judges;
mod watchers;

pub use alerts::{AlertKind, AlertingConfig, Format, TargetConfig, TargetSettings};
pub use api::ApiConfig;
pub use backends::{
    BackendConfig, LaunchBackendConfig, ModelConfig, OnnxBackendConfig, OpenAiBackendConfig,
};
pub use drift::{DriftConfig, DriftMode, PerCategory};
pub use eval::{BenchmarkConfig, EvalConfig, LaneMode, MaxParallel};
pub use judges::{ClassifierJudgeConfig, JudgeConfig, KeywordJudgeConfig, ModelJudgeConfig};
pub use safedrift_watchers::Kind as WatcherKind;
pub use safedrift_watchers::{check_cron, Settings as WatcherSettings, WatcherConfig};

/// The watcher name of checkpoints queued through the API (reserved: no
/// `[watchers.NAME]` may take it).
pub const API_SOURCE: &str = "api";

/// The embedded default configuration (used when no file is found).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Where the config came from, for messages.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => write!(f, "(embedded default config)"),
        }
    }
}

/// Every problem found in a config, each naming its key path.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| format!("{}: {p}", .origin)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub origin: Source,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub benchmarks: BTreeMap<String, BenchmarkConfig>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub judges: BTreeMap<String, JudgeConfig>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
    /// `[watchers.NAME]`, typed by [`parse`] from `watcher_tables`.
    #[serde(skip)]
    pub watchers: BTreeMap<String, WatcherConfig>,
    #[serde(default, rename = "watchers")]
    watcher_tables: BTreeMap<String, toml::Table>,
    /// `[alerts.NAME]`, typed by [`parse`] from `alert_tables`.
    #[serde(skip)]
    pub alerts: BTreeMap<String, TargetConfig>,
    #[serde(default, rename = "alerts")]
    alert_tables: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub alerting: AlertingConfig,
    #[serde(default)]
    pub drift: DriftConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub cache: CacheConfig,
}

/// Where the daemon keeps downloaded checkpoints.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Default: `<data_dir>/cache`.
    pub path: Option<PathBuf>,
    /// Size limit in GiB; least recently used checkpoints are evicted
    /// beyond it (default 50).
    pub max_gb: Option<f64>,
}

impl CacheConfig {
    pub fn max_bytes(&self) -> u64 {
        (self.max_gb.unwrap_or(50.0).max(0.0) * 1024.0 * 1024.0 * 1024.0) as u64
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./safedrift-data")
}
/// A prompt template: the paper evaluates each model with the template of its
/// fine-tuning data, so the template is part of a run's identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub system: Option<String>,
    pub user_prefix: Option<String>,
    pub user_suffix: Option<String>,
}

/// Keys that would hold a secret inline.
const SECRET_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "token",
    "password",
    "secret",
    "hf_token",
    "smtp_password",
];

/// Finds the config file: `--config`, else `$SAFEDRIFT_CONFIG`, else
/// `/etc/safedrift/safedrift.toml` if it exists, else the embedded default.
pub fn locate(flag: Option<&Path>) -> Source {
    if let Some(p) = flag {
        return Source::File(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SAFEDRIFT_CONFIG").filter(|p| !p.is_empty()) {
        return Source::File(PathBuf::from(p));
    }
    let etc = Path::new("/etc/safedrift/safedrift.toml");
    if etc.exists() {
        return Source::File(etc.to_path_buf());
    }
    Source::Embedded
}

/// Reads, parses and validates the config at `source`.
pub fn load(source: &Source) -> Result<Config, ConfigError> {
    let text = match source {
        Source::Embedded => DEFAULT_CONFIG.to_string(),
        Source::File(path) => {
            let fail = |problem: String| ConfigError {
                origin: source.clone(),
                problems: vec![problem],
            };
            let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
            if meta.len() > 4 * 1024 * 1024 {
                return Err(fail(format!(
                    "{} bytes is too large for a config file",
                    meta.len()
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
            String::from_utf8(bytes).map_err(|e| {
                let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                fail(format!("line {line}: not valid UTF-8"))
            })?
        }
    };
    parse(&text, source)
}

/// Parses and validates config text.
pub fn parse(text: &str, source: &Source) -> Result<Config, ConfigError> {
    let err = |problems: Vec<String>| ConfigError {
        origin: source.clone(),
        problems,
    };
    let value: toml::Table = toml::from_str(text).map_err(|e| err(vec![toml_problem(&e, text)]))?;
    let mut problems = Vec::new();
    find_inline_secrets(&value, "", &mut problems);
    if !problems.is_empty() {
        return Err(err(problems));
    }
    let de = toml::Deserializer::new(text);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = toml_problem(&inner, text);
        err(vec![if path.is_empty() || path == "." {
            msg
        } else {
            format!("`{path}`: {msg}")
        }])
    })?;
    let mut problems = config.type_sections();
    problems.append(&mut config.validate());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(err(problems))
    }
}

fn toml_problem(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = 1 + text[..span.start.min(text.len())].matches('\n').count();
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

fn find_inline_secrets(table: &toml::Table, prefix: &str, problems: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "`{path}`: secrets are never written in the config; name an environment variable with `{key}_env` or a file with `{key}_file`"
            ));
        }
        if let toml::Value::Table(t) = value {
            find_inline_secrets(t, &path, problems);
        }
    }
}

pub(crate) fn check_url(url: &str, key: &str, problems: &mut Vec<String>) {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => problems.push(format!(
            "`{key}`: scheme `{}` is not http or https",
            u.scheme()
        )),
        Err(e) => problems.push(format!("`{key}`: invalid URL {url:?}: {e}")),
    }
}

impl Config {
    /// Types the `[watchers.NAME]` and `[alerts.NAME]` tables, each by its
    /// kind; every problem names its key path.
    fn type_sections(&mut self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, table) in std::mem::take(&mut self.watcher_tables) {
            match WatcherConfig::parse(&name, &table) {
                Ok(w) => {
                    self.watchers.insert(name, w);
                }
                Err(mut problems) => p.append(&mut problems),
            }
        }
        for (name, table) in std::mem::take(&mut self.alert_tables) {
            match TargetConfig::parse(&name, table) {
                Ok(t) => {
                    self.alerts.insert(name, t);
                }
                Err(mut problems) => p.append(&mut problems),
            }
        }
        p
    }

    /// Every semantic problem, each naming its key path.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.api.problems();
        if self.watchers.contains_key(API_SOURCE) {
            p.push(format!(
                "`watchers.{API_SOURCE}`: the name is reserved for evaluations queued through the API"
            ));
        }
        self.check_benchmarks(&mut p);
        self.check_backends(&mut p);
        self.check_models(&mut p);
        self.check_judges(&mut p);
        for (name, w) in &self.watchers {
            self.check_watcher(name, w, &mut p);
        }
        if let Some(u) = &self.api.public_url {
            check_url(u, "api.public_url", &mut p);
        }
        p.extend(self.drift.problems());
        p.extend(self.eval.problems());
        p
    }

    fn check_template_ref(&self, name: Option<&str>, key: &str, p: &mut Vec<String>) {
        if let Some(t) = name {
            if t != "default" && !self.templates.contains_key(t) {
                p.push(format!("`{key}.template`: no template named {t:?}"));
            }
        }
    }
}

/// A `*_file` secret key names a readable file: a path, or the bare name of
/// a systemd credential (looked up in `$CREDENTIALS_DIRECTORY`, as
/// [`read_secret`] reads it).
pub(crate) fn check_secret_file(path: Option<&Path>, key: &str, p: &mut Vec<String>) {
    if let Some(f) = path {
        if !safedrift_watchers::secret_path(f).is_file() {
            p.push(format!("`{key}`: {} is not a readable file", f.display()));
        }
    }
}

/// Reads a secret from the file or environment variable a config names.
/// Errors name the key or variable, never the secret. (One implementation,
/// shared with the watchers.)
pub fn read_secret(env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    safedrift_watchers::read_secret(env, file).map_err(|e| e.message)
}

#[cfg(test)]
mod tests;
