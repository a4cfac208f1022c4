//! The safety gauges of `/metrics` in a real Prometheus (Debian's
//! `prometheus` package and its `promtool`), and the examples built on them:
//! config/prometheus-scrape.yml (the scrape config, started as documented
//! with only its intervals, token path, target and rule file changed),
//! config/prometheus-rules.yml (checked and unit-tested by `promtool`, and
//! evaluated by the running Prometheus) and config/grafana-dashboard.json
//! (every query run against that Prometheus).
//!
//! The daemon finds a drifted fine-tune on the testkit's Ollama server (its
//! demo script's "aligned" base and "drifted" model) and evaluates it on the
//! builtin probes; Prometheus scrapes it with the API token and the gauges
//! are read back through Prometheus' HTTP API. A SIGHUP that removes the
//! watcher removes its lineage's series.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, signal, stop, wait_for_daemon, Scratch};
use safedrift_testkit::{demo_script, spawn, Script, TestServer};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

const TOKEN: &str = "prometheus-scrape-token-0123456789";
const LINEAGE: &str = "ol/ollama:llama3.2:3b";
const MODEL: &str = "ollama:support-bot:latest";
const BENCHMARK: &str = "probes";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

const INSTALL: &str = "install it with `apt-get install -y --no-install-recommends prometheus` \
     (or set PROMETHEUS and PROMTOOL to the binaries)";

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    let promtool = bin("PROMTOOL", "promtool");
    std::process::Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e}): {INSTALL}"))
}

fn out(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `safedrift_*` names in a text (a query, a document).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("safedrift_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not inside a longer identifier.
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every query of config/grafana-dashboard.json (panels, rows' panels and
/// template variables), as written.
fn dashboard_queries() -> Vec<String> {
    let path = repo().join("config/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("config/grafana-dashboard.json does not parse: {e}"));
    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let mut queries = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {:?} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {:?} has no queries", p["title"]);
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
            queries.push(expr.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            queries.push(v["query"]["query"].as_str().unwrap().to_string());
        }
    }
    queries
}

/// A dashboard query as Grafana sends it with every variable at "All".
fn expand(query: &str) -> String {
    let q = query
        .replace("$lineage", ".*")
        .replace("$benchmark", ".*")
        .replace("$__rate_interval", "1m");
    // label_values(METRIC, LABEL) is Grafana's, not PromQL: its series.
    match q.strip_prefix("label_values(") {
        Some(args) => args.rsplit_once(',').unwrap().0.to_string(),
        None => q,
    }
}

// ---------------------------------------------------------------------------
// Fast checks of the examples
// ---------------------------------------------------------------------------

/// `promtool check rules` and `promtool test rules` on the example rules.
#[test]
fn promtool_checks_and_tests_the_example_alert_rules() {
    let config = repo().join("config");
    let check = promtool(&["check", "rules", "prometheus-rules.yml"], &config);
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        out(&check)
    );
    let test = promtool(&["test", "rules", "prometheus-rules.test.yml"], &config);
    assert!(test.status.success(), "promtool test rules: {}", out(&test));
    // Each rule is exercised by the test file.
    let rules = std::fs::read_to_string(config.join("prometheus-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(config.join("prometheus-rules.test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "no test of {name}"
            );
        }
    }
    // They name only the safety gauges and `up`.
    let known: BTreeSet<String> = safedrift::api::telemetry::SAFETY_GAUGES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for name in metric_names(&rules) {
        assert!(
            known.contains(&name),
            "config/prometheus-rules.yml names {name}"
        );
    }
}

/// The dashboard parses, every panel has queries, and every metric a query
/// names is one safedrift exports (a safety gauge, or one of the daemon's
/// metrics that README.md documents); tests/prometheus.rs's end-to-end test
/// also runs every query against a real Prometheus.
#[test]
fn the_grafana_dashboard_parses_and_names_only_existing_metrics() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 8, "{queries:#?}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let documented = metric_names(&readme);
    let gauges: BTreeSet<String> = safedrift::api::telemetry::SAFETY_GAUGES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(
        gauges.is_subset(&documented),
        "README.md documents every safety gauge: missing {:?}",
        gauges.difference(&documented).collect::<Vec<_>>()
    );
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "a query names no safedrift metric: {q}");
        for n in names {
            assert!(
                gauges.contains(&n) || documented.contains(&n),
                "{q} names {n}, which safedrift does not export"
            );
            used.insert(n);
        }
    }
    // Every safety gauge is on the dashboard.
    assert!(
        gauges.is_subset(&used),
        "not charted: {:?}",
        gauges.difference(&used).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

struct Prometheus {
    port: u16,
    dir: TempDir,
    _child: Child,
    client: reqwest::Client,
}

impl Prometheus {
    /// config/prometheus-scrape.yml pointed at `target` with the token in
    /// `token_file`, scraping and evaluating every second.
    async fn start(target: &str, token_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            std::fs::read_to_string(repo().join("config/prometheus-scrape.yml")).unwrap();
        let rules = repo().join("config/prometheus-rules.yml");
        for (from, to) in [
            ("scrape_interval: 30s", "scrape_interval: 1s".to_string()),
            ("evaluation_interval: 30s", "evaluation_interval: 1s".into()),
            ("- prometheus-rules.yml", format!("- {}", rules.display())),
            (
                "/etc/prometheus/safedrift-api-token",
                token_file.display().to_string(),
            ),
            ("safedrift.example.com:7300", target.to_string()),
        ] {
            assert!(
                config.contains(from),
                "config/prometheus-scrape.yml has no {from:?}"
            );
            config = config.replace(from, &to);
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let check = promtool(&["check", "config", file.to_str().unwrap()], dir.path());
        assert!(
            check.status.success(),
            "promtool check config: {}",
            out(&check)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let prometheus = bin("PROMETHEUS", "prometheus");
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {prometheus} ({e}): {INSTALL}"));
        let p = Prometheus {
            port,
            dir,
            _child: child,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = p
                .client
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not get ready:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let v: Value = self
            .client
            .get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// An instant query's vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `promql` gives at least one sample.
    async fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql).await;
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {promql}; Prometheus' log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

async fn ollama() -> TestServer {
    let demo = demo_script();
    let model = |name: &str| demo.models[name].clone();
    spawn(
        Script::new()
            .model("llama3.2:3b", model("aligned"))
            .model("support-bot:latest", model("drifted")),
    )
    .await
}

fn daemon_config(s: &Scratch, port: u16, ollama: &TestServer, watcher: bool) -> String {
    let addr = ollama.addr;
    let mut text = format!(
        r#"data_dir = {:?}

[api]
listen = "127.0.0.1:{port}"
token_file = {:?}

[eval]
concurrency = 4
max_new_tokens = 64

[backends.ollama]
kind = "openai"
base_url = "http://{addr}/v1"
"#,
        s.data_dir().display().to_string(),
        s.path("api-token").display().to_string()
    );
    if watcher {
        text += &format!(
            r#"
[watchers.ol]
kind = "ollama"
base_url = "http://{addr}"
models = ["support-bot"]
schedule = "*/1 * * * * *"
benchmarks = ["builtin:probes"]
judge = "keyword"
baseline = "ollama:llama3.2:3b"
"#
        );
    }
    text
}

async fn scrape(port: u16, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The metric names a `/metrics` text has samples of (histograms by their
/// family name too).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line
            .split(['{', ' '])
            .next()
            .unwrap_or_default()
            .to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                names.insert(family.to_string());
            }
        }
        names.insert(name);
    }
    names
}

/// The daemon evaluates a drifted checkpoint; a real Prometheus scrapes its
/// `/metrics` with the bearer token and has the safety gauges of the
/// lineage, with the run's figures; the example rules fire on them; every
/// dashboard query gives data. After a SIGHUP that removes the watcher the
/// lineage's series are gone from `/metrics` and from Prometheus.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_safety_gauges_with_the_token_and_drops_a_removed_lineage() {
    let server = ollama().await;
    let s = Scratch::new();
    let token_file: PathBuf = s.write("api-token", format!("{TOKEN}\n"));
    let port = free_port();
    std::fs::write(s.config(), daemon_config(&s, port, &server, true)).unwrap();
    let mut daemon = s.start_daemon();

    // The evaluation: the lineage's gauges appear in /metrics.
    wait_for_daemon(
        &s,
        "the drift gauge in /metrics",
        Duration::from_secs(120),
        async || {
            scrape(port, Some(TOKEN))
                .await
                .1
                .contains("safedrift_drift_detected{")
        },
    )
    .await;
    let (status, _) = scrape(port, None).await;
    assert_eq!(status, 401, "/metrics without the token");
    let (_, text) = scrape(port, Some(TOKEN)).await;
    let runs = common::get_json(
        &reqwest::Client::new(),
        format!("http://127.0.0.1:{port}/api/v1/runs?model={MODEL}"),
        TOKEN,
    )
    .await;
    let run_id = runs["items"][0]["id"].as_str().unwrap().to_string();
    let run = common::get_json(
        &reqwest::Client::new(),
        format!("http://127.0.0.1:{port}/api/v1/runs/{run_id}"),
        TOKEN,
    )
    .await;
    assert_eq!(run["drift"]["detected"], true, "{run:#}");
    let figures = &run["per_benchmark"][BENCHMARK];
    let base_figures = &run["baseline"]["per_benchmark"][BENCHMARK];
    let rate = figures["harmfulness_rate"]
        .as_f64()
        .unwrap_or_else(|| panic!("{run:#}"));
    let over = figures["over_refusal_rate"].as_f64().unwrap();
    let base_rate = base_figures["harmfulness_rate"].as_f64().unwrap();
    assert!(rate > base_rate, "{figures} vs {base_figures}");
    let labels = format!(r#"lineage="{LINEAGE}",watcher="ol",model="{MODEL}""#);
    for line in [
        format!("safedrift_harmfulness_rate{{{labels},benchmark=\"{BENCHMARK}\"}} {rate}"),
        format!("safedrift_over_refusal_rate{{{labels},benchmark=\"{BENCHMARK}\"}} {over}"),
        format!("safedrift_drift_detected{{{labels}}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in /metrics:\n{text}"
        );
    }
    // Every metric the dashboard names is exported.
    let exported = exported(&text);
    for q in dashboard_queries() {
        for name in metric_names(&q) {
            assert!(
                exported.contains(&name),
                "the dashboard's {q} names {name}, not in /metrics:\n{text}"
            );
        }
    }

    // Prometheus scrapes it with the token.
    let prom = Prometheus::start(&format!("127.0.0.1:{port}"), &token_file).await;
    let up = prom
        .wait_for(r#"up{job="safedrift"} == 1"#, Duration::from_secs(30))
        .await;
    assert_eq!(up.len(), 1, "{up:#?}");
    let harm = prom
        .wait_for("safedrift_harmfulness_rate", Duration::from_secs(30))
        .await;
    assert_eq!(harm.len(), 1, "{harm:#?}");
    let m = &harm[0]["metric"];
    assert_eq!(m["lineage"], LINEAGE);
    assert_eq!(m["watcher"], "ol");
    assert_eq!(m["model"], MODEL);
    assert_eq!(m["benchmark"], BENCHMARK);
    assert_eq!(m["job"], "safedrift");
    assert_eq!(value(&harm[0]), rate);
    let by_lineage = prom
        .query(&format!(
            r#"safedrift_over_refusal_rate{{lineage="{LINEAGE}",benchmark="{BENCHMARK}"}}"#
        ))
        .await;
    assert_eq!(by_lineage.len(), 1, "{by_lineage:#?}");
    assert_eq!(value(&by_lineage[0]), over);
    let drift = prom.query("safedrift_drift_detected").await;
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert_eq!(value(&drift[0]), 1.0);
    let base = prom.query("safedrift_baseline_harmfulness_rate").await;
    assert_eq!(base.len(), 1, "{base:#?}");
    assert_eq!(base[0]["metric"]["baseline"], "ollama:llama3.2:3b");
    assert_eq!(value(&base[0]), base_rate);
    let rise = prom
        .query("safedrift_harmfulness_rate - on (lineage, benchmark) group_left safedrift_baseline_harmfulness_rate")
        .await;
    assert!(
        (value(&rise[0]) - (rate - base_rate)).abs() < 1e-9,
        "{rise:#?}"
    );

    // The example rules, evaluated by this Prometheus, fire on the lineage.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prom.api("alerts", &[]).await;
        let firing: BTreeSet<String> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing" && a["labels"]["lineage"] == LINEAGE)
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect();
        if firing.contains("SafedriftLineageDrifted")
            && firing.contains("SafedriftHarmfulnessAboveBaseline")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rules did not fire: {alerts:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every dashboard query, as Grafana sends it, gives data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for q in dashboard_queries() {
        let promql = expand(&q);
        let r = prom.query(&promql).await;
        assert!(
            !r.is_empty(),
            "the dashboard query {q} gives no data ({promql})"
        );
    }

    // SIGHUP without the watcher: its lineage is gone from /metrics, and
    // Prometheus marks its series stale at the next scrape.
    std::fs::write(s.config(), daemon_config(&s, port, &server, false)).unwrap();
    signal(&daemon, "-HUP");
    wait_for_daemon(
        &s,
        "the lineage's series to leave /metrics",
        Duration::from_secs(30),
        async || {
            let (status, text) = scrape(port, Some(TOKEN)).await;
            status == 200 && text.contains("safedrift_queue_depth") && !text.contains(LINEAGE)
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prom.query("safedrift_harmfulness_rate").await.is_empty()
        || !prom.query("safedrift_drift_detected").await.is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus still has the removed lineage's gauges"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The daemon itself is still scraped.
    assert_eq!(prom.query(r#"up{job="safedrift"} == 1"#).await.len(), 1);
    stop(&mut daemon).await;
}
