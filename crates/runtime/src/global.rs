//! The global tree: one RFC 6962 Merkle tree over every tenant's events,
//! whose leaf `i` is the chain hash of the event at log position `i + 1`
//! (`leaf = SHA-256(0x00 || chain hash)`, as in the tenants' trees). A
//! chain hash is a SHA-256 output: the leaves reveal nothing of any tenant
//! (not its name, not its ids), yet each tenant's head is one of them, so
//! every tenant checkpoint is provably included in a global checkpoint.
//!
//! Its checkpoints are signed under the global origin (`<origin>`, then
//! `<origin>/~epoch-<n>` after recoveries: `keyledger_audit::origin`),
//! stored in [`GLOBAL_CHECKPOINT_FILE`] on the tenants' interval, and never
//! fork: nothing is signed that does not extend the largest checkpoint
//! signed before, and the newest stored one is checked against the log at
//! open. Its tiles (C2SP tlog-tiles) are read from the node store
//! (`tilestore.rs`), its frontier from memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::merkle::Hash;
use keyledger_audit::origin::{epoch_of_global_origin, global_origin};
use keyledger_audit::proofs::hex_hashes;
use keyledger_audit::tiles::{self, TilePath};
use std::sync::Arc;

use crate::tilestore::{GLOBAL_NAME, NodeStore, TiledTree};
use keyledger_core::{TenantId, Timestamp};
use keyledger_store::Record;

use crate::audit::{SignedCheckpoint, StoredCheckpoint};
use crate::trees::{AuditState, leaf_of, proof_error};
use crate::{Error, Keyledger};

/// The global tree's stored checkpoints, in the data directory.
pub const GLOBAL_CHECKPOINT_FILE: &str = "global-checkpoints.jsonl";

/// The global tree and what it needs beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GlobalTree {
    /// Leaf `i`'s entry is the chain hash of the event at position `i + 1`
    /// (kept with the tree: [`TiledTree::entry`]).
    pub(crate) tree: TiledTree,
    /// Each tenant's last event's leaf index.
    heads: HashMap<TenantId, u64>,
    /// `LogRecovered` events applied: the epoch is one more.
    recoveries: u64,
    /// Records applied out of position order, until the gap is filled.
    pending: BTreeMap<u64, (TenantId, Hash, bool)>,
}

impl Default for GlobalTree {
    /// An empty global tree, its tiles in a store of its own in memory.
    fn default() -> Self {
        GlobalTree::new(Arc::new(NodeStore::in_memory()))
    }
}

impl GlobalTree {
    /// An empty global tree, its tiles in `nodes`.
    pub(crate) fn new(nodes: Arc<NodeStore>) -> Self {
        GlobalTree {
            tree: TiledTree::new(nodes, Arc::from(GLOBAL_NAME), true),
            heads: HashMap::new(),
            recoveries: 0,
            pending: BTreeMap::new(),
        }
    }

    /// The checkpoint epoch: 1, plus one for each `LogRecovered` applied.
    pub(crate) fn epoch(&self) -> u64 {
        self.recoveries.saturating_add(1)
    }

    fn push(&mut self, tenant: &TenantId, hash: Hash, recovered: bool) {
        let index = self.tree.len();
        self.tree.push(leaf_of(&hash), Some(&hash));
        match self.heads.get_mut(tenant) {
            Some(h) => *h = index,
            None => {
                self.heads.insert(tenant.clone(), index);
            }
        }
        if recovered {
            self.recoveries += 1;
        }
    }

    /// Appends committed records at their positions (`position - 1`),
    /// holding back any that arrive before their predecessors.
    pub(crate) fn apply(&mut self, records: &[Record]) {
        for r in records {
            let recovered = matches!(r.event.kind, keyledger_core::EventKind::LogRecovered(_));
            self.add(r.position, &r.event.tenant, r.hash, recovered);
        }
    }

    /// Appends the event at `position`, or holds it until the positions
    /// before it are in (one already in is ignored).
    fn add(&mut self, position: u64, tenant: &TenantId, hash: Hash, recovered: bool) {
        if position == self.tree.len() + 1 {
            self.push(tenant, hash, recovered);
        } else if position > self.tree.len() + 1 {
            self.pending
                .insert(position, (tenant.clone(), hash, recovered));
        }
        while let Some((tenant, hash, recovered)) = self.pending.remove(&(self.tree.len() + 1)) {
            self.push(&tenant, hash, recovered);
        }
    }
}

/// What a snapshot keeps of the global tree beside its nodes and entries
/// (`snapshot.rs`, which gives it its file schema).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GlobalSnapshot {
    /// Leaves in the tree (and entries).
    pub(crate) leaves: u64,
    /// Each tenant's last event's leaf index, by tenant id.
    pub(crate) heads: Vec<(TenantId, u64)>,
    /// `LogRecovered` events applied.
    pub(crate) recoveries: u64,
    /// Records held back out of position order: position, tenant, chain
    /// hash, whether it is a `LogRecovered`.
    pub(crate) pending: Vec<(u64, TenantId, Hash, bool)>,
}

impl GlobalTree {
    /// For a snapshot: appends the tree's frontier and its last partial
    /// bundle of entries to `nodes` (32 bytes each; the rest is in the
    /// node store), and returns the rest.
    pub(crate) fn to_snapshot(&self, nodes: &mut Vec<u8>) -> GlobalSnapshot {
        self.tree.to_snapshot(nodes);
        let mut heads: Vec<(TenantId, u64)> =
            self.heads.iter().map(|(t, i)| (t.clone(), *i)).collect();
        heads.sort();
        GlobalSnapshot {
            leaves: self.tree.len(),
            heads,
            recoveries: self.recoveries,
            pending: self
                .pending
                .iter()
                .map(|(p, (t, h, r))| (*p, t.clone(), *h, *r))
                .collect(),
        }
    }

    /// The tree [`GlobalTree::to_snapshot`] saved, taking its nodes and
    /// entries from `nodes`. Fails, naming what is wrong, when they are
    /// too few or do not hold together: a head past the tree, a tenant
    /// listed twice, a record held back that is already in.
    pub(crate) fn from_snapshot(
        store: &Arc<NodeStore>,
        s: GlobalSnapshot,
        nodes: &mut std::slice::ChunksExact<'_, u8>,
    ) -> Result<GlobalTree, String> {
        let tree =
            TiledTree::from_snapshot(store.clone(), Arc::from(GLOBAL_NAME), true, s.leaves, nodes)?;
        let mut heads = HashMap::with_capacity(s.heads.len());
        for (tenant, index) in s.heads {
            if index >= s.leaves {
                return Err(format!(
                    "tenant {tenant}: its head is leaf {index} of {}",
                    s.leaves
                ));
            }
            if heads.insert(tenant.clone(), index).is_some() {
                return Err(format!("tenant {tenant}: listed twice"));
            }
        }
        let mut pending = BTreeMap::new();
        for (position, tenant, hash, recovered) in s.pending {
            if position <= s.leaves.saturating_add(1)
                || pending
                    .insert(position, (tenant, hash, recovered))
                    .is_some()
            {
                return Err(format!(
                    "a record held back at position {position}, with {} leaves",
                    s.leaves
                ));
            }
        }
        Ok(GlobalTree {
            tree,
            heads,
            recoveries: s.recoveries,
            pending,
        })
    }

    /// The entry (chain hash) of `tenant`'s last event, if it has one
    /// (and the node store holds it as the tree does).
    pub(crate) fn tenant_head(&self, tenant: &TenantId) -> Option<Hash> {
        self.tree.entry(*self.heads.get(tenant)?).ok().flatten()
    }

    /// Tenants with a leaf.
    pub(crate) fn tenants(&self) -> usize {
        self.heads.len()
    }
}

/// The global tree's state: the tree, the largest checkpoint signed, the
/// last one stored, and why signing is refused (a damaged log opened to be
/// recovered).
#[derive(Default)]
pub(crate) struct GlobalState {
    /// The tree, its tiles in the audit state's node store.
    pub(crate) tree: RwLock<GlobalTree>,
    last: Mutex<Option<LastGlobal>>,
    /// The epoch in which nothing may be signed, and why.
    blocked: Mutex<Option<(u64, String)>>,
}

impl GlobalState {
    /// An empty global tree, its tiles in `nodes`.
    pub(crate) fn new(nodes: Arc<NodeStore>) -> Self {
        GlobalState {
            tree: RwLock::new(GlobalTree::new(nodes)),
            ..GlobalState::default()
        }
    }
}

#[derive(Clone)]
struct LastGlobal {
    epoch: u64,
    signed: SignedCheckpoint,
    written: Option<(u64, Timestamp)>,
}

/// A tenant checkpoint's place in a global checkpoint: the tenant's head
/// is global leaf `index`, proven by `proof` in the global tree of the
/// global checkpoint's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalInclusion {
    /// The global checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// The tenant head's leaf index in the global tree.
    pub index: u64,
    /// Its leaf hash (hex): the tenant tree's last leaf.
    pub leaf: String,
    /// The RFC 9162 inclusion proof (hex, bottom up).
    pub proof: Vec<String>,
}

impl AuditState {
    /// The global tree, read-locked.
    fn global_tree(&self) -> std::sync::RwLockReadGuard<'_, GlobalTree> {
        self.global.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The global tree's consistency proof from `old` to `new` events.
    pub(crate) fn global_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        self.global_tree()
            .tree
            .consistency_proof(old, new)
            .map_err(proof_error)
    }

    /// The global tree's size, root and epoch now.
    fn global_head(&self) -> Result<(u64, Hash, u64), Error> {
        let g = self.global_tree();
        let size = g.tree.len();
        Ok((size, g.tree.root(size).map_err(proof_error)?, g.epoch()))
    }

    /// The newest global checkpoint: the last one signed if the tree has
    /// not grown since, else a new one of the whole tree.
    pub(crate) fn global_checkpoint(&self, now: Timestamp) -> Result<SignedCheckpoint, Error> {
        let (size, root, epoch) = self.global_head()?;
        if let Some(last) = &*self.global.last.lock().unwrap_or_else(|e| e.into_inner())
            && last.epoch == epoch
            && last.signed.checkpoint.size == size
            && last.signed.checkpoint.root == root
        {
            return Ok(last.signed.clone());
        }
        self.sign_global(size, root, epoch, now, false)
    }

    /// Signs the global tree of `size` leaves, unless that would contradict
    /// the largest global checkpoint signed before (a log never forks).
    /// (`fresh`: a new note even if the tree has not grown, for the
    /// interval's re-signing.)
    fn sign_global(
        &self,
        size: u64,
        root: Hash,
        epoch: u64,
        now: Timestamp,
        fresh: bool,
    ) -> Result<SignedCheckpoint, Error> {
        let Some(signer) = &self.signer else {
            return Err(Error::unavailable(
                "audit signing is not configured (no data directory)",
            ));
        };
        if let Some((blocked, why)) = &*self
            .global
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            && *blocked >= epoch
        {
            return Err(Error::inconsistent(format!(
                "refusing to sign a global checkpoint: {why}"
            )));
        }
        let mut last = self.global.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &*last {
            if l.epoch > epoch {
                return Err(Error::inconsistent(format!(
                    "refusing to sign a global checkpoint in epoch {epoch}: one was signed in \
                     epoch {} (a log never forks)",
                    l.epoch
                )));
            }
            if l.epoch == epoch {
                let (last_size, last_root) = (l.signed.checkpoint.size, l.signed.checkpoint.root);
                let g = self.global_tree();
                let extends = size >= last_size
                    && g.tree.root(last_size).ok() == Some(last_root)
                    && g.tree.root(size).ok() == Some(root);
                if !extends {
                    return Err(Error::inconsistent(format!(
                        "refusing to sign a global checkpoint of {size} events: it does not \
                         extend the one of {last_size} events signed before (a log never forks)"
                    )));
                }
                if size == last_size && !fresh {
                    return Ok(l.signed.clone());
                }
            }
        }
        let checkpoint = Checkpoint {
            origin: global_origin(&signer.config.origin, epoch),
            size,
            root,
            extensions: vec![format!("time {}", now.to_rfc3339())],
        };
        let note = checkpoint.sign(&signer.key);
        let signed = SignedCheckpoint { checkpoint, note };
        let written = last
            .as_ref()
            .filter(|l| l.epoch == epoch)
            .and_then(|l| l.written);
        *last = Some(LastGlobal {
            epoch,
            signed: signed.clone(),
            written,
        });
        Ok(signed)
    }

    /// Stores a global checkpoint when the tree grew since the last one
    /// stored, or the last is older than the interval (`force`: only if it
    /// grew). Returns whether one was written.
    pub(crate) fn write_global_due(&self, now: Timestamp, force: bool) -> Result<bool, Error> {
        let Some(signer) = &self.signer else {
            return Ok(false);
        };
        let (size, root, epoch) = self.global_head()?;
        let written = self
            .global
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|l| l.epoch == epoch)
            .and_then(|l| l.written);
        // An empty tree is not stored until it holds an event.
        if (written.is_none() && size == 0) || !signer.config.due(written, size, now, force) {
            return Ok(false);
        }
        let signed = self.sign_global(size, root, epoch, now, true)?;
        let stored = StoredCheckpoint {
            size,
            at: now.to_rfc3339(),
            note: signed.note.clone(),
        };
        let path = signer.config.dir.join(GLOBAL_CHECKPOINT_FILE);
        crate::checkpoints::append_line(&path, &stored)?;
        // Off this thread, as the tenants' (`witness.rs`).
        self.witnessing.submit(
            &crate::witness::WitnessedLog::Global,
            &signed.checkpoint,
            &signed.note,
        );
        if let Some(l) = &mut *self.global.last.lock().unwrap_or_else(|e| e.into_inner())
            && l.epoch == epoch
        {
            l.written = Some((size, now));
        }
        Ok(true)
    }

    /// Checks the newest stored global checkpoint against the replayed
    /// global tree, and remembers it as the one every later one extends.
    /// With `recovering`, a contradiction does not fail the open: nothing
    /// is signed in that epoch (a `keyledger recover` starts the next).
    pub(crate) fn check_global(&self, recovering: bool) -> Result<(), Error> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let path = signer.config.dir.join(GLOBAL_CHECKPOINT_FILE);
        let newest = crate::integrity::newest_checkpoint(&path)
            .map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))?;
        let Some(stored) = newest else {
            return Ok(());
        };
        let (size, _, epoch) = self.global_head()?;
        let problem = match checkpoint::open(&stored.note, &signer.key.verifying_key()) {
            Err(e) => Some(format!(
                "the newest global checkpoint in {} is not signed by this data directory's \
                 audit key ({e})",
                path.display()
            )),
            Ok(c) => {
                // Any base: the origin may have been reconfigured since.
                let signed_epoch = c
                    .origin
                    .rsplit_once("/~epoch-")
                    .and_then(|(base, _)| epoch_of_global_origin(base, &c.origin))
                    .unwrap_or(1);
                // Read, and the lock let go, before `last` is locked
                // (`sign_global` takes them the other way round).
                let prefix = self.global_tree().tree.root(c.size).ok();
                if signed_epoch > epoch {
                    Some(format!(
                        "the newest global checkpoint is of epoch {signed_epoch}, the log's is \
                         {epoch}: the log lost its recovery"
                    ))
                } else if signed_epoch < epoch {
                    None
                } else if prefix != Some(c.root) {
                    Some(format!(
                        "the newest global checkpoint ({} events, {}) is not a prefix of the log \
                         ({size} events): events it vouches for are missing or changed",
                        c.size,
                        path.display()
                    ))
                } else {
                    let at = Timestamp::parse_rfc3339(&stored.at).unwrap_or(Timestamp::EPOCH);
                    *self.global.last.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(LastGlobal {
                            epoch,
                            signed: SignedCheckpoint {
                                checkpoint: c.clone(),
                                note: stored.note.clone(),
                            },
                            written: Some((c.size, at)),
                        });
                    None
                }
            }
        };
        match problem {
            None => Ok(()),
            Some(p) if recovering => {
                tracing::warn!(problem = %p, "no global checkpoint is signed until `keyledger recover`");
                *self
                    .global
                    .blocked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((epoch, p));
                Ok(())
            }
            Some(p) => Err(Error::inconsistent(p)),
        }
    }

    /// The global inclusion of the tenant's head, if the tenant has events,
    /// read under one lock with the tenant's tree size and root.
    fn tenant_head_in_global(&self, tenant: &TenantId) -> Result<(u64, Hash, Option<u64>), Error> {
        // The global tree first, then the tenants' (as `apply` takes them).
        let g = self.global_tree();
        let (size, root) = self.with_tree(tenant, |t| {
            Ok((t.len(), t.root(t.len()).map_err(proof_error)?))
        })?;
        Ok((
            size,
            root,
            g.heads.get(tenant).copied().filter(|_| size > 0),
        ))
    }
}

impl Keyledger {
    /// The newest global checkpoint (signed now if the tree grew).
    pub fn global_checkpoint(&self) -> Result<SignedCheckpoint, Error> {
        self.shared.audit.global_checkpoint(self.now())
    }

    /// The bytes of a global tile or entry bundle, if the tree holds it.
    /// An error when the node store cannot give it as the tree holds it.
    pub fn global_tile(&self, path: &TilePath) -> Result<Option<Vec<u8>>, Error> {
        let g = self.shared.audit.global_tree();
        let tile = tiles::tile_bytes(&g.tree, path);
        if tile.is_none() && g.tree.nodes_damaged() {
            return Err(Error::unavailable(
                "the Merkle node store is damaged; a restart rebuilds it from the log",
            ));
        }
        Ok(tile)
    }

    /// The origin the global tree's checkpoints are signed under now.
    pub fn global_origin(&self) -> String {
        let audit = &self.shared.audit;
        let base = audit
            .signer
            .as_ref()
            .map_or(keyledger_audit::origin::LEGACY_BASE, |s| &s.config.origin);
        let epoch = audit.global_tree().epoch();
        global_origin(base, epoch)
    }

    /// The global tree's size.
    pub fn global_size(&self) -> u64 {
        self.shared.audit.global_tree().tree.len()
    }

    /// A freshly signed checkpoint of the tenant's tree, with the proof
    /// that its last event is a leaf of a global checkpoint (`None` for a
    /// tenant without events).
    pub fn checkpoint_in_global(
        &self,
        tenant: &TenantId,
    ) -> Result<(SignedCheckpoint, Option<GlobalInclusion>), Error> {
        let audit = &self.shared.audit;
        let now = self.now();
        let (size, root, head) = audit.tenant_head_in_global(tenant)?;
        let signed = audit.sign(tenant, size, root, now)?;
        let Some(index) = head else {
            return Ok((signed, None));
        };
        let global = audit.global_checkpoint(now)?;
        let g = audit.global_tree();
        let gsize = global.checkpoint.size;
        let proof = g.tree.inclusion_proof(index, gsize).map_err(proof_error)?;
        let leaf = g.tree.leaf(index).map_err(proof_error)?.unwrap_or_default();
        drop(g);
        Ok((
            signed,
            Some(GlobalInclusion {
                checkpoint: global,
                index,
                leaf: hex::encode(leaf),
                proof: hex_hashes(&proof),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoints::AuditConfig;
    use keyledger_audit::merkle::Tree;

    fn tree_of(leaves: &[u8]) -> GlobalTree {
        let acme: TenantId = "acme".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let mut g = GlobalTree::default();
        for &b in leaves {
            g.push(&acme, [b; 32], false);
        }
        g
    }

    fn state(dir: &std::path::Path) -> AuditState {
        AuditState::new(Some(AuditConfig::in_dir(dir)), &crate::OsEntropy)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn put(state: &AuditState, g: GlobalTree) {
        *state.global.tree.write().unwrap_or_else(|e| e.into_inner()) = g;
    }

    fn forked(r: Result<SignedCheckpoint, Error>) -> bool {
        matches!(r, Err(e @ Error::Corrupt(crate::Damage::Inconsistent(_))) if e.to_string().contains("never forks"))
    }

    /// Whatever the global tree comes to hold, no global checkpoint is
    /// signed that does not extend the largest one signed; and at open, a
    /// log that no longer holds the newest stored one is refused (or, to
    /// be recovered, opened with global signing refused).
    #[test]
    fn the_global_tree_never_forks_in_memory_or_across_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let now = Timestamp::EPOCH;
        let s = state(dir.path());
        put(&s, tree_of(&[1, 2, 3, 4, 5]));
        let first = s.global_checkpoint(now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.checkpoint.origin, "keyledger");
        assert_eq!(first.checkpoint.size, 5);
        assert!(
            s.write_global_due(now, false)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            !s.write_global_due(now, false)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        // Unchanged: the same note, not a new signature.
        assert_eq!(s.global_checkpoint(now).ok(), Some(first.clone()));
        let file = dir.path().join(GLOBAL_CHECKPOINT_FILE);
        let stored = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(stored.lines().count(), 1);

        put(&s, tree_of(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(
            s.global_checkpoint(now).map(|c| c.checkpoint.size).ok(),
            Some(6)
        );
        for leaves in [&[1, 2, 9, 4, 5, 6, 7][..], &[1, 2, 3], &[1, 2, 3, 4, 5, 9]] {
            put(&s, tree_of(leaves));
            assert!(forked(s.global_checkpoint(now)), "{leaves:?}");
            assert!(s.write_global_due(now, false).is_err(), "{leaves:?}");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), stored);

        // A restart over a log that lost or changed what the newest stored
        // global checkpoint vouches for.
        for leaves in [&[1, 2, 3][..], &[1, 2, 9, 4, 5, 6]] {
            let again = state(dir.path());
            put(&again, tree_of(leaves));
            assert!(again.check_global(false).is_err(), "{leaves:?}");
            let recovering = state(dir.path());
            put(&recovering, tree_of(leaves));
            assert!(recovering.check_global(true).is_ok());
            assert!(recovering.global_checkpoint(now).is_err(), "{leaves:?}");
        }
        // A log that extends it opens, and what it signs extends it.
        let again = state(dir.path());
        put(&again, tree_of(&[1, 2, 3, 4, 5, 6, 7]));
        assert!(again.check_global(false).is_ok());
        assert_eq!(
            again.global_checkpoint(now).map(|c| c.checkpoint.size).ok(),
            Some(7)
        );
    }

    /// Records that arrive out of position order wait for the gap to fill:
    /// leaf `i` is always the event at position `i + 1`.
    #[test]
    fn leaves_are_in_log_position_order() {
        let mut g = GlobalTree::default();
        let acme: TenantId = "acme".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let globex: TenantId = "globex".parse().unwrap_or_else(|e| panic!("{e:?}"));
        g.add(3, &acme, [3; 32], false);
        g.add(2, &globex, [2; 32], true);
        assert_eq!(g.tree.len(), 0, "positions 2 and 3 wait for 1");
        g.add(1, &acme, [1; 32], false);
        g.add(2, &acme, [7; 32], false);
        assert_eq!(g.tree.len(), 3);
        assert!(g.pending.is_empty());
        let entries: Vec<_> = (0..4).map(|i| g.tree.entry(i).ok().flatten()).collect();
        assert_eq!(
            entries,
            vec![Some([1; 32]), Some([2; 32]), Some([3; 32]), None]
        );
        assert_eq!(g.heads.get(&acme), Some(&2));
        assert_eq!(g.heads.get(&globex), Some(&1));
        assert_eq!(g.epoch(), 2);
        let mut want = Tree::new();
        for e in [[1u8; 32], [2; 32], [3; 32]] {
            want.push(&e);
        }
        assert_eq!(g.tree.root(3).ok(), want.root(3).ok());
    }
}
