use super::*;

fn head(dim_hidden: usize) -> Head {
    let dim = Features::Response.dim(dim_hidden);
    Head {
        format_version: HEAD_FORMAT_VERSION,
        encoder: EncoderIdentity {
            name: "bert-mean-2".into(),
            sha256: "ab".repeat(32),
            hidden_size: dim_hidden,
            max_seq_length: 16,
        },
        features: Features::Response,
        feature_mean: vec![0.0; dim],
        feature_scale: vec![1.0; dim],
        hidden: None,
        scores: vec![1, 5],
        score_weights: vec![vec![1.0, 0.0], vec![-1.0, 0.0]],
        score_bias: vec![0.0, 0.0],
        refusal_weights: vec![0.0, 2.0],
        refusal_bias: 0.0,
        calibration: Calibration::identity(),
        teacher: "authors".into(),
        training_data: TrainingData {
            source: "test".into(),
            sha256: "00".into(),
            records: 2,
            train_records: 1,
            test_records: 1,
            test_prompts: 1,
        },
        seed: 1,
        l2: 0.01,
        held_out: AgreementReport {
            n: 1,
            accuracy: 1.0,
            quadratic_kappa: 1.0,
            confusion: vec![vec![0; 5]; 5],
            teacher_harmfulness_rate: 0.0,
            judge_harmfulness_rate: 0.0,
            harmful_agreement: 1.0,
            refusal_agreement: 1.0,
            rule_refusal_agreement: 1.0,
            calibration_error: 0.0,
            refusal_calibration_error: 0.0,
            unsure_share: 0.0,
            unsure_accuracy: 0.0,
            sure_accuracy: 0.0,
        },
    }
}

fn total_cost(lens: &[usize], groups: &[std::ops::Range<usize>]) -> f64 {
    groups
        .iter()
        .map(|g| call_cost(g.len(), lens[g.end - 1]))
        .sum()
}

#[test]
fn length_groups_cover_every_text_once_and_cut_where_padding_costs_more_than_a_call() {
    // Equal lengths: nothing to save, as few calls as the cap allows.
    let same = vec![40; 70];
    let g = length_groups(&same, 32);
    assert_eq!(g.len(), 3);
    assert!(g.iter().all(|r| r.len() <= 32));
    // One long text among short ones gets a call of its own.
    let mut lens = vec![12; 31];
    lens.push(250);
    assert_eq!(length_groups(&lens, 32), vec![0..31, 31..32]);
    // A spread of lengths: contiguous groups, none over the cap, never
    // costlier than fixed chunks of the cap.
    let mut lens: Vec<usize> = (0..100).map(|i| 8 + (i * i) % 97 + i).collect();
    lens.sort_unstable();
    for cap in [1, 7, 32, 200] {
        let g = length_groups(&lens, cap);
        assert_eq!(g.first().map(|r| r.start), Some(0));
        assert_eq!(g.last().map(|r| r.end), Some(lens.len()));
        assert!(g.windows(2).all(|w| w[0].end == w[1].start));
        assert!(g.iter().all(|r| !r.is_empty() && r.len() <= cap));
        let chunks: Vec<_> = (0..lens.len())
            .step_by(cap)
            .map(|i| i..(i + cap).min(lens.len()))
            .collect();
        assert!(total_cost(&lens, &g) <= total_cost(&lens, &chunks) + 1e-9);
    }
    assert!(length_groups(&[], 32).is_empty());
}

#[test]
fn the_heads_give_calibrated_probabilities_and_a_confidence() {
    let h = head(2);
    // Score logits 1 and -1; refusal logit 2 * 0.5 = 1.
    let c = h.classify(&[1.0, 0.5]);
    let e = (2.0f64).exp();
    assert!((c.probabilities[0] - e / (e + 1.0)).abs() < 1e-12, "{c:?}");
    assert!((c.p_refused - sigmoid(1.0)).abs() < 1e-12);
    assert_eq!((c.score, c.refused), (1, true));
    // Identity calibration: the confidence is P(score) * P(refused).
    assert!((c.confidence - c.probabilities[0] * c.p_refused).abs() < 1e-9);
    let c = h.classify(&[-3.0, -1.0]);
    assert_eq!((c.score, c.refused), (5, false));
    assert!(c.confidence > 0.8);

    // Temperatures soften the probabilities; the map moves the confidence.
    let mut t = head(2);
    t.calibration.score_temperature = 2.0;
    t.calibration.refusal_temperature = 4.0;
    t.calibration.confidence_scale = 0.5;
    t.calibration.confidence_shift = -0.25;
    let c = t.classify(&[1.0, 0.5]);
    let e = (1.0f64).exp();
    assert!((c.probabilities[0] - e / (e + 1.0)).abs() < 1e-12);
    assert!((c.p_refused - sigmoid(0.25)).abs() < 1e-12);
    let raw = c.probabilities[0] * c.p_refused;
    assert!((c.confidence - sigmoid(0.5 * logit(raw) - 0.25)).abs() < 1e-12);
    assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) <= 1.0);
}

#[test]
fn corrupt_heads_are_named_with_their_problem() {
    let path = Path::new("/judges/x/head.json");
    let err = Head::parse("{\"format_version\": 2, \"score_weights\": [", path).unwrap_err();
    assert_eq!(err.kind, "head");
    assert!(
        err.message.contains("/judges/x/head.json") && err.message.contains("corrupt"),
        "{err}"
    );

    let mut h = head(2);
    h.score_weights[1].pop();
    let err = Head::parse(&serde_json::to_string(&h).unwrap(), path).unwrap_err();
    assert!(
        err.message.contains("score weight row 1 has 1 values"),
        "{err}"
    );

    let mut h = head(2);
    h.refusal_weights.push(1.0);
    let err = Head::parse(&serde_json::to_string(&h).unwrap(), path).unwrap_err();
    assert!(
        err.message.contains("`refusal_weights` has 3 values"),
        "{err}"
    );

    // A head of the first format (one joint head) is named as such.
    let mut h = head(2);
    h.format_version = 1;
    let err = Head::parse(&serde_json::to_string(&h).unwrap(), path).unwrap_err();
    assert!(
        err.message.contains("format version 1") && err.message.contains("distill the judge again"),
        "{err}"
    );

    let mut h = head(2);
    h.feature_scale[0] = 0.0;
    assert!(Head::parse(&serde_json::to_string(&h).unwrap(), path).is_err());
    let mut h = head(2);
    h.calibration.score_temperature = 0.0;
    assert!(Head::parse(&serde_json::to_string(&h).unwrap(), path).is_err());
    assert!(Head::parse(&serde_json::to_string(&head(2)).unwrap(), path).is_ok());
}

#[test]
fn a_hidden_layer_feeds_the_heads_its_rectified_units() {
    // Two units: max(0, z0 - z1) and max(0, z1 - z0); the score head reads
    // them, so both "z0 far from z1" directions say 5 and "z0 == z1" says
    // 1: what no logistic head on z can say.
    let mut h = head(2);
    h.hidden = Some(HiddenLayer {
        weights: vec![vec![1.0, -1.0], vec![-1.0, 1.0]],
        bias: vec![0.0, 0.0],
    });
    h.score_weights = vec![vec![-2.0, -2.0], vec![2.0, 2.0]];
    h.score_bias = vec![1.0, -1.0];
    h.refusal_weights = vec![0.0, 0.0];
    h.check().unwrap();
    let (logits, _) = h.logits(&[3.0, 1.0]);
    // Units (2, 0): score logits (-4 + 1, 4 - 1).
    assert_eq!(logits, vec![-3.0, 3.0]);
    for (x, score) in [([3.0, 1.0], 5), ([1.0, 3.0], 5), ([2.0, 2.0], 1)] {
        assert_eq!(h.classify(&x).score, score, "{x:?}");
    }

    // Shapes are checked against the layer, and the layer against the
    // features; the messages say which.
    let path = Path::new("/j/head.json");
    let mut bad = h.clone();
    bad.score_weights[0].push(0.5);
    let err = Head::parse(&serde_json::to_string(&bad).unwrap(), path).unwrap_err();
    assert!(
        err.message.contains("the hidden layer has 2 units"),
        "{err}"
    );
    let mut bad = h.clone();
    bad.hidden.as_mut().unwrap().weights[1].pop();
    let err = Head::parse(&serde_json::to_string(&bad).unwrap(), path).unwrap_err();
    assert!(err.message.contains("hidden unit 1 has 1 weights"), "{err}");
    let mut bad = h.clone();
    bad.hidden.as_mut().unwrap().bias[0] = f32::NAN;
    assert!(Head::parse(&serde_json::to_string(&bad).unwrap(), path).is_err());

    // Format-2 heads (no hidden layer) are still read; a newer format is
    // refused by name.
    let mut old = head(2);
    old.format_version = 2;
    assert!(Head::parse(&serde_json::to_string(&old).unwrap(), path).is_ok());
    let text = serde_json::to_string(&h).unwrap();
    assert!(Head::parse(&text, path).is_ok());
    let newer = text.replacen("\"format_version\":3", "\"format_version\":4", 1);
    let err = Head::parse(&newer, path).unwrap_err();
    assert!(
        err.message.contains("format version 4 is not supported"),
        "{err}"
    );
}

#[test]
fn a_head_for_another_encoder_is_refused() {
    let h = head(2);
    let mut other = h.encoder.clone();
    other.sha256 = "cd".repeat(32);
    let err =
        check_encoder(&h, &other, Path::new("j/head.json"), Path::new("j/encoder")).unwrap_err();
    assert_eq!(err.kind, "wrong_encoder");
    assert!(err.message.contains("trained for another encoder"), "{err}");
    assert!(check_encoder(
        &h,
        &h.encoder,
        Path::new("j/head.json"),
        Path::new("j/encoder")
    )
    .is_ok());
}
