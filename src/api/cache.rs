//! The API's document cache: values computed from stored runs (the Run
//! documents of completed runs), kept in memory. Each names the runs it was
//! computed from; the store tells the cache when one of those runs (its
//! record or a result) is written or quarantined, which drops the value, so
//! a kept value is never stale.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::store::Store;

/// How many values the cache keeps (least recently used first out).
const CAPACITY: usize = 2048;

#[derive(Default)]
struct Entries {
    entries: HashMap<String, Entry>,
    /// Bumped by every write that drops values: a value computed from reads
    /// made before such a write is not kept.
    generation: u64,
    tick: u64,
}

struct Entry {
    runs: Vec<String>,
    value: Arc<dyn Any + Send + Sync>,
    used: u64,
}

impl Entries {
    fn forget(&mut self, run_id: &str) {
        self.generation += 1;
        self.entries
            .retain(|_, e| !e.runs.iter().any(|r| r == run_id));
    }
}

/// The cache. Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct DocCache {
    inner: Arc<Mutex<Entries>>,
}

impl DocCache {
    /// A cache over `store`: it listens to the store's run writes (on every
    /// clone of the store) for as long as it lives.
    pub fn new(store: &Store) -> DocCache {
        let inner: Arc<Mutex<Entries>> = Arc::default();
        let weak: Weak<Mutex<Entries>> = Arc::downgrade(&inner);
        store.on_run_change(Box::new(move |run_id| match weak.upgrade() {
            Some(entries) => {
                entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(run_id);
                true
            }
            None => false,
        }));
        DocCache { inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A value kept by [`DocCache::keep`] under `key`, if it is still
    /// there and of type `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let mut d = self.lock();
        d.tick += 1;
        let tick = d.tick;
        let entry = d.entries.get_mut(key)?;
        entry.used = tick;
        entry.value.clone().downcast().ok()
    }

    /// Pass to [`DocCache::keep`]: taken before reading what a value is
    /// computed from.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `value`, computed from the runs `runs` (and their results) as
    /// read after [`DocCache::generation`] returned `since`, until one of
    /// those runs is written again. Not kept if anything was written since
    /// `since` (the reads may predate it). Only values of runs that no
    /// longer change (completed ones) are worth keeping.
    pub fn keep<T: Any + Send + Sync>(
        &self,
        key: String,
        runs: Vec<String>,
        value: Arc<T>,
        since: u64,
    ) {
        let mut d = self.lock();
        if d.generation != since {
            return;
        }
        if d.entries.len() >= CAPACITY && !d.entries.contains_key(&key) {
            let oldest = d
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                d.entries.remove(&k);
            }
        }
        d.tick += 1;
        let used = d.tick;
        d.entries.insert(key, Entry { runs, value, used });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{result, run};
    use crate::store::RunStatus;

    #[test]
    fn derived_values_are_dropped_when_a_run_they_come_from_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let docs = DocCache::new(&store);
        store
            .put_run(&run("r_1", "i1", RunStatus::Completed))
            .unwrap();
        let since = docs.generation();
        let runs = vec!["r_1".to_string(), "r_base".to_string()];
        docs.keep("doc:r_1".into(), runs.clone(), Arc::new(7u32), since);
        assert_eq!(docs.get::<u32>("doc:r_1").as_deref(), Some(&7));
        assert!(docs.get::<String>("doc:r_1").is_none());
        // A clone of the store tells them; a result of the run drops them.
        store.clone().put_result("r_1", &result(0)).unwrap();
        assert!(docs.get::<u32>("doc:r_1").is_none());
        // Computed from reads older than a write: not kept.
        docs.keep("doc:r_1".into(), runs.clone(), Arc::new(8u32), since);
        assert!(docs.get::<u32>("doc:r_1").is_none());
        let since = docs.generation();
        docs.keep("doc:r_1".into(), runs, Arc::new(9u32), since);
        assert_eq!(docs.get::<u32>("doc:r_1").as_deref(), Some(&9));
        // Writing the other run it names drops it too.
        store
            .put_run(&run("r_base", "i0", RunStatus::Completed))
            .unwrap();
        assert!(docs.get::<u32>("doc:r_1").is_none());
    }
}
