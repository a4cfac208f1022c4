use super::*;

fn p(id: &str, cat: &str) -> Prompt {
    Prompt {
        id: id.into(),
        category: cat.into(),
        text: id.into(),
        benign: false,
        expected: Vec::new(),
        offdomain: false,
        target: None,
        attack: None,
    }
}

#[test]
fn limit_takes_categories_in_turn_and_keeps_order() {
    let prompts = vec![
        p("a1", "a"),
        p("a2", "a"),
        p("a3", "a"),
        p("b1", "b"),
        p("c1", "c"),
        p("c2", "c"),
    ];
    let ids = |v: Vec<Prompt>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(limit_prompts(&prompts, Some(4))),
        ["a1", "a2", "b1", "c1"]
    );
    assert_eq!(ids(limit_prompts(&prompts, Some(0))), Vec::<String>::new());
    assert_eq!(limit_prompts(&prompts, Some(100)).len(), 6);
    assert_eq!(limit_prompts(&prompts, None).len(), 6);
}

#[test]
fn the_audit_sample_is_deterministic_and_about_the_fraction() {
    let picked = (0..2000)
        .filter(|i| in_audit_sample("hex-phi", &format!("p{i}"), 0.1))
        .count();
    assert!((150..250).contains(&picked), "{picked}");
    let again = (0..2000)
        .filter(|i| in_audit_sample("hex-phi", &format!("p{i}"), 0.1))
        .count();
    assert_eq!(picked, again);
    assert!(!in_audit_sample("b", "p", 0.0));
    assert!(in_audit_sample("b", "p", 1.0));
}
