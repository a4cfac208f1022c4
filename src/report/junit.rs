//! `eval --output junit`: the report as JUnit XML, the test-report format CI
//! systems (GitLab, Jenkins, GitHub Actions reporters, Azure DevOps) read.
//!
//! Two suites:
//! - `safedrift.drift` (only with a baseline): one test case per drift rule
//!   the paired tests checked (`harmfulness_rate`, `harmfulness_score`,
//!   `over_refusal_rate`, `category_harmfulness_rate[CATEGORY]`), failed
//!   when the rule fired; the failure carries the finding (baseline and
//!   candidate values, threshold, p-values, test, pairs).
//! - `safedrift.benchmarks`: one test case per benchmark with its figures.
//!   With a baseline it fails when the benchmark's harmfulness rate rose by
//!   more than the overall rule's threshold; that is an indication per
//!   benchmark, not a test of its own (the paired tests are in the drift
//!   suite, and they decide `--fail-on-drift`).
//!
//! Checked against the JUnit schema of Jenkins' xUnit plugin
//! (`tests/data/junit-10.xsd`) by `tests/eval.rs`.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::{pct, Run};
use crate::safety_metrics::{Finding, Metrics};

/// One test case: its name and, when it failed, the failure's message and
/// details.
struct Case {
    name: String,
    failure: Option<(String, String)>,
    out: String,
}

/// The report as a JUnit XML document.
pub fn junit(run: &Run) -> String {
    let mut suites = Vec::new();
    if let (Some(drift), Some(_)) = (&run.drift, &run.baseline) {
        suites.push((
            "safedrift.drift",
            drift.findings.iter().map(case_of).collect(),
        ));
    }
    suites.push(("safedrift.benchmarks", benchmark_cases(run)));

    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let tests: usize = suites.iter().map(|(_, c): &(_, Vec<Case>)| c.len()).sum();
    let failures: usize = suites
        .iter()
        .map(|(_, c)| c.iter().filter(|c| c.failure.is_some()).count())
        .sum();
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .expect("writing to memory");
    let mut root = BytesStart::new("testsuites");
    root.push_attribute(("name", format!("safedrift {}", run.model.spec).as_str()));
    root.push_attribute(("tests", tests.to_string().as_str()));
    root.push_attribute(("failures", failures.to_string().as_str()));
    root.push_attribute(("errors", "0"));
    w.write_event(Event::Start(root))
        .expect("writing to memory");
    for (name, cases) in &suites {
        write_suite(&mut w, run, name, cases);
    }
    w.write_event(Event::End(BytesEnd::new("testsuites")))
        .expect("writing to memory");
    let mut text = String::from_utf8(w.into_inner()).expect("quick-xml writes UTF-8");
    text.push('\n');
    text
}

fn write_suite(w: &mut Writer<Vec<u8>>, run: &Run, name: &str, cases: &[Case]) {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut suite = BytesStart::new("testsuite");
    suite.push_attribute(("name", name));
    suite.push_attribute(("tests", cases.len().to_string().as_str()));
    suite.push_attribute(("failures", failures.to_string().as_str()));
    suite.push_attribute(("errors", "0"));
    suite.push_attribute(("timestamp", run.started_at.as_str()));
    w.write_event(Event::Start(suite))
        .expect("writing to memory");

    w.write_event(Event::Start(BytesStart::new("properties")))
        .expect("writing to memory");
    let baseline = run.baseline.as_ref().map(|b| b.model.spec.as_str());
    for (k, v) in [
        ("run", Some(run.id.as_str())),
        ("model", Some(run.model.spec.as_str())),
        ("baseline", baseline),
        ("judge", Some(run.judge.as_str())),
        ("template", Some(run.template.as_str())),
    ] {
        if let Some(v) = v {
            let mut p = BytesStart::new("property");
            p.push_attribute(("name", k));
            p.push_attribute(("value", v));
            w.write_event(Event::Empty(p)).expect("writing to memory");
        }
    }
    w.write_event(Event::End(BytesEnd::new("properties")))
        .expect("writing to memory");

    for case in cases {
        let mut tc = BytesStart::new("testcase");
        tc.push_attribute(("name", case.name.as_str()));
        tc.push_attribute(("classname", name));
        tc.push_attribute(("time", "0"));
        w.write_event(Event::Start(tc)).expect("writing to memory");
        if let Some((message, details)) = &case.failure {
            let mut f = BytesStart::new("failure");
            f.push_attribute(("type", "safety-drift"));
            f.push_attribute(("message", message.as_str()));
            w.write_event(Event::Start(f)).expect("writing to memory");
            w.write_event(Event::Text(BytesText::new(details)))
                .expect("writing to memory");
            w.write_event(Event::End(BytesEnd::new("failure")))
                .expect("writing to memory");
        }
        w.write_event(Event::Start(BytesStart::new("system-out")))
            .expect("writing to memory");
        w.write_event(Event::Text(BytesText::new(&case.out)))
            .expect("writing to memory");
        w.write_event(Event::End(BytesEnd::new("system-out")))
            .expect("writing to memory");
        w.write_event(Event::End(BytesEnd::new("testcase")))
            .expect("writing to memory");
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))
        .expect("writing to memory");
}

/// A value of a metric as text: rates in percent, scores as they are.
fn value(metric: &str, v: Option<f64>) -> String {
    if metric.ends_with("_rate") {
        pct(v)
    } else {
        v.map_or("n/a".into(), |v| format!("{v:.2}"))
    }
}

fn case_of(f: &Finding) -> Case {
    let name = match (&f.category, &f.attack) {
        // Named after the `[drift]` rule that judges it.
        (Some(c), _) => format!("category_{}[{c}]", f.metric),
        (None, Some(a)) => format!("{}[{a}]", f.metric),
        (None, None) => f.metric.clone(),
    };
    let finding = format!(
        "{name}: baseline {} -> candidate {} (threshold {}{}); p = {:.3e}, adjusted p = {:.3e} ({}, {} pairs)",
        value(&f.metric, f.baseline),
        value(&f.metric, f.candidate),
        f.worse_sign(),
        value(&f.metric, Some(f.threshold)),
        f.p_value,
        f.p_adjusted,
        f.test,
        f.pairs
    );
    let failure = f.fired.then(|| {
        (
            format!(
                "safety drift: {name} rose from {} to {}",
                value(&f.metric, f.baseline),
                value(&f.metric, f.candidate)
            ),
            finding.clone(),
        )
    });
    Case {
        name,
        failure,
        out: finding,
    }
}

fn figures(m: &Metrics) -> String {
    format!(
        "harmful prompts {}, harmfulness rate {}, refusal rate {}; benign prompts {}, over-refusal rate {}",
        m.n,
        pct(m.harmfulness_rate),
        pct(m.refusal_rate),
        m.n_benign,
        pct(m.over_refusal_rate)
    )
}

fn benchmark_cases(run: &Run) -> Vec<Case> {
    let threshold = run.drift.as_ref().and_then(|d| {
        d.findings
            .iter()
            .find(|f| f.metric == "harmfulness_rate" && f.category.is_none())
            .map(|f| f.threshold)
    });
    run.per_benchmark
        .iter()
        .map(|(name, m)| {
            let base = run
                .baseline
                .as_ref()
                .and_then(|b| b.per_benchmark.get(name));
            let mut out = format!("candidate: {}", figures(m));
            if let Some(b) = base {
                out.push_str(&format!("\nbaseline: {}", figures(b)));
            }
            let rose = match (base.and_then(|b| b.harmfulness_rate), m.harmfulness_rate) {
                (Some(b), Some(c)) => Some((b, c)),
                _ => None,
            };
            let failure = match (rose, threshold) {
                (Some((b, c)), Some(t)) if c - b > t => Some((
                    format!(
                        "harmfulness rate on {name} rose from {} to {}",
                        pct(Some(b)),
                        pct(Some(c))
                    ),
                    out.clone(),
                )),
                _ => None,
            };
            Case {
                name: name.clone(),
                failure,
                out,
            }
        })
        .collect()
}
