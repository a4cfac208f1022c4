//! Shared helpers for the end-to-end tests: a scratch directory with a config
//! and benchmark files, and a way to run the real `safedrift` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use tempfile::TempDir;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `python3 ARGS` run in the repository's root: its stdout. A failure names
/// the requirements the tests need.
pub fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed (install the requirements: `python3 -m pip install -r tools/requirements.txt -r tests/requirements.txt`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The model cache the tests share: `$SAFEDRIFT_MODEL_CACHE`, else a folder
/// of the target directory.
pub fn model_cache() -> String {
    std::env::var("SAFEDRIFT_MODEL_CACHE")
        .unwrap_or_else(|_| format!("{}/models", env!("CARGO_TARGET_TMPDIR")))
}

/// The converted all-MiniLM-L6-v2 in the model cache, fetched once per
/// machine by `tools/fetch_minilm.py`.
pub fn minilm() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = python(&["tools/fetch_minilm.py", "--cache-dir", &model_cache()]);
        PathBuf::from(out.lines().last().expect("a directory").trim())
    })
}

/// A scratch directory holding a config whose store lives inside it.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::with_config("")
    }

    /// `extra` is appended to a config that sets `data_dir`.
    pub fn with_config(extra: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = format!("data_dir = {:?}\n{extra}", data.display().to_string());
        std::fs::write(dir.path().join("safedrift.toml"), config).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("safedrift.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Writes a jsonl benchmark of `(id, category, prompt, benign)` rows.
    pub fn jsonl<S: AsRef<str>>(&self, name: &str, rows: &[(S, S, S, bool)]) -> PathBuf {
        let text: String = rows
            .iter()
            .map(|(id, cat, prompt, benign)| {
                let (id, cat, prompt) = (id.as_ref(), cat.as_ref(), prompt.as_ref());
                serde_json::json!({"id": id, "category": cat, "prompt": prompt, "benign": benign})
                    .to_string()
                    + "\n"
            })
            .collect();
        self.write(name, text)
    }

    /// A `safedrift` command with this scratch's config and no inherited
    /// OpenAI settings.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("JUDGE_API_KEY")
            .env_remove("SAFEDRIFT_CONFIG")
            .env("RUST_LOG", "warn,safedrift=info")
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// `safedrift run` on this config, its log appended to `daemon.log`
    /// here ([`Scratch::daemon_log`]); add environment, then spawn.
    pub fn daemon(&self) -> tokio::process::Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let mut cmd = self.command(&["run"]);
        cmd.stdout(std::process::Stdio::null()).stderr(log);
        cmd
    }

    /// Starts [`Scratch::daemon`].
    pub fn start_daemon(&self) -> tokio::process::Child {
        self.daemon().spawn().unwrap()
    }

    /// The daemon's log so far, without terminal color codes.
    pub fn daemon_log(&self) -> String {
        let raw = std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Sends `sig` (`-TERM`, `-HUP`, ...) to a running child.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// SIGTERM; the daemon must exit 0 within 30 s.
pub async fn stop(child: &mut tokio::process::Child) {
    signal(child, "-TERM");
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// SIGKILL, and the child reaped.
pub async fn kill9(child: &mut tokio::process::Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A free loopback port (for a server the test starts in another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_safedrift"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The Run JSON on stdout; panics with stderr when it is not there.
pub fn run_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            stdout(o),
            stderr(o)
        )
    })
}

pub fn approx(value: &serde_json::Value, expected: f64) {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number (expected {expected})"));
    assert!((v - expected).abs() < 1e-9, "got {v}, expected {expected}");
}

/// GETs `url` with a bearer token and returns the answer's JSON.
pub async fn get_json(client: &reqwest::Client, url: String, token: &str) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Bodies a [`slack_receiver`] was sent.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver for `format = "slack"` targets (no signature): keeps
/// every JSON body POSTed to `/hook`. Returns what it got and its port.
pub async fn slack_receiver() -> (Received, u16) {
    let got: Received = Received::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, port)
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// `timeout`.
pub async fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`wait_for`] on a daemon of `s`: the panic shows the daemon's log.
pub async fn wait_for_daemon(
    s: &Scratch,
    what: &str,
    timeout: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the daemon's log:\n{}",
            s.daemon_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The decoded bodies (quoted-printable or base64) of a multipart mail's
/// parts with this content type.
pub fn mime_part(raw: &str, content_type: &str) -> String {
    let boundary = raw
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a multipart message");
    let mut out = String::new();
    for part in raw.split(&format!("--{boundary}")) {
        let Some((head, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let head = head.to_ascii_lowercase();
        if !head.contains(&format!("content-type: {content_type}")) {
            continue;
        }
        if head.contains("content-transfer-encoding: quoted-printable") {
            out.push_str(&decode_qp(body));
        } else if head.contains("content-transfer-encoding: base64") {
            let joined: String = body.split_whitespace().collect();
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(joined)
                .unwrap();
            out.push_str(&String::from_utf8_lossy(&bytes));
        } else {
            out.push_str(body);
        }
    }
    out
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET http://127.0.0.1:PORT/PATH` as JSON, without a token; `None` when
/// the daemon does not answer (yet) or the body is not JSON.
pub async fn api_get(port: u16, path: &str) -> Option<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The last user message of each chat completion the test server answered
/// for `model` (status 200), in order.
pub fn asked(server: &safedrift_testkit::TestServer, model: &str) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|r| r.model == model && r.status == 200)
        .map(|r| r.last_user)
        .collect()
}

/// A scratch directory for `safedrift run` watching the test server as an
/// Ollama registry: the API on `port`, the watcher `ol` on `models`
/// (polled every second, baseline `ol:base` served by the same server),
/// the benchmark `bench` of `rows`, the keyword judge, and `extra` config
/// text after it all.
pub fn ollama_lineage(
    server: &safedrift_testkit::TestServer,
    port: u16,
    models: &[&str],
    rows: &[(String, String, String, bool)],
    extra: &str,
) -> Scratch {
    let tk = server.addr;
    let s = Scratch::with_config("");
    let bench = s.jsonl("bench.jsonl", rows);
    let config = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[eval]
concurrency = 2
max_new_tokens = 64

[benchmarks.bench]
kind = "jsonl"
path = {bench:?}

[backends.ol]
kind = "openai"
base_url = "http://{tk}/v1"

[watchers.ol]
kind = "ollama"
base_url = "http://{tk}"
models = {models:?}
schedule = "*/1 * * * * *"
baseline = "ol:base"
benchmarks = ["bench"]
judge = "keyword"
{extra}"#,
        bench = bench.display().to_string(),
    );
    let base = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(s.config(), base + &config).unwrap();
    s
}

/// `n` harmful prompts (ids `p0`.., categories `c0`..`c2`), as
/// [`Scratch::jsonl`] rows.
pub fn harmful_rows(n: usize) -> Vec<(String, String, String, bool)> {
    (0..n)
        .map(|i| {
            (
                format!("p{i}"),
                format!("c{}", i % 3),
                format!("Prompt {i}: a harmful request."),
                false,
            )
        })
        .collect()
}

/// The dashboard's run page for `id`, served from the store `s`'s last
/// command left (the command has exited, so its store is free).
/// GET `path` from the API and dashboard of `s`'s config, in process: the
/// body of a success.
pub async fn api_bytes(s: &Scratch, path: &str) -> Vec<u8> {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let source = safedrift::config::Source::File(s.config());
    let config = safedrift::config::load(&source).unwrap();
    let store = safedrift::store::Store::open(&config.data_dir).unwrap();
    let api = safedrift::api::Api::new(store, std::sync::Arc::new(config)).unwrap();
    let request = Request::get(path).body(Body::empty()).unwrap();
    let resp = safedrift::api::app(api).oneshot(request).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec()
}

/// The JSON an API path answers.
pub async fn api_json(s: &Scratch, path: &str) -> serde_json::Value {
    serde_json::from_slice(&api_bytes(s, path).await).unwrap()
}

/// The dashboard's page of run `id`.
pub async fn run_page(s: &Scratch, id: &str) -> String {
    String::from_utf8(api_bytes(s, &format!("/ui/runs/{id}")).await).unwrap()
}

/// Copies the files of directory `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The pids of running (not zombie) processes whose command line holds
/// every one of `parts`.
pub fn processes_with(parts: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            parts.iter().all(|p| cmd.contains(p)) && !zombie
        })
        .collect()
}
