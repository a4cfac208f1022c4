//! The dashboard in a real headless Chromium (Debian's `chromium`), driven
//! over the DevTools protocol: the token is asked once, the charts render
//! without console errors, a click opens a run, answers stay blurred until
//! clicked. Screenshots are saved under `target/dashboard/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use safedrift::api::{self, sample, Api};
use safedrift::config;
use safedrift::store::Store;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "dashboard-test-token";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools connection to one page: commands, and the console errors and
/// exceptions seen so far.
struct Page {
    ws: Ws,
    next: u64,
    errors: Vec<String>,
}

impl Page {
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the browser closed the connection")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", v["params"]["exceptionDetails"])),
            Some("Runtime.consoleAPICalled")
                if matches!(
                    v["params"]["type"].as_str(),
                    Some("error" | "warning" | "assert")
                ) =>
            {
                self.errors
                    .push(format!("console: {}", v["params"]["args"]))
            }
            Some("Log.entryAdded")
                if matches!(
                    v["params"]["entry"]["level"].as_str(),
                    Some("error" | "warning")
                ) =>
            {
                self.errors.push(format!("log: {}", v["params"]["entry"]))
            }
            _ => {}
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    async fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The page may still be loading: a missing element is "not yet".
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded).await != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {}",
                self.eval("document.body.innerHTML.slice(0, 2000)").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .send(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn chromium() -> (Browser, Page) {
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary} ({e}): install it with `apt-get install -y chromium` (or set CHROMIUM to its path)"));
    let browser = Browser {
        child,
        _profile: profile,
    };
    // Chromium writes its DevTools port into the profile once it listens.
    let port_file = browser._profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.parse::<u16>().ok()))
        {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not open its DevTools port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut page = Page {
        ws,
        next: 0,
        errors: Vec::new(),
    };
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        page.send(domain, json!({})).await;
    }
    page.send(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    (browser, page)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_renders_charts_opens_a_run_and_blurs_answers_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = format!(
        "data_dir = {:?}\n[api]\ntoken_file = {:?}\n",
        dir.path().join("data").display().to_string(),
        token.display().to_string()
    );
    let config = config::parse(&text, &config::Source::Embedded).unwrap();
    let store = Store::open(&config.data_dir).unwrap();
    sample::fill(
        &store,
        &sample::Shape {
            models: 3,
            checkpoints_per_model: 10,
            prompts_per_run: 88,
            real_drift: true,
            seed: 11,
        },
    )
    .unwrap();
    // An alert with two targets in different delivery states.
    let alert = json!({
        "id": "a_0001", "kind": "firing", "lineage": "drop/acme/assistant-00", "severity": "critical",
        "summary": "harmfulness rate +31 points in acme/assistant-00@ckpt-0010",
        "run_ids": ["r_sample0000c0000009"], "models": ["directory:acme/assistant-00@ckpt-0010"],
        "created_at": "2026-01-02T00:00:00Z",
        "deliveries": {
            "oncall": {"status": "delivered", "attempts": 1, "last_error": null, "next_attempt_ms": 0, "delivered_at": "2026-01-02T00:00:01Z"},
            "slack": {"status": "pending", "attempts": 2, "last_error": "HTTP 503", "next_attempt_ms": 0, "delivered_at": null}
        }
    });
    store
        .tree(safedrift::alerts::record::TREE)
        .unwrap()
        .insert("a_0001", serde_json::to_vec(&alert).unwrap())
        .unwrap();
    let app = api::app(Api::new(store, Arc::new(config)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (_browser, mut page) = chromium().await;
    page.send("Page.navigate", json!({"url": format!("http://{addr}/")}))
        .await;
    // The token is asked for once.
    page.wait_for(
        "the token form",
        "!document.getElementById('token-form').hidden",
    )
    .await;
    page.screenshot("token.png").await;
    page.eval(&format!("document.getElementById('token').value = {TOKEN:?}; document.getElementById('token-form').requestSubmit(); true")).await;
    page.wait_for(
        "the overview",
        "document.body.dataset.loaded === 'models:200'",
    )
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('safedrift.token')").await,
        json!(TOKEN)
    );

    // One section with charts per model compared with a baseline; the
    // baselines themselves are listed below.
    assert_eq!(
        page.eval("document.querySelectorAll('section.model').length")
            .await,
        json!(3)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('table.other-models tr').length")
            .await,
        json!(4)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.timeline').length")
            .await,
        json!(3)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.timeline polygon.band').length")
            .await,
        json!(3)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.timeline polyline.baseline').length")
            .await,
        json!(3)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.timeline circle.pt').length")
            .await,
        json!(30)
    );
    assert!(
        page.eval("document.querySelectorAll('svg.timeline circle.pt.drift').length")
            .await
            .as_u64()
            .unwrap()
            > 0
    );
    // The heatmap: 11 categories x 10 checkpoints per watched model.
    assert_eq!(page.eval("document.querySelector('section.model[data-model=\"directory:acme/assistant-00\"] svg.heatmap').querySelectorAll('rect.cell').length").await, json!(110));
    // Rendered, not just present: the charts have a size on screen.
    assert_eq!(page.eval("[...document.querySelectorAll('svg.timeline, svg.heatmap')].every(s => s.getBoundingClientRect().width > 200 && s.getBoundingClientRect().height > 50)").await, json!(true));
    let shot = page.screenshot("overview.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 20_000);

    // Click into a run.
    page.eval("document.querySelector('section.model[data-model=\"directory:acme/assistant-00\"] a.run-link').click(); true").await;
    page.wait_for(
        "the run page",
        "!!document.querySelector('section.run') && document.body.dataset.loaded === 'models:200'",
    )
    .await;
    assert_eq!(
        page.eval("location.hash").await,
        json!("#/runs/r_sample0000c0000009")
    );
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

    // The alert log with delivery states.
    page.eval("location.hash = '#/alerts'; true").await;
    page.wait_for(
        "the alert log",
        "document.body.dataset.loaded === 'alerts:200' && !!document.querySelector('table.alerts')",
    )
    .await;
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

    // Drain pending events, then: no console errors, no exceptions.
    let _ = page.eval("1").await;
    assert!(page.errors.is_empty(), "console errors: {:#?}", page.errors);
}
