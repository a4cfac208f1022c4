//! Lanes: which evaluations may run side by side. Each backend is a lane
//! with its own `max_parallel`; `[eval] lanes = "single"` is one lane for all.

use super::*;

/// A lane of evaluations: those that run on one backend, at most
/// `max_parallel` of them at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lane {
    pub(super) name: String,
    pub(super) max_parallel: usize,
}

/// The one lane of `[eval] lanes = "single"`.
pub(super) const SINGLE_LANE: &str = "all";
/// Local ONNX models run without a `[backends.NAME]` entry of their own.
pub(super) const LOCAL_LANE: &str = "onnx";
/// A checkpoint whose lane cannot be known (its watcher is gone, its
/// request unreadable): its evaluation fails at once and is retried.
pub(super) const UNKNOWN_LANE: &str = "unassigned";

/// The lane of the `[backends.NAME]` entry, if there is one.
pub(super) fn backend_lane(config: &Config, name: &str) -> Option<Lane> {
    let max_parallel = match config.backends.get(name)? {
        BackendConfig::Onnx(o) => o.max_parallel.unwrap_or(config.eval.max_parallel.onnx),
        // One server per checkpoint at a time unless told otherwise.
        BackendConfig::Launch(l) => l.max_parallel.unwrap_or(1),
        BackendConfig::Openai(o) | BackendConfig::Vllm(o) => {
            o.max_parallel.unwrap_or(config.eval.max_parallel.openai)
        }
    };
    Some(Lane {
        name: name.to_string(),
        max_parallel: max_parallel.max(1),
    })
}

/// A local checkpoint: the lane of its `[backends.NAME]` ONNX settings (or
/// of the vLLM fleet its LoRA adapters load on, or of the launch backend
/// that serves it), else the shared `onnx` lane.
pub(super) fn local_lane(config: &Config, backend: Option<&str>) -> Lane {
    backend
        .filter(|b| {
            matches!(
                config.backends.get(*b),
                Some(BackendConfig::Onnx(_) | BackendConfig::Vllm(_) | BackendConfig::Launch(_))
            )
        })
        .and_then(|b| backend_lane(config, b))
        .unwrap_or_else(|| Lane {
            name: LOCAL_LANE.to_string(),
            max_parallel: config.eval.max_parallel.onnx.max(1),
        })
}

/// An OpenAI-compatible endpoint: the lane of the `[backends.NAME]` entry
/// that lists its base URL, else a lane named by the URL.
pub(super) fn endpoint_lane(config: &Config, base_url: &str) -> Lane {
    let norm = |u: &str| u.trim().trim_end_matches('/').to_string();
    let url = norm(base_url);
    for (name, b) in &config.backends {
        if let Some(o) = b.chat() {
            if o.base_url
                .iter()
                .chain(&o.base_urls)
                .any(|u| norm(u) == url)
            {
                if let Some(lane) = backend_lane(config, name) {
                    return lane;
                }
            }
        }
    }
    Lane {
        name: url,
        max_parallel: config.eval.max_parallel.openai.max(1),
    }
}

/// The lane of a model SPEC, read as [`Resolver::model`] reads it, without
/// resolving (or loading, or downloading) anything.
pub(super) fn spec_lane(config: &Config, spec: &str) -> Lane {
    let spec = spec.trim();
    if let Some(lane) = config
        .models
        .get(spec)
        .and_then(|m| backend_lane(config, &m.backend))
    {
        return lane;
    }
    if let Some(lane) = backend_lane(config, spec) {
        return lane;
    }
    match spec.split_once(':') {
        Some(("openai", _)) => {
            let base = std::env::var("OPENAI_BASE_URL")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| crate::resolve::OPENAI_DEFAULT_BASE.to_string());
            endpoint_lane(config, &base)
        }
        Some((kind, _)) if config.backends.contains_key(kind) => {
            backend_lane(config, kind).expect("configured")
        }
        // `onnx:`, `hf:` and `mlflow:` models run with the only ONNX
        // backend's settings, if there is exactly one.
        _ => {
            let mut onnx = config
                .backends
                .iter()
                .filter(|(_, b)| matches!(b, BackendConfig::Onnx(_)))
                .map(|(n, _)| n.as_str());
            let only = match (onnx.next(), onnx.next()) {
                (Some(name), None) => Some(name),
                _ => None,
            };
            local_lane(config, only)
        }
    }
}

/// The lane of a watcher's checkpoints: its endpoint for the watchers of
/// served models (ollama, openai-finetunes), else the local ONNX lane of its
/// `backend`.
pub(super) fn watcher_lane(config: &Config, w: &WatcherConfig, backend: Option<&str>) -> Lane {
    let url = |base_url: &Option<String>, default: &str| {
        base_url
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    };
    match &w.settings {
        WatcherSettings::Ollama(c) => endpoint_lane(
            config,
            &format!("{}/v1", url(&c.base_url, "http://localhost:11434")),
        ),
        WatcherSettings::OpenaiFinetunes(c) => endpoint_lane(
            config,
            &url(&c.base_url, crate::resolve::OPENAI_DEFAULT_BASE),
        ),
        _ => local_lane(config, backend),
    }
}

/// The lane a queued checkpoint runs in, from its record and the config.
pub(super) fn record_lane(
    config: &Config,
    slots: &[WatcherSlot],
    record: &CheckpointRecord,
) -> Lane {
    if config.eval.lanes == LaneMode::Single {
        return Lane {
            name: SINGLE_LANE.to_string(),
            max_parallel: 1,
        };
    }
    let cp = &record.checkpoint;
    let unknown = || Lane {
        name: UNKNOWN_LANE.to_string(),
        max_parallel: 1,
    };
    if cp.watcher == crate::api::evaluations::SOURCE {
        return serde_json::from_value::<crate::api::evaluations::EvaluationRequest>(
            cp.detail.clone(),
        )
        .map(|r| spec_lane(config, &r.model_spec()))
        .unwrap_or_else(|_| unknown());
    }
    slots
        .iter()
        .find(|s| s.name == cp.watcher)
        .map(|s| s.lane.clone())
        .unwrap_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        config::parse(text, &Source::Embedded).unwrap()
    }

    fn record(watcher: &str, detail: serde_json::Value) -> CheckpointRecord {
        CheckpointRecord {
            key: format!("{watcher}/m@1|k"),
            checkpoint: Checkpoint {
                watcher: watcher.into(),
                model: "m".into(),
                revision: "1".into(),
                baseline: None,
                detail,
            },
            eval_key: "k".into(),
            status: CheckpointStatus::Queued,
            attempts: 0,
            last_error: None,
            next_attempt_ms: 0,
            run_id: None,
            baseline_run_id: None,
            first_seen: now_rfc3339(),
            updated: now_rfc3339(),
        }
    }

    fn lane(name: &str, max_parallel: usize) -> Lane {
        Lane {
            name: name.into(),
            max_parallel,
        }
    }

    const BACKENDS: &str = r#"
[eval]
max_parallel = { openai = 6 }

[backends.local]
kind = "onnx"

[backends.fast]
kind = "onnx"
max_parallel = 2

[backends.vllm]
kind = "openai"
base_urls = ["http://10.0.0.11:8000/v1", "http://10.0.0.12:8000/v1/"]
max_parallel = 3

[backends.other]
kind = "openai"
base_url = "http://10.0.0.13:8000/v1"

[models.tuned]
backend = "vllm"
model = "tuned"
"#;

    #[test]
    fn every_backend_is_a_lane_with_its_own_max_parallel() {
        let c = config(BACKENDS);
        assert_eq!(spec_lane(&c, "tuned"), lane("vllm", 3));
        assert_eq!(spec_lane(&c, "vllm:some-model"), lane("vllm", 3));
        assert_eq!(spec_lane(&c, "other:m"), lane("other", 6));
        assert_eq!(spec_lane(&c, "local:/srv/m"), lane("local", 1));
        assert_eq!(spec_lane(&c, "fast:/srv/m"), lane("fast", 2));
        // Two ONNX backends: `onnx:DIR` uses neither's settings.
        assert_eq!(spec_lane(&c, "onnx:/srv/m"), lane(LOCAL_LANE, 1));
        // An endpoint configured as a backend is that backend's lane; any
        // other is a lane of its own, named by its URL.
        assert_eq!(
            endpoint_lane(&c, "http://10.0.0.12:8000/v1"),
            lane("vllm", 3)
        );
        assert_eq!(
            endpoint_lane(&c, "http://ollama:11434/v1/"),
            lane("http://ollama:11434/v1", 6)
        );
    }

    #[test]
    fn the_only_onnx_backend_takes_onnx_specs() {
        let c = config("[backends.local]\nkind = \"onnx\"\nmax_parallel = 2\n");
        assert_eq!(spec_lane(&c, "onnx:/srv/m"), lane("local", 2));
        assert_eq!(spec_lane(&c, "hf:acme/m"), lane("local", 2));
        let c = config("");
        assert_eq!(spec_lane(&c, "mlflow:m/3"), lane(LOCAL_LANE, 1));
    }

    #[test]
    fn watchers_of_served_models_run_in_their_endpoints_lane() {
        let c = config(BACKENDS);
        let w = |kind: &str, extra: &str| -> WatcherConfig {
            WatcherConfig::parse(
                "w",
                &toml::from_str(&format!("kind = {kind:?}\n{extra}")).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            watcher_lane(
                &c,
                &w("ollama", "base_url = \"http://10.0.0.11:8000/\""),
                None
            ),
            lane("vllm", 3)
        );
        assert_eq!(
            watcher_lane(&c, &w("ollama", ""), None),
            lane("http://localhost:11434/v1", 6)
        );
        assert_eq!(
            watcher_lane(&c, &w("openai-finetunes", ""), None),
            lane("https://api.openai.com/v1", 6)
        );
        assert_eq!(
            watcher_lane(&c, &w("directory", "path = \"/x\""), Some("fast")),
            lane("fast", 2)
        );
        assert_eq!(
            watcher_lane(&c, &w("huggingface", "author = \"acme\""), Some("vllm")),
            lane(LOCAL_LANE, 1)
        );
    }

    #[test]
    fn records_queued_through_the_api_take_their_models_lane() {
        let c = config(BACKENDS);
        let api = crate::api::evaluations::SOURCE;
        let r = record(api, serde_json::json!({"model": "m", "backend": "vllm"}));
        assert_eq!(record_lane(&c, &[], &r), lane("vllm", 3));
        let r = record(api, serde_json::json!({"model": "onnx:/x"}));
        assert_eq!(record_lane(&c, &[], &r), lane(LOCAL_LANE, 1));
        let r = record(api, serde_json::json!({"nonsense": true}));
        assert_eq!(record_lane(&c, &[], &r), lane(UNKNOWN_LANE, 1));
        // A watcher that is gone.
        assert_eq!(
            record_lane(&c, &[], &record("gone", serde_json::Value::Null)),
            lane(UNKNOWN_LANE, 1)
        );
        // One lane for everything: the order of the queue, one at a time.
        let single = config(
            &format!("{BACKENDS}\n[eval]\nlanes = \"single\"\n")
                .replace("[eval]\nmax_parallel = { openai = 6 }\n", ""),
        );
        let r = record(api, serde_json::json!({"model": "tuned"}));
        assert_eq!(record_lane(&single, &[], &r), lane(SINGLE_LANE, 1));
    }

    #[test]
    fn max_parallel_must_be_at_least_one() {
        let p = config::parse(
            "[eval]\nmax_parallel = { onnx = 0 }\n[backends.b]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmax_parallel = 0\n",
            &Source::Embedded,
        )
        .unwrap_err()
        .problems
        .join("\n");
        assert!(p.contains("`eval.max_parallel.onnx`"), "{p}");
        assert!(p.contains("`backends.b.max_parallel`"), "{p}");
        let p = config::parse("[eval]\nlanes = \"several\"\n", &Source::Embedded)
            .unwrap_err()
            .problems
            .join("\n");
        assert!(p.contains("lanes"), "{p}");
    }
}
