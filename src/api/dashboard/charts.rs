//! The dashboard's charts, drawn as inline SVG at the page's type scale:
//! the timeline is drawn for the width it is shown at, the heatmap at one
//! pixel per unit (it scrolls sideways when a lineage has many checkpoints).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{esc, interval, pct, signed_pct};
use crate::api::models::TimelinePoint;

/// Roughly how wide one character of the charts' 11 px text is.
const CHAR_PX: f64 = 6.4;

/// The part of a model SPEC people call it by: the name after the
/// backend's prefix (`directory:assistant-v2` -> `assistant-v2`), the last
/// folder of a path (`onnx:/srv/models/ft-3` -> `ft-3`).
pub fn model_name(spec: &str) -> &str {
    let name = match spec.split_once(':') {
        Some((kind, rest))
            if !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            rest
        }
        _ => spec,
    };
    if name.starts_with('/') || name.starts_with('.') {
        name.trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(name)
    } else {
        name
    }
}

/// A revision short enough for a label: a long hash cut to 8 characters.
fn short_revision(rev: &str) -> String {
    let hex = rev.chars().all(|c| c.is_ascii_hexdigit());
    if hex && rev.len() > 12 {
        rev[..8].to_string()
    } else {
        clip(rev, 16)
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// Readable labels for a lineage's checkpoints, in order: the model's name
/// when the checkpoints are different models (a folder or a tag per
/// checkpoint; `@revision` added where a model comes back), else the
/// revision (a long hash cut to 8 characters), else the time of the run.
pub fn checkpoint_labels(points: &[TimelinePoint]) -> Vec<String> {
    let models: BTreeSet<&str> = points.iter().map(|p| p.model.as_str()).collect();
    let by_model = models.len() > 1 || points.len() == 1;
    points
        .iter()
        .map(|p| {
            let rev = p.revision.as_deref().map(short_revision);
            if by_model {
                let name = model_name(&p.model).to_string();
                let repeated = points.iter().filter(|q| q.model == p.model).count() > 1;
                match rev {
                    Some(r) if repeated => format!("{name}@{r}"),
                    _ => name,
                }
            } else {
                rev.unwrap_or_else(|| super::when(&p.started_at))
            }
        })
        .collect()
}

/// Harmfulness rate across a lineage's checkpoints: the 95% band, the
/// rate, the baseline as a dashed line (labelled at its end), drifted
/// checkpoints in red, and a marker above each checkpoint that opened,
/// joined or resolved an alert.
pub fn timeline_svg(points: &[TimelinePoint], labels: &[String]) -> String {
    let f = Frame::of(points);
    let Frame {
        w, h, left, right, ..
    } = f;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" viewBox="0 0 {w} {h}" role="img" aria-label="Harmfulness rate by checkpoint against the baseline">"#
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
    timeline_baseline(&mut s, points, &f);
    let rate: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.harmfulness_rate
                .map(|v| format!("{:.1},{:.1}", f.x(i), f.y(v)))
        })
        .collect();
    let _ = write!(s, r#"<polyline class="rate" points="{}"/>"#, rate.join(" "));
    timeline_alerts(&mut s, points, labels, &f);
    timeline_points(&mut s, points, labels, &f);
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
    /// Space between the plot's edges and the first and last checkpoint.
    pad: f64,
    ymax: f64,
    n: usize,
}

impl Frame {
    fn of(points: &[TimelinePoint]) -> Frame {
        let (w, h, left, right, top, bottom) = (760.0, 296.0, 46.0, 104.0, 34.0, 44.0);
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
            pad: 28.0,
            ymax,
            n: points.len().max(1),
        }
    }

    fn x(&self, i: usize) -> f64 {
        let Frame {
            w,
            left,
            right,
            pad,
            ..
        } = *self;
        if self.n == 1 {
            left + (w - left - right) / 2.0
        } else {
            left + pad + (w - left - right - 2.0 * pad) * i as f64 / (self.n - 1) as f64
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.top + (self.h - self.top - self.bottom) * (1.0 - v / self.ymax)
    }

    /// The horizontal room one checkpoint has.
    fn slot(&self) -> f64 {
        let plot = self.w - self.left - self.right - 2.0 * self.pad;
        if self.n == 1 {
            plot
        } else {
            plot / (self.n - 1) as f64
        }
    }
}

/// The 95% interval of the rate: a band, or a bar for one checkpoint.
fn timeline_band(s: &mut String, points: &[TimelinePoint], f: &Frame) {
    let band: Vec<(usize, [f64; 2])> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.harmfulness_rate_ci95.map(|c| (i, c)))
        .collect();
    if band.len() == 1 {
        // One checkpoint: its interval as a bar.
        let (i, c) = band[0];
        let _ = write!(
            s,
            r#"<rect class="band" x="{:.1}" y="{:.1}" width="14" height="{:.1}"/>"#,
            f.x(i) - 7.0,
            f.y(c[1]),
            (f.y(c[0]) - f.y(c[1])).max(1.0)
        );
    } else if !band.is_empty() {
        let mut poly: Vec<String> = band
            .iter()
            .map(|(i, c)| format!("{:.1},{:.1}", f.x(*i), f.y(c[1])))
            .collect();
        poly.extend(
            band.iter()
                .rev()
                .map(|(i, c)| format!("{:.1},{:.1}", f.x(*i), f.y(c[0]))),
        );
        let _ = write!(s, r#"<polygon class="band" points="{}"/>"#, poly.join(" "));
    }
}

/// The baseline's rate as a dashed line across the plot (a step where the
/// plan changed and a new baseline run was made), labelled at its end.
fn timeline_baseline(s: &mut String, points: &[TimelinePoint], f: &Frame) {
    let base: Vec<(usize, f64)> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.baseline_rate.map(|v| (i, v)))
        .collect();
    let (Some(&(_, first)), Some(&(_, last))) = (base.first(), base.last()) else {
        return;
    };
    let mut line = vec![format!("{:.1},{:.1}", f.left, f.y(first))];
    line.extend(
        base.iter()
            .map(|(i, v)| format!("{:.1},{:.1}", f.x(*i), f.y(*v))),
    );
    line.push(format!("{:.1},{:.1}", f.w - f.right, f.y(last)));
    let _ = write!(
        s,
        r#"<polyline class="baseline" points="{}"/><text class="base-label" x="{:.1}" y="{:.1}">baseline {}</text>"#,
        line.join(" "),
        f.w - f.right + 6.0,
        f.y(last) + 4.0,
        pct(Some(last))
    );
}

/// A marker above each checkpoint that opened, joined or resolved an
/// alert, linked to the alert log.
fn timeline_alerts(s: &mut String, points: &[TimelinePoint], labels: &[String], f: &Frame) {
    for (i, p) in points.iter().enumerate() {
        let Some(a) = &p.alert else { continue };
        let x = f.x(i);
        let cls = super::severity_class(&a.severity, &a.kind);
        let y_point = p.harmfulness_rate.map_or(f.h - f.bottom, |v| f.y(v));
        let _ = write!(
            s,
            r##"<a class="alert-mark {cls}" href="/alerts#{id}" data-route data-alert="{id}"><title>alert {id}: {} {} ({}) by {}: {}</title><line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}"/><path d="M{:.1},{:.1} L{:.1},{:.1} L{x:.1},{:.1} Z"/></a>"##,
            esc(&a.kind),
            esc(&a.severity),
            esc(&a.action),
            esc(labels.get(i).map_or("", String::as_str)),
            esc(&a.summary),
            f.top - 8.0,
            (y_point - 8.0).max(f.top - 8.0),
            x - 7.0,
            f.top - 22.0,
            x + 7.0,
            f.top - 22.0,
            f.top - 10.0,
            id = esc(&a.id),
        );
    }
}

/// One linked dot per checkpoint (red when drifted) and the labels below.
fn timeline_points(s: &mut String, points: &[TimelinePoint], labels: &[String], f: &Frame) {
    let (n, h, bottom) = (f.n, f.h, f.bottom);
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    // Every label that fits; at most 24 characters each.
    let width = (longest.min(24) as f64 * CHAR_PX + 10.0).max(30.0);
    let every = ((width / f.slot()).ceil() as usize).max(1);
    let room = if n == 1 {
        24
    } else {
        (((f.slot() * every as f64) - 10.0) / CHAR_PX).floor() as usize
    }
    .clamp(4, 24);
    for (i, p) in points.iter().enumerate() {
        let label = labels.get(i).map_or("", String::as_str);
        if let Some(v) = p.harmfulness_rate {
            let drift = p.drift_detected == Some(true);
            let _ = write!(
                s,
                r##"<a class="pt-link" href="/runs/{id}" data-route><circle class="pt{cls}" cx="{:.1}" cy="{:.1}" r="{}"><title>{}: {} harmful (95% {}), baseline {}{}</title></circle></a>"##,
                f.x(i),
                f.y(v),
                if drift { 6 } else { 5 },
                esc(label),
                pct(Some(v)),
                interval(p.harmfulness_rate_ci95),
                pct(p.baseline_rate),
                if drift { ", drifted" } else { "" },
                id = esc(&p.run_id),
                cls = if drift { " drift" } else { "" },
            );
        }
        // The last label always; the others every `every` from the end.
        if (n - 1 - i) % every == 0 {
            let _ = write!(
                s,
                r#"<text class="x-label" x="{:.1}" y="{}" text-anchor="middle"><title>{}</title>{}</text>"#,
                f.x(i),
                h - bottom + 18.0,
                esc(label),
                esc(&clip(label, room))
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

/// The heatmap's layout: the category labels' width, the cells' size, the
/// first checkpoint column, and whether the column labels are turned.
struct Grid {
    left: f64,
    top: f64,
    cw: f64,
    ch: f64,
    x0: f64,
    turned: bool,
}

impl Grid {
    fn of(cats: &[String], labels: &[String]) -> Grid {
        let longest_cat = cats.iter().map(|c| c.chars().count()).max().unwrap_or(8);
        let left = (longest_cat as f64 * CHAR_PX + 14.0).clamp(80.0, 220.0);
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        // Columns as wide as their labels while the heatmap stays within a
        // screen's width; narrow columns and turned labels beyond that.
        let wide = (longest as f64 * CHAR_PX + 12.0).clamp(48.0, 120.0);
        let cw = if wide * labels.len() as f64 <= 900.0 {
            wide
        } else {
            48.0
        };
        Grid {
            left,
            top: 6.0,
            cw,
            ch: 24.0,
            x0: left + cw + 12.0,
            turned: longest as f64 * CHAR_PX > cw - 4.0,
        }
    }
}

/// Category x checkpoint heatmap of harmfulness-rate changes vs the
/// baseline, drawn at one pixel per unit, with the baseline's own rates as
/// the first column. Column labels are the checkpoints' labels, turned when
/// they do not fit their column.
pub fn heatmap_svg(points: &[TimelinePoint], labels: &[String]) -> String {
    let cats: Vec<String> = points
        .iter()
        .flat_map(|p| p.categories.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels: Vec<String> = labels.iter().map(|l| clip(l, 22)).collect();
    let g = Grid::of(&cats, &labels);
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    // Turned labels run down and to the left at 40 degrees.
    let label_room = if g.turned {
        longest as f64 * CHAR_PX * 0.643 + 20.0
    } else {
        22.0
    };
    let w = g.x0 + g.cw * points.len().max(1) as f64 + 8.0;
    let grid_h = g.ch * cats.len().max(1) as f64;
    let h = g.top + grid_h + label_room;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="heatmap" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" role="img" aria-label="Harmfulness rate change by category and checkpoint">"#
    );
    for (r, cat) in cats.iter().enumerate() {
        heatmap_row(&mut s, &g, r, cat, points, &labels);
    }
    heatmap_labels(&mut s, &g, g.top + grid_h + 14.0, &labels);
    s.push_str("</svg>");
    s
}

/// One category: its name, the baseline's rate, a cell per checkpoint.
fn heatmap_row(
    s: &mut String,
    g: &Grid,
    r: usize,
    cat: &str,
    points: &[TimelinePoint],
    labels: &[String],
) {
    let Grid {
        left, cw, ch, x0, ..
    } = *g;
    let cy = g.top + ch * r as f64;
    // The baseline's rate, as the newest checkpoint saw it.
    let b = points
        .iter()
        .rev()
        .find_map(|p| p.categories.get(cat).and_then(|c| c.baseline_rate));
    let _ = write!(
        s,
        r#"<text class="cat" x="{}" y="{:.1}" text-anchor="end">{}</text><rect class="cell base" x="{left:.1}" y="{cy:.1}" width="{}" height="{}" rx="3"><title>{} at the baseline: {} harmful</title></rect><text class="cell-text base" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left - 8.0,
        cy + 15.5,
        esc(cat),
        cw - 2.0,
        ch - 2.0,
        esc(cat),
        pct(b),
        left + (cw - 2.0) / 2.0,
        cy + 15.5,
        b.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
    );
    for (c, p) in points.iter().enumerate() {
        let cx = x0 + cw * c as f64;
        let cell = p.categories.get(cat);
        let d = cell.and_then(|v| v.delta);
        let fill = d.map_or_else(|| "#263241".to_string(), delta_color);
        let _ = write!(
            s,
            r#"<rect class="cell" x="{cx:.1}" y="{cy:.1}" width="{}" height="{}" rx="3" fill="{fill}"><title>{} at {}: {} harmful vs {} at the baseline ({} points)</title></rect>"#,
            cw - 2.0,
            ch - 2.0,
            esc(cat),
            esc(labels.get(c).map_or("", String::as_str)),
            pct(cell.and_then(|v| v.harmfulness_rate)),
            pct(cell.and_then(|v| v.baseline_rate)),
            signed_pct(d)
        );
        if let Some(d) = d {
            let _ = write!(
                s,
                r#"<text class="cell-text{}" x="{:.1}" y="{:.1}" text-anchor="middle">{:+.0}</text>"#,
                // Light text on the faint cells, dark on the strong.
                if d.abs() < 0.12 { " faint" } else { "" },
                cx + (cw - 2.0) / 2.0,
                cy + 15.5,
                d * 100.0
            );
        }
    }
}

/// The column labels under the grid at `ly`: `baseline`, then each
/// checkpoint's.
fn heatmap_labels(s: &mut String, g: &Grid, ly: f64, labels: &[String]) {
    let _ = write!(
        s,
        r#"<text class="col-label base" x="{:.1}" y="{ly:.1}" text-anchor="middle">baseline</text>"#,
        g.left + (g.cw - 2.0) / 2.0
    );
    for (c, label) in labels.iter().enumerate() {
        let cx = g.x0 + g.cw * c as f64 + (g.cw - 2.0) / 2.0;
        if g.turned {
            let _ = write!(
                s,
                r#"<text class="col-label" transform="translate({cx:.1},{:.1}) rotate(-40)" text-anchor="end">{}</text>"#,
                ly - 4.0,
                esc(label)
            );
        } else {
            let _ = write!(
                s,
                r#"<text class="col-label" x="{cx:.1}" y="{ly:.1}" text-anchor="middle">{}</text>"#,
                esc(label)
            );
        }
    }
}

#[cfg(test)]
mod tests;
