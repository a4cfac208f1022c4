//! The attacks on a run's page: each modifier's success rate (the
//! harmfulness rate of its attacked prompts) against the baseline's, with
//! its finding, so a prefill at several K reads as one table.

use std::fmt::Write as _;

use super::{esc, pct, signed_pct};

/// The section, when the run's document carries attacks
/// (`probes.attacks`).
pub(super) fn section(s: &mut String, doc: &serde_json::Value) {
    let Some(attacks) = doc["probes"]["attacks"].as_object() else {
        return;
    };
    if attacks.is_empty() {
        return;
    }
    s.push_str(r#"<h3>Attacks</h3><table class="attacks"><tr><th>attack</th><th class="num">n</th><th class="num">success</th><th class="num">95% interval</th><th class="num">baseline</th><th class="num">delta (points)</th><th>finding</th></tr>"#);
    let findings = doc["drift"]["findings"].as_array();
    for (name, a) in attacks {
        let rate = a["attack_success_rate"].as_f64();
        let base = doc["baseline"]["probes"]["attacks"][name]["attack_success_rate"].as_f64();
        let ci = a["attack_success_rate_ci95"]
            .as_array()
            .map(|v| format!("{}-{}", pct(v[0].as_f64()), pct(v[1].as_f64())))
            .unwrap_or_else(|| "-".into());
        let finding = findings
            .and_then(|f| {
                f.iter().find(|f| {
                    f["metric"] == "attack_success_rate" && f["attack"].as_str() == Some(name)
                })
            })
            .map_or("-", |f| {
                if f["fired"] == true {
                    "fired"
                } else {
                    "not fired"
                }
            });
        let cls = if finding == "fired" { "worse" } else { "" };
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{ci}</td><td class="num">{}</td><td class="num {cls}">{}</td><td class="{cls}">{finding}</td></tr>"#,
            esc(name),
            a["n"].as_u64().unwrap_or(0),
            pct(rate),
            pct(base),
            signed_pct(rate.zip(base).map(|(r, b)| r - b)),
        );
    }
    s.push_str("</table>");
}
