//! Builds the configured watchers: one enum arm per registry kind.

use std::sync::Arc;

use safedrift_watchers::directory::DirectoryWatcher;
use safedrift_watchers::huggingface::HuggingfaceWatcher;
use safedrift_watchers::mlflow::MlflowWatcher;
use safedrift_watchers::ollama::OllamaWatcher;
use safedrift_watchers::openai_finetunes::OpenaiFinetunesWatcher;
use safedrift_watchers::{kind_table, Watcher};

use crate::config::{WatcherConfig, WATCHER_KINDS};

/// Builds `[watchers.NAME]`; problems name their key paths.
pub fn build(name: &str, config: &WatcherConfig) -> Result<Arc<dyn Watcher>, Vec<String>> {
    let table = kind_table(&config.rest);
    Ok(match config.kind.as_str() {
        "directory" => Arc::new(DirectoryWatcher::from_config(name, &table)?),
        "mlflow" => Arc::new(MlflowWatcher::from_config(name, &table)?),
        "huggingface" => Arc::new(HuggingfaceWatcher::from_config(name, &table)?),
        "openai-finetunes" => Arc::new(OpenaiFinetunesWatcher::from_config(name, &table)?),
        "ollama" => Arc::new(OllamaWatcher::from_config(name, &table)?),
        other => {
            return Err(vec![format!(
                "`watchers.{name}.kind`: unknown watcher kind {other:?} (expected one of {})",
                WATCHER_KINDS.join(", ")
            )])
        }
    })
}
