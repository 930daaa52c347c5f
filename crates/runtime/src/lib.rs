//! keyledger's runtime: the library that the HTTP server and the CLI share,
//! and that an API layer can embed.
//!
//! * One writer thread owns the log. Commands arrive on a bounded channel;
//!   the writer takes everything waiting (up to [`Config::batch_commands_max`]),
//!   decides each in order against its own copy of the state, appends the
//!   whole batch in one durable commit (group commit), applies the committed
//!   events to the read model and the verification map, and only then
//!   answers every caller.
//! * [`Keyledger::verify`] never waits for the disk or a global lock: a
//!   checksum check, a SHA-256, a concurrent-map lookup and one atomic
//!   increment.
//! * Uses are counted in memory and written as `KeyUsed` events every
//!   window by a flusher task; a full channel makes the flusher wait, and
//!   nothing counted is ever dropped. [`Keyledger::shutdown`] writes every
//!   counted use.
//!
//! Needs a tokio runtime (the flusher is a task); the writer is a thread of
//! its own because the log's I/O is blocking.

/// The audit evidence API under one path, as callers have imported it:
/// the evidence formats and the offline verifier (`keyledger_audit`),
/// with keyledger's event format ([`audit::verify_bundle`]), and the
/// runtime's signing key, trees and checkpoints.
pub mod audit {
    pub use crate::bundles::{LedgerEvents, verify_bundle, verify_bundle_with};
    pub use crate::checkpoints::{AuditConfig, CHECKPOINT_DIR, SignedCheckpoint, StoredCheckpoint};
    pub use crate::global::{GLOBAL_CHECKPOINT_FILE, GlobalInclusion};
    pub use crate::signing_key::{
        PUBLIC_KEY_FILE, SIGNING_KEY_FILE, encode_public_key, load_or_create_key,
    };
    pub use crate::trees::leaf_of;
    pub use keyledger_audit::bundle::{
        BUNDLE_EVENTS_MAX, BUNDLE_FORMAT, BUNDLE_INCLUSION_PROOFS_MAX, Bundle, BundleEarlier,
        BundleHeader, BundleInclusion,
    };
    pub use keyledger_audit::origin::{
        default_base, epoch_of_origin, global_origin, origin, origin_in, tenant_origin,
    };
    pub use keyledger_audit::proofs::{ConsistencyProof, InclusionProof};
    pub use keyledger_audit::tiles::TilePath;
    pub use keyledger_audit::verify::{BundleReport, Problem, ProblemKind};
}
mod bundles;
mod catchup;
mod checkpoints;
mod clock;
pub mod datadir;
mod error;
pub mod export;
mod filter;
mod follower;
mod global;
pub mod integrity;
mod leaks;
mod metrics;
pub mod policy;
mod query;
mod reads;
mod shared;
mod signing_key;
mod snapshot;
mod tilestore;
mod trees;
mod usagestore;
mod verify;
pub mod views;
pub mod webhooks;
mod witness;
mod writer;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use keyledger_core::{
    Command, CommandError, CreateKey, EventKind, EventType, KeyId, KeyPrefix, KeyRecord, Ledger,
    Principal, RemoveUser, RevokeKey, RevokeReason, RotateKey, Scope, ScopeSet, Secret, SecretHash,
    TenantId, Timestamp, UpdateKey, Usage, UserId, secret,
};
use keyledger_store::{EventLog, Record};
use tokio::sync::{Notify, mpsc, oneshot};
use ulid::Ulid;

pub use audit::{AuditConfig, Bundle, BundleHeader, BundleReport, SignedCheckpoint, verify_bundle};
pub use clock::{Clock, Entropy, ManualClock, OsEntropy, SystemClock};
pub use error::{BadRequest, Damage, Error, Missing, RecoveryRefused, Unavailable};
pub use filter::{AuditFilterError, AuditFilterText};
pub use follower::{Follow, MISS_INTERVAL_DEFAULT, default_node_id};
pub use leaks::{LeakReport, ReportedSecret};
pub use metrics::{Histogram, Metrics};
pub use policy::{LimitState, PolicyAnswer};
pub use query::{AuditPage, KeyPage, ListQuery, Order, PointInTime, SortField, StateAt};
pub use snapshot::{
    EVERY_DEFAULT as SNAPSHOT_EVERY_DEFAULT, EVERY_EVENTS_DEFAULT as SNAPSHOT_EVERY_EVENTS_DEFAULT,
    FORMAT_VERSION as SNAPSHOT_FORMAT_VERSION, SNAPSHOT_DIR, SnapshotCheck, SnapshotConfig,
    SnapshotMetrics, SnapshotStart,
};
pub use verify::{DigestHash, KeyEntry, Verification, VerifyOutcome};
pub use witness::{
    COSIGNATURES_SUFFIX, ReceiptAnswer, StoredCosignatures, WITNESS_TIMEOUT, WitnessTarget,
    WitnessedCheckpoint,
};

/// Longest page of any list.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Page size when none is asked for.
pub const PAGE_LIMIT_DEFAULT: usize = 50;

/// How uses are turned into `KeyUsed` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageWindow {
    /// One event per key per window of this length (the default: 1 s, docs/api.md).
    Every(Duration),
    /// One event per use (the window `0` of docs/api.md).
    PerUse,
    /// Only when [`Keyledger::flush_usage`] is called, and at shutdown
    /// (tests, simulations, `demo`). Credit refills, too, are written only
    /// when [`Keyledger::refill_due`] is called: no refill task runs.
    Manual,
}

impl UsageWindow {
    /// From milliseconds, as configured: 0 means one event per use.
    pub fn from_millis(ms: u64) -> Self {
        if ms == 0 {
            UsageWindow::PerUse
        } else {
            UsageWindow::Every(Duration::from_millis(ms))
        }
    }
}

/// The default [`Config::audit_read_window`]: reads of the trail by one
/// actor of one kind are written at most once per 100 ms; a reader alone
/// waits for no window (see `docs/audit.md`, "Reads of the trail").
pub const AUDIT_READ_WINDOW_DEFAULT: Duration = Duration::from_millis(100);

/// The default [`Config::usage_in_flight_max`]: a quarter of a batch, so
/// the usage a command can find ahead of it is one commit's worth at most.
pub const USAGE_IN_FLIGHT_MAX_DEFAULT: usize = 1024;

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prefix of minted keys.
    pub prefix: KeyPrefix,
    /// How uses become events.
    pub usage_window: UsageWindow,
    /// Most commands decided and committed in one group commit.
    pub batch_commands_max: usize,
    /// Most commands waiting for the writer; senders wait beyond it.
    pub queue_commands_max: usize,
    /// Most usage commands a flush keeps waiting for the writer at once
    /// (it sends the next as one is answered), so that a create or a
    /// revoke sent during a large flush waits behind at most this many.
    pub usage_in_flight_max: usize,
    /// Where the audit signing key and checkpoints live; `None`: trees and
    /// proofs only, no signed checkpoints.
    pub audit: Option<AuditConfig>,
    /// Several nodes share the log (PostgreSQL): follow what the others
    /// append. `None` (the default): this process is the log's only
    /// writer (redb), and nothing is followed.
    pub follow: Option<Follow>,
    /// Reads of the audit trail by one actor of one kind are written as
    /// one `AuditRead` per window of this length, with their count; each
    /// reader waits for the event that records its read. Zero: one event
    /// per read.
    pub audit_read_window: Duration,
    /// Open a log that does not hold what its stored checkpoints signed,
    /// to record the loss with [`Keyledger::recover`] (`keyledger
    /// recover`). Nothing is signed for such a tenant until then. `false`
    /// (the default): such a log is refused at open.
    pub recovering: bool,
    /// Snapshots of the projections (`snapshot.rs`): where, how often, and
    /// whether open starts from one. `None` (the default): none is read or
    /// written, and open replays the whole log.
    pub snapshots: Option<SnapshotConfig>,
    /// Webhook subscriptions' secrets and deliveries ([`webhooks`]).
    /// `None` (the default): subscriptions can be neither made nor
    /// delivered (a ledger without a data directory).
    pub webhooks: Option<webhooks::WebhookConfig>,
    /// Witnesses each stored checkpoint is sent to (C2SP tlog-witness), and
    /// whose cosignatures are kept with it; empty (the default): none.
    pub witnesses: Vec<WitnessTarget>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: KeyPrefix::default(),
            usage_window: UsageWindow::Every(Duration::from_secs(1)),
            batch_commands_max: 4096,
            queue_commands_max: 16_384,
            usage_in_flight_max: USAGE_IN_FLIGHT_MAX_DEFAULT,
            audit: None,
            follow: None,
            audit_read_window: AUDIT_READ_WINDOW_DEFAULT,
            recovering: false,
            snapshots: None,
            webhooks: None,
            witnesses: Vec::new(),
        }
    }
}

/// How a wait for a tenant's position ended
/// ([`Keyledger::wait_tenant_position`]). Every position in it is the
/// tenant's own sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionWait {
    /// This node has applied the tenant's trail up to the position.
    Reached,
    /// The tenant's trail ends before the position (`last`, its last
    /// event), and this node has applied the whole log as it was after the
    /// wait began: no write gave that position out.
    Beyond {
        /// The tenant's last event.
        last: u64,
    },
    /// The time ran out, or the log could not be read, before this node
    /// applied the position; it had applied the tenant's trail up to
    /// `applied`.
    Behind {
        /// The tenant's last event applied here.
        applied: u64,
    },
}

/// A key was created: the secret, shown once, and the key.
#[derive(Debug)]
pub struct Created {
    /// The secret. Hand it to the user once; it is stored nowhere.
    pub secret: Secret,
    /// The key as stored.
    pub key: KeyRecord,
    /// The `KeyCreated` event's log position.
    pub position: u64,
    /// The tenant sequence number of the command's last event (a rotation's
    /// revocation of the old key, say): the position a receipt is asked for.
    pub seq: u64,
}

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    /// The owner; `None` means the principal's own user.
    pub owner: Option<UserId>,
    /// The name.
    pub name: String,
    /// An optional description.
    pub description: Option<String>,
    /// An optional expiry, in the future.
    pub expires_at: Option<Timestamp>,
    /// Scopes; `None` for the default.
    pub scopes: Option<ScopeSet>,
    /// Metadata, if any.
    pub meta: Option<keyledger_core::Meta>,
    /// Credits, if any (`None`: unlimited uses).
    pub credits: Option<keyledger_core::Credits>,
    /// Named rate limits (empty: none).
    pub limits: Vec<keyledger_core::RateLimit>,
}

/// How far the verification's fast path got (`Shared::verify_step`).
pub(crate) enum Step<'a> {
    /// Answered, with the policy's part for a valid key that has one.
    Done(VerifyOutcome, Option<&'a PolicyAnswer>),
    /// The rate limits admitted the call; credits must be reserved first.
    Reserve(&'a PolicyAnswer),
}

/// State read by queries: changed only by applying committed events.
#[derive(Debug, Default)]
pub(crate) struct ReadModel {
    pub(crate) ledger: Ledger,
    /// The per-tenant usage rows; the per-key ones are in
    /// [`Shared::usage_rows`], written in the same apply step.
    pub(crate) usage: keyledger_core::TenantUsage,
    pub(crate) head: u64,
}

// `Stop` is sent once per process; boxing every command to shrink it would
// cost an allocation per command.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    Command(Command, oneshot::Sender<Result<Vec<Record>, Error>>),
    /// Records the follower read: other nodes' commits to apply.
    Apply(Vec<Record>),
    /// Read and apply whatever the log holds past the read model's head
    /// (a miss is waiting for it: `catchup.rs`).
    CatchUp,
    Stop,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) read: RwLock<ReadModel>,
    /// The per-key per-day usage rows, on disk (`usagestore.rs`).
    pub(crate) usage_rows: usagestore::UsageStore,
    /// The verification map: lock-free reads (papaya), so a verification
    /// never waits for the writer and takes no lock of its own.
    pub(crate) keys: papaya::HashMap<SecretHash, Arc<KeyEntry>, verify::DigestHash>,
    pub(crate) dirty: Mutex<Vec<Arc<KeyEntry>>>,
    pub(crate) dirty_signal: Notify,
    /// One flush at a time: a flush that finds nothing to take must still
    /// wait for one in flight, so "every use counted so far is written"
    /// holds when it returns.
    flush_lock: tokio::sync::Mutex<()>,
    pub(crate) metrics: Metrics,
    pub(crate) audit: trees::AuditState,
    pub(crate) follow: follower::Signal,
    /// The read model's head, published after every apply, for those who
    /// wait for a position (misses, `Keyledger-Position`).
    pub(crate) applied: tokio::sync::watch::Sender<u64>,
    /// Rounds of "read the head and apply up to it" for misses; only on a
    /// node that follows a shared log.
    pub(crate) catch_up: Option<catchup::CatchUp>,
    pub(crate) reads: reads::Reads,
    pub(crate) snapshots: Option<snapshot::Snapshots>,
    pub(crate) tx: mpsc::Sender<Job>,
    /// Webhook secrets and deliveries, when configured.
    pub(crate) webhooks: Option<Arc<webhooks::Service>>,
    /// Keys with a credit refill, by their next refill instant.
    pub(crate) refills: policy::RefillQueue,
    tasks: Mutex<Tasks>,
    stop: Notify,
}

#[derive(Default)]
struct Tasks {
    writer: Option<std::thread::JoinHandle<()>>,
    follower: Option<std::thread::JoinHandle<()>>,
    flusher: Option<tokio::task::JoinHandle<()>>,
    catch_up: Option<tokio::task::JoinHandle<()>>,
    refiller: Option<tokio::task::JoinHandle<()>>,
}

/// An open ledger. Cheap to clone; every clone is the same ledger.
#[derive(Clone)]
pub struct Keyledger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Keyledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyledger")
            .field("head", &self.head())
            .finish()
    }
}

/// How far start-up replay has come: `(events applied, events in the log)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

impl Keyledger {
    /// Opens a ledger on `log` with the system clock and the OS CSPRNG,
    /// replaying the whole log first. Must be called inside a tokio runtime.
    pub fn open(log: Arc<dyn EventLog>, config: Config) -> Result<Self, Error> {
        Self::open_with(
            log,
            config,
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
    }

    /// Opens with a given clock and entropy, reporting replay progress.
    /// An audit directory ([`Config::audit`]) is checked first and used by
    /// its real path ([`datadir::prepare`]): refused, with
    /// [`Error::DataDir`], when another local user could steer it.
    pub fn open_with(
        log: Arc<dyn EventLog>,
        config: Config,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        progress: Progress<'_>,
    ) -> Result<Self, Error> {
        Self::open_once(log, config, clock, entropy, progress, true)
    }

    /// [`Keyledger::open_with`]; `retry`: if the Merkle node store is found
    /// damaged during the open (a tile read back does not match its tree),
    /// it is opened once more, which makes the node store anew and
    /// rebuilds it by replaying the whole log (`tilestore.rs`).
    fn open_once(
        log: Arc<dyn EventLog>,
        config: Config,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        progress: Progress<'_>,
        retry: bool,
    ) -> Result<Self, Error> {
        let mut config = config;
        // Checked before anything in it is read, and used by its real path.
        if let Some(audit) = &mut config.audit {
            audit.dir = datadir::prepare(&audit.dir)?;
        }
        let again = retry.then(|| (log.clone(), config.clone(), clock.clone(), entropy.clone()));
        let (tx, rx) = mpsc::channel(config.queue_commands_max.max(1));
        let shared = Arc::new(Shared::new(config, clock, entropy, log, tx)?);
        // A valid snapshot becomes the projections, and replay reads only
        // the tail; `keyledger replay` compares one with the replay instead.
        let compare = shared.start_from_snapshot()?;
        // The usage projection, if behind the snapshot, reads up to it.
        shared.usage_catch_up()?;
        let from = shared.read_model().head;
        if let Some(snapshot) = compare {
            shared.replay(progress, Some(snapshot.position))?;
            shared.compare_with_snapshot(&snapshot);
        }
        shared.replay(progress, None)?;
        shared.check_usage_rows()?;
        // Read by `serve`'s start-up line and `/metrics`; a one-shot
        // command of the CLI logs nothing on the way.
        let replayed = shared.read_model().head - from;
        shared
            .metrics
            .snapshots
            .start_replayed_events
            .store(replayed, std::sync::atomic::Ordering::Relaxed);
        // Before anything is served or signed: the log must still hold
        // every event a stored checkpoint signed.
        let checked = shared.audit.check_stored(shared.config.recovering);
        if shared.audit.nodes.is_damaged()
            && let Some((log, config, clock, entropy)) = again
        {
            tracing::warn!(
                "the Merkle node store is damaged; opening again to rebuild it from the log"
            );
            drop((shared, rx));
            return Self::open_once(log, config, clock, entropy, progress, false);
        }
        checked?;
        // A long replay is not repeated at the next start.
        shared.snapshot_tick();
        // The writer decides against the read model itself (writer.rs).
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("keyledger-writer".into())
            .spawn(move || writer::run(&writer_shared, rx))
            .map_err(|e| Error::io("cannot start the writer", e))?;
        let follower = match shared.config.follow.clone() {
            None => None,
            Some(follow) => {
                let follower_shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("keyledger-follower".into())
                    .spawn(move || follower::run(&follower_shared, &follow));
                match spawned {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        let _ = shared.tx.try_send(Job::Stop);
                        let _ = writer.join();
                        return Err(Error::io("cannot start the follower", e));
                    }
                }
            }
        };
        let flusher = match shared.config.usage_window {
            UsageWindow::Manual => None,
            window => Some(tokio::spawn(flusher(shared.clone(), window))),
        };
        if let Some(a) = &shared.config.audit {
            let task = tokio::spawn(checkpoints::checkpointer(
                shared.clone(),
                a.checkpoint_debounce,
            ));
            *shared.audit.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            witness::start(&shared)?;
        }
        let catch_up = shared
            .catch_up
            .is_some()
            .then(|| tokio::spawn(catchup::run(shared.clone())));
        webhooks::start(&shared)?;
        // With a manual usage window (tests, simulations, tools) nothing
        // is written on its own: no refill task, the caller calls
        // `refill_due`. Likewise when opened outside a tokio runtime.
        let refiller = match (
            shared.config.usage_window,
            tokio::runtime::Handle::try_current(),
        ) {
            (UsageWindow::Manual, _) | (_, Err(_)) => None,
            (_, Ok(rt)) => Some(rt.spawn(refiller(Keyledger {
                shared: shared.clone(),
            }))),
        };
        *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = Tasks {
            writer: Some(writer),
            follower,
            flusher,
            catch_up,
            refiller,
        };
        Ok(Keyledger { shared })
    }

    /// The clock's now.
    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// The deployment's key prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.shared.config.prefix
    }

    /// The log the ledger runs on.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    /// Counters and histograms for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// With [`SnapshotStart::Check`] (`keyledger replay`): the newest
    /// valid snapshot compared with the replay of the log at its position,
    /// and the snapshots refused. `None` without snapshots configured or
    /// in [`SnapshotStart::Load`].
    pub fn snapshot_check(&self) -> Option<SnapshotCheck> {
        let s = self.shared.snapshots.as_ref()?;
        s.check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Commands waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.shared.tx.max_capacity() - self.shared.tx.capacity()
    }

    /// A copy of the projections (key state and usage), for tests and
    /// tools that compare a live ledger with a replay. Costs a full read
    /// of the usage projection's per-key rows (`usagestore.rs`) into
    /// memory; the key state is shared until either side changes it (see
    /// [`Ledger`]). Per-key rows that cannot be read are left out (and
    /// logged): such a copy differs from a replay.
    pub fn projections(&self) -> (Ledger, Usage) {
        let read = self.shared.read_model();
        let keys = self.shared.usage_rows.all_rows().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the usage projection");
            Vec::new()
        });
        let tenants = read.usage.tenant_rows().map(|(t, rows)| (t.clone(), rows));
        (read.ledger.clone(), Usage::from_rows(keys, tenants))
    }

    /// The last applied log position.
    pub fn head(&self) -> u64 {
        self.shared.read_model().head
    }

    /// Verifies a presented key for an optional scope, counting one use
    /// when the key is known. Never waits for the disk, except for a key
    /// with credits whose allowance on this node has run out: then the
    /// calling thread waits for one reservation (a durable commit, once
    /// per block of credits, `policy.rs`). Async callers use
    /// [`Keyledger::verify_cost_with`], which waits without blocking.
    pub fn verify(&self, presented: &str, scope: Option<Scope>) -> Verification {
        self.verify_blocking(presented, scope, 1, Verification::of)
    }

    /// [`Keyledger::verify`] for callers that need the key only while they
    /// answer: `f` gets the outcome and the key, borrowed. Counted exactly
    /// like `verify`; cheaper, since no reference to the key is taken.
    pub fn verify_with<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        f: impl FnOnce(VerifyOutcome, Option<&KeyEntry>) -> R,
    ) -> R {
        self.verify_blocking(presented, scope, 1, |outcome, key, _| {
            f(outcome, key.map(|k| &**k))
        })
    }

    /// The synchronous verification, spending `cost` credits.
    fn verify_blocking<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        cost: u64,
        f: impl FnOnce(VerifyOutcome, Option<&Arc<KeyEntry>>, Option<&PolicyAnswer>) -> R,
    ) -> R {
        self.shared
            .verify_step(presented, scope, cost, |step, key| match (step, key) {
                (Step::Reserve(answer), Some(entry)) => {
                    let (outcome, answer) = policy::block_on(self.settle(entry, cost, *answer));
                    f(outcome, Some(entry), Some(&answer))
                }
                (Step::Done(outcome, answer), key) => {
                    self.note_unknown(outcome);
                    f(outcome, key, answer)
                }
                (Step::Reserve(_), None) => f(VerifyOutcome::NotFound, None, None),
            })
    }

    /// [`Keyledger::verify_with`], and on a node that follows a shared log
    /// ([`Config::follow`]) a key other nodes created is found from the
    /// moment its create returned: a well-formed secret that no key has
    /// here is looked up again once this node has applied the log up to
    /// its head as read after the miss (one head query shared by every miss
    /// waiting, at most one per [`Follow::miss_interval`]). A known key
    /// costs exactly what `verify_with` costs; on a single node this is
    /// `verify_with`. When the log cannot be read, a miss answers from what
    /// is applied (`not_found`), as verification does during an outage.
    pub async fn verify_current_with<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        f: impl FnOnce(VerifyOutcome, Option<&KeyEntry>) -> R,
    ) -> R {
        self.verify_cost_arc(presented, scope, 1, |outcome, key, _| {
            f(outcome, key.map(|k| &**k))
        })
        .await
    }

    /// [`Keyledger::verify_current_with`], keeping the key.
    pub async fn verify_current(&self, presented: &str, scope: Option<Scope>) -> Verification {
        self.verify_cost(presented, scope, 1).await
    }

    /// [`Keyledger::verify_current`] spending `cost` credits (0: only
    /// check that some are left), with the policy's answer: credits left
    /// and each rate limit checked.
    pub async fn verify_cost(
        &self,
        presented: &str,
        scope: Option<Scope>,
        cost: u64,
    ) -> Verification {
        self.verify_cost_arc(presented, scope, cost, Verification::of)
            .await
    }

    /// [`Keyledger::verify_current_with`] spending `cost` credits, handing
    /// `f` the policy's answer too (for a valid key with credits or rate
    /// limits). Rate limits are checked first, then credits: a call a
    /// limit refuses spends none. When this node's allowance cannot cover
    /// `cost`, one caller per key reserves a block through the log and the
    /// others wait for it (`policy.rs`).
    pub async fn verify_cost_with<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        cost: u64,
        f: impl FnOnce(VerifyOutcome, Option<&KeyEntry>, Option<&PolicyAnswer>) -> R,
    ) -> R {
        self.verify_cost_arc(presented, scope, cost, |outcome, key, policy| {
            f(outcome, key.map(|k| &**k), policy)
        })
        .await
    }

    async fn verify_cost_arc<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        cost: u64,
        f: impl FnOnce(VerifyOutcome, Option<&Arc<KeyEntry>>, Option<&PolicyAnswer>) -> R,
    ) -> R {
        let mut f = f;
        for attempt in 0..2 {
            let miss_waits = attempt == 0 && self.shared.catch_up.is_some();
            let step = self
                .shared
                .verify_step(presented, scope, cost, |step, key| match step {
                    Step::Done(VerifyOutcome::NotFound, _) if miss_waits => Err((f, None)),
                    Step::Done(outcome, answer) => {
                        self.note_unknown(outcome);
                        Ok(f(outcome, key, answer))
                    }
                    Step::Reserve(answer) => Err((f, key.cloned().map(|k| (k, *answer)))),
                });
            match step {
                Ok(answer) => return answer,
                Err((g, Some((entry, answer)))) => {
                    let (outcome, answer) = self.settle(&entry, cost, answer).await;
                    return g(outcome, Some(&entry), Some(&answer));
                }
                Err((g, None)) => {
                    if let Some(catch_up) = &self.shared.catch_up {
                        catch_up.round(catchup::MISS_WAIT_MAX).await;
                    }
                    f = g;
                }
            }
        }
        self.note_unknown(VerifyOutcome::NotFound);
        f(VerifyOutcome::NotFound, None, None)
    }

    /// The slow path of a key with credits: the rate limits admitted the
    /// call and this node's allowance cannot cover `cost`. Reserves (one
    /// caller per key; the others wait) and spends, then counts the use.
    async fn settle(
        &self,
        entry: &Arc<KeyEntry>,
        cost: u64,
        mut answer: PolicyAnswer,
    ) -> (VerifyOutcome, PolicyAnswer) {
        let outcome = match entry.policy().and_then(|p| p.credits.as_ref()) {
            None => VerifyOutcome::Valid,
            Some(credits) => {
                let spend = credits
                    .spend_reserving(cost, self.shared.clock.now_coarse(), |epoch, want| {
                        self.reserve_credits(&entry.tenant, entry.key_id, epoch, want)
                    })
                    .await;
                if spend == policy::Spend::Spent {
                    answer.spent = cost;
                    VerifyOutcome::Valid
                } else {
                    VerifyOutcome::UsageExceeded
                }
            }
        };
        if let Some(p) = entry.policy() {
            p.note_credits(&mut answer);
        }
        self.shared
            .count(entry, outcome, answer.spent, self.shared.clock.now_coarse());
        (outcome, answer)
    }

    /// The tenant's last event applied here: its sequence number in the
    /// tenant's trail (0 before its first). Right after a write through
    /// this node it is at least the write's; it is what a write hands the
    /// client to pass back (`Keyledger-Position`, docs/api.md).
    pub fn tenant_position(&self, tenant: &TenantId) -> u64 {
        tenant_seq(&self.shared.read_model(), tenant)
    }

    /// Waits until this node has applied `tenant`'s trail up to `position`
    /// (a [`Keyledger::tenant_position`] some node gave out), at most
    /// `timeout`. On a node that follows a shared log a position not
    /// applied yet asks for a read of the log's head, shared with the
    /// misses ([`Keyledger::verify_current_with`]), so it is reached as
    /// soon as this node has applied what was committed, not after the
    /// next notification. A position past the tenant's last event (on a
    /// single node at once; on a follower once it has read the head) is
    /// [`PositionWait::Beyond`]: no write gave it out.
    pub async fn wait_tenant_position(
        &self,
        tenant: &TenantId,
        position: u64,
        timeout: Duration,
    ) -> PositionWait {
        let here = self.tenant_position(tenant);
        if here >= position {
            return PositionWait::Reached;
        }
        let Some(catch_up) = &self.shared.catch_up else {
            return PositionWait::Beyond { last: here };
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let caught_up = catch_up.round(timeout).await;
        let here = self.tenant_position(tenant);
        if here >= position {
            return PositionWait::Reached;
        }
        if caught_up {
            return PositionWait::Beyond { last: here };
        }
        // The log could not be read: whatever the follower applies may
        // still bring it.
        let mut applied = self.shared.applied.subscribe();
        let reached = tokio::time::timeout_at(
            deadline,
            applied.wait_for(|_| self.tenant_position(tenant) >= position),
        )
        .await;
        match reached {
            Ok(Ok(_)) => PositionWait::Reached,
            _ => PositionWait::Behind {
                applied: self.tenant_position(tenant),
            },
        }
    }

    /// Counts an outcome that no usage event will count (an unknown or a
    /// malformed key). Outcomes of known keys reach the metrics when their
    /// `KeyUsed` event commits (see `flush`): no process-wide atomic on the
    /// hot path for them.
    fn note_unknown(&self, outcome: VerifyOutcome) {
        if outcome.counted().is_none() {
            self.shared.metrics.verifications[outcome.index()]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Decides, appends durably and applies one command. Answers once the
    /// events are durable and enforced.
    pub async fn execute(&self, command: Command) -> Result<Vec<Record>, Error> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .tx
            .send(Job::Command(command, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Creates a key; the secret is in the result, once.
    pub async fn create_key(&self, principal: Principal, new: NewKey) -> Result<Created, Error> {
        let (key_id, secret) = self.shared.mint()?;
        let tenant = principal.tenant.clone();
        let records = self
            .execute(Command::CreateKey(CreateKey {
                principal,
                owner: new.owner,
                name: new.name,
                description: new.description,
                expires_at: new.expires_at,
                scopes: new.scopes,
                key_id,
                secret_hash: secret.hash(),
                masked: secret.masked(),
                meta: new.meta,
                credits: new.credits,
                limits: new.limits,
            }))
            .await?;
        self.created(&tenant, key_id, secret, &records)
    }

    /// Changes some of a key's fields (one `KeyUpdated`); returns the key
    /// as changed. `update.principal` is who asks.
    pub async fn update_key(&self, update: UpdateKey) -> Result<KeyRecord, Error> {
        let tenant = update.principal.tenant.clone();
        let key_id = update.key_id;
        self.execute(Command::UpdateKey(update)).await?;
        self.key(&tenant, key_id)
    }

    /// Reserves up to `want` of a key's credits in credit epoch `epoch`
    /// (a `CreditsReserved`, acting as the system) for this node to spend
    /// in memory; returns how many were granted (at least 1). Refused with
    /// [`CommandError::CreditsExhausted`] when none are left unreserved,
    /// [`CommandError::StaleEpoch`] when a refill or a change started a new
    /// epoch, [`CommandError::NoCredits`] for a key without credits.
    pub async fn reserve_credits(
        &self,
        tenant: &TenantId,
        key_id: KeyId,
        epoch: u64,
        want: u64,
    ) -> Result<u64, Error> {
        let records = self
            .execute(Command::ReserveCredits {
                tenant: tenant.clone(),
                key_id,
                epoch,
                want,
            })
            .await?;
        records
            .iter()
            .find_map(|r| match &r.event.kind {
                EventKind::CreditsReserved(c) => Some(c.amount),
                _ => None,
            })
            .ok_or_else(|| Error::inconsistent("a reservation appended no CreditsReserved"))
    }

    /// Hands back `amount` credits reserved in `epoch` and not spent (a
    /// `CreditsReleased`, acting as the system). Refused with
    /// [`CommandError::StaleEpoch`] once the epoch has ended: those credits
    /// have lapsed.
    pub async fn release_credits(
        &self,
        tenant: &TenantId,
        key_id: KeyId,
        epoch: u64,
        amount: u64,
    ) -> Result<(), Error> {
        self.execute(Command::ReleaseCredits {
            tenant: tenant.clone(),
            key_id,
            epoch,
            amount,
        })
        .await?;
        Ok(())
    }

    /// Refills a key's credits for the latest refill instant at or before
    /// now, if one is due (a `CreditsRefilled`, acting as the system; a
    /// server that was down when refills fell due writes one for the latest).
    /// Returns the refill instant written, or `None` when none is due (or
    /// the key has no refill). Missed refills are collapsed to the latest.
    pub async fn refill_credits(
        &self,
        tenant: &TenantId,
        key_id: KeyId,
    ) -> Result<Option<Timestamp>, Error> {
        let now = self.now();
        let key = self.key(tenant, key_id)?;
        let Some(due_at) = key.credit_state().and_then(|c| c.refill_due(now)) else {
            return Ok(None);
        };
        match self
            .execute(Command::RefillCredits {
                tenant: tenant.clone(),
                key_id,
                due_at,
            })
            .await
        {
            Ok(_) => Ok(Some(due_at)),
            // Another caller (or node) refilled it first.
            Err(Error::Command(CommandError::RefillNotDue(..))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Revokes a key; returns it as revoked.
    pub async fn revoke_key(
        &self,
        principal: Principal,
        key_id: KeyId,
        reason: RevokeReason,
    ) -> Result<KeyRecord, Error> {
        let tenant = principal.tenant.clone();
        self.execute(Command::RevokeKey(RevokeKey {
            principal,
            key_id,
            reason,
        }))
        .await?;
        self.key(&tenant, key_id)
    }

    /// Revokes a key, then waits until every live node sharing the log
    /// refuses it too ([`Keyledger::wait_enforced_everywhere`]).
    /// On [`Error::NotConfirmed`] the key is revoked all the same.
    pub async fn revoke_key_everywhere(
        &self,
        principal: Principal,
        key_id: KeyId,
        reason: RevokeReason,
        timeout: Duration,
    ) -> Result<KeyRecord, Error> {
        let tenant = principal.tenant.clone();
        let records = self
            .execute(Command::RevokeKey(RevokeKey {
                principal,
                key_id,
                reason,
            }))
            .await?;
        let position = records.iter().map(|r| r.position).max().unwrap_or(0);
        self.wait_enforced_everywhere(position, timeout).await?;
        self.key(&tenant, key_id)
    }

    /// Waits until every live node sharing the log has applied it up to
    /// `position` (they report what they applied, see [`Follow`]), or
    /// `timeout` passes ([`Error::NotConfirmed`]). A node that has not
    /// reported within [`Follow::live_within`] is counted as gone. Without
    /// [`Config::follow`] this node is the only one, and it applied every
    /// command before answering: nothing to wait for.
    pub async fn wait_enforced_everywhere(
        &self,
        position: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        let Some(follow) = self.shared.config.follow.clone() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let waited = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let not_confirmed = |why: String| Error::NotConfirmed {
                waited_ms: started.elapsed().as_millis() as u64,
                why,
            };
            // This node's own report comes from its follower, which wakes on
            // this node's appends too: one reporter per node, so a node's
            // reports never go backwards (a report from here racing one
            // from the follower could land second with an older position).
            let mut pause = Duration::from_micros(500);
            loop {
                let lowest = shared
                    .log
                    .min_applied_live(follow.live_within)
                    .map_err(|e| not_confirmed(format!("cannot read the nodes' positions: {e}")))?;
                match lowest {
                    None => return Ok(()),
                    Some(p) if p >= position => return Ok(()),
                    Some(p) if started.elapsed() >= timeout => {
                        // The positions are the whole log's: for the
                        // operator's log, not for the caller.
                        tracing::warn!(
                            position,
                            slowest_applied = p,
                            "a live node has not applied a revocation in time"
                        );
                        return Err(not_confirmed(
                            "a live node has not applied it yet".to_owned(),
                        ));
                    }
                    Some(_) => {}
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        })
        .await;
        waited.map_err(|e| Error::unavailable(format!("the wait failed: {e}")))?
    }

    /// Replaces a key with a new one with the same owner, name and scopes.
    /// The old key is revoked now (`grace_seconds` = 0) or expires after the grace.
    pub async fn rotate_key(
        &self,
        principal: Principal,
        key_id: KeyId,
        grace_seconds: u64,
        expires_at: Option<Timestamp>,
    ) -> Result<Created, Error> {
        let (new_key_id, secret) = self.shared.mint()?;
        let tenant = principal.tenant.clone();
        let records = self
            .execute(Command::RotateKey(RotateKey {
                principal,
                key_id,
                grace_seconds,
                expires_at,
                new_key_id,
                secret_hash: secret.hash(),
                masked: secret.masked(),
            }))
            .await?;
        self.created(&tenant, new_key_id, secret, &records)
    }

    /// Removes a user; returns the keys revoked in the same append.
    pub async fn remove_user(
        &self,
        principal: Principal,
        user_id: UserId,
    ) -> Result<Vec<KeyId>, Error> {
        let records = self
            .execute(Command::RemoveUser(RemoveUser { principal, user_id }))
            .await?;
        Ok(records
            .iter()
            .filter(|r| EventType::of(&r.event) == EventType::KeyRevoked)
            .filter_map(|r| r.event.key_id())
            .collect())
    }

    fn created(
        &self,
        tenant: &TenantId,
        key_id: KeyId,
        secret: Secret,
        records: &[Record],
    ) -> Result<Created, Error> {
        let position = records
            .iter()
            .find(|r| EventType::of(&r.event) == EventType::KeyCreated)
            .map_or(0, |r| r.position);
        Ok(Created {
            secret,
            key: self.key(tenant, key_id)?,
            position,
            seq: records.iter().map(|r| r.seq).max().unwrap_or(0),
        })
    }

    /// Writes a `CreditsRefilled` for every key whose refill instant has
    /// passed (one event per key, for the latest instant due: refills
    /// missed while the server was down collapse into one). Runs every
    /// second and at start-up (the refill task); callers with a manual
    /// clock call it after moving the clock. Returns how many refills were
    /// written; a refill another node wrote first counts as done, not here.
    pub async fn refill_due(&self) -> Result<usize, Error> {
        let now = self.now();
        let mut written = 0;
        let mut failed = None;
        for (tenant, key_id) in self.shared.refills.due(now) {
            match self.refill_credits(&tenant, key_id).await {
                Ok(Some(_)) => written += 1,
                // Not due (refilled already, here or by another node), no
                // refill any more, or refused (the key is gone or revoked):
                // the applied events scheduled whatever is next.
                Ok(None) | Err(Error::NotFound(_) | Error::Command(_)) => {}
                Err(e) => {
                    self.shared.refills.retry(now, tenant, key_id);
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if written == 0 => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some credit refills failed; retried at the next pass");
                Ok(written)
            }
            None => Ok(written),
        }
    }

    /// Hands back every credit this node reserved and did not spend
    /// (`CreditsReleased`), at a graceful shutdown. A release the decision
    /// refuses (the epoch ended meanwhile: those credits lapsed) is fine.
    async fn release_allowances(&self) {
        let unspent: Vec<(TenantId, KeyId, u64, u64)> = {
            let keys = self.shared.keys.pin();
            keys.values()
                .filter_map(|e| {
                    let (epoch, n) = e.credits()?.take_allowance();
                    (n > 0).then(|| (e.tenant.clone(), e.key_id, epoch, n))
                })
                .collect()
        };
        for (tenant, key_id, epoch, n) in unspent {
            if let Err(e) = self.release_credits(&tenant, key_id, epoch, n).await {
                tracing::debug!(error = %e, %key_id, "unspent credits not released");
            }
        }
    }

    /// Writes every use counted so far as `KeyUsed` events; returns how
    /// many events were written. Waits when the writer is behind.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        flush(&self.shared).await
    }

    /// Stops: no new command is accepted, every counted use and every
    /// read of the trail waiting for its window is written, the writer
    /// finishes its batch and the log is closed. Idempotent.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (writer, follower, flusher, catch_up, refiller) = {
            let mut t = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
            (
                t.writer.take(),
                t.follower.take(),
                t.flusher.take(),
                t.catch_up.take(),
                t.refiller.take(),
            )
        };
        // Aborted, then awaited: the refill task holds a handle on the
        // ledger (and so the log) until its future is dropped.
        for task in [catch_up, refiller].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        if let Some(w) = self.shared.webhooks.clone() {
            let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
        }
        self.shared.follow.stop();
        if let Some(f) = follower {
            let _ = tokio::task::spawn_blocking(move || f.join()).await;
        }
        self.shared.stop.notify_one();
        if let Some(f) = flusher {
            let _ = f.await;
        }
        let flushed = flush(&self.shared).await;
        if writer.is_some() {
            self.release_allowances().await;
        }
        self.shared.reads.close().await;
        if writer.is_some() {
            let _ = self.shared.tx.send(Job::Stop).await;
        }
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        self.shared.snapshot_at_shutdown().await;
        if let Err(e) = self.shared.usage_rows.sync() {
            tracing::warn!(error = %e, "cannot make the usage projection durable; the next start catches up from the log");
        }
        let checkpointer = self
            .shared
            .audit
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = checkpointer {
            self.shared.audit.stop.notify_one();
            let _ = task.await;
            let shared = self.shared.clone();
            let written = tokio::task::spawn_blocking(move || shared.write_final_checkpoints())
                .await
                .map_err(|e| Error::unavailable(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = written {
                tracing::warn!(error = %e, "writing the final audit checkpoints failed");
            }
        }
        // The witness threads send what is queued, then end on their own.
        self.shared.audit.witnessing.close();
        flushed.map(|_| ())
    }
}

impl Shared {
    pub(crate) fn read_model(&self) -> std::sync::RwLockReadGuard<'_, ReadModel> {
        self.read.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mint(&self) -> Result<(KeyId, Secret), Error> {
        let mut material = [0u8; secret::BODY_BYTES];
        self.entropy
            .fill(&mut material)
            .map_err(Error::unavailable)?;
        let mut id_random = [0u8; 16];
        self.entropy
            .fill(&mut id_random)
            .map_err(Error::unavailable)?;
        let ms = (self.clock.now().as_micros() / 1000).max(0) as u64;
        let id = KeyId::from_ulid(Ulid::from_parts(ms, u128::from_be_bytes(id_random)));
        Ok((id, Secret::from_material(&self.config.prefix, &material)))
    }

    /// The verification's fast path: everything but a reservation of
    /// credits. `f` gets the step and the borrowed key; a finished step is
    /// counted here, a `Reserve` by whoever settles it.
    fn verify_step<R>(
        &self,
        presented: &str,
        scope: Option<Scope>,
        cost: u64,
        f: impl FnOnce(Step<'_>, Option<&Arc<KeyEntry>>) -> R,
    ) -> R {
        if secret::check(presented).is_err() {
            return f(Step::Done(VerifyOutcome::Malformed, None), None);
        }
        let keys = self.keys.pin();
        let Some(entry) = keys.get(&SecretHash::of(presented)) else {
            return f(Step::Done(VerifyOutcome::NotFound, None), None);
        };
        // A coarse clock: reading the OS clock would be a quarter of the
        // cost of a verification. Expiry is judged at most ~1 ms late.
        let now = self.clock.now_coarse();
        let outcome = entry.judge(scope, now);
        let enforced = match entry.policy() {
            Some(p) if outcome == VerifyOutcome::Valid => p,
            // A plain key, or one refused before its policy counts.
            _ => {
                self.count(entry, outcome, 0, now);
                return f(Step::Done(outcome, None), Some(entry));
            }
        };
        let mut answer = PolicyAnswer::default();
        let outcome = match enforced.enforce(cost, now, &mut answer) {
            policy::Enforced::Valid => VerifyOutcome::Valid,
            policy::Enforced::RateLimited => VerifyOutcome::RateLimited,
            policy::Enforced::UsageExceeded => VerifyOutcome::UsageExceeded,
            policy::Enforced::Reserve => return f(Step::Reserve(&answer), Some(entry)),
        };
        self.count(entry, outcome, answer.spent, now);
        f(Step::Done(outcome, Some(&answer)), Some(entry))
    }

    /// Counts one use of a known key (`spent`: the credits it spent).
    fn count(&self, entry: &Arc<KeyEntry>, outcome: VerifyOutcome, spent: u64, now: Timestamp) {
        if let Some(counted) = outcome.counted()
            && entry.count(counted, now, spent)
        {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(entry.clone());
            if self.config.usage_window == UsageWindow::PerUse {
                self.dirty_signal.notify_one();
            }
        }
    }

    /// A runtime's state before replay: empty projections and
    /// verification map, the audit state (with an audit directory, its
    /// signing key read or made), and the sending side of the writer's
    /// queue.
    fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        log: Arc<dyn EventLog>,
        tx: mpsc::Sender<Job>,
    ) -> Result<Self, Error> {
        // The Merkle node store lives in the data directory: the audit
        // directory's, or the one holding the snapshots.
        let node_dir = config.audit.as_ref().map(|a| a.dir.clone()).or_else(|| {
            let s = config.snapshots.as_ref()?;
            s.dir.parent().map(std::path::Path::to_path_buf)
        });
        let audit = trees::AuditState::with_node_dir(
            config.audit.clone(),
            node_dir.as_deref(),
            entropy.as_ref(),
        )?;
        // The usage projection beside it.
        let usage_rows = match &node_dir {
            Some(dir) => usagestore::UsageStore::open(dir, log.as_ref())?,
            None => usagestore::UsageStore::in_memory(),
        };
        let reads = reads::Reads::new(config.audit_read_window);
        let snapshots = config
            .snapshots
            .clone()
            .map(snapshot::Snapshots::new)
            .transpose()?;
        let catch_up = config
            .follow
            .as_ref()
            .map(|f| catchup::CatchUp::new(f.miss_interval));
        let webhooks = config
            .webhooks
            .clone()
            .map(|w| webhooks::Service::open(w, entropy.as_ref()).map(Arc::new))
            .transpose()?;
        Ok(Shared {
            config,
            clock,
            entropy,
            log,
            read: RwLock::new(ReadModel::default()),
            usage_rows,
            keys: papaya::HashMap::default(),
            dirty: Mutex::new(Vec::new()),
            dirty_signal: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            audit,
            follow: follower::Signal::default(),
            applied: tokio::sync::watch::Sender::new(0),
            catch_up,
            reads,
            snapshots,
            tx,
            webhooks,
            refills: policy::RefillQueue::default(),
            tasks: Mutex::new(Tasks::default()),
            stop: Notify::new(),
        })
    }

    /// Folds the log after the read model's head (up to `until`, or its
    /// end) into the read model and the verification map.
    ///
    /// Reading and decoding run on a second thread, one page ahead of
    /// applying, so replay costs about the larger of the two, not their sum.
    /// Applied pages go back to the reading thread to be freed: it made
    /// every allocation in them, and frees them cheaper than this one.
    fn replay(&self, progress: Progress<'_>, until: Option<u64>) -> Result<(), Error> {
        const PAGE: usize = 16_384;
        const PAGES_AHEAD: usize = 2;
        let total = self.log.head()?;
        let start = self.read_model().head;
        let log = self.log.clone();
        std::thread::scope(|scope| {
            let (pages, next_page) = std::sync::mpsc::sync_channel(PAGES_AHEAD);
            let (spent, spent_pages) = std::sync::mpsc::channel::<Vec<Record>>();
            scope.spawn(move || {
                let mut after = start;
                loop {
                    let limit = until.map_or(PAGE, |u| {
                        PAGE.min(usize::try_from(u.saturating_sub(after)).unwrap_or(PAGE))
                    });
                    if limit == 0 {
                        break;
                    }
                    let page = log.read_after(after, limit);
                    let last = page
                        .as_ref()
                        .ok()
                        .and_then(|p| p.last().map(|r| r.position));
                    let done = last.is_none();
                    if pages.send(page).is_err() || done {
                        break;
                    }
                    after = last.unwrap_or(after);
                    spent_pages.try_iter().for_each(drop);
                }
                drop(pages);
                // Until the applying side is done.
                spent_pages.iter().for_each(drop);
            });
            for page in next_page {
                let records = page?;
                let Some(last) = records.last().map(|r| r.position) else {
                    break;
                };
                self.apply_committed(&records)?;
                progress(last, total.max(last));
                // Dropped here if the reader has gone.
                let _ = spent.send(records);
            }
            Ok(())
        })
    }

    /// Applies committed records to the read model, the verification map
    /// and the Merkle trees.
    pub(crate) fn apply_committed(&self, records: &[Record]) -> Result<(), Error> {
        let keys = self.keys.pin();
        let mut read = self.read.write().unwrap_or_else(|e| e.into_inner());
        let mut applied = 0;
        let mut failed = None;
        for r in records {
            if r.position != read.head + 1 {
                failed = Some(Error::inconsistent(format!(
                    "expected log position {}, found {}",
                    read.head + 1,
                    r.position
                )));
                break;
            }
            if let Err(e) = read.ledger.apply(r.seq, &r.event) {
                failed = Some(e.into());
                break;
            }
            applied += 1;
            read.head = r.position;
            update_verification_map(&keys, &read.ledger, &r.event, &self.clock, &self.refills);
        }
        // The usage rollups of the records the key state took, in one
        // pass (see `TenantUsage::apply_all`), and their per-key rows, in
        // one transaction, before a query can see the new head.
        read.usage
            .apply_all(records.iter().take(applied).map(|r| &r.event));
        if let Err(e) = self.usage_rows.apply(&records[..applied]) {
            // Per-key usage is refused until a restart rebuilds it: never
            // answered with uses missing.
            tracing::error!(error = %e, "cannot write the usage projection; per-key usage is refused until a restart rebuilds it from the log");
            self.usage_rows.mark_damaged();
        }
        let head = read.head;
        drop(read);
        self.applied.send_replace(head);
        if let Some(e) = failed {
            return Err(e);
        }
        drop(keys);
        self.audit.apply(records)
    }
}

/// The tenant's last applied sequence number (0 before its first event).
fn tenant_seq(read: &ReadModel, tenant: &TenantId) -> u64 {
    read.ledger.tenant(tenant).map_or(0, |t| t.version)
}

/// The verification map's side of one applied event, `ledger` being the
/// key state after it: a created key gets an entry; a revoked key's entry
/// refuses it, a rotated key's takes its new expiry; a removed user's keys
/// are all refused.
fn update_verification_map<G: papaya::Guard>(
    keys: &papaya::HashMapRef<'_, SecretHash, Arc<KeyEntry>, verify::DigestHash, G>,
    ledger: &Ledger,
    event: &keyledger_core::Event,
    clock: &Arc<dyn Clock>,
    refills: &policy::RefillQueue,
) {
    use keyledger_core::EventKind as K;
    // The ledger's copy of the tenant's id, which entries then share.
    let tenant = ledger.tenant_id(&event.tenant).unwrap_or(&event.tenant);
    // The key's credits as the log now has them, into its entry.
    let credits_applied = |key_id: KeyId| {
        if let Some(k) = ledger.key(tenant, key_id)
            && let Some(entry) = keys.get(&k.secret_hash)
            && let (Some(c), Some(allowance)) = (k.credit_state(), entry.credits())
        {
            allowance.set_log(c.epoch, c.remaining);
        }
    };
    match &event.kind {
        K::KeyCreated(e) => {
            if let Some(state) = ledger.tenant(tenant)
                && let Some(k) = state.keys.get(&e.key_id)
            {
                put_entry(keys, tenant, state, k, clock, refills, None);
            }
        }
        K::KeyRevoked(e) => {
            if let Some(k) = ledger.key(tenant, e.key_id)
                && let Some(entry) = keys.get(&k.secret_hash)
            {
                entry.set_revoked();
            }
        }
        K::KeyRotated(e) => {
            if let Some(k) = ledger.key(tenant, e.key_id)
                && let Some(entry) = keys.get(&k.secret_hash)
            {
                entry.set_expires_at(k.expires_at);
            }
        }
        K::UserRemoved(e) => {
            // The cascade revokes only the user's active keys; an
            // expired one would work again if the clock stepped
            // back. A removed user acts no more: refuse them all.
            let owned = ledger.tenant(tenant).into_iter();
            for k in owned.flat_map(|t| t.keys_of(&e.user_id)) {
                if let Some(entry) = keys.get(&k.secret_hash) {
                    entry.set_revoked();
                }
            }
        }
        // A reservation (this node's or another's), a release or a refill:
        // the log's credits and epoch, into the entry. A new epoch drops
        // this node's allowance of the old one (`Allowance::set_log`).
        K::CreditsReserved(e) => credits_applied(e.key_id),
        K::CreditsReleased(e) => credits_applied(e.key_id),
        K::CreditsRefilled(e) => {
            credits_applied(e.key_id);
            if let Some(k) = ledger.key(tenant, e.key_id) {
                refills.schedule(tenant, k);
            }
        }
        // A leak is followed by its `KeyRevoked`, which refuses the key.
        K::KeyUsed(_)
        | K::AuditRead(_)
        | K::LogRecovered(_)
        | K::KeyLeaked(_)
        | K::WebhookSubscribed(_)
        | K::WebhookDeleted(_) => {}
        // A change of name, scopes, credits or limits makes a new entry
        // (its fields are not atomics), carrying over the policy's state:
        // the allowance (dropped if the credits changed: a new epoch) and
        // every limit left as it was. Uses counted in the old entry are
        // still on the dirty list and written from it. A change of expiry
        // alone is stored in place.
        K::KeyUpdated(e) => {
            let Some(k) = ledger.key(tenant, e.key_id) else {
                return;
            };
            let rebuilt = e.changes.iter().any(|c| {
                matches!(
                    c,
                    keyledger_core::KeyChange::Name { .. }
                        | keyledger_core::KeyChange::Scopes { .. }
                        | keyledger_core::KeyChange::Credits { .. }
                        | keyledger_core::KeyChange::Limits { .. }
                )
            });
            let previous = keys.get(&k.secret_hash);
            if rebuilt && let Some(state) = ledger.tenant(tenant) {
                put_entry(keys, tenant, state, k, clock, refills, previous);
            } else if let Some(entry) = previous {
                entry.set_expires_at(k.expires_at);
            }
        }
    }
}

/// Puts a key's entry ([`entry_for`]) in the verification map, in place of
/// `previous` if there was one, and schedules its next credit refill.
pub(crate) fn put_entry<G: papaya::Guard>(
    keys: &papaya::HashMapRef<'_, SecretHash, Arc<KeyEntry>, verify::DigestHash, G>,
    tenant: &TenantId,
    state: &keyledger_core::TenantState,
    k: &KeyRecord,
    clock: &Arc<dyn Clock>,
    refills: &policy::RefillQueue,
    previous: Option<&Arc<KeyEntry>>,
) {
    let entry = entry_for(tenant, state, k, clock, previous.map(|p| &**p));
    keys.insert(k.secret_hash, Arc::new(entry));
    refills.schedule(tenant, k);
}

/// A key's verification entry as its state says: refused when revoked or
/// when its owner was removed (the cascade revokes only active keys); its
/// policy's state carried over from `previous`, the entry it replaces.
fn entry_for(
    tenant: &TenantId,
    state: &keyledger_core::TenantState,
    k: &KeyRecord,
    clock: &Arc<dyn Clock>,
    previous: Option<&KeyEntry>,
) -> KeyEntry {
    let enforced = policy::Enforcement::build(
        k.limits(),
        k.credit_state().map(|c| (c.epoch, c.remaining)),
        clock,
        previous.and_then(KeyEntry::policy),
    );
    KeyEntry::new(
        tenant.clone(),
        k.id,
        k.owner.clone(),
        k.name.clone(),
        k.scopes,
        k.expires_at,
        k.revoked.is_some() || state.is_removed(&k.owner),
    )
    .with_policy(enforced)
}

/// The counts of the `KeyUsed` events that write one key's uses: one
/// event with them all or, `per_use`, one event per use.
fn usage_units(counts: keyledger_core::UseCounts, per_use: bool) -> Vec<keyledger_core::UseCounts> {
    if !per_use {
        return vec![counts];
    }
    let mut units: Vec<_> = keyledger_core::Outcome::ALL
        .iter()
        .flat_map(|o| {
            let n = counts.to_array()[o.index()];
            (0..n).map(|_| keyledger_core::UseCounts::one(*o))
        })
        .collect();
    // Credits spent are no outcome: they ride on the first unit.
    match units.first_mut() {
        Some(first) => first.credits_spent = counts.credits_spent,
        None if counts.credits_spent > 0 => units.push(keyledger_core::UseCounts {
            credits_spent: counts.credits_spent,
            ..Default::default()
        }),
        None => {}
    }
    units
}

/// Writes every counted use; puts counts back if the write fails.
///
/// At most [`Config::usage_in_flight_max`] usage commands wait for the
/// writer at a time: the flush sends the next one as an earlier one is
/// answered. The writer serves its queue in order, so a create sent while
/// the usage of many keys is being written waits behind that many usage
/// commands at most, not behind all of them (issue 13: at 10M keys a
/// create waited 6.1 s behind a flush that filled the queue).
async fn flush(shared: &Arc<Shared>) -> Result<usize, Error> {
    let _one_at_a_time = shared.flush_lock.lock().await;
    let entries = std::mem::take(&mut *shared.dirty.lock().unwrap_or_else(|e| e.into_inner()));
    if entries.is_empty() {
        return Ok(0);
    }
    let now = shared.clock.now();
    let in_flight_max = shared.config.usage_in_flight_max.max(1);
    let mut pending = std::collections::VecDeque::with_capacity(entries.len().min(in_flight_max));
    let mut answered = Answered::default();
    for entry in entries {
        let window_start = entry.first_use().unwrap_or(now).min(now);
        let (counts, last_valid_at) = entry.take();
        if counts.is_zero() {
            continue;
        }
        let per_use = shared.config.usage_window == UsageWindow::PerUse;
        for unit in usage_units(counts, per_use) {
            let usage = keyledger_core::KeyUsed {
                key_id: entry.key_id,
                window_start,
                window_end: now,
                last_valid_at: if unit.valid > 0 { last_valid_at } else { None },
                counts: unit,
            };
            while pending.len() >= in_flight_max {
                if let Some(oldest) = pending.pop_front() {
                    answered.take(shared, oldest).await;
                }
            }
            let (reply, answer) = oneshot::channel();
            let job = Job::Command(
                Command::RecordUsage {
                    tenant: entry.tenant.clone(),
                    usage,
                },
                reply,
            );
            if shared.tx.send(job).await.is_err() {
                entry.give_back(&unit, last_valid_at);
                continue;
            }
            pending.push_back((entry.clone(), unit, last_valid_at, answer));
        }
    }
    for p in pending {
        answered.take(shared, p).await;
    }
    shared.metrics.usage_events.fetch_add(
        answered.written as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    answered.failure.map_or(Ok(answered.written), Err)
}

/// A usage command sent to the writer, waiting for its answer.
type PendingUse = (
    Arc<KeyEntry>,
    keyledger_core::UseCounts,
    Option<Timestamp>,
    oneshot::Receiver<Result<Vec<Record>, Error>>,
);

/// What a flush's answers came to.
#[derive(Default)]
struct Answered {
    written: usize,
    failure: Option<Error>,
}

impl Answered {
    /// Waits for one usage command's answer: counted as written, or its
    /// counts put back on its key (dirty again, for the next flush).
    async fn take(&mut self, shared: &Shared, (entry, unit, last_valid_at, answer): PendingUse) {
        match answer.await {
            Ok(Ok(_)) => {
                self.written += 1;
                shared.metrics.note_uses(&unit);
            }
            outcome => {
                entry.give_back(&unit, last_valid_at);
                if !entry.dirty.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    shared
                        .dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(entry.clone());
                }
                self.failure = Some(match outcome {
                    Ok(Err(e)) => e,
                    _ => Error::ShuttingDown,
                });
            }
        }
    }
}

/// The refill task: a pass at once (refills that fell due while the
/// server was down), then one every second.
async fn refiller(ledger: Keyledger) {
    loop {
        if let Err(e) = ledger.refill_due().await {
            tracing::warn!(error = %e, "credit refills failed; retrying");
        }
        tokio::time::sleep(REFILL_EVERY).await;
    }
}

/// How often the refill task looks for refills due.
const REFILL_EVERY: Duration = Duration::from_secs(1);

async fn flusher(shared: Arc<Shared>, window: UsageWindow) {
    loop {
        let stopped = match window {
            UsageWindow::Every(d) => tokio::select! {
                _ = tokio::time::sleep(d) => false,
                _ = shared.stop.notified() => true,
            },
            UsageWindow::PerUse => tokio::select! {
                _ = shared.dirty_signal.notified() => false,
                _ = shared.stop.notified() => true,
            },
            UsageWindow::Manual => true,
        };
        if let Err(e) = flush(&shared).await {
            tracing::warn!(error = %e, "writing usage failed; the counts are kept and retried");
        }
        if stopped {
            return;
        }
    }
}
