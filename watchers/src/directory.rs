//! The directory watcher: training jobs drop checkpoint folders into one
//! folder; each immediate subfolder is one checkpoint.
//!
//! ```toml
//! [watchers.drop]
//! kind = "directory"
//! path = "/srv/checkpoints"   # required
//! marker = "COMPLETE"         # optional: a folder is complete once it holds this file
//! settle = "30s"              # without a marker: complete once unchanged this long
//! ignore_hidden = true        # skip folders whose name starts with '.'
//! ```
//!
//! A checkpoint's model is its folder name and its revision a digest of the
//! folder's contents: relative names, sizes and mtimes of every file,
//! recursively (not the bytes: checkpoints are gigabytes). Without a marker,
//! a folder is complete once nothing in it has changed for `settle`: either
//! the digest stayed the same across polls that long, or the newest change
//! time on disk (mtime and ctime of every entry, the folder included) is that
//! old; ctime catches copies that preserve mtimes (`cp -p`, `rsync -a`).
//! With a marker, the folder is complete once the marker exists (the marker
//! itself is left out of the digest).
//!
//! Changes raise [`Watcher::wake`] through inotify (the `notify` crate,
//! recursive), and while a folder settles the watcher also wakes the daemon
//! when its settle time is up. [`Watcher::fetch`] hands out the folder itself
//! (no copy) after checking that it still matches the revision.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{Cache, Checkpoint, Target, WatchError, Watcher};

/// The watcher kind this module implements.
pub const KIND: &str = "directory";

/// Default of `settle`.
pub const DEFAULT_SETTLE: &str = "30s";

/// Deepest folder nesting scanned inside a checkpoint folder.
const MAX_DEPTH: usize = 64;

/// Slack added to a scheduled wake so the re-poll lands after the settle time.
const WAKE_SLACK: Duration = Duration::from_millis(25);

/// The kind-specific configuration, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The folder where training jobs drop checkpoint folders (required;
    /// optional here so that a missing path is reported with the rest).
    pub path: Option<PathBuf>,
    /// A file whose presence marks a checkpoint folder complete.
    #[serde(default)]
    pub marker: Option<String>,
    /// Without a marker: how long a folder must stay unchanged (humantime).
    #[serde(default = "default_settle")]
    pub settle: String,
    /// Skip folders whose name starts with '.'.
    #[serde(default = "default_true")]
    pub ignore_hidden: bool,
}

fn default_settle() -> String {
    DEFAULT_SETTLE.to_string()
}

fn default_true() -> bool {
    true
}

/// Watches one folder for checkpoint folders.
pub struct DirectoryWatcher {
    name: String,
    path: PathBuf,
    marker: Option<String>,
    settle: Duration,
    ignore_hidden: bool,
    wake: Arc<Notify>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per folder name: the revision last seen and since when.
    seen: HashMap<String, Seen>,
    /// The inotify watch and the (device, inode) of the folder it watches.
    watch: Option<(RecommendedWatcher, Option<(u64, u64)>)>,
    /// Whether a failure to watch was already logged at warn level.
    watch_failure_logged: bool,
    /// The pending settle wake: when it fires, and its task.
    timer: Option<(Instant, tokio::task::JoinHandle<()>)>,
}

struct Seen {
    revision: String,
    since: Instant,
}

/// What a scan of one checkpoint folder found.
#[derive(Clone, Debug)]
struct Scan {
    revision: String,
    files: usize,
    /// The newest mtime or ctime of anything inside, the folder included.
    newest_change: SystemTime,
    has_marker: bool,
}

impl DirectoryWatcher {
    /// Builds the watcher from its `[watchers.NAME]` table (the common keys
    /// are ignored); every problem is reported, prefixed `watchers.NAME.key`.
    pub fn from_config(name: &str, table: &toml::Table) -> Result<DirectoryWatcher, Vec<String>> {
        let crate::Settings::Directory(config) =
            crate::config::settings_of(name, crate::Kind::Directory, table)?
        else {
            unreachable!("settings of the kind asked for")
        };
        Self::configure(name, &config)
    }

    /// Checks the settings and builds the watcher (which touches nothing
    /// until it is polled).
    pub(crate) fn configure(
        name: &str,
        config: &DirectoryConfig,
    ) -> Result<DirectoryWatcher, Vec<String>> {
        let key = |k: &str| format!("`watchers.{name}.{k}`");
        let mut problems = Vec::new();
        match &config.path {
            None => problems.push(format!(
                "{}: missing: the folder where training jobs drop checkpoint folders",
                key("path")
            )),
            Some(p) if p.as_os_str().is_empty() => {
                problems.push(format!("{}: must not be empty", key("path")))
            }
            Some(_) => {}
        }
        if let Some(m) = &config.marker {
            if m.is_empty() || m == "." || m == ".." || m.contains(['/', '\\', '\0']) {
                problems.push(format!(
                    "{}: {m:?} is not a plain file name (e.g. \"COMPLETE\")",
                    key("marker")
                ));
            }
        }
        let settle = humantime::parse_duration(&config.settle).map_err(|e| {
            format!(
                "{}: invalid duration {:?}: {e} (write e.g. \"30s\" or \"2m\")",
                key("settle"),
                config.settle
            )
        });
        let settle = match settle {
            Ok(d) => d,
            Err(p) => {
                problems.push(p);
                Duration::ZERO
            }
        };
        match &config.path {
            Some(path) if problems.is_empty() => Ok(DirectoryWatcher::new(
                name,
                path.clone(),
                config.marker.clone(),
                settle,
                config.ignore_hidden,
            )),
            _ => Err(problems),
        }
    }

    /// A watcher on `path` (made absolute against the working directory).
    pub fn new(
        name: &str,
        path: PathBuf,
        marker: Option<String>,
        settle: Duration,
        ignore_hidden: bool,
    ) -> DirectoryWatcher {
        let path = std::path::absolute(&path).unwrap_or(path);
        DirectoryWatcher {
            name: name.to_string(),
            path,
            marker,
            settle,
            ignore_hidden,
            wake: Arc::new(Notify::new()),
            state: Mutex::new(State::default()),
        }
    }

    /// The watched folder (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn marker(&self) -> Option<&str> {
        self.marker.as_deref()
    }

    pub fn settle(&self) -> Duration {
        self.settle
    }

    pub fn ignore_hidden(&self) -> bool {
        self.ignore_hidden
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts, when the folder was replaced) the inotify watch.
    /// Best effort: without it the daemon still polls on its schedule.
    fn ensure_watching(&self) {
        let mut state = self.state();
        let identity = folder_identity(&self.path);
        if identity.is_none() {
            state.watch = None;
            return;
        }
        if let Some((_, watched)) = &state.watch {
            if *watched == identity {
                return;
            }
        }
        state.watch = None;
        let wake = self.wake.clone();
        let root = self.path.clone();
        let ignore_hidden = self.ignore_hidden;
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if relevant(&event, &root, ignore_hidden) {
                    wake.notify_one();
                }
            }
            Err(e) => {
                tracing::debug!(folder = %root.display(), "file watch error: {e}");
                wake.notify_one();
            }
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&self.path, RecursiveMode::Recursive)?;
            Ok(w)
        });
        match watcher {
            Ok(w) => {
                tracing::debug!(watcher = %self.name, folder = %self.path.display(), "watching for changes");
                state.watch = Some((w, identity));
            }
            Err(e) => {
                let message = format!(
                    "watcher {}: cannot watch {} for changes ({e}); relying on the schedule",
                    self.name,
                    self.path.display()
                );
                if state.watch_failure_logged {
                    tracing::debug!("{message}");
                } else {
                    tracing::warn!("{message}");
                    state.watch_failure_logged = true;
                }
            }
        }
    }

    /// Wakes the daemon `after` from now, unless an earlier wake is pending.
    fn schedule_wake(&self, state: &mut State, after: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = Instant::now() + after;
        if let Some((pending, task)) = &state.timer {
            if !task.is_finished() && *pending <= deadline {
                return;
            }
            task.abort();
        }
        let wake = self.wake.clone();
        let task = runtime.spawn(async move {
            tokio::time::sleep(after).await;
            wake.notify_one();
        });
        state.timer = Some((deadline, task));
    }

    fn checkpoint(&self, name: &str, scan: &Scan) -> Checkpoint {
        Checkpoint {
            watcher: self.name.clone(),
            model: name.to_string(),
            revision: scan.revision.clone(),
            baseline: None,
            detail: serde_json::json!({
                "dir": self.path.join(name),
                "files": scan.files,
            }),
        }
    }
}

impl Drop for DirectoryWatcher {
    fn drop(&mut self) {
        if let Some((_, task)) = self.state().timer.take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Watcher for DirectoryWatcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn poll(&self) -> Result<Vec<Checkpoint>, WatchError> {
        self.ensure_watching();
        let (path, marker, ignore_hidden) =
            (self.path.clone(), self.marker.clone(), self.ignore_hidden);
        let listing =
            tokio::task::spawn_blocking(move || list(&path, marker.as_deref(), ignore_hidden))
                .await
                .map_err(|e| WatchError::new("unreachable", format!("scan task failed: {e}")))??;

        let now = Instant::now();
        let wall = SystemTime::now();
        let mut found = Vec::new();
        let mut next_wake: Option<Duration> = None;
        let mut state = self.state();
        state
            .seen
            .retain(|name, _| listing.iter().any(|(n, _)| n == name));
        for (name, scan) in listing {
            let scan = match scan {
                Ok(scan) => scan,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Something vanished mid-scan: the folder is changing.
                    tracing::debug!(watcher = %self.name, folder = %name, "changing while scanned: {e}");
                    state.seen.remove(&name);
                    next_wake = Some(next_wake.map_or(self.settle, |w| w.min(self.settle)));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(watcher = %self.name, folder = %name, "cannot read checkpoint folder: {e}");
                    continue;
                }
            };
            if scan.files == 0 {
                tracing::debug!(watcher = %self.name, folder = %name, "empty; skipped");
                continue;
            }
            let seen = state.seen.entry(name.clone()).or_insert_with(|| Seen {
                revision: scan.revision.clone(),
                since: now,
            });
            if seen.revision != scan.revision {
                *seen = Seen {
                    revision: scan.revision.clone(),
                    since: now,
                };
            }
            let complete = match &self.marker {
                Some(marker) => {
                    if !scan.has_marker {
                        tracing::debug!(watcher = %self.name, folder = %name, "waiting for its marker file {marker:?}");
                    }
                    scan.has_marker
                }
                None => {
                    let unchanged = now.duration_since(seen.since);
                    let quiet = wall.duration_since(scan.newest_change).unwrap_or_default();
                    let waited = unchanged.max(quiet);
                    if waited >= self.settle {
                        true
                    } else {
                        let left = self.settle - waited;
                        tracing::debug!(watcher = %self.name, folder = %name, "settling: complete if unchanged for another {left:?}");
                        next_wake = Some(next_wake.map_or(left, |w| w.min(left)));
                        false
                    }
                }
            };
            if complete {
                found.push(self.checkpoint(&name, &scan));
            }
        }
        if let Some(after) = next_wake {
            self.schedule_wake(&mut state, after + WAKE_SLACK);
        }
        Ok(found)
    }

    async fn fetch(&self, checkpoint: &Checkpoint, _cache: &Cache) -> Result<Target, WatchError> {
        let model = &checkpoint.model;
        if model.contains('/') {
            return Err(WatchError::new(
                "malformed",
                format!("{model:?} is not a folder name of watcher {}", self.name),
            ));
        }
        let folder = Cache::safe_join(&self.path, model)
            .map_err(|e| WatchError::new("malformed", e.message))?;
        let (scan_folder, marker) = (folder.clone(), self.marker.clone());
        let scan = tokio::task::spawn_blocking(move || scan(&scan_folder, marker.as_deref()))
            .await
            .map_err(|e| WatchError::new("unreachable", format!("scan task failed: {e}")))?;
        let gone = |why: String| {
            WatchError::new(
                "gone",
                format!("checkpoint folder {}: {why}", folder.display()),
            )
        };
        let scan = match scan {
            Ok(scan) => scan,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(gone(
                    "no longer exists (or changed while being read)".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(gone("is no longer a folder".into()))
            }
            Err(e) => {
                return Err(WatchError::new(
                    "unreachable",
                    format!("cannot read checkpoint folder {}: {e}", folder.display()),
                ))
            }
        };
        if scan.revision != checkpoint.revision {
            return Err(gone(format!(
                "changed since it was found (revision {} is now {})",
                checkpoint.revision, scan.revision
            )));
        }
        if self.marker.is_some() && !scan.has_marker {
            return Err(gone("its marker file was removed".into()));
        }
        Ok(Target::Onnx { dir: folder })
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        self.ensure_watching();
        Some(self.wake.clone())
    }
}

/// Whether a file event may mean a checkpoint appeared or changed. Plain
/// data writes are left out (a copy makes thousands; the settle timer and
/// the close of the written file cover them), and so are reads.
fn relevant(event: &notify::Event, root: &Path, ignore_hidden: bool) -> bool {
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_)) => false,
        _ => true,
    };
    if !kind_matters {
        return false;
    }
    if !ignore_hidden || event.paths.is_empty() {
        return true;
    }
    // Changes inside hidden top-level folders (staging areas) are ignored.
    event.paths.iter().any(|p| match p.strip_prefix(root) {
        Ok(rel) => !rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with('.')),
        Err(_) => true,
    })
}

/// The immediate subfolders of `root` and their scans.
#[allow(clippy::type_complexity)]
fn list(
    root: &Path,
    marker: Option<&str>,
    ignore_hidden: bool,
) -> Result<Vec<(String, std::io::Result<Scan>)>, WatchError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        WatchError::new(
            "unreachable",
            format!("cannot list checkpoint folder {}: {e}", root.display()),
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            WatchError::new(
                "unreachable",
                format!("cannot list {}: {e}", root.display()),
            )
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(folder = ?entry.file_name(), "skipping a folder whose name is not UTF-8");
            continue;
        };
        if ignore_hidden && name.starts_with('.') {
            continue;
        }
        // Folders, or links to folders.
        let path = entry.path();
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        out.push((name, scan(&path, marker)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Digests a checkpoint folder: relative names, sizes and mtimes of every
/// entry, recursively (symbolic links are followed for files and recorded,
/// not followed, for folders). The top-level marker file is left out.
fn scan(folder: &Path, marker: Option<&str>) -> std::io::Result<Scan> {
    let top = std::fs::metadata(folder)?;
    if !top.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a folder",
        ));
    }
    let mut newest = changed(&top);
    let mut records = Vec::new();
    let mut files = 0usize;
    let mut has_marker = false;
    let mut stack = vec![(folder.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, rel_dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if depth == 0 && marker == Some(name.as_str()) {
                has_marker = true;
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            newest = newest.max(changed(&meta));
            if meta.is_dir() {
                records.push(format!("D\0{rel}\n"));
                if depth + 1 < MAX_DEPTH {
                    stack.push((path, rel, depth + 1));
                }
            } else if meta.file_type().is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(target) if target.is_file() => {
                        newest = newest.max(changed(&target));
                        files += 1;
                        records.push(file_record(&rel, &target));
                    }
                    _ => {
                        let to = std::fs::read_link(&path)?;
                        records.push(format!("L\0{rel}\0{}\n", to.to_string_lossy()));
                    }
                }
            } else {
                files += 1;
                records.push(file_record(&rel, &meta));
            }
        }
    }
    records.sort();
    let mut hasher = Sha256::new();
    for r in &records {
        hasher.update(r.as_bytes());
    }
    let digest = hex::encode(hasher.finalize());
    Ok(Scan {
        revision: digest[..32].to_string(),
        files,
        newest_change: newest,
        has_marker,
    })
}

fn file_record(rel: &str, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("F\0{rel}\0{}\0{mtime}\n", meta.len())
}

/// The later of an entry's mtime and ctime.
fn changed(meta: &std::fs::Metadata) -> SystemTime {
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ctime = u64::try_from(meta.ctime())
            .ok()
            .and_then(|secs| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, meta.ctime_nsec() as u32))
            })
            .unwrap_or(SystemTime::UNIX_EPOCH);
        mtime.max(ctime)
    }
    #[cfg(not(unix))]
    {
        mtime
    }
}

fn folder_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        Some((0, 0))
    }
}
