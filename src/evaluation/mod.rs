//! One evaluation, the same wherever it is asked for: `safedrift eval`, a
//! checkpoint the daemon took from its queue, an evaluation queued through
//! the API.
//!
//! The caller resolves what to evaluate: a [`Plan`] (benchmarks, judge,
//! template, decoding, the judge's audit), built by [`Plan::resolve`] from
//! the names the user gave, and the models as [`Subject`]s. [`Evaluator`]
//! then, in this order and nowhere else:
//! 1. runs the baseline, reusing its completed run when one with the same
//!    identity exists (a lineage's baseline is evaluated once per plan); in
//!    the sequential mode a baseline with no completed run is instead asked
//!    alongside the candidate, only as far as the decision needs
//!    (`baseline.rs`);
//! 2. runs the candidate (reusing a completed run only where the caller
//!    allows: the daemon does, `eval` evaluates afresh);
//! 3. audits both runs against the local judge's teacher when planned (a
//!    run keeps its first audit);
//! 4. decides drift once, against the rules in force, and stores the
//!    decision with the candidate's run.
//!
//! What happens next (printing a report, alerting) is the caller's, from
//! the stored decision in [`Outcome`].

mod baseline;
pub mod locks;
mod sequential;

use std::sync::Arc;

use indicatif::ProgressBar;
use safedrift_judges::Judge;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::{Backend, Decoding};
use crate::benchmark::Benchmark;
use crate::config::{DriftConfig, DriftMode};
use crate::pipeline::{self, AuditPlan, Job, Stopped};
use crate::probes::{self, Probes};
use crate::report::Run;
use crate::resolve::Resolver;
use crate::store::{ModelRef, ResultRecord, RunRecord, RunStatus, Store, StoreError, Template};
pub use locks::KeyedLocks;

/// How models are evaluated: the same for a candidate and its baseline.
#[derive(Clone)]
pub struct Plan {
    pub benchmarks: Arc<Vec<Benchmark>>,
    pub judge: Arc<dyn Judge>,
    /// The judge as the user named it.
    pub judge_spec: String,
    pub template: Template,
    pub decoding: Decoding,
    /// At most this many prompts per benchmark.
    pub limit: Option<usize>,
    /// The audit of a local classifier judge against its teacher.
    pub audit: Option<AuditPlan>,
    /// Probes run against the baseline after the candidate's run
    /// (`probes = ["kl"]`); they change no run's identity.
    pub probes: Probes,
}

/// A part of a plan that did not resolve: which (`benchmarks`, `judge`,
/// `template`) and why, in full for the operator and without paths or file
/// contents for API clients.
#[derive(Debug)]
pub struct PlanProblem {
    pub field: &'static str,
    pub spec: String,
    pub message: String,
    pub public: String,
}

/// The decoding settings of `[eval]`.
pub fn decoding(eval: &crate::config::EvalConfig) -> Decoding {
    Decoding {
        max_new_tokens: eval.max_new_tokens,
        temperature: eval.temperature,
        top_p: eval.top_p,
        seed: eval.seed,
    }
}

impl Plan {
    /// Resolves a plan from the names a user gave (CLI flags, a watcher
    /// entry, an API request); every problem at once.
    pub fn resolve(
        resolver: &Resolver,
        benchmarks: &[String],
        judge_spec: &str,
        template: &str,
        decoding: Decoding,
        limit: Option<usize>,
    ) -> Result<Plan, Vec<PlanProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field, spec: &str, message: String, public: String| {
            problems.push(PlanProblem {
                field,
                spec: spec.to_string(),
                message,
                public,
            })
        };
        let mut resolved: Vec<Benchmark> = Vec::new();
        for spec in benchmarks {
            match resolver.benchmarks(spec) {
                // A benchmark named twice (plain, and again with a
                // modifier) is asked once.
                Ok(bs) => {
                    for b in bs {
                        if !resolved
                            .iter()
                            .any(|r| r.name == b.name && r.sha256 == b.sha256)
                        {
                            resolved.push(b);
                        }
                    }
                }
                Err(e) => problem("benchmarks", spec, e.to_string(), e.public_message()),
            }
        }
        let judge = resolver
            .judge(judge_spec)
            .map_err(|e| {
                problem(
                    "judge",
                    judge_spec,
                    e.to_string(),
                    e.public_message().into(),
                )
            })
            .ok();
        let audit = resolver
            .audit(judge_spec)
            .map_err(|e| {
                problem(
                    "judge",
                    judge_spec,
                    e.to_string(),
                    e.public_message().into(),
                )
            })
            .ok()
            .flatten();
        let name = template;
        let template = resolver
            .template(name)
            .map_err(|e| problem("template", name, e.to_string(), "not in the config".into()))
            .ok();
        match (judge, template) {
            (Some(judge), Some(template)) if problems.is_empty() => Ok(Plan {
                benchmarks: Arc::new(resolved),
                judge,
                judge_spec: judge_spec.to_string(),
                template,
                decoding,
                limit,
                audit,
                probes: Probes::default(),
            }),
            _ => Err(problems),
        }
    }

    /// Digest of what makes two plans evaluate alike (benchmarks by
    /// content, the judge's identity, the template's content, decoding):
    /// part of each queued checkpoint's key.
    pub fn key(&self) -> String {
        let text = serde_json::json!({
            "benchmarks": self.benchmarks.iter().map(|b| &b.sha256).collect::<Vec<_>>(),
            "judge": self.judge.identity(),
            "template": self.template.sha256(),
            "decoding": self.decoding,
        })
        .to_string();
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }

    /// The plan with `probes`: the refusal-depth probe after each run, and
    /// each attack asked as a variant of every benchmark with harmful
    /// prompts.
    pub fn with_probes(mut self, probes: Probes) -> Plan {
        if !probes.attacks.is_empty() {
            self.benchmarks = Arc::new(crate::benchmark::attacks::attack_all(
                &self.benchmarks,
                &probes.attacks,
            ));
        }
        self.probes = probes;
        self
    }

    /// The pipeline's job for one model under this plan.
    pub fn job(&self, subject: Subject) -> Job {
        Job {
            model: subject.model,
            backend: subject.backend,
            template: self.template.clone(),
            decoding: self.decoding.clone(),
            benchmarks: self.benchmarks.clone(),
            judge: self.judge.clone(),
            judge_spec: self.judge_spec.clone(),
            limit: self.limit,
            sequential: None,
        }
    }
}

/// Fails before anything is asked when a model's backend cannot ask every
/// prompt of the plan (a `prefill:K` attack on a backend that cannot
/// continue an assistant message).
fn check_backends(
    plan: &Plan,
    candidate: &Subject,
    baseline: Option<&Subject>,
) -> Result<(), Failure> {
    for (role, subject) in [("candidate", Some(candidate)), ("baseline", baseline)] {
        if let Some(s) = subject {
            pipeline::check_prefill(&plan.benchmarks, &*s.backend, role, &s.model.spec)
                .map_err(Failure::Unsupported)?;
        }
    }
    Ok(())
}

/// The refusal-depth probe of the candidate's run against its baseline's,
/// when planned and not yet run against that baseline run; on the plain
/// prompts' refusals (an attacked prompt is asked through more than the
/// template).
async fn kl_probe(
    plan: &Plan,
    job: &Job,
    run: &mut RunRecord,
    baseline: Option<&(RunRecord, Vec<ResultRecord>)>,
    base_backend: Option<&dyn Backend>,
) {
    let (Some(tokens), Some((base_run, base_results)), Some(base_backend)) =
        (plan.probes.kl, baseline, base_backend)
    else {
        return;
    };
    if run.kl.as_ref().map(|k| &k.baseline_run) == Some(&base_run.id) {
        return;
    }
    let plain: Vec<ResultRecord> = base_results
        .iter()
        .filter(|r| r.attack.is_none())
        .cloned()
        .collect();
    let cand = &*job.backend;
    let kl = probes::kl(
        cand,
        base_backend,
        &plan.template,
        &base_run.id,
        &plain,
        tokens,
    );
    run.kl = Some(kl.await);
}

/// A model to evaluate: what the run records of it, and what answers.
pub struct Subject {
    pub model: ModelRef,
    pub backend: Arc<dyn Backend>,
}

/// Why an evaluation ended without an outcome. Progress is stored either
/// way; the same evaluation asked again resumes it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Stopped(#[from] Stopped),
    /// Stopped while waiting for another evaluation of the same run.
    #[error("interrupted")]
    Cancelled,
    /// A model's backend cannot ask what the plan asks (a `prefill:K`
    /// attack on a backend that cannot continue an assistant message);
    /// nothing was asked.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// An evaluation's result: the runs as stored, and the report.
pub struct Outcome {
    pub run: RunRecord,
    pub results: Vec<ResultRecord>,
    pub baseline: Option<(RunRecord, Vec<ResultRecord>)>,
    /// The run document with its baseline and drift decision.
    pub report: Run,
    /// The candidate's run was completed for this very checkpoint before
    /// (a restart came after it was stored): nothing was evaluated or
    /// decided now.
    pub already_done: bool,
}

/// Where evaluations run: the store, how many prompts at once, progress,
/// cancellation, and the locks that keep two evaluations of one run
/// identity from running at once (the daemon's lanes).
pub struct Evaluator<'a> {
    pub store: &'a Store,
    pub concurrency: usize,
    pub progress: &'a ProgressBar,
    pub cancel: &'a CancellationToken,
    pub locks: &'a KeyedLocks,
}

impl Evaluator<'_> {
    /// Evaluates `candidate` (and `baseline`, when given) under `plan`,
    /// decides drift by `rules` and stores the decision with the
    /// candidate's run, marked with `checkpoint` when it is one.
    pub async fn evaluate(
        &self,
        plan: &Plan,
        candidate: Subject,
        baseline: Option<Subject>,
        reuse_candidate: bool,
        checkpoint: Option<&str>,
        rules: &DriftConfig,
    ) -> Result<Outcome, Failure> {
        let sequential = rules.mode == DriftMode::Sequential;
        check_backends(plan, &candidate, baseline.as_ref())?;
        let base_backend = baseline.as_ref().map(|b| b.backend.clone());
        // The baseline's lock is held while it is used: for the whole
        // evaluation when it is asked alongside the candidate.
        let (baseline, _base_lock) = match baseline {
            Some(b) => {
                let (base, lock) = self.baseline(plan, b, sequential).await?;
                (Some(base), lock)
            }
            None => (None, None),
        };
        let mut job = plan.job(candidate);
        if sequential && baseline.is_some() {
            job.sequential = Some(sequential::identity_part(rules));
        }
        let identity = pipeline::identity(&job);
        // Held until the run is stored with its decision: the same model
        // queued twice (two watchers' plans, the API) is evaluated once.
        let _one = self.lock(&identity).await?;
        if let (true, Some(cp)) = (reuse_candidate, checkpoint) {
            if let Some(run) = self.store.completed_run(&identity)? {
                if run.checkpoint.as_deref() == Some(cp) {
                    info!(checkpoint = %cp, run = %run.id, "already evaluated before a restart");
                    let results = self.store.results(&run.id)?;
                    let report = Run::new(&run, &results);
                    let baseline = match baseline {
                        Some(b) => b.into_stored(self.store)?,
                        None => None,
                    };
                    return Ok(Outcome {
                        run,
                        results,
                        baseline,
                        report,
                        already_done: true,
                    });
                }
            }
        }
        let (run, results, baseline, mut looker) = self
            .against(plan, &job, reuse_candidate, baseline, rules)
            .await?;
        let mut run = run;
        self.audit(plan, &mut run, &results).await;
        kl_probe(
            plan,
            &job,
            &mut run,
            baseline.as_ref(),
            base_backend.as_deref(),
        )
        .await;
        if let Some(cp) = checkpoint {
            run.checkpoint = Some(cp.to_string());
        }
        let report = match &baseline {
            Some((base_run, base_results)) => {
                let report = match looker.as_mut() {
                    Some(l) => {
                        // The decision on what is stored (also for a run
                        // reused or resumed).
                        l.decide(&results);
                        l.compared(&run, &results, base_run, base_results)
                    }
                    None => Run::compared(&run, &results, base_run, base_results, rules),
                };
                let mut report = report;
                if let (Some(kl), Some(drift)) = (&run.kl, report.drift.as_mut()) {
                    if let Some(f) = probes::kl_finding(kl, rules) {
                        drift.detected |= f.fired;
                        drift.findings.push(f);
                    }
                }
                report.probes.kl = run.kl.as_ref().map(|k| k.summary());
                run.baseline_run = Some(base_run.id.clone());
                run.drift = report.drift.clone();
                report
            }
            None => Run::new(&run, &results),
        };
        self.store.put_run(&run)?;
        self.store.flush().await?;
        Ok(Outcome {
            run,
            results,
            baseline,
            report,
            already_done: false,
        })
    }

    /// The completed run of `job` under this plan, or a copy of a completed
    /// run of a model with the same content (a local checkpoint identical to
    /// its base), if there is one. The caller holds the identity's lock.
    async fn reusable(
        &self,
        job: &Job,
        baseline: bool,
    ) -> Result<Option<(RunRecord, Vec<ResultRecord>)>, Failure> {
        let identity = pipeline::identity(job);
        if let Some(run) = self.store.completed_run(&identity)? {
            if baseline {
                info!(baseline = %run.model.spec, run = %run.id, "reusing the baseline's completed run");
            } else {
                info!(model = %run.model.spec, run = %run.id, "reusing the model's completed run");
            }
            let results = self.store.results(&run.id)?;
            return Ok(Some((run, results)));
        }
        if let Some(content) = content_identity(job).await {
            if let Some(source) = self.store.completed_run_by_content(&content)? {
                return Ok(Some(self.copy(job, identity, &content, source).await?));
            }
        }
        Ok(None)
    }

    /// A model's completed run under this plan (when `reuse`: see
    /// [`Evaluator::reusable`]), else a new or resumed run, asked in
    /// batches with looks when `looks` is given (and its partner alongside).
    /// The caller holds the identity's lock.
    async fn run(
        &self,
        job: &Job,
        reuse: bool,
        looks: Option<(&mut sequential::Looker, Option<pipeline::Partner<'_>>)>,
    ) -> Result<(RunRecord, Vec<ResultRecord>), Failure> {
        if reuse {
            if let Some(found) = self.reusable(job, false).await? {
                return Ok(found);
            }
        }
        let content = content_identity(job).await;
        let (mut run, results) = match looks {
            None => {
                pipeline::evaluate(
                    self.store,
                    job,
                    self.concurrency,
                    self.progress,
                    self.cancel,
                )
                .await?
            }
            Some((looker, partner)) => {
                let (order, every) = (looker.order(), looker.every());
                let alongside = partner.is_some();
                let mut decide = |ours: &[ResultRecord], theirs: &[ResultRecord]| {
                    if alongside {
                        looker.set_base(theirs);
                    }
                    looker.decide(ours)
                };
                let looks = pipeline::Looks {
                    order,
                    every,
                    decide: &mut decide,
                    partner,
                };
                pipeline::evaluate_looking(
                    self.store,
                    job,
                    self.concurrency,
                    self.progress,
                    self.cancel,
                    Some(looks),
                )
                .await?
            }
        };
        if content.is_some() && run.content_identity != content {
            run.content_identity = content;
            self.store.put_run(&run)?;
        }
        Ok((run, results))
    }

    /// A completed run of `job`'s model made of `source`'s answers and
    /// verdicts (the same plan on the same model content): nothing is sent
    /// to the model. Written as an open run first, so a crash part way
    /// leaves a run the next attempt resumes.
    async fn copy(
        &self,
        job: &Job,
        identity: String,
        content: &str,
        source: RunRecord,
    ) -> Result<(RunRecord, Vec<ResultRecord>), StoreError> {
        info!(model = %job.model.spec, same_as = %source.model.spec, run = %source.id,
            "the model's files are the same as an evaluated model's: reusing its answers");
        let results = self.store.results(&source.id)?;
        let mut run = RunRecord {
            id: Store::new_run_id(),
            status: RunStatus::Running,
            identity,
            model: job.model.clone(),
            backend: job.backend.identity(),
            started_at: pipeline::now(),
            finished_at: None,
            error: None,
            baseline_run: None,
            drift: None,
            checkpoint: None,
            audit: None,
            content_identity: Some(content.to_string()),
            copied_from: Some(source.id.clone()),
            kl: None,
            ..source
        };
        self.store.put_run(&run)?;
        for r in &results {
            self.store.put_result(&run.id, r)?;
        }
        run.status = RunStatus::Completed;
        run.finished_at = Some(pipeline::now());
        self.store.put_run(&run)?;
        self.store.flush().await?;
        Ok((run, results))
    }

    async fn audit(&self, plan: &Plan, run: &mut RunRecord, results: &[ResultRecord]) {
        if let Some(audit) = &plan.audit {
            pipeline::audit_run(self.store, run, results, audit, self.concurrency).await;
        }
    }

    /// Waits until no other evaluation of this run identity is under way.
    async fn lock(&self, identity: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, Failure> {
        let key = format!("run {identity}");
        tokio::select! {
            g = self.locks.lock(&key) => Ok(g),
            _ = self.cancel.cancelled() => Err(Failure::Cancelled),
        }
    }
}

/// The content identity of `job`'s model under its plan, for a backend that
/// can read its model's files (the digest is read off the async runtime).
async fn content_identity(job: &Job) -> Option<String> {
    let backend = job.backend.clone();
    let digest = tokio::task::spawn_blocking(move || backend.content_digest())
        .await
        .ok()
        .flatten()?;
    Some(pipeline::content_identity(job, &digest))
}
