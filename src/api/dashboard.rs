//! The dashboard: a page shell (no token needed: it asks for one and keeps
//! it in the tab's session storage) at every page's address, `/`,
//! `/runs/{id}` (the link in every alert) and `/alerts`, a small script and
//! a stylesheet embedded in the binary, and HTML fragments under `/ui/*`
//! (token needed) with the charts drawn as inline SVG on the server. No
//! build step, nothing loaded from elsewhere.
//!
//! The overview is organised by lineage (a watcher and the baseline its
//! checkpoints are compared with, what alerts group by): per lineage, its
//! checkpoints in order on one chart against the baseline, the alert that
//! fired, a category x checkpoint heatmap and the baseline as the
//! reference. Runs outside every lineage (`safedrift eval`, evaluations
//! queued through the API) are listed apart.

use std::fmt::Write as _;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{blocking, ApiError, Shared};

mod attacks;
mod charts;
mod overview;
mod refusal_depth;
mod run;

pub use charts::{checkpoint_labels, heatmap_svg, timeline_svg};

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// Routes without the token: the shell at every page's address, and its
/// assets.
pub fn pages() -> Router<Shared> {
    Router::new()
        .route("/", get(shell))
        .route("/runs/{id}", get(shell))
        .route("/alerts", get(shell))
        .route("/dashboard/auth", get(auth_required))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        // No icon: a browser showing an API answer (JSON) asks for one on
        // its own, and a 404 there would be an error in its console.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
}

/// Fragments (the token is checked by the caller's layer).
pub fn fragments() -> Router<Shared> {
    Router::new()
        .route("/overview", get(overview::overview))
        .route("/runs/{id}", get(run::run_page))
        .route("/alerts", get(alerts_page))
}

/// Whether the page must ask for a token before fetching anything (what a
/// 401 from any route would tell as well).
async fn auth_required(State(api): State<Shared>) -> Response {
    axum::Json(serde_json::json!({"token_required": api.token.is_some()})).into_response()
}

/// Wraps `/api/v1`: a browser opening an API link (an alert's JSON link)
/// without the token, which it cannot send on a navigation, gets the page
/// shell, which asks for the token and shows the JSON fetched with it.
/// Programs (no navigation headers) and requests carrying a token get the
/// API as always: a missing or wrong token is a bare 401. The shell holds
/// no data, so it tells a stranger nothing, not even which routes exist.
pub async fn api_in_browser(State(api): State<Shared>, request: Request, next: Next) -> Response {
    if api.token.is_some()
        && request.method() == Method::GET
        && !request.headers().contains_key(header::AUTHORIZATION)
        && is_navigation(request.headers())
    {
        return shell().await;
    }
    next.run(request).await
}

/// A browser loading a page (not a script's fetch): `Sec-Fetch-Dest:
/// document`, or, from browsers that do not send it, an `Accept` that asks
/// for HTML.
fn is_navigation(headers: &axum::http::HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match get("sec-fetch-dest") {
        Some(dest) => dest == "document",
        None => get("accept").is_some_and(|a| a.contains("text/html")),
    }
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
<header><h1><a href="/" data-route>safe<span>drift</span></a></h1>
<nav><a href="/" data-route data-nav="models">Lineages</a><a href="/alerts" data-route data-nav="alerts">Alerts</a></nav>
<button id="forget" type="button" title="Forget the API token in this tab" hidden>Forget token</button></header>
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

/// `11.2–28.2%`, or a dash.
fn interval(ci: Option<[f64; 2]>) -> String {
    ci.map_or_else(
        || "–".into(),
        |[l, h]| format!("{:.1}–{:.1}%", l * 100.0, h * 100.0),
    )
}

/// `2026-12-04 21:18` from an RFC 3339 time.
fn when(t: &str) -> String {
    match (t.get(..10), t.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm}"),
        _ => t.to_string(),
    }
}

/// The id of a lineage's section (the anchor the run page links to).
pub fn lineage_anchor(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("lineage-{slug}")
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

fn drift_badge(d: Option<bool>) -> &'static str {
    match d {
        Some(true) => r#"<span class="badge bad">drift</span>"#,
        Some(false) => r#"<span class="badge good">ok</span>"#,
        None => r#"<span class="badge">no baseline</span>"#,
    }
}

fn severity_class(severity: &str, kind: &str) -> &'static str {
    match (kind, severity) {
        ("resolved", _) => "good",
        (_, "critical") => "bad",
        (_, "warning") => "warn",
        _ => "info",
    }
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
                    .map(|r| format!(r#"<a href="/runs/{0}" data-route>{0}</a>"#, esc(r)))
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
                    r#"<tr id="{}"><td>{}</td><td>{}</td><td><span class="badge {}">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(&a.id),
                    esc(&format!("{} UTC", when(&a.created_at))),
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
