//! `[watchers.NAME]` as a closed type: the keys every kind shares, typed once
//! in [`WatcherConfig`], and the kind's own keys as one [`Settings`] variant
//! per kind. Parsing checks everything that can be checked without building
//! the watcher (no HTTP client, no file or network access) and reports every
//! problem at once, each naming its key path (`` `watchers.NAME.key` ``).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::directory::{DirectoryConfig, DirectoryWatcher};
use crate::huggingface::{HuggingfaceConfig, HuggingfaceWatcher};
use crate::mlflow::{MlflowConfig, MlflowWatcher};
use crate::ollama::{OllamaConfig, OllamaWatcher};
use crate::openai_finetunes::{OpenaiFinetunesConfig, OpenaiFinetunesWatcher};
use crate::{Kind, Watcher};

/// One `[watchers.NAME]` table, parsed and checked.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    pub common: Common,
    pub settings: Settings,
}

/// The keys every watcher kind shares.
#[derive(Clone, Debug, Deserialize)]
pub struct Common {
    pub kind: Kind,
    /// Cron expression with seconds (default every 5 minutes).
    pub schedule: Option<String>,
    /// The `[backends.NAME]` entry local checkpoints run with.
    pub backend: Option<String>,
    /// The backend per checkpoint format (`lora`, `onnx`, `gguf`,
    /// `safetensors`; [`crate::format`]), over `backend`.
    #[serde(default)]
    pub backends: std::collections::BTreeMap<String, String>,
    /// Benchmark names or SPECs (default `builtin:probes`).
    pub benchmarks: Option<Vec<String>>,
    /// A `[judges.NAME]` entry or judge SPEC (default `keyword`).
    pub judge: Option<String>,
    /// The model SPEC checkpoints are compared with.
    pub baseline: Option<String>,
    /// A `[templates.NAME]` entry (default `default`).
    pub template: Option<String>,
    /// Probes (default `[eval] probes`): `kl` (the refusal-depth probe
    /// against the baseline), `prefill:K` (the prefilling attack).
    pub probes: Option<Vec<String>>,
    /// Attack modifiers asked as variants of every benchmark with harmful
    /// prompts: `aoa`, `base64`, `leetspeak`, `prefill:K`.
    pub attacks: Option<Vec<String>>,
    /// The kind's keys as written, handed to [`Settings`] (empty after).
    #[serde(flatten)]
    rest: toml::Table,
}

/// The keys of one watcher kind.
#[derive(Clone, Debug)]
pub enum Settings {
    Directory(DirectoryConfig),
    Mlflow(MlflowConfig),
    Huggingface(HuggingfaceConfig),
    OpenaiFinetunes(OpenaiFinetunesConfig),
    Ollama(OllamaConfig),
}

impl WatcherConfig {
    /// Parses the whole `[watchers.NAME]` table.
    pub fn parse(name: &str, table: &toml::Table) -> Result<WatcherConfig, Vec<String>> {
        let mut common: Common =
            serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| vec![problem_of(&format!("watchers.{name}"), e).1])?;
        let mut problems = Vec::new();
        if let Some(s) = &common.schedule {
            if let Err(e) = check_cron(s) {
                problems.push(format!("`watchers.{name}.schedule`: {e}"));
            }
        }
        let rest = std::mem::take(&mut common.rest);
        match Settings::parse(name, common.kind, rest) {
            Ok(settings) if problems.is_empty() => Ok(WatcherConfig { common, settings }),
            Ok(_) => Err(problems),
            Err(mut p) => {
                problems.append(&mut p);
                Err(problems)
            }
        }
    }

    /// The watcher kind.
    pub fn kind(&self) -> Kind {
        self.common.kind
    }

    /// Builds the watcher this entry configures.
    pub fn build(&self, name: &str) -> Result<Arc<dyn Watcher>, Vec<String>> {
        self.settings.build(name)
    }
}

impl Settings {
    /// Types and checks the kind's keys of `[watchers.NAME]`.
    fn parse(name: &str, kind: Kind, table: toml::Table) -> Result<Settings, Vec<String>> {
        fn typed<T: DeserializeOwned>(
            name: &str,
            table: toml::Table,
            wrap: fn(T) -> Settings,
        ) -> (Option<Settings>, Vec<String>) {
            let (config, problems) = parse_table(&format!("watchers.{name}"), table);
            (config.map(wrap), problems)
        }
        let (settings, mut problems) = match kind {
            Kind::Directory => typed(name, table, Settings::Directory),
            Kind::Mlflow => typed(name, table, Settings::Mlflow),
            Kind::Huggingface => typed(name, table, Settings::Huggingface),
            Kind::OpenaiFinetunes => typed(name, table, Settings::OpenaiFinetunes),
            Kind::Ollama => typed(name, table, Settings::Ollama),
        };
        if let Some(s) = &settings {
            problems.append(&mut s.check(name));
        }
        match settings {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(problems),
        }
    }

    /// Problems of the values, found without building the watcher.
    fn check(&self, name: &str) -> Vec<String> {
        let result = match self {
            Settings::Directory(c) => DirectoryWatcher::configure(name, c).map(drop),
            Settings::Mlflow(c) => MlflowWatcher::configure(name, c, false).map(drop),
            Settings::Huggingface(c) => HuggingfaceWatcher::configure(name, c, false).map(drop),
            Settings::OpenaiFinetunes(c) => {
                OpenaiFinetunesWatcher::configure(name, c, false).map(drop)
            }
            Settings::Ollama(c) => OllamaWatcher::configure(name, c, false).map(drop),
        };
        result.err().unwrap_or_default()
    }

    /// Builds the watcher.
    pub fn build(&self, name: &str) -> Result<Arc<dyn Watcher>, Vec<String>> {
        fn built<W: Watcher + 'static>(
            w: Result<Option<W>, Vec<String>>,
        ) -> Result<Arc<dyn Watcher>, Vec<String>> {
            Ok(Arc::new(
                w?.expect("configure builds the watcher when asked to"),
            ))
        }
        match self {
            Settings::Directory(c) => Ok(Arc::new(DirectoryWatcher::configure(name, c)?)),
            Settings::Mlflow(c) => built(MlflowWatcher::configure(name, c, true)),
            Settings::Huggingface(c) => built(HuggingfaceWatcher::configure(name, c, true)),
            Settings::OpenaiFinetunes(c) => built(OpenaiFinetunesWatcher::configure(name, c, true)),
            Settings::Ollama(c) => built(OllamaWatcher::configure(name, c, true)),
        }
    }
}

/// The settings of a `[watchers.NAME]` table of `kind`, whichever kind the
/// table names (the watchers' own `from_config`, for callers that build one
/// kind directly). The common keys are allowed and ignored.
pub(crate) fn settings_of(
    name: &str,
    kind: Kind,
    table: &toml::Table,
) -> Result<Settings, Vec<String>> {
    let mut table = table.clone();
    table.insert("kind".into(), toml::Value::String(kind.as_str().into()));
    let common: Common = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| vec![problem_of(&format!("watchers.{name}"), e).1])?;
    Settings::parse(name, kind, common.rest)
}

/// Deserializes a table of `deny_unknown_fields` keys under `path`
/// (`watchers.NAME`, `alerts.NAME`), reporting every key that does not
/// deserialize, not only the first: a key that fails is reported and left out,
/// and the rest is tried again. Returns the value when what is left
/// deserializes (so its values can still be checked) and the problems.
pub fn parse_table<T: DeserializeOwned>(
    path: &str,
    mut table: toml::Table,
) -> (Option<T>, Vec<String>) {
    let mut problems = Vec::new();
    loop {
        match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(value) => return (Some(value), problems),
            Err(e) => {
                let (key, problem) = problem_of(path, e);
                problems.push(problem);
                match key {
                    Some(k) if table.remove(&k).is_some() => {}
                    _ => return (None, problems),
                }
            }
        }
    }
}

/// The problem a deserialization error names: `` `path.key`: message ``,
/// and the top-level key, when there is one.
fn problem_of(
    path: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> (Option<String>, String) {
    let at = e.path().to_string();
    // toml appends "in `key`" on a second line; the key leads anyway.
    let message = e.into_inner().to_string();
    let message = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let key = if at.is_empty() || at == "." {
        // deny_unknown_fields and missing fields fail on the table, not the key.
        message
            .strip_prefix("unknown field `")
            .or_else(|| message.strip_prefix("missing field `"))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    } else {
        Some(at)
    };
    match key {
        Some(key) => {
            let top = key.split(['.', '[']).next().map(str::to_string);
            (top, format!("`{path}.{key}`: {message}"))
        }
        None => (None, format!("`{path}`: {message}")),
    }
}

/// Checks a cron expression with a seconds field (six fields, as the
/// daemon's scheduler reads them).
pub fn check_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "invalid cron expression {expr:?}: expected 6 fields (sec min hour day month weekday), found {fields}"
        ));
    }
    croner::Cron::new(expr)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .map(|_| ())
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}
