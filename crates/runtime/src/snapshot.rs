//! Snapshots of the projections, so that a restart replays only the tail
//! of the log (docs/architecture.md, "Snapshots"; docs/operations.md).
//!
//! A snapshot holds everything [`crate::Keyledger::open_with`] would
//! otherwise rebuild by replaying the log from position 1: the key state
//! ([`Ledger`], webhook subscriptions included), the tenants' usage
//! rollups ([`TenantUsage`]; each key's rows are in the usage projection,
//! `usagestore.rs`, made durable before the snapshot is written), each tenant's Merkle tree with its chain head and
//! checkpoint epoch, and the global tree (`global.rs`: its frontier and
//! last partial bundle of entries, tenants' heads, recoveries and any
//! records held back), and the log position they cover. The trees'
//! complete tiles are not in it: they are in the node store
//! (`tilestore.rs`), made durable before the snapshot is written, and a
//! snapshot is used only if the node store covers its position. The verification map is rebuilt from the key
//! state. Not in it, as they are not projections of the log: the webhook
//! delivery store, stored checkpoints and their cosignatures.
//!
//! * Format: `snapshots/snapshot-<position, 20 digits>.bin` in the data
//!   directory: a magic, the format version, a postcard body in the
//!   snapshot's own schema types (below; never the domain types, so the
//!   core stays free of serialization), the trees' frontiers as raw
//!   32-byte hashes (each tenant's tree, then the global tree and its
//!   entries after its last full bundle),
//!   then the SHA-256 of everything before it.
//! * Written atomically (a `.tmp` file, fsync, rename, fsync of the
//!   directory), owner-only, never through a symbolic link; the newest
//!   [`SnapshotConfig::keep`] are kept.
//! * Taken by the writer thread between two commits ([`Frozen`]: each
//!   tenant's key state shared with the read model, an `Arc` each; the
//!   tenants' usage rows and the trees' frontiers copied) every
//!   [`SnapshotConfig::every_events`] events or [`SnapshotConfig::every`],
//!   and encoded and written on a blocking task; one at a time. Taken
//!   again at a graceful shutdown. The encoding streams into the file a
//!   tenant at a time and drops each tenant's state once written, so the
//!   writer copies a tenant it changes meanwhile (copy on write) only
//!   until the encoding has passed it, and no second copy of the state is
//!   built in memory (docs/performance.md, "Memory under load").
//! * Verified before use: the checksum, the format version, the shape,
//!   and against the log: the record at the snapshot's position exists,
//!   and every tenant's chain head at that position is the snapshot's
//!   (and the global tree's entry for it). A
//!   snapshot that fails is refused with a warning naming what is wrong,
//!   renamed `.refused`, and the next older one is tried; without one the
//!   log is replayed from position 1. Never trusted, never fatal.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyledger_core::{
    Actor, Cause, CreatedBy, CreditState, DailyRow, Day, KeyId, KeyPolicy, KeyRecord, Ledger,
    Links, Masked, Meta, RateLimit, Refill, RefillInterval, Revocation, RevokeReason, ScopeSet,
    SecretHash, TenantId, TenantState, TenantUsage, Timestamp, UseCounts, UserId, Webhook,
    WebhookId,
};
use keyledger_store::EventLog;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::global::{GlobalSnapshot, GlobalTree};
use crate::trees::TenantTree;
use crate::{Error, Shared};

/// The snapshots' directory inside the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// The format version this build writes and reads (1: before webhook
/// subscriptions and the global tree; 2: before key policies and the
/// counts of issue 14; 3: every tree node in the file, before the node
/// store; 4: every key's usage rows in the file, before the usage
/// projection; older ones are refused, and the log replayed).
pub const FORMAT_VERSION: u16 = 5;
/// What every snapshot file starts with.
const MAGIC: &[u8; 8] = b"KLSNAP\n\0";
/// Magic, version, body length.
const HEADER_LEN: usize = 8 + 2 + 8;
/// The default [`SnapshotConfig::every_events`].
pub const EVERY_EVENTS_DEFAULT: u64 = 250_000;
/// The default [`SnapshotConfig::every`].
pub const EVERY_DEFAULT: Duration = Duration::from_secs(300);

/// Where and how often snapshots are written, and what open does with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// The directory of the snapshot files (`<data>/snapshots`).
    pub dir: PathBuf,
    /// A snapshot is taken once this many events were applied since the last.
    pub every_events: u64,
    /// ... or once this long has passed since the last, if any event was.
    pub every: Duration,
    /// How many snapshot files are kept (the newest; at least 1).
    pub keep: usize,
    /// What open does with the snapshots found.
    pub start: SnapshotStart,
}

/// What [`crate::Keyledger::open_with`] does with the snapshots it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStart {
    /// Starts from the newest valid snapshot and replays the tail; writes
    /// snapshots as configured.
    Load,
    /// Replays the whole log, and compares the projections at the newest
    /// valid snapshot's position with it ([`crate::Keyledger::snapshot_check`]);
    /// writes none (`keyledger replay`).
    Check,
}

impl SnapshotConfig {
    /// The defaults, in `<data_dir>/snapshots`.
    pub fn in_dir(data_dir: impl AsRef<Path>) -> Self {
        SnapshotConfig {
            dir: data_dir.as_ref().join(SNAPSHOT_DIR),
            every_events: EVERY_EVENTS_DEFAULT,
            every: EVERY_DEFAULT,
            keep: 2,
            start: SnapshotStart::Load,
        }
    }
}

/// What `keyledger replay` found comparing the newest snapshot with a
/// replay of the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCheck {
    /// The snapshot compared: its file and position.
    pub compared: Option<(PathBuf, u64)>,
    /// What differs between it and the replay at its position (empty: equal).
    pub differences: Vec<String>,
    /// Snapshots refused before it, and why.
    pub refused: Vec<(PathBuf, String)>,
}

/// Why a snapshot file is not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a snapshot file, or cut short.
    #[error("not a whole keyledger snapshot ({0})")]
    Torn(String),
    /// Written by another format version.
    #[error("format version {found}, this build reads version {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u16,
    },
    /// The checksum does not match the content.
    #[error("its checksum does not match its content: the file is damaged")]
    Checksum,
    /// The content does not decode or does not hold together.
    #[error("its content is inconsistent: {0}")]
    Content(String),
    /// The log does not hold what the snapshot covers.
    #[error("it does not match the log: {0}")]
    Log(String),
}

/// The projections at one log position, as taken from the read model and
/// the trees, or read back from a file.
#[derive(Clone, Debug)]
pub(crate) struct Projections {
    pub(crate) position: u64,
    pub(crate) ledger: Ledger,
    /// The per-tenant usage rows (the per-key ones are in the usage
    /// projection, `usagestore.rs`, made durable before a snapshot is
    /// written; one behind a snapshot catches up from the log).
    pub(crate) usage: TenantUsage,
    pub(crate) trees: HashMap<TenantId, TenantTree>,
    pub(crate) global: GlobalTree,
}

/// What a snapshot file is written from ([`write_frozen`]): the
/// projections at one log position, each tenant's key state shared (an
/// `Arc` of the read model's, not a copy), the rest copied as the file
/// holds it (it is small: the tenants' usage rows, the trees' leaf counts,
/// heads and frontiers).
pub(crate) struct Frozen {
    position: u64,
    events: u64,
    /// By tenant id.
    tenants: Vec<FrozenTenant>,
    /// The trees' frontiers, 32 bytes a hash: each tenant's in order, then
    /// the global tree's.
    nodes: Vec<u8>,
    global: GlobalSnapshot,
}

struct FrozenTenant {
    id: TenantId,
    state: Arc<TenantState>,
    usage: Vec<DailyRow>,
    leaves: u64,
    head: [u8; 32],
    epoch: u64,
}

impl Frozen {
    /// The key state and usage rows of `ledger` and `usage` at `position`;
    /// [`Frozen::with_trees`] adds the trees of the same position.
    fn of(position: u64, ledger: &Ledger, usage: &TenantUsage) -> Self {
        let mut rows: HashMap<&TenantId, Vec<DailyRow>> = usage.tenant_rows().collect();
        let mut tenants: Vec<FrozenTenant> = ledger
            .shared_tenants()
            .map(|(id, state)| FrozenTenant {
                id: id.clone(),
                state: state.clone(),
                usage: rows.remove(id).unwrap_or_default(),
                leaves: 0,
                head: [0; 32],
                epoch: 0,
            })
            .collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        Frozen {
            position,
            events: ledger.events(),
            tenants,
            nodes: Vec::new(),
            global: GlobalSnapshot::default(),
        }
    }

    /// Adds each tenant's tree (an empty one for a tenant without) and
    /// the global tree.
    /// Each tenant's tree size and chain head at the position.
    fn heads(&self) -> Vec<(TenantId, u64, [u8; 32])> {
        self.tenants
            .iter()
            .map(|t| (t.id.clone(), t.leaves, t.head))
            .collect()
    }

    fn with_trees(mut self, trees: &HashMap<TenantId, TenantTree>, global: &GlobalTree) -> Self {
        let empty = TenantTree::default();
        for t in &mut self.tenants {
            let tree = trees.get(&t.id).unwrap_or(&empty);
            tree.to_snapshot(&mut self.nodes);
            (t.leaves, t.head, t.epoch) = (tree.tree.len(), tree.head, tree.epoch);
        }
        self.global = global.to_snapshot(&mut self.nodes);
        self
    }
}

/// A runtime's snapshot state.
pub(crate) struct Snapshots {
    pub(crate) config: SnapshotConfig,
    /// The position of the last snapshot taken or loaded.
    taken: AtomicU64,
    /// The position of the newest snapshot on disk (loaded, or written).
    on_disk: AtomicU64,
    taken_at: Mutex<Instant>,
    /// The snapshot being written.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    pub(crate) check: Mutex<Option<SnapshotCheck>>,
}

/// Snapshot counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct SnapshotMetrics {
    /// Events replayed from the log at open (only the tail after a snapshot).
    pub start_replayed_events: AtomicU64,
    /// The position of the snapshot open started from (0: none).
    pub start_snapshot_position: AtomicU64,
    /// The position of the log's shared usage projection the per-key
    /// usage rows were filled from at open (0: none; `shared.rs`).
    pub start_usage_position: AtomicU64,
    /// Snapshots written.
    pub written: AtomicU64,
    /// Snapshots that could not be written.
    pub write_failures: AtomicU64,
    /// Snapshot files refused at open (shared ones included: `shared.rs`).
    pub refused: AtomicU64,
    /// The position of the last snapshot written.
    pub last_position: AtomicU64,
}

impl Snapshots {
    pub(crate) fn new(config: SnapshotConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::unavailable(format!("snapshots need a tokio runtime: {e}")))?;
        Ok(Snapshots {
            config,
            taken: AtomicU64::new(0),
            on_disk: AtomicU64::new(0),
            taken_at: Mutex::new(Instant::now()),
            task: Mutex::new(None),
            runtime,
            check: Mutex::new(None),
        })
    }

    fn writes(&self) -> bool {
        self.config.start == SnapshotStart::Load
    }
}

impl Shared {
    /// The projections as they are: called where nothing applies
    /// concurrently (the writer thread, or before it starts, or after it
    /// stopped), so the parts are of one position.
    fn capture(&self) -> Projections {
        let read = self.read_model();
        let (position, ledger, usage) = (read.head, read.ledger.clone(), read.usage.clone());
        drop(read);
        // The global tree first, then the tenants' (as `AuditState::apply`
        // takes them).
        let global_lock = self
            .audit
            .global
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let global = global_lock.clone();
        let trees = self
            .audit
            .trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        drop(global_lock);
        Projections {
            position,
            ledger,
            usage,
            trees,
            global,
        }
    }

    /// The projections as they are, for a snapshot file: each tenant's key
    /// state shared with the read model (see [`Shared::capture`] for when
    /// this may be called).
    fn freeze(&self) -> Frozen {
        let read = self.read_model();
        let frozen = Frozen::of(read.head, &read.ledger, &read.usage);
        drop(read);
        // The global tree first, then the tenants' (as `capture`).
        let global = self
            .audit
            .global
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let trees = self.audit.trees.read().unwrap_or_else(|e| e.into_inner());
        frozen.with_trees(&trees, &global)
    }

    /// Takes a snapshot and writes it on a blocking task when one is due
    /// and none is being written. Called by the writer thread after each
    /// round, and at open.
    pub(crate) fn snapshot_tick(self: &Arc<Self>) {
        let Some(s) = &self.snapshots else { return };
        if !s.writes() {
            return;
        }
        let head = self.read_model().head;
        let since = head.saturating_sub(s.taken.load(Ordering::Acquire));
        if since == 0 {
            return;
        }
        let mut taken_at = s.taken_at.lock().unwrap_or_else(|e| e.into_inner());
        if since < s.config.every_events.max(1) && taken_at.elapsed() < s.config.every {
            return;
        }
        let mut task = s.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let frozen = self.freeze();
        s.taken.store(frozen.position, Ordering::Release);
        *taken_at = Instant::now();
        let shared = self.clone();
        *task = Some(
            s.runtime
                .spawn_blocking(move || shared.write_snapshot(frozen, true)),
        );
    }

    /// At shutdown, once the writer stopped: waits for the snapshot being
    /// written, then writes one of the final state unless the newest on
    /// disk is of it already (a failed periodic one is made up for here).
    pub(crate) async fn snapshot_at_shutdown(self: &Arc<Self>) {
        let Some(s) = &self.snapshots else { return };
        let running = s.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = running {
            let _ = t.await;
        }
        if !s.writes() || self.read_model().head <= s.on_disk.load(Ordering::Acquire) {
            return;
        }
        let frozen = self.freeze();
        s.taken.store(frozen.position, Ordering::Release);
        let shared = self.clone();
        let _ = tokio::task::spawn_blocking(move || shared.write_snapshot(frozen, false)).await;
    }

    /// Writes `f`; `announce`: logs it (the periodic ones: a one-shot
    /// command of the CLI logs nothing when all goes well).
    fn write_snapshot(&self, f: Frozen, announce: bool) {
        let Some(s) = &self.snapshots else { return };
        let started = Instant::now();
        let position = f.position;
        // What a shared log publishes beside the file (`shared.rs`).
        let heads = self.log.shares_snapshots().then(|| f.heads());
        // Encoded first (each tenant's state is released as it is
        // written); the trees' complete tiles and the per-key usage rows,
        // which are not in the snapshot, are made durable before the file
        // gets its name.
        let durable = || {
            self.audit
                .nodes
                .sync(position)
                .and_then(|()| self.usage_rows.sync().map_err(|e| e.to_string()))
                .map_err(io::Error::other)
        };
        match write_file_with(
            &s.config.dir,
            position,
            |file| write_frozen(f, file),
            durable,
        ) {
            Ok((path, bytes)) => {
                s.on_disk.fetch_max(position, Ordering::AcqRel);
                let m = &self.metrics.snapshots;
                m.written.fetch_add(1, Ordering::Relaxed);
                m.last_position.fetch_max(position, Ordering::Relaxed);
                if announce {
                    tracing::info!(
                        file = %path.display(),
                        position,
                        bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "wrote a snapshot of the projections"
                    );
                }
                if let Err(e) = prune(&s.config.dir, s.config.keep.max(1)) {
                    tracing::warn!(dir = %s.config.dir.display(), error = %e, "cannot remove old snapshots");
                }
                if let Some(heads) = heads {
                    self.publish_snapshot(position, heads, &path);
                }
            }
            Err(e) => {
                self.metrics
                    .snapshots
                    .write_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dir = %s.config.dir.display(),
                    position,
                    error = %e,
                    "cannot write a snapshot; the next start replays more of the log"
                );
            }
        }
    }

    /// At open, before replay: with [`SnapshotStart::Load`], the newest
    /// valid snapshot becomes the projections (replay then reads only the
    /// tail). With [`SnapshotStart::Check`], the newest valid one is
    /// returned, to compare with the replay at its position. Refused files
    /// are renamed `.refused` (Load) and logged. Errors only when the log
    /// cannot be read.
    pub(crate) fn start_from_snapshot(&self) -> Result<Option<Projections>, Error> {
        let Some(s) = &self.snapshots else {
            return Ok(None);
        };
        let mut check = SnapshotCheck::default();
        let found = self.newest_valid(&s.config, &mut check.refused)?;
        // None of its own: one a node shared in the log (`shared.rs`).
        let (found, shared) = match found {
            None if s.config.start == SnapshotStart::Load => (
                self.newest_shared(&mut check.refused)?
                    .map(|p| (crate::shared::shared_name(p.position), p)),
                true,
            ),
            found => (found, false),
        };
        self.metrics
            .snapshots
            .refused
            .store(check.refused.len() as u64, Ordering::Relaxed);
        match s.config.start {
            SnapshotStart::Load => {
                let Some((_, p)) = found else {
                    return Ok(None);
                };
                s.taken.store(p.position, Ordering::Release);
                if !shared {
                    // (From a shared one, a stop writes one of its own.)
                    s.on_disk.store(p.position, Ordering::Release);
                }
                self.metrics
                    .snapshots
                    .start_snapshot_position
                    .store(p.position, Ordering::Relaxed);
                self.install(p);
                Ok(None)
            }
            SnapshotStart::Check => {
                let found = found.map(|(path, p)| {
                    check.compared = Some((path, p.position));
                    p
                });
                *s.check.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
                Ok(found)
            }
        }
    }

    /// `keyledger replay`: the projections replayed up to the snapshot's
    /// position, compared with it.
    pub(crate) fn compare_with_snapshot(&self, snapshot: &Projections) {
        let Some(s) = &self.snapshots else { return };
        let here = self.capture();
        let differences = differences(&here, snapshot);
        let mut check = s.check.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = check.as_mut() {
            c.differences = differences;
        }
    }

    /// The newest snapshot that decodes and matches the log, with its
    /// file; the ones refused before it are added to `refused`.
    fn newest_valid(
        &self,
        config: &SnapshotConfig,
        refused: &mut Vec<(PathBuf, String)>,
    ) -> Result<Option<(PathBuf, Projections)>, Error> {
        let files = match list(&config.dir, config.start == SnapshotStart::Load) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %config.dir.display(), error = %e,
                    "cannot read the snapshots; replaying the whole log");
                return Ok(None);
            }
        };
        for (position, path) in files.into_iter().rev() {
            let verdict = match read_file(&path) {
                Err(e) => Err(Refusal::Torn(e.to_string())),
                // Its trees' complete tiles must be in the node store (not
                // looked for in it otherwise: a store that is behind is
                // not damaged).
                Ok(_) if let Err(e) = self.audit.nodes.covers(position) => Err(Refusal::Content(e)),
                Ok(bytes) => decode(&bytes, &self.audit.nodes).and_then(|p| {
                    if p.position == position {
                        Ok(p)
                    } else {
                        Err(Refusal::Content(format!(
                            "it holds position {}, its name says {position}",
                            p.position
                        )))
                    }
                }),
            };
            let verdict = match verdict {
                Ok(p) => check_against_log(self.log.as_ref(), &p)?.map(|()| p),
                Err(r) => Err(r),
            };
            match verdict {
                Ok(p) => return Ok(Some((path, p))),
                Err(why) => {
                    tracing::warn!(
                        file = %path.display(),
                        problem = %why,
                        "refusing a snapshot; the projections are rebuilt from the log"
                    );
                    if config.start == SnapshotStart::Load {
                        let mut aside = path.clone().into_os_string();
                        aside.push(".refused");
                        if let Err(e) = fs::rename(&path, &aside) {
                            tracing::warn!(file = %path.display(), error = %e,
                                "cannot rename a refused snapshot");
                        }
                    }
                    refused.push((path, why.to_string()));
                }
            }
        }
        Ok(None)
    }

    /// Makes `p` the projections, the verification map and the trees.
    fn install(&self, p: Projections) {
        let keys = self.keys.pin();
        for (tenant, state) in p.ledger.tenants() {
            for k in state.keys.values() {
                crate::put_entry(&keys, tenant, state, k, &self.clock, &self.refills, None);
            }
        }
        let mut global = self
            .audit
            .global
            .tree
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *global = p.global;
        *self.audit.trees.write().unwrap_or_else(|e| e.into_inner()) = p.trees;
        drop(global);
        let mut read = self.read.write().unwrap_or_else(|e| e.into_inner());
        read.ledger = p.ledger;
        read.usage = p.usage;
        read.head = p.position;
        drop(read);
        self.applied.send_replace(p.position);
    }
}

/// What differs between two sets of projections (empty: nothing).
fn differences(replayed: &Projections, snapshot: &Projections) -> Vec<String> {
    let mut out = Vec::new();
    if replayed.position != snapshot.position {
        out.push(format!(
            "the replay reached position {}, the snapshot is at {}",
            replayed.position, snapshot.position
        ));
    }
    if replayed.ledger != snapshot.ledger {
        let mut tenants: Vec<&TenantId> = replayed
            .ledger
            .tenants()
            .chain(snapshot.ledger.tenants())
            .map(|(t, _)| t)
            .filter(|t| replayed.ledger.tenant(t) != snapshot.ledger.tenant(t))
            .collect();
        tenants.sort();
        tenants.dedup();
        let names: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
        out.push(if names.is_empty() {
            "the key state differs".to_owned()
        } else {
            format!("the key state differs for tenants {}", names.join(", "))
        });
    }
    if replayed.usage != snapshot.usage {
        out.push("the usage rollups differ".to_owned());
    }
    let mut tenants: Vec<&TenantId> = replayed
        .trees
        .keys()
        .chain(snapshot.trees.keys())
        .filter(|t| replayed.trees.get(*t) != snapshot.trees.get(*t))
        .collect();
    tenants.sort();
    tenants.dedup();
    if !tenants.is_empty() {
        let names: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
        out.push(format!(
            "the Merkle trees differ for tenants {}",
            names.join(", ")
        ));
    }
    if replayed.global != snapshot.global {
        out.push(format!(
            "the global tree differs ({} leaves replayed, {} in the snapshot)",
            replayed.global.tree.len(),
            snapshot.global.tree.len()
        ));
    }
    out
}

/// Checks a decoded snapshot against the log: the record at its position
/// exists, and each tenant's chain head at that position is the
/// snapshot's (a tenant the snapshot lacks has no event up to it).
/// `Err` only when the log cannot be read.
pub(crate) fn check_against_log(
    log: &dyn EventLog,
    p: &Projections,
) -> Result<Result<(), Refusal>, Error> {
    let mismatch = |m: String| Ok(Err(Refusal::Log(m)));
    let head = log.head()?;
    if p.position > head {
        return mismatch(format!(
            "it covers the log up to position {}, the log ends at {head} (was the log restored \
             from an older backup?)",
            p.position
        ));
    }
    let Some(at) = log.read_after(p.position - 1, 1)?.into_iter().next() else {
        return mismatch(format!("the log has no record at position {}", p.position));
    };
    if at.position != p.position
        || p.trees
            .get(&at.event.tenant)
            .map(|t| (t.tree.len(), t.head))
            != Some((at.seq, at.hash))
    {
        return mismatch(format!(
            "the record at position {} (tenant {}, event {}) is not the snapshot's last",
            p.position, at.event.tenant, at.seq
        ));
    }
    let mut tenants: Vec<&TenantId> = p.trees.keys().collect();
    tenants.sort();
    for tenant in tenants {
        let tree = &p.trees[tenant];
        let seq = tree.tree.len();
        let records = log.read_tenant(tenant, seq - 1, 2)?;
        let last = records.first().filter(|r| r.seq == seq);
        match last {
            Some(r) if r.hash == tree.head && r.position <= p.position => {}
            _ => {
                return mismatch(format!(
                    "tenant {tenant}: its chain head at position {} (event {seq}) is not the \
                     snapshot's",
                    p.position
                ));
            }
        }
        if records.get(1).is_some_and(|r| r.position <= p.position) {
            return mismatch(format!(
                "tenant {tenant}: the log holds more of its events up to position {} than the \
                 snapshot",
                p.position
            ));
        }
    }
    for tenant in log.tenants()? {
        if p.trees.contains_key(&tenant) {
            continue;
        }
        let first = log.read_tenant(&tenant, 0, 1)?;
        if first.first().is_some_and(|r| r.position <= p.position) {
            return mismatch(format!(
                "tenant {tenant} has events up to position {} that the snapshot lacks",
                p.position
            ));
        }
    }
    Ok(Ok(()))
}

// ---------------------------------------------------------------------
// Files.

fn file_name(position: u64) -> String {
    format!("snapshot-{position:020}.bin")
}

/// The position a snapshot file's name gives.
fn position_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".bin")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Refuses a snapshot directory that is a symbolic link or not a directory.
fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (keyledger does not follow links in its data directory)",
            dir.display()
        )));
    }
    Ok(())
}

/// The snapshot files, oldest first. `clean`: removes what a crash while
/// writing left behind (`.tmp` files).
fn list(dir: &Path, clean: bool) -> io::Result<Vec<(u64, PathBuf)>> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(Vec::new());
    }
    check_dir(dir)?;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") && name.starts_with("snapshot-") {
            if clean {
                tracing::info!(file = %entry.path().display(),
                    "removing a snapshot left unfinished by a crash");
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if let Some(position) = position_of(name)
            && entry.file_type()?.is_file()
        {
            out.push((position, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = crate::datadir::open_no_follow(fs::OpenOptions::new().read(true), path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes a snapshot file atomically: a temporary file, fsync, rename,
/// fsync of the directory. Returns its path.
#[cfg(test)]
fn write_file(dir: &Path, position: u64, bytes: &[u8]) -> io::Result<PathBuf> {
    let fill = |f: &mut fs::File| f.write_all(bytes).map(|()| bytes.len() as u64);
    write_file_with(dir, position, fill, || Ok(())).map(|(path, _)| path)
}

/// Writes a snapshot file atomically: `fill` writes the content into a
/// temporary file (and returns its length), fsync, `durable` (what must be
/// on disk before the file is found), rename, fsync of the directory.
/// Returns its path and length; on an error, removes the temporary file.
fn write_file_with(
    dir: &Path,
    position: u64,
    fill: impl FnOnce(&mut fs::File) -> io::Result<u64>,
    durable: impl FnOnce() -> io::Result<()>,
) -> io::Result<(PathBuf, u64)> {
    crate::datadir::create_dir_private(dir)?;
    check_dir(dir)?;
    let path = dir.join(file_name(position));
    let tmp = dir.join(format!("{}.tmp", file_name(position)));
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = crate::datadir::open_no_follow(&mut options, &tmp).and_then(|mut f| {
        let len = fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        durable()?;
        Ok(len)
    });
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok((path, len))
}

/// Removes all but the newest `keep` snapshot files.
fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let files = list(dir, false)?;
    let old = files.len().saturating_sub(keep);
    for (_, path) in files.into_iter().take(old) {
        fs::remove_file(path)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Encoding: the file's own schema types, apart from the domain types.
// Each is named after the format version it first appeared in.

/// A snapshot's body (format version 2).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotV2 {
    /// The last log position applied.
    position: u64,
    /// Events folded into the key state ([`Ledger::events`]).
    events: u64,
    /// Every tenant with events, by id.
    tenants: Vec<TenantV2>,
    /// The global tree beside its nodes and entries.
    global: GlobalV2,
}

#[derive(Debug, Serialize, Deserialize)]
struct GlobalV2 {
    /// Its leaves (its nodes, then as many entries, follow the tenants'
    /// tree nodes).
    leaves: u64,
    /// Each tenant's last event's leaf index.
    heads: Vec<(String, u64)>,
    recoveries: u64,
    /// Records held back out of position order.
    pending: Vec<PendingV2>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingV2 {
    position: u64,
    tenant: String,
    hash: [u8; 32],
    recovered: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct WebhookV2 {
    id: u128,
    url: String,
    event_types: Vec<String>,
    description: Option<String>,
    created_at: i64,
    created_seq: u64,
    deleted_at: Option<i64>,
    deleted_seq: Option<u64>,
}

/// `K`: the keys as read back, or [`KeysOf`] as written (each encoded as
/// it is reached: the same bytes).
#[derive(Debug, Serialize, Deserialize)]
struct TenantV2<K = Vec<KeyV3>> {
    id: String,
    version: u64,
    last_at: i64,
    recoveries: u64,
    keys: K,
    by_owner: Vec<(String, Vec<u128>)>,
    removed_users: Vec<(String, i64)>,
    usage: Vec<DayV1>,
    /// The Merkle tree's leaves (its nodes follow the body, in tenant order).
    leaves: u64,
    /// The chain hash of the tenant's last event.
    head: [u8; 32],
    /// The checkpoint epoch.
    epoch: u64,
    /// Webhook subscriptions, deleted ones included, by id.
    webhooks: Vec<WebhookV2>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyV3 {
    id: u128,
    owner: String,
    name: String,
    description: Option<String>,
    created_at: i64,
    created_by: ActorV1,
    expires_at: Option<i64>,
    scopes: u8,
    secret_hash: [u8; 32],
    masked: String,
    revoked: Option<RevocationV1>,
    rotated_from: Option<u128>,
    rotated_to: Option<u128>,
    last_used_at: Option<i64>,
    uses: CountsV3,
    policy: Option<PolicyV3>,
}

/// A key's policy (format 3).
#[derive(Debug, Serialize, Deserialize)]
struct PolicyV3 {
    meta: Option<String>,
    credits: Option<CreditStateV3>,
    /// Name, limit, duration in milliseconds.
    limits: Vec<(String, u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CreditStateV3 {
    remaining: u64,
    /// Amount, interval (`daily`, `monthly`), day.
    refill: Option<(u64, String, Option<u8>)>,
    epoch: u64,
    since: i64,
    outstanding: u64,
}

impl PolicyV3 {
    fn from_core(p: &KeyPolicy) -> Self {
        PolicyV3 {
            meta: p.meta.as_ref().map(|m| m.as_str().to_owned()),
            credits: p.credits.as_ref().map(|c| CreditStateV3 {
                remaining: c.remaining,
                refill: c
                    .refill
                    .map(|r| (r.amount, r.interval.as_str().to_owned(), r.day)),
                epoch: c.epoch,
                since: c.since.as_micros(),
                outstanding: c.outstanding,
            }),
            limits: p
                .limits
                .iter()
                .map(|l| (l.name.clone(), l.limit, l.duration_ms))
                .collect(),
        }
    }

    fn into_core(self) -> Result<Option<Box<KeyPolicy>>, Refusal> {
        let bad = |m: String| Refusal::Content(m);
        let credits = match self.credits {
            None => None,
            Some(c) => Some(CreditState {
                remaining: c.remaining,
                refill: match c.refill {
                    None => None,
                    Some((amount, interval, day)) => Some(Refill {
                        amount,
                        interval: RefillInterval::parse(&interval)
                            .ok_or_else(|| bad(format!("refill interval {interval:?}")))?,
                        day,
                    }),
                },
                epoch: c.epoch,
                since: Timestamp::from_micros(c.since),
                outstanding: c.outstanding,
            }),
        };
        let policy = KeyPolicy {
            meta: self
                .meta
                .map(Meta::new)
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            credits,
            limits: self
                .limits
                .into_iter()
                .map(|(name, limit, duration_ms)| RateLimit {
                    name,
                    limit,
                    duration_ms,
                })
                .collect(),
        };
        Ok(policy.boxed())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RevocationV1 {
    at: i64,
    by: ActorV1,
    /// The reason's wire name.
    reason: String,
    cause: Option<CauseV1>,
}

#[derive(Debug, Serialize, Deserialize)]
enum CauseV1 {
    UserRemoved { user_id: String, seq: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
enum ActorV1 {
    User {
        id: String,
    },
    ApiKey {
        key_id: u128,
        name: String,
        owner: String,
    },
    Operator,
    System,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountsV3 {
    valid: u64,
    revoked: u64,
    expired: u64,
    insufficient_scope: u64,
    usage_exceeded: u64,
    rate_limited: u64,
    credits_spent: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DayV1 {
    day: i32,
    counts: CountsV3,
}

impl ActorV1 {
    fn from_core(a: &Actor) -> Self {
        match a {
            Actor::User { id } => ActorV1::User { id: id.to_string() },
            Actor::ApiKey {
                key_id,
                name,
                owner,
            } => ActorV1::ApiKey {
                key_id: key_id.to_u128(),
                name: name.clone(),
                owner: owner.to_string(),
            },
            Actor::Operator => ActorV1::Operator,
            Actor::System => ActorV1::System,
        }
    }

    fn into_core(self) -> Result<Actor, Refusal> {
        Ok(match self {
            ActorV1::User { id } => Actor::User { id: user(&id)? },
            ActorV1::ApiKey {
                key_id,
                name,
                owner,
            } => Actor::ApiKey {
                key_id: KeyId::from_u128(key_id),
                name,
                owner: user(&owner)?,
            },
            ActorV1::Operator => Actor::Operator,
            ActorV1::System => Actor::System,
        })
    }
}

impl CountsV3 {
    fn from_core(c: &UseCounts) -> Self {
        CountsV3 {
            valid: c.valid,
            revoked: c.revoked,
            expired: c.expired,
            insufficient_scope: c.insufficient_scope,
            usage_exceeded: c.usage_exceeded,
            rate_limited: c.rate_limited,
            credits_spent: c.credits_spent,
        }
    }

    fn into_core(self) -> UseCounts {
        UseCounts {
            valid: self.valid,
            revoked: self.revoked,
            expired: self.expired,
            insufficient_scope: self.insufficient_scope,
            usage_exceeded: self.usage_exceeded,
            rate_limited: self.rate_limited,
            credits_spent: self.credits_spent,
        }
    }
}

fn days_v1(rows: Vec<DailyRow>) -> Vec<DayV1> {
    rows.into_iter()
        .map(|r| DayV1 {
            day: r.day.as_days(),
            counts: CountsV3::from_core(&r.counts),
        })
        .collect()
}

fn days_core(days: Vec<DayV1>) -> Vec<DailyRow> {
    days.into_iter()
        .map(|d| DailyRow {
            day: Day::from_days(d.day),
            counts: d.counts.into_core(),
        })
        .collect()
}

fn user(s: &str) -> Result<UserId, Refusal> {
    s.parse()
        .map_err(|e| Refusal::Content(format!("user id {s:?}: {e}")))
}

impl KeyV3 {
    fn from_core(k: &KeyRecord) -> Self {
        KeyV3 {
            id: k.id.to_u128(),
            owner: k.owner.to_string(),
            name: k.name.to_string(),
            description: k.description.clone(),
            created_at: k.created_at.as_micros(),
            created_by: ActorV1::from_core(&k.created_by()),
            expires_at: k.expires_at.map(Timestamp::as_micros),
            scopes: k.scopes.bits(),
            secret_hash: k.secret_hash.0,
            masked: k.masked.to_string(),
            revoked: k.revoked.as_ref().map(|r| RevocationV1 {
                at: r.at.as_micros(),
                by: ActorV1::from_core(&r.by),
                reason: r.reason.as_str().to_owned(),
                cause: r.cause.as_ref().map(|c| match c {
                    Cause::UserRemoved { user_id, seq } => CauseV1::UserRemoved {
                        user_id: user_id.to_string(),
                        seq: *seq,
                    },
                }),
            }),
            rotated_from: k.rotated_from().map(KeyId::to_u128),
            rotated_to: k.rotated_to().map(KeyId::to_u128),
            last_used_at: k.last_used_at.map(Timestamp::as_micros),
            uses: CountsV3::from_core(&k.uses),
            policy: k.policy.as_deref().map(PolicyV3::from_core),
        }
    }

    fn into_core(self) -> Result<KeyRecord, Refusal> {
        let revoked = match self.revoked {
            None => None,
            Some(r) => Some(Box::new(Revocation {
                at: Timestamp::from_micros(r.at),
                by: r.by.into_core()?,
                reason: RevokeReason::parse(&r.reason).ok_or_else(|| {
                    Refusal::Content(format!("unknown revocation reason {:?}", r.reason))
                })?,
                cause: match r.cause {
                    None => None,
                    Some(CauseV1::UserRemoved { user_id, seq }) => Some(Cause::UserRemoved {
                        user_id: user(&user_id)?,
                        seq,
                    }),
                },
            })),
        };
        let owner = user(&self.owner)?;
        Ok(KeyRecord {
            id: KeyId::from_u128(self.id),
            creator: CreatedBy::of(&self.created_by.into_core()?, &owner),
            owner,
            name: self.name.into(),
            description: self.description,
            created_at: Timestamp::from_micros(self.created_at),
            expires_at: self.expires_at.map(Timestamp::from_micros),
            scopes: ScopeSet::from_bits(self.scopes)
                .ok_or_else(|| Refusal::Content(format!("scope bits {:#x}", self.scopes)))?,
            secret_hash: SecretHash(self.secret_hash),
            masked: Masked::from(self.masked.as_str()),
            revoked,
            links: Links {
                from: self.rotated_from.map(KeyId::from_u128),
                to: self.rotated_to.map(KeyId::from_u128),
            }
            .boxed(),
            last_used_at: self.last_used_at.map(Timestamp::from_micros),
            uses: self.uses.into_core(),
            policy: match self.policy {
                None => None,
                Some(p) => p.into_core()?,
            },
        })
    }
}

impl WebhookV2 {
    fn from_core(w: &Webhook) -> Self {
        WebhookV2 {
            id: w.id.to_u128(),
            url: w.url.clone(),
            event_types: w.event_types.clone(),
            description: w.description.clone(),
            created_at: w.created_at.as_micros(),
            created_seq: w.created_seq,
            deleted_at: w.deleted_at.map(Timestamp::as_micros),
            deleted_seq: w.deleted_seq,
        }
    }

    fn into_core(self) -> Webhook {
        Webhook {
            id: WebhookId::from_u128(self.id),
            url: self.url,
            event_types: self.event_types,
            description: self.description,
            created_at: Timestamp::from_micros(self.created_at),
            created_seq: self.created_seq,
            deleted_at: self.deleted_at.map(Timestamp::from_micros),
            deleted_seq: self.deleted_seq,
        }
    }
}

fn tenant_id(s: &str) -> Result<TenantId, Refusal> {
    s.parse()
        .map_err(|e| Refusal::Content(format!("tenant id {s:?}: {e}")))
}

/// A tenant's keys, written as `Vec<KeyV3>`, each converted as it is
/// reached.
struct KeysOf<'a>(&'a TenantState);

impl Serialize for KeysOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.keys.values().map(KeyV3::from_core))
    }
}

impl FrozenTenant {
    fn v2(&self) -> TenantV2<KeysOf<'_>> {
        let state = &*self.state;
        let mut by_owner: Vec<(String, Vec<u128>)> = state
            .by_owner
            .iter()
            .map(|(u, ks)| (u.to_string(), ks.iter().map(|k| k.to_u128()).collect()))
            .collect();
        by_owner.sort();
        TenantV2 {
            id: self.id.to_string(),
            version: state.version,
            last_at: state.last_at.as_micros(),
            recoveries: state.recoveries,
            keys: KeysOf(state),
            by_owner,
            removed_users: state
                .removed_users
                .iter()
                .map(|(u, t)| (u.to_string(), t.as_micros()))
                .collect(),
            usage: days_v1(self.usage.clone()),
            leaves: self.leaves,
            head: self.head,
            epoch: self.epoch,
            webhooks: state.webhooks.values().map(WebhookV2::from_core).collect(),
        }
    }
}

impl GlobalV2 {
    fn from_snapshot(global: GlobalSnapshot) -> Self {
        GlobalV2 {
            leaves: global.leaves,
            heads: global
                .heads
                .into_iter()
                .map(|(t, i)| (t.to_string(), i))
                .collect(),
            recoveries: global.recoveries,
            pending: global
                .pending
                .into_iter()
                .map(|(position, tenant, hash, recovered)| PendingV2 {
                    position,
                    tenant: tenant.to_string(),
                    hash,
                    recovered,
                })
                .collect(),
        }
    }
}

/// The file's bytes for `p` (what [`write_frozen`] writes to a file).
#[cfg(test)]
pub(crate) fn encode(p: &Projections) -> Vec<u8> {
    let frozen = Frozen::of(p.position, &p.ledger, &p.usage).with_trees(&p.trees, &p.global);
    let mut out = io::Cursor::new(Vec::new());
    // Writing into memory cannot fail.
    let _ = write_frozen(frozen, &mut out);
    out.into_inner()
}

/// Counts the bytes written through it.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot file of `f` into `out` from its start, and returns
/// its length: the header, the body (a [`SnapshotV2`]), the trees'
/// frontiers and the checksum. The body is streamed a tenant at a time
/// (postcard writes a struct as its fields in order, and a sequence as its
/// length then its items: the bytes of `SnapshotV2` as a whole), and each
/// tenant's state is dropped once written, so nothing holds a second copy
/// of the state. Then the body's length is written into the header and
/// the checksum computed over what was written, read back.
fn write_frozen<W: Read + Write + Seek>(f: Frozen, out: &mut W) -> io::Result<u64> {
    fn put(w: &mut impl Write, value: &(impl Serialize + ?Sized)) -> io::Result<()> {
        postcard::to_io(value, w)
            .map(|_| ())
            .map_err(io::Error::other)
    }
    out.seek(SeekFrom::Start(0))?;
    let body_len = {
        let mut w = io::BufWriter::with_capacity(1 << 16, &mut *out);
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes())?;
        w.write_all(&0u64.to_le_bytes())?;
        let mut body = Counted {
            inner: &mut w,
            n: 0,
        };
        put(&mut body, &f.position)?;
        put(&mut body, &f.events)?;
        put(&mut body, &f.tenants.len())?;
        for tenant in f.tenants {
            put(&mut body, &tenant.v2())?;
            drop(tenant);
        }
        put(&mut body, &GlobalV2::from_snapshot(f.global))?;
        let body_len = body.n;
        w.write_all(&(f.nodes.len() as u64 / 32).to_le_bytes())?;
        w.write_all(&f.nodes)?;
        w.flush()?;
        body_len
    };
    out.seek(SeekFrom::Start(10))?;
    out.write_all(&body_len.to_le_bytes())?;
    out.seek(SeekFrom::Start(0))?;
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        len += n as u64;
    }
    out.write_all(&sum.finalize())?;
    out.flush()?;
    Ok(len + 32)
}

/// Reads a snapshot file's bytes back, checking its magic, version,
/// length, checksum and shape. Never panics, whatever the bytes.
pub(crate) fn decode(
    bytes: &[u8],
    store: &Arc<crate::tilestore::NodeStore>,
) -> Result<Projections, Refusal> {
    let torn = |what: &str| Refusal::Torn(what.to_owned());
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(torn("no snapshot header"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(Refusal::Version { found: version });
    }
    if bytes.len() < HEADER_LEN + 8 + 32 {
        return Err(torn("cut short"));
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(content).as_slice() != sum {
        return Err(Refusal::Checksum);
    }
    let u64_at = |at: usize| -> Option<u64> {
        let b: [u8; 8] = content.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let body_len = u64_at(10)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| torn("cut short"))?;
    let body_end = HEADER_LEN
        .checked_add(body_len)
        .filter(|end| end.checked_add(8).is_some_and(|e| e <= content.len()))
        .ok_or_else(|| torn("its body is longer than the file"))?;
    let nodes_count = u64_at(body_end).ok_or_else(|| torn("cut short"))?;
    let nodes = &content[body_end + 8..];
    if Some(nodes.len() as u64) != nodes_count.checked_mul(32) {
        return Err(torn("its tree nodes do not fill the file"));
    }
    let body: SnapshotV2 = postcard::from_bytes(&content[HEADER_LEN..body_end])
        .map_err(|e| Refusal::Content(format!("the body does not decode: {e}")))?;
    from_v2(body, nodes, store)
}

fn from_v2(
    body: SnapshotV2,
    nodes: &[u8],
    store: &Arc<crate::tilestore::NodeStore>,
) -> Result<Projections, Refusal> {
    let bad = |m: String| Refusal::Content(m);
    if body.position == 0 {
        return Err(bad("position 0".to_owned()));
    }
    let mut nodes = nodes.chunks_exact(32);
    let mut states = Vec::with_capacity(body.tenants.len());
    let mut trees = HashMap::with_capacity(body.tenants.len());
    let mut tenant_usage = Vec::new();
    let mut total: u64 = 0;
    for t in body.tenants {
        let id = tenant_id(&t.id)?;
        if t.version != t.leaves || t.version == 0 {
            return Err(bad(format!(
                "tenant {id}: {} events, {} tree leaves",
                t.version, t.leaves
            )));
        }
        total = total.saturating_add(t.version);
        let tree = TenantTree::from_snapshot(store, &id, t.leaves, t.head, t.epoch, &mut nodes)
            .map_err(|e| bad(format!("tenant {id}: {e}")))?;
        let mut keys = std::collections::BTreeMap::new();
        for k in t.keys {
            let k = k.into_core()?;
            keys.insert(k.id, k);
        }
        let mut by_owner = HashMap::with_capacity(t.by_owner.len());
        for (u, ks) in t.by_owner {
            by_owner.insert(user(&u)?, ks.into_iter().map(KeyId::from_u128).collect());
        }
        // Each key's owner points at the tenant's one copy of the id, as
        // a fold leaves it (issue 13: ids are shared, not copied per key).
        for k in keys.values_mut() {
            if let Some((o, _)) = by_owner.get_key_value(&k.owner) {
                k.owner = o.clone();
            }
        }
        let mut removed_users = std::collections::BTreeMap::new();
        for (u, at) in t.removed_users {
            removed_users.insert(user(&u)?, Timestamp::from_micros(at));
        }
        if !t.usage.is_empty() {
            tenant_usage.push((id.clone(), days_core(t.usage)));
        }
        trees.insert(id.clone(), tree);
        let mut state = TenantState {
            version: t.version,
            last_at: Timestamp::from_micros(t.last_at),
            keys,
            by_owner,
            removed_users,
            recoveries: t.recoveries,
            webhooks: t
                .webhooks
                .into_iter()
                .map(|w| {
                    let w = w.into_core();
                    (w.id, w)
                })
                .collect(),
            listing: Default::default(),
        };
        state.rebuild_listing();
        states.push((id, state));
    }
    let g = body.global;
    let mut heads = Vec::with_capacity(g.heads.len());
    for (t, i) in g.heads {
        heads.push((tenant_id(&t)?, i));
    }
    let mut pending = Vec::with_capacity(g.pending.len());
    for r in g.pending {
        pending.push((r.position, tenant_id(&r.tenant)?, r.hash, r.recovered));
    }
    let global = GlobalTree::from_snapshot(
        store,
        GlobalSnapshot {
            leaves: g.leaves,
            heads,
            recoveries: g.recoveries,
            pending,
        },
        &mut nodes,
    )
    .map_err(|e| bad(format!("the global tree: {e}")))?;
    if nodes.len() != 0 {
        return Err(bad("tree nodes are left over".to_owned()));
    }
    if total != body.position || body.events != body.position {
        return Err(bad(format!(
            "position {} but {} events in its tenants' chains and {} folded",
            body.position, total, body.events
        )));
    }
    // The global tree holds every event up to the position, each tenant's
    // head among them, and every recovery.
    let recoveries = states
        .iter()
        .fold(0u64, |n, (_, s)| n.saturating_add(s.recoveries));
    if global.tree.len() != body.position
        || global.tenants() != trees.len()
        || trees
            .iter()
            .any(|(t, tree)| global.tenant_head(t) != Some(tree.head))
        || global.epoch() != recoveries.saturating_add(1)
    {
        return Err(bad(format!(
            "the global tree ({} leaves, {} tenants) does not match the tenants' trees at \
             position {}",
            global.tree.len(),
            global.tenants(),
            body.position
        )));
    }
    let ledger = Ledger::from_tenants(states, body.events).map_err(|e| bad(e.to_string()))?;
    let usage = TenantUsage::from_rows(tenant_usage);
    Ok(Projections {
        position: body.position,
        ledger,
        usage,
        trees,
        global,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Keyledger, ManualClock, NewKey, OsEntropy, UsageWindow};
    use keyledger_core::{Principal, RevokeReason};
    use keyledger_store::MemoryLog;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn open(log: Arc<dyn EventLog>, snapshots: Option<SnapshotConfig>) -> Keyledger {
        let config = Config {
            usage_window: UsageWindow::Manual,
            snapshots,
            ..Config::default()
        };
        let clock = ManualClock::new(Timestamp::from_micros(1_767_225_600_000_000));
        Keyledger::open_with(
            log,
            config,
            Arc::new(clock),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every kind of state: keys of two tenants, revoked, rotated (with a
    /// grace), a removed user's keys, usage on several days.
    async fn workload(l: &Keyledger) {
        for t in ["acme", "globex"] {
            let tenant: TenantId = t.parse().unwrap_or_else(|e| panic!("{e}"));
            let user = |u: &str| {
                Principal::user(tenant.clone(), u.parse().unwrap_or_else(|e| panic!("{e}")))
            };
            let mut ids = Vec::new();
            for i in 0..6 {
                let owner = if i % 2 == 0 { "ada" } else { "bob" };
                let c = l
                    .create_key(
                        user(owner),
                        NewKey {
                            name: format!("{t} {i}"),
                            description: (i == 1).then(|| "d".to_owned()),
                            ..NewKey::default()
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(l.verify(c.secret.expose(), None).is_valid());
                ids.push(c.key.id);
            }
            l.flush_usage().await.unwrap_or_else(|e| panic!("{e}"));
            l.revoke_key(user("ada"), ids[0], RevokeReason::Compromised)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            l.rotate_key(user("ada"), ids[2], 3600, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            l.remove_user(
                Principal::operator(tenant.clone()),
                "bob".parse().unwrap_or_else(|e| panic!("{e}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            // A key with a policy: metadata, credits with a refill, a
            // limit; some credits reserved, then the key changed.
            let c = l
                .create_key(
                    user("ada"),
                    NewKey {
                        name: format!("{t} metered"),
                        meta: Some(
                            keyledger_core::Meta::new(r#"{"plan":"pro"}"#.into())
                                .unwrap_or_else(|e| panic!("{e}")),
                        ),
                        credits: Some(keyledger_core::Credits {
                            remaining: 500,
                            refill: Some(keyledger_core::Refill {
                                amount: 100,
                                interval: keyledger_core::RefillInterval::Monthly,
                                day: Some(31),
                            }),
                        }),
                        limits: vec![keyledger_core::RateLimit {
                            name: "burst".into(),
                            limit: 5,
                            duration_ms: 1000,
                        }],
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let epoch = c.key.credit_state().map_or(0, |s| s.epoch);
            l.reserve_credits(&tenant, c.key.id, epoch, 64)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut u = keyledger_core::UpdateKey::new(user("ada"), c.key.id);
            u.description = Some(Some("changed".into()));
            l.update_key(u).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn projections_survive_encoding_and_the_verification_map_is_rebuilt_the_same() {
        let rt = rt();
        let _inside = rt.enter();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let taken = live.shared.capture();
        let bytes = encode(&taken);
        assert_eq!(encode(&taken), bytes, "the encoding is deterministic");
        // Streamed a tenant at a time, the body is the bytes of the whole
        // `SnapshotV2` serialized at once.
        let body_len = u64::from_le_bytes(bytes[10..18].try_into().unwrap_or_default()) as usize;
        let body = &bytes[HEADER_LEN..HEADER_LEN + body_len];
        let whole: SnapshotV2 = postcard::from_bytes(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(whole.tenants.len(), 2);
        assert_eq!(postcard::to_stdvec(&whole).ok().as_deref(), Some(body));
        let back = decode(&bytes, taken.global.tree.store()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            differences(&back, &taken).is_empty(),
            "{:?}",
            differences(&back, &taken)
        );
        assert_eq!(back.ledger, taken.ledger);
        assert_eq!(back.usage, taken.usage);
        // The policy is in the snapshot, reservations included.
        let metered = back
            .ledger
            .tenants()
            .flat_map(|(_, s)| s.keys.values())
            .filter_map(|k| k.credit_state())
            .filter(|c| c.outstanding == 64 && c.refill.is_some())
            .count();
        assert_eq!(metered, 2);
        assert_eq!(back.trees, taken.trees);
        assert_eq!(back.global, taken.global);
        assert_eq!(back.global.tree.len(), taken.position);
        assert_eq!(check_against_log(log.as_ref(), &back).ok(), Some(Ok(())));
        // Installed in a runtime of its own: the same verification map.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let fresh = Shared::new(
            Config::default(),
            Arc::new(ManualClock::new(Timestamp::from_micros(0))),
            Arc::new(OsEntropy),
            log.clone(),
            tx,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        fresh.install(back);
        let (a, b) = (live.shared.keys.pin(), fresh.keys.pin());
        assert_eq!(a.len(), b.len());
        let mut revoked = 0;
        for (hash, entry) in a.iter() {
            let other = b.get(hash).unwrap_or_else(|| panic!("a key is missing"));
            assert_eq!(
                (
                    &entry.tenant,
                    entry.key_id,
                    &entry.owner,
                    &entry.name,
                    entry.scopes
                ),
                (
                    &other.tenant,
                    other.key_id,
                    &other.owner,
                    &other.name,
                    other.scopes
                )
            );
            assert_eq!(
                entry.is_revoked(),
                other.is_revoked(),
                "key {}",
                entry.key_id
            );
            assert_eq!(
                entry.expires_at(),
                other.expires_at(),
                "key {}",
                entry.key_id
            );
            revoked += usize::from(entry.is_revoked());
        }
        // ada's compromised key, and bob's three, in each tenant.
        assert_eq!(revoked, 8);
        assert!(taken.trees.values().all(|t| !t.tree.is_empty()));
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A snapshot is the state at the position it was taken, whatever the
    /// writer applies while it is encoded: the tenants it changes are
    /// copied, not changed under the encoding.
    #[test]
    fn writes_while_a_snapshot_is_encoded_do_not_leak_into_it() {
        let rt = rt();
        let _inside = rt.enter();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let frozen = live.shared.freeze();
        let at_freeze = live.shared.capture();
        // Meanwhile: creates in both tenants and a new one, a revocation,
        // usage, a change.
        rt.block_on(async {
            for t in ["acme", "globex", "initech"] {
                let tenant: TenantId = t.parse().unwrap_or_else(|e| panic!("{e}"));
                let ada = Principal::user(tenant, "ada".parse().unwrap_or_else(|e| panic!("{e}")));
                let c = live
                    .create_key(
                        ada.clone(),
                        NewKey {
                            name: format!("{t} later"),
                            ..NewKey::default()
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(live.verify(c.secret.expose(), None).is_valid());
                live.flush_usage().await.unwrap_or_else(|e| panic!("{e}"));
                let mut u = keyledger_core::UpdateKey::new(ada.clone(), c.key.id);
                u.description = Some(Some("later".into()));
                live.update_key(u).await.unwrap_or_else(|e| panic!("{e}"));
                live.revoke_key(ada, c.key.id, RevokeReason::Compromised)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        });
        let now = live.shared.capture();
        assert!(now.position > at_freeze.position + 10);
        assert_ne!(now.ledger, at_freeze.ledger);
        let mut out = io::Cursor::new(Vec::new());
        let len = write_frozen(frozen, &mut out).unwrap_or_else(|e| panic!("{e}"));
        let bytes = out.into_inner();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(bytes, encode(&at_freeze));
        let back = decode(&bytes, &live.shared.audit.nodes).unwrap_or_else(|e| panic!("{e}"));
        assert!(differences(&back, &at_freeze).is_empty());
        assert_eq!(back.ledger.tenants().count(), 2);
        assert_eq!(check_against_log(log.as_ref(), &back).ok(), Some(Ok(())));
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn no_bytes_decode_to_a_panic_and_any_flipped_byte_is_refused() {
        let rt = rt();
        let _inside = rt.enter();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let bytes = encode(&live.shared.capture());
        let store = &live.shared.audit.nodes;
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad, store).is_err(), "byte {i} flipped");
            assert!(decode(&bytes[..i], store).is_err(), "cut at {i}");
        }
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The global tree is checked against the tenants' trees when read.
    #[test]
    fn a_snapshot_whose_global_tree_does_not_match_its_tenants_is_refused() {
        let rt = rt();
        let _inside = rt.enter();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let taken = live.shared.capture();
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
        let store = taken.global.tree.store().clone();
        assert!(decode(&encode(&taken), &store).is_ok());
        // No global tree (as a format-1 snapshot would start it), or one
        // event short of the position.
        let mut short = GlobalTree::default();
        let records = log
            .read_after(0, taken.position as usize - 1)
            .unwrap_or_else(|e| panic!("{e}"));
        short.apply(&records);
        for global in [GlobalTree::default(), short] {
            let wrong = Projections {
                global,
                ..taken.clone()
            };
            assert!(
                matches!(decode(&encode(&wrong), &store), Err(Refusal::Content(_))),
                "{:?}",
                decode(&encode(&wrong), &store).map(|p| p.global.tree.len())
            );
        }
    }

    /// The same for the global tree.
    #[test]
    fn the_check_finds_a_global_tree_that_differs_from_the_replay() {
        let rt = rt();
        let _inside = rt.enter();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let mut taken = live.shared.capture();
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
        // A record held back that the log does not hold: the snapshot
        // decodes, and the check names the global tree.
        let mut parts = taken.global.to_snapshot(&mut Vec::new());
        let mut nodes = Vec::new();
        let _ = taken.global.to_snapshot(&mut nodes);
        let tenant: TenantId = "acme".parse().unwrap_or_else(|e| panic!("{e:?}"));
        parts
            .pending
            .push((taken.position + 5, tenant, [7; 32], false));
        taken.global = GlobalTree::from_snapshot(
            &taken.global.tree.store().clone(),
            parts,
            &mut nodes.chunks_exact(32),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = SnapshotConfig {
            start: SnapshotStart::Check,
            ..SnapshotConfig::in_dir(dir.path())
        };
        write_file(&config.dir, taken.position, &encode(&taken)).unwrap_or_else(|e| panic!("{e}"));
        let checked = open(log.clone(), Some(config));
        let check = checked
            .snapshot_check()
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(check.compared.map(|(_, p)| p), Some(taken.position));
        let n = taken.position;
        assert_eq!(
            check.differences,
            vec![format!(
                "the global tree differs ({n} leaves replayed, {n} in the snapshot)"
            )]
        );
        rt.block_on(checked.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A snapshot whose content is wrong but whose checksum and chain heads
    /// are right (a bug, not damage) passes the checks at open: `replay`
    /// is what finds it.
    #[test]
    fn the_check_finds_a_snapshot_that_differs_from_the_replay() {
        let rt = rt();
        let _inside = rt.enter();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let live = open(log.clone(), None);
        rt.block_on(workload(&live));
        let mut taken = live.shared.capture();
        rt.block_on(live.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
        let tenants: Vec<(TenantId, TenantState)> = taken
            .ledger
            .tenants()
            .map(|(t, s)| {
                let mut s = s.clone();
                if let Some(k) = s.keys.values_mut().next() {
                    k.name = format!("{} (changed)", k.name).into();
                }
                (t.clone(), s)
            })
            .collect();
        taken.ledger =
            Ledger::from_tenants(tenants, taken.ledger.events()).unwrap_or_else(|e| panic!("{e}"));
        let config = SnapshotConfig {
            start: SnapshotStart::Check,
            ..SnapshotConfig::in_dir(dir.path())
        };
        write_file(&config.dir, taken.position, &encode(&taken)).unwrap_or_else(|e| panic!("{e}"));
        let checked = open(log.clone(), Some(config));
        let check = checked
            .snapshot_check()
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(check.compared.map(|(_, p)| p), Some(taken.position));
        assert_eq!(
            check.differences,
            vec!["the key state differs for tenants acme, globex".to_owned()]
        );
        rt.block_on(checked.shutdown())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
