//! The download cache against a local HTTP server: ranges, cut connections,
//! retries, checksums, unsafe names, eviction and a full disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use safedrift_watchers::cache::{Cache, DownloadRequest};
use safedrift_watchers::http::RetryPolicy;
use safedrift_watchers::Checkpoint;
use sha2::{Digest, Sha256};

const LEN: usize = 256 * 1024;
const TOKEN: &str = "tok-very-secret-123";

static DATA: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut x: u32 = 0x1234_5678;
    (0..LEN)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
});

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A request's path and its Range header.
type Request = (String, Option<String>);

/// Every request, in order.
#[derive(Clone, Default)]
struct Log {
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Log {
    fn for_path(&self, path: &str) -> Vec<Option<String>> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// Serves `data`, honouring `Range: bytes=N-`.
fn serve(data: &[u8], headers: &HeaderMap) -> Response {
    let total = data.len();
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    match start {
        None => Response::new(Body::from(data.to_vec())),
        Some(n) if n >= total => Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{total}"))
            .body(Body::empty())
            .unwrap(),
        Some(n) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {n}-{}/{total}", total - 1),
            )
            .body(Body::from(data[n..].to_vec()))
            .unwrap(),
    }
}

async fn handler(State(log): State<Log>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_string());
    let hit = {
        let mut requests = log.requests.lock().unwrap();
        requests.push((path.clone(), range));
        requests.iter().filter(|(p, _)| *p == path).count()
    };
    match path.as_str() {
        "/file" => serve(&DATA, &headers),
        "/cut" if hit == 1 => {
            // Half the body, a pause, then the connection drops.
            let first = Bytes::copy_from_slice(&DATA[..LEN / 2]);
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Err(std::io::Error::other("connection cut"))
                }));
            Response::builder()
                .header(header::CONTENT_LENGTH, LEN)
                .body(Body::from_stream(stream))
                .unwrap()
        }
        "/cut" => serve(&DATA, &headers),
        "/flaky" if hit == 1 => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("boom"))
            .unwrap(),
        "/flaky" if hit == 2 => Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "0")
            .body(Body::from("slow down"))
            .unwrap(),
        "/flaky" => serve(&DATA, &headers),
        "/always-500" => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap(),
        "/wrong" => {
            let mut bad = DATA.clone();
            bad[1000] ^= 0xff;
            serve(&bad, &headers)
        }
        "/private" => {
            let auth = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string());
            if auth.as_deref() == Some("Bearer right-token") {
                serve(&DATA, &headers)
            } else {
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(Body::from(r#"{"error":{"message":"bad token"}}"#))
                    .unwrap()
            }
        }
        "/big" => Response::new(Body::from(vec![7u8; 2 * 1024 * 1024])),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("no such file"))
            .unwrap(),
    }
}

async fn server() -> (String, Log) {
    let log = Log::default();
    let app = Router::new().fallback(handler).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_hint: Duration::from_secs(1),
    }
}

fn cache(root: &Path, max_bytes: u64) -> Cache {
    Cache::new(root.to_path_buf(), max_bytes)
        .unwrap()
        .with_retry_policy(fast_retries())
}

fn checkpoint(model: &str, revision: &str) -> Checkpoint {
    Checkpoint {
        watcher: "hub".into(),
        model: model.into(),
        revision: revision.into(),
        baseline: None,
        detail: serde_json::Value::Null,
    }
}

fn partial_of(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", dest.display()))
}

#[tokio::test]
async fn downloads_and_verifies() {
    let (base, log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(&tmp.path().join("cache"), u64::MAX);
    let dir = cache.checkpoint_dir(&checkpoint("acme/model", "abc"));
    let dest = Cache::safe_join(&dir, "onnx/model.onnx").unwrap();
    let client = reqwest::Client::new();
    let digest = sha(&DATA);
    let request = DownloadRequest {
        url: &format!("{base}/file"),
        dest: &dest,
        sha256: Some(&digest),
        size: Some(LEN as u64),
        bearer: None,
    };
    let n = cache.download(&client, request).await.unwrap();
    assert_eq!(n, LEN as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), *DATA);
    assert!(!partial_of(&dest).exists());

    // Already there and verified: no second request.
    let n = cache.download(&client, request).await.unwrap();
    assert_eq!(n, LEN as u64);
    assert_eq!(log.for_path("/file").len(), 1);

    assert!(!Cache::is_complete(&dir));
    Cache::mark_complete(&dir).unwrap();
    assert!(Cache::is_complete(&dir));
}

#[tokio::test]
async fn resumes_after_a_cut_connection() {
    let (base, log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(tmp.path(), u64::MAX);
    let dest = tmp.path().join("ckpt").join("weights.bin");
    let digest = sha(&DATA);
    let n = cache
        .download(
            &reqwest::Client::new(),
            DownloadRequest {
                url: &format!("{base}/cut"),
                dest: &dest,
                sha256: Some(&digest),
                size: Some(LEN as u64),
                bearer: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, LEN as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), *DATA);
    let ranges = log.for_path("/cut");
    eprintln!("ranges: {ranges:?}");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_at: usize = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("second request without a range: {ranges:?}"));
    assert!(resumed_at > 0 && resumed_at <= LEN / 2, "{resumed_at}");
}

#[tokio::test]
async fn a_complete_partial_is_verified_after_416() {
    let (base, log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(tmp.path(), u64::MAX);
    let dest = tmp.path().join("ckpt").join("weights.bin");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(partial_of(&dest), &*DATA).unwrap();
    let digest = sha(&DATA);
    let n = cache
        .download(
            &reqwest::Client::new(),
            DownloadRequest {
                url: &format!("{base}/file"),
                dest: &dest,
                sha256: Some(&digest),
                size: None,
                bearer: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, LEN as u64);
    assert_eq!(log.for_path("/file"), vec![Some(format!("bytes={LEN}-"))]);
    assert_eq!(std::fs::read(&dest).unwrap(), *DATA);
}

#[tokio::test]
async fn transient_errors_are_retried_and_permanent_ones_are_not() {
    let (base, log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(tmp.path(), u64::MAX);
    let client = reqwest::Client::new();
    let dest = tmp.path().join("c").join("f.bin");
    let digest = sha(&DATA);
    let request = |url: String, dest: PathBuf| (url, dest);

    // 500, then 429 with retry-after, then the file.
    let (url, d) = request(format!("{base}/flaky"), dest.clone());
    let n = cache
        .download(
            &client,
            DownloadRequest {
                url: &url,
                dest: &d,
                sha256: Some(&digest),
                size: None,
                bearer: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, LEN as u64);
    assert_eq!(log.for_path("/flaky").len(), 3);

    // 404: at once, kind "http", with status and URL.
    let url = format!("{base}/missing");
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &url,
                dest: &tmp.path().join("c").join("missing.bin"),
                sha256: None,
                size: None,
                bearer: Some(TOKEN),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "http");
    assert!(err.message.contains("404"), "{}", err.message);
    assert!(err.message.contains(&url), "{}", err.message);
    assert!(!err.message.contains(TOKEN));
    assert_eq!(log.for_path("/missing").len(), 1);

    // 401 with a wrong token: the token is never in the error.
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &format!("{base}/private"),
                dest: &tmp.path().join("c").join("private.bin"),
                sha256: None,
                size: None,
                bearer: Some(TOKEN),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "http");
    assert!(err.message.contains("401"), "{}", err.message);
    assert!(!err.message.contains(TOKEN), "{}", err.message);
    let n = cache
        .download(
            &client,
            DownloadRequest {
                url: &format!("{base}/private"),
                dest: &tmp.path().join("c").join("private.bin"),
                sha256: None,
                size: None,
                bearer: Some("right-token"),
            },
        )
        .await
        .unwrap();
    assert_eq!(n, LEN as u64);

    // Always 502: bounded attempts.
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &format!("{base}/always-500"),
                dest: &tmp.path().join("c").join("never.bin"),
                sha256: None,
                size: None,
                bearer: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "http");
    assert!(err.message.contains("502"), "{}", err.message);
    assert_eq!(log.for_path("/always-500").len(), 4);

    // Nobody listening: kind "unreachable" after the retries.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/x", dead.local_addr().unwrap());
    drop(dead);
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &dead_url,
                dest: &tmp.path().join("c").join("dead.bin"),
                sha256: None,
                size: None,
                bearer: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "unreachable", "{}", err.message);
}

#[tokio::test]
async fn checksum_mismatch_leaves_no_file() {
    let (base, _log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(tmp.path(), u64::MAX);
    let client = reqwest::Client::new();
    let dest = tmp.path().join("c").join("f.bin");
    let digest = sha(&DATA);
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &format!("{base}/wrong"),
                dest: &dest,
                sha256: Some(&digest),
                size: Some(LEN as u64),
                bearer: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "checksum", "{}", err.message);
    assert!(!dest.exists());
    assert!(!partial_of(&dest).exists());

    // A wrong size is a checksum failure too.
    let err = cache
        .download(
            &client,
            DownloadRequest {
                url: &format!("{base}/file"),
                dest: &dest,
                sha256: None,
                size: Some(LEN as u64 - 1),
                bearer: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, "checksum", "{}", err.message);
    assert!(!dest.exists());
    assert!(!partial_of(&dest).exists());
}

#[tokio::test]
async fn destinations_outside_the_cache_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(&tmp.path().join("cache"), u64::MAX);
    let client = reqwest::Client::new();
    for dest in [
        tmp.path().join("elsewhere.bin"),
        tmp.path().join("cache").join("..").join("escape.bin"),
    ] {
        let err = cache
            .download(
                &client,
                DownloadRequest {
                    url: "http://127.0.0.1:9/never",
                    dest: &dest,
                    sha256: None,
                    size: None,
                    bearer: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, "unsafe_path", "{}", err.message);
    }
}

#[test]
fn safe_join_rejects_escapes() {
    let dir = Path::new("/cache/ckpt");
    assert_eq!(
        Cache::safe_join(dir, "onnx/model.onnx").unwrap(),
        Path::new("/cache/ckpt/onnx/model.onnx")
    );
    assert_eq!(
        Cache::safe_join(dir, "model.onnx_data").unwrap(),
        Path::new("/cache/ckpt/model.onnx_data")
    );
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "./a",
        "a/./b",
        "",
        "a//b",
        "a/",
        "..",
        "a\\..\\b",
        "a\0b",
    ] {
        let err = Cache::safe_join(dir, bad).unwrap_err();
        assert_eq!(err.kind, "unsafe_path", "{bad:?}");
        assert!(err.message.contains(&format!("{bad:?}")), "{}", err.message);
    }
}

#[test]
fn checkpoint_dirs_are_single_safe_components() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache(tmp.path(), u64::MAX);
    let mut names = Vec::new();
    for model in [
        "acme/llama sft",
        "../..",
        "",
        ".",
        "..",
        "ünïcode",
        "a/../../b",
    ] {
        let dir = cache.checkpoint_dir(&checkpoint(model, "r1"));
        assert_eq!(dir.parent().unwrap(), tmp.path(), "{model:?}");
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.starts_with('.'), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "{name}"
        );
        names.push(name);
    }
    assert!(names[0].starts_with("acme_llama_sft-"), "{}", names[0]);
    // Distinct checkpoints get distinct folders.
    let a = cache.checkpoint_dir(&checkpoint("m", "r1"));
    let b = cache.checkpoint_dir(&checkpoint("m", "r2"));
    assert_ne!(a, b);
    assert_eq!(a, cache.checkpoint_dir(&checkpoint("m", "r1")));
}

fn fill(dir: &Path, bytes: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("weights.bin"), vec![1u8; bytes]).unwrap();
}

fn set_last_used(dir: &Path, ago: Duration) {
    Cache::touch(dir);
    let when = filetime::FileTime::from_system_time(SystemTime::now() - ago);
    filetime::set_file_mtime(dir.join(".last-used"), when).unwrap();
}

/// Sets the mtime of a folder and everything in it.
fn age(dir: &Path, ago: Duration) {
    let when = filetime::FileTime::from_system_time(SystemTime::now() - ago);
    for entry in std::fs::read_dir(dir).unwrap() {
        filetime::set_file_mtime(entry.unwrap().path(), when).unwrap();
    }
    filetime::set_file_mtime(dir, when).unwrap();
}

#[test]
fn eviction_goes_by_last_use_and_spares_kept_and_in_progress_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hour = Duration::from_secs(3600);
    // 4 complete checkpoints of 1000 bytes, used 4h, 3h, 2h and 1h ago.
    let dirs: HashMap<&str, PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (*n, root.join(n)))
        .collect();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let dir = &dirs[name];
        fill(dir, 1000);
        Cache::mark_complete(dir).unwrap();
        set_last_used(dir, hour * (4 - i as u32));
    }
    // A download in progress, and an abandoned one.
    let busy = root.join("busy");
    fill(&busy, 1000);
    let abandoned = root.join("abandoned");
    fill(&abandoned, 1000);
    age(&abandoned, hour * 10);

    let extra: u64 = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            std::fs::read_dir(&dirs[n])
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
                - 1000
        })
        .max()
        .unwrap();

    // Room for 4 folders: the abandoned download goes first (oldest),
    // then `a`; `b` is kept though older than `c`.
    let cache = cache(root, 4000 + 4 * extra);
    let freed = cache.evict(&[&dirs["b"]]).unwrap();
    assert!(!abandoned.exists());
    assert!(!dirs["a"].exists());
    assert!(dirs["b"].exists() && dirs["c"].exists() && dirs["d"].exists());
    assert!(busy.exists());
    assert!(freed >= 2000, "{freed}");

    // Under the limit: nothing happens.
    assert_eq!(cache.evict(&[]).unwrap(), 0);

    // A tiny limit: everything but the kept and the in-progress folders.
    let tiny = self::cache(root, 10);
    tiny.evict(&[&dirs["d"]]).unwrap();
    assert!(!dirs["b"].exists() && !dirs["c"].exists());
    assert!(dirs["d"].exists());
    assert!(busy.exists());
}

#[test]
fn touch_changes_the_eviction_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (old, new) = (root.join("old"), root.join("new"));
    for dir in [&old, &new] {
        fill(dir, 1000);
        Cache::mark_complete(dir).unwrap();
    }
    set_last_used(&old, Duration::from_secs(7200));
    set_last_used(&new, Duration::from_secs(3600));
    Cache::touch(&old); // now the most recently used
    let cache = cache(root, 1500);
    cache.evict(&[]).unwrap();
    assert!(old.exists());
    assert!(!new.exists());
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_kind_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "cannot mount a tmpfs to fill: the tests run as root (see .ci/run)"
    );
    let _mount = Mount(mnt.clone());
    let (base, _log) = server().await;
    let cache = cache(&mnt.join("cache"), u64::MAX);
    let dest = mnt.join("cache").join("c").join("big.bin");
    let err = cache
        .download(
            &reqwest::Client::new(),
            DownloadRequest {
                url: &format!("{base}/big"),
                dest: &dest,
                sha256: None,
                size: Some(2 * 1024 * 1024),
                bearer: None,
            },
        )
        .await
        .unwrap_err();
    eprintln!("full disk: {}", err.message);
    assert_eq!(err.kind, "disk", "{}", err.message);
    assert!(err.message.contains("big.bin.partial"), "{}", err.message);
    assert!(!dest.exists());
}

/// Symlinks planted in the cache (by a tarball, another program or an
/// earlier bug) never let a download write outside it: a symlinked folder
/// that leads out is refused, a symlinked partial file is refused, and a
/// symlinked destination that does not verify is replaced, not written
/// through.
#[tokio::test]
async fn symlinks_never_lead_a_download_out_of_the_cache() {
    let (base, _log) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let cache = cache(&tmp.path().join("cache"), u64::MAX);
    let dir = cache.checkpoint_dir(&checkpoint("acme/model", "sym"));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::Client::new();
    let digest = sha(&DATA);
    let url = format!("{base}/file");
    let request = |dest: &'static Path| DownloadRequest {
        url: &url,
        dest,
        sha256: Some(&digest),
        size: Some(LEN as u64),
        bearer: None,
    };

    // A folder inside the checkpoint that is a symlink to the outside.
    std::os::unix::fs::symlink(&outside, dir.join("onnx")).unwrap();
    let dest: &'static Path = Box::leak(dir.join("onnx/model.onnx").into_boxed_path());
    let err = cache.download(&client, request(dest)).await.unwrap_err();
    assert_eq!(err.kind, "unsafe_path", "{}", err.message);
    assert!(!outside.join("model.onnx").exists());

    // The partial file is a symlink to a file outside.
    let dest: &'static Path = Box::leak(dir.join("weights.bin").into_boxed_path());
    std::os::unix::fs::symlink(&victim, partial_of(dest)).unwrap();
    let err = cache.download(&client, request(dest)).await.unwrap_err();
    assert_eq!(err.kind, "unsafe_path", "{}", err.message);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // The destination itself is a symlink to a file outside: it does not
    // verify, so the link is replaced by the real download; the file it
    // pointed at is untouched.
    let dest: &'static Path = Box::leak(dir.join("tokenizer.json").into_boxed_path());
    std::os::unix::fs::symlink(&victim, dest).unwrap();
    cache.download(&client, request(dest)).await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(dest)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(dest).unwrap(), *DATA);
}
