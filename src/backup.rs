//! `safedrift export` and `safedrift import`: the whole store as JSON lines,
//! for backups, restores and moves between machines or sled versions.
//!
//! The file is line-oriented so it streams and diffs: a header line
//! (`{"safedrift_export": 1, "schema_version": N, ...}`), one line per record
//! (`{"tree": "runs", "key": "<hex>", "value": <JSON>}`; a value that is not
//! JSON is written as `"value_hex"`), and a trailer line (`{"end": true,
//! "records": N}`) so a truncated file is refused rather than half-restored.
//!
//! Import never touches an existing store: it writes into a fresh sibling
//! directory, flushes it, checks it opens as a store, and only then renames it
//! into place. A crash mid-import leaves the target absent (and a
//! `*.importing` directory to delete), never a half-filled store.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::store::{Store, StoreError, SCHEMA_VERSION, UPGRADES_FROM};

/// The export format version.
pub const FORMAT: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error("{path}: cannot import: {message}")]
    Target { path: PathBuf, message: String },
    #[error("writing the export: {0}")]
    Write(std::io::Error),
}

/// Writes every tree of `store` to `out`; returns the number of records.
pub fn export(store: &Store, out: &mut dyn Write) -> Result<u64, BackupError> {
    let header = json!({
        "safedrift_export": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "version": env!("CARGO_PKG_VERSION"),
    });
    writeln!(out, "{header}").map_err(BackupError::Write)?;
    let mut records = 0u64;
    for name in store.tree_names() {
        let tree = store.tree(&name)?;
        for item in tree.iter() {
            let (key, value) = item.map_err(crate::store::StoreError::from)?;
            let mut line = json!({"tree": name, "key": hex::encode(&key)});
            match serde_json::from_slice::<Value>(&value) {
                Ok(v) => line["value"] = v,
                Err(_) => line["value_hex"] = Value::String(hex::encode(&value)),
            }
            writeln!(out, "{line}").map_err(BackupError::Write)?;
            records += 1;
        }
    }
    writeln!(out, "{}", json!({"end": true, "records": records})).map_err(BackupError::Write)?;
    out.flush().map_err(BackupError::Write)?;
    Ok(records)
}

/// Restores an export read from `input` (named `source` in errors) into a
/// new store at `data_dir`, which must not exist or be an empty directory.
pub fn import(input: &mut dyn BufRead, source: &str, data_dir: &Path) -> Result<u64, BackupError> {
    let target_err = |message: String| BackupError::Target {
        path: data_dir.to_path_buf(),
        message,
    };
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir)
            .map_err(|e| target_err(format!("cannot read the directory: {e}")))?;
        if entries.next().is_some() {
            return Err(target_err(
                "the directory is not empty; move the current store aside first (imports never merge into or overwrite a store)".into(),
            ));
        }
    }
    let staging = staging_dir(data_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| target_err(format!("cannot remove {}: {e}", staging.display())))?;
    }
    let result = write_staging(input, source, &staging);
    let records = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // It must open as a store of this build before it replaces anything.
    // sled's I/O threads may hold the staging database's lock for a moment
    // after the writer above is dropped.
    let mut attempts = 0;
    loop {
        match Store::open(&staging) {
            Ok(store) => break drop(store),
            Err(StoreError::InUse { .. }) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e.into());
            }
        }
    }
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)
            .map_err(|e| target_err(format!("cannot replace the empty directory: {e}")))?;
    }
    std::fs::rename(&staging, data_dir)
        .map_err(|e| target_err(format!("cannot move {} into place: {e}", staging.display())))?;
    Ok(records)
}

fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(".importing");
    data_dir.with_file_name(name)
}

fn write_staging(
    input: &mut dyn BufRead,
    source: &str,
    staging: &Path,
) -> Result<u64, BackupError> {
    let bad = |line: usize, message: String| BackupError::Input {
        path: format!("{source}:{line}"),
        message,
    };
    // No background flusher (flushed once at the end): its thread holds
    // the database, and with it the file lock that the check after this
    // (`Store::open` on the staging directory) needs, for up to a flush
    // interval after the handle here is dropped.
    let db = sled::Config::new()
        .path(staging)
        .flush_every_ms(None)
        .open()
        .map_err(|e| BackupError::Target {
            path: staging.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut lines = input.lines().enumerate();
    let header: Value = match lines.next() {
        Some((_, Ok(text))) => {
            serde_json::from_str(&text).map_err(|e| bad(1, format!("not an export header: {e}")))?
        }
        Some((_, Err(e))) => return Err(bad(1, format!("cannot read: {e}"))),
        None => return Err(bad(1, "empty file: not a safedrift export".into())),
    };
    check_header(&header).map_err(|message| bad(1, message))?;
    let mut records = 0u64;
    let mut ended = false;
    for (i, line) in lines {
        let n = i + 1;
        let text = line.map_err(|e| bad(n, format!("cannot read: {e}")))?;
        if ended {
            if text.trim().is_empty() {
                continue;
            }
            return Err(bad(n, "data after the end marker".into()));
        }
        let record: Value =
            serde_json::from_str(&text).map_err(|e| bad(n, format!("not a JSON record: {e}")))?;
        if record.get("end").and_then(Value::as_bool) == Some(true) {
            let expected = record.get("records").and_then(Value::as_u64);
            if expected != Some(records) {
                return Err(bad(
                    n,
                    format!("the end marker counts {expected:?} records, the file holds {records}"),
                ));
            }
            ended = true;
            continue;
        }
        let (tree, key, value) = parse_record(&record).map_err(|message| bad(n, message))?;
        let tree = db.open_tree(tree).map_err(crate::store::StoreError::from)?;
        tree.insert(key, value)
            .map_err(crate::store::StoreError::from)?;
        records += 1;
    }
    if !ended {
        return Err(BackupError::Input {
            path: source.to_string(),
            message: format!(
                "truncated: no end marker after {records} records (was the export interrupted?)"
            ),
        });
    }
    db.flush().map_err(crate::store::StoreError::from)?;
    Ok(records)
}

/// Checks an export's header: its format, and a schema version this build
/// reads or upgrades.
fn check_header(header: &Value) -> Result<(), String> {
    if header.get("safedrift_export").and_then(Value::as_u64) != Some(FORMAT) {
        return Err(format!(
            "not a safedrift export of format {FORMAT} (the first line must be its header)"
        ));
    }
    // An export of an older layout this build upgrades is restored as it
    // was written (its `meta` tree says its version) and upgraded by the
    // `Store::open` that checks the staging store.
    let schema = header.get("schema_version").and_then(Value::as_u64);
    let readable = schema.is_some_and(|s| {
        s == SCHEMA_VERSION as u64 || UPGRADES_FROM.iter().any(|old| *old as u64 == s)
    });
    if !readable {
        return Err(format!(
            "written by a store of schema version {}, this build reads version {SCHEMA_VERSION}; import it with the release that exported it",
            schema.map_or("(none)".to_string(), |s| s.to_string())
        ));
    }
    Ok(())
}

/// The tree, key and value of one record line.
fn parse_record(record: &Value) -> Result<(&str, Vec<u8>, Vec<u8>), String> {
    let tree = record
        .get("tree")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .ok_or("missing or invalid `tree`")?;
    let key = record
        .get("key")
        .and_then(Value::as_str)
        .and_then(|k| hex::decode(k).ok())
        .ok_or("missing or invalid `key` (hex)")?;
    let value = match (record.get("value"), record.get("value_hex")) {
        (Some(v), None) => serde_json::to_vec(v).expect("a JSON value serializes"),
        (None, Some(Value::String(h))) => hex::decode(h).map_err(|_| "invalid `value_hex`")?,
        _ => return Err("exactly one of `value` and `value_hex` is required".into()),
    };
    Ok((tree, key, value))
}
