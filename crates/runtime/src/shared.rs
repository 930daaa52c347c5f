//! A node on a shared log (PostgreSQL) starts from what the other nodes
//! share, not from position 1 (issue 13; docs/operations.md, "Snapshots"
//! and "Several nodes").
//!
//! * Every snapshot a node writes to its data directory is also published
//!   in the log ([`EventLog::publish_snapshot`]: PostgreSQL's
//!   `keyledger.snapshots`, the newest [`SHARED_KEEP`] kept).
//! * A node whose data directory holds no snapshot it can use takes the
//!   newest published one that checks out, exactly as a file is checked
//!   (`snapshot.rs`: the checksum, the format version, the shape, the
//!   log's record at its position and every tenant's chain head), and
//!   replays only the log after it. One that fails is refused with a
//!   warning (and left in the table: another build may read it), the next
//!   older one is tried, and without one the whole log is replayed. Never
//!   trusted, never fatal.
//! * What a snapshot does not hold:
//!   - the trees' complete tiles (in each node's `merkle.redb`): when the
//!     node store does not cover the snapshot's position, they are rebuilt
//!     from the log's chain hashes alone ([`EventLog::chain_links`]: 32
//!     bytes and a tenant per event, no event decoded or applied), each
//!     tenant's chain linkage checked on the way, and the trees so built
//!     must equal the snapshot's (their frontiers commit to every node);
//!   - the per-key usage rows (`usage.redb`): an empty usage projection is
//!     filled from the log's own ([`EventLog::usage_projection`]:
//!     `keyledger.usage_daily`, as of the position it reflects); when the
//!     log keeps none, or it is behind, the rest is read from the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keyledger_audit::merkle::Hash;
use keyledger_core::TenantId;
use keyledger_store::{SharedSnapshot, chain};
use sha2::{Digest, Sha256};

use crate::snapshot::{FORMAT_VERSION, Projections, Refusal, check_against_log, decode};
use crate::tilestore::{GLOBAL_NAME, TiledTree, tenant_name};
use crate::trees::leaf_of;
use crate::{Error, Shared};

/// Snapshots kept in the shared log.
pub const SHARED_KEEP: usize = 3;
/// Chain links read per page while rebuilding the trees' tiles.
const LINKS_PAGE: usize = 16_384;

/// The trees rebuilt from the chain hashes: each tenant's with its last
/// chain hash, and the global tree.
struct Rebuilt {
    tenants: HashMap<TenantId, (TiledTree, Hash)>,
    global: TiledTree,
}

/// How a shared snapshot is named in logs and in `keyledger replay`.
pub(crate) fn shared_name(position: u64) -> PathBuf {
    PathBuf::from(format!("postgres:keyledger.snapshots/{position}"))
}

impl Shared {
    /// After a snapshot file was written at `path`: publishes it in the
    /// log when the log is shared (a log with one node keeps none), with
    /// `heads`, each tenant's tree size and chain head at its position. A
    /// failure is logged: the file is written, only other nodes' starts
    /// miss it.
    pub(crate) fn publish_snapshot(
        &self,
        position: u64,
        heads: Vec<(TenantId, u64, [u8; 32])>,
        path: &Path,
    ) {
        if !self.log.shares_snapshots() {
            return;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(position, file = %path.display(), error = %e,
                    "cannot read the snapshot back to publish it in the shared log");
                return;
            }
        };
        let mut heads = heads;
        heads.sort();
        let heads: serde_json::Map<String, serde_json::Value> = heads
            .into_iter()
            .map(|(t, seq, h)| (t.to_string(), serde_json::json!([seq, hex::encode(h)])))
            .collect();
        let snapshot = SharedSnapshot {
            position,
            heads: serde_json::Value::Object(heads).to_string(),
            checksum: Sha256::digest(&bytes).into(),
            bytes,
            node: self
                .config
                .follow
                .as_ref()
                .map_or_else(String::new, |f| f.node_id.clone()),
        };
        if let Err(e) = self.log.publish_snapshot(snapshot, SHARED_KEEP) {
            tracing::warn!(position, error = %e,
                "cannot publish the snapshot in the shared log; other nodes' starts replay more of it");
        }
    }

    /// At open, when no snapshot file can be used: the newest snapshot
    /// shared in the log that checks out, its trees' tiles in the node
    /// store and the usage projection filled; the ones refused are added
    /// to `refused`. Errors only when the log cannot be read.
    pub(crate) fn newest_shared(
        &self,
        refused: &mut Vec<(PathBuf, String)>,
    ) -> Result<Option<Projections>, Error> {
        let positions = match self.log.shared_snapshots() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot list the shared snapshots; replaying the whole log");
                return Ok(None);
            }
        };
        for position in positions {
            match self.check_shared(position)? {
                Ok(p) => {
                    match self.usage_rows.fill(self.log.as_ref()) {
                        Ok(Some(at)) => {
                            self.metrics
                                .snapshots
                                .start_usage_position
                                .store(at, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(
                                position = at,
                                "filled the usage projection from the shared one"
                            );
                        }
                        Ok(None) => {}
                        // The rest comes from the log (usage_catch_up).
                        Err(e) => tracing::warn!(error = %e,
                            "cannot fill the usage projection from the shared one; reading the log instead"),
                    }
                    return Ok(Some(p));
                }
                Err(why) => {
                    let name = shared_name(position);
                    tracing::warn!(
                        snapshot = %name.display(),
                        problem = %why,
                        "refusing a shared snapshot; the projections are rebuilt from the log"
                    );
                    refused.push((name, why.to_string()));
                }
            }
        }
        Ok(None)
    }

    /// The shared snapshot at `position`, checked as a file is, with the
    /// trees' tiles rebuilt from the log's chain hashes first when the
    /// node store does not cover it.
    fn check_shared(&self, position: u64) -> Result<Result<Projections, Refusal>, Error> {
        let torn = |m: String| Ok(Err(Refusal::Torn(m)));
        let s = match self.log.shared_snapshot(position) {
            Ok(Some(s)) => s,
            Ok(None) => return torn("removed from the log meanwhile".to_owned()),
            Err(e) => return torn(format!("it cannot be read: {e}")),
        };
        if <[u8; 32]>::from(Sha256::digest(&s.bytes)) != s.checksum {
            return Ok(Err(Refusal::Checksum));
        }
        // Before the tiles are rebuilt for it: the format.
        let version = s.bytes.get(8..10).map(|v| u16::from_le_bytes([v[0], v[1]]));
        match version {
            None => return torn("no snapshot header".to_owned()),
            Some(found) if found != FORMAT_VERSION => {
                return Ok(Err(Refusal::Version { found }));
            }
            Some(_) => {}
        }
        let head = self.log.head()?;
        if position > head {
            return Ok(Err(Refusal::Log(format!(
                "it covers the log up to position {position}, the log ends at {head}"
            ))));
        }
        let rebuilt = if self.audit.nodes.covers(position).is_ok() {
            None
        } else {
            match self.rebuild_tiles(position)? {
                Ok(r) => Some(r),
                Err(why) => return Ok(Err(why)),
            }
        };
        let p = match decode(&s.bytes, &self.audit.nodes) {
            Ok(p) if p.position == position => p,
            Ok(p) => {
                return Ok(Err(Refusal::Content(format!(
                    "it holds position {}, the table says {position}",
                    p.position
                ))));
            }
            Err(why) => return Ok(Err(why)),
        };
        if let Err(why) = check_against_log(self.log.as_ref(), &p)? {
            return Ok(Err(why));
        }
        if let Some(r) = rebuilt {
            let same_tenants = r.tenants.len() == p.trees.len()
                && r.tenants.iter().all(|(t, (tree, head))| {
                    p.trees
                        .get(t)
                        .is_some_and(|s| s.tree == *tree && s.head == *head)
                });
            if !same_tenants || r.global != p.global.tree {
                return Ok(Err(Refusal::Log(format!(
                    "its Merkle trees are not those of the log's chain hashes up to position \
                     {position}"
                ))));
            }
        }
        Ok(Ok(p))
    }

    /// Builds every tree's complete tiles up to `until` from the log's
    /// chain hashes into the node store, and records that it covers
    /// `until`. Each tenant's chain must link (sequence numbers and
    /// predecessor hashes), else the snapshot is refused.
    fn rebuild_tiles(&self, until: u64) -> Result<Result<Rebuilt, Refusal>, Error> {
        let started = std::time::Instant::now();
        let nodes = &self.audit.nodes;
        let mut r = Rebuilt {
            tenants: HashMap::new(),
            global: TiledTree::new(nodes.clone(), GLOBAL_NAME.into(), true),
        };
        let mut after = 0;
        while after < until {
            let page = self.log.chain_links(after, LINKS_PAGE)?;
            if page.is_empty() {
                break;
            }
            for link in page.into_iter().take_while(|l| l.position <= until) {
                let (tree, last) = r.tenants.entry(link.tenant.clone()).or_insert_with(|| {
                    (
                        TiledTree::new(nodes.clone(), tenant_name(&link.tenant), false),
                        chain::GENESIS,
                    )
                });
                if link.position != after + 1
                    || link.seq != tree.len() + 1
                    || link.prev_hash != *last
                {
                    return Ok(Err(Refusal::Log(format!(
                        "the log's chain hashes do not link at position {} (tenant {}, event {})",
                        link.position, link.tenant, link.seq
                    ))));
                }
                let leaf = leaf_of(&link.hash);
                tree.push(leaf, None);
                *last = link.hash;
                r.global.push(leaf, Some(&link.hash));
                after = link.position;
            }
            if let Err(e) = nodes.flush() {
                return Ok(Err(Refusal::Content(e)));
            }
        }
        if after != until {
            return Ok(Err(Refusal::Log(format!(
                "the log ends at position {after}, not at the snapshot's {until}"
            ))));
        }
        if let Err(e) = nodes.sync(until) {
            return Ok(Err(Refusal::Content(e)));
        }
        tracing::info!(
            position = until,
            tenants = r.tenants.len(),
            ms = started.elapsed().as_millis() as u64,
            "rebuilt the Merkle trees' tiles from the log's chain hashes"
        );
        Ok(Ok(r))
    }
}
