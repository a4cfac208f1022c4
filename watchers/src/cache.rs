//! The download cache (implementation pending; see the watchers issue).
use std::path::PathBuf;

/// Where fetched checkpoints live, with a size limit.
pub struct Cache {
    pub root: PathBuf,
    pub max_bytes: u64,
}
