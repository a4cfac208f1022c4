use super::*;
use safedrift_judges::classifier::EncoderIdentity;

fn l(score: u8, refused: bool) -> Label {
    Label { score, refused }
}

#[test]
fn kappa_matches_a_hand_computed_value() {
    // Two raters, 10 items, levels 1..3 (a 3x3 matrix):
    // O = [[3,1,0],[1,2,1],[0,1,1]], rows (3+1, 4, 2) = (4,4,2), cols (4,4,2).
    // Weights (i-j)^2/4: off-by-one 0.25, off-by-two 1.
    // sum(w O) = 0.25 * (1+1+1+1) = 1.0
    // E_ij = r_i c_j / 10: sum(w E) = 0.25*(4*4+4*4+4*2+2*4)/10 + 1*(4*2+2*4)/10
    //      = 0.25*48/10 + 16/10 = 1.2 + 1.6 = 2.8
    // kappa = 1 - 1.0/2.8 = 0.642857...
    let o = vec![vec![3, 1, 0], vec![1, 2, 1], vec![0, 1, 1]];
    assert!((quadratic_kappa(&o) - (1.0 - 1.0 / 2.8)).abs() < 1e-12);
    // Perfect agreement is 1; systematic disagreement is negative.
    assert_eq!(quadratic_kappa(&[vec![2, 0], vec![0, 3]]), 1.0);
    assert!(quadratic_kappa(&[vec![0, 2], vec![3, 0]]) < 0.0);
}

#[test]
fn agreement_reports_rates_and_the_confusion_matrix() {
    let truth = [l(1, true), l(5, false), l(5, false), l(3, false)];
    let pred = [l(1, true), l(5, false), l(4, false), l(3, true)];
    let r = agreement(&truth, &pred);
    assert_eq!(r.n, 4);
    assert_eq!(r.accuracy, 0.75);
    assert_eq!(r.confusion[4][3], 1);
    assert_eq!(r.confusion[0][0], 1);
    assert_eq!(r.teacher_harmfulness_rate, 0.5);
    assert_eq!(r.judge_harmfulness_rate, 0.25);
    assert_eq!(r.harmful_agreement, 0.75);
    assert_eq!(r.refusal_agreement, 0.75);
}

fn toy() -> (Vec<Vec<f32>>, Vec<Label>) {
    // Three well-separated clusters in 4 dimensions.
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..30 {
        let t = i as f32 * 0.01;
        let (f, lab) = match i % 3 {
            0 => (vec![1.0 + t, 0.0, 0.2, -t], l(1, true)),
            1 => (vec![0.0, 1.0 - t, 0.2, t], l(3, false)),
            _ => (vec![-1.0, -1.0 + t, 0.2, 0.5], l(5, false)),
        };
        x.push(f);
        y.push(lab);
    }
    (x, y)
}

fn toy_head(x: &[Vec<f32>], y: &[Label], calibration: Calibration) -> Head {
    let (mean, scale) = standardization(x, 0).unwrap();
    let heads = fit_heads(
        &design(x, &mean, &scale).unwrap(),
        y,
        &TrainOptions::default(),
    )
    .unwrap();
    Head {
        format_version: HEAD_FORMAT_VERSION,
        encoder: EncoderIdentity {
            name: "toy".into(),
            sha256: "0".into(),
            hidden_size: 4,
            max_seq_length: 8,
        },
        features: Features::Response,
        feature_mean: mean,
        feature_scale: scale,
        hidden: heads.hidden,
        scores: heads.scores,
        score_weights: heads.score_weights,
        score_bias: heads.score_bias,
        refusal_weights: heads.refusal_weights,
        refusal_bias: heads.refusal_bias,
        calibration,
        teacher: "t".into(),
        training_data: TrainingData {
            source: "toy".into(),
            sha256: String::new(),
            records: 30,
            train_records: 30,
            test_records: 0,
            test_prompts: 0,
        },
        seed: 0,
        l2: 0.01,
        held_out: agreement(&[], &[]),
    }
}

#[test]
fn a_separable_toy_set_is_learned_perfectly() {
    let (x, y) = toy();
    let head = toy_head(&x, &y, Calibration::identity());
    assert_eq!(head.scores, vec![1, 3, 5]);
    head.check().unwrap();
    let pred: Vec<Label> = x
        .iter()
        .map(|f| {
            let c = head.classify(f);
            l(c.score, c.refused)
        })
        .collect();
    let r = agreement(&y, &pred);
    assert_eq!(r.accuracy, 1.0, "{r:?}");
    assert_eq!(r.quadratic_kappa, 1.0);
    assert_eq!(r.refusal_agreement, 1.0);
}

#[test]
fn training_is_deterministic() {
    let (x, y) = toy();
    let (mean, scale) = standardization(&x, 0).unwrap();
    let (_, emphasized) = standardization(&x, 1).unwrap();
    assert!((f64::from(emphasized[3]) - f64::from(scale[3]) / SIGNAL_EMPHASIS).abs() < 1e-6);
    assert_eq!(emphasized[..3], scale[..3]);
    let d = design(&x, &mean, &scale).unwrap();
    let a = fit_heads(&d, &y, &TrainOptions::default()).unwrap();
    let b = fit_heads(&d, &y, &TrainOptions::default()).unwrap();
    assert_eq!(a, b);
    let c = fit_heads(
        &d,
        &y,
        &TrainOptions {
            l2: 1.0,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_ne!(a, c, "the penalty changes the weights");
    // A training split with one score cannot make a judge; one refusal
    // class gives a constant refusal head.
    let same: Vec<Label> = y.iter().map(|_| l(5, false)).collect();
    assert!(fit_heads(&d, &same, &TrainOptions::default()).is_err());
    let never: Vec<Label> = y.iter().map(|t| l(t.score, false)).collect();
    let h = fit_heads(&d, &never, &TrainOptions::logistic()).unwrap();
    assert!(h.refusal_weights.iter().all(|w| *w == 0.0) && h.refusal_bias < 0.0);
    // With a hidden layer the refusal head learns the same from the data.
    let h = fit_heads(&d, &never, &TrainOptions::default()).unwrap();
    assert!(d
        .rows()
        .into_iter()
        .all(|row| h.logits(row, &h.scores).1 < 0.0));
    // Another seed starts the hidden layer elsewhere.
    let other_seed = TrainOptions {
        seed: 7,
        ..TrainOptions::default()
    };
    assert_ne!(a, fit_heads(&d, &y, &other_seed).unwrap());
}

#[test]
fn averaged_networks_give_the_mean_of_their_logits() {
    let (x, y) = toy();
    let (mean, scale) = standardization(&x, 0).unwrap();
    let d = design(&x, &mean, &scale).unwrap();
    let one = |seed: u64| TrainOptions {
        members: 1,
        seed,
        ..TrainOptions::default()
    };
    let (a, b) = (
        fit_heads(&d, &y, &one(3)).unwrap(),
        fit_heads(&d, &y, &one(4)).unwrap(),
    );
    let both = fit_heads(
        &d,
        &y,
        &TrainOptions {
            members: 2,
            seed: 3,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_eq!(both.hidden.as_ref().unwrap().bias.len(), 128);
    for row in d.rows() {
        let (sa, ra) = a.logits(row, &a.scores);
        let (sb, rb) = b.logits(row, &b.scores);
        let (s, r) = both.logits(row, &both.scores);
        assert!((r - (ra + rb) / 2.0).abs() < 1e-4, "{r} {ra} {rb}");
        for k in 0..s.len() {
            assert!((s[k] - (sa[k] + sb[k]) / 2.0).abs() < 1e-4);
        }
    }
}

#[test]
fn a_hidden_layer_learns_what_logistic_heads_cannot() {
    // A label that lies in two separate corners of the features: 5 when
    // exactly one of them is high (say, a refusal line with the task done
    // after it, or the task done with no refusal line), 1 and refused when
    // both or neither are. No single straight boundary per label separates
    // that: logistic heads get at most three of the four corners right;
    // the hidden layer gets all four.
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..80 {
        let (a, b) = ((i % 2) as f32, ((i / 2) % 2) as f32);
        let jitter = (i as f32 * 0.37).sin() * 0.05;
        x.push(vec![a + jitter, b - jitter]);
        y.push(if a != b { l(5, false) } else { l(1, true) });
    }
    let (mean, scale) = standardization(&x, 0).unwrap();
    let d = design(&x, &mean, &scale).unwrap();
    let right = |options: &TrainOptions| {
        let h = fit_heads(&d, &y, options).unwrap();
        d.rows()
            .into_iter()
            .zip(&y)
            .filter(|(row, t)| {
                let (s, r) = h.logits(*row, &h.scores);
                let score = if s[1] > s[0] { 5 } else { 1 };
                score == t.score && (r > 0.0) == t.refused
            })
            .count()
    };
    assert_eq!(right(&TrainOptions::default()), 80);
    assert!(right(&TrainOptions::logistic()) < 80);
}

#[test]
fn temperatures_undo_overconfidence() {
    // Logits twice as large as the truth warrants: class 0 with
    // probability sigmoid(1) = 0.73, written as logit 2.
    let mut logits = Vec::new();
    let mut truth = Vec::new();
    let mut binary = Vec::new();
    let mut refused = Vec::new();
    for i in 0..1000 {
        logits.push(vec![2.0, 0.0]);
        truth.push(usize::from(i % 100 >= 73));
        binary.push(2.0);
        refused.push(i % 100 < 73);
    }
    let t = fit_temperature(&logits, &truth);
    assert!((t - 2.0).abs() < 0.02, "{t}");
    let t = fit_binary_temperature(&binary, &refused);
    assert!((t - 2.0).abs() < 0.02, "{t}");
}

#[test]
fn the_confidence_map_matches_how_often_verdicts_are_right() {
    // Verdicts with raw confidence 0.9 that are right 60% of the time,
    // and others with 0.6 that are right 40% of the time.
    let mut raw = Vec::new();
    let mut right = Vec::new();
    for i in 0..1000 {
        raw.push(0.9);
        right.push(i % 10 < 6);
        raw.push(0.6);
        right.push(i % 10 < 4);
    }
    let before: Vec<f64> = raw.clone();
    let (a, b) = fit_confidence_map(&raw, &right);
    let cal = Calibration {
        confidence_scale: a,
        confidence_shift: b,
        ..Calibration::identity()
    };
    let after: Vec<f64> = raw
        .iter()
        .map(|p| safedrift_judges::classifier::confidence(&cal, *p))
        .collect();
    assert!(
        (after[0] - 0.6).abs() < 0.01 && (after[1] - 0.4).abs() < 0.01,
        "{after:?}"
    );
    assert!(calibration_error(&after, &right) < 0.01);
    assert!((calibration_error(&before, &right) - 0.25).abs() < 1e-9);
    // All right: the map stays finite.
    let (a, b) = fit_confidence_map(&[0.7, 0.8, 0.9], &[true, true, true]);
    assert!(a.is_finite() && b.is_finite());
}

#[test]
fn calibration_error_bins_by_tenths() {
    assert_eq!(calibration_error(&[], &[]), 0.0);
    // 0.95 right, 0.05 wrong: both perfectly calibrated? No: bin (0.9, 1]
    // has confidence 0.95 and 100% right (error 0.05), bin (0, 0.1] has
    // 0.05 and 0% right (error 0.05).
    let e = calibration_error(&[0.95, 0.05], &[true, false]);
    assert!((e - 0.05).abs() < 1e-12, "{e}");
    assert_eq!(calibration_error(&[0.0], &[false]), 0.0);
}

fn rec(prompt: &str, score: u8) -> Record {
    Record {
        prompt: prompt.into(),
        response: format!("answer {score}"),
        score,
        refused: score == 1,
    }
}

#[test]
fn the_split_is_by_prompt_and_depends_only_on_the_seed() {
    let records: Vec<Record> = (0..20)
        .flat_map(|p| (1..=5).map(move |s| rec(&format!("prompt {p}"), s)))
        .collect();
    let (train, test) = split_by_prompt(&records, 7, 0.2).unwrap();
    assert_eq!(train.len() + test.len(), records.len());
    assert_eq!(test.len(), 4 * 5, "4 of 20 prompts, with all their answers");
    let train_prompts: HashSet<&str> = train.iter().map(|&i| records[i].prompt.as_str()).collect();
    assert!(test
        .iter()
        .all(|&i| !train_prompts.contains(records[i].prompt.as_str())));
    assert_eq!(
        split_by_prompt(&records, 7, 0.2).unwrap(),
        (train.clone(), test.clone())
    );
    assert_ne!(split_by_prompt(&records, 8, 0.2).unwrap().1, test);
    assert!(
        split_by_prompt(&records[..5], 7, 0.2).is_err(),
        "one prompt cannot be split"
    );
}

#[test]
fn bad_rows_are_named_by_file_and_line() {
    let e = parse_records(
        "{\"prompt\":\"p\",\"response\":\"r\",\"score\":2}\n{\"prompt\":1}\n",
        "x.jsonl",
    )
    .unwrap_err();
    assert!(e.0.starts_with("x.jsonl:2:"), "{e}");
    let e = parse_records(
        "{\"prompt\":\"p\",\"response\":\"r\",\"score\":9}\n",
        "x.jsonl",
    )
    .unwrap_err();
    assert!(e.0.contains("x.jsonl:1: score 9"), "{e}");
    let seed = load_data("builtin:seed").unwrap();
    assert!(seed.len() >= 100, "{}", seed.len());
    let corpus = load_data("builtin:corpus").unwrap();
    assert!(corpus.len() >= 2000, "{}", corpus.len());
    assert_eq!(builtin_teacher("builtin:corpus"), Some(CORPUS_TEACHER));
    assert!(load_data("builtin:nope")
        .unwrap_err()
        .0
        .contains("built in: corpus, seed"));
    assert!(Selection::parse("model=").is_err());
    assert_eq!(
        Selection::parse("run=r_1").unwrap(),
        Selection::Run("r_1".into())
    );
}
