//! Builds the configured watchers: the kind named in `[watchers.NAME]`
//! builds its watcher from the kind-specific keys.

use std::sync::Arc;

use safedrift_watchers::Watcher;

use crate::config::WatcherConfig;

/// Builds `[watchers.NAME]`; problems name their key paths.
pub fn build(name: &str, config: &WatcherConfig) -> Result<Arc<dyn Watcher>, Vec<String>> {
    config.kind.build(name, &config.rest)
}
