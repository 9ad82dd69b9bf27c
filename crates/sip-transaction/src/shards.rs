//! A hash map split into shards, each behind its own lock.
//!
//! Under load tens of thousands of server transactions are alive at once (non-INVITE
//! transactions over UDP linger 32 s for Timer J). In one map, every insert contends on
//! one lock and every resize rehashes everything while holding it, stalling all
//! readers for milliseconds; sixteen shards spread both.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

use parking_lot::Mutex;

const SHARDS: usize = 16;

pub(crate) struct ShardedMap<K, V> {
    shards: Vec<Mutex<HashMap<K, V>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V: Clone> ShardedMap<K, V> {
    pub(crate) fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, k: &K) -> &Mutex<HashMap<K, V>> {
        &self.shards[self.hasher.hash_one(k) as usize % SHARDS]
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.shard(k).lock().get(k).cloned()
    }

    pub(crate) fn insert(&self, k: K, v: V) {
        self.shard(&k).lock().insert(k, v);
    }

    /// Removes the entry for `k` if `pred` holds for its value.
    pub(crate) fn remove_if(&self, k: &K, pred: impl FnOnce(&V) -> bool) {
        let mut shard = self.shard(k).lock();
        if shard.get(k).is_some_and(pred) {
            shard.remove(k);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
