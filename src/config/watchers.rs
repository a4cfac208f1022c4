//! `[watchers.NAME]`: what a watcher names elsewhere in the config (its
//! judge, backend and benchmarks). The table itself is typed and checked by
//! [`WatcherConfig::parse`] in the watchers crate.

use super::{Config, WatcherConfig};

fn is_judge_spec(s: &str) -> bool {
    s == "keyword" || s.contains(':')
}

use super::BackendConfig;
use safedrift_watchers::format::FORMATS;

impl Config {
    /// `backends.FORMAT = "NAME"`: a format the watchers tell, a backend
    /// that exists, and one of a kind that runs that format.
    fn check_route(&self, key: &str, format: &str, backend: &str, p: &mut Vec<String>) {
        let names: Vec<&str> = FORMATS.iter().map(|(n, _)| *n).collect();
        if !names.contains(&format) {
            p.push(format!(
                "`{key}.backends.{format}`: unknown format (expected {})",
                names.join(", ")
            ));
            return;
        }
        let Some(b) = self.backends.get(backend) else {
            p.push(format!(
                "`{key}.backends.{format}`: no backend named {backend:?}"
            ));
            return;
        };
        let fits = matches!(
            (format, b),
            ("lora", BackendConfig::Vllm(_))
                | ("onnx", BackendConfig::Onnx(_) | BackendConfig::Launch(_))
                | ("gguf" | "safetensors", BackendConfig::Launch(_))
        );
        if !fits {
            let wants = match format {
                "lora" => "a `vllm` backend (runtime LoRA loading)",
                "onnx" => "an `onnx` or `launch` backend",
                _ => "a `launch` backend (a server started per checkpoint)",
            };
            p.push(format!(
                "`{key}.backends.{format}`: {backend:?} cannot run {format} checkpoints; it takes {wants}"
            ));
        }
    }

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
        for (format, b) in &w.backends {
            self.check_route(&key, format, b, p);
        }
        for b in w.benchmarks.iter().flatten() {
            if !self.benchmarks.contains_key(b) && !b.contains(':') {
                p.push(format!("`{key}.benchmarks`: no benchmark named {b:?}"));
            }
        }
        if let Some(names) = &w.probes {
            if let Err(e) = self.eval.probes(Some(names), &[]) {
                p.push(format!("`{key}.probes`: {e}"));
            }
        }
        if let Some(attacks) = &w.attacks {
            if let Err(e) = self.eval.probes(Some(&[]), attacks) {
                p.push(format!("`{key}.attacks`: {e}"));
            }
        }
    }
}
