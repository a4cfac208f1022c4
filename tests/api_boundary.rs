//! The API as a way into the daemon's files and secrets, tried by a hostile
//! client against the real daemon: every SPEC field with path tricks (`..`,
//! symlinks, `/proc`, device files, FIFOs), every benchmark loader with a
//! secret on its first line, foreign `Host` headers (DNS rebinding), a
//! reachable listen address without a token, huge and deeply nested JSON,
//! slow bodies, a burst of concurrent POSTs against the queue cap, forged
//! cursors, and line breaks in names that reach logs and alerts.
//!
//! A secret is a string holding `LEAKCANARY`: it must never appear in an
//! answer, a line of the daemon's log or a byte of its store.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Scratch;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "LEAKCANARY";

/// Starts `safedrift run` and waits for `/healthz`.
async fn start(s: &Scratch, port: u16, env: &[(&str, String)]) -> tokio::process::Child {
    let mut cmd = s.daemon();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited ({status}): {}", s.daemon_log());
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not start: {}",
            s.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends raw bytes and reads the answer: (status, the whole answer).
async fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        if complete(&answer) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Whether a buffered HTTP/1.1 answer with a Content-Length is complete.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|n| body.len() >= n)
}

fn get_request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Every byte of every file under `dir`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// The scene: secrets outside `allowed/`, and traps inside it.
struct Scene {
    s: Scratch,
    port: u16,
    token: Option<String>,
    /// Files holding a secret, outside `allowed_paths`.
    secret_file: PathBuf,
    secret_dir: PathBuf,
    token_file: PathBuf,
    allowed: PathBuf,
}

impl Scene {
    fn new(with_token: bool) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let secret = root.join("secret");
        let allowed = root.join("allowed");
        let configured = root.join("configured");
        for d in [&secret, &allowed, &configured] {
            std::fs::create_dir_all(d).unwrap();
        }
        let token = format!("tok-{CANARY}-{}", std::process::id());
        let token_file = secret.join("api-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let secret_file = secret.join("openai-api-key");
        std::fs::write(&secret_file, format!("sk-proj-{CANARY}-key\n")).unwrap();
        std::fs::write(secret.join("smtp-password"), format!("{CANARY}-smtp\n")).unwrap();
        // A directory of secrets that looks like a benchmark and a model.
        let secret_dir = secret.join("dir");
        std::fs::create_dir_all(&secret_dir).unwrap();
        for name in [
            "category_1.csv",
            "tokenizer.json",
            "tokenizer_config.json",
            "config.json",
            "model.onnx",
        ] {
            std::fs::write(secret_dir.join(name), format!("{CANARY}-in-{name}\n")).unwrap();
        }
        // Traps inside the allowed folder.
        symlink(&secret_file, allowed.join("link-key")).unwrap();
        symlink(&secret_dir, allowed.join("link-dir")).unwrap();
        let hexphi_link = allowed.join("hexphi-link");
        std::fs::create_dir_all(&hexphi_link).unwrap();
        symlink(&secret_file, hexphi_link.join("category_1.csv")).unwrap();
        let model_link = allowed.join("model-link");
        std::fs::create_dir_all(&model_link).unwrap();
        std::fs::write(model_link.join("config.json"), "{}").unwrap();
        symlink(
            secret_dir.join("tokenizer.json"),
            model_link.join("tokenizer.json"),
        )
        .unwrap();
        let fifo = allowed.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let fifo_dir = allowed.join("fifo-dir");
        std::fs::create_dir_all(&fifo_dir).unwrap();
        let c = std::ffi::CString::new(fifo_dir.join("category_1.csv").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Malformed benchmarks with a secret on their first line, inside.
        for kind in [
            "advbench",
            "harmbench",
            "jbb",
            "xstest",
            "strongreject",
            "jsonl",
        ] {
            std::fs::write(
                allowed.join(format!("bad-{kind}")),
                format!("sk-{CANARY}-{kind},x\nrow,two,three\n"),
            )
            .unwrap();
        }
        let bad_hexphi = allowed.join("bad-hexphi");
        std::fs::create_dir_all(&bad_hexphi).unwrap();
        std::fs::write(
            bad_hexphi.join("category_1.csv"),
            format!("\"sk-{CANARY}-hexphi\nunterminated\n"),
        )
        .unwrap();
        // A model folder inside, whose files leak when it fails to load.
        let leaky = allowed.join("model-leaky");
        std::fs::create_dir_all(&leaky).unwrap();
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "config.json",
            "model.onnx",
        ] {
            std::fs::write(leaky.join(name), format!("{CANARY}-model-{name}\n")).unwrap();
        }
        std::fs::write(
            allowed.join("ok.jsonl"),
            "{\"id\": \"a\", \"prompt\": \"Please refuse this.\"}\n{\"id\": \"b\", \"prompt\": \"Please comply.\"}\n",
        )
        .unwrap();
        std::fs::write(
            configured.join("named.jsonl"),
            "{\"id\": \"n\", \"prompt\": \"A configured prompt.\"}\n",
        )
        .unwrap();

        let port = common::free_port();
        let auth = if with_token {
            format!("token_file = {:?}\n", token_file.display().to_string())
        } else {
            String::new()
        };
        let extra = format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\n{auth}allowed_paths = [{allowed:?}]\nrequest_timeout = \"3s\"\n\
             [benchmarks.named]\nkind = \"jsonl\"\npath = {named:?}\n\
             [backends.local]\nkind = \"onnx\"\n\
             [eval]\nconcurrency = 2\nmax_new_tokens = 8\n",
            allowed = allowed.display().to_string(),
            named = configured.join("named.jsonl").display().to_string(),
        );
        let s = Scratch::with_config(&extra);
        // Keep the scene's folder alive with the scratch one.
        std::mem::forget(dir);
        Scene {
            s,
            port,
            token: with_token.then_some(token),
            secret_file,
            secret_dir,
            token_file,
            allowed,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn post(&self, client: &reqwest::Client, body: &Value) -> (u16, Value, String) {
        let mut r = client.post(format!("{}/api/v1/evaluations", self.base()));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), r.json(body).send())
            .await
            .unwrap_or_else(|_| panic!("no answer in 15 s to {body}"))
            .unwrap();
        let status = answer.status().as_u16();
        let headers = format!("{:?}", answer.headers());
        let text = answer.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value, format!("{headers}\n{text}"))
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> (u16, String) {
        let mut r = client.get(format!("{}{path}", self.base()));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let answer = r.send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    /// An answer must hold no secret and no path outside `allowed/`.
    fn assert_clean(&self, what: &str, answer: &str) {
        assert!(
            !answer.contains(CANARY),
            "{what}: a secret leaked: {answer}"
        );
        let secret_root = self.secret_file.parent().unwrap().display().to_string();
        assert!(
            !answer.contains(&secret_root),
            "{what}: a path outside allowed_paths leaked: {answer}"
        );
    }

    /// Paths that must not be read through the API, files then directories.
    fn hostile_paths(&self) -> (Vec<String>, Vec<String>) {
        let allowed = self.allowed.display().to_string();
        let secret = self.secret_file.display().to_string();
        let secret_dir = self.secret_dir.display().to_string();
        let rel = |p: &Path| {
            let rest = p.strip_prefix(self.allowed.parent().unwrap()).unwrap();
            format!("{allowed}/../{}", rest.display())
        };
        let files = vec![
            secret.clone(),
            self.token_file.display().to_string(),
            rel(&self.secret_file),
            format!("{allowed}/./../secret/../secret/openai-api-key"),
            format!("{allowed}/link-key"),
            format!("/proc/self/root{secret}"),
            format!("/proc/{}/root{secret}", std::process::id()),
            "/proc/self/environ".into(),
            "/proc/self/cmdline".into(),
            "/etc/shadow".into(),
            "/dev/zero".into(),
            "/dev/stdin".into(),
            "/dev/urandom".into(),
            format!("{allowed}/fifo"),
            format!("{allowed}/link-dir/category_1.csv"),
            "secret/openai-api-key".into(),
            "../secret/openai-api-key".into(),
            format!("{allowed}/no-such-file"),
            format!("{allowed}\0/x"),
        ];
        let dirs = vec![
            secret_dir.clone(),
            rel(&self.secret_dir),
            format!("{allowed}/link-dir"),
            format!("{allowed}/hexphi-link"),
            format!("{allowed}/model-link"),
            format!("{allowed}/fifo-dir"),
            format!("{allowed}/fifo"),
            format!("/proc/self/root{secret_dir}"),
            "/proc/self/cwd".into(),
            "/proc/self".into(),
            "/dev".into(),
            "/etc".into(),
            "/".into(),
            format!("{allowed}/.."),
            "dir".into(),
        ];
        (files, dirs)
    }

    /// Sends every hostile SPEC: each must get 422 naming its field, at
    /// once, and reveal nothing.
    async fn sweep(&self, client: &reqwest::Client) -> usize {
        let (files, dirs) = self.hostile_paths();
        let allowed = self.allowed.display().to_string();
        let mut cases: Vec<(Value, &str)> = Vec::new();
        // The issue's example first.
        cases.push((
            json!({"model": "openai:x", "benchmarks": [format!("advbench:{}", self.secret_file.display())]}),
            "benchmarks[0]",
        ));
        for kind in [
            "advbench",
            "harmbench",
            "jbb",
            "xstest",
            "strongreject",
            "jsonl",
        ] {
            for path in &files {
                cases.push((
                    json!({"model": "openai:x", "benchmarks": ["builtin:probes", format!("{kind}:{path}")]}),
                    "benchmarks[1]",
                ));
            }
            // Inside allowed_paths but malformed, the secret on line 1.
            cases.push((
                json!({"model": "openai:x", "benchmarks": [format!("{kind}:{allowed}/bad-{kind}")]}),
                "benchmarks[0]",
            ));
        }
        for path in dirs.iter().chain([&format!("{allowed}/bad-hexphi")]) {
            cases.push((
                json!({"model": "openai:x", "benchmarks": [format!("hex-phi:{path}")]}),
                "benchmarks[0]",
            ));
        }
        for path in dirs.iter().chain(&files) {
            cases.push((json!({"model": format!("onnx:{path}")}), "model"));
            cases.push((json!({"model": format!("local:{path}")}), "model"));
            cases.push((json!({"model": path, "backend": "local"}), "model"));
            cases.push((
                json!({"model": "openai:x", "baseline": format!("onnx:{path}")}),
                "baseline",
            ));
            cases.push((
                json!({"model": "openai:x", "judge": format!("classifier:{path}")}),
                "judge",
            ));
            cases.push((
                json!({"model": "openai:x", "judge": format!("rubric:onnx:{path}")}),
                "judge",
            ));
        }
        // Registry models no configured watcher covers, and names that are
        // not in the config.
        for (body, field) in [
            (json!({"model": "hf:acme/model"}), "model"),
            (json!({"model": "hf:../../etc"}), "model"),
            (json!({"model": "mlflow:secret/1"}), "model"),
            (
                json!({"model": "openai:x", "baseline": "hf:acme/base"}),
                "baseline",
            ),
            (
                json!({"model": "openai:x", "template": "../../secret/api-token"}),
                "template",
            ),
            (
                json!({"model": "openai:x", "backend": "/etc/passwd"}),
                "backend",
            ),
            (
                json!({"model": "openai:x", "benchmarks": ["named-not"]}),
                "benchmarks[0]",
            ),
            (
                json!({"model": "openai:x", "benchmarks": ["file:///etc/passwd"]}),
                "benchmarks[0]",
            ),
            (
                json!({"model": "openai:x", "judge": "file:/etc/passwd"}),
                "judge",
            ),
        ] {
            cases.push((body, field));
        }
        for (body, field) in &cases {
            let started = Instant::now();
            let (status, v, answer) = self.post(client, body).await;
            assert_eq!(status, 422, "{body} -> {answer}");
            assert_eq!(v["kind"], "invalid_field", "{body} -> {answer}");
            assert_eq!(v["field"], *field, "{body} -> {answer}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{body} took {:?}",
                started.elapsed()
            );
            self.assert_clean(&body.to_string(), &answer);
        }
        cases.len()
    }
}

/// Nothing outside `allowed_paths` is read, and no secret is told, with a
/// token: the sweep over every loader and SPEC field, then the accepted
/// requests (a file inside `allowed_paths`, a configured benchmark outside
/// it, a model folder inside whose files hold secrets and fail to load),
/// then the log and every byte of the store.
#[tokio::test(flavor = "multi_thread")]
async fn no_request_with_a_token_reads_outside_allowed_paths_or_learns_a_secret() {
    use safedrift_testkit::{spawn, ModelScript, Script};
    let server =
        spawn(Script::new().model("x", ModelScript::new("I'm sorry, I can't help."))).await;
    let scene = Scene::new(true);
    let mut daemon = start(
        &scene.s,
        scene.port,
        &[
            ("OPENAI_BASE_URL", format!("http://{}/v1", server.addr)),
            ("OPENAI_API_KEY", format!("sk-env-{CANARY}")),
            ("SMTP_PASSWORD", format!("smtp-env-{CANARY}")),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // Without the token: 401, nothing else.
    let r = client
        .post(format!("{}/api/v1/evaluations", scene.base()))
        .json(&json!({"model": "openai:x", "benchmarks": [format!("advbench:{}", scene.secret_file.display())]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    scene.assert_clean("no token", &r.text().await.unwrap());

    let n = scene.sweep(&client).await;
    assert!(n > 300, "only {n} cases");

    // Accepted: named things, and paths inside allowed_paths.
    let allowed = scene.allowed.display().to_string();
    let mut ids = Vec::new();
    for body in [
        json!({"model": "openai:x", "benchmarks": [format!("jsonl:{allowed}/ok.jsonl")], "limit": 2}),
        json!({"model": "openai:x", "benchmarks": ["named"], "limit": 1}),
        json!({"model": format!("onnx:{allowed}/model-leaky"), "limit": 1}),
    ] {
        let (status, v, answer) = scene.post(&client, &body).await;
        assert_eq!(status, 202, "{body} -> {answer}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // The first two complete; the leaky model fails to load, and its error
    // (stored, and shown to API clients) carries none of its files.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for (i, id) in ids.iter().enumerate() {
            let (status, text) = scene
                .get(&client, &format!("/api/v1/evaluations/{id}"))
                .await;
            assert_eq!(status, 200, "{text}");
            scene.assert_clean("evaluation status", &text);
            let v: Value = serde_json::from_str(&text).unwrap();
            let finished = if i < 2 {
                v["status"] == "done" && v["run_id"].is_string()
            } else {
                v["last_error"].is_string()
            };
            done += finished as usize;
        }
        if done == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the evaluations did not finish: {}",
            scene.s.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for path in [
        "/api/v1/runs",
        "/api/v1/checkpoints",
        "/api/v1/models",
        "/api/v1/alerts",
    ] {
        let (status, text) = scene.get(&client, path).await;
        assert_eq!(status, 200, "{path}: {text}");
        scene.assert_clean(path, &text);
    }
    common::stop(&mut daemon).await;
    let log = scene.s.daemon_log();
    assert!(log.contains("safedrift is running"), "{log}");
    for line in log.lines() {
        assert!(!line.contains(CANARY), "a secret in the log: {line}");
    }
    let hits = files_containing(&scene.s.data_dir(), CANARY);
    assert!(hits.is_empty(), "a secret in the store: {hits:?}");
}

/// The same sweep without a token (anyone who reaches the loopback API).
#[tokio::test(flavor = "multi_thread")]
async fn no_request_without_a_token_reads_outside_allowed_paths_or_learns_a_secret() {
    let scene = Scene::new(false);
    let mut daemon = start(&scene.s, scene.port, &[]).await;
    let client = reqwest::Client::new();
    scene.sweep(&client).await;
    // With no `allowed_paths`, no local path at all is accepted.
    common::stop(&mut daemon).await;
    let config = std::fs::read_to_string(scene.s.config()).unwrap();
    let stripped: String = config
        .lines()
        .filter(|l| !l.starts_with("allowed_paths"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(scene.s.config(), stripped).unwrap();
    let mut daemon = start(&scene.s, scene.port, &[]).await;
    let (status, v, answer) = scene
        .post(
            &client,
            &json!({"model": "openai:x", "benchmarks": [format!("jsonl:{}/ok.jsonl", scene.allowed.display())]}),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (422, Some("benchmarks[0]")),
        "{answer}"
    );
    assert!(answer.contains("allowed_paths"), "{answer}");
    common::stop(&mut daemon).await;
    for line in scene.s.daemon_log().lines() {
        assert!(!line.contains(CANARY), "a secret in the log: {line}");
    }
    assert!(files_containing(&scene.s.data_dir(), CANARY).is_empty());
}

/// A DNS-rebinding page reaches the loopback API under its own name: every
/// route answers 421 to a `Host` that is not the listen address, a loopback
/// name or one of `allowed_hosts`.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_host_header_is_refused_with_421() {
    let port = common::free_port();
    let s = Scratch::with_config(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nallowed_hosts = [\"safedrift.internal\"]\n"
    ));
    let mut daemon = start(&s, port, &[]).await;
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".into(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("user@127.0.0.1:{port}"),
        "127.0.0.2".into(),
        "".into(),
    ] {
        for path in [
            "/healthz",
            "/api/v1/runs",
            "/",
            "/metrics",
            "/api/v1/openapi.json",
        ] {
            let (status, answer) = raw(port, &get_request(path, &host)).await;
            assert!(
                status == 421 || (host.is_empty() && status == 400),
                "Host {host:?} {path}: {answer}"
            );
            if status == 421 {
                assert!(answer.contains("\"kind\":\"misdirected\""), "{answer}");
            }
        }
        let body = r#"{"model": "openai:x"}"#;
        for path in ["/api/v1/evaluations", "/hooks/huggingface", "/hooks/mlflow"] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (status, answer) = raw(port, request.as_bytes()).await;
            assert!(
                status == 421 || (host.is_empty() && status == 400),
                "Host {host:?} POST {path}: {answer}"
            );
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".into(),
        format!("localhost:{port}"),
        "LOCALHOST.".into(),
        format!("[::1]:{port}"),
        format!("safedrift.internal:{port}"),
        "SafeDrift.Internal".into(),
    ] {
        let (status, answer) = raw(port, &get_request("/api/v1/runs", &host)).await;
        assert_eq!(status, 200, "Host {host:?}: {answer}");
    }
    // Nothing was queued by the refused POSTs.
    let (_, answer) = raw(port, &get_request("/api/v1/checkpoints", "127.0.0.1")).await;
    assert!(!answer.contains("openai:x"), "{answer}");
    common::stop(&mut daemon).await;
}

/// A listen address other hosts can reach needs a token, or an explicit
/// `allow_unauthenticated = true`: `run` and `check-config` both say so.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_refuses_a_reachable_address_without_a_token() {
    let port = common::free_port();
    let s = Scratch::with_config(&format!("[api]\nlisten = \"0.0.0.0:{port}\"\n"));
    for args in [&["run"][..], &["check-config"][..]] {
        let out = tokio::time::timeout(Duration::from_secs(30), s.run(args))
            .await
            .expect("exits at once");
        let err = common::stderr(&out) + &common::stdout(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("`api.listen`")
                && err.contains("api.allow_unauthenticated")
                && err.contains("api.token_file"),
            "{args:?}: {err}"
        );
    }
    // Explicitly allowed: it starts (and still checks Host).
    let s = Scratch::with_config(&format!(
        "[api]\nlisten = \"0.0.0.0:{port}\"\nallow_unauthenticated = true\n"
    ));
    let mut daemon = start(&s, port, &[]).await;
    let (status, _) = raw(port, &get_request("/healthz", "attacker.example")).await;
    assert_eq!(status, 421);
    common::stop(&mut daemon).await;
    // With a token it starts too.
    let s = Scratch::with_config(&format!(
        "[api]\nlisten = \"0.0.0.0:{port}\"\ntoken_env = \"SAFEDRIFT_TEST_TOKEN\"\n"
    ));
    let mut daemon = start(&s, port, &[("SAFEDRIFT_TEST_TOKEN", "t0ken".into())]).await;
    common::stop(&mut daemon).await;
}

/// Huge and deeply nested JSON, slow bodies, a burst of concurrent POSTs
/// against the queue cap, forged cursors, and line breaks in names.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_get_bounded_answers_and_the_queue_cap_holds() {
    let port = common::free_port();
    let s = Scratch::with_config(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nmax_queue = 5\nrequest_timeout = \"2s\"\n"
    ));
    // Evaluations cannot finish (the endpoint refuses connections), so
    // the queue stays as deep as what was accepted.
    let mut daemon = start(
        &s,
        port,
        &[("OPENAI_BASE_URL", "http://127.0.0.1:9/v1".to_string())],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // A body over the limit is refused from its Content-Length.
    let (status, answer) = raw(
        port,
        b"POST /api/v1/evaluations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n{\"model\":",
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    // Deeply nested JSON inside the limit: a plain 4xx.
    let deep = format!(
        "{{\"model\": \"openai:x\", \"limit\": {}{}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let r = client
        .post(format!("{base}/api/v1/evaluations"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 422), "{}", r.status());
    // Slow bodies: each gets 408 at the deadline, and meanwhile the API
    // answers others at once.
    let slow: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                stream
                    .write_all(b"POST /api/v1/evaluations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 64\r\nConnection: close\r\n\r\n{")
                    .await
                    .unwrap();
                let started = Instant::now();
                let mut answer = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        n = stream.read(&mut buf) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                answer.extend_from_slice(&buf[..n]);
                                if complete(&answer) { break; }
                            }
                        },
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {
                            if stream.write_all(b" ").await.is_err() { break; }
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(15), "no deadline");
                }
                (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for task in slow {
        let (took, answer) = task.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(took < Duration::from_secs(6), "{took:?}");
    }

    // Line breaks and bidi controls in names that reach logs and alerts.
    for (body, field) in [
        (
            json!({"model": "openai:x\r\nBcc: evil@example.com"}),
            "model",
        ),
        (
            json!({"model": "openai:x", "baseline": "openai:b\nINFO forged line"}),
            "baseline",
        ),
        (
            json!({"model": "openai:x", "benchmarks": ["builtin:probes\r\nX-Injected: 1"]}),
            "benchmarks[0]",
        ),
        (
            json!({"model": "openai:x", "judge": "keyword\r\n"}),
            "judge",
        ),
        (
            json!({"model": "openai:x", "template": "default\u{2028}forged"}),
            "template",
        ),
        (
            json!({"model": "openai:x", "backend": "a\u{202e}b"}),
            "backend",
        ),
        (json!({"model": "openai:\u{1b}[31mred"}), "model"),
    ] {
        let r = client
            .post(format!("{base}/api/v1/evaluations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let r = client
        .get(format!(
            "{base}/api/v1/runs?model=a%0d%0aSet-Cookie:%20x%3D1"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("set-cookie").is_none());

    // Forged cursors: 400, never a server error.
    for cursor in [
        "AAAA".to_string(),
        "%00%01%02".into(),
        "eyJydW4iOiIuLi8uLi9ldGMvcGFzc3dkIn0".into(),
        "..%2F..%2Fetc%2Fpasswd".into(),
        "-1".into(),
        "x".repeat(3000),
        "r_zzzzzzzzzzzzzzzzzzzzzzzzzz".into(),
        "%F0%9F%92%A9".into(),
    ] {
        for path in ["/api/v1/runs", "/api/v1/alerts"] {
            let r = client
                .get(format!("{base}{path}?cursor={cursor}"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert!(
                status == 400 && v["kind"] == "bad_cursor",
                "{path} {cursor}: {status} {v}"
            );
        }
    }

    // A burst of concurrent POSTs: exactly `max_queue` are accepted.
    let posts: Vec<_> = (0..60)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/api/v1/evaluations");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"model": format!("openai:burst-{i}"), "limit": 1}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((accepted, refused), (5, 55), "{statuses:?}");
    let checkpoints: Value = client
        .get(format!("{base}/api/v1/checkpoints?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queued = checkpoints["items"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or_default();
    assert_eq!(queued, 5, "{checkpoints}");
    common::stop(&mut daemon).await;
    let log = s.daemon_log();
    assert!(
        !log.lines().any(|l| l.starts_with("Bcc:")
            || l.starts_with("INFO forged")
            || l.contains("evil@example.com")),
        "{log}"
    );
}
