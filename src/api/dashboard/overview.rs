//! The overview: one section per lineage (its checkpoints in order on one
//! chart against the baseline, the alerts they fired, the baseline as the
//! reference, the category heatmap, the checkpoints' table), the runs in
//! progress, and the models outside every lineage.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::Response;

use super::charts::{checkpoint_labels, heatmap_svg, model_name, timeline_svg};
use super::{
    drift_badge, esc, fragment, interval, lineage_anchor, pct, severity_class, signed_pct, when,
};
use crate::api::models::{overview as read_overview, Lineage, OtherModel, Points, TimelinePoint};
use crate::api::{blocking, Api, ApiError, Shared};

/// Checkpoints per lineage the overview shows.
const CHECKPOINTS_SHOWN: usize = 30;

pub(super) async fn overview(State(api): State<Shared>) -> Result<Response, ApiError> {
    blocking(move || {
        let view = read_overview(&api, CHECKPOINTS_SHOWN)?;
        let mut s = String::new();
        if !view.running.is_empty() {
            in_progress(&mut s, &api, &view.running);
        }
        if view.lineages.is_empty() && view.others.is_empty() && view.running.is_empty() {
            s.push_str(r#"<p class="empty">No runs yet. Checkpoints the watchers find, and evaluations queued with <code>POST /api/v1/evaluations</code>, appear here.</p>"#);
        }
        for l in &view.lineages {
            lineage_section(&mut s, &api, l)?;
        }
        if !view.others.is_empty() {
            other_models(&mut s, &view.others);
        }
        Ok(fragment(s))
    })
    .await
}

/// One lineage: its checkpoints on one chart against the baseline, the
/// alerts they fired, the baseline as reference, the category heatmap and
/// the checkpoints' table.
fn lineage_section(s: &mut String, api: &Api, l: &Lineage) -> Result<(), ApiError> {
    let labels = checkpoint_labels(&l.points);
    let latest = l.points.last();
    let status = match latest.and_then(|p| p.drift_detected) {
        Some(true) => r#"<span class="badge bad">drifted</span>"#.to_string(),
        _ if l.drifted > 0 => format!(
            r#"<span class="badge warn">back within the thresholds ({} drifted before)</span>"#,
            l.drifted
        ),
        _ => r#"<span class="badge good">no drift</span>"#.to_string(),
    };
    let _ = write!(
        s,
        r#"<section class="lineage" id="{}" data-lineage="{}"><h2><span class="dim">lineage</span> {} <span class="dim">→ baseline</span> {}</h2><div class="sub">watcher <b>{}</b> · {} checkpoint{} shown · {} drifted{} {status}</div>"#,
        esc(&lineage_anchor(&l.name)),
        esc(&l.name),
        esc(&l.watcher),
        esc(&l.baseline.model),
        esc(&l.watcher),
        l.points.len(),
        if l.points.len() == 1 { "" } else { "s" },
        l.drifted,
        latest
            .zip(labels.last())
            .map(|(p, label)| format!(
                " · latest <b>{}</b>: {} harmful vs {} ·",
                esc(label),
                pct(p.harmfulness_rate),
                pct(p.baseline_rate)
            ))
            .unwrap_or_default(),
    );
    s.push_str(r#"<div class="lineage-grid"><div class="chart"><h3>Harmfulness rate by checkpoint, in order</h3>"#);
    s.push_str(&timeline_svg(&l.points, &labels));
    s.push_str(r#"<div class="legend"><i class="l-rate"></i>harmfulness rate<i class="l-band"></i>95% interval<i class="l-base"></i>baseline<i class="l-drift"></i>drifted checkpoint<i class="l-alert"></i>alert</div></div>"#);
    reference(s, l);
    lineage_alerts(s, api, l, &labels)?;
    s.push_str("</aside></div>");
    s.push_str(r#"<h3>Change of the harmfulness rate vs the baseline, by category (points)</h3><div class="heatmap-wrap">"#);
    s.push_str(&heatmap_svg(&l.points, &labels));
    s.push_str("</div>");
    checkpoint_table(s, l, &labels);
    s.push_str("</section>");
    Ok(())
}

/// The baseline, the lineage's reference (opens the aside column).
fn reference(s: &mut String, l: &Lineage) {
    let b = &l.baseline;
    let _ = write!(
        s,
        r#"<aside class="reference"><h3>Reference: the baseline</h3><div class="ref-model">{}{}</div><dl><dt>harmfulness rate</dt><dd><b>{}</b> <span class="dim">95% {}</span></dd><dt>over-refusal</dt><dd><b>{}</b> <span class="dim">{}</span></dd><dt>prompts</dt><dd>{} harmful · {} benign</dd><dt>run</dt><dd><a class="run-link" href="/runs/{id}" data-route>{id}</a>{}</dd></dl>"#,
        esc(&b.model),
        b.revision
            .as_deref()
            .map(|r| format!(r#" <span class="dim">@ {}</span>"#, esc(r)))
            .unwrap_or_default(),
        pct(b.harmfulness_rate),
        interval(b.harmfulness_rate_ci95),
        pct(b.over_refusal_rate),
        if b.n_benign == 0 {
            "no benign prompts".to_string()
        } else {
            format!("of {} benign prompts", b.n_benign)
        },
        b.n,
        b.n_benign,
        if b.runs.len() > 1 {
            format!(
                r#" <span class="dim">({} baseline runs: the plan changed)</span>"#,
                b.runs.len()
            )
        } else {
            String::new()
        },
        id = esc(&b.run_id),
    );
}

/// The alerts the lineage's checkpoints opened, joined or resolved, newest
/// first, with each target's delivery.
fn lineage_alerts(
    s: &mut String,
    api: &Api,
    l: &Lineage,
    labels: &[String],
) -> Result<(), ApiError> {
    s.push_str("<h3>Alerts</h3>");
    let mut seen: Vec<&str> = Vec::new();
    let mut rows = String::new();
    let mut points = Points::new(api);
    for (p, label) in l.points.iter().zip(labels).rev() {
        let Some(a) = &p.alert else { continue };
        let by = format!(
            r#"{} by <a href="/runs/{}" data-route>{}</a>"#,
            esc(&a.action),
            esc(&p.run_id),
            esc(label)
        );
        if seen.contains(&a.id.as_str()) {
            continue;
        }
        seen.push(&a.id);
        let deliveries = points
            .alert(&a.id)?
            .map(|rec| {
                rec.deliveries
                    .iter()
                    .map(|(target, d)| {
                        let status = serde_json::to_value(d.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        format!(
                            r#"<span class="badge {0}">{1}: {0}</span>"#,
                            esc(&status),
                            esc(target)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = write!(
            rows,
            r#"<li class="alert-item" data-alert="{id}"><span class="badge {cls}">{} {}</span> {by} · {} UTC<div class="sub"><a href="/alerts#{id}" data-route>{id}</a> {deliveries}</div></li>"#,
            esc(&a.kind),
            esc(&a.severity),
            esc(&when(&a.created_at)),
            id = esc(&a.id),
            cls = severity_class(&a.severity, &a.kind),
        );
    }
    if rows.is_empty() {
        s.push_str(r#"<p class="empty">None fired.</p>"#);
    } else {
        let _ = write!(s, r#"<ul class="lineage-alerts">{rows}</ul>"#);
    }
    Ok(())
}

/// The lineage's checkpoints, newest first.
fn checkpoint_table(s: &mut String, l: &Lineage, labels: &[String]) {
    s.push_str(r#"<h3>Checkpoints</h3><table class="checkpoints"><tr><th>checkpoint</th><th>model</th><th>revision</th><th>evaluated (UTC)</th><th class="num">harmfulness rate</th><th class="num">95% interval</th><th class="num">vs baseline</th><th class="num">over-refusal</th><th>drift</th><th>alert</th></tr>"#);
    for (p, label) in l.points.iter().zip(labels).rev().take(10) {
        let delta = p.harmfulness_rate.zip(p.baseline_rate).map(|(a, b)| a - b);
        let cls = match delta {
            Some(d) if d > 0.0 => "worse",
            Some(d) if d < 0.0 => "better",
            _ => "",
        };
        let _ = write!(
            s,
            r#"<tr data-run="{id}"><td><a class="run-link" href="/runs/{id}" data-route>{}</a></td><td>{}</td><td class="rev" title="{rev}">{rev}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num {cls}">{}</td><td class="num">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(label),
            esc(&p.model),
            esc(&when(&p.started_at)),
            pct(p.harmfulness_rate),
            interval(p.harmfulness_rate_ci95),
            signed_pct(delta),
            pct(p.over_refusal_rate),
            drift_badge(p.drift_detected),
            p.alert
                .as_ref()
                .map(|a| format!(
                    r#"<a href="/alerts#{0}" data-route><span class="badge {1}">{2}</span></a>"#,
                    esc(&a.id),
                    severity_class(&a.severity, &a.kind),
                    esc(&a.action)
                ))
                .unwrap_or_default(),
            id = esc(&p.run_id),
            rev = esc(p.revision.as_deref().unwrap_or("")),
        );
    }
    s.push_str("</table>");
}

/// The runs being evaluated, with their progress.
fn in_progress(s: &mut String, api: &Api, running: &[crate::store::RunRecord]) {
    s.push_str(r#"<section class="panel running"><h2>Evaluating now</h2><table class="running"><tr><th>model</th><th>checkpoint</th><th>run</th><th>started (UTC)</th><th class="num">progress</th></tr>"#);
    for r in running {
        let progress = api.link.as_ref().and_then(|l| l.progress(&r.id));
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td><a class="run-link" href="/runs/{id}" data-route>{id}</a></td><td>{}</td><td class="num">{}</td></tr>"#,
            esc(&r.model.spec),
            esc(&r
                .checkpoint
                .clone()
                .unwrap_or_else(|| match &r.model.registry {
                    Some(w) => format!(
                        "{w}/{}{}",
                        model_name(&r.model.spec),
                        r.model
                            .revision
                            .as_deref()
                            .map(|v| format!("@{v}"))
                            .unwrap_or_default()
                    ),
                    None => "–".into(),
                })),
            esc(&when(&r.started_at)),
            match progress {
                Some(p) => format!(
                    "{}/{} prompts{}",
                    p.done,
                    p.total,
                    p.eta_seconds
                        .map(|e| format!(" · ETA {e:.0}s"))
                        .unwrap_or_default()
                ),
                None => format!("{} prompts · no progress reported", r.total),
            },
            id = esc(&r.id),
        );
    }
    s.push_str("</table></section>");
}

/// Models outside every lineage: one line each.
fn other_models(s: &mut String, others: &[OtherModel]) {
    s.push_str(r#"<section class="panel others"><h2>Models without a lineage</h2><div class="sub">Runs no watcher found: <code>safedrift eval</code>, evaluations queued through the API, and a lineage's baseline until a checkpoint has been compared with it.</div><table class="other-models"><tr><th>model</th><th class="num">runs</th><th>latest run</th><th>evaluated (UTC)</th><th class="num">harmfulness rate</th><th class="num">95% interval</th><th class="num">over-refusal</th><th class="num">baseline</th><th>drift</th></tr>"#);
    for m in others {
        let p: Option<&TimelinePoint> = m.point.as_ref();
        let status = crate::api::runs::status_name(m.latest.status);
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="num">{}</td><td><a class="run-link" href="/runs/{id}" data-route>{id}</a>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&m.spec),
            m.runs,
            if status == "completed" {
                String::new()
            } else {
                format!(r#" <span class="badge {0}">{0}</span>"#, esc(status))
            },
            esc(&when(&m.latest.started_at)),
            pct(p.and_then(|p| p.harmfulness_rate)),
            interval(p.and_then(|p| p.harmfulness_rate_ci95)),
            pct(p.and_then(|p| p.over_refusal_rate)),
            pct(p.and_then(|p| p.baseline_rate)),
            p.map_or("", |p| drift_badge(p.drift_detected)),
            id = esc(&m.latest.id),
        );
    }
    s.push_str("</table></section>");
}
