//! `[judges.NAME]`: who decides whether an answer is harmful.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{check_secret_file, check_url, Config};

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JudgeConfig {
    Keyword(KeywordJudgeConfig),
    Rubric(ModelJudgeConfig),
    LlamaGuard(ModelJudgeConfig),
    Classifier(ClassifierJudgeConfig),
}

/// The keyword judge has no settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordJudgeConfig {}

/// A judge that asks a chat model: one behind an OpenAI-compatible API, or
/// a local one on the ONNX backend (`model = "onnx:DIR"`), whose verdict is
/// read from its next-token logits after one prefill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelJudgeConfig {
    /// The judge model's name at its endpoint, or `onnx:DIR` for a local
    /// model directory (HF optimum layout with its chat template).
    pub model: String,
    /// Endpoint of the judge model (default: $OPENAI_BASE_URL, else OpenAI).
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub max_concurrency: Option<usize>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Local (`onnx:DIR`) models only: "cpu" (default) or "cuda".
    pub device: Option<String>,
    /// Local models only: with device = "cuda", run on the CPU when CUDA
    /// cannot be used (default false: that is an error).
    pub cpu_fallback: Option<bool>,
    /// Local models only: answers judged in one prefill at most (default 16).
    pub max_batch: Option<usize>,
    /// Local models only: memory for a batch's KV cache and logits, in MiB
    /// (default 2048); the batch shrinks to fit.
    pub kv_cache_mb: Option<usize>,
    /// Local models only: ONNX Runtime threads (default: all cores).
    pub threads: Option<usize>,
    /// Local models only: the ONNX Runtime library (default:
    /// $ORT_DYLIB_PATH, else python3's onnxruntime package).
    pub ort_dylib: Option<PathBuf>,
}

impl ModelJudgeConfig {
    /// The directory of a local model (`model = "onnx:DIR"`), or `None` for
    /// a model behind an API.
    pub fn local_dir(&self) -> Option<&Path> {
        Self::local_dir_of(&self.model)
    }

    /// The directory of a judge model named `onnx:DIR` (in an entry or a
    /// SPEC); `None` for any other model name.
    pub fn local_dir_of(model: &str) -> Option<&Path> {
        model
            .trim()
            .strip_prefix("onnx:")
            .map(|dir| Path::new(dir.trim()))
    }
}

/// The local classifier judge (`safedrift distill` writes its directory),
/// and how it is audited against its teacher.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierJudgeConfig {
    /// The judge directory (`head.json` and `encoder/`).
    pub path: PathBuf,
    /// A judge SPEC or `[judges.*]` name that re-judges a sample of the
    /// answers (the audit). Without it nothing is audited.
    pub teacher: Option<String>,
    /// Share of each run's answers re-judged by the teacher, picked by a hash
    /// of the prompt id (the same prompts every run).
    #[serde(default = "default_audit_fraction")]
    pub audit_fraction: f64,
    /// Answers judged with a confidence below this are always re-judged.
    #[serde(default = "default_unsure_below")]
    pub unsure_below: f64,
    /// A run whose audited agreement falls below this is flagged
    /// (`audit.below_threshold`) and logged as a warning.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// Answers judged together (at most this many texts per ONNX Runtime
    /// call; the judge splits them by length).
    #[serde(default = "default_classifier_batch")]
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads (default: all cores).
    pub threads: Option<usize>,
    /// The ONNX Runtime library (default: $ORT_DYLIB_PATH, else python3's
    /// onnxruntime package).
    pub ort_dylib: Option<PathBuf>,
}

fn default_audit_fraction() -> f64 {
    0.05
}

fn default_unsure_below() -> f64 {
    0.6
}

fn default_min_agreement() -> f64 {
    0.8
}

fn default_classifier_batch() -> usize {
    32
}

impl Config {
    /// Problems of the `[judges.NAME]` tables.
    pub(super) fn check_judges(&self, p: &mut Vec<String>) {
        for (name, j) in &self.judges {
            let key = format!("judges.{name}");
            match j {
                JudgeConfig::Rubric(m) | JudgeConfig::LlamaGuard(m) => match m.local_dir() {
                    Some(dir) => check_local_judge(&key, dir, m, p),
                    None => {
                        if let Some(u) = &m.base_url {
                            check_url(u, &format!("{key}.base_url"), p);
                        }
                        check_secret_file(
                            m.api_key_file.as_deref(),
                            &format!("{key}.api_key_file"),
                            p,
                        );
                        for (k, set) in local_keys(m) {
                            if set {
                                p.push(format!(
                                    "`{key}.{k}`: applies to a local model (model = \"onnx:DIR\") only"
                                ));
                            }
                        }
                    }
                },
                JudgeConfig::Classifier(c) => self.check_classifier(name, &key, c, p),
                JudgeConfig::Keyword(_) => {}
            }
        }
    }

    fn check_classifier(
        &self,
        name: &str,
        key: &str,
        c: &ClassifierJudgeConfig,
        p: &mut Vec<String>,
    ) {
        if !c.path.exists() {
            p.push(format!("`{key}.path`: {} does not exist", c.path.display()));
        }
        for (k, v) in [
            ("audit_fraction", c.audit_fraction),
            ("unsure_below", c.unsure_below),
            ("min_agreement", c.min_agreement),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("`{key}.{k}`: {v} is not a fraction in [0, 1]"));
            }
        }
        if c.batch_size == 0 {
            p.push(format!("`{key}.batch_size`: must be at least 1"));
        }
        if c.threads == Some(0) {
            p.push(format!("`{key}.threads`: must be at least 1"));
        }
        match c.teacher.as_deref().map(str::trim) {
            Some(t) if t == name => p.push(format!("`{key}.teacher`: a judge cannot audit itself")),
            Some("") => p.push(format!("`{key}.teacher`: empty")),
            Some(t) if t.starts_with("classifier:") => p.push(format!(
                "`{key}.teacher`: the teacher must be another kind of judge (keyword, rubric:MODEL, llama-guard:MODEL or a configured name)"
            )),
            Some(t) if !t.contains(':') && t != "keyword" && !self.judges.contains_key(t) => {
                p.push(format!("`{key}.teacher`: no judge named {t:?}"))
            }
            _ => {}
        }
        if let Some(f) = &c.ort_dylib {
            if !f.is_file() {
                p.push(format!("`{key}.ort_dylib`: {} does not exist", f.display()));
            }
        }
    }
}

/// Which local-only keys an entry sets.
fn local_keys(m: &ModelJudgeConfig) -> [(&'static str, bool); 6] {
    [
        ("device", m.device.is_some()),
        ("cpu_fallback", m.cpu_fallback.is_some()),
        ("max_batch", m.max_batch.is_some()),
        ("kv_cache_mb", m.kv_cache_mb.is_some()),
        ("threads", m.threads.is_some()),
        ("ort_dylib", m.ort_dylib.is_some()),
    ]
}

/// Problems of a `rubric` or `llama-guard` entry with a local model.
fn check_local_judge(key: &str, dir: &Path, m: &ModelJudgeConfig, p: &mut Vec<String>) {
    if dir.as_os_str().is_empty() {
        p.push(format!(
            "`{key}.model`: the directory after `onnx:` is empty"
        ));
    } else if !dir.exists() {
        p.push(format!("`{key}.model`: {} does not exist", dir.display()));
    } else if !dir.is_dir() {
        p.push(format!(
            "`{key}.model`: {} is not a directory",
            dir.display()
        ));
    }
    for (k, set) in [
        ("base_url", m.base_url.is_some()),
        ("api_key_env", m.api_key_env.is_some()),
        ("api_key_file", m.api_key_file.is_some()),
        ("max_concurrency", m.max_concurrency.is_some()),
        ("requests_per_minute", m.requests_per_minute.is_some()),
        ("tokens_per_minute", m.tokens_per_minute.is_some()),
    ] {
        if set {
            p.push(format!(
                "`{key}.{k}`: applies to a judge model behind an API, not to a local onnx: model"
            ));
        }
    }
    if let Some(d) = &m.device {
        if !matches!(d.as_str(), "cpu" | "cuda") {
            p.push(format!("`{key}.device`: expected \"cpu\" or \"cuda\""));
        }
    }
    for (k, v) in [
        ("max_batch", m.max_batch),
        ("kv_cache_mb", m.kv_cache_mb),
        ("threads", m.threads),
    ] {
        if v == Some(0) {
            p.push(format!("`{key}.{k}`: must be at least 1"));
        }
    }
    if let Some(f) = &m.ort_dylib {
        if !f.is_file() {
            p.push(format!("`{key}.ort_dylib`: {} does not exist", f.display()));
        }
    }
}
