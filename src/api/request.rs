//! What `POST /api/v1/evaluations` asks for: [`EvaluationRequest`], checked
//! against the API's boundary ([`super::boundary`]) and stored with the
//! queued checkpoint, which the daemon evaluates from it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What to evaluate. Unset fields take the config's defaults: the bundled
/// probe benchmark, the keyword judge, the model's own template (else
/// `default`), `[eval]` decoding settings. Fields name configured entries;
/// local paths are accepted only under `[api] allowed_paths` (see
/// `docs/security.md`).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRequest {
    /// The model SPEC (`openai:NAME`, `onnx:DIR`, `hf:OWNER/NAME`,
    /// `mlflow:NAME/VERSION`, `BACKEND:MODEL` or a configured name).
    #[schema(min_length = 1, max_length = 1000)]
    pub model: String,
    /// Its aligned base model SPEC; drift is decided against it.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 1000)]
    pub baseline: Option<String>,
    /// Benchmark SPECs or configured names (default `builtin:probes`).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 32)]
    pub benchmarks: Option<Vec<String>>,
    /// Judge SPEC or configured name (default `keyword`).
    #[serde(default)]
    pub judge: Option<String>,
    /// Template name (`default` or a `[templates.NAME]` entry).
    #[serde(default)]
    pub template: Option<String>,
    /// A `[backends.NAME]` entry: the model is then `NAME:MODEL`.
    #[serde(default)]
    pub backend: Option<String>,
    /// At most this many prompts per benchmark (1 to 100000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub limit: Option<usize>,
}

impl EvaluationRequest {
    /// The model SPEC to resolve (with `backend` applied).
    pub fn model_spec(&self) -> String {
        match &self.backend {
            Some(b) => format!("{b}:{}", self.model.trim()),
            None => self.model.trim().to_string(),
        }
    }

    pub fn benchmark_specs(&self) -> Vec<String> {
        self.benchmarks
            .clone()
            .unwrap_or_else(|| vec!["builtin:probes".into()])
    }

    pub fn judge_spec(&self) -> String {
        self.judge.clone().unwrap_or_else(|| "keyword".into())
    }
}
