//! Taking checkpoints from the queue: the dispatcher fills each lane up to
//! its `max_parallel`; each evaluation fetches its checkpoint, resolves its
//! baseline and hands both to [`crate::evaluation`].

use super::*;

impl Daemon {
    /// The dispatcher: starts the oldest due queued checkpoint of every lane
    /// that has room, until the daemon stops; then waits for the evaluations
    /// of every lane to stop at a prompt boundary.
    pub(super) async fn evaluator(self: Arc<Self>) {
        struct Alive<'a>(&'a Daemon);
        impl Drop for Alive<'_> {
            fn drop(&mut self) {
                if !self.0.cancel.is_cancelled() {
                    error!("the evaluator stopped unexpectedly");
                    self.0.health.lock().unwrap().evaluator_dead = true;
                }
            }
        }
        let _alive = Alive(&self);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if self.cancel.is_cancelled() {
                break;
            }
            let wait = self.dispatch(&mut tasks);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                // Something was queued, or an evaluation ended.
                _ = self.queue.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Starts what the lanes have room for; returns how long to wait before
    /// the next queued checkpoint is due (when nothing else wakes the loop).
    pub(super) fn dispatch(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) -> Duration {
        let now = now_ms();
        let due = match self.jobs().due(now) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot read the queue");
                queue::Due {
                    ready: Vec::new(),
                    next_ms: None,
                }
            }
        };
        let config = self.config();
        let slots = self.watchers.read().unwrap().clone();
        let mut health = self.health.lock().unwrap();
        let mut busy: HashMap<String, usize> = HashMap::new();
        let mut running: HashSet<String> = HashSet::new();
        // A watcher's checkpoints form lineages whose alerts are grouped and
        // resolved in queue order: they are evaluated one at a time, oldest
        // first (different watchers, and API requests, run side by side).
        let mut in_order: HashSet<String> = HashSet::new();
        for (key, e) in &health.evaluating {
            *busy.entry(e.lane.name.clone()).or_default() += 1;
            running.insert(key.clone());
            running.insert(e.checkpoint.clone());
            in_order.insert(e.watcher.clone());
        }
        for record in &due.ready {
            let checkpoint = record.checkpoint.key();
            let watcher = record.checkpoint.watcher.clone();
            let ordered = watcher != crate::api::evaluations::SOURCE;
            if ordered && !in_order.insert(watcher.clone()) {
                continue;
            }
            // Never the same checkpoint twice at once (under two plans, say).
            if running.contains(&record.key) || running.contains(&checkpoint) {
                continue;
            }
            let lane = record_lane(&config, &slots, record);
            let in_lane = busy.entry(lane.name.clone()).or_default();
            if *in_lane >= lane.max_parallel || self.cancel.is_cancelled() {
                continue;
            }
            *in_lane += 1;
            running.insert(record.key.clone());
            running.insert(checkpoint.clone());
            let progress = indicatif::ProgressBar::hidden();
            health.evaluating.insert(
                record.key.clone(),
                Evaluation {
                    lane: lane.clone(),
                    watcher,
                    checkpoint,
                    attempt: record.attempts + 1,
                    started: now_rfc3339(),
                    progress: progress.clone(),
                },
            );
            let record = record.clone();
            let me = self.clone();
            tasks.spawn(async move {
                // Each evaluation runs in its own task so that a panic (a
                // bug, a hostile input nobody foresaw) fails that checkpoint,
                // not its lane or the dispatcher.
                let key = record.key.clone();
                let inner = {
                    let me = me.clone();
                    tokio::spawn(async move { me.process(record, &lane.name, progress).await })
                };
                if let Err(e) = inner.await {
                    error!(checkpoint = %key, error = %e, "the evaluation crashed; will retry");
                    me.fail_after_crash(&key, e.to_string());
                }
                me.health.lock().unwrap().evaluating.remove(&key);
                me.queue.notify_one();
            });
        }
        drop(health);
        let wait = due.next_ms.map_or(60_000, |n| n - now).clamp(100, 60_000);
        Duration::from_millis(wait)
    }

    /// Records a crashed evaluation as failed, to be retried with backoff.
    pub(super) fn fail_after_crash(&self, key: &str, error: String) {
        if let Err(e) = self.jobs().crashed(key, error, now_rfc3339()) {
            error!(error = %e, "cannot update the queue");
        }
    }

    pub(super) async fn process(
        &self,
        mut record: CheckpointRecord,
        lane: &str,
        progress: indicatif::ProgressBar,
    ) {
        let jobs = self.jobs();
        if let Err(e) = jobs.start(&mut record, now_rfc3339()) {
            error!(error = %e, "cannot update the queue");
            return;
        }
        let _ = self.store.flush().await;
        info!(checkpoint = %record.checkpoint.key(), lane, attempt = record.attempts, "evaluating");
        let outcome = self.evaluate(&record, &progress).await;
        // The evaluation's models are dropped by now (the resolver keeps
        // weak references only): hand their memory back to the system.
        safedrift_judges::give_memory_back();
        match outcome {
            Ok((run, baseline)) => {
                record.status = CheckpointStatus::Done;
                record.run_id = Some(run.id.clone());
                record.baseline_run_id = baseline;
                record.last_error = None;
                let drift = run.drift.as_ref().is_some_and(|d| d.detected);
                info!(checkpoint = %record.checkpoint.key(), run = %run.id, drift, "evaluated");
            }
            Err(Failure::Superseded) => {
                record.status = CheckpointStatus::Done;
                record.last_error = Some(
                    "superseded: the evaluation plan changed; queued again under the new plan"
                        .into(),
                );
                info!(checkpoint = %record.checkpoint.key(), "skipped: queued under an old evaluation plan");
            }
            Err(Failure::Stopped) => {
                record.status = CheckpointStatus::Queued;
                info!(checkpoint = %record.checkpoint.key(), "stopped at a prompt boundary; resumes on the next start");
            }
            Err(Failure::Error(e)) => {
                let retry_in_s = queue::backoff_ms(record.attempts) / 1000;
                warn!(checkpoint = %record.checkpoint.key(), error = %e, retry_in_s, "evaluation failed; will retry");
                Queue::retry_later(&mut record, e);
            }
        }
        record.updated = now_rfc3339();
        if let Err(e) = jobs.put(&record) {
            error!(error = %e, "cannot update the queue");
        }
        let _ = self.store.flush().await;
    }

    pub(super) fn slot(&self, watcher: &str) -> Option<(Arc<Vec<WatcherSlot>>, usize)> {
        let slots = self.watchers.read().unwrap().clone();
        let index = slots.iter().position(|s| s.name == watcher)?;
        Some((slots, index))
    }

    /// Fetches, resolves the baseline, then evaluates and decides drift
    /// through [`crate::evaluation`]; a new decision goes to the alerts.
    pub(super) async fn evaluate(
        &self,
        record: &CheckpointRecord,
        progress: &indicatif::ProgressBar,
    ) -> Result<(RunRecord, Option<String>), Failure> {
        let cp = &record.checkpoint;
        let resolver = self.resolver.read().unwrap().clone();
        let found = if cp.watcher == crate::api::evaluations::SOURCE {
            None
        } else {
            Some(self.slot(&cp.watcher).ok_or_else(|| {
                Failure::Error(format!("watcher {} is no longer configured", cp.watcher))
            })?)
        };
        let slot = found.as_ref().map(|(slots, index)| &slots[*index]);
        let (plan, candidate, target) = self.candidate(record, slot, &resolver).await?;
        let (baseline, baseline_dir) = self.baseline(&plan, cp, slot, &resolver).await?;
        // A LoRA adapter with no baseline configured: its base model on its fleet.
        let baseline = match (baseline, &target) {
            (None, Some(t)) => resolver
                .lora_baseline(t, plan.backend_for(t).map_err(Failure::Error)?)
                .map_err(|e| Failure::Error(e.to_string()))?
                .map(|(spec, backend)| evaluation::Subject {
                    model: ModelRef {
                        spec,
                        revision: None,
                        registry: None,
                    },
                    backend,
                }),
            (b, _) => b,
        };

        // Keep the cache under its limit, never evicting what this or any
        // other lane's evaluation is about to run or running.
        let mut mine: Vec<PathBuf> = baseline_dir.into_iter().collect();
        if let Some(Target::Onnx { dir }) = &target {
            mine.push(dir.clone());
        }
        let _in_use = self.use_dirs(mine);

        let evaluator = evaluation::Evaluator {
            store: &self.store,
            concurrency: self.config().eval.concurrency,
            progress,
            cancel: &self.cancel,
            locks: &self.locks,
        };
        let checkpoint = cp.key();
        let outcome = evaluator
            .evaluate(
                &plan.eval,
                candidate,
                baseline,
                true,
                Some(&checkpoint),
                &self.config().drift,
            )
            .await
            .map_err(|e| match e {
                evaluation::Failure::Cancelled => Failure::Stopped,
                evaluation::Failure::Stopped(s) if matches!(s.error, EvalError::Interrupted) => {
                    Failure::Stopped
                }
                e => Failure::Error(e.to_string()),
            })?;
        if !outcome.already_done {
            self.alerts.run_completed(&outcome.report).await;
        }
        let baseline_id = outcome.run.baseline_run.clone();
        Ok((outcome.run, baseline_id))
    }

    /// The plan and the model of a queued checkpoint: a watcher's (fetched
    /// through it, under its plan), or an API request's (the request is
    /// the plan, checked against the API's boundary again).
    async fn candidate(
        &self,
        record: &CheckpointRecord,
        slot: Option<&WatcherSlot>,
        resolver: &Resolver,
    ) -> Result<(Arc<Plan>, evaluation::Subject, Option<Target>), Failure> {
        let cp = &record.checkpoint;
        let err = |e: String| Failure::Error(e);
        if let Some(slot) = slot {
            let plan = slot.plan.clone();
            if record.eval_key != plan.key {
                return Err(Failure::Superseded);
            }
            let target = self
                .fetch(slot, cp)
                .await?
                .map_err(|e| err(e.to_string()))?;
            // A LoRA adapter for a vLLM fleet is loaded there; anything else
            // resolves as the watcher's target.
            let route = plan.backend_for(&target).map_err(err)?;
            let lora = resolver
                .lora_candidate(&target, route, cp)
                .await
                .map_err(|e| err(e.to_string()))?;
            let backend = match lora {
                Some(b) => b,
                None => resolver
                    .target(&target, route)
                    .await
                    .map_err(|e| err(e.to_string()))?,
            };
            let model = ModelRef {
                spec: format!("{}:{}", slot.kind, cp.model),
                revision: Some(cp.revision.clone()),
                registry: Some(cp.watcher.clone()),
            };
            return Ok((plan, evaluation::Subject { model, backend }, Some(target)));
        }
        let request: crate::api::evaluations::EvaluationRequest =
            serde_json::from_value(cp.detail.clone())
                .map_err(|e| err(format!("the queued request is unreadable: {e}")))?;
        // The API's boundary holds here too: the config (or the files) may
        // have changed since the request was queued.
        crate::api::boundary::check(&self.config(), &request).map_err(|e| err(e.message))?;
        let spec = request.model_spec();
        let model = resolver
            .model(&spec)
            .await
            .map_err(|e| err(format!("model {spec}: {}", e.public_message())))?;
        let plan = Arc::new(
            api_plan(&self.config(), resolver, &request, model.template.clone()).map_err(err)?,
        );
        let subject = evaluation::Subject {
            model: ModelRef {
                spec,
                revision: None,
                registry: None,
            },
            backend: model.backend,
        };
        Ok((plan, subject, None))
    }

    /// The baseline: configured (the plan's), else what the registry names
    /// (another checkpoint, fetched through the same watcher, or a runnable
    /// target); with the local folder it runs from, if any.
    async fn baseline(
        &self,
        plan: &Plan,
        cp: &Checkpoint,
        slot: Option<&WatcherSlot>,
        resolver: &Resolver,
    ) -> Result<(Option<evaluation::Subject>, Option<PathBuf>), Failure> {
        let err = |e: String| Failure::Error(e);
        let plain = |spec: String| ModelRef {
            spec,
            revision: None,
            registry: None,
        };
        match (&plan.baseline, &cp.baseline) {
            (Some(spec), _) => {
                let b = resolver.model(spec).await.map_err(|e| {
                    // API clients read this error: no paths or contents.
                    let e = match slot {
                        None => e.public_message().to_string(),
                        Some(_) => e.to_string(),
                    };
                    err(format!("baseline {spec}: {e}"))
                })?;
                let subject = evaluation::Subject {
                    model: plain(spec.clone()),
                    backend: b.backend,
                };
                Ok((Some(subject), None))
            }
            (None, Some(Baseline::Checkpoint(base))) => {
                let slot = slot.ok_or_else(|| err("no watcher to fetch the baseline".into()))?;
                let t = self
                    .fetch(slot, base)
                    .await?
                    .map_err(|e| err(format!("baseline {}: {e}", base.key())))?;
                let dir = match &t {
                    Target::Onnx { dir } => Some(dir.clone()),
                    _ => None,
                };
                let route = plan.backend_for(&t).map_err(err)?;
                let backend = resolver
                    .target(&t, route)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let model = ModelRef {
                    spec: format!("{}:{}", slot.kind, base.model),
                    revision: Some(base.revision.clone()),
                    registry: Some(base.watcher.clone()),
                };
                Ok((Some(evaluation::Subject { model, backend }), dir))
            }
            (None, Some(Baseline::Target(t))) => {
                let backend = resolver
                    .target(t, plan.backend_for(t).map_err(err)?)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let spec = match t {
                    Target::OpenAi { model, .. } => format!("openai:{model}"),
                    Target::Onnx { dir } => format!("onnx:{}", dir.display()),
                    Target::Spec(s) => s.clone(),
                };
                let model = plain(spec);
                Ok((Some(evaluation::Subject { model, backend }), None))
            }
            (None, None) => Ok((None, None)),
        }
    }

    /// Fetches a checkpoint through its watcher, one download per checkpoint
    /// at a time (two lanes may need the same baseline); `Err` when the
    /// daemon stops while waiting.
    pub(super) async fn fetch(
        &self,
        slot: &WatcherSlot,
        cp: &Checkpoint,
    ) -> Result<Result<Target, safedrift_watchers::WatchError>, Failure> {
        let key = format!("fetch {}", cp.key());
        let _one = tokio::select! {
            g = self.locks.lock(&key) => g,
            _ = self.cancel.cancelled() => return Err(Failure::Stopped),
        };
        Ok(slot.watcher.fetch(cp, &self.cache).await)
    }

    /// Marks checkpoint folders as in use until the guard drops, then keeps
    /// the cache under its limit without evicting any folder in use.
    pub(super) fn use_dirs(&self, dirs: Vec<PathBuf>) -> InUse<'_> {
        let mut in_use = self.in_use.lock().unwrap();
        in_use.extend(dirs.iter().cloned());
        let keep: Vec<&Path> = in_use.iter().map(|d| d.as_path()).collect();
        match self.cache.evict(&keep) {
            Ok(0) => {}
            Ok(freed) => info!(
                freed_mb = freed / (1024 * 1024),
                "evicted least recently used checkpoints from the cache"
            ),
            Err(e) => warn!(error = %e, "cannot evict from the download cache"),
        }
        InUse { daemon: self, dirs }
    }
}

/// Checkpoint folders an evaluation uses (see [`Daemon::use_dirs`]).
pub(super) struct InUse<'a> {
    daemon: &'a Daemon,
    dirs: Vec<PathBuf>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut in_use = self.daemon.in_use.lock().unwrap();
        for d in &self.dirs {
            if let Some(i) = in_use.iter().position(|x| x == d) {
                in_use.swap_remove(i);
            }
        }
    }
}
