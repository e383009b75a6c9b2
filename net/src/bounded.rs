//! A map with a size bound, for the tables a guest fills by what it sends
//! (the switch's MAC table, the guests' neighbour entries): when full, the
//! entry refreshed least recently makes room, so a flood of invented MACs
//! or addresses costs a bounded amount of memory while the guests that keep
//! talking keep their entries. Every operation is O(1) amortised: refresh
//! order is a queue of (key, stamp) with stale pairs skipped, compacted when
//! it grows past twice the bound.
//!
//! Entries are not aged out by time: a guest idle for an hour still owns its
//! addresses (there is no re-resolution to find it again), and a table only
//! reaches its bound under a flood, where eviction does the ageing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct BoundedMap<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    stamp: u64,
    cap: usize,
    /// Entries evicted to make room, since creation.
    pub evictions: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> BoundedMap<K, V> {
        BoundedMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            stamp: 0,
            cap: cap.max(1),
            evictions: 0,
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The value for `k`, to change in place (does not refresh it).
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.map.retain(|k, (v, _)| keep(k, v));
    }

    /// Inserts or refreshes `k`; returns the previous value. When a new key
    /// finds the table full, the least recently refreshed entry goes (and
    /// `evictions` counts it).
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.stamp += 1;
        let stamp = self.stamp;
        if let Some((old, at)) = self.map.get_mut(&k) {
            *at = stamp;
            let previous = std::mem::replace(old, v);
            self.order.push_back((k, stamp));
            self.compact_if_needed();
            return Some(previous);
        }
        if self.map.len() >= self.cap {
            self.evict_oldest();
        }
        self.map.insert(k.clone(), (v, stamp));
        self.order.push_back((k, stamp));
        self.compact_if_needed();
        None
    }

    fn evict_oldest(&mut self) {
        while let Some((k, at)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|(_, s)| *s == at) {
                self.map.remove(&k);
                self.evictions += 1;
                return;
            }
        }
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.order.retain(|(k, at)| map.get(k).is_some_and(|(_, s)| s == at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_bounded_and_the_talkers_stay() {
        let mut m = BoundedMap::new(64);
        m.insert(0u32, "guest");
        for i in 1..100_000u32 {
            m.insert(i, "flood");
            // The real guest keeps talking.
            if i % 16 == 0 {
                m.insert(0, "guest");
            }
            assert!(m.len() <= 64);
            assert!(m.order.len() <= 2 * 64 + 17);
        }
        assert_eq!(m.get(&0), Some(&"guest"));
        assert!(m.evictions > 99_000);
        m.retain(|k, _| *k == 0);
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(&0), Some("guest"));
        assert!(m.is_empty());
    }
}
