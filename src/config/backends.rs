//! `[backends.NAME]` and `[models.NAME]`: where models run.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{check_secret_file, check_url, Config};

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BackendConfig {
    Openai(OpenAiBackendConfig),
    Onnx(OnnxBackendConfig),
    /// vLLM replicas: OpenAI-compatible chat (the `openai` keys) plus its
    /// runtime LoRA API (`shared_dir`, `lora_path`; see src/backend/vllm.rs).
    Vllm(OpenAiBackendConfig),
    /// A server started for each checkpoint from a command template, asked
    /// over its OpenAI-compatible API and stopped after (src/backend/launch.rs).
    Launch(LaunchBackendConfig),
}

impl BackendConfig {
    /// The chat endpoint's settings (kinds `openai` and `vllm`).
    pub fn chat(&self) -> Option<&OpenAiBackendConfig> {
        match self {
            BackendConfig::Openai(o) | BackendConfig::Vllm(o) => Some(o),
            BackendConfig::Onnx(_) | BackendConfig::Launch(_) => None,
        }
    }
}

/// An OpenAI-compatible endpoint (OpenAI, vLLM, TGI, Ollama).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiBackendConfig {
    /// One base URL ending in /v1 ...
    pub base_url: Option<String>,
    /// ... or several replicas; requests go to the least-loaded healthy one.
    #[serde(default)]
    pub base_urls: Vec<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// File holding the API key (e.g. a systemd credential).
    pub api_key_file: Option<PathBuf>,
    /// Model name, when this entry is used directly as a model spec.
    pub model: Option<String>,
    /// Requests in flight to this endpoint at most.
    pub max_concurrency: Option<usize>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Per-request timeout, e.g. "120s".
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retries after the first attempt.
    pub max_retries: Option<u32>,
    /// `max_tokens` (default) or `max_completion_tokens`.
    pub max_tokens_field: Option<String>,
    /// Template used with this endpoint's models unless `--template` is given.
    pub template: Option<String>,
    /// The daemon's evaluations of this endpoint's models run at once
    /// (default `eval.max_parallel.openai`).
    pub max_parallel: Option<usize>,
    /// Kind `vllm` only: a folder every replica reads at the same path;
    /// a LoRA checkpoint is copied there and loaded from there.
    pub shared_dir: Option<PathBuf>,
    /// Kind `vllm` only: what `lora_path` the replicas are sent:
    /// `"shared_dir"` (the default with `shared_dir`), `"registry"` (the
    /// checkpoint's id in its registry, for servers that resolve it) or
    /// `"local"` (the checkpoint's own path: the replicas mount it there).
    pub lora_path: Option<String>,
    /// The server continues a final assistant message when sent vLLM's
    /// `continue_final_message` flags, as `prefill:K` attacks need
    /// (default: true for kind `vllm`, false for kind `openai`).
    pub continue_final_message: Option<bool>,
}

/// A server launched per checkpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchBackendConfig {
    /// The server's command line, one argument per item (no shell), with
    /// `{dir}` (the checkpoint's folder), `{gguf}` (its one `.gguf` file),
    /// `{port}` (a free local port) and `{name}` (the folder's name)
    /// replaced: `["vllm", "serve", "{dir}", "--port", "{port}"]`.
    pub command: Vec<String>,
    /// The route polled until it answers 200 (default `/v1/models`).
    pub health_path: Option<String>,
    /// How long the server may take to answer it (default 10m).
    #[serde(default, with = "humantime_serde")]
    pub startup_timeout: Option<Duration>,
    /// SIGTERM to SIGKILL when the server is stopped (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    /// The model name sent in chat requests (default: the first model the
    /// server lists at `/v1/models`).
    pub model: Option<String>,
    /// Requests in flight to the server at most.
    pub max_concurrency: Option<usize>,
    /// Per-request timeout (default 10m).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub template: Option<String>,
    /// Servers running at once: the daemon's evaluations on this backend
    /// (default 1).
    pub max_parallel: Option<usize>,
}

/// A local ONNX model (run by the ONNX Runtime backend).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxBackendConfig {
    pub path: Option<PathBuf>,
    #[serde(default = "default_device")]
    pub device: String,
    pub max_new_tokens: Option<u32>,
    #[serde(default)]
    pub cpu_fallback: bool,
    pub ort_dylib: Option<PathBuf>,
    pub template: Option<String>,
    /// Most sequences decoded together (default 16).
    pub max_batch: Option<usize>,
    /// Memory for a batch's KV cache and logits, in MiB (default 2048); the
    /// batch shrinks to fit.
    pub kv_cache_mb: Option<usize>,
    /// ONNX Runtime threads (default: all cores).
    pub threads: Option<usize>,
    /// Repetition guard: stop when the last `repetition_window` tokens
    /// repeat a cycle of at most `repetition_max_period` tokens
    /// (defaults 64 and 16; 0 turns it off).
    pub repetition_window: Option<usize>,
    pub repetition_max_period: Option<usize>,
    /// The daemon's evaluations on this backend run at once (default
    /// `eval.max_parallel.onnx`).
    pub max_parallel: Option<usize>,
}

fn default_device() -> String {
    "cpu".into()
}

/// A named model: a backend plus a model name and template.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backend: String,
    pub model: Option<String>,
    pub template: Option<String>,
}

impl Config {
    /// Problems of the `[backends.NAME]` tables.
    pub(super) fn check_backends(&self, p: &mut Vec<String>) {
        for (name, b) in &self.backends {
            let key = format!("backends.{name}");
            match b {
                BackendConfig::Openai(o) => {
                    self.check_openai_backend(&key, o, p);
                    for (k, set) in [
                        ("shared_dir", o.shared_dir.is_some()),
                        ("lora_path", o.lora_path.is_some()),
                    ] {
                        if set {
                            p.push(format!("`{key}.{k}`: only for kind = \"vllm\""));
                        }
                    }
                }
                BackendConfig::Vllm(o) => {
                    self.check_openai_backend(&key, o, p);
                    check_lora_settings(&key, o, p);
                }
                BackendConfig::Onnx(o) => self.check_onnx_backend(&key, o, p),
                BackendConfig::Launch(l) => self.check_launch_backend(&key, l, p),
            }
        }
    }

    fn check_openai_backend(&self, key: &str, o: &OpenAiBackendConfig, p: &mut Vec<String>) {
        if o.base_url.is_none() && o.base_urls.is_empty() {
            p.push(format!("`{key}`: set `base_url` or `base_urls`"));
        }
        for u in o.base_url.iter().chain(&o.base_urls) {
            check_url(u, &format!("{key}.base_url"), p);
        }
        check_secret_file(o.api_key_file.as_deref(), &format!("{key}.api_key_file"), p);
        if o.max_concurrency == Some(0) {
            p.push(format!("`{key}.max_concurrency`: must be at least 1"));
        }
        if o.max_parallel == Some(0) {
            p.push(format!("`{key}.max_parallel`: must be at least 1"));
        }
        if let Some(f) = &o.max_tokens_field {
            if f != "max_tokens" && f != "max_completion_tokens" {
                p.push(format!(
                    "`{key}.max_tokens_field`: expected \"max_tokens\" or \"max_completion_tokens\""
                ));
            }
        }
        self.check_template_ref(o.template.as_deref(), key, p);
    }

    fn check_onnx_backend(&self, key: &str, o: &OnnxBackendConfig, p: &mut Vec<String>) {
        for (k, path) in [("path", &o.path), ("ort_dylib", &o.ort_dylib)] {
            if let Some(path) = path {
                if !path.exists() {
                    p.push(format!("`{key}.{k}`: {} does not exist", path.display()));
                }
            }
        }
        if !matches!(o.device.as_str(), "cpu" | "cuda") {
            p.push(format!("`{key}.device`: expected \"cpu\" or \"cuda\""));
        }
        if o.max_parallel == Some(0) {
            p.push(format!("`{key}.max_parallel`: must be at least 1"));
        }
        self.check_template_ref(o.template.as_deref(), key, p);
    }

    fn check_launch_backend(&self, key: &str, l: &LaunchBackendConfig, p: &mut Vec<String>) {
        match l.command.first() {
            None => p.push(format!(
                "`{key}.command`: empty; give the server's command line, e.g. [\"vllm\", \"serve\", \"{{dir}}\", \"--port\", \"{{port}}\"]"
            )),
            Some(program) if program.trim().is_empty() => {
                p.push(format!("`{key}.command`: the program (its first item) is empty"))
            }
            Some(_) if !l.command.iter().any(|a| a.contains("{port}")) => p.push(format!(
                "`{key}.command`: no `{{port}}`; the server must listen on the port it is given"
            )),
            Some(_) => {}
        }
        if let Some(path) = &l.health_path {
            if !path.starts_with('/') {
                p.push(format!("`{key}.health_path`: must start with /"));
            }
        }
        for (k, v) in [
            ("max_concurrency", l.max_concurrency),
            ("max_parallel", l.max_parallel),
        ] {
            if v == Some(0) {
                p.push(format!("`{key}.{k}`: must be at least 1"));
            }
        }
        if l.startup_timeout.is_some_and(|d| d.is_zero()) {
            p.push(format!("`{key}.startup_timeout`: must be more than 0"));
        }
        self.check_template_ref(l.template.as_deref(), key, p);
    }

    /// Problems of the `[models.NAME]` tables.
    pub(super) fn check_models(&self, p: &mut Vec<String>) {
        for (name, m) in &self.models {
            let key = format!("models.{name}");
            if !self.backends.contains_key(&m.backend) {
                p.push(format!("`{key}.backend`: no backend named {:?}", m.backend));
            }
            self.check_template_ref(m.template.as_deref(), &key, p);
        }
    }
}

/// The LoRA keys of a `vllm` backend.
fn check_lora_settings(key: &str, o: &OpenAiBackendConfig, p: &mut Vec<String>) {
    match (o.lora_path.as_deref(), &o.shared_dir) {
        (None | Some("local" | "registry"), _) => {}
        (Some("shared_dir"), Some(_)) => {}
        (Some("shared_dir"), None) => p.push(format!(
            "`{key}.lora_path`: \"shared_dir\" needs `{key}.shared_dir`"
        )),
        (Some(other), _) => p.push(format!(
            "`{key}.lora_path`: {other:?}: expected \"shared_dir\", \"registry\" or \"local\""
        )),
    }
    if let Some(dir) = &o.shared_dir {
        if !dir.is_absolute() {
            p.push(format!(
                "`{key}.shared_dir`: {} is not an absolute path (the replicas read it at the same path)",
                dir.display()
            ));
        } else if !dir.exists() {
            p.push(format!(
                "`{key}.shared_dir`: {} does not exist",
                dir.display()
            ));
        } else if !dir.is_dir() {
            p.push(format!(
                "`{key}.shared_dir`: {} is not a folder",
                dir.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Source};

    fn problems(text: &str) -> Vec<String> {
        match parse(text, &Source::File("t.toml".into())) {
            Ok(_) => vec![],
            Err(e) => e.problems,
        }
    }

    #[test]
    fn the_lora_keys_are_checked_and_only_for_vllm() {
        let shared = std::env::temp_dir();
        let ok = format!(
            "[backends.fleet]\nkind = \"vllm\"\nbase_urls = [\"http://a:8000/v1\", \"http://b:8000/v1\"]\nshared_dir = {:?}\n",
            shared.display().to_string()
        );
        assert_eq!(problems(&ok), Vec::<String>::new());
        let p = problems(
            "[backends.fleet]\nkind = \"vllm\"\nbase_url = \"http://a:8000/v1\"\nlora_path = \"nfs\"\n\
             [backends.api]\nkind = \"openai\"\nbase_url = \"http://b/v1\"\nshared_dir = \"/srv\"\n\
             [backends.rel]\nkind = \"vllm\"\nbase_url = \"http://c/v1\"\nshared_dir = \"adapters\"\nlora_path = \"shared_dir\"\n",
        )
        .join("\n");
        assert!(p.contains("`backends.fleet.lora_path`: \"nfs\""), "{p}");
        assert!(
            p.contains("`backends.api.shared_dir`: only for kind = \"vllm\""),
            "{p}"
        );
        assert!(
            p.contains("`backends.rel.shared_dir`: adapters is not an absolute path"),
            "{p}"
        );
    }

    #[test]
    fn the_launch_keys_are_checked() {
        let ok = "[backends.l]\nkind = \"launch\"\ncommand = [\"vllm\", \"serve\", \"{dir}\", \"--port\", \"{port}\"]\n\
                  startup_timeout = \"5m\"\nmax_parallel = 2\n";
        assert_eq!(problems(ok), Vec::<String>::new());
        let p = problems(
            "[backends.empty]\nkind = \"launch\"\ncommand = []\nhealth_path = \"v1/models\"\nmax_parallel = 0\n\
             [backends.noport]\nkind = \"launch\"\ncommand = [\"serve\", \"{dir}\"]\nstartup_timeout = \"0s\"\n\
             [backends.blank]\nkind = \"launch\"\ncommand = [\" \", \"{port}\"]\n",
        )
        .join("\n");
        for want in [
            "`backends.empty.command`: empty",
            "`backends.empty.health_path`: must start with /",
            "`backends.empty.max_parallel`: must be at least 1",
            "`backends.noport.command`: no `{port}`",
            "`backends.noport.startup_timeout`: must be more than 0",
            "`backends.blank.command`: the program (its first item) is empty",
        ] {
            assert!(p.contains(want), "{want}: {p}");
        }
    }

    #[test]
    fn a_watchers_routes_name_known_formats_and_backends_that_run_them() {
        let backends = "[backends.fleet]\nkind = \"vllm\"\nbase_url = \"http://a:8000/v1\"\n\
                        [backends.launcher]\nkind = \"launch\"\ncommand = [\"serve\", \"{dir}\", \"--port\", \"{port}\"]\n\
                        [backends.local]\nkind = \"onnx\"\n";
        let ok = format!(
            "{backends}[watchers.w]\nkind = \"directory\"\npath = \"/tmp\"\n\
             backends = {{ lora = \"fleet\", safetensors = \"launcher\", gguf = \"launcher\", onnx = \"local\" }}\n"
        );
        assert_eq!(problems(&ok), Vec::<String>::new());
        let p = problems(&format!(
            "{backends}[watchers.w]\nkind = \"directory\"\npath = \"/tmp\"\n\
             backends = {{ lora = \"local\", pt = \"launcher\", gguf = \"nowhere\", safetensors = \"fleet\" }}\n"
        ))
        .join("\n");
        for want in [
            "`watchers.w.backends.lora`: \"local\" cannot run lora checkpoints; it takes a `vllm` backend",
            "`watchers.w.backends.pt`: unknown format (expected lora, onnx, gguf, safetensors)",
            "`watchers.w.backends.gguf`: no backend named \"nowhere\"",
            "`watchers.w.backends.safetensors`: \"fleet\" cannot run safetensors checkpoints",
        ] {
            assert!(p.contains(want), "{want}: {p}");
        }
    }
}
