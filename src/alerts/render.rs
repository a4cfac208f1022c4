//! The texts and payloads of an alert. Everything is rendered from the
//! [`AlertRecord`], which holds numbers, names and links only; model answers
//! appear only when a target sets `include_responses` and are passed in
//! separately.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::record::{AlertKind, AlertRecord, AlertRun};
use super::routing::Severity;

/// A harmful answer shown to targets that opt in.
#[derive(Clone, Debug)]
pub struct Example {
    pub run_id: String,
    pub prompt_id: String,
    pub category: String,
    pub response: String,
}

pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

pub fn fmt_delta(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:+.3}"))
}

pub fn fmt_ci(v: Option<[f64; 2]>) -> String {
    v.map_or_else(String::new, |[l, h]| format!(" [{l:.3}, {h:.3}]"))
}

fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

pub fn subject(rec: &AlertRecord) -> String {
    let tag = match rec.kind {
        AlertKind::Firing => rec.severity.to_uppercase(),
        AlertKind::Resolved => "RESOLVED".into(),
        AlertKind::Test => "TEST".into(),
        AlertKind::JudgeAudit => "JUDGE".into(),
    };
    format!("[safedrift] {tag}: {}", rec.summary)
}

fn heading(rec: &AlertRecord) -> String {
    match rec.kind {
        AlertKind::Firing => format!(
            "Safety drift ({}) in lineage {}: {} checkpoint(s) are worse than their baseline.",
            rec.severity,
            rec.lineage,
            rec.runs.len()
        ),
        AlertKind::Resolved => format!(
            "Resolved: the latest checkpoint of lineage {} is back within the drift thresholds.",
            rec.lineage
        ),
        AlertKind::Test => {
            "This is a test message from safedrift: the target is configured and reachable.".into()
        }
        AlertKind::JudgeAudit => format!(
            "The local judge is drifting from its teacher: {}. Its harmfulness scores for these runs can no longer be trusted; distill it again from the teacher's recent verdicts (safedrift distill --from-store).",
            rec.summary
        ),
    }
}

/// The plain-text body.
pub fn text(rec: &AlertRecord, examples: &[Example]) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "{}\n", heading(rec));
    let _ = writeln!(w, "alert      {}", rec.id);
    let _ = writeln!(w, "severity   {}", rec.severity);
    let _ = writeln!(w, "created    {}", rec.created_at);
    for run in &rec.runs {
        let _ = writeln!(w);
        text_run(&mut w, run);
    }
    if !examples.is_empty() {
        let _ = writeln!(w, "\nHarmful answers (this target includes model output):");
        for e in examples {
            let _ = writeln!(
                w,
                "- run {} prompt {} [{}]:\n  {}",
                e.run_id,
                e.prompt_id,
                e.category,
                e.response.replace('\n', "\n  ")
            );
        }
    }
    w
}

fn text_run(w: &mut String, run: &AlertRun) {
    let _ = writeln!(w, "model      {}", run.model);
    if let Some(r) = &run.revision {
        let _ = writeln!(w, "revision   {r}");
    }
    if let Some(c) = &run.checkpoint {
        let _ = writeln!(w, "checkpoint {c}");
    }
    let _ = writeln!(
        w,
        "baseline   {}{}",
        run.baseline,
        run.baseline_run
            .as_deref()
            .map(|b| format!(" (run {b})"))
            .unwrap_or_default()
    );
    let _ = writeln!(w, "run        {}", run.run_id);
    let _ = writeln!(w, "dashboard  {}", run.dashboard_url);
    let _ = writeln!(w, "api        {}", run.api_url);
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<20} {:>24} {:>24} {:>8}",
        "metric", "baseline [95% CI]", "candidate [95% CI]", "delta"
    );
    for m in &run.metrics {
        let _ = writeln!(
            w,
            "{:<20} {:>24} {:>24} {:>8}",
            m.metric,
            format!("{}{}", fmt_opt(m.baseline), fmt_ci(m.baseline_ci95)),
            format!("{}{}", fmt_opt(m.candidate), fmt_ci(m.candidate_ci95)),
            fmt_delta(m.delta)
        );
    }
    if !run.categories.is_empty() {
        let _ = writeln!(w, "\nharmfulness_rate per category:");
        for c in &run.categories {
            let _ = writeln!(
                w,
                "{:<20} {:>24} {:>24} {:>8}{}{}",
                c.category,
                format!("{}{}", fmt_opt(c.baseline), fmt_ci(c.baseline_ci95)),
                format!("{}{}", fmt_opt(c.candidate), fmt_ci(c.candidate_ci95)),
                fmt_delta(c.delta),
                c.p_adjusted
                    .map(|p| format!("  p_holm={}", fmt_p(p)))
                    .unwrap_or_default(),
                if c.fired { "  FIRED" } else { "" }
            );
        }
    }
    if !run.findings.is_empty() {
        let _ = writeln!(w, "\nfired findings:");
        for f in &run.findings {
            let _ = writeln!(w, "- {}", finding_line(f));
        }
    }
    if let Some(s) = &run.sequential {
        let _ = writeln!(w, "\n{s}");
    }
}

pub fn finding_line(f: &crate::safety_metrics::Finding) -> String {
    let what = match (&f.category, &f.attack) {
        (Some(c), _) => format!("{}[{c}]", f.metric),
        (None, Some(a)) => format!("{}[attack {a}]", f.metric),
        (None, None) => f.metric.clone(),
    };
    format!(
        "{what}: {} -> {} ({}, threshold {}{:.3}, p={} by {})",
        fmt_opt(f.baseline),
        fmt_opt(f.candidate),
        fmt_delta(f.delta),
        f.worse_sign(),
        f.threshold,
        fmt_p(f.p_adjusted),
        f.test
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The HTML body.
pub fn html(rec: &AlertRecord, examples: &[Example]) -> String {
    let mut w = String::new();
    let _ = write!(
        w,
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\"><h2>{}</h2><p>{}</p><p>alert <code>{}</code>, severity <b>{}</b>, {}</p>",
        esc(&subject(rec)),
        esc(&heading(rec)),
        esc(&rec.id),
        esc(&rec.severity),
        esc(&rec.created_at)
    );
    let td = "style=\"padding:2px 8px;border:1px solid #ccc\"";
    for run in &rec.runs {
        let _ = write!(
            w,
            "<h3>{}{}</h3><p>baseline {}{}<br>run <a href=\"{}\">{}</a> (<a href=\"{}\">JSON</a>)</p>",
            esc(&run.model),
            run.revision.as_deref().map(|r| format!(" @ {}", esc(r))).unwrap_or_default(),
            esc(&run.baseline),
            run.baseline_run.as_deref().map(|b| format!(" (run {})", esc(b))).unwrap_or_default(),
            esc(&run.dashboard_url),
            esc(&run.run_id),
            esc(&run.api_url)
        );
        let _ = write!(
            w,
            "<table style=\"border-collapse:collapse\"><tr><th {td}>metric</th><th {td}>baseline [95% CI]</th><th {td}>candidate [95% CI]</th><th {td}>delta</th></tr>"
        );
        for m in &run.metrics {
            let _ = write!(
                w,
                "<tr><td {td}>{}</td><td {td}>{}{}</td><td {td}>{}{}</td><td {td}>{}</td></tr>",
                esc(&m.metric),
                fmt_opt(m.baseline),
                fmt_ci(m.baseline_ci95),
                fmt_opt(m.candidate),
                fmt_ci(m.candidate_ci95),
                fmt_delta(m.delta)
            );
        }
        let _ = write!(w, "</table>");
        if !run.categories.is_empty() {
            let _ = write!(
                w,
                "<h4>harmfulness_rate per category</h4><table style=\"border-collapse:collapse\"><tr><th {td}>category</th><th {td}>baseline [95% CI]</th><th {td}>candidate [95% CI]</th><th {td}>delta</th><th {td}>p (Holm)</th></tr>"
            );
            for c in &run.categories {
                let style = if c.fired { " style=\"color:#b00\"" } else { "" };
                let _ = write!(
                    w,
                    "<tr{style}><td {td}>{}</td><td {td}>{}{}</td><td {td}>{}{}</td><td {td}>{}</td><td {td}>{}</td></tr>",
                    esc(&c.category),
                    fmt_opt(c.baseline),
                    fmt_ci(c.baseline_ci95),
                    fmt_opt(c.candidate),
                    fmt_ci(c.candidate_ci95),
                    fmt_delta(c.delta),
                    c.p_adjusted.map(fmt_p).unwrap_or_default()
                );
            }
            let _ = write!(w, "</table>");
        }
        if !run.findings.is_empty() {
            let _ = write!(w, "<h4>fired findings</h4><ul>");
            for f in &run.findings {
                let _ = write!(w, "<li>{}</li>", esc(&finding_line(f)));
            }
            let _ = write!(w, "</ul>");
        }
        if let Some(s) = &run.sequential {
            let _ = write!(w, "<p>{}</p>", esc(s));
        }
    }
    if !examples.is_empty() {
        let _ = write!(w, "<h3>Harmful answers</h3>");
        for e in examples {
            let _ = write!(
                w,
                "<p>run {} prompt {} [{}]</p><pre>{}</pre>",
                esc(&e.run_id),
                esc(&e.prompt_id),
                esc(&e.category),
                esc(&e.response)
            );
        }
    }
    let _ = write!(w, "</body></html>");
    w
}

/// Our own JSON schema (the body of signed `format = "json"` webhooks), in
/// the Standard Webhooks envelope: `type`, `timestamp`, `data`.
pub fn json_payload(rec: &AlertRecord, examples: &[Example]) -> Value {
    let kind = match rec.kind {
        AlertKind::Firing => "alert.firing",
        AlertKind::Resolved => "alert.resolved",
        AlertKind::Test => "alert.test",
        AlertKind::JudgeAudit => "alert.judge_audit",
    };
    let mut data = json!({
        "id": rec.id,
        "kind": rec.kind,
        "lineage": rec.lineage,
        "severity": rec.severity,
        "summary": rec.summary,
        "created_at": rec.created_at,
        "run_ids": rec.run_ids,
        "models": rec.models,
        "runs": rec.runs,
        "resolves": rec.resolves,
    });
    if !examples.is_empty() {
        data["responses"] = examples
            .iter()
            .map(|e| {
                json!({"run_id": e.run_id, "prompt_id": e.prompt_id, "category": e.category,
                       "response": e.response})
            })
            .collect();
    }
    json!({"type": kind, "timestamp": rec.created_at, "data": data})
}

/// A Slack incoming-webhook message: `text` (the fallback) and `blocks`.
pub fn slack_payload(rec: &AlertRecord, examples: &[Example]) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&subject(rec), 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": heading(rec)}}),
    ];
    for run in &rec.runs {
        let mut t = format!(
            "*{}*{} vs baseline `{}`\n",
            run.model,
            run.revision
                .as_deref()
                .map(|r| format!(" @ `{r}`"))
                .unwrap_or_default(),
            run.baseline
        );
        for m in &run.metrics {
            let _ = writeln!(
                t,
                "• {}: {} → {} ({})",
                m.metric,
                fmt_opt(m.baseline),
                fmt_opt(m.candidate),
                fmt_delta(m.delta)
            );
        }
        for f in &run.findings {
            let _ = writeln!(t, "• fired: {}", finding_line(f));
        }
        if let Some(s) = &run.sequential {
            let _ = writeln!(t, "• {s}");
        }
        let _ = write!(
            t,
            "<{}|run {}> · <{}|JSON>",
            run.dashboard_url, run.run_id, run.api_url
        );
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&t, 2900)}}),
        );
    }
    for e in examples {
        blocks.push(json!({"type": "section", "text": {"type": "plain_text",
            "text": truncate(&format!("{} [{}]: {}", e.prompt_id, e.category, e.response), 2900)}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("alert {}", rec.id)}]}));
    json!({"text": subject(rec), "blocks": blocks})
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

/// One Alertmanager alert per label set of a record: a drift alert about
/// several checkpoints becomes one alert per drifted model, so that on-call
/// can route, group and silence by `model`. Labels (none empty):
/// `alertname` (`SafetyDrift`, `SafetyJudgeAudit`, `SafetyDriftTest`),
/// `severity` (the highest among that model's checkpoints in the record;
/// the record's own for judge audits and tests), `model` (the checkpoint's
/// model SPEC, without its revision), `baseline` (the SPEC it was compared
/// with), `lineage` and `watcher`. Ids and links are annotations: they
/// differ per alert and would make every alert its own group.
///
/// A record's alerts never change once it is delivered (a group only takes
/// checkpoints before its first delivery), so its repeats and the resolved
/// notice, which renders the firing records again with `endsAt` in the
/// past, address the same alerts.
/// `ends_at` is in the future while firing, in the past once resolved.
pub fn am_alerts(rec: &AlertRecord, ends_at: &str) -> Vec<Value> {
    let alertname = match rec.kind {
        AlertKind::Test => "SafetyDriftTest",
        AlertKind::JudgeAudit => "SafetyJudgeAudit",
        _ => "SafetyDrift",
    };
    // The runs by label set, in the order the record names them.
    let mut groups: Vec<(LabelKey, Vec<&AlertRun>)> = Vec::new();
    for run in &rec.runs {
        let key = (
            run.model.as_str(),
            run.watcher.as_deref(),
            run.baseline.as_str(),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    if groups.is_empty() {
        let mut labels = Map::new();
        put(&mut labels, "alertname", alertname);
        put(&mut labels, "severity", &rec.severity);
        put(&mut labels, "lineage", &rec.lineage);
        let mut annotations = Map::new();
        put(&mut annotations, "summary", &rec.summary);
        put(&mut annotations, "description", &heading(rec));
        put(&mut annotations, "alert_id", &rec.id);
        return vec![json!({
            "labels": labels,
            "annotations": annotations,
            "startsAt": rec.created_at,
            "endsAt": ends_at,
        })];
    }
    groups
        .into_iter()
        .map(|(key, runs)| model_alert(rec, alertname, key, &runs, ends_at))
        .collect()
}

/// The Alertmanager alert of one drifted model of `rec` (its `runs`).
fn model_alert(
    rec: &AlertRecord,
    alertname: &str,
    (model, watcher, baseline): LabelKey<'_>,
    runs: &[&AlertRun],
    ends_at: &str,
) -> Value {
    let newest = runs[runs.len() - 1];
    let severity = match rec.kind {
        AlertKind::Firing => runs
            .iter()
            .filter_map(|r| Severity::parse(&r.severity))
            .max()
            .map_or(rec.severity.as_str(), |s| s.as_str()),
        _ => rec.severity.as_str(),
    };
    let mut labels = Map::new();
    put(&mut labels, "alertname", alertname);
    put(&mut labels, "severity", severity);
    put(&mut labels, "model", model);
    put(&mut labels, "baseline", baseline);
    put(&mut labels, "lineage", &rec.lineage);
    put(&mut labels, "watcher", watcher.unwrap_or_default());
    let summary = match rec.kind {
        AlertKind::Firing if runs.len() == 1 => format!(
            "safety drift in {model}{} against {baseline}",
            newest
                .revision
                .as_deref()
                .map(|r| format!("@{}", super::grouping::short(r)))
                .unwrap_or_default()
        ),
        AlertKind::Firing => format!(
            "safety drift in {} checkpoints of {model} against {baseline}",
            runs.len()
        ),
        _ => rec.summary.clone(),
    };
    let joined = |f: &dyn Fn(&AlertRun) -> Option<String>| {
        runs.iter()
            .filter_map(|r| f(r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let findings: Vec<String> = runs
        .iter()
        .flat_map(|r| r.findings.iter().map(finding_line))
        .collect();
    let mut annotations = Map::new();
    put(&mut annotations, "summary", &summary);
    put(&mut annotations, "description", &heading(rec));
    put(&mut annotations, "alert_id", &rec.id);
    put(
        &mut annotations,
        "run_ids",
        &joined(&|r| Some(r.run_id.clone())),
    );
    put(
        &mut annotations,
        "revision",
        newest.revision.as_deref().unwrap_or_default(),
    );
    put(
        &mut annotations,
        "checkpoints",
        &joined(&|r| r.checkpoint.clone()),
    );
    put(
        &mut annotations,
        "baseline_run",
        newest.baseline_run.as_deref().unwrap_or_default(),
    );
    put(&mut annotations, "findings", &findings.join("; "));
    let sequential: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.sequential.as_deref())
        .collect();
    put(&mut annotations, "sequential", &sequential.join("; "));
    put(&mut annotations, "run_url", &newest.dashboard_url);
    put(&mut annotations, "api_url", &newest.api_url);
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rec.created_at,
        "endsAt": ends_at,
        "generatorURL": newest.dashboard_url,
    })
}

/// What sets one model's alert apart: its model, watcher and baseline.
type LabelKey<'a> = (&'a str, Option<&'a str>, &'a str);

/// Sets `key` unless `value` is empty (Alertmanager reads an empty label as
/// an absent one).
fn put(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.into(), Value::String(value.into()));
    }
}

#[cfg(test)]
mod tests;
