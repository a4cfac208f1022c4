//! Judge SPECs: `keyword`, `rubric:MODEL`, `llama-guard:MODEL`,
//! `rubric:onnx:DIR` and `llama-guard:onnx:DIR` (local generative judges on
//! the ONNX backend), `classifier:DIR` or a `[judges.NAME]` entry; local
//! judges loaded once per resolver; the teacher audit of a classifier entry.

use std::path::Path;
use std::sync::Arc;

use safedrift_judges::classifier::{ClassifierOptions, EncoderOptions};
use safedrift_judges::{
    Classifier, ClassifierJudge, Judge, KeywordJudge, LlamaGuardJudge, NextTokenModel,
    OnnxGuardJudge, OnnxRubricJudge, RubricJudge,
};

use super::{env_nonempty, invalid, ResolveError, Resolver, OPENAI_DEFAULT_BASE};
use crate::backend::onnx::{Device, OnnxBackend, OnnxOptions};
use crate::backend::openai::{EndpointConfig, OpenAiClient};
use crate::config::{read_secret, ClassifierJudgeConfig, JudgeConfig, ModelJudgeConfig};
use crate::pipeline::AuditPlan;

/// The two kinds of local generative judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LocalKind {
    Guard,
    Rubric,
}

impl Resolver {
    fn judge_client(
        &self,
        name: &str,
        m: &ModelJudgeConfig,
    ) -> Result<Arc<OpenAiClient>, ResolveError> {
        let base = m
            .base_url
            .clone()
            .or_else(|| self.judge_api_base.clone())
            .or_else(|| env_nonempty("OPENAI_BASE_URL"))
            .unwrap_or_else(|| OPENAI_DEFAULT_BASE.to_string());
        let concurrency = self.concurrency;
        self.client(format!("judge {name}"), || {
            let api_key = match read_secret(m.api_key_env.as_deref(), m.api_key_file.as_deref())
                .map_err(|e| invalid(format!("`judges.{name}`: {e}")))?
            {
                Some(k) => Some(k),
                None => env_nonempty("JUDGE_API_KEY").or_else(|| env_nonempty("OPENAI_API_KEY")),
            };
            Ok(EndpointConfig {
                base_urls: vec![base.clone()],
                api_key,
                max_concurrency: m.max_concurrency.unwrap_or(concurrency),
                requests_per_minute: m.requests_per_minute,
                tokens_per_minute: m.tokens_per_minute,
                ..EndpointConfig::default()
            })
        })
    }

    /// Resolves a judge SPEC: `keyword`, `rubric:MODEL`, `llama-guard:MODEL`,
    /// `rubric:onnx:DIR`, `llama-guard:onnx:DIR`, `classifier:DIR` or a
    /// `[judges.NAME]` entry.
    pub fn judge(&self, spec: &str) -> Result<Arc<dyn Judge>, ResolveError> {
        let spec = spec.trim();
        if let Some(j) = self.config.judges.get(spec) {
            return match j {
                JudgeConfig::Keyword(_) => Ok(Arc::new(KeywordJudge)),
                JudgeConfig::Rubric(m) | JudgeConfig::LlamaGuard(m) if m.local_dir().is_some() => {
                    let kind = if matches!(j, JudgeConfig::Rubric(_)) {
                        LocalKind::Rubric
                    } else {
                        LocalKind::Guard
                    };
                    self.local_judge(spec, kind, m.local_dir().expect("checked"), Some(m))
                }
                JudgeConfig::Rubric(m) => {
                    let chat = self.openai_model(self.judge_client(spec, m)?, &m.model);
                    Ok(Arc::new(RubricJudge::new(m.model.clone(), chat)))
                }
                JudgeConfig::LlamaGuard(m) => {
                    let chat = self.openai_model(self.judge_client(spec, m)?, &m.model);
                    Ok(Arc::new(LlamaGuardJudge::new(m.model.clone(), chat)))
                }
                JudgeConfig::Classifier(c) => self.classifier(spec, c),
            };
        }
        if spec == "keyword" {
            return Ok(Arc::new(KeywordJudge));
        }
        let (kind, model) = spec.split_once(':').ok_or_else(|| {
            invalid(format!(
                "judge {spec:?}: expected keyword, rubric:MODEL, llama-guard:MODEL, rubric:onnx:DIR, llama-guard:onnx:DIR, classifier:DIR or a configured name"
            ))
        })?;
        if model.trim().is_empty() {
            return Err(invalid(format!(
                "judge {spec:?}: the model after `{kind}:` is empty"
            )));
        }
        if let Some(dir) = ModelJudgeConfig::local_dir_of(model) {
            match kind {
                "rubric" => return self.local_judge(spec, LocalKind::Rubric, dir, None),
                "llama-guard" => return self.local_judge(spec, LocalKind::Guard, dir, None),
                _ => {}
            }
        }
        let cli = || {
            self.cli_endpoint(
                self.judge_api_base.as_deref(),
                &["JUDGE_API_KEY", "OPENAI_API_KEY"],
            )
        };
        match kind {
            "rubric" => Ok(Arc::new(RubricJudge::new(model, self.openai_model(cli()?, model)))),
            "llama-guard" => Ok(Arc::new(LlamaGuardJudge::new(model, self.openai_model(cli()?, model)))),
            "classifier" => self.classifier(
                spec,
                &ClassifierJudgeConfig {
                    path: model.into(),
                    teacher: None,
                    audit_fraction: 0.0,
                    unsure_below: 0.0,
                    min_agreement: 0.0,
                    batch_size: 32,
                    threads: None,
                    ort_dylib: None,
                },
            ),
            _ => Err(invalid(format!(
                "judge {spec:?}: unknown kind `{kind}` (expected keyword, rubric, llama-guard or classifier)"
            ))),
        }
    }

    /// Loads a local generative judge (`rubric:onnx:DIR`,
    /// `llama-guard:onnx:DIR`) once per resolver: the model on its own ONNX
    /// backend worker, with the entry's local settings (the backend's
    /// defaults without an entry).
    fn local_judge(
        &self,
        spec: &str,
        kind: LocalKind,
        dir: &Path,
        entry: Option<&ModelJudgeConfig>,
    ) -> Result<Arc<dyn Judge>, ResolveError> {
        if dir.as_os_str().is_empty() {
            return Err(invalid(format!(
                "judge {spec:?}: the directory after `onnx:` is empty"
            )));
        }
        let mut options = OnnxOptions::default();
        if let Some(m) = entry {
            if m.device.as_deref() == Some("cuda") {
                options.device = Device::Cuda;
            }
            options.cpu_fallback = m.cpu_fallback.unwrap_or(false);
            options.ort_dylib = m.ort_dylib.clone();
            options.max_batch = m.max_batch.unwrap_or(options.max_batch).max(1);
            options.kv_cache_mb = m.kv_cache_mb.unwrap_or(options.kv_cache_mb);
            options.threads = m.threads.unwrap_or(options.threads).max(1);
        }
        let key = dir_key(
            dir,
            serde_json::json!({
                "kind": format!("{kind:?}"),
                "device": format!("{:?}", options.device),
                "cpu_fallback": options.cpu_fallback,
                "ort_dylib": options.ort_dylib,
                "max_batch": options.max_batch,
                "kv_cache_mb": options.kv_cache_mb,
                "threads": options.threads,
            }),
        );
        if let Some(j) = self.classifiers.lock().unwrap().get(&key) {
            return Ok(j.clone());
        }
        let fail = |message: String| invalid(format!("judge {spec:?}: {message}"));
        let model: Arc<dyn NextTokenModel> =
            Arc::new(OnnxBackend::load(dir, options).map_err(|e| fail(e.message))?);
        let name = format!("onnx:{}", dir.display());
        let judge: Arc<dyn Judge> = match kind {
            LocalKind::Guard => {
                Arc::new(OnnxGuardJudge::new(name, model).map_err(|e| fail(e.message))?)
            }
            LocalKind::Rubric => {
                Arc::new(OnnxRubricJudge::new(name, model).map_err(|e| fail(e.message))?)
            }
        };
        self.classifiers.lock().unwrap().insert(key, judge.clone());
        Ok(judge)
    }

    /// Loads a classifier judge once per resolver. ONNX Runtime is set up
    /// (and its library discovered) before the judge is loaded.
    fn classifier(
        &self,
        spec: &str,
        c: &ClassifierJudgeConfig,
    ) -> Result<Arc<dyn Judge>, ResolveError> {
        let key = classifier_key(c);
        if let Some(j) = self.classifiers.lock().unwrap().get(&key) {
            return Ok(j.clone());
        }
        let env = crate::backend::onnx::runtime::environment(c.ort_dylib.as_deref())
            .map_err(|e| invalid(format!("judge {spec:?}: {e}")))?;
        let mut encoder = EncoderOptions {
            batch_size: c.batch_size.max(1),
            ..EncoderOptions::default()
        };
        if let Some(t) = c.threads {
            encoder.threads = t.max(1);
        }
        let classifier = Classifier::load(&env, &c.path, &ClassifierOptions { encoder })
            .map_err(|e| invalid(format!("judge {spec:?}: {e}")))?;
        let judge: Arc<dyn Judge> = Arc::new(ClassifierJudge::new(classifier, c.batch_size));
        self.classifiers.lock().unwrap().insert(key, judge.clone());
        Ok(judge)
    }

    /// The audit of a judge SPEC: a `[judges.NAME]` classifier entry with a
    /// `teacher`. `None` for every other judge.
    pub fn audit(&self, judge_spec: &str) -> Result<Option<AuditPlan>, ResolveError> {
        let Some(JudgeConfig::Classifier(c)) = self.config.judges.get(judge_spec.trim()) else {
            return Ok(None);
        };
        let Some(teacher_spec) = c.teacher.as_deref() else {
            return Ok(None);
        };
        let teacher = self
            .judge(teacher_spec)
            .map_err(|e| invalid(format!("`judges.{}.teacher`: {e}", judge_spec.trim())))?;
        Ok(Some(AuditPlan {
            teacher,
            teacher_spec: teacher_spec.to_string(),
            fraction: c.audit_fraction,
            unsure_below: c.unsure_below,
            min_agreement: c.min_agreement,
        }))
    }
}

/// What a loaded classifier judge is shared under: everything that changes
/// its answers. Its options (batch size and threads change the padding and
/// the arithmetic order), the runtime library, and its directory's files as
/// they are now (name, size, modification time), so a judge retrained into
/// the same directory is loaded afresh.
fn classifier_key(c: &ClassifierJudgeConfig) -> String {
    dir_key(
        &c.path,
        serde_json::json!({
            "batch_size": c.batch_size,
            "threads": c.threads,
            "ort_dylib": c.ort_dylib,
        }),
    )
}

/// What a judge loaded from `dir` is shared under: the directory, its files
/// as they are now (name, size, modification time), and `options`.
fn dir_key(dir: &Path, options: serde_json::Value) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = std::fs::metadata(e.path()).ok()?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Some(format!(
                "{}:{}:{modified}",
                e.file_name().to_string_lossy(),
                meta.len()
            ))
        })
        .collect();
    files.sort();
    serde_json::json!({
        "dir": dir,
        "files": files,
        "options": options,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_is_shared_only_while_nothing_that_changes_its_answers_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"one").unwrap();
        let config = |batch_size: usize, threads: Option<usize>| ClassifierJudgeConfig {
            path: dir.path().to_path_buf(),
            teacher: None,
            audit_fraction: 0.1,
            unsure_below: 0.6,
            min_agreement: 0.8,
            batch_size,
            threads,
            ort_dylib: None,
        };
        let key = classifier_key(&config(16, None));
        assert_eq!(key, classifier_key(&config(16, None)));
        assert_ne!(key, classifier_key(&config(8, None)));
        assert_ne!(key, classifier_key(&config(16, Some(1))));
        // Retrained into the same directory.
        std::fs::write(dir.path().join("model.onnx"), b"two, longer").unwrap();
        assert_ne!(key, classifier_key(&config(16, None)));
    }
}
