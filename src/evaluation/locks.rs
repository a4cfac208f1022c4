//! One async lock per key (a run identity, a checkpoint being fetched),
//! forgotten once nobody holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

#[derive(Default)]
pub struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    /// Waits for the lock of `key`; held until the guard drops.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap();
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn keyed_locks_exclude_per_key_and_are_forgotten() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is free.
        let _b = locks.lock("b").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _a = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        drop(_b);
        let _c = locks.lock("c").await;
        assert_eq!(
            locks.0.lock().unwrap().len(),
            1,
            "unheld keys are forgotten"
        );
    }
}
