//! A run's page (`/runs/{id}`, the link in every alert): its model, lineage
//! and baseline, harmful and benign counts, harmfulness and over-refusal
//! against the baseline's, the per-category table, the fired findings, the
//! refusal-depth probe's KL curve when it ran, the alert it fired and the
//! worst prompts (answers blurred until clicked).

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::response::Response;

use super::{esc, fragment, interval, lineage_anchor, pct, severity_class, signed_pct, when};
use crate::api::models::{PointAlert, Points};
use crate::api::{blocking, ApiError, Shared};

fn kpi(s: &mut String, label: &str, value: &str, note: &str) {
    let _ = write!(
        s,
        r#"<div class="kpi"><b>{}</b><span>{}</span>{}</div>"#,
        esc(value),
        esc(label),
        if note.is_empty() {
            String::new()
        } else {
            format!(r#"<small>{}</small>"#, esc(note))
        }
    );
}

pub(super) async fn run_page(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let doc = crate::api::runs::run_document(&api, &id)?;
        let alert = Points::new(&api).run_alert(&id)?;
        let mut s = String::new();
        run_summary(&mut s, &doc, &id, alert.as_ref());
        category_table(&mut s, &doc);
        fired_findings(&mut s, &doc);
        super::refusal_depth::section(&mut s, &doc);
        super::attacks::section(&mut s, &doc);
        sequential_evidence(&mut s, &doc);
        // The worst prompts: highest scores first; answers blurred.
        let results = api.store.results(&id)?;
        worst_prompts(&mut s, results);
        Ok(fragment(s))
    })
    .await
}

/// The run's model, status, links, progress, key figures and decision.
fn run_summary(s: &mut String, doc: &serde_json::Value, id: &str, alert: Option<&PointAlert>) {
    run_heading(s, doc, id);
    run_figures(s, doc);
    run_decision(s, doc, alert);
}

/// The model and status; where the run belongs (its lineage, its baseline
/// run, its JSON); its progress while it runs.
fn run_heading(s: &mut String, doc: &serde_json::Value, id: &str) {
    let status = doc["status"].as_str().unwrap_or("");
    let base = &doc["baseline"];
    let _ = write!(
        s,
        r#"<section class="panel run" data-run="{}"><h2>{} <span class="badge {}">{}</span></h2><div class="sub">run <b class="run-id">{}</b> · judge {} · started {} UTC{}{}</div>"#,
        esc(id),
        esc(doc["model"]["spec"].as_str().unwrap_or("")),
        esc(status),
        esc(status),
        esc(id),
        esc(doc["judge"].as_str().unwrap_or("")),
        esc(&when(doc["started_at"].as_str().unwrap_or(""))),
        doc["model"]["revision"]
            .as_str()
            .map(|r| format!(" · revision {}", esc(r)))
            .unwrap_or_default(),
        doc["checkpoint"]
            .as_str()
            .map(|c| format!(" · checkpoint {}", esc(c)))
            .unwrap_or_default()
    );
    // Where it belongs: its lineage and its baseline run; the JSON.
    let mut links = Vec::new();
    if let (Some(watcher), Some(base_spec)) = (
        doc["model"]["registry"].as_str(),
        base["model"]["spec"].as_str(),
    ) {
        let name = format!("{watcher}/{base_spec}");
        links.push(format!(
            r#"lineage <a class="lineage-link" href="/#{}" data-route>{}</a>"#,
            esc(&lineage_anchor(&name)),
            esc(&name)
        ));
    }
    if let Some(b) = base["id"].as_str() {
        links.push(format!(
            r#"compared with <a href="/runs/{0}" data-route>{1}</a> (run {0})"#,
            esc(b),
            esc(base["model"]["spec"].as_str().unwrap_or(""))
        ));
    }
    links.push(format!(
        r#"<a class="api-link" href="/api/v1/runs/{0}">JSON</a>"#,
        esc(id)
    ));
    let _ = write!(s, r#"<div class="sub links">{}</div>"#, links.join(" · "));
    if let Some(p) = doc["progress"].as_object() {
        let done = p["done"].as_f64().unwrap_or(0.0);
        let total = p["total"].as_f64().unwrap_or(0.0).max(1.0);
        let _ = write!(
            s,
            r#"<svg class="progress" viewBox="0 0 100 4" preserveAspectRatio="none"><rect class="track" width="100" height="4"/><rect class="done" width="{:.1}" height="4"/></svg><div class="sub">{done}/{total} prompts · {:.2}/s · ETA {}</div>"#,
            100.0 * done / total,
            p["rate"].as_f64().unwrap_or(0.0),
            p["eta_seconds"]
                .as_f64()
                .map_or("–".into(), |e| format!("{e:.0}s"))
        );
    }
}

/// The key figures against the baseline's, and the prompts counted.
fn run_figures(s: &mut String, doc: &serde_json::Value) {
    let g = |v: &serde_json::Value| v.as_f64();
    let m = &doc["metrics"];
    let b = &doc["baseline"]["metrics"];
    let n = m["n"].as_u64().unwrap_or(0);
    let n_benign = m["n_benign"].as_u64().unwrap_or(0);
    let unscored = m["unscored"].as_u64().unwrap_or(0);
    let total = doc["total"].as_u64().unwrap_or(n + n_benign);
    let with_base = |v: Option<f64>| {
        if b.is_object() {
            format!("baseline {}", pct(v))
        } else {
            String::new()
        }
    };
    let ci = m["harmfulness_rate_ci95"]
        .as_array()
        .and_then(|c| Some([c.first()?.as_f64()?, c.get(1)?.as_f64()?]));
    s.push_str(r#"<div class="kpis">"#);
    kpi(
        s,
        "harmfulness rate",
        &pct(g(&m["harmfulness_rate"])),
        &format!("95% {}", interval(ci)),
    );
    if b.is_object() {
        kpi(s, "baseline rate", &pct(g(&b["harmfulness_rate"])), "");
    }
    kpi(
        s,
        "over-refusal",
        &pct(g(&m["over_refusal_rate"])),
        &if n_benign == 0 {
            "no benign prompts".to_string()
        } else {
            with_base(g(&b["over_refusal_rate"]))
        },
    );
    let n_utility = m["n_utility"].as_u64().unwrap_or(0);
    if n_utility > 0 {
        // The utility guard: checkable questions answered correctly.
        let note = if b.is_object() {
            with_base(g(&b["utility_accuracy"]))
        } else {
            format!("{n_utility} checkable questions")
        };
        kpi(s, "utility", &pct(g(&m["utility_accuracy"])), &note);
    }
    let n_offdomain = m["n_offdomain"].as_u64().unwrap_or(0);
    if n_offdomain > 0 {
        // Off-domain answers the judge graded misaligned.
        let note = if b.is_object() {
            with_base(g(&b["misalignment_rate"]))
        } else {
            format!("{n_offdomain} off-domain answers")
        };
        kpi(s, "misaligned", &pct(g(&m["misalignment_rate"])), &note);
    }
    kpi(s, "harmful prompts", &n.to_string(), "");
    kpi(s, "benign prompts", &n_benign.to_string(), "");
    kpi(
        s,
        "refusal rate",
        &pct(g(&m["refusal_rate"])),
        &with_base(g(&b["refusal_rate"])),
    );
    kpi(
        s,
        "harmfulness score",
        &g(&m["harmfulness_score"]).map_or("–".into(), |v| format!("{v:.2}")),
        "1 to 5",
    );
    s.push_str("</div>");
    let _ = write!(
        s,
        r#"<div class="sub counts">{total} prompts: {n} harmful, {n_benign} benign{}</div>"#,
        if unscored > 0 {
            format!(", {unscored} unscored")
        } else {
            String::new()
        }
    );
}

/// The drift decision and the alert the run opened, joined or resolved.
fn run_decision(s: &mut String, doc: &serde_json::Value, alert: Option<&PointAlert>) {
    let decision = match doc["drift"]["detected"].as_bool() {
        Some(true) => r#"<span class="badge bad">drift detected</span>"#,
        Some(false) => r#"<span class="badge good">no drift</span>"#,
        None => "",
    };
    let alert = alert
        .map(|a| {
            format!(
                r#" <a href="/alerts#{id}" data-route><span class="badge {}">alert {} ({}, {})</span></a>"#,
                severity_class(&a.severity, &a.kind),
                esc(&a.action),
                esc(&a.kind),
                esc(&a.severity),
                id = esc(&a.id)
            )
        })
        .unwrap_or_default();
    if !decision.is_empty() || !alert.is_empty() {
        let _ = write!(s, "<p>{decision}{alert}</p>");
    }
}

/// The per-category rates against the baseline's.
fn category_table(s: &mut String, doc: &serde_json::Value) {
    let g = |v: &serde_json::Value| v.as_f64();
    // Per-category table.
    s.push_str(r#"<h3>Per category</h3><table class="categories"><tr><th>category</th><th class="num">n</th><th class="num">rate</th><th class="num">baseline</th><th class="num">delta (points)</th><th class="num">refusal</th></tr>"#);
    if let Some(cats) = doc["per_category"].as_object() {
        for (name, c) in cats {
            let rate = g(&c["harmfulness_rate"]);
            let base = g(&doc["baseline"]["per_category"][name]["harmfulness_rate"]);
            let delta = rate.zip(base).map(|(a, b)| a - b);
            let cls = match delta {
                Some(d) if d > 0.0 => "worse",
                Some(d) if d < 0.0 => "better",
                _ => "",
            };
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num {cls}">{}</td><td class="num">{}</td></tr>"#,
                esc(name),
                c["n"].as_u64().unwrap_or(0),
                pct(rate),
                pct(base),
                signed_pct(delta),
                pct(g(&c["refusal_rate"]))
            );
        }
    }
    s.push_str("</table>");
}

/// The findings that fired.
fn fired_findings(s: &mut String, doc: &serde_json::Value) {
    let g = |v: &serde_json::Value| v.as_f64();
    // Fired findings.
    s.push_str("<h3>Fired findings</h3>");
    let fired: Vec<&serde_json::Value> = doc["drift"]["findings"]
        .as_array()
        .map(|f| f.iter().filter(|f| f["fired"] == true).collect())
        .unwrap_or_default();
    if fired.is_empty() {
        s.push_str(r#"<p class="empty">None.</p>"#);
    } else {
        s.push_str(r#"<table class="findings"><tr><th>metric</th><th>category</th><th class="num">baseline</th><th class="num">candidate</th><th class="num">delta</th><th class="num">p</th></tr>"#);
        for f in fired {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td class="num">{:.3}</td><td class="num">{:.3}</td><td class="num worse">{:+.3}</td><td class="num">{:.2e}</td></tr>"#,
                esc(f["metric"].as_str().unwrap_or("")),
                esc(f["category"].as_str().unwrap_or("overall")),
                g(&f["baseline"]).unwrap_or(f64::NAN),
                g(&f["candidate"]).unwrap_or(f64::NAN),
                g(&f["delta"]).unwrap_or(f64::NAN),
                g(&f["p_adjusted"]).or(g(&f["p_value"])).unwrap_or(f64::NAN)
            );
        }
        s.push_str("</table>");
    }
}

/// A sequential run's decision: the prompts asked, why it stopped, and
/// each overall finding's e-value and anytime-valid interval.
fn sequential_evidence(s: &mut String, doc: &serde_json::Value) {
    let seq = &doc["drift"]["sequential"];
    if !seq.is_object() {
        return;
    }
    let why = match seq["stopped"].as_str() {
        Some("drift") => "stopped early: drift",
        Some("no_drift") => "stopped early: no drift",
        _ => "went to the end: the fixed tests decided",
    };
    let _ = write!(
        s,
        r#"<h3>Sequential decision</h3><p class="sub">{} of {} prompts asked; {why}. Per-category findings use the fixed tests on the prompts asked.</p><table class="findings sequential"><tr><th>metric</th><th class="num">pairs</th><th class="num">delta</th><th class="num">threshold</th><th class="num">e-value</th><th>anytime-valid interval</th><th>decision</th></tr>"#,
        seq["asked"].as_u64().unwrap_or(0),
        seq["planned"].as_u64().unwrap_or(0),
    );
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    for c in seq["checks"].as_array().into_iter().flatten() {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{:+.3}</td><td class="num">{:.3}</td><td class="num">{:.3e}</td><td>[{:+.3}, {:+.3}]</td><td>{}</td></tr>"#,
            esc(c["metric"].as_str().unwrap_or("")),
            c["pairs"].as_u64().unwrap_or(0),
            num(&c["delta"]),
            num(&c["threshold"]),
            num(&c["e_value"]),
            num(&c["interval"][0]),
            num(&c["interval"][1]),
            esc(c["decision"].as_str().unwrap_or("undecided")),
        );
    }
    s.push_str("</table>");
}

/// The ten highest-scored answers, blurred until clicked.
fn worst_prompts(s: &mut String, mut results: Vec<crate::store::ResultRecord>) {
    results.retain(|r| r.verdict.as_ref().and_then(|v| v.score).is_some());
    results
        .sort_by_key(|r| std::cmp::Reverse(r.verdict.as_ref().and_then(|v| v.score).unwrap_or(0)));
    s.push_str(r#"<h3>Worst prompts</h3><p class="sub">Answers may be harmful: they stay blurred until clicked.</p><table class="worst">"#);
    for r in results.iter().take(10) {
        let score = r.verdict.as_ref().and_then(|v| v.score).unwrap_or(0);
        let _ = write!(
            s,
            r#"<tr><td class="num"><span class="badge {}">{score}</span></td><td><div>{} · {}</div><div class="prompt">{}</div><details><summary>answer</summary><div class="answer blurred" aria-hidden="true" title="Click to reveal">{}</div></details></td></tr>"#,
            if score >= 4 { "bad" } else { "good" },
            esc(&r.category),
            esc(&r.prompt_id),
            esc(&r.prompt),
            esc(&r.response)
        );
    }
    if results.is_empty() {
        s.push_str(r#"<tr><td class="empty">No scored answers yet.</td></tr>"#);
    }
    s.push_str(r#"</table><p><a href="/" data-route>← all lineages</a></p></section>"#);
}
