//! `/metrics`: Prometheus text from the global `metrics` recorder, and the
//! safety gauges read from the store.
//!
//! The daemon installs the recorder ([`install`]) at start; every module
//! counts through the `metrics` facade:
//! - `safedrift_runs_total{status}`: runs that ended, by how they ended;
//!   `safedrift_runs_started_total`;
//! - `safedrift_prompts_evaluated_total`;
//! - `safedrift_backend_latency_seconds`, `safedrift_judge_latency_seconds`
//!   (histograms);
//! - `safedrift_queue_depth` (gauge, set at each scrape from the store);
//! - `safedrift_alert_deliveries_total{target,result}`;
//! - `safedrift_watcher_errors_total{watcher}`;
//! - `safedrift_store_quarantined_total{tree}` (records moved aside because
//!   they could not be decoded) and `safedrift_store_quarantined_records`
//!   (gauge: how many are in the quarantine now).
//!
//! The safety gauges ([`SAFETY_GAUGES`], [`safety_gauges`]) are not kept in
//! the recorder, which cannot forget a series: each scrape renders them from
//! the store, for the lineages that exist in the config in force now (a
//! lineage is a watcher and the baseline its checkpoints are compared with,
//! `watcher/baseline-spec`, as in the alerts). Per lineage they describe its
//! latest completed checkpoint run (the newest started) and the baseline run
//! it was compared with, per benchmark of the run:
//! - `safedrift_harmfulness_rate{lineage,watcher,model,benchmark}`,
//!   `safedrift_over_refusal_rate{lineage,watcher,model,benchmark}` (only
//!   for benchmarks with benign prompts);
//! - `safedrift_drift_detected{lineage,watcher,model}`: 1 when that run
//!   drifted from its baseline (the decision covers all its benchmarks);
//! - `safedrift_baseline_harmfulness_rate{lineage,watcher,baseline,benchmark}`
//!   and `safedrift_baseline_over_refusal_rate{...}`;
//! - `safedrift_lineage_last_run_timestamp_seconds{lineage,watcher,model}`:
//!   when that run finished.
//!
//! So the label sets stay bounded (lineages x benchmarks; `model` is the
//! latest checkpoint's model, not one series per checkpoint ever seen, and
//! revisions are never labels), and a lineage's series are gone from the
//! next scrape once its watcher is removed or its configured baseline
//! changes (on SIGHUP). A watcher without a configured baseline (one whose
//! registry names each checkpoint's base) has a lineage per base model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{ApiError, Shared};
use crate::config::Config;
use crate::records::{RunRecord, RunStatus};
use crate::safety_metrics::Totals;
use crate::store::{RunFilter, Store, StoreError};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 5 ms to 5 minutes.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The safety gauges: name and help text.
pub const SAFETY_GAUGES: [(&str, &str); 6] = [
    (
        "safedrift_harmfulness_rate",
        "Harmfulness rate of the lineage's latest completed checkpoint run, per benchmark (harmful answers / scored harmful prompts).",
    ),
    (
        "safedrift_over_refusal_rate",
        "Over-refusal rate of the lineage's latest completed checkpoint run, per benchmark with benign prompts (refused / scored benign prompts).",
    ),
    (
        "safedrift_drift_detected",
        "1 when the lineage's latest completed checkpoint run drifted from its baseline, else 0.",
    ),
    (
        "safedrift_baseline_harmfulness_rate",
        "Harmfulness rate of the baseline run the lineage's latest checkpoint was compared with, per benchmark.",
    ),
    (
        "safedrift_baseline_over_refusal_rate",
        "Over-refusal rate of the baseline run the lineage's latest checkpoint was compared with, per benchmark with benign prompts.",
    ),
    (
        "safedrift_lineage_last_run_timestamp_seconds",
        "Unix time the lineage's latest completed checkpoint run finished.",
    ),
];

/// Installs the Prometheus recorder as the process's global recorder (once;
/// later calls return the same handle). `None` when another recorder was
/// installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

pub async fn render(State(api): State<Shared>) -> Result<Response, ApiError> {
    let Some(handle) = install() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "metrics are not recorded in this process",
        ));
    };
    let queue = api.queue.clone();
    let depth = super::blocking(move || Ok(queue.depth()?)).await?;
    ::metrics::gauge!("safedrift_queue_depth").set(depth as f64);
    ::metrics::gauge!("safedrift_store_quarantined_records")
        .set(api.store.quarantined_len() as f64);
    let (config, _) = api.live();
    let shared = api.clone();
    let safety = super::blocking(move || Ok(cached_safety_gauges(&shared, config)?)).await?;
    handle.run_upkeep();
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&safety);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The safety gauges as last rendered, with what they were rendered from.
struct Rendered {
    /// The API cache's generation then: any run written since bumps it.
    generation: u64,
    /// The config then (held, so a new config is never at its address).
    config: Arc<Config>,
    text: String,
}

const CACHE_KEY: &str = "telemetry:safety_gauges";

/// [`safety_gauges`], rendered again only when a run was written or the
/// config reloaded since the last scrape.
fn cached_safety_gauges(api: &Shared, config: Arc<Config>) -> Result<String, StoreError> {
    let generation = api.docs.generation();
    if let Some(r) = api.docs.get::<Rendered>(CACHE_KEY) {
        if r.generation == generation && Arc::ptr_eq(&r.config, &config) {
            return Ok(r.text.clone());
        }
    }
    let text = safety_gauges(&api.store, &live_lineages(&config))?;
    api.docs.keep(
        CACHE_KEY.into(),
        vec![],
        Arc::new(Rendered {
            generation,
            config,
            text: text.clone(),
        }),
        generation,
    );
    Ok(text)
}

/// The configured watchers and the baseline each has configured (`None`:
/// the registry names each checkpoint's base).
pub fn live_lineages(config: &Config) -> BTreeMap<String, Option<String>> {
    config
        .watchers
        .iter()
        .map(|(name, w)| (name.clone(), w.common.baseline.clone()))
        .collect()
}

/// A lineage's latest completed checkpoint run and its baseline run.
struct Latest {
    watcher: String,
    run: RunRecord,
    baseline: RunRecord,
}

/// Runs read per page while looking for the latest runs.
const PAGE: usize = 256;

/// The safety gauges in Prometheus' text format, for the lineages of
/// `watchers` (watcher name -> configured baseline SPEC): see the module
/// docs.
pub fn safety_gauges(
    store: &Store,
    watchers: &BTreeMap<String, Option<String>>,
) -> Result<String, StoreError> {
    let mut families: Vec<Vec<String>> = vec![Vec::new(); SAFETY_GAUGES.len()];
    for (lineage, l) in &latest_runs(store, watchers)? {
        let totals = store.totals(&l.run)?;
        let base = store.totals(&l.baseline)?;
        let run_labels = [
            ("lineage", lineage.as_str()),
            ("watcher", l.watcher.as_str()),
            ("model", l.run.model.spec.as_str()),
        ];
        let base_labels = [
            ("lineage", lineage.as_str()),
            ("watcher", l.watcher.as_str()),
            ("baseline", l.baseline.model.spec.as_str()),
        ];
        per_benchmark(&mut families, 0, 1, &run_labels, &totals);
        per_benchmark(&mut families, 3, 4, &base_labels, &base);
        if let Some(drift) = &l.run.drift {
            let detected = if drift.detected { 1.0 } else { 0.0 };
            families[2].push(sample(SAFETY_GAUGES[2].0, &run_labels, detected));
        }
        let finished = l
            .run
            .finished_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(t) = finished {
            let at = t.timestamp() as f64;
            families[5].push(sample(SAFETY_GAUGES[5].0, &run_labels, at));
        }
    }
    let mut out = String::new();
    for ((name, help), samples) in SAFETY_GAUGES.iter().zip(families) {
        if samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for s in samples {
            out.push_str(&s);
        }
    }
    Ok(out)
}

/// The latest completed checkpoint run of each lineage of `watchers`, by
/// lineage. Walks the completed runs newest first, and stops as soon as
/// every watcher with a configured baseline has its latest run (a watcher
/// without one may have several lineages: all its runs are read).
fn latest_runs(
    store: &Store,
    watchers: &BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<String, Latest>, StoreError> {
    let mut latest: BTreeMap<String, Latest> = BTreeMap::new();
    let mut baselines: BTreeMap<String, Option<RunRecord>> = BTreeMap::new();
    let open_ended = watchers.values().any(Option::is_none);
    let filter = RunFilter {
        status: Some(RunStatus::Completed),
        ..RunFilter::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_runs(&filter, PAGE, cursor.as_deref())?;
        for run in page.runs {
            let (Some(watcher), Some(_), Some(base_id)) = (
                run.model.registry.as_deref(),
                run.checkpoint.as_deref(),
                run.baseline_run.as_deref(),
            ) else {
                continue;
            };
            let Some(configured) = watchers.get(watcher) else {
                continue;
            };
            if !baselines.contains_key(base_id) {
                baselines.insert(base_id.to_string(), store.get_run(base_id)?);
            }
            let Some(base) = &baselines[base_id] else {
                continue;
            };
            if configured.as_ref().is_some_and(|b| *b != base.model.spec) {
                // A lineage of the watcher's earlier baseline.
                continue;
            }
            let lineage = format!("{watcher}/{}", base.model.spec);
            if latest.contains_key(&lineage) {
                continue;
            }
            let l = Latest {
                watcher: watcher.to_string(),
                baseline: base.clone(),
                run,
            };
            latest.insert(lineage, l);
            if !open_ended && latest.len() == watchers.len() {
                return Ok(latest);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(latest),
        }
    }
}

/// The harmfulness and over-refusal rates of each benchmark of `totals`,
/// into the families at `harm` and `over`.
fn per_benchmark(
    families: &mut [Vec<String>],
    harm: usize,
    over: usize,
    labels: &[(&str, &str)],
    totals: &Totals,
) {
    for (benchmark, m) in &totals.per_benchmark {
        let mut labels = labels.to_vec();
        labels.push(("benchmark", benchmark.as_str()));
        if let Some(v) = m.harmfulness_rate {
            families[harm].push(sample(SAFETY_GAUGES[harm].0, &labels, v));
        }
        if let Some(v) = m.over_refusal_rate {
            families[over].push(sample(SAFETY_GAUGES[over].0, &labels, v));
        }
    }
}

/// One line: `name{k="v",...} value`.
fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{name}{{{}}} {value}\n", labels.join(","))
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Drift, ModelRef, ResultRecord};
    use crate::store::tests::{result, run};
    use safedrift_judges::Verdict;

    /// A judged answer: harmful (score 5) or a refusal (score 1).
    fn answer(index: u32, benchmark: &str, benign: bool, harmful: bool) -> ResultRecord {
        let mut r = result(index);
        r.benchmark = benchmark.into();
        r.benign = benign;
        let score = if harmful { 5 } else { 1 };
        r.verdict = Some(Verdict::scored(score, !harmful, String::new()));
        r
    }

    /// A completed run of `spec` with `harmful` of 4 harmful prompts
    /// answered and `refused` of 2 benign ones refused.
    fn stored(
        store: &Store,
        id: &str,
        spec: &str,
        watcher: Option<&str>,
        baseline: Option<&str>,
        harmful: u32,
        refused: u32,
    ) -> RunRecord {
        let mut r = run(id, &format!("identity-{id}"), RunStatus::Running);
        r.model = ModelRef {
            spec: spec.into(),
            revision: watcher.map(|_| format!("rev-{id}")),
            registry: watcher.map(Into::into),
        };
        r.checkpoint = watcher.map(|w| format!("{w}/{spec}@rev-{id}"));
        r.baseline_run = baseline.map(Into::into);
        r.drift = baseline.map(|_| Drift {
            detected: harmful > 1,
            significance: 0.05,
            correction: "holm".into(),
            findings: vec![],
            sequential: None,
        });
        r.finished_at = Some("2026-01-01T00:01:40Z".into());
        store.put_run(&r).unwrap();
        let mut i = 0;
        for k in 0..4 {
            store
                .put_result(id, &answer(i, "probes", false, k < harmful))
                .unwrap();
            i += 1;
        }
        for k in 0..2 {
            store
                .put_result(id, &answer(i, "benign", true, k >= refused))
                .unwrap();
            i += 1;
        }
        r.status = RunStatus::Completed;
        store.put_run(&r).unwrap();
        r
    }

    fn series(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_latest_run_of_each_live_lineage_per_benchmark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Run ids sort by creation: r_1 < r_2 < ...
        stored(&store, "r_1", "ollama:base", None, None, 0, 0);
        stored(&store, "r_2", "ollama:bot", Some("ol"), Some("r_1"), 3, 1);
        stored(&store, "r_3", "ollama:bot2", Some("ol"), Some("r_1"), 1, 0);
        // A watcher that is gone, and an earlier baseline of "ol".
        stored(&store, "r_4", "x:other", Some("gone"), Some("r_1"), 4, 0);
        stored(&store, "r_5", "ollama:old-base", None, None, 0, 0);
        stored(&store, "r_6", "ollama:bot", Some("ol"), Some("r_5"), 4, 2);
        // A watcher whose registry names the bases: one lineage per base.
        stored(&store, "r_7", "hf:a-sft", Some("hub"), Some("r_1"), 2, 0);
        stored(&store, "r_8", "hf:b-sft", Some("hub"), Some("r_5"), 0, 0);
        // A plain evaluation (no watcher) is no lineage.
        stored(&store, "r_9", "ollama:bot", None, Some("r_1"), 4, 2);

        let watchers: BTreeMap<String, Option<String>> = [
            ("ol".to_string(), Some("ollama:base".to_string())),
            ("hub".to_string(), None),
        ]
        .into_iter()
        .collect();
        let text = safety_gauges(&store, &watchers).unwrap();
        let ol = r#"lineage="ol/ollama:base",watcher="ol",model="ollama:bot2""#;
        let hub_a = r#"lineage="hub/ollama:base",watcher="hub",model="hf:a-sft""#;
        let hub_b = r#"lineage="hub/ollama:old-base",watcher="hub",model="hf:b-sft""#;
        let base = r#"lineage="ol/ollama:base",watcher="ol",baseline="ollama:base""#;
        let mut want = vec![
            format!("safedrift_harmfulness_rate{{{hub_a},benchmark=\"probes\"}} 0.5"),
            format!("safedrift_harmfulness_rate{{{hub_b},benchmark=\"probes\"}} 0"),
            format!("safedrift_harmfulness_rate{{{ol},benchmark=\"probes\"}} 0.25"),
            format!("safedrift_over_refusal_rate{{{hub_a},benchmark=\"benign\"}} 0"),
            format!("safedrift_over_refusal_rate{{{hub_b},benchmark=\"benign\"}} 0"),
            format!("safedrift_over_refusal_rate{{{ol},benchmark=\"benign\"}} 0"),
            format!("safedrift_drift_detected{{{hub_a}}} 1"),
            format!("safedrift_drift_detected{{{hub_b}}} 0"),
            format!("safedrift_drift_detected{{{ol}}} 0"),
            format!("safedrift_baseline_harmfulness_rate{{{base},benchmark=\"probes\"}} 0"),
            format!("safedrift_baseline_over_refusal_rate{{{base},benchmark=\"benign\"}} 0"),
            format!("safedrift_lineage_last_run_timestamp_seconds{{{hub_a}}} 1767225700"),
            format!("safedrift_lineage_last_run_timestamp_seconds{{{hub_b}}} 1767225700"),
            format!("safedrift_lineage_last_run_timestamp_seconds{{{ol}}} 1767225700"),
        ];
        let mut got = series(&text);
        // The baseline series of the hub's lineages, checked apart.
        got.retain(|l| !(l.starts_with("safedrift_baseline") && l.contains("watcher=\"hub\"")));
        got.sort();
        want.sort();
        assert_eq!(got, want, "{text}");
        for (name, _) in SAFETY_GAUGES {
            assert_eq!(
                text.matches(&format!("# TYPE {name} gauge\n")).count(),
                1,
                "{text}"
            );
        }
        assert!(text.contains(
            "safedrift_baseline_harmfulness_rate{lineage=\"hub/ollama:old-base\",watcher=\"hub\",baseline=\"ollama:old-base\",benchmark=\"probes\"} 0\n"
        ));

        // The earlier baseline configured again: its lineage is the live one.
        let watchers: BTreeMap<String, Option<String>> =
            [("ol".to_string(), Some("ollama:old-base".to_string()))]
                .into_iter()
                .collect();
        let text = safety_gauges(&store, &watchers).unwrap();
        assert!(
            text.contains("safedrift_harmfulness_rate{lineage=\"ol/ollama:old-base\",watcher=\"ol\",model=\"ollama:bot\",benchmark=\"probes\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("ol/ollama:base") && !text.contains("hub"),
            "{text}"
        );
        // No watcher: no series, not even the HELP lines.
        assert_eq!(safety_gauges(&store, &BTreeMap::new()).unwrap(), "");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            sample("m", &[("a", "x\"y\\z\nw")], 0.5),
            "m{a=\"x\\\"y\\\\z\\nw\"} 0.5\n"
        );
    }
}
