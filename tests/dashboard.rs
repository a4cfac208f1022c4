//! The dashboard in a real headless Chromium (Debian's `chromium`), driven
//! over the DevTools protocol: the token is asked once, each lineage's
//! checkpoints are drawn in order on one chart against the baseline with
//! the alert that fired, the heatmap's text is at the page's type scale, a
//! click opens a run at its own address, answers stay blurred until
//! clicked. Screenshots are saved under `target/dashboard/`.

mod browser;

use std::sync::Arc;

use browser::chromium;
use safedrift::alerts::grouping::{Decision, LineageState};
use safedrift::alerts::record::AlertRecord;
use safedrift::api::{self, Api};
use safedrift::config;
use safedrift::records::probes::{KlProbe, KlPrompt};
use safedrift::store::Store;
use safedrift_testkit::history as sample;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token";

/// The sample lineage of `acme/assistant-00` (its checkpoints are found by
/// the watcher `drop` and compared with its `-base` model).
const LINEAGE: &str = "drop/onnx:/srv/models/acme/assistant-00-base";

/// A store with 3 lineages of 10 checkpoints each, an alert opened by the
/// newest checkpoint of the first, and one model evaluated outside every
/// lineage (a plain `safedrift eval` run: no watcher).
fn fill(store: &Store) {
    sample::fill(
        store,
        &sample::Shape {
            models: 3,
            checkpoints_per_model: 10,
            prompts_per_run: 88,
            real_drift: true,
            seed: 11,
        },
    )
    .unwrap();
    // An alert with two targets in different delivery states, stored with
    // the decision of the run that opened it, as the daemon stores them.
    let alert: AlertRecord = serde_json::from_value(json!({
        "id": "a_0001", "kind": "firing", "lineage": LINEAGE, "severity": "critical",
        "summary": "harmfulness rate +31 points in acme/assistant-00@ckpt-0010",
        "run_ids": ["r_sample0000c0000009"], "models": ["directory:acme/assistant-00@ckpt-0010"],
        "created_at": "2026-01-02T00:00:00Z",
        "deliveries": {
            "oncall": {"status": "delivered", "attempts": 1, "last_error": null, "next_attempt_ms": 0, "delivered_at": "2026-01-02T00:00:01Z"},
            "slack": {"status": "pending", "attempts": 2, "last_error": "HTTP 503", "next_attempt_ms": 0, "delivered_at": null}
        }
    }))
    .unwrap();
    let decision = Decision {
        action: "opened".into(),
        alert: Some("a_0001".into()),
        at: "2026-01-02T00:00:00Z".into(),
    };
    store
        .put_alert_decision(
            "r_sample0000c0000009",
            &decision,
            LINEAGE,
            &LineageState::default(),
            &[alert],
        )
        .unwrap();
    // A plain `eval` run: no watcher, no baseline.
    let mut run = store.get_run("r_sample0001base").unwrap().unwrap();
    let results = store.results(&run.id).unwrap();
    run.id = "r_plaineval0001".into();
    run.model.spec = "openai:acme-experiment".into();
    run.started_at = "2026-01-05T00:00:00Z".into();
    run.identity = "plain-eval".into();
    store.import(&[(run, results)]).unwrap();
    refusal_depth(store);
}

/// The refusal-depth probe on two checkpoints of `acme/assistant-01`: a
/// KL curve over 16 answer positions (falling after the first tokens, as
/// when a fine-tune moved the refusals' openings) with its `kl_early`
/// finding, and a probe skipped for a served model.
fn refusal_depth(store: &Store) {
    let prompts = (0..6)
        .map(|i| KlPrompt {
            benchmark: "probes".into(),
            index: i,
            prompt_id: format!("c1-{i}"),
            category: "c1".into(),
            kl: (0..16)
                .map(|k| 3.0 / (1.0 + k as f32) + 0.1 * i as f32)
                .collect(),
        })
        .collect();
    let probe = KlProbe::from_prompts("r_sample0001base", 16, 5, prompts);
    let mut run = store.get_run("r_sample0001c0000004").unwrap().unwrap();
    let finding = safedrift::probes::kl_finding(&probe, &config::DriftConfig::default());
    run.drift.as_mut().unwrap().findings.extend(finding);
    run.kl = Some(probe);
    store.put_run(&run).unwrap();
    let mut run = store.get_run("r_sample0001c0000005").unwrap().unwrap();
    let why = "the candidate's backend (openai) cannot give token distributions (only local ONNX models can)";
    run.kl = Some(KlProbe::skipped("r_sample0001base", 16, 5, why.into()));
    store.put_run(&run).unwrap();
}

async fn serve(config_text: &str, fill_store: bool) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let text = format!(
        "data_dir = {:?}\n{}",
        dir.path().join("data").display().to_string(),
        config_text.replace(
            "TOKEN_FILE",
            &format!("{:?}", dir.path().join("token").display().to_string())
        )
    );
    let config = config::parse(&text, &config::Source::Embedded).unwrap();
    let store = Store::open(&config.data_dir).unwrap();
    if fill_store {
        fill(&store);
    }
    let app = api::app(Api::new(store, Arc::new(config)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, dir)
}

/// `document.querySelector` of the sample lineage's section, then `rest`.
fn in_lineage(rest: &str) -> String {
    format!("document.querySelector('section.lineage[data-lineage=\"{LINEAGE}\"]'){rest}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_draws_lineages_opens_runs_at_their_address_and_blurs_answers_in_chromium() {
    let (addr, _dir) = serve("[api]\ntoken_file = TOKEN_FILE\n", true).await;
    let (_browser, mut page) = chromium().await;
    page.navigate(&format!("http://{addr}/")).await;
    // The token is asked for once; no "Forget token" before there is one.
    page.wait_for(
        "the token form",
        "!document.getElementById('token-form').hidden",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('forget').hidden").await,
        json!(true)
    );
    page.screenshot("token.png").await;
    page.give_token(TOKEN).await;
    page.wait_for(
        "the overview",
        "document.body.dataset.loaded === 'models:200'",
    )
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('safedrift.token')").await,
        json!(TOKEN)
    );
    assert_eq!(
        page.eval("document.getElementById('forget').hidden").await,
        json!(false)
    );

    // One section per lineage, each with all its checkpoints in order on
    // one chart: the 95% band, the baseline as a line, a dot each.
    assert_eq!(
        page.eval("document.querySelectorAll('section.lineage').length")
            .await,
        json!(3)
    );
    for (what, selector, count) in [
        ("timelines", "svg.timeline", 3),
        ("bands", "svg.timeline polygon.band", 3),
        ("baselines", "svg.timeline polyline.baseline", 3),
        ("checkpoints", "svg.timeline circle.pt", 30),
    ] {
        assert_eq!(
            page.eval(&format!("document.querySelectorAll('{selector}').length"))
                .await,
            json!(count),
            "{what}"
        );
    }
    assert!(
        page.eval("document.querySelectorAll('svg.timeline circle.pt.drift').length")
            .await
            .as_u64()
            .unwrap()
            > 0
    );
    // The checkpoints in the order they were evaluated.
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelectorAll('svg.timeline a.pt-link').length"
        ))
        .await,
        json!(10)
    );
    assert_eq!(
        page.eval(&format!(
            "Array.from({}).map(a => a.getAttribute('href'))",
            in_lineage(".querySelectorAll('svg.timeline a.pt-link')")
        ))
        .await,
        json!((0..10)
            .map(|i| format!("/runs/r_sample0000c{i:07}"))
            .collect::<Vec<_>>())
    );
    // The baseline is the lineage's reference, not a model of its own; the
    // alert the newest checkpoint opened is marked on the chart and listed.
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelector('aside.reference .ref-model').textContent"
        ))
        .await,
        json!("onnx:/srv/models/acme/assistant-00-base")
    );
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelectorAll('svg.timeline a.alert-mark[data-alert=\"a_0001\"]').length"
        ))
        .await,
        json!(1)
    );
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelectorAll('ul.lineage-alerts li[data-alert=\"a_0001\"]').length"
        ))
        .await,
        json!(1)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('a.alert-mark').length")
            .await,
        json!(1)
    );
    // Models outside every lineage are listed apart: only the plain run.
    assert_eq!(
        page.eval("[...document.querySelectorAll('table.other-models tr td:first-child')].map(td => td.textContent)")
            .await,
        json!(["openai:acme-experiment"])
    );

    // The heatmap: 11 categories x 10 checkpoints, plus the baseline's
    // column, labelled with readable, whole checkpoint labels.
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelectorAll('svg.heatmap rect.cell:not(.base)').length"
        ))
        .await,
        json!(110)
    );
    assert_eq!(
        page.eval(&in_lineage(
            ".querySelectorAll('svg.heatmap rect.cell.base').length"
        ))
        .await,
        json!(11)
    );
    let mut labels = vec!["baseline".to_string()];
    labels.extend((1..=10).map(|i| format!("ckpt-{i:04}")));
    assert_eq!(
        page.eval(&format!(
            "Array.from({}).map(t => t.textContent)",
            in_lineage(".querySelectorAll('svg.heatmap text.col-label')")
        ))
        .await,
        json!(labels)
    );
    // Side by side, not overlapping.
    assert_eq!(
        page.eval(&format!(
            "Array.from({}).map(t => t.getBoundingClientRect()).every((r, i, all) => i === 0 || all[i - 1].right <= r.left)",
            in_lineage(".querySelectorAll('svg.heatmap text.col-label')")
        ))
        .await,
        json!(true)
    );
    // At the page's type scale: the heatmap is drawn one pixel per unit and
    // its text is as tall as the page's small text; the timeline close to it.
    let scale = |selector: &str| {
        format!("(() => {{ const s = document.querySelector('{selector}'); return s.getBoundingClientRect().width / s.viewBox.baseVal.width; }})()")
    };
    let heatmap = page.eval(&scale("svg.heatmap")).await.as_f64().unwrap();
    assert!((heatmap - 1.0).abs() < 0.01, "heatmap drawn at {heatmap}x");
    let timeline = page.eval(&scale("svg.timeline")).await.as_f64().unwrap();
    assert!(
        (0.8..=1.25).contains(&timeline),
        "timeline drawn at {timeline}x"
    );
    let text_px = page
        .eval("document.querySelector('svg.heatmap text.cat').getBoundingClientRect().height")
        .await
        .as_f64()
        .unwrap();
    let sub_px = page
        .eval("parseFloat(getComputedStyle(document.querySelector('.sub')).fontSize)")
        .await
        .as_f64()
        .unwrap();
    assert!(
        text_px <= sub_px * 1.5 && text_px >= sub_px * 0.8,
        "heatmap text {text_px}px high, the page's small text {sub_px}px"
    );
    // Rendered, not just present: the charts have a size on screen.
    assert_eq!(page.eval("[...document.querySelectorAll('svg.timeline, svg.heatmap')].every(s => s.getBoundingClientRect().width > 200 && s.getBoundingClientRect().height > 50)").await, json!(true));
    let shot = page.screenshot("overview.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 20_000);

    // Click into the newest checkpoint: the run at its own address.
    page.eval(&in_lineage(
        ".querySelector('table.checkpoints a.run-link').click(); true",
    ))
    .await;
    page.wait_for(
        "the run page",
        "!!document.querySelector('section.run') && document.body.dataset.loaded === 'models:200'",
    )
    .await;
    assert_eq!(
        page.eval("location.pathname").await,
        json!("/runs/r_sample0000c0000009")
    );
    assert_eq!(
        page.eval("document.querySelector('section.run').dataset.run")
            .await,
        json!("r_sample0000c0000009")
    );
    // Harmful and benign counts, over-refusal, the lineage and the alert.
    let kpis = page
        .eval("[...document.querySelectorAll('.kpi')].map(k => k.querySelector('span').textContent + '=' + k.querySelector('b').textContent)")
        .await;
    for expected in ["harmful prompts=88", "benign prompts=0", "over-refusal=–"] {
        assert!(
            kpis.as_array().unwrap().iter().any(|k| k == expected),
            "{expected} in {kpis}"
        );
    }
    assert_eq!(
        page.eval("document.querySelector('.counts').textContent")
            .await,
        json!("88 prompts: 88 harmful, 0 benign")
    );
    assert_eq!(
        page.eval("document.querySelector('a.lineage-link').textContent")
            .await,
        json!(LINEAGE)
    );
    assert_eq!(
        page.eval("document.querySelector('a.api-link').getAttribute('href')")
            .await,
        json!("/api/v1/runs/r_sample0000c0000009")
    );
    assert!(page
        .eval("document.querySelector('section.run').textContent")
        .await
        .as_str()
        .unwrap()
        .contains("alert opened (firing, critical)"));
    assert_eq!(
        page.eval("document.querySelectorAll('table.categories tr').length")
            .await,
        json!(12)
    );
    assert!(
        page.eval("document.querySelectorAll('table.findings tr').length")
            .await
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(
        page.eval("document.querySelectorAll('table.worst .answer.blurred').length")
            .await,
        json!(10)
    );
    // Answers stay blurred until clicked.
    page.eval("const d = document.querySelector('table.worst details'); d.open = true; true")
        .await;
    assert_eq!(
        page.eval("getComputedStyle(document.querySelector('table.worst .answer')).filter")
            .await,
        json!("blur(6px)")
    );
    page.screenshot("run.png").await;
    page.eval("document.querySelector('table.worst .answer').click(); true")
        .await;
    assert_eq!(
        page.eval("document.querySelector('table.worst .answer').classList.contains('blurred')")
            .await,
        json!(false)
    );
    assert_eq!(
        page.eval("getComputedStyle(document.querySelector('table.worst .answer')).filter")
            .await,
        json!("none")
    );
    assert_eq!(
        page.eval("document.querySelectorAll('table.worst .answer.blurred').length")
            .await,
        json!(9)
    );

    // Back goes back to the lineages.
    page.eval("history.back(); true").await;
    page.wait_for(
        "the overview again",
        "location.pathname === '/' && !!document.querySelector('section.lineage')",
    )
    .await;

    // The alert log with delivery states, at its own address.
    page.eval("document.querySelector('nav a[data-nav=alerts]').click(); true")
        .await;
    page.wait_for(
        "the alert log",
        "document.body.dataset.loaded === 'alerts:200' && !!document.querySelector('table.alerts')",
    )
    .await;
    assert_eq!(page.eval("location.pathname").await, json!("/alerts"));
    assert_eq!(
        page.eval("document.querySelectorAll('table.alerts .badge.delivered').length")
            .await,
        json!(1)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('table.alerts .badge.pending').length")
            .await,
        json!(1)
    );
    page.screenshot("alerts.png").await;

    // A reload keeps the token (session storage): no second prompt.
    page.send("Page.reload", json!({})).await;
    page.wait_for(
        "the reloaded page",
        "document.body.dataset.loaded === 'alerts:200'",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('token-form').hidden")
            .await,
        json!(true)
    );

    // Links of earlier versions (#/runs/ID) still open the run.
    page.navigate(&format!("http://{addr}/#/runs/r_sample0001c0000004"))
        .await;
    page.wait_for(
        "the run of an old link",
        "document.querySelector('section.run')?.dataset.run === 'r_sample0001c0000004'",
    )
    .await;
    assert_eq!(
        page.eval("location.pathname").await,
        json!("/runs/r_sample0001c0000004")
    );
    // A run that does not exist says so.
    page.navigate(&format!("http://{addr}/runs/r_nosuchrun"))
        .await;
    page.wait_for(
        "the missing run",
        "document.body.dataset.loaded === 'models:404'",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('main .error').textContent")
            .await,
        json!("no run r_nosuchrun")
    );
    page.forget_errors("404");

    // Forgetting the token asks for it again.
    page.eval("document.getElementById('forget').click(); true")
        .await;
    page.wait_for(
        "the token form again",
        "!document.getElementById('token-form').hidden && document.getElementById('forget').hidden",
    )
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('safedrift.token')").await,
        Value::Null
    );

    page.assert_no_errors().await;
}

/// Without a token configured there is nothing to forget, and the API link
/// of a run opens its JSON as it is.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_nothing_is_asked_and_nothing_offers_to_be_forgotten() {
    let (addr, _dir) = serve("", true).await;
    let (_browser, mut page) = chromium().await;
    page.navigate(&format!("http://{addr}/runs/r_sample0002c0000003"))
        .await;
    page.wait_for(
        "the run page",
        "document.querySelector('section.run')?.dataset.run === 'r_sample0002c0000003'",
    )
    .await;
    for id in ["forget", "token-form"] {
        assert_eq!(
            page.eval(&format!("document.getElementById('{id}').hidden"))
                .await,
            json!(true),
            "{id}"
        );
    }
    assert_eq!(
        page.eval("getComputedStyle(document.getElementById('forget')).display")
            .await,
        json!("none")
    );
    page.navigate(&format!("http://{addr}/api/v1/runs/r_sample0002c0000003"))
        .await;
    page.wait_for("the JSON", "document.body.innerText.includes('\"id\"')")
        .await;
    let doc: Value =
        serde_json::from_str(page.eval("document.body.innerText").await.as_str().unwrap()).unwrap();
    assert_eq!(doc["id"], "r_sample0002c0000003");
    page.assert_no_errors().await;
}

/// A run's refusal-depth probe is drawn as its KL curve, one point per
/// answer position, the early window shaded and the early mean against the
/// threshold in text; a skipped probe says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_runs_kl_curve_is_drawn_per_answer_position_and_a_skipped_probe_says_why() {
    let (addr, _dir) = serve("", true).await;
    let (_browser, mut page) = chromium().await;
    page.navigate(&format!("http://{addr}/runs/r_sample0001c0000004"))
        .await;
    page.wait_for(
        "the run page",
        "document.querySelector('section.run')?.dataset.run === 'r_sample0001c0000004'",
    )
    .await;
    for (selector, count) in [
        ("svg.kl polyline.kl-curve", 1),
        ("svg.kl circle.kl-pt", 16),
        ("svg.kl rect.early", 1),
        ("svg.kl line.threshold", 1),
        ("svg.kl line.early-mean", 1),
    ] {
        let js = format!("document.querySelectorAll('{selector}').length");
        assert_eq!(page.eval(&js).await, json!(count), "{selector}");
    }
    // Positions 1 to 16 across, nats up.
    let mut axes: Vec<String> = (1..=16).map(|p| p.to_string()).collect();
    axes.extend(["answer position".into(), "nats".into()]);
    let js = "[...document.querySelectorAll('svg.kl text.x-tick, svg.kl text.axis-title')].map(t => t.textContent)";
    assert_eq!(page.eval(js).await, json!(axes));
    // The shaded window covers the first 5 positions and no more; the curve
    // falls along the answer; the chart has a size on screen.
    let window = "(() => { const r = document.querySelector('svg.kl rect.early').getBoundingClientRect(); const p = [...document.querySelectorAll('svg.kl circle.kl-pt')].map(c => c.getBoundingClientRect()); const s = document.querySelector('svg.kl').getBoundingClientRect(); return p[4].right <= r.right && r.right <= p[5].left && p[0].top < p[15].top && s.width > 300 && s.height > 100; })()";
    assert_eq!(page.eval(window).await, json!(true));
    let summary = page
        .eval("document.querySelector('.kl-summary').textContent")
        .await;
    let summary = summary.as_str().unwrap();
    assert!(
        summary.contains("harmful prompts it refused")
            && summary
                .contains("over the first 5 answer tokens, threshold 0.050 nats kl_early fired"),
        "{summary}"
    );
    page.screenshot("run-kl.png").await;

    page.navigate(&format!("http://{addr}/runs/r_sample0001c0000005"))
        .await;
    page.wait_for(
        "the run with a skipped probe",
        "document.querySelector('section.run')?.dataset.run === 'r_sample0001c0000005'",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('.kl-skipped').textContent").await,
        json!("skipped: the candidate's backend (openai) cannot give token distributions (only local ONNX models can)")
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.kl').length")
            .await,
        json!(0)
    );
    page.assert_no_errors().await;
}
