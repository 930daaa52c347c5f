//! The in-memory log: for tests, and the reference the conformance suite
//! holds every other backend to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keyledger_core::{Event, KeyId, TenantId, UseTotals, touched_keys};

use crate::chain::{GENESIS, Hash};
use crate::read::{KeyPage, KeysPage, PositionPage, RecordRef, TenantPage, merge_entry};
use crate::{EventLog, KeysUntil, RawRecord, Record, StoreError, TenantAppend, check_append, plan};

/// An [`EventLog`] held in memory, behind one mutex.
///
/// `Clone` is cheap and shares the log: a clone is what "reopening" means for
/// this backend. Records are stored encoded, exactly as the redb backend
/// stores them, and the chain is computed at append the same way, so chain
/// verification and the forensic hooks ([`MemoryLog::tamper`]) behave alike
/// on both.
///
/// Several runtimes in one process may share one `MemoryLog` (clones of it):
/// [`EventLog::wait_for_append`] wakes them when another one appends, which
/// is how the in-process multi-node tests run.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    /// Signalled after every successful append.
    appended: Arc<Condvar>,
    /// Node → (position applied, when reported): [`EventLog::report_applied`].
    nodes: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

/// The same three structures as the redb file: records by position, the
/// tenant index, the tenant heads.
#[derive(Debug, Default)]
struct Inner {
    /// The records, sorted by their `position` field (the key they are
    /// stored under).
    records: Vec<RawRecord>,
    /// Position → slot in `records`. Rebuilt after tampering.
    slots: HashMap<u64, usize>,
    /// (tenant, seq) → position, written at append.
    index: BTreeMap<(String, u64), u64>,
    /// Each tenant's last sequence number and hash, kept apart from the
    /// records, so a cut-off tail shows.
    heads: BTreeMap<String, (u64, Hash)>,
    /// The per-key index: (tenant, key, seq) → position, written at append
    /// for every key the event names.
    keys: BTreeMap<(String, u128, u64), u64>,
    /// The `KeyUsed` entries of `keys`: the key's uses summed up to and
    /// including each ([`crate::EventLog::read_keys_until_summed`]).
    uses: BTreeMap<(String, u128, u64), UseTotals>,
}

impl Inner {
    /// The key's uses summed up to its last `KeyUsed` at or before `seq`.
    fn last_use(&self, tenant: &str, key: u128, seq: u64) -> Option<UseTotals> {
        let t = tenant.to_owned();
        self.uses
            .range((t.clone(), key, 0)..=(t, key, seq))
            .next_back()
            .map(|(_, sum)| *sum)
    }

    fn rebuild_slots(&mut self) {
        self.records.sort_by_key(|r| r.position);
        self.slots.clear();
        for (slot, r) in self.records.iter().enumerate() {
            self.slots.entry(r.position).or_insert(slot);
        }
    }

    fn at(&self, position: u64) -> Option<&RawRecord> {
        self.slots
            .get(&position)
            .and_then(|&slot| self.records.get(slot))
    }

    /// The tenant index from `after_seq`: (seq, position, stored record).
    fn walk_tenant<'a>(
        &'a self,
        tenant: &TenantId,
        after_seq: u64,
    ) -> impl Iterator<Item = (u64, u64, Option<&'a RawRecord>)> + 'a {
        let range = match after_seq.checked_add(1) {
            Some(first) => {
                let t = tenant.as_str().to_owned();
                Some(self.index.range((t.clone(), first)..=(t, u64::MAX)))
            }
            None => None,
        };
        range
            .into_iter()
            .flatten()
            .map(|((_, seq), &position)| (*seq, position, self.at(position)))
    }

    /// The append side of "assert in pairs": the head must name the
    /// tenant's last stored record.
    fn checked_head(&self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        let Some(&head) = self.heads.get(tenant) else {
            return Ok((0, GENESIS));
        };
        let refuse = |position: u64, why: &str| StoreError::Corrupt {
            position,
            message: format!(
                "tenant {tenant}: {why}; refusing to extend a damaged chain (run a chain verify)"
            ),
        };
        let position = *self
            .index
            .get(&(tenant.to_owned(), head.0))
            .ok_or_else(|| refuse(0, "the head's event is not in the index"))?;
        let r = self
            .at(position)
            .ok_or_else(|| refuse(position, "the head's event is missing"))?;
        if r.tenant != tenant || r.seq != head.0 || r.hash != head.1 {
            return Err(refuse(position, "the head does not match its event"));
        }
        Ok(head)
    }
}

/// An append's records, checked against the log and staged until the
/// whole plan holds.
struct Stage<'i> {
    inner: &'i Inner,
    staged: Vec<RawRecord>,
    /// The per-key index entries of the staged records.
    keyed: Vec<((String, u128, u64), u64)>,
    /// The use sums of the staged `KeyUsed` records.
    used: Vec<((String, u128, u64), UseTotals)>,
}

impl<'a> plan::AppendSink<'a> for Stage<'_> {
    fn head(&mut self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        self.inner.checked_head(tenant)
    }

    fn record(&mut self, r: &RecordRef<'a>, event: &'a Event) -> Result<(), StoreError> {
        let (position, tenant, seq) = (r.position, r.tenant, r.seq);
        for k in touched_keys(event) {
            self.keyed
                .push(((tenant.to_owned(), k.ulid().0, seq), position));
        }
        if let Some(u) = keyledger_core::as_use(event) {
            let k = u.key_id.ulid().0;
            let staged = self
                .used
                .iter()
                .rev()
                .find(|((t, key, _), _)| t.as_str() == tenant && *key == k)
                .map(|(_, sum)| *sum);
            let mut sum = staged
                .or_else(|| self.inner.last_use(tenant, k, seq))
                .unwrap_or_default();
            sum.add_used(u);
            self.used.push(((tenant.to_owned(), k, seq), sum));
        }
        if self.inner.slots.contains_key(&position) {
            return Err(StoreError::Corrupt {
                position,
                message: "the position after the last one is already taken".into(),
            });
        }
        if self.inner.index.contains_key(&(tenant.to_owned(), seq)) {
            return Err(StoreError::Corrupt {
                position,
                message: format!(
                    "tenant {tenant}: sequence number {seq} is already indexed past the head"
                ),
            });
        }
        self.staged.push(RawRecord {
            position,
            tenant: tenant.to_owned(),
            seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            payload: r.payload.to_vec(),
        });
        Ok(())
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in this module panics while holding the lock; a panic in a
        // `tamper` closure leaves data a test chose to damage anyway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forensic and test hook: lets a test change, drop, swap or insert the
    /// stored records directly, bypassing every check, as an attacker with
    /// access to the storage could. Reads afterwards return what is stored.
    ///
    /// The vector holds the records sorted by position; a record's
    /// `position` field is the key it is stored under (the vector is sorted
    /// again afterwards). To model "two events swapped places", exchange
    /// everything but the `position` fields. The tenant index and heads are
    /// not touched (see [`MemoryLog::tamper_index`] and
    /// [`MemoryLog::tamper_heads`]), just as with the redb file.
    pub fn tamper(&self, f: impl FnOnce(&mut Vec<RawRecord>)) {
        let mut inner = self.lock();
        f(&mut inner.records);
        inner.rebuild_slots();
    }

    /// Forensic and test hook: changes the tenant index ((tenant, seq) →
    /// position) directly.
    pub fn tamper_index(&self, f: impl FnOnce(&mut BTreeMap<(String, u64), u64>)) {
        f(&mut self.lock().index);
    }

    /// Forensic and test hook: changes the tenant heads (tenant → last
    /// sequence number and hash) directly.
    pub fn tamper_heads(&self, f: impl FnOnce(&mut BTreeMap<String, (u64, Hash)>)) {
        f(&mut self.lock().heads);
    }

    /// Every stored record, as stored, by position.
    pub fn raw_records(&self) -> Vec<RawRecord> {
        self.lock().records.clone()
    }
}

impl EventLog for MemoryLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        check_append(&batches)?;
        let encoded = plan::Encoded::new(&batches);
        let mut inner = self.lock();
        let last = inner.records.last().map_or(0, |r| r.position);
        let total: usize = batches.iter().map(|b| b.events.len()).sum();
        let mut sink = Stage {
            inner: &inner,
            staged: Vec::with_capacity(total),
            keyed: Vec::with_capacity(total),
            used: Vec::new(),
        };
        let plan::Plan { links, heads } = plan::plan(&batches, &encoded, last, &mut sink)?;
        let (staged, keyed, used) = (sink.staged, sink.keyed, sink.used);
        // Everything is checked: commit.
        inner.keys.extend(keyed);
        inner.uses.extend(used);
        for (tenant, seq, hash) in heads {
            inner.heads.insert(tenant.to_owned(), (seq, hash));
        }
        for r in staged {
            let slot = inner.records.len();
            inner.slots.insert(r.position, slot);
            inner.index.insert((r.tenant.clone(), r.seq), r.position);
            inner.records.push(r);
        }
        // Waiters re-check under the lock, after this append releases it.
        self.appended.notify_all();
        let events = batches.into_iter().flat_map(|b| b.events);
        Ok(plan::records(links, events))
    }

    fn head(&self) -> Result<u64, StoreError> {
        Ok(self.lock().records.last().map_or(0, |r| r.position))
    }

    /// Wakes as soon as any clone of this log appends past `after` (a
    /// condition variable), so runtimes sharing it in one process follow
    /// each other without polling.
    fn wait_for_append(&self, after: u64, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.records.last().is_some_and(|r| r.position > after) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            inner = self
                .appended
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn report_applied(&self, node: &str, position: u64) -> Result<(), StoreError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = nodes.entry(node.to_owned()).or_insert((position, now));
        *entry = (entry.0.max(position), now);
        Ok(())
    }

    fn min_applied_live(&self, live_within: Duration) -> Result<Option<u64>, StoreError> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(nodes
            .values()
            .filter(|(_, at)| at.elapsed() <= live_within)
            .map(|(position, _)| *position)
            .min())
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let start = inner.records.partition_point(|r| r.position <= after);
        let mut page = PositionPage::new(after, limit);
        for r in inner.records.iter().skip(start).take(limit) {
            page.push(r.position, r.as_ref())?;
        }
        Ok(page.finish())
    }

    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let mut page = TenantPage::new(tenant, after_seq, limit);
        for (seq, position, stored) in inner.walk_tenant(tenant, after_seq).take(limit) {
            page.push(seq, position, stored.map(RawRecord::as_ref))?;
        }
        page.finish()
    }

    /// Index entries naming an empty position are left out (the chain walk
    /// then reports the gap).
    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .walk_tenant(tenant, after_seq)
            .take(limit)
            .filter_map(|(_, position, stored)| {
                stored.map(|r| RawRecord {
                    position,
                    ..r.clone()
                })
            })
            .collect())
    }

    fn read_key(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let mut page = KeyPage::new(tenant, key, after_seq, limit);
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (t, k) = (tenant.as_str().to_owned(), key.ulid().0);
        let range = inner
            .keys
            .range((t.clone(), k, first)..=(t, k, u64::MAX))
            .take(limit);
        for (&(_, _, seq), &position) in range {
            page.push(seq, position, inner.at(position).map(RawRecord::as_ref))?;
        }
        Ok(page.finish())
    }

    fn read_keys_until(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let t = tenant.as_str().to_owned();
        let mut entries = BTreeMap::new();
        for k in keys {
            let k = k.ulid().0;
            for (&(_, _, seq), &position) in inner
                .keys
                .range((t.clone(), k, 1)..=(t.clone(), k, until_seq.max(1)))
            {
                if seq <= until_seq {
                    merge_entry(&mut entries, tenant, seq, position)?;
                }
            }
        }
        let mut page = KeysPage::new(tenant, keys);
        for (seq, position) in entries {
            page.push(seq, position, inner.at(position).map(RawRecord::as_ref))?;
        }
        Ok(page.finish())
    }

    fn read_keys_until_summed(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<KeysUntil, StoreError> {
        let inner = self.lock();
        let t = tenant.as_str().to_owned();
        let mut entries = BTreeMap::new();
        let mut uses = BTreeMap::new();
        for key in keys {
            let k = key.ulid().0;
            for (&(_, _, seq), &position) in inner
                .keys
                .range((t.clone(), k, 1)..=(t.clone(), k, until_seq.max(1)))
            {
                if seq <= until_seq && !inner.uses.contains_key(&(t.clone(), k, seq)) {
                    merge_entry(&mut entries, tenant, seq, position)?;
                }
            }
            if until_seq > 0
                && let Some(sum) = inner.last_use(&t, k, until_seq)
            {
                uses.insert(*key, sum);
            }
        }
        let mut page = KeysPage::new(tenant, keys);
        for (seq, position) in entries {
            page.push(seq, position, inner.at(position).map(RawRecord::as_ref))?;
        }
        Ok(KeysUntil {
            records: page.finish(),
            uses: uses.into_iter().collect(),
        })
    }

    fn tenant_keys(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let inner = self.lock();
        let t = tenant.as_str().to_owned();
        let mut out = Vec::new();
        let mut from = match after {
            None => Some(0),
            Some(a) => a.ulid().0.checked_add(1),
        };
        while out.len() < limit {
            let Some(k) = from else { break };
            let next = inner
                .keys
                .range((t.clone(), k, 0)..=(t.clone(), u128::MAX, u64::MAX))
                .next();
            let Some((&(_, key, seq), _)) = next else {
                break;
            };
            out.push((KeyId::from_ulid(ulid::Ulid(key)), seq));
            from = key.checked_add(1);
        }
        Ok(out)
    }

    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        Ok(self.lock().heads.get(tenant.as_str()).copied())
    }

    fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.lock()
            .heads
            .keys()
            .map(|t| {
                t.parse().map_err(|e| StoreError::Corrupt {
                    position: 0,
                    message: format!("tenant head `{}`: {e}", t.escape_debug()),
                })
            })
            .collect()
    }
}
