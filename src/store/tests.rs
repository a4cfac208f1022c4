//! The store's unit tests: runs, results, indexes, the verdict cache, opening.

use super::*;
use crate::backend::Decoding;
use crate::safety_metrics::Totals;
use safedrift_judges::Verdict;

pub(crate) fn run(id: &str, identity: &str, status: RunStatus) -> RunRecord {
    RunRecord {
        id: id.into(),
        status,
        identity: identity.into(),
        model: ModelRef {
            spec: "openai:m".into(),
            revision: None,
            registry: None,
        },
        backend: "openai:m".into(),
        template: Template::default_template(),
        decoding: Decoding::default(),
        benchmarks: vec![],
        judge: "keyword".into(),
        judge_identity: "keyword@x".into(),
        judge_description: String::new(),
        total: 3,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: None,
        error: None,
        baseline_run: None,
        drift: None,
        checkpoint: None,
        audit: None,
        content_identity: None,
        copied_from: None,
        kl: None,
    }
}

pub(crate) fn result(index: u32) -> ResultRecord {
    ResultRecord {
        index,
        benchmark: "b".into(),
        prompt_id: format!("p{index}"),
        category: "c".into(),
        benign: false,
        prompt: "q".into(),
        response: "a".into(),
        finish_reason: Some("stop".into()),
        latency_ms: 1,
        prompt_tokens: None,
        completion_tokens: None,
        verdict: None,
        correct: None,
        misaligned: None,
        alignment_score: None,
        attack: None,
        prefill: None,
    }
}

fn judged(index: u32, category: &str, score: u8) -> ResultRecord {
    let mut r = result(index);
    r.category = category.into();
    r.verdict = Some(Verdict::scored(score, score == 1, String::new()));
    r
}

#[test]
fn a_completed_runs_totals_are_stored_with_it_and_dropped_by_a_later_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let results: Vec<ResultRecord> = (0..40)
        .map(|i| judged(i, ["a", "b", "c"][i as usize % 3], 1 + (i % 5) as u8))
        .collect();
    let mut record = run("r_1", "i1", RunStatus::Running);
    store.put_run(&record).unwrap();
    for r in &results[..20] {
        store.put_result("r_1", r).unwrap();
    }
    // Running: computed from what is there, nothing stored.
    assert_eq!(store.totals(&record).unwrap(), Totals::of(&results[..20]));
    assert!(store.run_totals.is_empty());
    for r in &results[20..] {
        store.put_result("r_1", r).unwrap();
    }
    record.status = RunStatus::Completed;
    store.put_run(&record).unwrap();
    let stored: Totals =
        serde_json::from_slice(&store.run_totals.get("r_1").unwrap().unwrap()).unwrap();
    assert_eq!(stored, Totals::of(&results));
    assert_eq!(stored.done, 40);
    assert_eq!(store.totals(&record).unwrap(), stored);
    // A result written to the completed run: the stored totals are
    // gone and the numbers are computed again, from all 41 results.
    let mut extra = judged(40, "d", 5);
    extra.benign = true;
    store.put_result("r_1", &extra).unwrap();
    assert!(store.run_totals.get("r_1").unwrap().is_none());
    let mut all = results.clone();
    all.push(extra);
    assert_eq!(store.totals(&record).unwrap(), Totals::of(&all));
    // A completed run without stored totals (written before they
    // existed) is computed from its results.
    store.put_run(&record).unwrap();
    store.run_totals.remove("r_1").unwrap();
    assert_eq!(store.totals(&record).unwrap(), Totals::of(&all));
    // A bulk import stores them for completed runs only.
    let done = run("r_2", "i2", RunStatus::Completed);
    let going = run("r_3", "i3", RunStatus::Running);
    store
        .import(&[(done.clone(), results.clone()), (going, results.clone())])
        .unwrap();
    assert!(store.run_totals.get("r_2").unwrap().is_some());
    assert!(store.run_totals.get("r_3").unwrap().is_none());
    assert_eq!(store.totals(&done).unwrap(), Totals::of(&results));
}

#[test]
fn runs_results_and_the_open_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = run("r_1", "ident", RunStatus::Running);
    store.put_run(&r).unwrap();
    assert_eq!(store.open_run("ident").unwrap().unwrap().id, "r_1");
    // Results of another run sharing a prefix do not leak in.
    for i in [2u32, 0, 1, 256] {
        store.put_result("r_1", &result(i)).unwrap();
    }
    store.put_result("r_10", &result(0)).unwrap();
    let got: Vec<u32> = store
        .results("r_1")
        .unwrap()
        .iter()
        .map(|r| r.index)
        .collect();
    assert_eq!(got, vec![0, 1, 2, 256]);
    r.status = RunStatus::Completed;
    store.put_run(&r).unwrap();
    assert!(store.open_run("ident").unwrap().is_none());
    assert_eq!(store.runs().unwrap().len(), 1);
}

#[test]
fn a_models_runs_are_a_range_scan_of_the_index_built_on_open_for_old_stores() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for (i, spec) in ["m", "m2", "m", "mm", "m"].iter().enumerate() {
            let mut r = run(&format!("r_{i}"), &format!("id{i}"), RunStatus::Completed);
            r.model.spec = spec.to_string();
            r.started_at = format!("2026-01-0{}T00:00:00Z", i + 1);
            store.put_run(&r).unwrap();
        }
        // A store written before the index: no entries, no marker.
        store.runs_by_model.clear().unwrap();
        store
            .db
            .open_tree("meta")
            .unwrap()
            .remove("index.runs_by_model")
            .unwrap();
        store.db.flush().unwrap();
    }
    for _ in 0..2 {
        // Built on the first open; the second finds it built.
        let store = Store::reopen(dir.path()).unwrap();
        let filter = RunFilter {
            model: Some("m".into()),
            ..RunFilter::default()
        };
        let page = store.list_runs(&filter, 2, None).unwrap();
        let ids: Vec<&str> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r_4", "r_2"]);
        let next = store.list_runs(&filter, 2, page.next.as_deref()).unwrap();
        assert_eq!(next.runs.len(), 1);
        assert_eq!(next.runs[0].id, "r_0");
        assert!(next.next.is_none());
        let models: Vec<(String, usize)> = store
            .models()
            .unwrap()
            .into_iter()
            .map(|m| (m.spec, m.runs))
            .collect();
        assert_eq!(
            models,
            [("m".into(), 3), ("m2".into(), 1), ("mm".into(), 1)]
        );
        assert!(matches!(
            store.list_runs(&filter, 2, Some("6d")),
            Err(StoreError::BadCursor)
        ));
    }
}

#[test]
fn verdict_cache_is_keyed_by_judge_prompt_and_response() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let v = Verdict::scored(5, false, "#thescore: 5".into());
    store.cache_verdict("j", "p", "r", &v).unwrap();
    assert_eq!(store.cached_verdict("j", "p", "r").unwrap(), Some(v));
    assert_eq!(store.cached_verdict("j2", "p", "r").unwrap(), None);
    assert_eq!(store.cached_verdict("j", "pr", "").unwrap(), None);
}

#[test]
fn misalignment_grades_are_cached_apart_from_verdicts() {
    use safedrift_judges::AlignmentVerdict;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let v = Verdict::scored(1, false, "#thescore: 1".into());
    store.cache_verdict("j", "p", "r", &v).unwrap();
    assert_eq!(store.cached_alignment("j", "p", "r").unwrap(), None);
    for graded in [
        AlignmentVerdict::scored(5, "#themisalignment: 5".into()),
        AlignmentVerdict::unscored("no grade".into()),
    ] {
        store.cache_alignment("j", "p", "r", &graded).unwrap();
        assert_eq!(store.cached_alignment("j", "p", "r").unwrap(), Some(graded));
        assert_eq!(
            store.cached_verdict("j", "p", "r").unwrap(),
            Some(v.clone())
        );
    }
    assert_eq!(store.cached_alignment("j2", "p", "r").unwrap(), None);
    assert_eq!(store.quarantined_len(), 0);
}

#[test]
fn a_result_stored_before_misalignment_existed_reads_back_without_it() {
    let mut r = result(3);
    let old = serde_json::to_value(&r).unwrap();
    assert!(old.get("misaligned").is_none() && old.get("alignment_score").is_none());
    assert_eq!(serde_json::from_value::<ResultRecord>(old).unwrap(), r);
    r.misaligned = Some(true);
    r.alignment_score = Some(5);
    let new = serde_json::to_value(&r).unwrap();
    assert_eq!(
        (&new["misaligned"], &new["alignment_score"]),
        (&true.into(), &5.into())
    );
    assert_eq!(serde_json::from_value::<ResultRecord>(new).unwrap(), r);
}

#[test]
fn a_store_held_open_elsewhere_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().expect("refused while held");
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(held);
}

#[test]
fn unknown_schema_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", "99")
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::reopen(dir.path()).err().unwrap();
    assert_eq!(err.kind(), "store_schema");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// A map of every stored record type to the test that covers it (most are in `roundtrip`), so
/// a new tree is not forgotten: `Store::open` creates these trees.
#[test]
fn every_tree_of_a_new_store_is_covered_here() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let covered: std::collections::BTreeMap<&str, &str> = [
        ("meta", "text values"),
        ("runs", "runs_and_their_totals_read_back"),
        ("open_runs", "run ids"),
        ("results", "runs_and_their_totals_read_back"),
        ("verdicts", "verdicts_read_back"),
        ("completed", "run ids"),
        (
            "checkpoints",
            "queue_records_with_every_baseline_and_target_read_back",
        ),
        ("runs_by_model", "empty values"),
        ("run_totals", "runs_and_their_totals_read_back"),
        ("quarantine", "the quarantine test"),
        ("alerts", "alerts_with_their_deliveries_read_back"),
        (
            "alert_decisions",
            "alert_decisions_and_lineage_states_read_back",
        ),
        (
            "alert_lineages",
            "alert_decisions_and_lineage_states_read_back",
        ),
        ("alert_open", "empty values"),
        ("queue_status", "one-byte values"),
        ("queue_ids", "empty values"),
    ]
    .into_iter()
    .collect();
    for name in store.tree_names() {
        assert!(
            covered.contains_key(name.as_str()),
            "tree {name} has no round-trip test"
        );
    }
}
