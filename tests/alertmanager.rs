//! Alerts in a real Alertmanager (Debian's `prometheus-alertmanager`,
//! started by each test on a free port with its own storage, and its
//! `amtool`), sent by the real `safedrift` daemon started from the
//! documented example configs: config/alertmanager.toml (only URLs, ports,
//! paths and intervals changed) and config/alertmanager.yml (its receivers'
//! URLs and group timings changed). The Ollama server is the testkit's
//! (its demo script's "aligned" and "drifted" models, as in
//! tests/daemon_registries.rs); the receivers behind Alertmanager are a
//! webhook server of the test.
//!
//! Checked: each drifted model fires one alert labelled by it (not by the
//! baseline), routed and grouped by `model`; safedrift's repeats (every
//! 2 s here) reach Alertmanager and notify nobody again; a later
//! checkpoint back within the thresholds resolves the same alerts (same
//! labels), notified once; an `amtool` silence by model holds that model's
//! alert back, and expiring it lets the alert through.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::Router;
use common::{free_port, signal, stop, wait_for, wait_for_daemon, Scratch};
use safedrift_testkit::{demo_script, spawn, Script, TestServer};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};

const LINEAGE: &str = "ollama/ollama:llama3.2:3b";
const BASELINE: &str = "ollama:llama3.2:3b";
const SUPPORT: &str = "ollama:support-bot:latest";
const SALES: &str = "ollama:sales-bot:latest";

// ---------------------------------------------------------------------------
// Alertmanager
// ---------------------------------------------------------------------------

fn alertmanager_bin() -> String {
    std::env::var("ALERTMANAGER").unwrap_or_else(|_| "prometheus-alertmanager".into())
}

fn amtool_bin() -> String {
    std::env::var("AMTOOL").unwrap_or_else(|_| "amtool".into())
}

const INSTALL: &str =
    "install it with `apt-get install -y --no-install-recommends prometheus-alertmanager` \
     (or set ALERTMANAGER and AMTOOL to the binaries)";

/// A running Alertmanager, killed when dropped.
struct Alertmanager {
    port: u16,
    dir: TempDir,
    _child: Child,
}

impl Alertmanager {
    async fn start(config: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(&file, config).unwrap();
        let check = amtool(&["check-config", file.to_str().unwrap()]).await;
        assert!(
            check.status.success(),
            "amtool check-config: {}",
            out(&check)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip with other instances (nor their ports).
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): {INSTALL}", alertmanager_bin()));
        let am = Alertmanager {
            port,
            dir,
            _child: child,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", am.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager did not get ready:\n{}",
                am.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        am
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`: the alerts it holds that have not ended.
    async fn alerts(&self) -> Vec<Value> {
        reqwest::get(format!("{}/api/v2/alerts", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Alerts received over the API, by status (Alertmanager's own
    /// `alertmanager_alerts_received_total`).
    async fn received(&self, status: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("alertmanager_alerts_received_total{")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `amtool ARGS --alertmanager.url=URL`.
    async fn amtool(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.push(format!("--alertmanager.url={}", self.url()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        amtool(&all).await
    }
}

async fn amtool(args: &[&str]) -> std::process::Output {
    Command::new(amtool_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {INSTALL}", amtool_bin()))
}

fn out(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// config/alertmanager.yml with its receivers pointed at `rx` and its group
/// timings shortened; every replaced text must be in the file, so what runs
/// is the documented file.
fn alertmanager_config(rx: u16) -> String {
    let path = repo().join("config/alertmanager.yml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        (
            "http://mlops-bot.example.com/alertmanager",
            format!("http://127.0.0.1:{rx}/mlops"),
        ),
        (
            "http://support-oncall.example.com/alertmanager",
            format!("http://127.0.0.1:{rx}/support"),
        ),
        ("group_wait: 30s", "group_wait: 1s".into()),
        ("group_interval: 5m", "group_interval: 1s".into()),
    ] {
        assert!(
            text.contains(from),
            "config/alertmanager.yml has no {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// The receivers behind Alertmanager
// ---------------------------------------------------------------------------

/// Alertmanager's webhook notifications, by receiver path (`mlops`,
/// `support`), in arrival order.
#[derive(Clone, Default)]
struct Notifications(Arc<Mutex<Vec<(String, Value)>>>);

impl Notifications {
    fn to(&self, receiver: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == receiver)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn receivers() -> (Notifications, u16) {
    let got = Notifications::default();
    let app = Router::new()
        .route(
            "/{receiver}",
            post(
                |State(got): State<Notifications>, UrlPath(r): UrlPath<String>, body: Bytes| async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    got.0.lock().unwrap().push((r, v));
                    "ok"
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, port)
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The Ollama server: the base model, two fine-tunes that drifted, and a
/// later tag of the support bot that did not.
async fn ollama() -> TestServer {
    let demo = demo_script();
    let model = |name: &str| demo.models[name].clone();
    spawn(
        Script::new()
            .model("llama3.2:3b", model("aligned"))
            .model("support-bot:latest", model("drifted"))
            .model("sales-bot:latest", model("drifted"))
            .model("support-bot:v2", model("aligned")),
    )
    .await
}

/// `config/<file>` with the values at `set` (dotted key paths) replaced;
/// each must already be set there, with a value of the same type.
fn documented(file: &str, set: &[(&str, toml::Value)]) -> String {
    let text = std::fs::read_to_string(repo().join("config").join(file)).unwrap();
    let mut doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("config/{file}: {e}"));
    for (key, value) in set {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, tables) = parts.split_last().unwrap();
        let mut table = &mut doc;
        for part in tables {
            table = table
                .get_mut(*part)
                .and_then(|v| v.as_table_mut())
                .unwrap_or_else(|| panic!("config/{file} has no table {part:?} (for {key})"));
        }
        let old = table
            .get(*last)
            .unwrap_or_else(|| panic!("config/{file} does not set {key}"));
        assert_eq!(old.type_str(), value.type_str(), "config/{file}: {key}");
        table.insert(last.to_string(), value.clone());
    }
    toml::to_string(&doc).unwrap()
}

struct Daemon {
    s: Scratch,
    port: u16,
    ollama: String,
    am: String,
}

impl Daemon {
    fn new(ollama: &TestServer, am: &Alertmanager) -> Daemon {
        Daemon {
            s: Scratch::new(),
            port: free_port(),
            ollama: ollama.addr.to_string(),
            am: am.url(),
        }
    }

    /// config/alertmanager.toml watching `models`.
    fn configure(&self, models: &[&str]) {
        let s = |v: &str| toml::Value::String(v.into());
        let text = documented(
            "alertmanager.toml",
            &[
                ("data_dir", s(&self.s.data_dir().display().to_string())),
                ("api.listen", s(&format!("127.0.0.1:{}", self.port))),
                (
                    "api.public_url",
                    s(&format!("http://127.0.0.1:{}", self.port)),
                ),
                (
                    "backends.ollama.base_url",
                    s(&format!("http://{}/v1", self.ollama)),
                ),
                (
                    "watchers.ollama.base_url",
                    s(&format!("http://{}", self.ollama)),
                ),
                ("watchers.ollama.schedule", s("*/1 * * * * *")),
                (
                    "watchers.ollama.models",
                    toml::Value::Array(models.iter().map(|m| s(m)).collect()),
                ),
                ("alerting.group_window", s("2s")),
                ("alerts.alertmanager.url", s(&self.am)),
                ("alerts.alertmanager.repeat_interval", s("2s")),
                ("alerts.alertmanager.resolve_resend", s("6s")),
            ],
        );
        std::fs::write(self.s.config(), text).unwrap();
        let s = &self.s;
        let check = std::process::Command::new(common::bin())
            .args(["check-config", "--config"])
            .arg(s.config())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "config/alertmanager.toml does not check: {}",
            common::stderr(&check)
        );
    }

    fn run_url(&self, run_id: &str) -> String {
        format!("http://127.0.0.1:{}/runs/{run_id}", self.port)
    }

    /// The id of the run of `model` (the newest).
    async fn run_of(&self, model: &str) -> String {
        let v: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/runs", self.port))
            .query(&[("model", model)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["items"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run of {model}: {v}"))
            .to_string()
    }
}

fn labels(alert: &Value) -> Value {
    alert["labels"].clone()
}

/// The labels safedrift gives the alert of a drifted `model` (severity as
/// Alertmanager got it).
fn expected_labels(model: &str, severity: &Value) -> Value {
    json!({
        "alertname": "SafetyDrift",
        "severity": severity,
        "model": model,
        "baseline": BASELINE,
        "lineage": LINEAGE,
        "watcher": "ollama",
    })
}

/// Checks one firing notification: one alert, of `model`, grouped by it.
fn check_firing(n: &Value, receiver: &str, model: &str) -> Value {
    assert_eq!(n["status"], "firing", "{n:#}");
    assert_eq!(n["receiver"], receiver, "{n:#}");
    assert_eq!(
        n["groupLabels"],
        json!({"alertname": "SafetyDrift", "lineage": LINEAGE, "model": model}),
        "{n:#}"
    );
    let alerts = n["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{n:#}");
    let a = &alerts[0];
    let severity = &a["labels"]["severity"];
    assert!(
        ["info", "warning", "critical"].contains(&severity.as_str().unwrap_or("")),
        "{a:#}"
    );
    assert_eq!(labels(a), expected_labels(model, severity), "{a:#}");
    assert!(
        a["annotations"]["alert_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("a_")),
        "{a:#}"
    );
    a.clone()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Two fine-tunes of one base model drift: Alertmanager gets one alert per
/// model, labelled by the drifted model, and routes and groups them by it
/// (the support bot to its team, the other to the default receiver). The
/// daemon's repeats reach Alertmanager and notify nobody again. A later tag
/// of the support bot, back within the thresholds, resolves the lineage:
/// the same alerts (same labels) end, and each receiver is told once.
#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_routes_groups_repeats_and_resolves_by_the_drifted_model() {
    let server = ollama().await;
    let (rx, rx_port) = receivers().await;
    let am = Alertmanager::start(&alertmanager_config(rx_port)).await;
    let d = Daemon::new(&server, &am);
    d.configure(&["support-bot", "sales-bot"]);
    let mut daemon = d.s.start_daemon();

    // Firing: one notification per drifted model, each on its route.
    wait_for_daemon(
        &d.s,
        "a firing notification at each receiver",
        Duration::from_secs(120),
        async || !rx.to("support").is_empty() && !rx.to("mlops").is_empty(),
    )
    .await;
    let support = check_firing(&rx.to("support")[0], "support-team", SUPPORT);
    let sales = check_firing(&rx.to("mlops")[0], "mlops", SALES);
    let (support_run, sales_run) = (d.run_of(SUPPORT).await, d.run_of(SALES).await);
    assert_eq!(
        support["annotations"]["run_url"],
        d.run_url(&support_run).as_str()
    );
    assert_eq!(support["generatorURL"], d.run_url(&support_run).as_str());
    assert_eq!(
        sales["annotations"]["run_url"],
        d.run_url(&sales_run).as_str()
    );
    assert!(
        support["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with(&format!("safety drift in {SUPPORT}@")),
        "{support:#}"
    );

    // Repeats: the daemon sends its firing alerts every 2 s; Alertmanager
    // merges them (same labels) into the two alerts it holds and notifies
    // nobody again.
    let received = am.received("firing").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        am.received("firing").await >= received + 4.0,
        "the daemon repeats its firing alerts:\n{}",
        d.s.daemon_log()
    );
    let held = am.alerts().await;
    let mut held_labels: Vec<Value> = held.iter().map(labels).collect();
    held_labels.sort_by_key(|l| l["model"].to_string());
    assert_eq!(
        held_labels,
        vec![labels(&sales), labels(&support)],
        "{held:#?}"
    );
    assert!(
        held.iter().all(|a| a["status"]["state"] == "active"),
        "{held:#?}"
    );
    assert_eq!(rx.to("support").len(), 1, "{:#?}", rx.to("support"));
    assert_eq!(rx.to("mlops").len(), 1, "{:#?}", rx.to("mlops"));

    // Resolved: the support bot's new tag is back within the thresholds.
    d.configure(&["support-bot", "sales-bot", "support-bot:v2"]);
    signal(&daemon, "-HUP");
    wait_for_daemon(
        &d.s,
        "a resolved notification at each receiver",
        Duration::from_secs(120),
        async || rx.to("support").len() >= 2 && rx.to("mlops").len() >= 2,
    )
    .await;
    for (receiver, firing) in [("support", &support), ("mlops", &sales)] {
        let n = &rx.to(receiver)[1];
        assert_eq!(n["status"], "resolved", "{n:#}");
        let alerts = n["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 1, "{n:#}");
        assert_eq!(alerts[0]["status"], "resolved", "{n:#}");
        // The very alert that fired: same labels, same start.
        assert_eq!(labels(&alerts[0]), labels(firing), "{n:#}");
        assert_eq!(alerts[0]["startsAt"], firing["startsAt"], "{n:#}");
        assert_eq!(
            alerts[0]["annotations"]["alert_id"],
            firing["annotations"]["alert_id"]
        );
    }
    wait_for(
        "Alertmanager to hold no active alert",
        Duration::from_secs(10),
        async || am.alerts().await.is_empty(),
    )
    .await;
    // The resolution is re-sent for `resolve_resend`; nobody is told twice.
    let resolved = am.received("resolved").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        am.received("resolved").await > resolved,
        "{}",
        d.s.daemon_log()
    );
    assert_eq!(rx.to("support").len(), 2, "{:#?}", rx.to("support"));
    assert_eq!(rx.to("mlops").len(), 2, "{:#?}", rx.to("mlops"));
    stop(&mut daemon).await;
}

/// `amtool silence add model=...` holds back the alert of that model (it is
/// suppressed, silenced by that silence, and notifies nobody) while the
/// other model's alert goes out; expiring the silence lets it through.
#[tokio::test(flavor = "multi_thread")]
async fn an_amtool_silence_by_model_silences_that_models_alert() {
    let server = ollama().await;
    let (rx, rx_port) = receivers().await;
    let am = Alertmanager::start(&alertmanager_config(rx_port)).await;
    let add = am
        .amtool(&[
            "silence",
            "add",
            &format!("model={SALES}"),
            "--comment=sales-bot is being retrained",
            "--author=safedrift-tests",
            "--duration=1h",
        ])
        .await;
    assert!(add.status.success(), "amtool silence add: {}", out(&add));
    let silence = String::from_utf8_lossy(&add.stdout).trim().to_string();
    assert!(!silence.is_empty(), "{}", out(&add));
    let query = am
        .amtool(&["silence", "query", "--quiet", &format!("model={SALES}")])
        .await;
    assert!(
        String::from_utf8_lossy(&query.stdout).contains(&silence),
        "{}",
        out(&query)
    );

    let d = Daemon::new(&server, &am);
    d.configure(&["support-bot", "sales-bot"]);
    let mut daemon = d.s.start_daemon();
    wait_for_daemon(
        &d.s,
        "the support bot's notification",
        Duration::from_secs(120),
        async || !rx.to("support").is_empty(),
    )
    .await;
    check_firing(&rx.to("support")[0], "support-team", SUPPORT);
    let suppressed = async || {
        am.alerts().await.iter().any(|a| {
            a["labels"]["model"] == SALES
                && a["status"]["state"] == "suppressed"
                && a["status"]["silencedBy"] == json!([silence])
        })
    };
    wait_for(
        "the sales bot's alert, silenced",
        Duration::from_secs(30),
        suppressed,
    )
    .await;
    // Several group intervals and daemon repeats later: still nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(rx.to("mlops").is_empty(), "{:#?}", rx.to("mlops"));

    let expire = am.amtool(&["silence", "expire", &silence]).await;
    assert!(
        expire.status.success(),
        "amtool silence expire: {}",
        out(&expire)
    );
    wait_for_daemon(
        &d.s,
        "the sales bot's notification once the silence expired",
        Duration::from_secs(30),
        async || !rx.to("mlops").is_empty(),
    )
    .await;
    check_firing(&rx.to("mlops")[0], "mlops", SALES);
    assert_eq!(rx.to("support").len(), 1, "{:#?}", rx.to("support"));
    stop(&mut daemon).await;
}
