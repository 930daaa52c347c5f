//! A hash map split into shards, for the projections' indexes that grow
//! with every key: secret hash → key, key id → tenant, a key's usage days.
//!
//! One hash map doubles its table when it fills, and the insert that finds
//! it full rehashes every entry: measured on the key state's two indexes,
//! one apply took 66 ms at 458,752 keys and 130 ms at 917,504. In the
//! runtime that insert holds the writer (and the read model's lock), so
//! every create in flight waits for it. Split into [`SHARDS`] maps, a growth
//! moves a 256th of the entries, and the shards fill at different times.
//!
//! Each shard sits behind its own `Arc`: a clone shares every shard, and a
//! change copies only the shard it touches (copy on write).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// The shards' own hasher: foldhash, seeded per process. The keys are
/// values keyledger makes itself (key ids, secret hashes), which nobody
/// outside chooses, and these maps sit on the replay path, where SipHash's
/// cost shows.
type IdHash = foldhash::fast::RandomState;

/// How many shards a map has.
const SHARDS: usize = 256;

/// The hasher that picks a key's shard: seeded apart from the shards' own
/// (per-process) hasher, so the keys of one shard still spread over its
/// table; fixed, so two maps with the same entries have them in the same
/// shards and compare shard by shard.
const PICK: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x6b65_796c_6564_6772);

/// A hash map in [`SHARDS`] parts; see the module's documentation.
#[derive(Clone, Debug)]
pub(crate) struct ShardedMap<K, V> {
    shards: Box<[Arc<HashMap<K, V, IdHash>>]>,
}

/// Equal when they hold the same entries: a key is in the same shard of
/// both ([`PICK`] is fixed), and shards compare as maps.
impl<K: Hash + Eq, V: PartialEq> PartialEq for ShardedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl<K: Hash + Eq, V: Eq> Eq for ShardedMap<K, V> {}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn pick(key: &K) -> usize {
        // The top bits: foldhash mixes every input bit into them.
        (PICK.hash_one(key) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    /// The shard that holds `key`, if it is anywhere.
    fn shard(&self, key: &K) -> &HashMap<K, V, IdHash> {
        &self.shards[Self::pick(key)]
    }

    /// The shard that holds (or will hold) `key`, copied first if a clone
    /// of this map shares it.
    pub(crate) fn shard_mut(&mut self, key: &K) -> &mut HashMap<K, V, IdHash> {
        Arc::make_mut(&mut self.shards[Self::pick(key)])
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.shard(key).get(key)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.shard(key).contains_key(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.shard_mut(&key).insert(key, value)
    }

    /// Every entry, shard by shard (in no particular order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// How many entries the map holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_a_map() {
        let mut m: ShardedMap<u64, u64> = ShardedMap::default();
        for i in 0..10_000 {
            assert_eq!(m.insert(i, i * 2), None);
        }
        assert_eq!(m.insert(7, 1), Some(14));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&7), Some(&1));
        assert_eq!(m.get(&9_999), Some(&19_998));
        assert!(m.get(&10_000).is_none());
        assert!(m.contains_key(&0) && !m.contains_key(&u64::MAX));
        // Keys spread over the shards.
        let used = m.shards.iter().filter(|s| !s.is_empty()).count();
        assert_eq!(used, SHARDS);
        let largest = m.shards.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(largest < 3 * 10_000 / SHARDS, "largest shard {largest}");
    }

    #[test]
    fn a_clone_shares_shards_until_one_side_writes() {
        let mut a: ShardedMap<u64, u64> = ShardedMap::default();
        for i in 0..1_000 {
            a.insert(i, i);
        }
        let mut b = a.clone();
        assert_eq!(a, b);
        b.insert(5, 50);
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, SHARDS - 1, "only the written shard is copied");
        assert_eq!(a.get(&5), Some(&5));
        assert_eq!(b.get(&5), Some(&50));
        assert_ne!(a, b);
        // Maps with the same entries are equal, whatever their history.
        let mut c: ShardedMap<u64, u64> = ShardedMap::default();
        for i in (0..1_000).rev() {
            c.insert(i, if i == 5 { 50 } else { i });
        }
        assert_eq!(b, c);
    }
}
