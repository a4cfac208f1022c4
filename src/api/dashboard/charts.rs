//! The dashboard's charts, drawn as inline SVG.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{esc, pct, signed_pct};
use crate::api::models::TimelinePoint;

fn short_label(p: &TimelinePoint) -> String {
    let label = p
        .revision
        .clone()
        .unwrap_or_else(|| p.started_at.get(..10).unwrap_or("").to_string());
    if label.chars().count() > 10 {
        label.chars().take(9).collect::<String>() + "…"
    } else {
        label
    }
}

/// Harmfulness rate across checkpoints: the 95% band, the rate, the
/// baseline as a dashed line; drifted checkpoints in red.
pub fn timeline_svg(points: &[TimelinePoint]) -> String {
    let f = Frame::of(points);
    let Frame {
        w, h, left, right, ..
    } = f;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" viewBox="0 0 {w} {h}" role="img" aria-label="Harmfulness rate by checkpoint">"#
    );
    for k in 0..=4 {
        let v = f.ymax * k as f64 / 4.0;
        let _ = write!(
            s,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            w - right,
            left - 6.0,
            f.y(v) + 4.0,
            v * 100.0,
            y = f.y(v)
        );
    }
    timeline_band(&mut s, points, &f);
    let line = |get: &dyn Fn(&TimelinePoint) -> Option<f64>| -> String {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| get(p).map(|v| format!("{:.1},{:.1}", f.x(i), f.y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let base = line(&|p| p.baseline_rate);
    if !base.is_empty() {
        let base = if points.len() == 1 {
            let v = points[0].baseline_rate.unwrap_or_default();
            format!("{left},{:.1} {},{:.1}", f.y(v), w - right, f.y(v))
        } else {
            base
        };
        let _ = write!(s, r#"<polyline class="baseline" points="{base}"/>"#);
    }
    let _ = write!(
        s,
        r#"<polyline class="rate" points="{}"/>"#,
        line(&|p| p.harmfulness_rate)
    );
    timeline_points(&mut s, points, &f);
    s.push_str("</svg>");
    s
}

/// The timeline's drawing area and scales.
#[derive(Clone, Copy)]
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    ymax: f64,
    n: usize,
}

impl Frame {
    fn of(points: &[TimelinePoint]) -> Frame {
        let (w, h, left, right, top, bottom) = (640.0, 240.0, 44.0, 34.0, 12.0, 40.0);
        let ymax = points
            .iter()
            .flat_map(|p| {
                [
                    p.harmfulness_rate_ci95.map(|c| c[1]),
                    p.harmfulness_rate,
                    p.baseline_rate,
                ]
            })
            .flatten()
            .fold(0.1f64, f64::max);
        // A multiple of 4% so that the four grid steps are whole percents.
        let ymax = ((ymax * 25.0).ceil() / 25.0).min(1.0);
        Frame {
            w,
            h,
            left,
            right,
            top,
            bottom,
            ymax,
            n: points.len().max(1),
        }
    }

    fn x(&self, i: usize) -> f64 {
        let Frame { w, left, right, .. } = *self;
        if self.n == 1 {
            left + (w - left - right) / 2.0
        } else {
            left + (w - left - right) * i as f64 / (self.n - 1) as f64
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.top + (self.h - self.top - self.bottom) * (1.0 - v / self.ymax)
    }
}

/// The 95% interval of the rate: a band, or a bar for one checkpoint.
fn timeline_band(s: &mut String, points: &[TimelinePoint], f: &Frame) {
    let band: Vec<(usize, [f64; 2])> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.harmfulness_rate_ci95.map(|c| (i, c)))
        .collect();
    if !band.is_empty() {
        let mut poly: Vec<String> = band
            .iter()
            .map(|(i, c)| format!("{:.1},{:.1}", f.x(*i), f.y(c[1])))
            .collect();
        poly.extend(
            band.iter()
                .rev()
                .map(|(i, c)| format!("{:.1},{:.1}", f.x(*i), f.y(c[0]))),
        );
        if band.len() == 1 {
            // One checkpoint: draw its interval as a bar.
            let (i, c) = band[0];
            let _ = write!(
                s,
                r#"<rect class="band" x="{:.1}" y="{:.1}" width="12" height="{:.1}"/>"#,
                f.x(i) - 6.0,
                f.y(c[1]),
                (f.y(c[0]) - f.y(c[1])).max(1.0)
            );
        } else {
            let _ = write!(s, r#"<polygon class="band" points="{}"/>"#, poly.join(" "));
        }
    }
}

/// One linked dot per checkpoint (red when drifted) and its label.
fn timeline_points(s: &mut String, points: &[TimelinePoint], f: &Frame) {
    let (n, h, bottom) = (f.n, f.h, f.bottom);
    let every = n.div_ceil(10);
    for (i, p) in points.iter().enumerate() {
        if let Some(v) = p.harmfulness_rate {
            let drift = p.drift_detected == Some(true);
            let _ = write!(
                s,
                r##"<a href="#/runs/{id}"><circle class="pt{cls}" cx="{:.1}" cy="{:.1}" r="4.5"><title>{} {} (95% {}–{}){}</title></circle></a>"##,
                f.x(i),
                f.y(v),
                esc(&short_label(p)),
                pct(Some(v)),
                pct(p.harmfulness_rate_ci95.map(|c| c[0])),
                pct(p.harmfulness_rate_ci95.map(|c| c[1])),
                if drift { ", drift" } else { "" },
                id = esc(&p.run_id),
                cls = if drift { " drift" } else { "" },
            );
        }
        if i % every == 0 || i + 1 == n {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                f.x(i),
                h - bottom + 16.0,
                esc(&short_label(p))
            );
        }
    }
}

fn delta_color(d: f64) -> String {
    // Worse (positive) in red, better in green; saturates at 30 points.
    let t = (d.abs() / 0.3).min(1.0);
    let (r, g, b) = if d >= 0.0 {
        (255.0, 107.0, 107.0)
    } else {
        (79.0, 209.0, 165.0)
    };
    let mix = |c: f64, base: f64| (base + (c - base) * (0.15 + 0.85 * t)).round() as u8;
    format!("rgb({},{},{})", mix(r, 38.0), mix(g, 50.0), mix(b, 65.0))
}

/// Category x checkpoint heatmap of harmfulness-rate deltas vs baseline.
pub fn heatmap_svg(points: &[TimelinePoint]) -> String {
    let cats: Vec<String> = points
        .iter()
        .flat_map(|p| p.categories.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (left, top, cw, ch) = (170.0, 8.0, 62.0, 22.0);
    let w = left + cw * points.len().max(1) as f64 + 8.0;
    let h = top + ch * cats.len().max(1) as f64 + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="heatmap" viewBox="0 0 {w} {h}" role="img" aria-label="Harmfulness rate change by category and checkpoint">"#
    );
    for (r, cat) in cats.iter().enumerate() {
        let cy = top + ch * r as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            cy + 15.0,
            esc(cat)
        );
        for (c, p) in points.iter().enumerate() {
            let cx = left + cw * c as f64;
            let d = p.categories.get(cat).and_then(|v| v.delta);
            let fill = d.map_or_else(|| "#263241".to_string(), delta_color);
            let _ = write!(
                s,
                r#"<rect class="cell" x="{cx:.1}" y="{cy:.1}" width="{}" height="{}" rx="3" fill="{fill}"><title>{} at {}: {} points</title></rect>"#,
                cw - 2.0,
                ch - 2.0,
                esc(cat),
                esc(&short_label(p)),
                signed_pct(d)
            );
            if let Some(d) = d {
                let _ = write!(
                    s,
                    r#"<text class="cell-text" x="{:.1}" y="{:.1}" text-anchor="middle">{:+.0}</text>"#,
                    cx + (cw - 2.0) / 2.0,
                    cy + 14.0,
                    d * 100.0
                );
            }
        }
    }
    for (c, p) in points.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + cw * c as f64 + (cw - 2.0) / 2.0,
            top + ch * cats.len().max(1) as f64 + 14.0,
            esc(&short_label(p))
        );
    }
    s.push_str("</svg>");
    s
}
