//! How a watcher's, or an API request's, checkpoints are evaluated: the
//! plan, resolved once from the config (or the request).

use super::*;

/// How a watcher's (or an API request's) checkpoints are evaluated.
pub(super) struct Plan {
    pub(super) eval: evaluation::Plan,
    /// Digest of `eval`: part of each queued checkpoint's key.
    pub(super) key: String,
    /// `[backends.NAME]` whose ONNX settings local checkpoints use.
    pub(super) backend: Option<String>,
    /// The backend per checkpoint format (`[watchers.X] backends`), over
    /// `backend`.
    pub(super) routes: BTreeMap<String, String>,
    /// A configured baseline SPEC (wins over what the registry names).
    pub(super) baseline: Option<String>,
}

impl Plan {
    fn new(eval: evaluation::Plan, backend: Option<String>, baseline: Option<String>) -> Plan {
        Plan {
            key: eval.key(),
            eval,
            backend,
            routes: BTreeMap::new(),
            baseline,
        }
    }

    /// The backend that runs `target`: for a checkpoint folder, the one
    /// `backends` names for its format, else `backend`. A watcher that
    /// routes by format and names no backend for a folder's format fails
    /// that checkpoint, naming the format.
    pub(super) fn backend_for(&self, target: &Target) -> Result<Option<&str>, String> {
        let Target::Onnx { dir } = target else {
            return Ok(self.backend.as_deref());
        };
        if self.routes.is_empty() {
            return Ok(self.backend.as_deref());
        }
        let format = safedrift_watchers::format::format_of(dir);
        let routed = format.and_then(|f| self.routes.get(f.as_str()));
        match (routed, &self.backend) {
            (Some(b), _) => Ok(Some(b.as_str())),
            (None, Some(b)) => Ok(Some(b.as_str())),
            (None, None) => {
                let routes: Vec<String> = self
                    .routes
                    .iter()
                    .map(|(f, b)| format!("{f} = {b:?}"))
                    .collect();
                Err(match format {
                    Some(f) => format!(
                        "a {} checkpoint, and the watcher's `backends` ({}) names no backend for {0} (set `backends.{0}` or `backend`)",
                        f.as_str(),
                        routes.join(", ")
                    ),
                    None => format!(
                        "cannot tell the checkpoint's format: {} holds no adapter_config.json, .onnx, .gguf or .safetensors file",
                        dir.display()
                    ),
                })
            }
        }
    }
}

/// The plan of an evaluation queued through the API: its request over the
/// config's defaults (the same as `eval`'s). Errors are what API clients
/// may read: no paths, no file contents.
pub(super) fn api_plan(
    config: &Config,
    resolver: &Resolver,
    request: &crate::api::evaluations::EvaluationRequest,
    model_template: Option<String>,
) -> Result<Plan, String> {
    let template = request
        .template
        .clone()
        .or(model_template)
        .unwrap_or_else(|| "default".into());
    let eval = evaluation::Plan::resolve(
        resolver,
        &request.benchmark_specs(),
        &request.judge_spec(),
        &template,
        evaluation::decoding(&config.eval),
        request.limit,
    )
    .map_err(|problems| {
        problems
            .iter()
            .map(|p| format!("{} {}: {}", p.field, p.spec, p.public))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    // Checked with the config when the daemon started.
    let eval = eval.with_probes(config.eval.probes(None, &[]).unwrap_or_default());
    Ok(Plan::new(
        eval,
        request.backend.clone(),
        request.baseline.clone(),
    ))
}

/// A configured watcher with its plan and poll state.
pub(super) struct WatcherSlot {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) schedule: String,
    pub(super) watcher: Arc<dyn Watcher>,
    pub(super) plan: Arc<Plan>,
    pub(super) trigger: Arc<Notify>,
    /// Where its checkpoints are evaluated.
    pub(super) lane: Lane,
}

/// Builds every configured watcher with its plan; all problems at once.
pub(super) fn build_watchers(
    config: &Config,
    resolver: &Resolver,
) -> Result<Vec<WatcherSlot>, Vec<String>> {
    let mut problems = Vec::new();
    let mut slots = Vec::new();
    for (name, w) in &config.watchers {
        let watcher = match w.build(name) {
            Ok(w) => Some(w),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        let kind = w.kind();
        let w = &w.common;
        let bench_specs = (w.benchmarks.clone()).unwrap_or_else(|| vec!["builtin:probes".into()]);
        let judge_spec = w.judge.clone().unwrap_or_else(|| "keyword".into());
        let template_name = w.template.clone().unwrap_or_else(|| "default".into());
        let probes = config
            .eval
            .probes(
                w.probes.as_deref(),
                w.attacks.as_deref().unwrap_or_default(),
            )
            .map_err(|e| problems.push(format!("`watchers.{name}`: {e}")))
            .ok();
        let eval = evaluation::Plan::resolve(
            resolver,
            &bench_specs,
            &judge_spec,
            &template_name,
            evaluation::decoding(&config.eval),
            None,
        )
        .map_err(|p| {
            problems.extend(
                p.into_iter()
                    .map(|p| format!("`watchers.{name}.{}`: {}", p.field, p.message)),
            )
        })
        .ok()
        .map(|plan| plan.with_probes(probes.unwrap_or_default()));
        let routes = w.backends.clone();
        // A watcher routing by format runs in the lane of `backend`, else
        // of the first backend it routes to.
        let backend = w.backend.clone();
        let lane_backend = backend.clone().or_else(|| routes.values().next().cloned());
        let baseline = w.baseline.clone();
        let schedule = w.schedule.clone().unwrap_or_else(|| "0 */5 * * * *".into());
        if let Err(e) = config::check_cron(&schedule) {
            problems.push(format!("`watchers.{name}.schedule`: {e}"));
        }
        if let (Some(watcher), Some(eval)) = (watcher, eval) {
            let lane = watcher_lane(config, &config.watchers[name], lane_backend.as_deref());
            slots.push(WatcherSlot {
                name: name.clone(),
                kind: kind.to_string(),
                schedule,
                watcher,
                plan: Arc::new(Plan {
                    routes,
                    ..Plan::new(eval, backend, baseline)
                }),
                trigger: Arc::new(Notify::new()),
                lane,
            });
        }
    }
    if problems.is_empty() {
        Ok(slots)
    } else {
        Err(problems)
    }
}
