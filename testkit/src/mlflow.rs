//! A real MLflow tracking server for tests (`pip install mlflow`): started
//! in a temporary directory with a SQLite backend, the artifact proxy and
//! the settings webhooks need, in its own process group so that its worker
//! processes go with it when it is dropped.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (tools/ lives there).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `python3 ARGS` in the repository root; panics with its stderr.
pub fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed (is mlflow installed? `python3 -m pip install mlflow`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running `mlflow server`, in its own process group (the server starts
/// uvicorn workers as children), killed with the group on drop.
pub struct MlflowServer {
    child: Child,
    /// The tracking URI, `http://127.0.0.1:PORT`.
    pub uri: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    /// Starts a server with a SQLite backend and the artifact proxy in a
    /// temporary directory; waits until `/health` answers (up to 120 s).
    pub async fn start() -> MlflowServer {
        use std::os::unix::process::CommandExt;

        let dir = tempfile::tempdir().unwrap();
        let key = python(&[
            "-c",
            "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())",
        ]);
        let port = free_port();
        let uri = format!("http://127.0.0.1:{port}");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        let child = Command::new("python3")
            .args(["-m", "mlflow", "server", "--backend-store-uri"])
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--artifacts-destination")
            .arg(dir.path().join("mlartifacts"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            // One key for all workers, or deliveries fail to decrypt secrets.
            .env("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", key.trim())
            // Let webhooks reach the receiver on plain http at 127.0.0.1.
            .env("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
            .env("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
            // Webhooks are looked up per event through a cache (60 s by
            // default): keep it short so a new webhook is used at once.
            .env("MLFLOW_WEBHOOK_CACHE_TTL", "1")
            // The background job runner (huey) is not needed here.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("python3 -m mlflow server starts");
        let mut server = MlflowServer {
            child,
            uri,
            log,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("mlflow server exited with {status}:\n{}", server.log_tail());
            }
            let health = client
                .get(format!("{}/health", server.uri))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server not healthy after 120 s:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "mlflow server ready at {} after {:.1?}",
            server.uri,
            started.elapsed()
        );
        server
    }

    /// The last 40 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops the whole process group: TERM, then KILL if it lingers.
    pub fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        if self.child.try_wait().ok().flatten().is_none() {
            signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Workers may outlive the leader.
        signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Registers the files of `dir` as a new version of `name` with the
    /// project's `tools/mlflow_register.py`; `tags` are `key=value`. Returns
    /// the version. Blocks while the script runs (a few seconds).
    pub fn register(&self, name: &str, dir: &Path, alias: Option<&str>, tags: &[&str]) -> String {
        let mut args = vec![
            "tools/mlflow_register.py",
            "--tracking-uri",
            &self.uri,
            "--name",
            name,
            "--dir",
            dir.to_str().unwrap(),
        ];
        for tag in tags {
            args.extend(["--tag", tag]);
        }
        if let Some(alias) = alias {
            args.extend(["--alias", alias]);
        }
        let out = python(&args);
        let version = out.lines().last().unwrap_or_default().trim().to_string();
        assert!(version.parse::<u32>().is_ok(), "register printed {out:?}");
        version
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}
