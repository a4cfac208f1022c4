//! The content digest of a local model: SHA-256 over the relative name,
//! size and bytes of the files that make the model in its directory
//! (recursively): ONNX graphs and their external data, configs, tokenizers
//! and chat templates ([`MODEL_FILES`]). Marker files (`COMPLETE`,
//! `_SUCCESS`) and dot-files (the download cache's bookkeeping) are left
//! out. Two directories with the same digest hold the same model, whatever
//! their path, name or mtimes: a checkpoint copied from its base is
//! evaluated once.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The extensions of the files that make a model.
pub const MODEL_FILES: &[&str] = &[
    "onnx",
    "data",
    "onnx_data",
    "json",
    "jinja",
    "model",
    "txt",
    "safetensors",
];

/// `sha256:HEX` of the model in `dir`; reads every byte (about 1 s per
/// GB) the first time, so call it off the async runtime. Remembered for
/// the process by the files' names, sizes and modification times.
pub fn digest(dir: &Path) -> io::Result<String> {
    static SEEN: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut stamp = format!("{}\n", dir.display());
    for (name, path) in &files {
        let meta = std::fs::metadata(path)?;
        let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH);
        let nanos = modified.map_or(0, |d| d.as_nanos());
        stamp.push_str(&format!("{name}\0{}\0{nanos}\n", meta.len()));
    }
    if let Some(d) = SEEN.lock().unwrap().as_ref().and_then(|m| m.get(&stamp)) {
        return Ok(d.clone());
    }
    let d = read_digest(&files)?;
    SEEN.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(stamp, d.clone());
    Ok(d)
}

fn read_digest(files: &[(String, PathBuf)]) -> io::Result<String> {
    let mut h = Sha256::new();
    for (name, path) in files {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        h.update(format!("{name}\0{len}\0"));
        io::copy(&mut f, &mut h)?;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a checkpoint folder of links is its targets.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if meta.is_file()
            && path
                .extension()
                .is_some_and(|e| MODEL_FILES.contains(&e.to_string_lossy().as_ref()))
        {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_digest_wherever_they_are() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("model.onnx"), b"weights").unwrap();
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/tokenizer.json"), b"{}").unwrap();
        }
        std::fs::write(b.path().join(".last-used"), b"now").unwrap();
        std::fs::write(b.path().join("COMPLETE"), b"").unwrap();
        let da = digest(a.path()).unwrap();
        assert_eq!(da, digest(b.path()).unwrap());
        assert!(da.starts_with("sha256:") && da.len() == 7 + 64, "{da}");
        // One byte changed, or a file renamed, is another model.
        std::fs::write(b.path().join("model.onnx"), b"weightz").unwrap();
        assert_ne!(da, digest(b.path()).unwrap());
        std::fs::write(b.path().join("model.onnx"), b"weights").unwrap();
        std::fs::rename(
            b.path().join("sub/tokenizer.json"),
            b.path().join("sub/t.json"),
        )
        .unwrap();
        assert_ne!(da, digest(b.path()).unwrap());
    }
}
