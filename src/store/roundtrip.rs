//! Property tests: every record type the store keeps reads back, through
//! the store, exactly as it was written, for generated values of every
//! variant (schema 1 wrote a queue record that could not be read back; see
//! `upgrade.rs`). Floats are finite: JSON has no NaN or infinity, and no
//! stored figure is one.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use safedrift_judges::Verdict;
use safedrift_watchers::{Baseline, Checkpoint, Target};

use super::*;
use crate::alerts::grouping::{Decision, LineageState};
use crate::alerts::record::{
    AlertKind, AlertRecord, AlertRun, CategoryRow, Delivery, DeliveryStatus, MetricRow,
};
use crate::backend::Decoding;
use crate::safety_metrics::{Drift, Finding, Totals};

mod parts;
use parts::{audit, decoding, result, template, verdict};

/// One store for every case (opening sled per case is slow); keys differ
/// or are overwritten, and each case reads back what it just wrote.
fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            (dir, store)
        })
        .1
}

/// Any text, including quotes, control characters, `type`-like keys in
/// JSON, and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_/@.:-]{0,12}",
        any::<String>(),
        Just(r#"{"type":"x"}"#.to_string()),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL,
        0.0..=1.0f64,
    ]
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        float().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            btree_map(text(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        text().prop_map(|d| Target::Onnx {
            dir: PathBuf::from(d)
        }),
        (text(), text(), option::of(text()), option::of(text())).prop_map(
            |(base_url, model, api_key_env, file)| Target::OpenAi {
                base_url,
                model,
                api_key_env,
                api_key_file: file.map(PathBuf::from),
            }
        ),
        text().prop_map(Target::Spec),
    ]
}

/// Checkpoints with every `Baseline` variant, nested (a registry-named
/// checkpoint baseline may itself name a baseline).
fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    let leaf = (text(), text(), text(), json()).prop_map(|(watcher, model, revision, detail)| {
        Checkpoint {
            watcher,
            model,
            revision,
            baseline: None,
            detail,
        }
    });
    leaf.prop_recursive(3, 8, 1, |inner| {
        (
            inner,
            prop_oneof![
                Just(None),
                checkpoint_leaf().prop_map(|c| Some(Baseline::Checkpoint(Box::new(c)))),
                target().prop_map(|t| Some(Baseline::Target(t))),
            ],
        )
            .prop_map(|(mut cp, baseline)| {
                cp.baseline = baseline;
                cp
            })
    })
}

fn checkpoint_leaf() -> impl Strategy<Value = Checkpoint> {
    (text(), text(), text(), json(), option::of(target())).prop_map(
        |(watcher, model, revision, detail, target)| Checkpoint {
            watcher,
            model,
            revision,
            baseline: target.map(Baseline::Target),
            detail,
        },
    )
}

fn checkpoint_record() -> impl Strategy<Value = CheckpointRecord> {
    (
        checkpoint(),
        text(),
        prop_oneof![
            Just(CheckpointStatus::Queued),
            Just(CheckpointStatus::Running),
            Just(CheckpointStatus::Done)
        ],
        any::<u32>(),
        option::of(text()),
        any::<u64>(),
        (option::of(text()), option::of(text()), text(), text()),
    )
        .prop_map(
            |(checkpoint, eval_key, status, attempts, last_error, next, (run, base, first, up))| {
                CheckpointRecord {
                    key: format!("{}|{eval_key}", checkpoint.key()),
                    checkpoint,
                    eval_key,
                    status,
                    attempts,
                    last_error,
                    next_attempt_ms: next,
                    run_id: run,
                    baseline_run_id: base,
                    first_seen: first,
                    updated: up,
                }
            },
        )
}

fn finding() -> impl Strategy<Value = Finding> {
    (
        (text(), option::of(text())),
        (
            option::of(float()),
            option::of(float()),
            option::of(float()),
        ),
        (
            float(),
            float(),
            float(),
            text(),
            any::<usize>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (metric, category),
                (baseline, candidate, delta),
                (threshold, p_value, p_adjusted, test, pairs, fired),
            )| Finding {
                metric,
                category,
                baseline,
                candidate,
                delta,
                threshold,
                p_value,
                p_adjusted,
                test,
                pairs,
                attack: (fired && pairs % 2 == 0).then(|| "aoa".to_string()),
                fired,
            },
        )
}

fn run_record() -> impl Strategy<Value = RunRecord> {
    let status = prop_oneof![
        Just(RunStatus::Running),
        Just(RunStatus::Interrupted),
        Just(RunStatus::Partial),
        Just(RunStatus::Failed),
        Just(RunStatus::Completed),
    ];
    let benchmark = (text(), text(), text(), any::<usize>(), any::<bool>()).prop_map(
        |(name, spec, sha256, size, benign)| BenchmarkRef {
            name,
            spec,
            sha256,
            size,
            benign,
        },
    );
    let (template, decoding) = (template(), decoding());
    let drift = drift();
    let audit = audit();
    (
        ("[a-z0-9]{1,26}", status, text()),
        (text(), option::of(text()), option::of(text()), text()),
        (template, decoding, vec(benchmark, 0..3)),
        (text(), text(), text(), any::<usize>()),
        (text(), option::of(text()), option::of(text())),
        (
            option::of(text()),
            option::of(drift),
            option::of(text()),
            option::of(audit),
        ),
        (option::of(text()), option::of(text())),
    )
        .prop_map(
            |(
                (id, status, identity),
                (spec, revision, registry, backend),
                (template, decoding, benchmarks),
                (judge, judge_identity, judge_description, total),
                (started_at, finished_at, error),
                (baseline_run, drift, checkpoint, audit),
                (content_identity, copied_from),
            )| RunRecord {
                id: format!("r_{id}"),
                status,
                identity,
                model: ModelRef {
                    spec,
                    revision,
                    registry,
                },
                backend,
                template,
                decoding,
                benchmarks,
                judge,
                judge_identity,
                judge_description,
                total,
                started_at,
                finished_at,
                error,
                baseline_run,
                drift,
                checkpoint,
                audit,
                content_identity,
                copied_from,
                kl: None,
            },
        )
}

/// A drift decision, with or without a sequential record.
fn drift() -> impl Strategy<Value = Drift> {
    let check = (
        text(),
        any::<usize>(),
        option::of(float()),
        float(),
        float(),
        (float(), float()),
        option::of(text()),
    )
        .prop_map(
            |(metric, pairs, delta, threshold, e_value, (lo, hi), decision)| {
                crate::records::SequentialCheck {
                    metric,
                    pairs,
                    delta,
                    threshold,
                    e_value,
                    interval: [lo, hi],
                    decision,
                }
            },
        );
    let sequential = (
        any::<usize>(),
        any::<usize>(),
        option::of(text()),
        text(),
        vec(check, 0..3),
    )
        .prop_map(
            |(asked, planned, stopped, order, checks)| crate::records::Sequential {
                asked,
                planned,
                stopped,
                order,
                checks,
            },
        );
    (
        any::<bool>(),
        float(),
        text(),
        vec(finding(), 0..3),
        option::of(sequential),
    )
        .prop_map(
            |(detected, significance, correction, findings, sequential)| Drift {
                detected,
                significance,
                correction,
                findings,
                sequential,
            },
        )
}

fn ci() -> impl Strategy<Value = Option<[f64; 2]>> {
    option::of([float(), float()])
}

fn alert_run() -> impl Strategy<Value = AlertRun> {
    let metric = (
        text(),
        option::of(float()),
        option::of(float()),
        option::of(float()),
        ci(),
        ci(),
    )
        .prop_map(|(metric, baseline, candidate, delta, b, c)| MetricRow {
            metric,
            baseline,
            candidate,
            delta,
            baseline_ci95: b,
            candidate_ci95: c,
        });
    let category = (
        (
            text(),
            any::<usize>(),
            option::of(float()),
            option::of(float()),
        ),
        (
            option::of(float()),
            ci(),
            ci(),
            option::of(float()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((category, n, baseline, candidate), (delta, b, c, p_adjusted, fired))| CategoryRow {
                category,
                n,
                baseline,
                candidate,
                delta,
                baseline_ci95: b,
                candidate_ci95: c,
                p_adjusted,
                fired,
            },
        );
    (
        (
            text(),
            option::of(text()),
            option::of(text()),
            text(),
            option::of(text()),
        ),
        (text(), option::of(text()), any::<bool>(), text()),
        (vec(metric, 0..3), vec(category, 0..3), vec(finding(), 0..2)),
        (text(), text(), option::of(text())),
    )
        .prop_map(
            |(
                (run_id, checkpoint, watcher, model, revision),
                (baseline, baseline_run, drifted, severity),
                (metrics, categories, findings),
                (dashboard_url, api_url, sequential),
            )| AlertRun {
                run_id,
                checkpoint,
                watcher,
                model,
                revision,
                baseline,
                baseline_run,
                drifted,
                severity,
                metrics,
                categories,
                findings,
                dashboard_url,
                api_url,
                sequential,
            },
        )
}

fn alert() -> impl Strategy<Value = AlertRecord> {
    let kind = prop_oneof![
        Just(AlertKind::Firing),
        Just(AlertKind::Resolved),
        Just(AlertKind::Test),
        Just(AlertKind::JudgeAudit),
    ];
    let delivery_status = prop_oneof![
        Just(DeliveryStatus::Pending),
        Just(DeliveryStatus::Sending),
        Just(DeliveryStatus::Delivered),
        Just(DeliveryStatus::Dead),
    ];
    let delivery = (
        delivery_status,
        any::<u32>(),
        option::of(text()),
        any::<u64>(),
        option::of(text()),
    )
        .prop_map(
            |(status, attempts, last_error, next_attempt_ms, delivered_at)| Delivery {
                status,
                attempts,
                last_error,
                next_attempt_ms,
                delivered_at,
            },
        );
    (
        ("[A-Z0-9]{1,26}", kind, text(), text(), text()),
        (vec(text(), 0..3), vec(text(), 0..3), text()),
        (btree_map(text(), delivery, 0..3), any::<u64>()),
        (vec(alert_run(), 0..2), vec(text(), 0..2)),
    )
        .prop_map(
            |(
                (id, kind, lineage, severity, summary),
                (run_ids, models, created_at),
                (deliveries, created_ms),
                (runs, resolves),
            )| AlertRecord {
                id: format!("a_{id}"),
                kind,
                lineage,
                severity,
                summary,
                run_ids,
                models,
                created_at,
                deliveries,
                created_ms,
                runs,
                resolves,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn queue_records_with_every_baseline_and_target_read_back(record in checkpoint_record()) {
        let store = store();
        store.put_checkpoint(&record).unwrap();
        prop_assert_eq!(store.checkpoint(&record.key).unwrap(), Some(record.clone()));
        prop_assert!(store.checkpoints().unwrap().contains(&record));
        prop_assert_eq!(store.quarantined_len(), 0);
    }

    #[test]
    fn runs_and_their_totals_read_back(run in run_record(), results in vec(result(0), 0..6)) {
        let store = store();
        let results: Vec<ResultRecord> = results
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.index = i as u32;
                r
            })
            .collect();
        for r in &results {
            store.put_result(&run.id, r).unwrap();
        }
        store.put_run(&run).unwrap();
        prop_assert_eq!(store.get_run(&run.id).unwrap(), Some(run.clone()));
        let stored = store.results(&run.id).unwrap();
        prop_assert_eq!(&stored[..results.len()], &results[..]);
        if run.status == RunStatus::Completed {
            prop_assert_eq!(store.totals(&run).unwrap(), Totals::of(&store.results(&run.id).unwrap()));
        }
        prop_assert_eq!(store.quarantined_len(), 0);
    }

    #[test]
    fn verdicts_read_back(judge in text(), prompt in text(), response in text(), verdict in verdict()) {
        let store = store();
        store.cache_verdict(&judge, &prompt, &response, &verdict).unwrap();
        prop_assert_eq!(store.cached_verdict(&judge, &prompt, &response).unwrap(), Some(verdict));
    }

    #[test]
    fn alerts_with_their_deliveries_read_back(alert in alert()) {
        let store = store();
        let tree = store.tree(crate::alerts::record::TREE).unwrap();
        tree.insert(alert.id.as_bytes(), encode(&alert)).unwrap();
        prop_assert_eq!(crate::alerts::record::get(store, &alert.id).unwrap(), Some(alert));
        prop_assert_eq!(store.quarantined_len(), 0);
    }

    #[test]
    fn alert_decisions_and_lineage_states_read_back(
        action in text(), alert in option::of(text()), at in text(),
        firing in any::<bool>(), episode in vec(text(), 0..3), open in option::of(text()),
    ) {
        let decision = Decision { action, alert, at };
        let state = LineageState { firing, episode, open };
        let back: Decision = serde_json::from_slice(&encode(&decision)).unwrap();
        prop_assert_eq!(back, decision);
        let back: LineageState = serde_json::from_slice(&encode(&state)).unwrap();
        prop_assert_eq!(back, state);
    }
}
