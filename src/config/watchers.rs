//! `[watchers.NAME]`: the keys every watcher kind shares, and its schedule.

use serde::Deserialize;

use super::{Config, WatcherKind};

/// `[watchers.NAME]`: the keys every kind shares, typed here; the
/// kind-specific keys stay in `rest` and are checked by the kind
/// ([`WatcherKind::check_config`]) and read when the watcher is built.
#[derive(Clone, Debug, Deserialize)]
pub struct WatcherConfig {
    pub kind: WatcherKind,
    /// Cron expression with seconds (default every 5 minutes).
    pub schedule: Option<String>,
    /// The `[backends.NAME]` entry local checkpoints run with.
    pub backend: Option<String>,
    /// Benchmark names or SPECs (default `builtin:probes`).
    pub benchmarks: Option<Vec<String>>,
    /// A `[judges.NAME]` entry or judge SPEC (default `keyword`).
    pub judge: Option<String>,
    /// The model SPEC checkpoints are compared with.
    pub baseline: Option<String>,
    /// A `[templates.NAME]` entry (default `default`).
    pub template: Option<String>,
    /// The kind-specific keys.
    #[serde(flatten)]
    pub rest: toml::Table,
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

fn is_judge_spec(s: &str) -> bool {
    s == "keyword" || s.contains(':')
}

impl Config {
    /// Problems of `[watchers.NAME]`, found without building the watcher.
    pub(super) fn check_watcher(&self, name: &str, w: &WatcherConfig, p: &mut Vec<String>) {
        let key = format!("watchers.{name}");
        if let Some(s) = &w.schedule {
            if let Err(e) = check_cron(s) {
                p.push(format!("`{key}.schedule`: {e}"));
            }
        }
        p.append(&mut w.kind.check_config(name, &w.rest));
        if let Some(j) = &w.judge {
            if !self.judges.contains_key(j) && !is_judge_spec(j) {
                p.push(format!("`{key}.judge`: no judge named {j:?}"));
            }
        }
        if let Some(b) = &w.backend {
            if !self.backends.contains_key(b) {
                p.push(format!("`{key}.backend`: no backend named {b:?}"));
            }
        }
        for b in w.benchmarks.iter().flatten() {
            if !self.benchmarks.contains_key(b) && !b.contains(':') {
                p.push(format!("`{key}.benchmarks`: no benchmark named {b:?}"));
            }
        }
    }
}
