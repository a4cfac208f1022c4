//! The refusal-depth (`kl`) probe on a run's page: the mean
//! KL(baseline || candidate) at each answer position of the baseline's
//! refusals, drawn as inline SVG with the early window shaded, its mean
//! against the `kl_early` threshold in text; or why the probe was skipped.

use std::fmt::Write as _;

use super::esc;

/// The chart's size and margins, in the page's pixels.
const W: f64 = 560.0;
const H: f64 = 200.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;

/// The section, when the run's document carries the probe (`kl`).
pub(super) fn section(s: &mut String, doc: &serde_json::Value) {
    let kl = &doc["probes"]["kl"];
    if !kl.is_object() {
        return;
    }
    s.push_str(r#"<h3>Refusal depth (KL)</h3>"#);
    if let Some(why) = kl["skipped"].as_str() {
        let _ = write!(s, r#"<p class="sub kl-skipped">skipped: {}</p>"#, esc(why));
        return;
    }
    let curve: Vec<f64> = kl["curve"]
        .as_array()
        .map(|c| c.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let tokens = kl["tokens"].as_u64().unwrap_or(curve.len() as u64) as usize;
    let early = kl["early_tokens"].as_u64().unwrap_or(0) as usize;
    let mean = kl["early_mean"].as_f64();
    let finding = doc["drift"]["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["metric"] == "kl_early"));
    let threshold = finding.and_then(|f| f["threshold"].as_f64());
    let verdict = match finding.map(|f| f["fired"] == true) {
        Some(true) => r#" <span class="badge bad">kl_early fired</span>"#,
        Some(false) => r#" <span class="badge good">below the threshold</span>"#,
        None => "",
    };
    let _ = write!(
        s,
        r#"<p class="sub kl-summary">KL(baseline ‖ candidate) along the baseline's answers to the {prompts} harmful prompts it refused (run <a href="/runs/{run}" data-route>{run}</a>): early mean <b>{mean}</b> over the first {early} answer tokens{threshold}{verdict}</p>"#,
        prompts = kl["prompts"].as_u64().unwrap_or(0),
        run = esc(kl["baseline_run"].as_str().unwrap_or("")),
        mean = mean.map_or("–".into(), |m| format!("{m:.3} nats")),
        threshold = threshold.map_or(String::new(), |t| format!(", threshold {t:.3} nats")),
    );
    if curve.is_empty() {
        return;
    }
    s.push_str(&svg(
        &curve,
        tokens.max(curve.len()),
        early,
        mean,
        threshold,
    ));
    let _ = write!(
        s,
        r#"<div class="legend"><i class="l-rate"></i>mean KL per position<i class="l-early"></i>the first {early} tokens<i class="l-early-mean"></i>their mean{}</div>"#,
        if threshold.is_some() {
            r#"<i class="l-threshold"></i>threshold"#
        } else {
            ""
        }
    );
}

/// A round top for the y axis and the step of its grid lines.
fn y_scale(top: f64) -> (f64, f64) {
    if !(top.is_finite() && top > 0.0) {
        return (1.0, 0.25);
    }
    let raw = top / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((top / step).ceil() * step, step)
}

/// The chart: positions 1..`tokens` across, nats up; the first `early`
/// positions shaded, with the early mean and the threshold drawn over them.
fn svg(
    curve: &[f64],
    tokens: usize,
    early: usize,
    mean: Option<f64>,
    threshold: Option<f64>,
) -> String {
    let highest = curve
        .iter()
        .chain(mean.iter())
        .chain(threshold.iter())
        .fold(0.0f64, |a, &b| if b.is_finite() { a.max(b) } else { a });
    let (ymax, ystep) = y_scale(highest * 1.05);
    let step = (W - LEFT - RIGHT) / tokens.max(1) as f64;
    let x = |position: usize| LEFT + (position as f64 - 0.5) * step;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v / ymax).clamp(0.0, 1.0));
    let bottom = H - BOTTOM;
    let mut s = format!(
        r#"<svg class="kl" viewBox="0 0 {W} {H}" role="img" aria-label="KL(baseline ‖ candidate) in nats at each answer position">"#
    );
    let early = early.min(tokens);
    if early > 0 {
        let _ = write!(
            s,
            r#"<rect class="early" x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}"><title>the first {early} answer tokens</title></rect>"#,
            early as f64 * step,
            bottom - TOP
        );
    }
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            trim_number(v),
            y = y(v)
        );
        v += ystep;
    }
    let window = |class: &str, value: f64, what: &str| {
        format!(
            r#"<line class="{class}" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"><title>{what} {value:.3} nats</title></line>"#,
            LEFT + early.max(1) as f64 * step,
            y = y(value)
        )
    };
    if let Some(t) = threshold {
        s.push_str(&window("threshold", t, "threshold"));
    }
    if let Some(m) = mean {
        s.push_str(&window("early-mean", m, "early mean"));
    }
    let points: Vec<String> = (curve.iter().enumerate())
        .map(|(i, v)| format!("{:.1},{:.1}", x(i + 1), y(*v)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline class="kl-curve" points="{}"/>"#,
        points.join(" ")
    );
    for (i, v) in curve.iter().enumerate() {
        let _ = write!(
            s,
            r#"<circle class="kl-pt" cx="{:.1}" cy="{:.1}" r="3"><title>position {}: {v:.3} nats</title></circle>"#,
            x(i + 1),
            y(*v),
            i + 1
        );
    }
    x_axis(&mut s, tokens, &x);
    let _ = write!(
        s,
        r#"<text class="axis-title" x="12" y="{:.1}" transform="rotate(-90 12 {0:.1})" text-anchor="middle">nats</text></svg>"#,
        TOP + (bottom - TOP) / 2.0
    );
    s
}

/// Position labels (every one up to 16 positions, else about 16 of them,
/// the first and the last always) and the axis title.
fn x_axis(s: &mut String, tokens: usize, x: &dyn Fn(usize) -> f64) {
    let every = tokens.div_ceil(16).max(1);
    for p in 1..=tokens {
        if p == 1 || p == tokens || (p % every == 0 && tokens - p >= every / 2) {
            let _ = write!(
                s,
                r#"<text class="x-tick" x="{:.1}" y="{:.1}" text-anchor="middle">{p}</text>"#,
                x(p),
                H - BOTTOM + 14.0
            );
        }
    }
    let _ = write!(
        s,
        r#"<text class="axis-title" x="{:.1}" y="{:.1}" text-anchor="middle">answer position</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 6.0
    );
}

/// `0.25`, `2`, `7.5`: a grid value without trailing zeros.
fn trim_number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
