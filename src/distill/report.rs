//! The held-out report of a distillation and the minimums it must reach.

use safedrift_judges::classifier::{AgreementReport, Head, Label, UNSURE_BELOW_DEFAULT};
use safedrift_judges::refusal;

use super::train::{agreement, calibration_error};
use super::Record;

/// The human-readable report of a distillation.
pub fn format_report(head: &Head) -> String {
    use std::fmt::Write as _;
    let r = &head.held_out;
    let t = &head.training_data;
    let c = &head.calibration;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "teacher      {}\ndata         {} ({} records, sha256 {})\nsplit        {} training, {} held out ({} prompts held out, seed {})\nfeatures     {} of {}\nheads        {} (l2 {})",
        head.teacher,
        t.source,
        t.records,
        &t.sha256[..12.min(t.sha256.len())],
        t.train_records,
        t.test_records,
        t.test_prompts,
        head.seed,
        head.features.name(),
        head.encoder.name,
        head.hidden.as_ref().map_or_else(
            || "logistic, on the features".to_string(),
            |h| format!("a hidden layer of {} rectified linear units", h.bias.len())
        ),
        head.l2
    );
    if c.folds > 0 {
        let _ = writeln!(
            s,
            "calibration  {} folds of the training split ({} answers): score temperature {:.3}, refusal temperature {:.3}, confidence map {:.3} * logit(p) {:+.3}; calibration error on those answers {:.3} -> {:.3}",
            c.folds,
            c.records,
            c.score_temperature,
            c.refusal_temperature,
            c.confidence_scale,
            c.confidence_shift,
            c.error_before,
            c.error_after
        );
    } else {
        let _ = writeln!(s, "calibration  none (too few training prompts for folds)");
    }
    let _ = writeln!(s, "held-out agreement with the teacher ({} answers):", r.n);
    let _ = writeln!(s, "  accuracy             {:.3}", r.accuracy);
    let _ = writeln!(s, "  quadratic kappa      {:.3}", r.quadratic_kappa);
    let _ = writeln!(
        s,
        "  harmfulness rate     teacher {:.3}, judge {:.3} (difference {:+.3}); harmful agreement {:.3}",
        r.teacher_harmfulness_rate,
        r.judge_harmfulness_rate,
        r.judge_harmfulness_rate - r.teacher_harmfulness_rate,
        r.harmful_agreement
    );
    let _ = writeln!(
        s,
        "  refusal agreement    {:.3} (the refusal rule alone: {:.3})",
        r.refusal_agreement, r.rule_refusal_agreement
    );
    let _ = writeln!(
        s,
        "  calibration error    {:.3} (verdict confidence), {:.3} (refusal head)",
        r.calibration_error, r.refusal_calibration_error
    );
    let _ = writeln!(
        s,
        "  unsure               {:.3} of the answers have a confidence below {} (the audit's default unsure_below): right {:.3} of those, {:.3} of the others",
        r.unsure_share, UNSURE_BELOW_DEFAULT, r.unsure_accuracy, r.sure_accuracy
    );
    let _ = writeln!(s, "  confusion (rows: teacher score, columns: judge score)");
    let _ = writeln!(s, "           1     2     3     4     5");
    for (i, row) in r.confusion.iter().enumerate() {
        let cells: String = row.iter().map(|c| format!("{c:>6}")).collect();
        let _ = writeln!(s, "    {}  {cells}", i + 1);
    }
    s
}

/// The head's agreement with the teacher on the held-out answers.
pub(super) fn held_out_report(
    head: &Head,
    test_x: &[Vec<f32>],
    test_y: &[Label],
    test_idx: &[usize],
    records: &[Record],
) -> AgreementReport {
    let verdicts: Vec<_> = test_x.iter().map(|f| head.classify(f)).collect();
    let predicted: Vec<Label> = verdicts
        .iter()
        .map(|c| Label {
            score: c.score,
            refused: c.refused,
        })
        .collect();
    let mut report = agreement(test_y, &predicted);
    let n = test_y.len();
    if n > 0 {
        let rule_same = test_idx
            .iter()
            .zip(test_y)
            .filter(|(&i, t)| refusal::is_refusal(&records[i].response) == t.refused)
            .count();
        report.rule_refusal_agreement = rule_same as f64 / n as f64;
    }
    let conf: Vec<f64> = verdicts.iter().map(|c| c.confidence).collect();
    let right: Vec<bool> = predicted.iter().zip(test_y).map(|(p, t)| p == t).collect();
    report.calibration_error = calibration_error(&conf, &right);
    let (mut unsure, mut unsure_right, mut sure_right) = (0usize, 0usize, 0usize);
    for (c, ok) in conf.iter().zip(&right) {
        if *c < UNSURE_BELOW_DEFAULT {
            unsure += 1;
            unsure_right += usize::from(*ok);
        } else {
            sure_right += usize::from(*ok);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    report.unsure_share = ratio(unsure, n);
    report.unsure_accuracy = ratio(unsure_right, unsure);
    report.sure_accuracy = ratio(sure_right, n - unsure);
    let refusal_conf: Vec<f64> = verdicts
        .iter()
        .map(|c| c.p_refused.max(1.0 - c.p_refused))
        .collect();
    let refusal_right: Vec<bool> = predicted
        .iter()
        .zip(test_y)
        .map(|(p, t)| p.refused == t.refused)
        .collect();
    report.refusal_calibration_error = calibration_error(&refusal_conf, &refusal_right);
    report
}

/// Minimum held-out agreement for a judge to be written.
#[derive(Clone, Copy, Debug)]
pub struct Minimums {
    pub accuracy: f64,
    pub kappa: f64,
    /// Agreement on "harmful" (score 5 or not).
    pub harmful: f64,
    /// Agreement on "refused".
    pub refused: f64,
}

/// The reasons a head falls short of the minimums (empty when it does not).
pub fn shortfalls(report: &AgreementReport, min: &Minimums) -> Vec<String> {
    let mut out = Vec::new();
    if report.accuracy < min.accuracy {
        out.push(format!(
            "held-out accuracy {:.3} is below --min-accuracy {}",
            report.accuracy, min.accuracy
        ));
    }
    if report.quadratic_kappa < min.kappa {
        out.push(format!(
            "held-out quadratic kappa {:.3} is below --min-kappa {}",
            report.quadratic_kappa, min.kappa
        ));
    }
    if report.harmful_agreement < min.harmful {
        out.push(format!(
            "held-out harmful agreement {:.3} is below --min-harmful-agreement {}",
            report.harmful_agreement, min.harmful
        ));
    }
    if report.refusal_agreement < min.refused {
        out.push(format!(
            "held-out refusal agreement {:.3} is below --min-refusal-agreement {}",
            report.refusal_agreement, min.refused
        ));
    }
    out
}
