//! Alerts end to end, against real servers on loopback ports: an SMTP server
//! (aiosmtpd, started from tests/smtp_sink.py), a webhook receiver that
//! verifies Standard Webhooks signatures and counts deliveries per id, a
//! Slack-shaped and an Alertmanager-shaped receiver. The real daemon finds
//! drifted checkpoints on the project's fake Ollama server; it is killed with
//! SIGKILL before and during deliveries, and targets go down and come back.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use common::{free_port, get_json, kill9, stop, Scratch};
use hmac::{Hmac, Mac};
use safedrift::alerts::record::{AlertKind, DeliveryStatus};
use safedrift::store::Store;
use safedrift_testkit::{spawn, ModelScript, Script, TestServer};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The signing secret of the json webhooks (never to appear in a message).
const SECRET_B64: &str = "c2FmZWRyaWZ0LXRlc3Qtc2lnbmluZy1rZXktMDEyMzQ1Njc4OQ==";
/// What drifted models answer (model output: never to appear in a message).
const HARMFUL_ANSWER: &str = "Sure, here is exactly how to do it step by step.";
const PROMPTS: usize = 40;

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// SMTP: aiosmtpd
// ---------------------------------------------------------------------------

struct Smtp {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

#[derive(Debug)]
struct Mail {
    rcpt_tos: Vec<String>,
    raw: String,
}

impl Smtp {
    async fn start(dir: PathBuf) -> Smtp {
        Smtp::start_with(dir, &[]).await
    }

    /// `args`: the sink's options (TLS mode and certificate, credentials).
    async fn start_with(dir: PathBuf, args: &[&str]) -> Smtp {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 is needed for the SMTP tests");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP server starts")
            .unwrap();
        let Some(port) = line
            .as_deref()
            .and_then(|l| l.strip_prefix("READY "))
            .and_then(|p| p.parse().ok())
        else {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
            panic!(
                "the SMTP server (aiosmtpd) did not start: {err}\n\
                 install it with: python3 -m pip install -r tests/requirements.txt"
            );
        };
        Smtp {
            port,
            dir,
            _child: child,
        }
    }

    fn mails(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let env: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(p.with_extension("json")).unwrap(),
                )
                .unwrap();
                Mail {
                    rcpt_tos: env["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                    raw: std::fs::read_to_string(&p).unwrap(),
                }
            })
            .collect()
    }
}

impl Mail {
    fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with(' ') || line.starts_with('\t') {
                    v.push_str(line.trim_start());
                    continue;
                }
                return value;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }

    /// The decoded bodies of the parts with this content type.
    fn part(&self, content_type: &str) -> String {
        common::mime_part(&self.raw, content_type)
    }
}

// ---------------------------------------------------------------------------
// Webhook receivers
// ---------------------------------------------------------------------------

/// A request as received: its headers and body.
type Captured = (Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct Received {
    /// Verified json deliveries per webhook-id (answered 2xx).
    verified: BTreeMap<String, usize>,
    /// Bodies of verified deliveries.
    bodies: Vec<serde_json::Value>,
    /// Deliveries that failed verification.
    rejected: Vec<String>,
    /// The last verified request, for replay tests: (headers, body).
    last: Option<Captured>,
    /// Slack messages.
    slack: Vec<serde_json::Value>,
    /// Alertmanager POSTs (each a list of alerts).
    alertmanager: Vec<serde_json::Value>,
    /// Requests started and not answered (the daemon was killed meanwhile).
    held: usize,
}

struct Receiver {
    key: Vec<u8>,
    received: Mutex<Received>,
    /// While set, json deliveries are held open without an answer.
    hold: Mutex<bool>,
    held_now: Notify,
    /// Added to the receiver's clock (stale timestamp tests).
    clock_skew_s: Mutex<i64>,
}

type Shared = Arc<Receiver>;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard Webhooks verification, written from the spec (not with the
/// daemon's code): HMAC-SHA256 over "{id}.{ts}.{body}", base64, `v1,` prefix,
/// 5 minutes of tolerance, constant-time comparison.
fn verify(r: &Receiver, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(format!("missing {n}"))
    };
    let id = h("webhook-id")?;
    let ts = h("webhook-timestamp")?;
    let sigs = h("webhook-signature")?;
    let t: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    let now = now_s() + *r.clock_skew_s.lock().unwrap();
    if (now - t).abs() > 300 {
        return Err("stale timestamp".into());
    }
    for sig in sigs.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&r.key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&given).is_ok() {
            return Ok(id);
        }
    }
    Err("bad signature".into())
}

async fn hook(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = match verify(&r, &headers, &body) {
        Ok(id) => id,
        Err(e) => {
            r.received.lock().unwrap().rejected.push(e);
            return StatusCode::UNAUTHORIZED;
        }
    };
    let hold = *r.hold.lock().unwrap();
    if hold {
        r.received.lock().unwrap().held += 1;
        r.held_now.notify_one();
        // Never answers: the request ends when the sender goes away.
        std::future::pending::<()>().await;
    }
    let mut rec = r.received.lock().unwrap();
    *rec.verified.entry(id).or_default() += 1;
    rec.bodies.push(serde_json::from_slice(&body).unwrap());
    rec.last = Some((
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body.to_vec(),
    ));
    StatusCode::NO_CONTENT
}

async fn slack(State(r): State<Shared>, body: Bytes) -> (StatusCode, &'static str) {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "invalid_payload"),
    };
    if v["text"].as_str().is_none_or(str::is_empty) {
        return (StatusCode::BAD_REQUEST, "no_text");
    }
    r.received.lock().unwrap().slack.push(v);
    (StatusCode::OK, "ok")
}

/// Alertmanager's `POST /api/v2/alerts`: a list of alerts, each with labels
/// (alertname required) and RFC 3339 times; 400 otherwise, like the real one.
async fn am_alerts(State(r): State<Shared>, body: Bytes) -> (StatusCode, String) {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{{\"message\":\"{e}\"}}")),
    };
    let Some(list) = v.as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            "{\"message\":\"expected a list\"}".into(),
        );
    };
    for a in list {
        let ok = a["labels"]["alertname"].is_string()
            && ["startsAt", "endsAt"].iter().all(|k| {
                a[k].as_str()
                    .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
            });
        if !ok {
            return (
                StatusCode::BAD_REQUEST,
                "{\"message\":\"invalid alert\"}".into(),
            );
        }
    }
    r.received.lock().unwrap().alertmanager.push(v);
    (StatusCode::OK, String::new())
}

async fn serve_receiver(listener: tokio::net::TcpListener) -> Shared {
    let shared = Arc::new(Receiver {
        key: base64::engine::general_purpose::STANDARD
            .decode(SECRET_B64)
            .unwrap(),
        received: Mutex::new(Received::default()),
        hold: Mutex::new(false),
        held_now: Notify::new(),
        clock_skew_s: Mutex::new(0),
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/slack", post(slack))
        .route("/api/v2/alerts", post(am_alerts))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    shared
}

async fn receiver() -> (Shared, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (serve_receiver(listener).await, port)
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// A fake Ollama with a safe base model and the given candidates; `true`
/// candidates comply with half the prompts (drift), the others refuse.
async fn models(candidates: &[(&str, bool)]) -> TestServer {
    let mut script = Script::new().model("base", ModelScript::new("I'm sorry, I can't help."));
    for (name, drifts) in candidates {
        let m = ModelScript::new("I'm sorry, I can't help.");
        script = script.model(
            *name,
            if *drifts {
                m.rule("comply", HARMFUL_ANSWER)
            } else {
                m
            },
        );
    }
    spawn(script).await
}

fn setup(server: &TestServer, port: u16, candidates: &[&str], alerts: &str) -> Scratch {
    let tk = server.addr;
    let models: Vec<String> = candidates.iter().map(|c| format!("{c:?}")).collect();
    let s = Scratch::with_config(&format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[eval]
concurrency = 4
max_new_tokens = 64

[benchmarks.bench]
kind = "jsonl"
path = "BENCH"

[backends.ol]
kind = "openai"
base_url = "http://{tk}/v1"

[watchers.ol]
kind = "ollama"
base_url = "http://{tk}"
models = [{}]
schedule = "*/1 * * * * *"
baseline = "ol:base"
benchmarks = ["bench"]
judge = "keyword"
{alerts}
"#,
        models.join(", ")
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
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("BENCH", bench.to_str().unwrap());
    std::fs::write(s.config(), config).unwrap();
    s.write("secret", format!("whsec_{SECRET_B64}\n"));
    s
}

fn json_hook(name: &str, port: u16, s: &Scratch, extra: &str) -> String {
    format!(
        "[alerts.{name}]\nkind = \"webhook\"\nformat = \"json\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = {:?}\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\n{extra}\n",
        s.path("secret").display().to_string()
    )
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Two drifted checkpoints of one lineage inside the group window become one
/// email and one signed webhook per target; the next checkpoint, back within
/// the thresholds, produces exactly one resolved notice.
#[tokio::test(flavor = "multi_thread")]
async fn drifted_checkpoints_give_one_email_and_one_signed_webhook_per_target_then_one_resolved() {
    let server = models(&[("a-drift", true), ("b-drift", true), ("c-safe", false)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(tmp.path().join("mail")).await;
    let (rx, rx_port) = receiver().await;
    let (rx2, rx2_port) = receiver().await;
    let port = free_port();
    let mut alerts = format!(
        "[alerting]\ngroup_window = \"4s\"\n\n[alerts.mail]\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\", \"oncall@example.com\"]\n\n",
        smtp.port
    );
    alerts += &format!(
        "[alerts.chat]\nkind = \"webhook\"\nformat = \"slack\"\nurl_file = \"SLACK_URL_FILE\"\n\n[alerts.am]\nkind = \"webhook\"\nformat = \"alertmanager\"\nurl = \"http://127.0.0.1:{rx_port}\"\nrepeat_interval = \"1s\"\nresolve_resend = \"3s\"\n\n"
    );
    let s = setup(&server, port, &["a-drift", "b-drift", "c-safe"], "");
    alerts += &json_hook("hook", rx_port, &s, "");
    // This one opts in to model output.
    alerts += &json_hook("hook2", rx2_port, &s, "include_responses = true");
    // A Slack webhook URL is itself a secret: it comes from a file.
    let slack_url = s.write("slack_url", format!("http://127.0.0.1:{rx_port}/slack\n"));
    let alerts = alerts.replace("SLACK_URL_FILE", slack_url.to_str().unwrap());
    let config = std::fs::read_to_string(s.config()).unwrap() + &alerts;
    std::fs::write(s.config(), config).unwrap();
    let check = s.run(&["check-config"]).await;
    assert!(check.status.success(), "{}", common::stderr(&check));

    let mut daemon = s.start_daemon();
    wait_for(
        "two emails (firing and resolved)",
        Duration::from_secs(120),
        || smtp.mails().len() >= 2,
    )
    .await;
    wait_for(
        "two json webhooks at each receiver",
        Duration::from_secs(30),
        || {
            let one = {
                let got = rx.received.lock().unwrap();
                got.verified.len() >= 2 && got.slack.len() >= 2
            };
            let two = rx2.received.lock().unwrap().verified.len() >= 2;
            one && two
        },
    )
    .await;
    // Let repeats, retries or duplicates show up if there were any.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop(&mut daemon).await;

    let store = Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let run_of = |model: &str| {
        runs.iter()
            .find(|r| r.model.spec == format!("ollama:{model}"))
            .unwrap_or_else(|| panic!("no run of {model}: {runs:#?}"))
            .clone()
    };
    let (a, b, c) = (run_of("a-drift"), run_of("b-drift"), run_of("c-safe"));
    assert!(a.drift.as_ref().unwrap().detected && b.drift.as_ref().unwrap().detected);
    assert!(!c.drift.as_ref().unwrap().detected);
    let records = safedrift::alerts::record::list(&store, 100, None).unwrap();
    assert_eq!(
        records.len(),
        2,
        "one firing group and one resolved notice: {records:#?}"
    );
    let resolved = &records[0];
    let firing = &records[1];
    assert_eq!(firing.kind, AlertKind::Firing);
    assert_eq!(firing.run_ids, vec![a.id.clone(), b.id.clone()]);
    assert_eq!(resolved.kind, AlertKind::Resolved);
    assert_eq!(resolved.run_ids, vec![c.id.clone()]);
    assert_eq!(resolved.resolves, vec![firing.id.clone()]);
    // 20 of 40 prompts complied: the rate rose by 0.5 against a 0.05 rule
    // (10 thresholds): critical.
    assert_eq!(firing.severity, "critical");
    for r in [firing, resolved] {
        for t in ["mail", "chat", "am", "hook", "hook2"] {
            let d = &r.deliveries[t];
            assert_eq!(d.status, DeliveryStatus::Delivered, "{t}: {d:?}");
            assert_eq!(d.attempts, 1, "{t}: {d:?}");
        }
    }

    // Email: exactly two, to both recipients.
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let (fire_mail, res_mail) = (&mails[0], &mails[1]);
    for m in &mails {
        let mut to = m.rcpt_tos.clone();
        to.sort();
        assert_eq!(to, vec!["mlops@example.com", "oncall@example.com"]);
        assert!(m
            .header("Content-Type")
            .unwrap()
            .contains("multipart/alternative"));
    }
    let subject = fire_mail.header("Subject").unwrap();
    assert_eq!(
        subject,
        "[safedrift] CRITICAL: safety drift in 2 checkpoints of ol/ol:base"
    );
    assert_eq!(
        fire_mail.header("Message-ID").unwrap(),
        format!("<{}@safedrift>", firing.id)
    );
    assert!(res_mail.header("Subject").unwrap().contains("RESOLVED"));
    assert_eq!(
        res_mail.header("Message-ID").unwrap(),
        format!("<{}@safedrift>", resolved.id)
    );
    let text = fire_mail.part("text/plain");
    let html = fire_mail.part("text/html");
    for body in [&text, &html] {
        for run in [&a, &b] {
            let url = format!("http://127.0.0.1:{port}/runs/{}", run.id);
            let api = format!("http://127.0.0.1:{port}/api/v1/runs/{}", run.id);
            assert!(
                body.contains(&url) && body.contains(&api),
                "links to {}:\n{body}",
                run.id
            );
            let rev = run.model.revision.clone().unwrap();
            assert!(
                body.contains(&rev),
                "revision of {}:\n{body}",
                run.model.spec
            );
        }
        assert!(
            body.contains("ollama:a-drift") && body.contains("ollama:b-drift"),
            "{body}"
        );
        assert!(body.contains("ol:base"), "{body}");
        assert!(
            !body.contains(HARMFUL_ANSWER),
            "model output in the mail:\n{body}"
        );
        assert!(!body.contains(SECRET_B64), "secret in the mail");
    }
    // The numbers: harmfulness_rate 0.000 -> 0.500, +0.500, with the
    // intervals, per category (c0 complied 20/20: 1.000, c1 0.000).
    let rate_line = text
        .lines()
        .find(|l| l.starts_with("harmfulness_rate "))
        .expect("a harmfulness_rate row");
    assert!(
        rate_line.contains("0.000") && rate_line.contains("0.500") && rate_line.contains("+0.500"),
        "{rate_line}"
    );
    let ci = safedrift::stats::wilson_ci95(20, 40).unwrap();
    assert!(
        rate_line.contains(&format!("[{:.3}, {:.3}]", ci.0, ci.1)),
        "{rate_line}"
    );
    let c0 = text
        .lines()
        .find(|l| l.starts_with("c0 "))
        .expect("category c0");
    assert!(
        c0.contains("1.000") && c0.contains("+1.000") && c0.contains("FIRED"),
        "{c0}"
    );
    assert!(
        text.contains("fired findings:")
            && text.contains("harmfulness_rate: 0.000 -> 0.500 (+0.500"),
        "{text}"
    );
    let res_text = res_mail.part("text/plain");
    assert!(res_text.contains(&format!("/runs/{}", c.id)), "{res_text}");

    // Signed json webhooks: each receiver verified each alert exactly once.
    for r in [&rx, &rx2] {
        let got = r.received.lock().unwrap();
        let expected: BTreeMap<String, usize> = [(firing.id.clone(), 1), (resolved.id.clone(), 1)]
            .into_iter()
            .collect();
        assert_eq!(got.verified, expected);
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        let body = &got.bodies[0];
        assert_eq!(body["type"], "alert.firing");
        assert_eq!(body["data"]["runs"][0]["run_id"], a.id.as_str());
        assert_eq!(got.bodies[1]["type"], "alert.resolved");
        let text = serde_json::to_string(&got.bodies).unwrap();
        assert!(!text.contains(SECRET_B64));
    }
    // Model output only where the target opted in.
    let plain = serde_json::to_string(&rx.received.lock().unwrap().bodies).unwrap();
    assert!(!plain.contains(HARMFUL_ANSWER), "{plain}");
    {
        let got = rx2.received.lock().unwrap();
        let responses = got.bodies[0]["data"]["responses"].as_array().unwrap();
        assert_eq!(responses.len(), 5);
        assert!(responses
            .iter()
            .all(|r| r["response"] == HARMFUL_ANSWER && r["run_id"] == b.id.as_str()));
    }
    // Slack: one message each.
    let got = rx.received.lock().unwrap();
    assert_eq!(got.slack.len(), 2);
    assert!(got.slack[0]["text"].as_str().unwrap().contains("CRITICAL"));
    assert!(got.slack[0]["blocks"].as_array().unwrap().len() >= 3);
    assert!(got.slack[1]["text"].as_str().unwrap().contains("RESOLVED"));
    // Alertmanager: firing alerts (repeated while firing), then the same
    // alert with endsAt in the past, re-sent.
    let am: Vec<&serde_json::Value> = got
        .alertmanager
        .iter()
        .flat_map(|v| v.as_array().unwrap())
        .collect();
    assert!(!am.is_empty());
    // One alert per drifted model, labelled by it; the alert id is an
    // annotation (as a label it would make every alert its own group).
    let mut models = std::collections::BTreeSet::new();
    for alert in &am {
        let labels = alert["labels"].as_object().unwrap();
        let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "alertname",
                "baseline",
                "lineage",
                "model",
                "severity",
                "watcher"
            ],
            "{alert:#?}"
        );
        assert_eq!(alert["labels"]["alertname"], "SafetyDrift");
        assert_eq!(alert["labels"]["lineage"], "ol/ol:base");
        assert_eq!(alert["labels"]["baseline"], "ol:base");
        assert_eq!(alert["labels"]["watcher"], "ol");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["annotations"]["alert_id"], firing.id.as_str());
        let model = alert["labels"]["model"].as_str().unwrap();
        let run = if model == "ollama:a-drift" { &a } else { &b };
        assert_eq!(
            alert["annotations"]["run_url"],
            format!("http://127.0.0.1:{port}/runs/{}", run.id).as_str()
        );
        models.insert(model.to_string());
    }
    assert_eq!(
        models.into_iter().collect::<Vec<_>>(),
        ["ollama:a-drift", "ollama:b-drift"]
    );
    let time = |a: &serde_json::Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap()).unwrap()
    };
    // The first POST is the firing alert: active (endsAt ahead of startsAt).
    assert!(
        time(am[0], "endsAt") > time(am[0], "startsAt"),
        "{:#?}",
        am[0]
    );
    assert_eq!(am[0]["startsAt"], firing.created_at.as_str());
    // Then the resolution: endsAt at the resolution, in the past, re-sent.
    let now = chrono::Utc::now();
    let resolutions: Vec<_> = am
        .iter()
        .filter(|a| a["endsAt"] == resolved.created_at.as_str())
        .collect();
    assert!(
        resolutions.len() >= 2,
        "the resolution is sent and re-sent: {am:#?}"
    );
    assert!(resolutions.iter().all(|a| time(a, "endsAt") <= now));
    let log = s.daemon_log();
    assert!(!log.contains(SECRET_B64), "secret in the log");
}

/// kill -9 after the alert is queued and before any delivery, then again
/// while a webhook delivery is in flight: after the restarts every alert
/// arrived at every receiver, and none twice.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_before_and_during_delivery_delivers_every_alert_once() {
    let server = models(&[("a-drift", true)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(tmp.path().join("mail")).await;
    let (rx, rx_port) = receiver().await;
    let port = free_port();
    let s = setup(&server, port, &["a-drift"], "");
    let alerts = format!(
        "[alerting]\ngroup_window = \"3s\"\n\n[alerts.mail]\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\"]\n\n{}",
        smtp.port,
        json_hook("hook", rx_port, &s, "")
    );
    let config = std::fs::read_to_string(s.config()).unwrap() + &alerts;
    std::fs::write(s.config(), config).unwrap();
    *rx.hold.lock().unwrap() = true;

    // 1. Killed while the alert waits for its group window.
    let mut daemon = s.start_daemon();
    wait_for("the alert to be queued", Duration::from_secs(90), || {
        s.daemon_log().contains("alert queued")
    })
    .await;
    kill9(&mut daemon).await;
    assert!(smtp.mails().is_empty());
    assert_eq!(rx.received.lock().unwrap().held, 0);

    // 2. Restarted: the email goes out, the webhook is held open by the
    // receiver; killed during that delivery.
    let mut daemon = s.start_daemon();
    let held = rx.held_now.notified();
    tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the webhook delivery starts");
    wait_for("the email", Duration::from_secs(30), || {
        smtp.mails().len() == 1
    })
    .await;
    // The email's `delivered` mark is flushed right after the server's 250.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill9(&mut daemon).await;
    assert!(rx.received.lock().unwrap().verified.is_empty());

    // 3. Restarted with the receiver answering: the interrupted delivery is
    // sent again, with the same webhook-id.
    *rx.hold.lock().unwrap() = false;
    let mut daemon = s.start_daemon();
    wait_for("the webhook", Duration::from_secs(30), || {
        !rx.received.lock().unwrap().verified.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut daemon).await;

    let store = Store::open(&s.data_dir()).unwrap();
    let records = safedrift::alerts::record::list(&store, 100, None).unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    let alert = &records[0];
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one email across two kills");
    assert_eq!(
        mails[0].header("Message-ID").unwrap(),
        format!("<{}@safedrift>", alert.id)
    );
    let got = rx.received.lock().unwrap();
    assert_eq!(got.held, 1, "one delivery was cut short by the kill");
    assert_eq!(
        got.verified,
        [(alert.id.clone(), 1)]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        "one answered delivery per webhook-id"
    );
    assert_eq!(alert.deliveries["hook"].status, DeliveryStatus::Delivered);
    assert_eq!(alert.deliveries["hook"].attempts, 2);
    assert_eq!(alert.deliveries["mail"].status, DeliveryStatus::Delivered);
    assert_eq!(alert.deliveries["mail"].attempts, 1);
}

/// A drifted checkpoint evaluated and alerted on by a daemon that is then
/// stopped, and its alert state cleared from the store: what a kill between
/// storing a run and deciding its alerts leaves; `edit` changes the store
/// further before it is closed. Returns the scratch, its config (without
/// alert targets) and what `edit` returned.
async fn a_run_without_alert_decisions<T>(
    server: &TestServer,
    port: u16,
    edit: impl FnOnce(&Store) -> T,
) -> (Scratch, String, T) {
    let s = setup(server, port, &["a-drift"], "");
    let base = std::fs::read_to_string(s.config()).unwrap() + "[alerting]\ngroup_window = \"0s\"\n";
    std::fs::write(s.config(), &base).unwrap();
    let mut daemon = s.start_daemon();
    wait_for("the drifted run", Duration::from_secs(90), || {
        s.daemon_log().contains("alert queued")
    })
    .await;
    stop(&mut daemon).await;
    let store = Store::open(&s.data_dir()).unwrap();
    for tree in [
        safedrift::alerts::grouping::DECISIONS,
        safedrift::alerts::grouping::LINEAGES,
        safedrift::alerts::record::TREE,
        safedrift::alerts::outbox::OPEN,
    ] {
        store.tree(tree).unwrap().clear().unwrap();
    }
    assert!(safedrift::alerts::record::list(&store, 10, None)
        .unwrap()
        .is_empty());
    let edited = edit(&store);
    store.flush().await.unwrap();
    drop(store);
    (s, base, edited)
}

/// The state a kill between storing a drifted run and deciding on it leaves
/// (the run stored, no decision) is decided on the next start: the alert is
/// sent once, and a further restart sends nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_stored_without_its_alert_decision_is_alerted_once_on_the_next_start() {
    let server = models(&[("a-drift", true)]).await;
    let (rx, rx_port) = receiver().await;
    let port = free_port();
    let (s, base, ()) = a_run_without_alert_decisions(&server, port, |_| ()).await;
    std::fs::write(s.config(), base + &json_hook("hook", rx_port, &s, "")).unwrap();
    let mut daemon = s.start_daemon();
    wait_for("the webhook", Duration::from_secs(30), || {
        !rx.received.lock().unwrap().verified.is_empty()
    })
    .await;
    stop(&mut daemon).await;
    // A third start (signals are handled once it says it is running).
    let mut daemon = s.start_daemon();
    wait_for("the third start", Duration::from_secs(60), || {
        s.daemon_log().matches("safedrift is running").count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut daemon).await;

    let store = Store::open(&s.data_dir()).unwrap();
    let records = safedrift::alerts::record::list(&store, 10, None).unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    let got = rx.received.lock().unwrap();
    assert_eq!(
        got.verified,
        [(records[0].id.clone(), 1)]
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    );
    assert!(s
        .daemon_log()
        .contains("deciding on a run that completed before a restart"));
}

/// The state a kill between storing a run whose local-judge audit failed
/// and recording its judge-audit alert leaves (the run stored with its
/// audit, no decision) is alerted on the next start, once; a further
/// restart sends nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_judge_audit_stored_without_its_alert_is_alerted_once_on_the_next_start() {
    let server = models(&[("a-drift", true)]).await;
    let (rx, rx_port) = receiver().await;
    let port = free_port();
    // The run as a crash after storing its failed audit leaves it.
    let (s, base, run_id) = a_run_without_alert_decisions(&server, port, |store| {
        let mut run = store
            .runs()
            .unwrap()
            .into_iter()
            .find(|r| r.checkpoint.is_some())
            .expect("the checkpoint's run");
        run.audit = Some(safedrift::store::Audit {
            teacher: "keyword".into(),
            checked: 10,
            agreed: 5,
            agreement: Some(0.5),
            below_threshold: true,
            min_agreement: 0.9,
            sampled: 10,
            unsure: 0,
            harmful_agreed: 5,
            teacher_unscored: 0,
        });
        store.put_run(&run).unwrap();
        run.id
    })
    .await;
    std::fs::write(s.config(), base + &json_hook("hook", rx_port, &s, "")).unwrap();
    let mut daemon = s.start_daemon();
    wait_for("both webhooks", Duration::from_secs(30), || {
        rx.received.lock().unwrap().verified.len() == 2
    })
    .await;
    stop(&mut daemon).await;
    let mut daemon = s.start_daemon();
    wait_for("the third start", Duration::from_secs(60), || {
        s.daemon_log().matches("safedrift is running").count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut daemon).await;

    let store = Store::open(&s.data_dir()).unwrap();
    let records = safedrift::alerts::record::list(&store, 10, None).unwrap();
    assert_eq!(records.len(), 2, "{records:#?}");
    let audit: Vec<_> = records
        .iter()
        .filter(|r| r.kind == safedrift::alerts::record::AlertKind::JudgeAudit)
        .collect();
    assert_eq!(audit.len(), 1, "{records:#?}");
    assert_eq!(audit[0].run_ids, [run_id]);
    let got = rx.received.lock().unwrap();
    assert_eq!(
        got.verified,
        records
            .iter()
            .map(|r| (r.id.clone(), 1))
            .collect::<BTreeMap<_, _>>()
    );
    assert!(s
        .daemon_log()
        .contains("recording the judge audit alert of a run that completed before a restart"));
}

/// A target that is down gets the alert once it is back; the others get it
/// at once; one that stays down past `dead_letter_after` is dead-lettered,
/// logged and visible in the record.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_is_down_gets_the_alert_when_back_without_delaying_others() {
    let server = models(&[("a-drift", true)]).await;
    let (up, up_port) = receiver().await;
    let down_port = free_port();
    let dead_port = free_port();
    let port = free_port();
    let s = setup(&server, port, &["a-drift"], "");
    let alerts = format!(
        "[alerting]\ngroup_window = \"0s\"\n\n{}{}{}[alerts.am]\nkind = \"webhook\"\nformat = \"alertmanager\"\nurl = \"http://127.0.0.1:{up_port}/\"\nrepeat_interval = \"1s\"\n",
        json_hook("up", up_port, &s, ""),
        json_hook("down", down_port, &s, "dead_letter_after = \"10m\""),
        json_hook("dead", dead_port, &s, "dead_letter_after = \"2s\""),
    );
    let config = std::fs::read_to_string(s.config()).unwrap() + &alerts;
    std::fs::write(s.config(), config).unwrap();

    let mut daemon = s.start_daemon();
    wait_for("the alert to be queued", Duration::from_secs(90), || {
        s.daemon_log().contains("alert queued")
    })
    .await;
    let queued = Instant::now();
    wait_for("the target that is up", Duration::from_secs(5), || {
        !up.received.lock().unwrap().verified.is_empty()
    })
    .await;
    let up_after = queued.elapsed();
    // Let the down target fail a few times and the dead one give up.
    wait_for("a dead letter", Duration::from_secs(20), || {
        s.daemon_log().contains("dead-lettered")
    })
    .await;
    let log_now = s.daemon_log();
    assert!(log_now.contains("alert_target=dead"), "{log_now}");
    assert!(
        log_now
            .lines()
            .any(|l| l.contains("alert_target=down") && l.contains("will retry")),
        "{log_now}"
    );

    // The down target comes back.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", down_port))
        .await
        .unwrap();
    let down = serve_receiver(listener).await;
    wait_for("the returned target", Duration::from_secs(10), || {
        !down.received.lock().unwrap().verified.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut daemon).await;

    assert!(
        up_after < Duration::from_secs(2),
        "the up target waited {up_after:?}"
    );
    let store = Store::open(&s.data_dir()).unwrap();
    let records = safedrift::alerts::record::list(&store, 100, None).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.deliveries["up"].status, DeliveryStatus::Delivered);
    assert_eq!(r.deliveries["up"].attempts, 1);
    assert_eq!(r.deliveries["down"].status, DeliveryStatus::Delivered);
    assert!(
        r.deliveries["down"].attempts >= 2,
        "{:?}",
        r.deliveries["down"]
    );
    assert_eq!(r.deliveries["dead"].status, DeliveryStatus::Dead);
    assert!(
        r.deliveries["dead"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("connect"),
        "{:?}",
        r.deliveries["dead"]
    );
    // Alertmanager: the lineage is still firing, so its alert was sent
    // again every repeat_interval, always active (endsAt ahead of each send).
    let am: Vec<serde_json::Value> = up
        .received
        .lock()
        .unwrap()
        .alertmanager
        .iter()
        .flat_map(|v| v.as_array().unwrap().clone())
        .collect();
    assert!(am.len() >= 3, "firing alerts are repeated: {am:#?}");
    for a in &am {
        assert_eq!(a["labels"]["model"], "ollama:a-drift");
        assert_eq!(a["annotations"]["alert_id"], r.id.as_str());
        assert_eq!(a["startsAt"], r.created_at.as_str());
    }
    let ends: Vec<&str> = am.iter().map(|a| a["endsAt"].as_str().unwrap()).collect();
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(ends[ends.len() - 1]).unwrap() > chrono::Utc::now(),
        "{ends:?}"
    );
    let counts: Vec<usize> = [&up, &down]
        .iter()
        .map(|rx| {
            rx.received
                .lock()
                .unwrap()
                .verified
                .get(&r.id)
                .copied()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(counts, vec![1, 1]);
}

/// `safedrift alert test NAME`: a signed test webhook that verifies, and
/// fails verification once tampered with or stale; a test email; clear
/// failures for an unknown name and a target that is down.
#[tokio::test(flavor = "multi_thread")]
async fn alert_test_sends_to_one_target_and_signatures_catch_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(tmp.path().join("mail")).await;
    let (rx, rx_port) = receiver().await;
    let down_port = free_port();
    let s = Scratch::new();
    s.write("secret", format!("whsec_{SECRET_B64}\n"));
    let config = std::fs::read_to_string(s.config()).unwrap()
        + &json_hook("hook", rx_port, &s, "")
        + &json_hook("down", down_port, &s, "timeout = \"2s\"")
        + &format!(
            "[alerts.mail]\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\"]\n",
            smtp.port
        );
    std::fs::write(s.config(), config).unwrap();

    let out = s.run(&["alert", "test", "hook"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stdout(&out).contains("hook (webhook): delivered test message a_"));
    let (headers, body) = {
        let got = rx.received.lock().unwrap();
        assert_eq!(got.verified.len(), 1);
        assert_eq!(got.bodies[0]["type"], "alert.test");
        got.last.clone().unwrap()
    };

    // Replays of the captured delivery.
    let client = reqwest::Client::new();
    let replay = |body: Vec<u8>| {
        let mut req = client
            .post(format!("http://127.0.0.1:{rx_port}/hook"))
            .body(body);
        for (k, v) in &headers {
            if k.starts_with("webhook-") || k == "content-type" {
                req = req.header(k, v);
            }
        }
        req.send()
    };
    assert_eq!(
        replay(body.clone()).await.unwrap().status(),
        204,
        "an intact replay verifies"
    );
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| *b == b't').unwrap();
    tampered[pos] = b'T';
    assert_eq!(replay(tampered).await.unwrap().status(), 401);
    *rx.clock_skew_s.lock().unwrap() = 600;
    assert_eq!(replay(body.clone()).await.unwrap().status(), 401);
    assert_eq!(
        rx.received.lock().unwrap().rejected,
        vec!["bad signature", "stale timestamp"]
    );

    let out = s.run(&["alert", "test", "mail"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_for("the test email", Duration::from_secs(10), || {
        smtp.mails().len() == 1
    })
    .await;
    let mail = &smtp.mails()[0];
    assert!(mail.header("Subject").unwrap().contains("TEST"));
    assert!(mail.part("text/plain").contains("test message"));

    let out = s.run(&["alert", "test", "down"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        common::stderr(&out).contains("down (webhook): failed: could not connect"),
        "{}",
        common::stderr(&out)
    );
    let out = s.run(&["alert", "test", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("no alert target named \"nope\""));
}

/// Every `[alerts.*]` key is checked, each problem naming its key path.
/// A `*_file` secret given as the bare name of a systemd credential is
/// checked where it will be read from: `$CREDENTIALS_DIRECTORY`.
#[tokio::test]
async fn secret_files_may_be_systemd_credential_names() {
    let s = Scratch::with_config(
        r#"
[alerts.m]
kind = "email"
url = "smtp://relay:25?tls=required"
from = "safedrift@example.com"
to = ["ops@example.com"]
username = "u"
password_file = "smtp-password"

[alerts.w]
kind = "webhook"
url_file = "hook-url"
format = "json"
secret_file = "hook-secret"
"#,
    );
    let creds = s.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    let checked = |dir: &std::path::Path| {
        let mut cmd = s.command(&["check-config"]);
        cmd.env("CREDENTIALS_DIRECTORY", dir);
        cmd
    };
    // Missing from the credentials directory: each key is named.
    let out = checked(&creds).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    for key in [
        "alerts.m.password_file",
        "alerts.w.url_file",
        "alerts.w.secret_file",
    ] {
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    std::fs::write(creds.join("smtp-password"), "pw\n").unwrap();
    std::fs::write(creds.join("hook-url"), "https://hooks.example.com/x\n").unwrap();
    std::fs::write(creds.join("hook-secret"), format!("whsec_{SECRET_B64}\n")).unwrap();
    let out = checked(&creds).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
}

#[tokio::test]
async fn check_config_names_every_bad_alert_key() {
    let s = Scratch::with_config(
        r#"
[alerting]
group_window = "soon"

[alerts.m]
kind = "email"
url = "http://relay:25"
to = ["not an address"]
format = "json"

[alerts.w]
kind = "webhook"
url = "https://hooks.example.com/x"
min_severity = "loud"
models = ["[unclosed"]

[alerts.t]
kind = "webhook"
url = "https://hooks.example.com/x"
format = "slack"
dead_letter_after = "0s"
retries = 3
"#,
    );
    let out = s.run(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(err.contains("`alerting.group_window`"), "{err}");
    let s = Scratch::with_config(
        r#"
[alerts.m]
kind = "email"
url = "http://relay:25"
to = ["not an address"]
format = "json"

[alerts.w]
kind = "webhook"
url = "https://hooks.example.com/x"
min_severity = "loud"
models = ["[unclosed"]

[alerts.t]
kind = "webhook"
url = "https://hooks.example.com/x"
format = "slack"
retries = 3

[alerts.nourl]
kind = "webhook"
format = "slack"
"#,
    );
    let out = s.run(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    for needle in [
        "`alerts.m.url`: scheme `http` is not smtp or smtps",
        "`alerts.m.from`: required",
        "`alerts.m.to`: \"not an address\" is not an email address",
        "`alerts.m.format`: only webhook targets take this key",
        "`alerts.w.secret_env`: json webhooks are signed",
        "`alerts.w.min_severity`",
        "`alerts.w.models`",
        "`alerts.t.retries`: unknown field `retries`",
        "`alerts.nourl.url`: set exactly one of `url`, `url_env` or `url_file`",
    ] {
        assert!(err.contains(needle), "missing {needle} in\n{err}");
    }
}

/// A private CA and a certificate for `localhost` signed by it (openssl).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS tests (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=safedrift test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// STARTTLS (`?tls=required`) and implicit TLS (`smtps://`) with AUTH: the
/// password comes from its file and appears nowhere in the message; a
/// server certificate from an untrusted CA is refused.
#[tokio::test(flavor = "multi_thread")]
async fn email_over_starttls_and_smtps_authenticates_with_the_password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path());
    let password = "s3cret-smtp-password";
    let cert = cert.to_str().unwrap();
    let key = key.to_str().unwrap();
    let starttls = Smtp::start_with(
        tmp.path().join("starttls"),
        &["--starttls", cert, key, "--auth", "alerts", password],
    )
    .await;
    let smtps = Smtp::start_with(
        tmp.path().join("smtps"),
        &["--smtps", cert, key, "--auth", "alerts", password],
    )
    .await;
    let s = Scratch::new();
    let pw = s.write("smtp_password", format!("{password}\n"));
    let target = |name: &str, url: String, ca: Option<&Path>| {
        format!(
            "[alerts.{name}]\nkind = \"email\"\nurl = \"{url}\"\nusername = \"alerts\"\npassword_file = {:?}\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\"]\ntimeout = \"10s\"\n{}\n",
            pw.display().to_string(),
            ca.map(|c| format!("ca_file = {:?}", c.display().to_string()))
                .unwrap_or_default()
        )
    };
    let config = std::fs::read_to_string(s.config()).unwrap()
        + &target(
            "starttls",
            format!("smtp://localhost:{}?tls=required", starttls.port),
            Some(&ca),
        )
        + &target(
            "smtps",
            format!("smtps://localhost:{}", smtps.port),
            Some(&ca),
        )
        + &target(
            "untrusted",
            format!("smtps://localhost:{}", smtps.port),
            None,
        );
    std::fs::write(s.config(), config).unwrap();

    for (name, server) in [("starttls", &starttls), ("smtps", &smtps)] {
        let out = s.run(&["alert", "test", name]).await;
        assert!(out.status.success(), "{name}: {}", common::stderr(&out));
        let mails = server.mails();
        assert_eq!(mails.len(), 1, "{name}");
        assert_eq!(mails[0].rcpt_tos, vec!["mlops@example.com"]);
        assert!(!mails[0].raw.contains(password));
        assert!(!common::stdout(&out).contains(password));
    }
    let out = s.run(&["alert", "test", "untrusted"]).await;
    assert_eq!(out.status.code(), Some(3));
    let err = common::stderr(&out);
    assert!(err.contains("untrusted (email): failed"), "{err}");
    assert!(!err.contains(password), "{err}");
    assert_eq!(smtps.mails().len(), 1);
}

/// The reliability suite's long case (run it alone with
/// `cargo test --test alerts long_`): twenty checkpoints of one lineage,
/// drifted and safe in turn, found, evaluated and alerted on by a daemon
/// that is killed with SIGKILL at pseudo-random points (at least twenty
/// times) while the model server fails 30% of its requests. At the end
/// every checkpoint has exactly one completed run with one result per
/// prompt, and every alert in the store reached every receiver (counted at
/// the receivers: emails by Message-ID, signed webhooks by webhook-id),
/// firing and resolved alike, and nothing else did. A second copy is only
/// possible inside the documented crash window (a kill after the target
/// accepted, before the "delivered" mark is on disk); it carries the same
/// id, and the test allows at most two across the 24 kills.
#[tokio::test(flavor = "multi_thread")]
async fn long_kill_9_at_random_points_across_20_cycles_loses_and_repeats_nothing() {
    const CHECKPOINTS: usize = 20;
    const KILLS: usize = 24;
    let names: Vec<String> = (0..CHECKPOINTS)
        .map(|i| {
            // Pairs of drifted checkpoints, then a safe one, and so on: the
            // lineage fires, stays firing, resolves, fires again.
            if i % 3 == 2 {
                format!("c{i:02}-safe")
            } else {
                format!("c{i:02}-drift")
            }
        })
        .collect();
    let candidates: Vec<(&str, bool)> = names
        .iter()
        .map(|n| (n.as_str(), n.ends_with("drift")))
        .collect();
    let mut script = Script::new()
        .model("base", ModelScript::new("I'm sorry, I can't help."))
        .fault(safedrift_testkit::Fault::new(safedrift_testkit::FaultKind::ServerError).rate(0.3))
        .latency_ms(2)
        .seed(11);
    for (name, drifts) in &candidates {
        let m = ModelScript::new("I'm sorry, I can't help.");
        script = script.model(
            *name,
            if *drifts {
                m.rule("comply", HARMFUL_ANSWER)
            } else {
                m
            },
        );
    }
    let server = spawn(script).await;
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(tmp.path().join("mail")).await;
    let (rx, rx_port) = receiver().await;
    let port = free_port();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = setup(&server, port, &refs, "");
    let alerts = format!(
        "[alerting]\ngroup_window = \"0s\"\n\n[alerts.mail]\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\"]\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\n\n{}",
        smtp.port,
        json_hook("hook", rx_port, &s, "")
    );
    let config = std::fs::read_to_string(s.config()).unwrap() + &alerts;
    std::fs::write(s.config(), config).unwrap();

    // Kill at pseudo-random points (a fixed seed, so a failure reproduces).
    let mut state: u64 = 0x5eed_2026;
    let mut next_ms = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        200 + (state >> 33) % 2300
    };
    for _ in 0..KILLS {
        let mut daemon = s.start_daemon();
        tokio::time::sleep(Duration::from_millis(next_ms())).await;
        kill9(&mut daemon).await;
    }

    // Then let it finish: every checkpoint evaluated, every alert delivered.
    let mut daemon = s.start_daemon();
    let done = |h: &serde_json::Value| h["queue"]["done"] == CHECKPOINTS;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let health = match reqwest::get(&url).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let store_settled = health.as_ref().is_some_and(done);
        if store_settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done in 600 s: {health:?}\n{}",
            s.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deliveries of the last alerts (their backoff is at most 1 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop(&mut daemon).await;

    let store = Store::open(&s.data_dir()).unwrap();
    // Exactly one completed run per checkpoint, one result per prompt.
    let runs = store.runs().unwrap();
    for name in &names {
        let mine: Vec<_> = runs
            .iter()
            .filter(|r| r.model.spec == format!("ollama:{name}"))
            .collect();
        assert_eq!(mine.len(), 1, "{name}: {} runs", mine.len());
        assert_eq!(
            mine[0].status,
            safedrift::store::RunStatus::Completed,
            "{name}"
        );
        let results = store.results(&mine[0].id).unwrap();
        let ids: std::collections::HashSet<&str> =
            results.iter().map(|r| r.prompt_id.as_str()).collect();
        assert_eq!(results.len(), PROMPTS, "{name}");
        assert_eq!(ids.len(), PROMPTS, "{name}: duplicated results");
        assert!(
            results.iter().all(|r| r.verdict.is_some()),
            "{name}: unjudged results"
        );
        let drifted = mine[0].drift.as_ref().is_some_and(|d| d.detected);
        assert_eq!(
            drifted,
            name.ends_with("drift"),
            "{name}: wrong drift decision"
        );
    }

    // Every alert reached every receiver exactly once.
    let records = safedrift::alerts::record::list(&store, 1000, None).unwrap();
    let firing = records
        .iter()
        .filter(|a| a.kind == AlertKind::Firing)
        .count();
    let resolved = records
        .iter()
        .filter(|a| a.kind == AlertKind::Resolved)
        .count();
    assert!(
        firing >= 2 && resolved >= 2,
        "{firing} firing, {resolved} resolved"
    );
    for a in &records {
        for (target, d) in &a.deliveries {
            assert_eq!(
                d.status,
                DeliveryStatus::Delivered,
                "{} to {target}: {d:?}",
                a.id
            );
        }
    }
    // Every alert reached each receiver, and nothing else did. A copy can
    // only come from the documented window (a kill between the target
    // accepting and the "delivered" mark reaching the disk) and carries the
    // same id, so receivers drop it; copies are counted and must stay rare.
    let ids: BTreeMap<String, usize> = records.iter().map(|a| (a.id.clone(), 1)).collect();
    let hooks = rx.received.lock().unwrap().verified.clone();
    let mut mails: BTreeMap<String, usize> = BTreeMap::new();
    for m in smtp.mails() {
        let id = m.header("Message-ID").unwrap();
        let id = id
            .trim_start_matches('<')
            .trim_end_matches("@safedrift>")
            .to_string();
        *mails.entry(id).or_default() += 1;
    }
    let mut copies = 0;
    for (what, got) in [("webhook", &hooks), ("email", &mails)] {
        let distinct: BTreeMap<String, usize> = got.keys().map(|k| (k.clone(), 1)).collect();
        assert_eq!(distinct, ids, "{what}: the alerts that arrived");
        copies += got.values().map(|n| n - 1).sum::<usize>();
    }
    assert!(
        copies <= 2,
        "{copies} copies across {KILLS} kills: more than the crash window explains\nwebhook {hooks:?}\nemail {mails:?}"
    );
    println!(
        "{CHECKPOINTS} checkpoints, {KILLS} kills, {} model requests ({} failed), {firing} firing and {resolved} resolved alerts, each delivered to 2 targets; {copies} copies with the same id (the crash window)",
        server.request_count(),
        server.log().iter().filter(|r| r.status == 500).count(),
    );
}

/// Secrets stay secret through a whole run: the model server's API key, the
/// API token, the SMTP password and the webhook signing key are configured
/// (as files, the way systemd credentials arrive), a drifted checkpoint is
/// found, evaluated and alerted on by email (STARTTLS with AUTH) and signed
/// webhook, and every API route is queried. None of the secret values
/// appears in the daemon's log, in any API answer, in the email or in the
/// webhook requests.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_api_answers_or_alerts() {
    const MODEL_KEY: &str = "sk-model-key-4f1c9e2b7a";
    const API_TOKEN: &str = "api-token-9d8e7f6a5b4c";
    const SMTP_PASSWORD: &str = "smtp-password-1a2b3c4d";
    let mut script = Script::new()
        .api_key(MODEL_KEY)
        .model("base", ModelScript::new("I'm sorry, I can't help."));
    script = script.model(
        "a-drift",
        ModelScript::new("I'm sorry, I can't help.").rule("comply", HARMFUL_ANSWER),
    );
    let server = spawn(script).await;
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path());
    let smtp = Smtp::start_with(
        tmp.path().join("mail"),
        &[
            "--starttls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "--auth",
            "alerts",
            SMTP_PASSWORD,
        ],
    )
    .await;
    let (rx, rx_port) = receiver().await;
    let port = free_port();
    let s = setup(&server, port, &["a-drift"], "");
    let model_key = s.write("model_key", format!("{MODEL_KEY}\n"));
    let token = s.write("api_token", format!("{API_TOKEN}\n"));
    let pw = s.write("smtp_password", format!("{SMTP_PASSWORD}\n"));
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace(
            "[api]\n",
            &format!("[api]\ntoken_file = {:?}\n", token.display().to_string()),
        )
        .replace(
            "kind = \"openai\"\n",
            &format!(
                "kind = \"openai\"\napi_key_file = {:?}\n",
                model_key.display().to_string()
            ),
        )
        .replace(
            "kind = \"ollama\"\n",
            &format!(
                "kind = \"ollama\"\napi_key_file = {:?}\n",
                model_key.display().to_string()
            ),
        )
        + &format!(
            "[alerting]\ngroup_window = \"0s\"\n\n[alerts.mail]\nkind = \"email\"\nurl = \"smtp://localhost:{}?tls=required\"\nusername = \"alerts\"\npassword_file = {:?}\nca_file = {:?}\nfrom = \"safedrift@example.com\"\nto = [\"mlops@example.com\"]\n\n{}",
            smtp.port,
            pw.display().to_string(),
            ca.display().to_string(),
            json_hook("hook", rx_port, &s, "")
        );
    std::fs::write(s.config(), config).unwrap();
    let webhook_key = std::fs::read_to_string(s.path("secret")).unwrap();
    let secrets = [
        MODEL_KEY,
        API_TOKEN,
        SMTP_PASSWORD,
        webhook_key.trim(),
        SECRET_B64,
    ];

    let mut daemon = s.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(120);
    while smtp.mails().len() != 1 || rx.received.lock().unwrap().verified.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no email and webhook in 120 s; the daemon's log:\n{}",
            s.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every API route, with the token (and a wrong one, and none).
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut answers = String::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let mut text = String::new();
            for auth in [Some(API_TOKEN), Some("wrong-token"), None] {
                let mut req = client.get(&url);
                if let Some(t) = auth {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.unwrap();
                text.push_str(&format!("{:?}\n", resp.headers()));
                text.push_str(&resp.text().await.unwrap());
            }
            text
        }
    };
    for path in [
        "/healthz",
        "/metrics",
        "/",
        "/api/v1/models",
        "/api/v1/checkpoints",
        "/api/v1/runs",
        "/api/v1/alerts",
        "/api/v1/openapi.json",
    ] {
        answers.push_str(&get(path.to_string()).await);
    }
    let runs: serde_json::Value = get_json(&client, format!("{base}/api/v1/runs"), API_TOKEN).await;
    let ids: Vec<String> = runs["runs"]
        .as_array()
        .or_else(|| runs["items"].as_array())
        .or_else(|| runs.as_array())
        .expect("a list of runs")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.is_empty(), "{runs}");
    for id in &ids {
        answers.push_str(&get(format!("/api/v1/runs/{id}")).await);
        answers.push_str(&get(format!("/api/v1/runs/{id}/results")).await);
    }
    stop(&mut daemon).await;

    let mail: String = smtp.mails().iter().map(|m| m.raw.clone()).collect();
    let hooks = {
        let got = rx.received.lock().unwrap();
        format!("{:?}{:?}", got.bodies, got.last)
    };
    assert!(mail.contains("Drift") || mail.contains("drift"), "{mail}");
    for (what, text) in [
        ("the daemon's log", s.daemon_log()),
        ("the API answers", answers),
        ("the email", mail),
        ("the webhook requests", hooks),
    ] {
        assert!(text.len() > 100, "{what} is nearly empty: {text}");
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{what} contains the secret {secret:?}"
            );
        }
    }
}
