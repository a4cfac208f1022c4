//! Every link safedrift emits opens what it names. The real daemon finds a
//! drifted checkpoint and then a safe one on the project's fake Ollama
//! server and alerts (firing, then resolved) through every format: email
//! (a real SMTP server, aiosmtpd), the signed json webhook, Slack and
//! Alertmanager. Each link found in what the targets received is followed
//! in a real headless Chromium, as from a fresh tab: the dashboard asks for
//! the API token, then the run's page (`{public_url}/runs/ID`) shows that
//! run, and the API link (`{public_url}/api/v1/runs/ID`) its JSON.

mod browser;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Router;
use common::{free_port, get_json, stop, Scratch};
use safedrift_testkit::{spawn, ModelScript, Script};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "alert-links-test-token";
const REFUSAL: &str = "I'm sorry, I can't help.";
const PROMPTS: usize = 20;

// ---------------------------------------------------------------------------
// The targets: a real SMTP server and one HTTP receiver for the webhooks
// ---------------------------------------------------------------------------

struct Smtp {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

impl Smtp {
    async fn start(dir: PathBuf) -> Smtp {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 is needed for the SMTP server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP server starts")
            .unwrap();
        let port = line
            .as_deref()
            .and_then(|l| l.strip_prefix("READY "))
            .and_then(|p| p.parse().ok())
            .expect("the SMTP server (aiosmtpd) did not start: python3 -m pip install -r tests/requirements.txt");
        Smtp {
            port,
            dir,
            _child: child,
        }
    }

    /// The raw messages received, in order.
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

/// Bodies POSTed to each path (`/hook`, `/slack`, `/api/v2/alerts`).
type Received = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

async fn keep(State(got): State<Received>, uri: Uri, body: Bytes) -> StatusCode {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    got.lock()
        .unwrap()
        .entry(uri.path().to_string())
        .or_default()
        .push(v);
    StatusCode::OK
}

async fn receiver() -> (Received, u16) {
    let got = Received::default();
    let app = Router::new()
        .fallback(axum::routing::post(keep))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, port)
}

// ---------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------

/// Every http(s) URL in a text (plain text, HTML attributes, Slack's
/// `<url|label>`).
fn urls_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "<>\"'|`".contains(c))
            .unwrap_or(tail.len());
        out.push(
            tail[..end]
                .trim_end_matches(['.', ',', ';', ':', ')'])
                .to_string(),
        );
        rest = &tail[end..];
    }
    out
}

/// Every URL in the string values of a JSON document.
fn urls_in_json(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(urls_in(s)),
        Value::Array(a) => a.iter().for_each(|v| urls_in_json(v, out)),
        Value::Object(o) => o.values().for_each(|v| urls_in_json(v, out)),
        _ => {}
    }
}

/// What a link names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Link {
    /// The run's page in the dashboard.
    Page(String),
    /// The run's JSON in the API.
    Api(String),
}

fn classify(url: &str, base: &str) -> Link {
    let path = url
        .strip_prefix(base)
        .unwrap_or_else(|| panic!("{url} does not point to the daemon ({base})"));
    if let Some(id) = path.strip_prefix("/api/v1/runs/") {
        Link::Api(id.to_string())
    } else if let Some(id) = path.strip_prefix("/runs/") {
        Link::Page(id.to_string())
    } else {
        panic!("{url}: a link this test does not know how to check")
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_link_in_every_alert_format_opens_the_run_it_names_in_chromium() {
    let script = Script::new()
        .model("base", ModelScript::new(REFUSAL))
        .model(
            "a-drift",
            ModelScript::new(REFUSAL).rule("comply", "Sure, here is how, step by step."),
        )
        .model("b-safe", ModelScript::new(REFUSAL));
    let models = spawn(script).await;
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(tmp.path().join("mail")).await;
    let (got, rx) = receiver().await;
    let port = free_port();
    // Links are built on `public_url`: here another name of the same
    // address, as behind a DNS name.
    let base = format!("http://localhost:{port}");
    let tk = models.addr;
    let s = Scratch::with_config(&format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
public_url = "{base}/"
token_file = "TOKEN_FILE"

[eval]
concurrency = 4
max_new_tokens = 32

[benchmarks.bench]
kind = "jsonl"
path = "BENCH"

[backends.ol]
kind = "openai"
base_url = "http://{tk}/v1"

[watchers.ol]
kind = "ollama"
base_url = "http://{tk}"
models = ["a-drift", "b-safe"]
schedule = "*/1 * * * * *"
baseline = "ol:base"
benchmarks = ["bench"]
judge = "keyword"

[alerting]
group_window = "0s"

[alerts.mail]
kind = "email"
url = "smtp://127.0.0.1:{smtp}"
from = "safedrift@example.com"
to = ["oncall@example.com"]

[alerts.hook]
kind = "webhook"
format = "json"
url = "http://127.0.0.1:{rx}/hook"
secret_file = "SECRET_FILE"

[alerts.chat]
kind = "webhook"
format = "slack"
url = "http://127.0.0.1:{rx}/slack"

[alerts.am]
kind = "webhook"
format = "alertmanager"
url = "http://127.0.0.1:{rx}"
repeat_interval = "1h"
resolve_resend = "1s"
"#,
        smtp = smtp.port
    ));
    let rows: Vec<(String, String, String, bool)> = (0..PROMPTS)
        .map(|i| {
            let verb = if i % 2 == 0 { "comply" } else { "refuse" };
            (
                format!("p{i}"),
                format!("c{}", i % 2),
                format!("Prompt {i}: please {verb}."),
                false,
            )
        })
        .collect();
    let bench = s.jsonl("bench.jsonl", &rows);
    let token = s.write("token", format!("{TOKEN}\n"));
    let secret = s.write(
        "secret",
        "whsec_c2FmZWRyaWZ0LXRlc3Qtc2lnbmluZy1rZXktMDEyMzQ1Njc4OQ==\n",
    );
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("BENCH", bench.to_str().unwrap())
        .replace("TOKEN_FILE", token.to_str().unwrap())
        .replace("SECRET_FILE", secret.to_str().unwrap());
    std::fs::write(s.config(), config).unwrap();
    let check = s.run(&["check-config"]).await;
    assert!(check.status.success(), "{}", common::stderr(&check));

    let mut daemon = s.start_daemon();
    // A firing alert (a-drift) and its resolution (b-safe), everywhere.
    let received = |path: &str| got.lock().unwrap().get(path).map_or(0, Vec::len);
    common::wait_for_daemon(
        &s,
        "the firing and the resolved alert at every target",
        Duration::from_secs(120),
        async || {
            let resolved_at_am = got
                .lock()
                .unwrap()
                .get("/api/v2/alerts")
                .into_iter()
                .flatten()
                .flat_map(|post| post.as_array().cloned().unwrap_or_default())
                .any(|a| {
                    a["endsAt"].as_str().is_some_and(|t| {
                        chrono::DateTime::parse_from_rfc3339(t).unwrap() <= chrono::Utc::now()
                    })
                });
            smtp.mails().len() >= 2
                && received("/hook") >= 2
                && received("/slack") >= 2
                && resolved_at_am
        },
    )
    .await;

    // The runs, by model, from the API.
    let client = reqwest::Client::new();
    let runs = get_json(&client, format!("{base}/api/v1/runs"), TOKEN).await;
    let spec_of: BTreeMap<String, String> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["model"]["spec"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let run_of = |spec: &str| {
        spec_of
            .iter()
            .find(|(_, s)| s.as_str() == spec)
            .unwrap_or_else(|| panic!("no run of {spec}: {runs}"))
            .0
            .clone()
    };
    let (drifted, safe) = (run_of("ollama:a-drift"), run_of("ollama:b-safe"));

    // Every link in what each target received.
    let mut by_format: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for raw in smtp.mails() {
        let links = by_format.entry("email").or_default();
        links.extend(urls_in(&common::mime_part(&raw, "text/plain")));
        links.extend(urls_in(&common::mime_part(&raw, "text/html")));
    }
    for (format, path) in [
        ("webhook json", "/hook"),
        ("slack", "/slack"),
        ("alertmanager", "/api/v2/alerts"),
    ] {
        let mut found = Vec::new();
        for body in got.lock().unwrap().get(path).into_iter().flatten() {
            urls_in_json(body, &mut found);
        }
        by_format.entry(format).or_default().extend(found);
    }
    let page = |id: &str| format!("{base}/runs/{id}");
    let api = |id: &str| format!("{base}/api/v1/runs/{id}");
    for (format, links) in &by_format {
        // Each names the drifted run's page; all but Alertmanager (one
        // alert, resolved in place) its JSON and the resolving run too.
        let mut expected = vec![page(&drifted)];
        if *format != "alertmanager" {
            expected.extend([api(&drifted), page(&safe), api(&safe)]);
        }
        for url in expected {
            assert!(links.contains(&url), "{format} lacks {url}: {links:#?}");
        }
    }
    assert_eq!(by_format.len(), 4, "{by_format:#?}");
    // Alertmanager's own link back, and the run's URL among its
    // annotations.
    let am = got.lock().unwrap()["/api/v2/alerts"].clone();
    let first = &am[0][0];
    assert_eq!(first["generatorURL"], json!(page(&drifted)), "{first:#}");
    assert_eq!(
        first["annotations"]["run_url"],
        json!(page(&drifted)),
        "{first:#}"
    );

    let mut links: BTreeMap<Link, (String, Vec<&str>)> = BTreeMap::new();
    for (format, urls) in &by_format {
        for url in urls {
            links
                .entry(classify(url, &base))
                .or_insert_with(|| (url.clone(), Vec::new()))
                .1
                .push(format);
        }
    }

    assert_eq!(
        links.keys().cloned().collect::<Vec<_>>(),
        {
            let mut all = vec![
                Link::Page(drifted.clone()),
                Link::Api(drifted.clone()),
                Link::Page(safe.clone()),
                Link::Api(safe.clone()),
            ];
            all.sort();
            all
        },
        "{links:#?}"
    );

    // Programs get what they always got: the page's shell at the run's
    // address, the JSON with the token, a bare 401 without it.
    for (link, (url, _)) in &links {
        match link {
            Link::Page(_) => {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200, "{url}");
                assert!(r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html"));
            }
            Link::Api(id) => {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 401, "{url} without the token");
                assert_eq!(get_json(&client, url.clone(), TOKEN).await["id"], json!(id));
            }
        }
    }

    // Each link in a real browser, as opened from a mail client or a chat
    // (a fresh tab: the token is asked for first).
    let (_browser, mut tab) = browser::chromium().await;
    let mut shots = BTreeSet::new();
    for (link, (url, formats)) in &links {
        tab.navigate(url).await;
        tab.give_token(TOKEN).await;
        match link {
            Link::Page(id) => {
                tab.wait_for(
                    &format!("the page of run {id} ({url}, from {formats:?})"),
                    &format!("document.body.dataset.loaded === 'models:200' && document.querySelector('section.run')?.dataset.run === {}", json!(id)),
                )
                .await;
                let heading = tab
                    .eval("document.querySelector('section.run h2').textContent")
                    .await;
                assert!(
                    heading.as_str().unwrap().starts_with(&spec_of[id]),
                    "{url}: {heading}"
                );
                if shots.insert("page") {
                    tab.screenshot("alert-link-run.png").await;
                }
            }
            Link::Api(id) => {
                tab.wait_for(
                    &format!("the JSON of run {id} ({url}, from {formats:?})"),
                    &format!("document.body.dataset.loaded === 'api:200' && document.querySelector('section.api')?.dataset.run === {}", json!(id)),
                )
                .await;
                let text = tab
                    .eval("document.querySelector('pre.json').textContent")
                    .await;
                let doc: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
                assert_eq!(doc["id"], json!(id), "{url}");
                assert_eq!(doc["model"]["spec"], json!(spec_of[id]), "{url}");
                if shots.insert("api") {
                    tab.screenshot("alert-link-api.png").await;
                }
            }
        }
        // The address is the link's, unchanged.
        assert_eq!(tab.eval("location.href").await, json!(url));
        tab.eval("sessionStorage.clear(); true").await;
    }
    assert_eq!(shots.len(), 2);
    tab.assert_no_errors().await;
    stop(&mut daemon).await;
}
