//! The download cache: where fetched checkpoints live, with a size limit.
//!
//! Layout: one folder per checkpoint, `root/<model>-<hash>/`, holding the
//! downloaded files, `.complete` once every file is in place (written last)
//! and `.last-used`, whose mtime orders eviction. A file being downloaded is
//! `<name>.partial` until it is verified, fsynced and renamed into place, so a
//! file under its final name is always whole; a `.partial` left by a crash or
//! a cut connection is resumed with an HTTP range request.
//!
//! One download per destination at a time: the daemon fetches a checkpoint
//! once, so two concurrent downloads of the same file are not guarded against.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::http::{transport_reason, Disposition, RetryPolicy};
use crate::{Checkpoint, WatchError};

/// Written last into a checkpoint folder once all its files are in place.
pub const COMPLETE_FILE: &str = ".complete";
/// Its mtime is the checkpoint's last use (eviction order).
pub const LAST_USED_FILE: &str = ".last-used";
/// Suffix of a file still being downloaded.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// How long an incomplete checkpoint folder counts as a download in progress
/// after its last modification (eviction never touches one in progress).
pub const DEFAULT_IN_PROGRESS_GRACE: Duration = Duration::from_secs(3600);

/// Where fetched checkpoints live, with a size limit.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    /// `root` with symlinks resolved, for containment checks.
    canonical_root: PathBuf,
    max_bytes: u64,
    retry: RetryPolicy,
    in_progress_grace: Duration,
}

/// One file to download.
#[derive(Clone, Copy, Debug)]
pub struct DownloadRequest<'a> {
    pub url: &'a str,
    /// Where the file goes; must be inside the cache root.
    pub dest: &'a Path,
    /// Expected SHA-256, hex (an optional `sha256:` prefix is accepted).
    pub sha256: Option<&'a str>,
    /// Expected size in bytes.
    pub size: Option<u64>,
    /// Sent as `Authorization: Bearer ...`; never written into errors or logs.
    pub bearer: Option<&'a str>,
}

impl Cache {
    /// Opens (creating it if needed) the cache at `root`, holding at most
    /// `max_bytes` after [`Cache::evict`].
    pub fn new(root: PathBuf, max_bytes: u64) -> Result<Cache, WatchError> {
        std::fs::create_dir_all(&root).map_err(|e| disk_error(&root, &e))?;
        let canonical_root = root.canonicalize().map_err(|e| disk_error(&root, &e))?;
        Ok(Cache {
            root,
            canonical_root,
            max_bytes,
            retry: RetryPolicy::default(),
            in_progress_grace: DEFAULT_IN_PROGRESS_GRACE,
        })
    }

    /// Replaces the retry policy of downloads (the default is
    /// [`RetryPolicy::default`]).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Cache {
        self.retry = policy;
        self
    }

    /// How long after its last modification an incomplete folder is still
    /// taken for a download in progress (default one hour).
    pub fn with_in_progress_grace(mut self, grace: Duration) -> Cache {
        self.in_progress_grace = grace;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// `root/<sanitized model>-<short hash of checkpoint.key()>`: only
    /// `[A-Za-z0-9._-]` are kept (others become `_`), never empty, never
    /// hidden, never `.` or `..`.
    pub fn checkpoint_dir(&self, checkpoint: &Checkpoint) -> PathBuf {
        let hash = hex::encode(Sha256::digest(checkpoint.key().as_bytes()));
        let mut model: String = checkpoint
            .model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        // No leading dots: a hidden folder (or `.`/`..` before the suffix).
        while model.starts_with('.') {
            model.remove(0);
        }
        if model.is_empty() {
            model.push_str("model");
        }
        self.root.join(format!("{model}-{}", &hash[..16]))
    }

    /// Joins a registry-supplied relative file name (`a/b.onnx`) under `dir`.
    /// Absolute paths, `..` and `.` components, empty names or components,
    /// backslashes and NUL are rejected with kind `unsafe_path`.
    pub fn safe_join(dir: &Path, name: &str) -> Result<PathBuf, WatchError> {
        let reject = |why: &str| {
            Err(WatchError::new(
                "unsafe_path",
                format!("refusing file name {name:?} from the registry: {why}"),
            ))
        };
        if name.is_empty() {
            return reject("it is empty");
        }
        if name.contains('\0') {
            return reject("it contains NUL");
        }
        if name.contains('\\') {
            return reject("it contains a backslash");
        }
        if name.starts_with('/') {
            return reject("it is absolute");
        }
        let mut path = dir.to_path_buf();
        for part in name.split('/') {
            match part {
                "" => return reject("it has an empty component"),
                "." | ".." => return reject("it has a `.` or `..` component"),
                _ => {}
            }
            // Belt and braces for platforms with other path syntax (`C:`).
            let mut components = Path::new(part).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(_)), None) => path.push(part),
                _ => return reject("it is not a plain relative path"),
            }
        }
        Ok(path)
    }

    /// Downloads `request.url` to `request.dest` through `<dest>.partial`:
    /// resumes an existing partial file with `Range: bytes=N-` (206 appends,
    /// 200 restarts, 416 means it is complete), verifies size and SHA-256
    /// (kind `checksum` on mismatch, the partial is deleted), fsyncs and
    /// renames into place. Transient failures (connection errors, timeouts,
    /// bodies cut short, 408/429/5xx) are retried under the cache's
    /// [`RetryPolicy`], the count restarting whenever an attempt made
    /// progress; other HTTP errors fail at once (kind `http`, naming the
    /// status and the URL without its query). Write errors, a full disk
    /// included, are kind `disk` naming the path. A `dest` that already
    /// exists and verifies is not downloaded again. Returns the file size.
    pub async fn download(
        &self,
        client: &reqwest::Client,
        request: DownloadRequest<'_>,
    ) -> Result<u64, WatchError> {
        let dest = self.check_dest(request.dest)?;
        let expected_sha = request.sha256.map(normalize_sha256).transpose()?;
        let shown = redact_url(request.url);

        if dest.exists() {
            match verify(&dest, request.size, expected_sha.as_deref()).await {
                Ok(size) => {
                    tracing::debug!(path = %dest.display(), "already downloaded");
                    return Ok(size);
                }
                Err(e) => {
                    tracing::warn!(path = %dest.display(), "replacing a file that does not verify: {e}");
                    std::fs::remove_file(&dest).map_err(|e| disk_error(&dest, &e))?;
                }
            }
        }

        let partial = partial_path(&dest);
        if let Ok(meta) = std::fs::symlink_metadata(&partial) {
            if !meta.is_file() {
                return Err(WatchError::new(
                    "unsafe_path",
                    format!("{} exists and is not a regular file", partial.display()),
                ));
            }
        }

        let mut failures = 0u32;
        loop {
            let mut offset = file_len(&partial)?;
            if let Some(size) = request.size {
                if offset > size {
                    tracing::warn!(path = %partial.display(), "partial file is larger than expected; restarting");
                    remove_if_exists(&partial)?;
                    offset = 0;
                } else if offset == size && partial.exists() {
                    return self
                        .finish(&partial, &dest, request.size, expected_sha.as_deref())
                        .await;
                }
            }
            let outcome = self
                .attempt(client, &request, &partial, offset, &shown)
                .await?;
            match outcome {
                Attempt::Done => {
                    return self
                        .finish(&partial, &dest, request.size, expected_sha.as_deref())
                        .await
                }
                Attempt::Retry {
                    kind,
                    hint,
                    reason,
                    progressed,
                } => {
                    if progressed {
                        failures = 0;
                    }
                    if failures >= self.retry.max_retries {
                        return Err(WatchError::new(
                            kind,
                            format!(
                                "GET {shown}: gave up after {} attempts without progress: {reason}",
                                failures + 1
                            ),
                        ));
                    }
                    let delay = self.retry.delay(failures, hint);
                    tracing::warn!(url = %shown, "download interrupted ({reason}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    failures += 1;
                }
            }
        }
    }

    /// One request; writes what arrives to `partial`.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        request: &DownloadRequest<'_>,
        partial: &Path,
        offset: u64,
        shown: &str,
    ) -> Result<Attempt, WatchError> {
        let mut builder = client.get(request.url);
        if let Some(token) = request.bearer {
            builder = builder.bearer_auth(token);
        }
        if offset > 0 {
            builder = builder.header(RANGE, format!("bytes={offset}-"));
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Attempt::Retry {
                    kind: "unreachable",
                    hint: None,
                    reason: transport_reason(&e.without_url()),
                    progressed: false,
                })
            }
        };
        let status = response.status();
        let append = match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    remove_if_exists(partial)?;
                    return Ok(Attempt::Retry {
                        kind: "http",
                        hint: Some(Duration::ZERO),
                        reason: format!(
                            "asked for bytes {offset}- but the server sent another range"
                        ),
                        progressed: false,
                    });
                }
                true
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // The partial file already holds the whole resource, unless
                // the server says the resource has another length.
                let total = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_total);
                if total.is_some_and(|t| t != offset) {
                    remove_if_exists(partial)?;
                    return Ok(Attempt::Retry {
                        kind: "http",
                        hint: Some(Duration::ZERO),
                        reason: "the partial file is longer than the resource".into(),
                        progressed: false,
                    });
                }
                return Ok(Attempt::Done);
            }
            s if s.is_success() => false,
            _ => {
                let headers = response.headers().clone();
                let body = response.text().await.unwrap_or_default();
                return match self.retry.classify(status, &headers, &body) {
                    Disposition::Retry { hint, reason } => Ok(Attempt::Retry {
                        kind: "http",
                        hint,
                        reason,
                        progressed: false,
                    }),
                    Disposition::Fatal { message, .. } => {
                        Err(WatchError::new("http", format!("GET {shown}: {message}")))
                    }
                };
            }
        };

        let mut options = tokio::fs::OpenOptions::new();
        options.create(true);
        if append {
            options.append(true);
        } else {
            options.write(true).truncate(true);
        }
        let mut file = options
            .open(partial)
            .await
            .map_err(|e| disk_error(partial, &e))?;
        let mut written = 0u64;
        let mut stream = response.bytes_stream();
        let mut cut = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    file.write_all(&bytes)
                        .await
                        .map_err(|e| disk_error(partial, &e))?;
                    written += bytes.len() as u64;
                }
                Err(e) => {
                    cut = Some(transport_reason(&e.without_url()));
                    break;
                }
            }
        }
        file.flush().await.map_err(|e| disk_error(partial, &e))?;
        file.sync_all().await.map_err(|e| disk_error(partial, &e))?;
        drop(file);
        let len = if append { offset + written } else { written };
        if let Some(reason) = cut {
            return Ok(Attempt::Retry {
                kind: "unreachable",
                hint: None,
                reason,
                progressed: written > 0,
            });
        }
        if let Some(size) = request.size {
            if len < size {
                return Ok(Attempt::Retry {
                    kind: "unreachable",
                    hint: None,
                    reason: format!("the body ended after {len} of {size} bytes"),
                    progressed: written > 0,
                });
            }
        }
        Ok(Attempt::Done)
    }

    /// Verifies the partial file, fsyncs it and renames it into place.
    async fn finish(
        &self,
        partial: &Path,
        dest: &Path,
        size: Option<u64>,
        sha256: Option<&str>,
    ) -> Result<u64, WatchError> {
        let len = match verify(partial, size, sha256).await {
            Ok(len) => len,
            Err(e) => {
                if e.kind == "checksum" {
                    remove_if_exists(partial)?;
                }
                return Err(e);
            }
        };
        let (partial_owned, dest_owned) = (partial.to_path_buf(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || -> Result<(), WatchError> {
            let file =
                std::fs::File::open(&partial_owned).map_err(|e| disk_error(&partial_owned, &e))?;
            file.sync_all()
                .map_err(|e| disk_error(&partial_owned, &e))?;
            std::fs::rename(&partial_owned, &dest_owned)
                .map_err(|e| disk_error(&dest_owned, &e))?;
            sync_dir(dest_owned.parent().unwrap_or(Path::new(".")));
            Ok(())
        })
        .await
        .map_err(|e| WatchError::new("disk", format!("download task failed: {e}")))??;
        tracing::debug!(path = %dest.display(), bytes = len, "downloaded");
        Ok(len)
    }

    /// Checks that `dest` lies inside the cache root and creates its folder.
    fn check_dest(&self, dest: &Path) -> Result<PathBuf, WatchError> {
        let unsafe_dest = |why: &str| {
            WatchError::new(
                "unsafe_path",
                format!(
                    "download destination {} {why} (cache root {})",
                    dest.display(),
                    self.root.display()
                ),
            )
        };
        if dest
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(unsafe_dest("has a `.` or `..` component"));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| unsafe_dest("has no file name"))?;
        let parent = dest.parent().ok_or_else(|| unsafe_dest("has no folder"))?;
        if !parent.starts_with(&self.root) && !parent.starts_with(&self.canonical_root) {
            return Err(unsafe_dest("is outside the cache"));
        }
        std::fs::create_dir_all(parent).map_err(|e| disk_error(parent, &e))?;
        let canonical_parent = parent.canonicalize().map_err(|e| disk_error(parent, &e))?;
        if !canonical_parent.starts_with(&self.canonical_root) {
            return Err(unsafe_dest("resolves outside the cache"));
        }
        Ok(canonical_parent.join(name))
    }

    /// Marks a checkpoint folder complete: writes `.complete` (after every
    /// file is in place) and fsyncs it and the folder.
    pub fn mark_complete(dir: &Path) -> Result<(), WatchError> {
        let path = dir.join(COMPLETE_FILE);
        let mut file = std::fs::File::create(&path).map_err(|e| disk_error(&path, &e))?;
        file.write_all(chrono::Utc::now().to_rfc3339().as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| disk_error(&path, &e))?;
        sync_dir(dir);
        Ok(())
    }

    pub fn is_complete(dir: &Path) -> bool {
        dir.join(COMPLETE_FILE).is_file()
    }

    /// Marks `dir` as just used (sets the mtime of its `.last-used` file).
    /// Failures are logged, not returned: a missed touch only affects the
    /// eviction order.
    pub fn touch(dir: &Path) {
        let path = dir.join(LAST_USED_FILE);
        let result = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "cannot mark checkpoint as used: {e}");
        }
    }

    /// Deletes least-recently-used checkpoint folders until the cache holds
    /// at most `max_bytes`. Never deletes folders in `keep`, nor incomplete
    /// folders modified within the in-progress grace (downloads under way);
    /// abandoned incomplete folders are deleted like complete ones. Returns
    /// the bytes freed (the cache may stay over its limit when only kept or
    /// in-progress folders remain).
    pub fn evict(&self, keep: &[&Path]) -> Result<u64, WatchError> {
        let keep: Vec<PathBuf> = keep.iter().map(|p| resolve(p)).collect();
        let entries = std::fs::read_dir(&self.root).map_err(|e| disk_error(&self.root, &e))?;
        let mut total = 0u64;
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| disk_error(&self.root, &e))?;
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_dir() {
                total += meta.len();
                continue;
            }
            let usage = usage(&path);
            total += usage.bytes;
            dirs.push((path, usage));
        }
        if total <= self.max_bytes {
            return Ok(0);
        }
        let now = SystemTime::now();
        let mut candidates: Vec<_> = dirs
            .into_iter()
            .filter(|(path, _)| !keep.contains(&resolve(path)))
            .filter(|(path, usage)| {
                Cache::is_complete(path)
                    || now
                        .duration_since(usage.newest)
                        .is_ok_and(|age| age >= self.in_progress_grace)
            })
            .collect();
        candidates.sort_by_key(|(path, usage)| last_used(path, usage));
        let mut freed = 0u64;
        for (path, usage) in candidates {
            if total <= self.max_bytes {
                break;
            }
            // `.complete` goes first: a folder half deleted by a crash must
            // never pass for a complete checkpoint.
            remove_if_exists(&path.join(COMPLETE_FILE))?;
            std::fs::remove_dir_all(&path).map_err(|e| disk_error(&path, &e))?;
            tracing::info!(path = %path.display(), bytes = usage.bytes, "evicted from the checkpoint cache");
            total = total.saturating_sub(usage.bytes);
            freed += usage.bytes;
        }
        if total > self.max_bytes {
            tracing::warn!(
                bytes = total,
                max_bytes = self.max_bytes,
                "the checkpoint cache stays over its limit: the rest is in use or being downloaded"
            );
        }
        Ok(freed)
    }
}

enum Attempt {
    Done,
    Retry {
        kind: &'static str,
        hint: Option<Duration>,
        reason: String,
        progressed: bool,
    },
}

struct Usage {
    bytes: u64,
    /// The newest mtime of anything inside, the folder included.
    newest: SystemTime,
}

fn usage(dir: &Path) -> Usage {
    let mut usage = Usage {
        bytes: 0,
        newest: SystemTime::UNIX_EPOCH,
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if let Ok(m) = meta.modified() {
            usage.newest = usage.newest.max(m);
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            usage.bytes += meta.len();
        }
    }
    usage
}

fn last_used(dir: &Path, usage: &Usage) -> SystemTime {
    [LAST_USED_FILE, COMPLETE_FILE]
        .iter()
        .find_map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .unwrap_or(usage.newest)
}

fn resolve(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(PARTIAL_SUFFIX);
    dest.with_file_name(name)
}

fn file_len(path: &Path) -> Result<u64, WatchError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(disk_error(path, &e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), WatchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(disk_error(path, &e)),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn disk_error(path: &Path, e: &std::io::Error) -> WatchError {
    WatchError::new("disk", format!("cannot write {}: {e}", path.display()))
}

fn normalize_sha256(s: &str) -> Result<String, WatchError> {
    let hex = s.trim();
    let hex = hex
        .strip_prefix("sha256:")
        .unwrap_or(hex)
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WatchError::new(
            "malformed",
            format!("{s:?} is not a SHA-256 digest (64 hex digits)"),
        ));
    }
    Ok(hex)
}

/// Checks size and SHA-256 of a downloaded file; returns its size.
async fn verify(path: &Path, size: Option<u64>, sha256: Option<&str>) -> Result<u64, WatchError> {
    let path = path.to_path_buf();
    let expected = sha256.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let len = std::fs::metadata(&path)
            .map_err(|e| disk_error(&path, &e))?
            .len();
        if let Some(size) = size {
            if len != size {
                return Err(WatchError::new(
                    "checksum",
                    format!("{}: expected {size} bytes, got {len}", path.display()),
                ));
            }
        }
        if let Some(expected) = expected {
            let actual = sha256_file(&path)?;
            if actual != expected {
                return Err(WatchError::new(
                    "checksum",
                    format!(
                        "{}: SHA-256 is {actual}, expected {expected}",
                        path.display()
                    ),
                ));
            }
        }
        Ok(len)
    })
    .await
    .map_err(|e| WatchError::new("disk", format!("verification task failed: {e}")))?
}

fn sha256_file(path: &Path) -> Result<String, WatchError> {
    let read_error =
        |e: std::io::Error| WatchError::new("disk", format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `bytes START-END/TOTAL` → START.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// `bytes */TOTAL` or `bytes START-END/TOTAL` → TOTAL.
fn content_range_total(value: &str) -> Option<u64> {
    value.rsplit('/').next()?.trim().parse().ok()
}

/// The URL for messages: without its query (which may carry a signature)
/// and without user info.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut shown = u.to_string();
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        Err(_) => url.split('?').next().unwrap_or(url).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_total("bytes 100-199/200"), Some(200));
        assert_eq!(content_range_total("bytes */200"), Some(200));
        assert_eq!(content_range_total("bytes 0-1/*"), None);
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            redact_url("https://u:p@host/a/b?X-Amz-Signature=abc"),
            "https://host/a/b?…"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/f"), "http://127.0.0.1:9/f");
    }

    #[test]
    fn digests_are_normalized() {
        let d = "AB".repeat(32);
        assert_eq!(
            normalize_sha256(&format!("sha256:{d}")).unwrap(),
            "ab".repeat(32)
        );
        assert_eq!(normalize_sha256("xyz").unwrap_err().kind, "malformed");
    }
}
