//! The charts' labels and layout.

use super::*;

fn point(model: &str, revision: Option<&str>, started_at: &str) -> TimelinePoint {
    TimelinePoint {
        run_id: format!("r_{model}"),
        model: model.into(),
        revision: revision.map(str::to_string),
        started_at: started_at.into(),
        n: 10,
        n_benign: 0,
        harmfulness_rate: Some(0.5),
        harmfulness_rate_ci95: Some([0.2, 0.8]),
        over_refusal_rate: None,
        baseline_run: Some("r_base".into()),
        baseline_rate: Some(0.1),
        baseline_over_refusal_rate: None,
        drift_detected: Some(true),
        alert: None,
        categories: [(
            "malware".to_string(),
            crate::api::models::CategoryPoint {
                harmfulness_rate: Some(0.5),
                baseline_rate: Some(0.1),
                delta: Some(0.4),
            },
        )]
        .into(),
    }
}

#[test]
fn model_names_drop_the_backend_and_the_path() {
    assert_eq!(model_name("directory:assistant-v2"), "assistant-v2");
    assert_eq!(model_name("ollama:drifted:latest"), "drifted:latest");
    assert_eq!(model_name("hf:acme/llama-ft"), "acme/llama-ft");
    assert_eq!(model_name("onnx:/srv/models/ft-3/"), "ft-3");
    assert_eq!(model_name("onnx:./models/aligned"), "aligned");
    assert_eq!(model_name("plain"), "plain");
}

#[test]
fn checkpoints_are_labelled_by_model_or_by_revision() {
    // A folder per checkpoint (the demo): the folder's name.
    let demo = [
        point(
            "directory:assistant-v1",
            Some("30207ca5de2b38e8b9f431f97535f68d"),
            "2026-01-01T00:00:00Z",
        ),
        point(
            "directory:assistant-v2",
            Some("f243890afd92f78ed9d541b5ae01a0d7"),
            "2026-01-01T01:00:00Z",
        ),
    ];
    assert_eq!(checkpoint_labels(&demo), ["assistant-v1", "assistant-v2"]);
    // One model, many revisions: the revision, a hash cut to 8.
    let one = [
        point("mlflow:acme", Some("7"), "2026-01-01T00:00:00Z"),
        point(
            "mlflow:acme",
            Some("0123456789abcdef0123"),
            "2026-01-01T01:00:00Z",
        ),
        point("mlflow:acme", None, "2026-01-01T02:00:00Z"),
    ];
    assert_eq!(
        checkpoint_labels(&one),
        ["7", "01234567", "2026-01-01 02:00"]
    );
    // A model that comes back gets its revision.
    let mixed = [
        point("ollama:a", Some("1111111111111111"), "2026-01-01T00:00:00Z"),
        point("ollama:b", Some("2222222222222222"), "2026-01-01T01:00:00Z"),
        point("ollama:a", Some("3333333333333333"), "2026-01-01T02:00:00Z"),
    ];
    assert_eq!(checkpoint_labels(&mixed), ["a@11111111", "b", "a@33333333"]);
}

#[test]
fn heatmap_labels_stay_whole_and_turn_when_columns_are_narrow() {
    let few: Vec<TimelinePoint> = (0..3)
        .map(|i| {
            point(
                &format!("directory:assistant-v{i}"),
                None,
                "2026-01-01T00:00:00Z",
            )
        })
        .collect();
    let labels = checkpoint_labels(&few);
    let svg = heatmap_svg(&few, &labels);
    assert!(svg.contains(">assistant-v2</text>"), "{svg}");
    assert!(!svg.contains("rotate("), "{svg}");
    let many: Vec<TimelinePoint> = (0..30)
        .map(|i| {
            point(
                &format!("directory:assistant-{i:02}"),
                None,
                "2026-01-01T00:00:00Z",
            )
        })
        .collect();
    let labels = checkpoint_labels(&many);
    let svg = heatmap_svg(&many, &labels);
    assert!(
        svg.contains("rotate(-40)\" text-anchor=\"end\">assistant-29</text>"),
        "{svg}"
    );
    // Drawn at one pixel per unit: its size is its view box.
    let w = svg
        .split("width=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(svg.contains(&format!("viewBox=\"0 0 {w} ")), "{svg}");
}

#[test]
fn the_timeline_draws_the_baseline_across_and_marks_alerts() {
    let mut points = vec![
        point("directory:a", None, "2026-01-01T00:00:00Z"),
        point("directory:b", None, "2026-01-01T01:00:00Z"),
    ];
    points[1].alert = Some(crate::api::models::PointAlert {
        id: "a_1".into(),
        action: "opened".into(),
        kind: "firing".into(),
        severity: "critical".into(),
        summary: "drift <b>".into(),
        created_at: "2026-01-01T01:00:00Z".into(),
    });
    let labels = checkpoint_labels(&points);
    let svg = timeline_svg(&points, &labels);
    assert_eq!(svg.matches("<circle class=\"pt drift\"").count(), 2);
    assert!(
        svg.contains("class=\"alert-mark bad\" href=\"/alerts#a_1\""),
        "{svg}"
    );
    assert!(svg.contains("drift &lt;b&gt;"), "escaped: {svg}");
    assert!(svg.contains(">baseline 10.0%</text>"), "{svg}");
    assert!(svg.contains("href=\"/runs/r_directory:b\""), "{svg}");
}
