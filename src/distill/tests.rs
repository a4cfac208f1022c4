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

#[test]
fn a_separable_toy_set_is_learned_perfectly() {
    let (x, y) = toy();
    let fitted = train(&x, &y, &TrainOptions::default()).unwrap();
    assert_eq!(fitted.labels, vec![l(1, true), l(3, false), l(5, false)]);
    let head = Head {
        format_version: HEAD_FORMAT_VERSION,
        encoder: EncoderIdentity {
            name: "toy".into(),
            sha256: "0".into(),
            hidden_size: 4,
            max_seq_length: 8,
        },
        features: Features::Response,
        labels: fitted.labels.clone(),
        feature_mean: fitted.mean.clone(),
        feature_scale: fitted.scale.clone(),
        weights: fitted.weights.clone(),
        bias: fitted.bias.clone(),
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
    };
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
}

#[test]
fn training_is_deterministic() {
    let (x, y) = toy();
    let a = train(&x, &y, &TrainOptions::default()).unwrap();
    let b = train(&x, &y, &TrainOptions::default()).unwrap();
    assert_eq!(a, b);
    let c = train(
        &x,
        &y,
        &TrainOptions {
            l2: 1.0,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_ne!(a, c, "the penalty changes the weights");
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
    assert!(Selection::parse("model=").is_err());
    assert_eq!(
        Selection::parse("run=r_1").unwrap(),
        Selection::Run("r_1".into())
    );
}
