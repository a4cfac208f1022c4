//! A real headless Chromium (Debian's `chromium`, or `$CHROMIUM`) driven
//! over the DevTools protocol, for the tests that look at the dashboard as
//! people do: `tests/dashboard.rs` and `tests/alert_links.rs`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools connection to one page: commands, and the console errors and
/// exceptions seen so far.
pub struct Page {
    ws: Ws,
    next: u64,
    pub errors: Vec<String>,
}

impl Page {
    pub async fn send(&mut self, method: &str, params: Value) -> Value {
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

    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    pub async fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The page may still be loading: a missing element is "not yet".
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded).await != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; at {}; page: {}",
                self.eval("location.href").await,
                self.eval("document.body ? document.body.innerHTML.slice(0, 2000) : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `url` in this page, as following a link from elsewhere (a mail
    /// client, a chat message) does; fails when it does not load.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.send("Page.navigate", json!({ "url": url })).await;
        assert!(
            r.get("errorText").is_none(),
            "{url} did not open: {}",
            r["errorText"]
        );
    }

    /// Types `token` into the dashboard's token form and submits it.
    pub async fn give_token(&mut self, token: &str) {
        self.wait_for(
            "the token form",
            "!document.getElementById('token-form').hidden",
        )
        .await;
        self.eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('token-form').requestSubmit(); true",
            json!(token)
        ))
        .await;
    }

    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
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

    /// Forgets the console errors seen so far that mention `what` (an
    /// error the test caused on purpose).
    pub fn forget_errors(&mut self, what: &str) {
        self.errors.retain(|e| !e.contains(what));
    }

    /// Drains pending events, then fails on any console error or exception.
    pub async fn assert_no_errors(&mut self) {
        let _ = self.eval("1").await;
        assert!(self.errors.is_empty(), "console errors: {:#?}", self.errors);
    }
}

pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts a headless Chromium with a fresh profile and connects to its
/// page (1400 x 1000).
pub async fn chromium() -> (Browser, Page) {
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
