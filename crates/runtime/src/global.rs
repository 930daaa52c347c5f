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
//! open. Its tiles (C2SP tlog-tiles) are built from the tree in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::merkle::{Hash, Tree};
use keyledger_audit::origin::{epoch_of_global_origin, global_origin};
use keyledger_audit::proofs::hex_hashes;
use keyledger_audit::tiles::{self, TilePath, TreeNodes};
use keyledger_core::{TenantId, Timestamp};
use keyledger_store::Record;

use crate::audit::{SignedCheckpoint, StoredCheckpoint};
use crate::trees::{AuditState, leaf_of, proof_error};
use crate::{Error, Keyledger};

/// The global tree's stored checkpoints, in the data directory.
pub const GLOBAL_CHECKPOINT_FILE: &str = "global-checkpoints.jsonl";

/// The global tree and what it needs beside it.
#[derive(Default)]
pub(crate) struct GlobalTree {
    pub(crate) tree: Tree,
    /// Leaf `i`'s entry: the chain hash of the event at position `i + 1`.
    entries: Vec<Hash>,
    /// Each tenant's last event's leaf index.
    heads: HashMap<TenantId, u64>,
    /// `LogRecovered` events applied: the epoch is one more.
    recoveries: u64,
    /// Records applied out of position order, until the gap is filled.
    pending: BTreeMap<u64, (TenantId, Hash, bool)>,
}

impl GlobalTree {
    /// The checkpoint epoch: 1, plus one for each `LogRecovered` applied.
    pub(crate) fn epoch(&self) -> u64 {
        1 + self.recoveries
    }

    fn push(&mut self, tenant: &TenantId, hash: Hash, recovered: bool) {
        let index = self.tree.len();
        self.tree.push_leaf_hash(leaf_of(&hash));
        self.entries.push(hash);
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
            if r.position == self.tree.len() + 1 {
                self.push(&r.event.tenant, r.hash, recovered);
            } else if r.position > self.tree.len() + 1 {
                self.pending
                    .insert(r.position, (r.event.tenant.clone(), r.hash, recovered));
            }
            while let Some((tenant, hash, recovered)) = self.pending.remove(&(self.tree.len() + 1))
            {
                self.push(&tenant, hash, recovered);
            }
        }
    }
}

/// The global tree's state: the tree, the largest checkpoint signed, the
/// last one stored, and why signing is refused (a damaged log opened to be
/// recovered).
#[derive(Default)]
pub(crate) struct GlobalState {
    pub(crate) tree: RwLock<GlobalTree>,
    last: Mutex<Option<LastGlobal>>,
    /// The epoch in which nothing may be signed, and why.
    blocked: Mutex<Option<(u64, String)>>,
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
    /// The global tree's size, root and epoch now.
    fn global_head(&self) -> Result<(u64, Hash, u64), Error> {
        let g = self.global.tree.read().unwrap_or_else(|e| e.into_inner());
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
                let g = self.global.tree.read().unwrap_or_else(|e| e.into_inner());
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
        let due = match written {
            None => size > 0,
            Some((last_size, _)) if last_size != size => true,
            Some((_, when)) => {
                let interval = i64::try_from(signer.config.checkpoint_interval.as_micros())
                    .unwrap_or(i64::MAX);
                !force && now.as_micros().saturating_sub(when.as_micros()) >= interval
            }
        };
        if !due {
            return Ok(false);
        }
        let signed = self.sign_global(size, root, epoch, now, true)?;
        let stored = StoredCheckpoint {
            size,
            at: now.to_rfc3339(),
            note: signed.note,
        };
        let path = signer.config.dir.join(GLOBAL_CHECKPOINT_FILE);
        crate::checkpoints::append_line(&path, &stored)?;
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
                let g = self.global.tree.read().unwrap_or_else(|e| e.into_inner());
                if signed_epoch > epoch {
                    Some(format!(
                        "the newest global checkpoint is of epoch {signed_epoch}, the log's is \
                         {epoch}: the log lost its recovery"
                    ))
                } else if signed_epoch < epoch {
                    None
                } else if g.tree.root(c.size).ok() != Some(c.root) {
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
        let g = self.global.tree.read().unwrap_or_else(|e| e.into_inner());
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
    pub fn global_tile(&self, path: &TilePath) -> Option<Vec<u8>> {
        let g = self
            .shared
            .audit
            .global
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let nodes = TreeNodes {
            tree: &g.tree,
            entries: |i: u64| g.entries.get(usize::try_from(i).ok()?).map(|h| h.to_vec()),
        };
        tiles::tile_bytes(&nodes, path)
    }

    /// The origin the global tree's checkpoints are signed under now.
    pub fn global_origin(&self) -> String {
        let audit = &self.shared.audit;
        let base = audit
            .signer
            .as_ref()
            .map_or(keyledger_audit::origin::LEGACY_BASE, |s| &s.config.origin);
        let epoch = audit
            .global
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .epoch();
        global_origin(base, epoch)
    }

    /// The global tree's size.
    pub fn global_size(&self) -> u64 {
        let g = self
            .shared
            .audit
            .global
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner());
        g.tree.len()
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
        let g = audit.global.tree.read().unwrap_or_else(|e| e.into_inner());
        let gsize = global.checkpoint.size;
        let proof = g.tree.inclusion_proof(index, gsize).map_err(proof_error)?;
        let leaf = g.tree.node(0, index).unwrap_or_default();
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
