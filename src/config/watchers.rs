//! `[watchers.NAME]`: what a watcher names elsewhere in the config (its
//! judge, backend and benchmarks). The table itself is typed and checked by
//! [`WatcherConfig::parse`] in the watchers crate.

use super::{Config, WatcherConfig};

fn is_judge_spec(s: &str) -> bool {
    s == "keyword" || s.contains(':')
}

impl Config {
    /// Problems of the names `[watchers.NAME]` refers to.
    pub(super) fn check_watcher(&self, name: &str, w: &WatcherConfig, p: &mut Vec<String>) {
        let key = format!("watchers.{name}");
        let w = &w.common;
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
