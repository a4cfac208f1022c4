//! `[backends.NAME] kind = "launch"`: a server started for each checkpoint.
//!
//! For a full checkpoint (safetensors, GGUF) that no running server has,
//! the backend starts any OpenAI-compatible server on it from a command
//! template (`vllm serve {dir} --port {port}`, `python3 -m llama_cpp.server
//! --model {gguf} --port {port}`), waits for its health route, evaluates
//! through its chat API, and stops it when the evaluation lets go of the
//! model: SIGTERM to the server's process group, SIGKILL after
//! `stop_timeout`. The server runs in a process group of its own, recorded
//! in `<data_dir>/launch/` while it runs, so a daemon killed with SIGKILL
//! leaves a record the next start reaps ([`reap_leftovers`]): no server
//! outlives the daemon by more than a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{info, warn};

use super::openai::{EndpointConfig, OpenAiClient, OpenAiModel};
use super::{Backend, BackendError, Decoding, Generation, Message};
use crate::config::LaunchBackendConfig;

/// How long a server may take to answer its health route, by default.
pub const DEFAULT_STARTUP: Duration = Duration::from_secs(600);
/// SIGTERM to SIGKILL, by default.
pub const DEFAULT_STOP: Duration = Duration::from_secs(30);
/// The route polled until it answers 200, by default (every
/// OpenAI-compatible server has it).
pub const DEFAULT_HEALTH: &str = "/v1/models";

fn error(message: String) -> BackendError {
    BackendError {
        kind: "launch",
        message,
    }
}

/// The command line for `dir` on `port`: `{dir}`, `{gguf}` (the folder's
/// one `.gguf` file), `{port}` and `{name}` (the folder's name) replaced
/// in each argument. No shell is involved.
pub fn command_line(
    template: &[String],
    dir: &Path,
    port: u16,
) -> Result<Vec<String>, BackendError> {
    let needs_gguf = template.iter().any(|a| a.contains("{gguf}"));
    let gguf = if needs_gguf {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| error(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            })
            .collect();
        found.sort();
        match found.len() {
            1 => found.pop().map(|p| p.display().to_string()),
            0 => {
                return Err(error(format!(
                    "the command needs {{gguf}} but {} holds no .gguf file",
                    dir.display()
                )))
            }
            n => {
                return Err(error(format!(
                "the command needs {{gguf}} but {} holds {n} .gguf files; name one in the command",
                dir.display()
            )))
            }
        }
    } else {
        None
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(template
        .iter()
        .map(|a| {
            a.replace("{dir}", &dir.display().to_string())
                .replace("{gguf}", gguf.as_deref().unwrap_or(""))
                .replace("{port}", &port.to_string())
                .replace("{name}", &name)
        })
        .collect())
}

/// A launched server: its process group, stopped on drop.
pub struct Server {
    child: Option<Child>,
    pgid: i32,
    pub port: u16,
    record: PathBuf,
    log: PathBuf,
    stop_timeout: Duration,
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), which
/// tells a process from a later one that reused its id.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // touches no memory of ours.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Whether any process of the group is still running (zombies, which a
/// killed daemon's servers become until their new parent reaps them, do
/// not count).
fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks that the group exists.
        return unsafe { libc::kill(-pgid, 0) == 0 };
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .any(|stat| {
            // After the command name: state, ppid, pgrp.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
            pgrp == Some(pgid) && state != "Z" && state != "X"
        })
}

fn free_port() -> Result<u16, BackendError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| error(format!("no free local port: {e}")))
}

/// The last 2,000 bytes of the server's output (a server can write
/// gigabytes of it: only the end is read).
fn log_tail(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut tail = Vec::new();
    let _ = file.take(2000).read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).trim().to_string()
}

impl Server {
    /// Starts `config.command` for `dir` and waits until its health route
    /// answers 200 (or the server exits, or `startup_timeout` passes: then
    /// it is stopped and the error holds the end of its output).
    pub async fn start(
        backend: &str,
        config: &LaunchBackendConfig,
        dir: &Path,
        launch_dir: &Path,
    ) -> Result<Server, BackendError> {
        let port = free_port()?;
        let argv = command_line(&config.command, dir, port)?;
        std::fs::create_dir_all(launch_dir)
            .map_err(|e| error(format!("cannot create {}: {e}", launch_dir.display())))?;
        let stamp = format!("{backend}-{port}-{}", std::process::id());
        let log = launch_dir.join(format!("{stamp}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| error(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| error(format!("cannot open {}: {e}", log.display())))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                error(format!(
                    "backend {backend}: cannot start {:?}: {e}",
                    argv[0]
                ))
            })?;
        let pgid = child.id() as i32;
        let record = launch_dir.join(format!("{pgid}.pid"));
        let started = start_time(pgid).unwrap_or(0);
        if let Err(e) = std::fs::write(&record, format!("{pgid} {started}\n")) {
            warn!(error = %e, "cannot record the launched server; a crash would leave it running");
        }
        let mut server = Server {
            child: Some(child),
            pgid,
            port,
            record,
            log,
            stop_timeout: config.stop_timeout.unwrap_or(DEFAULT_STOP),
        };
        info!(backend, pid = pgid, port, command = ?argv, "launched a server for the checkpoint");
        server.wait_healthy(backend, config).await?;
        Ok(server)
    }

    async fn wait_healthy(
        &mut self,
        backend: &str,
        config: &LaunchBackendConfig,
    ) -> Result<(), BackendError> {
        let path = config.health_path.as_deref().unwrap_or(DEFAULT_HEALTH);
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let timeout = config.startup_timeout.unwrap_or(DEFAULT_STARTUP);
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(error(format!(
                    "backend {backend}: the server exited ({status}) before it answered {path}; its output ends:\n{}",
                    log_tail(&self.log)
                )));
            }
            let answer = http.get(&url).timeout(Duration::from_secs(5)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                info!(
                    backend,
                    port = self.port,
                    secs = started.elapsed().as_secs_f32(),
                    "the launched server is up"
                );
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(error(format!(
                    "backend {backend}: the server did not answer {path} within {}; stopped it. Its output ends:\n{}",
                    humantime::format_duration(timeout),
                    log_tail(&self.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The id of the model the server serves (the first of `/v1/models`).
    pub async fn served_model(&self) -> Result<String, BackendError> {
        let url = format!("http://127.0.0.1:{}/v1/models", self.port);
        let body: serde_json::Value = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| error(format!("GET {url}: {e}")))?
            .json()
            .await
            .map_err(|e| error(format!("GET {url}: not JSON: {e}")))?;
        body["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                error(format!(
                    "GET {url}: no model listed; set `model` in the backend"
                ))
            })
    }
}

/// Stops a process group: SIGTERM, then SIGKILL once `grace` has passed
/// with any of it left; reaps `child` when given.
fn stop_group(pgid: i32, mut child: Option<Child>, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        if let Some(c) = child.as_mut() {
            if c.try_wait().ok().flatten().is_some() {
                child = None;
            }
        }
        if child.is_none() && !group_alive(pgid) {
            return;
        }
        if Instant::now() >= deadline {
            signal_group(pgid, libc::SIGKILL);
            if let Some(mut c) = child {
                let _ = c.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The threads stopping servers, for [`wait_for_stops`].
static STOPPING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits until every server being stopped is gone: a command that exits
/// right after its evaluation (`safedrift eval`) leaves none behind.
pub fn wait_for_stops() {
    let handles = std::mem::take(&mut *STOPPING.lock().unwrap_or_else(|e| e.into_inner()));
    for h in handles {
        let _ = h.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let (pgid, child, grace) = (self.pgid, self.child.take(), self.stop_timeout);
        let (record, log) = (self.record.clone(), self.log.clone());
        // SIGTERM now; the wait for the group to go, and SIGKILL after the
        // grace, off the async runtime.
        signal_group(pgid, libc::SIGTERM);
        let stop = move || {
            stop_group(pgid, child, grace);
            let _ = std::fs::remove_file(&record);
            let _ = std::fs::remove_file(&log);
            info!(pid = pgid, "stopped the launched server");
        };
        match std::thread::Builder::new()
            .name("safedrift-stop".into())
            .spawn(stop)
        {
            Ok(h) => {
                let mut stopping = STOPPING.lock().unwrap_or_else(|e| e.into_inner());
                stopping.retain(|h| !h.is_finished());
                stopping.push(h);
            }
            Err(_) => signal_group(pgid, libc::SIGKILL),
        }
    }
}

/// Stops the servers a previous daemon launched and did not stop (it was
/// killed): every record in `launch_dir` whose process group leader is
/// still the process it names. Returns how many were stopped.
pub fn reap_leftovers(launch_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(launch_dir) else {
        return 0;
    };
    let mut stopped = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        match path.extension().and_then(|x| x.to_str()) {
            Some("pid") => {}
            Some("log") => {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            _ => continue,
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = text.split_whitespace().map(str::parse::<i64>);
        if let (Some(Ok(pgid)), Some(Ok(started))) = (fields.next(), fields.next()) {
            let pgid = pgid as i32;
            if pgid > 1 && start_time(pgid) == Some(started as u64) {
                warn!(
                    pid = pgid,
                    "stopping a server a previous run launched and left behind"
                );
                stop_group(pgid, None, Duration::from_secs(10));
                stopped += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
}

/// A checkpoint served by a server launched for it.
pub struct LaunchedModel {
    inner: OpenAiModel,
    identity: String,
    dir: PathBuf,
    /// Dropped with the model: the server stops when the last evaluation
    /// using it lets go.
    _server: Server,
}

impl LaunchedModel {
    /// Launches the server for `dir` and connects to it.
    pub async fn launch(
        backend: &str,
        config: &LaunchBackendConfig,
        dir: &Path,
        launch_dir: &Path,
        concurrency: usize,
    ) -> Result<LaunchedModel, BackendError> {
        let server = Server::start(backend, config, dir, launch_dir).await?;
        let model = match &config.model {
            Some(m) => m.clone(),
            None => server.served_model().await?,
        };
        let client = OpenAiClient::new(EndpointConfig {
            base_urls: vec![format!("http://127.0.0.1:{}/v1", server.port)],
            api_key: None,
            max_concurrency: config.max_concurrency.unwrap_or(concurrency).max(1),
            timeout: config.timeout.unwrap_or(Duration::from_secs(600)),
            ..EndpointConfig::default()
        })?;
        Ok(LaunchedModel {
            inner: OpenAiModel {
                client: Arc::new(client),
                model,
            },
            identity: format!(
                "launch:{backend}:{}@{}",
                dir.display(),
                super::onnx::model::fingerprint(dir)
            ),
            dir: dir.to_path_buf(),
            _server: server,
        })
    }
}

#[async_trait]
impl Backend for LaunchedModel {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn content_digest(&self) -> Option<String> {
        super::content::digest(&self.dir).ok()
    }

    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError> {
        self.inner.generate(messages, decoding).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_gets_the_folder_its_gguf_and_the_port() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.Q4.gguf"), b"GGUF").unwrap();
        let t: Vec<String> = [
            "serve",
            "--model",
            "{gguf}",
            "--port={port}",
            "{dir}",
            "{name}",
        ]
        .map(String::from)
        .to_vec();
        let argv = command_line(&t, dir.path(), 8123).unwrap();
        let name = dir.path().file_name().unwrap().to_string_lossy();
        assert_eq!(
            argv[2],
            dir.path().join("model.Q4.gguf").display().to_string()
        );
        assert_eq!(argv[3], "--port=8123");
        assert_eq!(argv[4], dir.path().display().to_string());
        assert_eq!(argv[5], name);
        std::fs::write(dir.path().join("other.gguf"), b"GGUF").unwrap();
        let e = command_line(&t, dir.path(), 1).unwrap_err();
        assert!(e.message.contains("2 .gguf files"), "{}", e.message);
        let empty = tempfile::tempdir().unwrap();
        let e = command_line(&t, empty.path(), 1).unwrap_err();
        assert!(e.message.contains("no .gguf file"), "{}", e.message);
    }

    #[test]
    fn only_the_end_of_a_huge_output_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut text = "x".repeat(5_000_000);
        text.push_str("\nerror: out of memory loading the weights\n");
        std::fs::write(&log, &text).unwrap();
        let tail = log_tail(&log);
        assert!(tail.len() <= 2000, "{}", tail.len());
        assert!(
            tail.ends_with("error: out of memory loading the weights"),
            "{tail}"
        );
        assert_eq!(log_tail(&dir.path().join("missing.log")), "");
    }

    #[test]
    fn a_leftover_record_of_a_live_group_is_stopped_and_a_stale_one_only_removed() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The daemon that launched it is gone: something else reaps it.
        let mut child = child;
        let started = start_time(pid).unwrap();
        std::fs::write(
            dir.path().join(format!("{pid}.pid")),
            format!("{pid} {started}\n"),
        )
        .unwrap();
        // A record whose process is gone (or is another process now).
        std::fs::write(dir.path().join("999999.pid"), "999999 1\n").unwrap();
        std::fs::write(dir.path().join("x.log"), "old output").unwrap();
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        let t = Instant::now();
        assert_eq!(reap_leftovers(dir.path()), 1);
        assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM was enough");
        let status = waiter.join().unwrap();
        assert!(!status.success(), "{status}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
