//! The dashboard: a page shell at `/` (no token needed: it asks for one and
//! keeps it in the tab's session storage), a small script and a stylesheet
//! embedded in the binary, and HTML fragments under `/ui/*` (token needed)
//! with the charts drawn as inline SVG on the server. No build step, nothing
//! loaded from elsewhere.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::models::timeline_points;
use super::{blocking, ApiError, Shared};

mod charts;

pub use charts::{heatmap_svg, timeline_svg};

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// Routes without the token: the shell and its assets.
pub fn pages() -> Router<Shared> {
    Router::new()
        .route("/", get(shell))
        .route("/dashboard/auth", get(auth_required))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
}

/// Fragments (the token is checked by the caller's layer).
pub fn fragments() -> Router<Shared> {
    Router::new()
        .route("/overview", get(overview))
        .route("/runs/{id}", get(run_page))
        .route("/alerts", get(alerts_page))
}

/// Whether the page must ask for a token before fetching anything (what a
/// 401 from any route would tell as well).
async fn auth_required(State(api): State<Shared>) -> Response {
    axum::Json(serde_json::json!({"token_required": api.token.is_some()})).into_response()
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn shell() -> Response {
    let page = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>safedrift</title>
<link rel="stylesheet" href="/assets/app.css">
<link rel="icon" href="data:,">
</head><body>
<header><h1>safe<span>drift</span></h1>
<nav><a href="#/" data-nav="models">Models</a><a href="#/alerts" data-nav="alerts">Alerts</a></nav>
<button id="forget" type="button" title="Forget the API token in this tab">Forget token</button></header>
<form id="token-form" hidden><h2>API token</h2>
<p class="sub">This daemon needs its API token. It is kept in this tab only (session storage).</p>
<p id="token-message" class="error"></p>
<input id="token" type="password" autocomplete="off" placeholder="Bearer token">
<button type="submit">Open the dashboard</button></form>
<main id="main" aria-live="polite"><p class="empty">Loading...</p></main>
<script src="/assets/app.js"></script>
</body></html>"##;
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(page),
    )
        .into_response()
}

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.1}%", v * 100.0))
}

fn signed_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:+.1}", v * 100.0))
}

fn fragment(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn overview(State(api): State<Shared>) -> Result<Response, ApiError> {
    blocking(move || {
        let models = api.store.models()?;
        let mut s = String::new();
        if models.is_empty() {
            s.push_str(r#"<p class="empty">No runs yet. Checkpoints the watchers find, and evaluations queued with <code>POST /api/v1/evaluations</code>, appear here.</p>"#);
        }
        // Models compared with a baseline get charts; the others (baselines
        // themselves, one-off evaluations) a line each at the end.
        let mut others = Vec::new();
        for m in models.iter().take(100) {
            let points = timeline_points(&api, &m.spec, 30)?;
            if !points.iter().any(|p| p.baseline_rate.is_some()) {
                others.push((m, points.last().cloned()));
                continue;
            }
            let drifted = points.iter().filter(|p| p.drift_detected == Some(true)).count();
            let _ = write!(
                s,
                r#"<section class="model" data-model="{}"><h2>{}</h2><div class="sub">{} runs · {} completed shown · {}</div>"#,
                esc(&m.spec),
                esc(&m.spec),
                m.runs,
                points.len(),
                if drifted > 0 {
                    format!(r#"<span class="badge bad">{drifted} drifted</span>"#)
                } else {
                    r#"<span class="badge good">no drift</span>"#.to_string()
                }
            );
            if points.is_empty() {
                s.push_str(r#"<p class="empty">No completed runs yet.</p>"#);
            } else {
                s.push_str(r#"<div class="charts"><div><h3>Harmfulness rate by checkpoint</h3>"#);
                s.push_str(&timeline_svg(&points));
                s.push_str(r#"<div class="legend"><i class="l-rate"></i>rate, 95% band<i class="l-base"></i>baseline<i class="l-drift"></i>drift</div></div><div><h3>Change vs baseline by category (points)</h3>"#);
                s.push_str(&heatmap_svg(&points));
                s.push_str("</div></div>");
                s.push_str(r#"<h3>Checkpoints</h3><table><tr><th>checkpoint</th><th>started</th><th class="num">rate</th><th class="num">baseline</th><th>drift</th></tr>"#);
                for p in points.iter().rev().take(8) {
                    let _ = write!(
                        s,
                        r##"<tr><td><a class="run-link" href="#/runs/{}">{}</a></td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"##,
                        esc(&p.run_id),
                        esc(p.revision.as_deref().unwrap_or(&p.run_id)),
                        esc(&p.started_at),
                        pct(p.harmfulness_rate),
                        pct(p.baseline_rate),
                        match p.drift_detected {
                            Some(true) => r#"<span class="badge bad">drift</span>"#,
                            Some(false) => r#"<span class="badge good">ok</span>"#,
                            None => r#"<span class="badge">no baseline</span>"#,
                        }
                    );
                }
                s.push_str("</table>");
            }
            s.push_str("</section>");
        }
        if !others.is_empty() {
            s.push_str(r#"<section class="panel"><h2>Models without a baseline</h2><table class="other-models"><tr><th>model</th><th class="num">runs</th><th>latest run</th><th class="num">rate</th><th class="num">95% interval</th></tr>"#);
            for (m, last) in &others {
                let _ = write!(
                    s,
                    r##"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td></tr>"##,
                    esc(&m.spec),
                    m.runs,
                    m.latest.as_ref().map_or(String::new(), |r| format!(
                        r##"<a class="run-link" href="#/runs/{0}">{0}</a>"##,
                        esc(&r.id)
                    )),
                    pct(last.as_ref().and_then(|p| p.harmfulness_rate)),
                    last.as_ref()
                        .and_then(|p| p.harmfulness_rate_ci95)
                        .map_or("–".into(), |c| format!("{}–{}", pct(Some(c[0])), pct(Some(c[1]))))
                );
            }
            s.push_str("</table></section>");
        }
        Ok(fragment(s))
    })
    .await
}

fn kpi(s: &mut String, label: &str, value: String) {
    let _ = write!(
        s,
        r#"<div class="kpi"><b>{}</b><span>{}</span></div>"#,
        esc(&value),
        esc(label)
    );
}

async fn run_page(State(api): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || {
        let doc = super::runs::run_document(&api, &id)?;
        let mut s = String::new();
        run_summary(&mut s, &doc, &id);
        category_table(&mut s, &doc);
        fired_findings(&mut s, &doc);
        // The worst prompts: highest scores first; answers blurred.
        let results = api.store.results(&id)?;
        worst_prompts(&mut s, results);
        Ok(fragment(s))
    })
    .await
}

/// The run's model, status, progress, key figures and decision.
fn run_summary(s: &mut String, doc: &serde_json::Value, id: &str) {
    let g = |v: &serde_json::Value| v.as_f64();
    let status = doc["status"].as_str().unwrap_or("");
    let _ = write!(
        s,
        r#"<section class="panel run" data-run="{}"><h2>{} <span class="badge {}">{}</span></h2><div class="sub">run {} · judge {} · started {}{}</div>"#,
        esc(id),
        esc(doc["model"]["spec"].as_str().unwrap_or("")),
        esc(status),
        esc(status),
        esc(id),
        esc(doc["judge"].as_str().unwrap_or("")),
        esc(doc["started_at"].as_str().unwrap_or("")),
        doc["model"]["revision"]
            .as_str()
            .map(|r| format!(" · revision {}", esc(r)))
            .unwrap_or_default()
    );
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
    let m = &doc["metrics"];
    let b = &doc["baseline"]["metrics"];
    s.push_str(r#"<div class="kpis">"#);
    kpi(s, "harmfulness rate", pct(g(&m["harmfulness_rate"])));
    kpi(s, "baseline rate", pct(g(&b["harmfulness_rate"])));
    kpi(
        s,
        "harmfulness score",
        g(&m["harmfulness_score"]).map_or("–".into(), |v| format!("{v:.2}")),
    );
    kpi(s, "refusal rate", pct(g(&m["refusal_rate"])));
    kpi(s, "prompts", format!("{}", m["n"].as_u64().unwrap_or(0)));
    s.push_str("</div>");
    match doc["drift"]["detected"].as_bool() {
        Some(true) => s.push_str(r#"<p><span class="badge bad">drift detected</span></p>"#),
        Some(false) => s.push_str(r#"<p><span class="badge good">no drift</span></p>"#),
        None => {}
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
    s.push_str(r##"</table><p><a href="#/">← all models</a></p></section>"##);
}

async fn alerts_page(State(api): State<Shared>) -> Result<Response, ApiError> {
    blocking(move || {
        let alerts = crate::alerts::record::list(&api.store, 200, None)?;
        let mut s = String::from(r#"<section class="panel"><h2>Alert log</h2>"#);
        if alerts.is_empty() {
            s.push_str(r#"<p class="empty">No alerts.</p>"#);
        } else {
            s.push_str(r#"<table class="alerts"><tr><th>created</th><th>kind</th><th>severity</th><th>summary</th><th>runs</th><th>deliveries</th></tr>"#);
            for a in &alerts {
                let kind = serde_json::to_value(a.kind).unwrap_or_default();
                let runs: Vec<String> = a
                    .run_ids
                    .iter()
                    .map(|r| format!(r##"<a href="#/runs/{0}">{0}</a>"##, esc(r)))
                    .collect();
                let deliveries: Vec<String> = a
                    .deliveries
                    .iter()
                    .map(|(target, d)| {
                        let status = serde_json::to_value(d.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        format!(
                            r#"<span class="badge {0}" title="{1} attempts{2}">{3}: {0}</span> "#,
                            esc(&status),
                            d.attempts,
                            d.last_error
                                .as_deref()
                                .map(|e| format!(", last error: {}", esc(e)))
                                .unwrap_or_default(),
                            esc(target)
                        )
                    })
                    .collect();
                let _ = write!(
                    s,
                    r#"<tr><td>{}</td><td>{}</td><td><span class="badge {}">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(&a.created_at),
                    esc(kind.as_str().unwrap_or("")),
                    if a.severity == "critical" { "bad" } else { "warn" },
                    esc(&a.severity),
                    esc(&a.summary),
                    runs.join(" "),
                    deliveries.join("")
                );
            }
            s.push_str("</table>");
        }
        s.push_str("</section>");
        Ok(fragment(s))
    })
    .await
}
