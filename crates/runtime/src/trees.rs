//! Each tenant's Merkle tree, appended to as committed events are applied
//! (start-up replay included), and the proofs read from it. Only each
//! tree's frontier is in memory; its complete tiles are in the node store
//! (`tilestore.rs`, `<data>/merkle.redb`), read back as proofs need them.
//!
//! Event `seq` of a tenant is leaf `seq - 1` of the tenant's tree, and its
//! entry is the event's 32-byte chain hash, which already commits to the
//! tenant, the sequence number, the predecessor and the stored payload
//! bytes: `leaf = SHA-256(0x00 || chain_hash)` (`docs/audit.md`).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use keyledger_audit::merkle::{self, Hash, Tree};
use std::sync::Arc;

use crate::tilestore::{NodeStore, TiledTree};
use keyledger_audit::proofs::{ConsistencyProof, InclusionProof, hex_hashes};
use keyledger_core::{TenantId, Timestamp};
use keyledger_store::{Record, chain};

use crate::checkpoints::{AuditConfig, Signer};
use crate::{BadRequest, Error, Keyledger};

/// The Merkle leaf hash of an event: `SHA-256(0x00 || chain hash)`.
pub fn leaf_of(chain_hash: &Hash) -> Hash {
    merkle::leaf_hash(chain_hash)
}

/// Per-process audit state: the trees (here), the signer and what was
/// signed and written (kept by `checkpoints.rs`).
#[derive(Default)]
pub(crate) struct AuditState {
    /// Where the trees' complete tiles are (`tilestore.rs`).
    pub(crate) nodes: Arc<NodeStore>,
    pub(crate) trees: RwLock<HashMap<TenantId, TenantTree>>,
    pub(crate) signer: Option<Signer>,
    /// Per tenant: the largest checkpoint signed and the last one stored.
    pub(crate) checkpoints: Mutex<HashMap<TenantId, LastCheckpoints>>,
    /// Tenants whose log does not hold their newest signed checkpoint,
    /// opened anyway to recover them (`Config::recovering`): nothing is
    /// signed for them in that epoch, and what is wrong.
    pub(crate) blocked: Mutex<HashMap<TenantId, (u64, crate::integrity::Problem)>>,
    /// The global tree over every tenant's events (`global.rs`).
    pub(crate) global: crate::global::GlobalState,
    pub(crate) stop: tokio::sync::Notify,
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The witness client: channels to its threads, cosignatures gathered.
    pub(crate) witnessing: crate::witness::Witnessing,
}

/// A tenant's largest checkpoint signed (stored or handed out, by this
/// process or found at open) and its last one stored, both of one epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LastCheckpoints {
    /// The epoch of the largest checkpoint signed: nothing is signed in it
    /// that does not extend that checkpoint.
    pub(crate) epoch: u64,
    /// Its size and root.
    pub(crate) signed: (u64, Hash),
    /// The size and instant of the last checkpoint stored in `epoch`, when
    /// one is known.
    pub(crate) written: Option<(u64, Timestamp)>,
}

/// A tenant's Merkle tree, the chain hash of its last event and its
/// checkpoint epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TenantTree {
    pub(crate) tree: TiledTree,
    /// The chain hash of the last event applied ([`chain::GENESIS`] before any).
    pub(crate) head: Hash,
    /// 1, or the epoch of the last `LogRecovered` applied.
    pub(crate) epoch: u64,
}

impl Default for TenantTree {
    /// An empty tree, its tiles in a store of its own in memory (a
    /// placeholder for a tenant without events).
    fn default() -> Self {
        TenantTree {
            tree: TiledTree::new(Arc::new(NodeStore::in_memory()), Arc::from("t/"), false),
            head: chain::GENESIS,
            epoch: 1,
        }
    }
}

impl TenantTree {
    /// The empty tree of `tenant`, its tiles in `nodes`.
    pub(crate) fn new(nodes: Arc<NodeStore>, tenant: &TenantId) -> Self {
        TenantTree {
            tree: TiledTree::new(nodes, crate::tilestore::tenant_name(tenant), false),
            head: chain::GENESIS,
            epoch: 1,
        }
    }

    /// For a snapshot (`snapshot.rs`): appends the tree's frontier to
    /// `nodes` ([`TiledTree::to_snapshot`]; the rest is in the node
    /// store); the leaf count, chain head and epoch are saved beside it.
    pub(crate) fn to_snapshot(&self, nodes: &mut Vec<u8>) {
        self.tree.to_snapshot(nodes);
    }

    /// The tree [`TenantTree::to_snapshot`] saved, taking its frontier
    /// from `nodes` (32-byte chunks) and its older nodes from `store`.
    /// Fails, naming what is wrong, when there are too few.
    pub(crate) fn from_snapshot(
        store: &Arc<NodeStore>,
        tenant: &TenantId,
        leaves: u64,
        head: Hash,
        epoch: u64,
        nodes: &mut std::slice::ChunksExact<'_, u8>,
    ) -> Result<TenantTree, String> {
        let tree = TiledTree::from_snapshot(
            store.clone(),
            crate::tilestore::tenant_name(tenant),
            false,
            leaves,
            nodes,
        )?;
        Ok(TenantTree { tree, head, epoch })
    }
}

/// `count` hashes taken from `nodes` (32-byte chunks), or what is wrong.
pub(crate) fn hashes_from_snapshot(
    count: u64,
    nodes: &mut std::slice::ChunksExact<'_, u8>,
) -> Result<Vec<Hash>, String> {
    let count = usize::try_from(count).map_err(|_| "a tree too large".to_owned())?;
    if nodes.len() < count {
        return Err("its tree nodes are missing".to_owned());
    }
    Ok(nodes
        .by_ref()
        .take(count)
        .map(|c| c.try_into().unwrap_or([0; 32]))
        .collect())
}

/// The replayed trees, as [`crate::integrity`] reads them.
pub(crate) struct Replayed<'a>(pub(crate) &'a HashMap<TenantId, TenantTree>);

impl crate::integrity::Trees for Replayed<'_> {
    fn epoch(&self, tenant: &TenantId) -> u64 {
        self.0.get(tenant).map_or(1, |t| t.epoch)
    }

    fn size(&self, tenant: &TenantId) -> u64 {
        self.0.get(tenant).map_or(0, |t| t.tree.len())
    }

    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash> {
        match self.0.get(tenant) {
            Some(t) => t.tree.root(size).ok(),
            None => Tree::new().root(size).ok(),
        }
    }
}

impl AuditState {
    #[cfg(test)]
    pub(crate) fn new(
        config: Option<AuditConfig>,
        entropy: &dyn crate::Entropy,
    ) -> Result<Self, Error> {
        let dir = config.as_ref().map(|c| c.dir.clone());
        AuditState::with_node_dir(config, dir.as_deref(), entropy)
    }

    /// The audit state, its node store in `node_dir` (the data directory;
    /// `None`: in memory).
    pub(crate) fn with_node_dir(
        config: Option<AuditConfig>,
        node_dir: Option<&std::path::Path>,
        entropy: &dyn crate::Entropy,
    ) -> Result<Self, Error> {
        let nodes = Arc::new(match node_dir {
            None => NodeStore::in_memory(),
            Some(dir) => NodeStore::open(dir),
        });
        let signer = match config {
            None => None,
            Some(config) => Some(Signer {
                key: crate::signing_key::load_or_create_key(&config.dir, entropy)?,
                config,
            }),
        };
        Ok(AuditState {
            signer,
            global: crate::global::GlobalState::new(nodes.clone()),
            nodes,
            ..AuditState::default()
        })
    }

    /// Appends committed records to their tenants' trees. The leaf index
    /// must be the record's `seq - 1` (checked here, as the chain is
    /// checked on append and replay).
    pub(crate) fn apply(&self, records: &[Record]) -> Result<(), Error> {
        // The global tree is locked first, and held until the tenants' trees
        // are updated too: read in that order, the two agree.
        let mut global = self.global.tree.write().unwrap_or_else(|e| e.into_inner());
        global.apply(records);
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        // One tree lookup per run of records of one tenant.
        for run in records.chunk_by(|a, b| a.event.tenant == b.event.tenant) {
            let Some(tenant) = run.first().map(|r| &r.event.tenant) else {
                continue;
            };
            // Looked up first: the tenant id is cloned only for a new tree.
            let tree = match trees.get_mut(tenant) {
                Some(tree) => tree,
                None => trees
                    .entry(tenant.clone())
                    .or_insert_with(|| TenantTree::new(self.nodes.clone(), tenant)),
            };
            for r in run {
                if tree.tree.len() + 1 != r.seq {
                    return Err(Error::inconsistent(format!(
                        "tenant {tenant}: Merkle leaf {} expected, event {} applied",
                        tree.tree.len() + 1,
                        r.seq
                    )));
                }
                // Each record's own hash was recomputed when it was read
                // (`keyledger_store`); here it must link to the one before.
                if r.prev_hash != tree.head {
                    return Err(Error::inconsistent(format!(
                        "tenant {tenant}: event {} (log position {}) does not link to event {}: \
                         the chain is broken there",
                        r.seq,
                        r.position,
                        r.seq - 1
                    )));
                }
                tree.tree.push(leaf_of(&r.hash), None);
                tree.head = r.hash;
                if let keyledger_core::EventKind::LogRecovered(e) = &r.event.kind {
                    tree.epoch = e.epoch;
                }
            }
        }
        // Before the trees are read again: the tiles completed here.
        self.nodes.flush().map_err(Error::unavailable)
    }

    /// The tenant's checkpoint epoch (1 for a tenant without events).
    pub(crate) fn epoch(&self, tenant: &TenantId) -> u64 {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        trees.get(tenant).map_or(1, |t| t.epoch)
    }

    pub(crate) fn with_tree<T>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&TiledTree) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        match trees.get(tenant) {
            Some(t) => f(&t.tree),
            None => f(&TiledTree::new(
                self.nodes.clone(),
                crate::tilestore::tenant_name(tenant),
                false,
            )),
        }
    }
}

impl Keyledger {
    /// The size of a tenant's tree: its number of events.
    pub fn tree_size(&self, tenant: &TenantId) -> u64 {
        self.shared
            .audit
            .with_tree(tenant, |t| Ok(t.len()))
            .unwrap_or(0)
    }

    /// The inclusion proof of event `seq` in the tenant's tree of `size`
    /// events (`size` 0: the current size).
    pub fn inclusion_proof(
        &self,
        tenant: &TenantId,
        seq: u64,
        size: u64,
    ) -> Result<InclusionProof, Error> {
        self.shared.audit.with_tree(tenant, |t| {
            let size = if size == 0 { t.len() } else { size };
            if seq == 0 || seq > size || size > t.len() {
                return Err(BadRequest::NotInTree {
                    seq,
                    size,
                    events: t.len(),
                }
                .into());
            }
            let proof = t.inclusion_proof(seq - 1, size).map_err(proof_error)?;
            Ok(InclusionProof {
                seq,
                size,
                leaf: hex::encode(t.leaf(seq - 1).map_err(proof_error)?.unwrap_or_default()),
                proof: hex_hashes(&proof),
                root: hex::encode(t.root(size).map_err(proof_error)?),
            })
        })
    }

    /// The consistency proof between the tenant's trees of sizes `from` and
    /// `to` (`to` 0: the current size).
    pub fn consistency_proof(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, Error> {
        self.shared.audit.with_tree(tenant, |t| {
            let to = if to == 0 { t.len() } else { to };
            if from > to || to > t.len() {
                return Err(BadRequest::SizesOutOfRange {
                    from,
                    to,
                    events: t.len(),
                }
                .into());
            }
            Ok(ConsistencyProof {
                from,
                to,
                from_root: hex::encode(t.root(from).map_err(proof_error)?),
                to_root: hex::encode(t.root(to).map_err(proof_error)?),
                proof: hex_hashes(&t.consistency_proof(from, to).map_err(proof_error)?),
            })
        })
    }
}

pub(crate) fn proof_error(e: merkle::ProofError) -> Error {
    match e {
        // Not the request's fault: the node store is damaged or unreadable.
        merkle::ProofError::Unavailable(why) => Error::unavailable(why),
        e => BadRequest::Proof(e).into(),
    }
}
