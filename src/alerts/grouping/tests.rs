use super::*;
use crate::safety_metrics::{Drift, Finding, Metrics};
use crate::store::{ModelRef, RunStatus};
use std::cell::RefCell;

fn doc(id: &str, model: &str, rate: f64) -> Run {
    let base_metrics = Metrics {
        n: 40,
        harmfulness_rate: Some(0.0),
        ..Metrics::default()
    };
    let mk = |id: &str, spec: &str, metrics: Metrics| Run {
        id: id.into(),
        status: RunStatus::Completed,
        model: ModelRef {
            spec: spec.into(),
            revision: Some("0123456789abcdef".into()),
            registry: Some("w".into()),
        },
        template: "default".into(),
        template_sha256: String::new(),
        benchmarks: vec![],
        judge: "keyword".into(),
        judge_description: String::new(),
        started_at: String::new(),
        finished_at: None,
        metrics,
        per_category: BTreeMap::new(),
        per_benchmark: BTreeMap::new(),
        baseline: None,
        drift: None,
        audit: None,
        copied_from: None,
        stopped: None,
        probes: Default::default(),
    };
    let mut d = mk(
        id,
        model,
        Metrics {
            n: 40,
            harmfulness_rate: Some(rate),
            ..Metrics::default()
        },
    );
    let mut base = mk("r_base", "w:base", base_metrics);
    base.model.registry = None;
    d.baseline = Some(Box::new(base));
    d.drift = Some(Drift {
        detected: rate > 0.05,
        significance: 0.05,
        correction: "holm-bonferroni".into(),
        findings: vec![Finding {
            metric: "harmfulness_rate".into(),
            category: None,
            baseline: Some(0.0),
            candidate: Some(rate),
            delta: Some(rate),
            threshold: 0.05,
            p_value: 0.001,
            p_adjusted: 0.001,
            test: "mcnemar_exact".into(),
            pairs: 40,
            fired: rate > 0.05,
            attack: None,
        }],
        sequential: None,
    });
    d
}

fn targets() -> BTreeMap<String, TargetConfig> {
    let mut out = BTreeMap::new();
    for (name, extra) in [("all", ""), ("critical", "min_severity = \"critical\"\n")] {
        let text = format!("kind = \"webhook\"\nurl = \"http://x/\"\nformat = \"slack\"\n{extra}");
        let target = TargetConfig::parse(name, toml::from_str(&text).unwrap()).unwrap();
        out.insert(name.to_string(), target);
    }
    out
}

/// Runs the decisions in order against an in-memory outbox.
struct Sim {
    state: LineageState,
    alerts: RefCell<BTreeMap<String, AlertRecord>>,
}

impl Sim {
    fn decide(&mut self, d: &Run, now: u64) -> Decision {
        let alerts = self.alerts.borrow().clone();
        let get = |id: &str| alerts.get(id).cloned();
        let lineage = lineage(d).unwrap();
        let plan = decide(
            d,
            &lineage,
            self.state.clone(),
            &get,
            &targets(),
            "http://h:1/",
            10_000,
            now,
        );
        self.state = plan.state;
        for r in plan.records {
            self.alerts.borrow_mut().insert(r.id.clone(), r);
        }
        plan.decision
    }
}

#[test]
fn drift_groups_within_the_window_and_resolves_once() {
    let mut sim = Sim {
        state: LineageState::default(),
        alerts: RefCell::new(BTreeMap::new()),
    };
    // 0.10 = 2 thresholds: warning; not routed to the critical-only target.
    let first = sim.decide(&doc("r_1", "w:a", 0.10), 1_000);
    assert_eq!(first.action, "opened");
    let id1 = first.alert.unwrap();
    {
        let alerts = sim.alerts.borrow();
        let rec = &alerts[&id1];
        assert_eq!(rec.severity, "warning");
        assert_eq!(rec.deliveries.keys().collect::<Vec<_>>(), vec!["all"]);
        assert_eq!(rec.deliveries["all"].next_attempt_ms, 11_000);
        assert_eq!(rec.lineage, "w/w:base");
        assert_eq!(rec.runs[0].dashboard_url, "http://h:1/runs/r_1");
        assert_eq!(rec.runs[0].api_url, "http://h:1/api/v1/runs/r_1");
        assert_eq!(
            rec.runs[0].checkpoint.as_deref(),
            Some("w/a@0123456789abcdef")
        );
    }
    // 0.30 = 6 thresholds: critical; joins the open group, which becomes
    // critical and gains the critical-only target, due at the same time.
    let second = sim.decide(&doc("r_2", "w:b", 0.30), 5_000);
    assert_eq!(second.action, "grouped");
    assert_eq!(second.alert.as_deref(), Some(id1.as_str()));
    {
        let alerts = sim.alerts.borrow();
        let rec = &alerts[&id1];
        assert_eq!(rec.run_ids, vec!["r_1", "r_2"]);
        assert_eq!(rec.severity, "critical");
        assert_eq!(rec.deliveries["critical"].next_attempt_ms, 11_000);
        assert_eq!(rec.summary, "safety drift in 2 checkpoints of w/w:base");
    }
    // After the window a new alert opens.
    let third = sim.decide(&doc("r_3", "w:c", 0.10), 12_000);
    assert_eq!(third.action, "opened");
    let id3 = third.alert.unwrap();
    assert_ne!(id3, id1);
    // An attempt has started on the open alert: nothing joins it any more.
    sim.alerts
        .borrow_mut()
        .get_mut(&id3)
        .unwrap()
        .deliveries
        .get_mut("all")
        .unwrap()
        .attempts = 1;
    let fourth = sim.decide(&doc("r_4", "w:d", 0.10), 13_000);
    assert_eq!(fourth.action, "opened");
    let id4 = fourth.alert.unwrap();
    // Back within the thresholds: one resolved notice for the episode, to
    // every target told of it; then nothing more.
    let resolved = sim.decide(&doc("r_5", "w:e", 0.0), 14_000);
    assert_eq!(resolved.action, "resolved");
    {
        let alerts = sim.alerts.borrow();
        let rec = &alerts[resolved.alert.as_ref().unwrap()];
        assert_eq!(rec.kind, AlertKind::Resolved);
        assert_eq!(rec.resolves, vec![id1.clone(), id3.clone(), id4.clone()]);
        assert_eq!(rec.severity, "critical");
        assert_eq!(
            rec.deliveries.keys().collect::<Vec<_>>(),
            vec!["all", "critical"]
        );
        // Not before the episode's last message is due.
        assert_eq!(rec.deliveries["all"].next_attempt_ms, 23_000);
    }
    assert!(!sim.state.firing && sim.state.episode.is_empty());
    let again = sim.decide(&doc("r_6", "w:f", 0.0), 15_000);
    assert_eq!(again.action, "none");
    assert_eq!(sim.alerts.borrow().len(), 4);
}
