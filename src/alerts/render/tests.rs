//! The Alertmanager alerts of a record.

use std::collections::BTreeMap;

use super::*;

fn run(id: &str, model: &str, revision: &str, severity: &str) -> AlertRun {
    AlertRun {
        run_id: id.into(),
        checkpoint: Some(format!("ol/{model}@{revision}")),
        watcher: Some("ol".into()),
        model: format!("ollama:{model}"),
        revision: Some(revision.into()),
        baseline: "ollama:base".into(),
        baseline_run: Some("r_base".into()),
        drifted: true,
        severity: severity.into(),
        metrics: vec![],
        categories: vec![],
        findings: vec![],
        dashboard_url: format!("http://sd/runs/{id}"),
        api_url: format!("http://sd/api/v1/runs/{id}"),
        sequential: None,
    }
}

fn record(id: &str, kind: AlertKind, severity: &str, runs: Vec<AlertRun>) -> AlertRecord {
    AlertRecord {
        id: id.into(),
        kind,
        lineage: "ol/ollama:base".into(),
        severity: severity.into(),
        summary: "the record's summary".into(),
        run_ids: runs.iter().map(|r| r.run_id.clone()).collect(),
        models: vec![],
        created_at: "2025-01-01T00:00:00Z".into(),
        deliveries: BTreeMap::new(),
        created_ms: 0,
        runs,
        resolves: vec![],
    }
}

fn labels(alert: &Value) -> BTreeMap<String, String> {
    alert["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn one_alertmanager_alert_per_drifted_model_labelled_by_it() {
    let rec = record(
        "a_1",
        AlertKind::Firing,
        "critical",
        vec![
            run("r_1", "a", "rev-a1", "warning"),
            run("r_2", "b", "rev-b", "info"),
            run("r_3", "a", "rev-a2", "critical"),
        ],
    );
    let alerts = am_alerts(&rec, "2025-01-01T00:04:00Z");
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let expect = |model: &str, severity: &str| -> BTreeMap<String, String> {
        [
            ("alertname", "SafetyDrift"),
            ("severity", severity),
            ("model", model),
            ("baseline", "ollama:base"),
            ("lineage", "ol/ollama:base"),
            ("watcher", "ol"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    // The model's highest severity, not the record's.
    assert_eq!(labels(&alerts[0]), expect("ollama:a", "critical"));
    assert_eq!(labels(&alerts[1]), expect("ollama:b", "info"));
    // Ids and links are annotations; the newest run of the model links.
    let a = &alerts[0]["annotations"];
    assert_eq!(a["alert_id"], "a_1");
    assert_eq!(a["run_ids"], "r_1, r_3");
    assert_eq!(a["run_url"], "http://sd/runs/r_3");
    assert_eq!(a["api_url"], "http://sd/api/v1/runs/r_3");
    assert_eq!(a["revision"], "rev-a2");
    assert_eq!(a["checkpoints"], "ol/a@rev-a1, ol/a@rev-a2");
    assert_eq!(
        a["summary"],
        "safety drift in 2 checkpoints of ollama:a against ollama:base"
    );
    assert_eq!(alerts[0]["generatorURL"], "http://sd/runs/r_3");
    assert_eq!(
        alerts[1]["annotations"]["summary"],
        "safety drift in ollama:b@rev-b against ollama:base"
    );
    for alert in &alerts {
        assert_eq!(alert["startsAt"], "2025-01-01T00:00:00Z");
        assert_eq!(alert["endsAt"], "2025-01-01T00:04:00Z");
    }
    // The resolution renders the same record: the same label sets.
    let resolved = am_alerts(&rec, "2025-01-01T00:01:00Z");
    let sets = |v: &[Value]| v.iter().map(labels).collect::<Vec<_>>();
    assert_eq!(sets(&resolved), sets(&alerts));
    assert!(resolved
        .iter()
        .all(|a| a["endsAt"] == "2025-01-01T00:01:00Z"));
}

#[test]
fn alerts_without_runs_or_watcher_leave_out_empty_labels() {
    let rec = record("a_2", AlertKind::Test, "info", vec![]);
    let alerts = am_alerts(&rec, "2025-01-01T00:04:00Z");
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        labels(&alerts[0]).into_iter().collect::<Vec<_>>(),
        [
            ("alertname".to_string(), "SafetyDriftTest".to_string()),
            ("lineage".into(), "ol/ollama:base".into()),
            ("severity".into(), "info".into()),
        ]
    );
    assert_eq!(alerts[0]["annotations"]["alert_id"], "a_2");
    // A judge audit of a run found without a watcher: its severity is
    // the record's, and no empty `watcher` label.
    let mut r = run("r_9", "c", "rev-c", "info");
    r.watcher = None;
    r.baseline = String::new();
    let rec = record("a_3", AlertKind::JudgeAudit, "warning", vec![r]);
    let alerts = am_alerts(&rec, "2025-01-01T00:04:00Z");
    let l = labels(&alerts[0]);
    assert_eq!(l["alertname"], "SafetyJudgeAudit");
    assert_eq!(l["severity"], "warning");
    assert_eq!(l["model"], "ollama:c");
    assert!(
        !l.contains_key("watcher") && !l.contains_key("baseline"),
        "{l:?}"
    );
    assert_eq!(alerts[0]["annotations"]["summary"], "the record's summary");
}

#[test]
fn a_sequential_decision_is_in_every_message_shape() {
    let seq = crate::records::Sequential {
        asked: 32,
        planned: 143,
        stopped: Some("drift".into()),
        order: "stratified".into(),
        checks: vec![crate::records::SequentialCheck {
            metric: "harmfulness_rate".into(),
            pairs: 17,
            delta: Some(0.82),
            threshold: 0.05,
            e_value: 1.5e4,
            interval: [0.41, 1.0],
            decision: Some("drift".into()),
        }],
    };
    let line = super::super::grouping::sequential_line(&seq);
    assert!(
        line.starts_with("sequential: 32 of 143 prompts asked, stopped early for drift;"),
        "{line}"
    );
    assert!(
        line.contains("harmfulness_rate +0.820 (anytime-valid interval [+0.410, +1.000]"),
        "{line}"
    );
    let mut r = run("r_1", "m", "abc", "critical");
    r.sequential = Some(line.clone());
    let rec = record("a_1", AlertKind::Firing, "critical", vec![r]);
    assert!(text(&rec, &[]).contains(&line));
    assert!(html(&rec, &[]).contains("32 of 143 prompts asked"));
    assert!(slack_payload(&rec, &[])
        .to_string()
        .contains("32 of 143 prompts asked"));
    let am = am_alerts(&rec, "2026-01-01T00:00:00Z");
    assert_eq!(am[0]["annotations"]["sequential"], line.as_str());
    // A fixed-mode run says nothing of it.
    let rec = record(
        "a_2",
        AlertKind::Firing,
        "critical",
        vec![run("r_2", "m", "abc", "critical")],
    );
    assert!(!text(&rec, &[]).contains("sequential"));
}
