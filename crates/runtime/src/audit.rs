//! Audit evidence: a Merkle tree per tenant, signed checkpoints, proofs and
//! export bundles, and the offline bundle verifier.
//!
//! * **Leaf.** Event `seq` of a tenant is leaf `seq - 1` of the tenant's
//!   tree, and its entry is the event's 32-byte chain hash, which already
//!   commits to the tenant, the sequence number, the predecessor and the
//!   stored payload bytes: `leaf = SHA-256(0x00 || chain_hash)`.
//! * **Trees** are kept in memory, appended to as committed events are
//!   applied (start-up replay included), 64 bytes per event.
//! * **Checkpoints** are C2SP signed notes (`keyledger/<tenant>`, size,
//!   root, `time <RFC 3339>`), signed with the data directory's Ed25519 key.
//!   They are appended to `<dir>/checkpoints/<tenant>.jsonl` (the name
//!   encoded by [`crate::datadir::checkpoint_file_name`]) when a tenant's
//!   tree has grown (at most once per [`AuditConfig::checkpoint_debounce`])
//!   and at least every [`AuditConfig::checkpoint_interval`] when idle.
//! * **Bundles** are one JSON Lines file: a header (the current signed
//!   checkpoint, a range proof, inclusion proofs, and a log-spaced sample
//!   of the stored checkpoints with consistency proofs), then the range's
//!   events with their stored payloads, one per line. [`verify_bundle`]
//!   checks one with nothing but the public key; [`verify_bundle_with`]
//!   also checks it against checkpoints the reviewer kept.
//! * **Reads** of the trail are recorded as `AuditRead` events before the
//!   data is handed out ([`Keyledger::record_audit_read`] and helpers),
//!   one per reader and kind per window, with their count (`reads.rs`).

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::merkle::{self, Hash, Tree};
use keyledger_audit::{SigningKey, VerifyingKey};
use keyledger_core::{AuditReadKind, Principal, SeqRange, TenantId, Timestamp};
use keyledger_store::{Record, chain, envelope};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::views::AuditEntry;
use crate::{Error, Keyledger, Shared};

/// The signing key's file in the audit directory (hex of the 32-byte seed, mode 0600).
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// The public key's file in the audit directory (base64 of 32 bytes).
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// The directory of stored checkpoints, one JSON Lines file per tenant.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The `format` of a bundle.
pub const BUNDLE_FORMAT: &str = "keyledger-audit-bundle/v1";
/// Most events one bundle holds.
pub const BUNDLE_EVENTS_MAX: u64 = 2_000_000;
/// Ranges up to this many events get an inclusion proof per event; longer
/// ones get one for their first and last event (the range proof covers all).
pub const BUNDLE_INCLUSION_PROOFS_MAX: u64 = 1000;

/// Where and how often checkpoints are written.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The directory holding the signing key and the checkpoints (the data directory).
    pub dir: PathBuf,
    /// A checkpoint is written for every tenant at least this often, grown or not.
    pub checkpoint_interval: Duration,
    /// A grown tree is checkpointed at most this often.
    pub checkpoint_debounce: Duration,
}

impl AuditConfig {
    /// Hourly checkpoints, debounced by a second, in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        AuditConfig {
            dir: dir.into(),
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_debounce: Duration::from_secs(1),
        }
    }
}

/// The checkpoint origin (and key name) of a tenant in its first
/// checkpoint epoch: `keyledger/<tenant>`.
pub fn origin(tenant: &str) -> String {
    format!("keyledger/{tenant}")
}

/// The checkpoint origin of a tenant in checkpoint epoch `epoch`:
/// `keyledger/<tenant>` for the first, `keyledger/<tenant>/epoch-<n>` after
/// each `keyledger recover` (a tenant id holds no `/`).
pub fn origin_in(tenant: &str, epoch: u64) -> String {
    if epoch <= 1 {
        origin(tenant)
    } else {
        format!("keyledger/{tenant}/epoch-{epoch}")
    }
}

/// The checkpoint epoch `origin` names for `tenant`, if it is one of the
/// tenant's origins.
pub fn epoch_of_origin(tenant: &str, origin: &str) -> Option<u64> {
    let rest = origin.strip_prefix("keyledger/")?.strip_prefix(tenant)?;
    if rest.is_empty() {
        return Some(1);
    }
    let n: u64 = rest.strip_prefix("/epoch-")?.parse().ok()?;
    (n >= 2 && origin_in(tenant, n) == origin).then_some(n)
}

/// A public key as published: base64 of its 32 bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    b64(key.as_bytes())
}

/// The Merkle leaf hash of an event: `SHA-256(0x00 || chain hash)`.
pub fn leaf_of(chain_hash: &Hash) -> Hash {
    merkle::leaf_hash(chain_hash)
}

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What was signed.
    pub checkpoint: Checkpoint,
    /// The signed note text.
    pub note: String,
}

/// A checkpoint as stored in `<dir>/checkpoints/<tenant>.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size.
    pub size: u64,
    /// When it was signed.
    pub at: String,
    /// The signed note.
    pub note: String,
}

/// An inclusion proof of one event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InclusionProof {
    /// The event's tenant sequence number (its leaf is `seq - 1`).
    pub seq: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The leaf hash (hex).
    pub leaf: String,
    /// The audit path, bottom up (hex).
    pub proof: Vec<String>,
    /// The root of the tree of `size` (hex).
    pub root: String,
}

/// A consistency proof between two tree sizes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The older root (hex).
    pub from_root: String,
    /// The newer root (hex).
    pub to_root: String,
    /// The proof (hex).
    pub proof: Vec<String>,
}

/// An inclusion proof inside a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleInclusion {
    /// The event's sequence number.
    pub seq: u64,
    /// The audit path (hex), for the bundle's checkpoint size.
    pub proof: Vec<String>,
}

/// An earlier checkpoint inside a bundle, with its consistency proof to
/// the bundle's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleEarlier {
    /// The earlier signed note.
    pub checkpoint: String,
    /// The consistency proof from its size to the bundle's checkpoint size (hex).
    pub consistency_proof: Vec<String>,
}

/// The first line of a bundle file: everything but the events.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleHeader {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant: String,
    /// First sequence number of the range.
    pub from_seq: u64,
    /// Last sequence number of the range.
    pub to_seq: u64,
    /// The signed checkpoint the proofs are for.
    pub checkpoint: String,
    /// Hashes of the subtrees outside the range (hex), left to right.
    pub range_proof: Vec<String>,
    /// Inclusion proofs of events of the range.
    pub inclusion_proofs: Vec<BundleInclusion>,
    /// Earlier stored checkpoints and their consistency proofs.
    pub earlier_checkpoints: Vec<BundleEarlier>,
}

/// Evidence a reviewer can take away, as one JSON Lines file: the
/// [`BundleHeader`] on the first line (the signed checkpoint and the
/// proofs), then one event per line, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// The checkpoint, the range and the proofs.
    pub header: BundleHeader,
    /// The events: trail entries (as `audit export --format jsonl` writes
    /// them) with `payload`, the stored bytes (base64).
    pub events: Vec<Value>,
}

impl Bundle {
    /// Writes the bundle as JSON Lines: the header, then one event per line.
    pub fn write_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut w, &self.header)?;
        w.write_all(b"\n")?;
        for e in &self.events {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// The bundle file's bytes (see [`Bundle::write_jsonl`]).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing JSON values into a Vec cannot fail.
        let _ = self.write_jsonl(&mut out);
        out
    }
}

/// Per-process audit state: trees, the signer, what was last written.
#[derive(Default)]
pub(crate) struct AuditState {
    trees: RwLock<HashMap<TenantId, TenantTree>>,
    signer: Option<Signer>,
    /// Per tenant: the epoch, size and instant of the last stored checkpoint.
    written: Mutex<HashMap<TenantId, (u64, u64, Timestamp)>>,
    /// Per tenant: the largest checkpoint signed (epoch, size and root),
    /// stored or handed out, by this process or found at open. Nothing is
    /// signed in that epoch that does not extend it.
    signed: Mutex<HashMap<TenantId, (u64, u64, Hash)>>,
    /// Tenants whose log does not hold their newest signed checkpoint,
    /// opened anyway to recover them (`Config::recovering`): nothing is
    /// signed for them in that epoch, and what is wrong.
    blocked: Mutex<HashMap<TenantId, (u64, crate::integrity::Problem)>>,
    pub(crate) stop: tokio::sync::Notify,
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A tenant's Merkle tree, the chain hash of its last event and its
/// checkpoint epoch.
struct TenantTree {
    tree: Tree,
    /// The chain hash of the last event applied ([`chain::GENESIS`] before any).
    head: Hash,
    /// 1, or the epoch of the last `LogRecovered` applied.
    epoch: u64,
}

impl Default for TenantTree {
    fn default() -> Self {
        TenantTree {
            tree: Tree::new(),
            head: chain::GENESIS,
            epoch: 1,
        }
    }
}

/// The replayed trees, as [`crate::integrity`] reads them.
struct Replayed<'a>(&'a HashMap<TenantId, TenantTree>);

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

struct Signer {
    key: SigningKey,
    config: AuditConfig,
}

fn hexs(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Loads the signing key from `dir`, creating it (mode 0600) and its public
/// key file on first use.
pub fn load_or_create_key(dir: &Path, entropy: &dyn crate::Entropy) -> Result<SigningKey, Error> {
    let path = dir.join(SIGNING_KEY_FILE);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("{what} {}: {e}", path.display()))
    };
    let read = crate::datadir::open_no_follow(OpenOptions::new().read(true), &path)
        .and_then(std::io::read_to_string);
    match read {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        "the audit signing key is readable by others than its owner; chmod 600 it"
                    );
                }
            }
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| fail("cannot read", &"not 64 hex digits"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", &e))?;
            let mut seed = [0u8; 32];
            entropy.fill(&mut seed).map_err(Error::Unavailable)?;
            let key = SigningKey::from_bytes(&seed);
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = crate::datadir::open_no_follow(&mut options, &path)
                .map_err(|e| fail("cannot create", &e))?;
            file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| fail("cannot write", &e))?;
            let public = dir.join(PUBLIC_KEY_FILE);
            crate::datadir::open_no_follow(&mut crate::datadir::write_public(), &public)
                .and_then(|mut f| writeln!(f, "{}", b64(key.verifying_key().as_bytes())))
                .map_err(|e| fail("cannot write the public key beside", &e))?;
            Ok(key)
        }
        Err(e) => Err(fail("cannot read", &e)),
    }
}

impl AuditState {
    pub(crate) fn new(
        config: Option<AuditConfig>,
        entropy: &dyn crate::Entropy,
    ) -> Result<Self, Error> {
        let signer = match config {
            None => None,
            Some(config) => Some(Signer {
                key: load_or_create_key(&config.dir, entropy)?,
                config,
            }),
        };
        Ok(AuditState {
            signer,
            ..AuditState::default()
        })
    }

    /// Appends committed records to their tenants' trees. The leaf index
    /// must be the record's `seq - 1` (checked here, as the chain is
    /// checked on append and replay).
    pub(crate) fn apply(&self, records: &[Record]) -> Result<(), Error> {
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        // One tree lookup per run of records of one tenant.
        for run in records.chunk_by(|a, b| a.event.tenant == b.event.tenant) {
            let Some(tenant) = run.first().map(|r| &r.event.tenant) else {
                continue;
            };
            // Looked up first: the tenant id is cloned only for a new tree.
            let tree = match trees.get_mut(tenant) {
                Some(tree) => tree,
                None => trees.entry(tenant.clone()).or_default(),
            };
            for r in run {
                if tree.tree.len() + 1 != r.seq {
                    return Err(Error::Corrupt(format!(
                        "tenant {tenant}: Merkle leaf {} expected, event {} applied",
                        tree.tree.len() + 1,
                        r.seq
                    )));
                }
                // Each record's own hash was recomputed when it was read
                // (`keyledger_store`); here it must link to the one before.
                if r.prev_hash != tree.head {
                    return Err(Error::Corrupt(format!(
                        "tenant {tenant}: event {} (log position {}) does not link to event {}: \
                         the chain is broken there",
                        r.seq,
                        r.position,
                        r.seq - 1
                    )));
                }
                tree.tree.push_leaf_hash(leaf_of(&r.hash));
                tree.head = r.hash;
                if let keyledger_core::EventKind::LogRecovered(e) = &r.event.kind {
                    tree.epoch = e.epoch;
                }
            }
        }
        Ok(())
    }

    /// The tenant's checkpoint epoch (1 for a tenant without events).
    fn epoch(&self, tenant: &TenantId) -> u64 {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        trees.get(tenant).map_or(1, |t| t.epoch)
    }

    fn with_tree<T>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&Tree) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        let empty = Tree::new();
        f(trees.get(tenant).map_or(&empty, |t| &t.tree))
    }

    fn signer(&self) -> Result<&Signer, Error> {
        self.signer.as_ref().ok_or_else(|| {
            Error::Unavailable("audit signing is not configured (no data directory)".into())
        })
    }

    /// Signs the tenant's tree of `size` events with root `root`, unless
    /// that would contradict a checkpoint signed before: the tree must
    /// extend the largest one signed (the same root at that size, and no
    /// smaller size). A log never forks (C2SP tlog-checkpoint), whatever
    /// happened to the log or the trees.
    fn sign(
        &self,
        tenant: &TenantId,
        size: u64,
        root: Hash,
        now: Timestamp,
    ) -> Result<SignedCheckpoint, Error> {
        let signer = self.signer()?;
        let epoch = self.epoch(tenant);
        if let Some((blocked, problem)) = self
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            && *blocked >= epoch
        {
            return Err(Error::Corrupt(format!(
                "refusing to sign a checkpoint for tenant {tenant}: {problem}"
            )));
        }
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(last_epoch, ..)) = signed.get(tenant)
            && last_epoch > epoch
        {
            return Err(Error::Corrupt(format!(
                "refusing to sign a checkpoint for tenant {tenant} in epoch {epoch}: one was \
                 signed in epoch {last_epoch} (a log never forks)"
            )));
        }
        if let Some(&(last_epoch, last_size, last_root)) = signed.get(tenant)
            && last_epoch == epoch
        {
            let (prefix, whole) =
                self.with_tree(tenant, |t| Ok((t.root(last_size).ok(), t.root(size).ok())))?;
            let extends = size >= last_size
                && prefix == Some(last_root)
                && whole == Some(root)
                && (size > last_size || root == last_root);
            if !extends {
                return Err(Error::Corrupt(format!(
                    "refusing to sign a checkpoint of {size} events for tenant {tenant}: it does \
                     not extend the checkpoint of {last_size} events signed before (a log never \
                     forks)"
                )));
            }
        }
        let checkpoint = Checkpoint {
            origin: origin_in(tenant.as_str(), epoch),
            size,
            root,
            extensions: vec![format!("time {}", now.to_rfc3339())],
        };
        let note = checkpoint.sign(&signer.key);
        signed.insert(tenant.clone(), (epoch, size, root));
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Checks the log, as replayed into the trees, against every tenant's
    /// newest stored checkpoint ([`crate::integrity`]), and remembers them
    /// as the checkpoints every later one must extend. With `recovering`,
    /// a tenant with a problem does not fail the open: it is kept, and
    /// nothing is signed for it until `recover` starts a new epoch.
    pub(crate) fn check_stored(&self, recovering: bool) -> Result<(), Error> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let checked = {
            let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
            crate::integrity::check_all(
                &signer.config.dir,
                &signer.key.verifying_key(),
                &Replayed(&trees),
            )
        };
        if !recovering && !checked.problems.is_empty() {
            return Err(Error::Corrupt(crate::integrity::describe(
                &checked.problems,
            )));
        }
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, s) in checked.signed {
            let at = Timestamp::parse_rfc3339(&s.at).unwrap_or(Timestamp::EPOCH);
            signed.insert(tenant.clone(), (s.epoch, s.size, s.root));
            written.insert(tenant, (s.epoch, s.size, at));
        }
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        for p in checked.problems {
            let Ok(tenant) = p.tenant.parse::<TenantId>() else {
                continue;
            };
            blocked.insert(tenant, (p.epoch, p));
        }
        Ok(())
    }

    /// What is wrong with a tenant opened to be recovered, if anything.
    pub(crate) fn problem(&self, tenant: &TenantId) -> Option<crate::integrity::Problem> {
        let epoch = self.epoch(tenant);
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(tenant)
            .filter(|(e, _)| *e >= epoch)
            .map(|(_, p)| p.clone())
    }

    /// The file of the tenant's checkpoints in its current epoch.
    fn checkpoint_path(&self, tenant: &TenantId) -> Result<PathBuf, Error> {
        Ok(self.signer()?.config.dir.join(CHECKPOINT_DIR).join(
            crate::integrity::checkpoint_file_name_in(tenant.as_str(), self.epoch(tenant)),
        ))
    }

    /// Every stored checkpoint of a tenant in its current epoch, oldest first.
    fn stored(&self, tenant: &TenantId) -> Result<Vec<StoredCheckpoint>, Error> {
        let path = self.checkpoint_path(tenant)?;
        let file = match crate::datadir::open_no_follow(OpenOptions::new().read(true), &path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Unavailable(format!("{}: {e}", path.display()))),
        };
        let mut out = Vec::new();
        // Another tenant's lines are skipped: on a case-insensitive file
        // system, earlier versions kept `ACME` and `acme` in one file.
        let first_line = format!("{}\n", origin_in(tenant.as_str(), self.epoch(tenant)));
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| Error::Unavailable(format!("{}: {e}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            // A torn last line (a crash mid-write) is skipped, not fatal.
            if let Ok(c) = serde_json::from_str::<StoredCheckpoint>(&line)
                && c.note.starts_with(&first_line)
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Writes a checkpoint for every tenant whose tree grew since its last
    /// stored checkpoint, and for every tenant whose last one is older than
    /// the interval (or, with `force`, for every tenant that grew at all).
    fn write_due(&self, now: Timestamp, force: bool) -> Result<usize, Error> {
        let Some(signer) = &self.signer else {
            return Ok(0);
        };
        let heads: Vec<(TenantId, u64, u64, Hash)> = {
            let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
            trees
                .iter()
                .filter_map(|(t, tt)| {
                    let size = tt.tree.len();
                    Some((t.clone(), tt.epoch, size, tt.tree.root(size).ok()?))
                })
                .collect()
        };
        let mut written = 0;
        // A tenant that cannot be signed (a recovery pending) does not
        // hold back the others; the first failure is returned at the end.
        let mut failed = None;
        for (tenant, epoch, size, root) in heads {
            let last = {
                let known = self
                    .written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&tenant)
                    .copied()
                    .filter(|(e, ..)| *e == epoch)
                    .map(|(_, size, at)| (size, at));
                match known {
                    Some(k) => Some(k),
                    None => self.stored(&tenant)?.last().map(|c| {
                        let at = Timestamp::parse_rfc3339(&c.at).unwrap_or(Timestamp::EPOCH);
                        (c.size, at)
                    }),
                }
            };
            let due = match last {
                None => true,
                Some((last_size, _)) if last_size != size => true,
                Some((_, when)) => {
                    let interval = i64::try_from(signer.config.checkpoint_interval.as_micros())
                        .unwrap_or(i64::MAX);
                    !force && now.as_micros().saturating_sub(when.as_micros()) >= interval
                }
            };
            if !due {
                let (size, at) = last.unwrap_or((size, now));
                self.written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(tenant, (epoch, size, at));
                continue;
            }
            let signed = match self.sign(&tenant, size, root, now) {
                Ok(s) => s,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let line = serde_json::to_string(&StoredCheckpoint {
                size,
                at: now.to_rfc3339(),
                note: signed.note,
            })
            .map_err(|e| Error::Unavailable(e.to_string()))?;
            let path = self.checkpoint_path(&tenant)?;
            let io = |e: std::io::Error| Error::Unavailable(format!("{}: {e}", path.display()));
            if let Some(dir) = path.parent() {
                crate::datadir::create_dir_private(dir).map_err(io)?;
            }
            let mut file =
                crate::datadir::open_no_follow(&mut crate::datadir::append_private(), &path)
                    .map_err(io)?;
            file.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(io)?;
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tenant, (epoch, size, now));
            written += 1;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

/// Writes checkpoints as trees grow, and at least every interval.
pub(crate) async fn checkpointer(shared: std::sync::Arc<Shared>, debounce: Duration) {
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(debounce) => false,
            _ = shared.audit.stop.notified() => true,
        };
        let s = shared.clone();
        let now = shared.clock.now();
        let written = tokio::task::spawn_blocking(move || s.audit.write_due(now, false)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "writing audit checkpoints failed; retried next tick");
        }
        if stopped {
            return;
        }
    }
}

impl Shared {
    /// The tenant's checkpoint epoch.
    pub(crate) fn audit_epoch(&self, tenant: &TenantId) -> u64 {
        self.audit.epoch(tenant)
    }

    /// Writes the checkpoints of every grown tree (at shutdown).
    pub(crate) fn write_final_checkpoints(&self) -> Result<usize, Error> {
        self.audit.write_due(self.clock.now(), true)
    }
}

fn parse_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

impl Keyledger {
    /// The size of a tenant's tree: its number of events.
    pub fn tree_size(&self, tenant: &TenantId) -> u64 {
        self.shared
            .audit
            .with_tree(tenant, |t| Ok(t.len()))
            .unwrap_or(0)
    }

    /// The origin the tenant's checkpoints are signed under now (it changes
    /// with each `keyledger recover`: [`origin_in`]).
    pub fn checkpoint_origin(&self, tenant: &TenantId) -> String {
        origin_in(tenant.as_str(), self.shared.audit.epoch(tenant))
    }

    /// The public key checkpoints are signed with, if signing is configured.
    pub fn audit_public_key(&self) -> Option<VerifyingKey> {
        self.shared
            .audit
            .signer
            .as_ref()
            .map(|s| s.key.verifying_key())
    }

    /// A freshly signed checkpoint of the tenant's current tree.
    pub fn checkpoint(&self, tenant: &TenantId) -> Result<SignedCheckpoint, Error> {
        let (size, root) = self.shared.audit.with_tree(tenant, |t| {
            Ok((t.len(), t.root(t.len()).map_err(proof_error)?))
        })?;
        self.shared.audit.sign(tenant, size, root, self.now())
    }

    /// The tenant's stored checkpoints, oldest first.
    pub fn stored_checkpoints(&self, tenant: &TenantId) -> Result<Vec<StoredCheckpoint>, Error> {
        self.shared.audit.stored(tenant)
    }

    /// Writes every due checkpoint now (normally done by a background task);
    /// returns how many were written.
    pub fn write_checkpoints(&self) -> Result<usize, Error> {
        self.shared.audit.write_due(self.now(), false)
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
                return Err(Error::BadRequest(format!(
                    "position {seq} is not in a tree of size {size} (the tenant has {} events)",
                    t.len()
                )));
            }
            let proof = t.inclusion_proof(seq - 1, size).map_err(proof_error)?;
            Ok(InclusionProof {
                seq,
                size,
                leaf: hex::encode(t.leaf(seq - 1).unwrap_or_default()),
                proof: hexs(&proof),
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
                return Err(Error::BadRequest(format!(
                    "sizes {from} to {to} are not within 0..={}",
                    t.len()
                )));
            }
            Ok(ConsistencyProof {
                from,
                to,
                from_root: hex::encode(t.root(from).map_err(proof_error)?),
                to_root: hex::encode(t.root(to).map_err(proof_error)?),
                proof: hexs(&t.consistency_proof(from, to).map_err(proof_error)?),
            })
        })
    }

    /// Records that `principal` read the tenant's trail (events
    /// `from_seq..=to_seq`; `0..=0` for a read that covered none), durably,
    /// before the data is handed out. A reader alone is written at once;
    /// reads by the same actor of the same kind within
    /// [`Config::audit_read_window`](crate::Config::audit_read_window) of
    /// the last such event wait for the window's end and are written
    /// together, as one `AuditRead` with their count (`docs/audit.md`,
    /// "Reads of the trail"). An error means the read was not recorded:
    /// hand nothing out.
    pub async fn record_audit_read(
        &self,
        principal: Principal,
        from_seq: u64,
        to_seq: u64,
        what: AuditReadKind,
    ) -> Result<(), Error> {
        let range = ((from_seq, to_seq) != (0, 0)).then_some(SeqRange {
            from: from_seq,
            to: to_seq,
        });
        crate::reads::record(self, principal, what, range).await
    }

    /// Records that `principal` was handed a page of the trail: the first
    /// to the last sequence number of the page (`0..=0` for an empty page).
    pub async fn record_page_read(
        &self,
        principal: Principal,
        page: &crate::AuditPage,
        what: AuditReadKind,
    ) -> Result<(), Error> {
        let from = page.records.first().map_or(0, |r| r.seq);
        let to = page.records.last().map_or(0, |r| r.seq);
        self.record_audit_read(principal, from, to, what).await
    }

    /// Records that `principal` exports the trail, before the export
    /// starts: the tenant's events `1..=head` (`0..=0` when it has none).
    pub async fn record_trail_export(&self, principal: Principal) -> Result<(), Error> {
        let size = self.tree_size(&principal.tenant);
        self.record_audit_read(principal, size.min(1), size, AuditReadKind::Export)
            .await
    }

    /// Records the read, then builds the bundle of `from_seq..=to_seq`.
    pub async fn export_bundle(
        &self,
        principal: Principal,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Bundle, Error> {
        let tenant = principal.tenant.clone();
        self.check_bundle_range(&tenant, from_seq, to_seq)?;
        self.record_audit_read(principal, from_seq, to_seq, AuditReadKind::Bundle)
            .await?;
        self.bundle(&tenant, from_seq, to_seq)
    }

    /// Checks that `from_seq..=to_seq` is a range a bundle can hold.
    pub fn check_bundle_range(
        &self,
        tenant: &TenantId,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<(), Error> {
        let size = self.tree_size(tenant);
        if from_seq == 0 || from_seq > to_seq || to_seq > size {
            return Err(Error::BadRequest(format!(
                "the range {from_seq}..={to_seq} is not within the tenant's events 1..={size}"
            )));
        }
        if to_seq - from_seq >= BUNDLE_EVENTS_MAX {
            return Err(Error::BadRequest(format!(
                "a bundle holds at most {BUNDLE_EVENTS_MAX} events"
            )));
        }
        Ok(())
    }

    /// The evidence bundle of events `from_seq..=to_seq` (not recorded as
    /// a read: see [`Keyledger::export_bundle`]).
    pub fn bundle(&self, tenant: &TenantId, from_seq: u64, to_seq: u64) -> Result<Bundle, Error> {
        self.check_bundle_range(tenant, from_seq, to_seq)?;
        let stored = self.stored_checkpoints(tenant)?;
        // One consistent view of the tree for the checkpoint and every proof.
        let (signed, range_proof, inclusion_proofs, earlier) =
            self.shared.audit.with_tree(tenant, |t| {
                let size = t.len();
                let root = t.root(size).map_err(proof_error)?;
                let signed = self.shared.audit.sign(tenant, size, root, self.now())?;
                let range = t
                    .range_proof(from_seq - 1, to_seq, size)
                    .map_err(proof_error)?;
                let seqs: Vec<u64> = if to_seq - from_seq < BUNDLE_INCLUSION_PROOFS_MAX {
                    (from_seq..=to_seq).collect()
                } else {
                    vec![from_seq, to_seq]
                };
                let mut inclusion = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    inclusion.push(BundleInclusion {
                        seq,
                        proof: hexs(&t.inclusion_proof(seq - 1, size).map_err(proof_error)?),
                    });
                }
                // Stored checkpoints: the first that covers the range (the
                // range was committed by then), the latest one.
                // A stored checkpoint larger than the tree (the log was cut
                // short) goes in too, with no proof: the verifier reports it.
                let mut picked: BTreeSet<usize> = BTreeSet::new();
                if let Some(i) = stored.iter().position(|c| c.size >= to_seq) {
                    picked.insert(i);
                }
                if let Some(i) = stored.iter().rposition(|c| c.size > 0) {
                    picked.insert(i);
                }
                // And a log-spaced sample of the history (the first stored
                // checkpoint at or above each power of two: at most 64), so
                // a rewrite after any of them shows even when later
                // checkpoints were signed over the rewritten log.
                let mut next = 1u64;
                for (i, c) in stored.iter().enumerate() {
                    if c.size >= next {
                        picked.insert(i);
                        next = c
                            .size
                            .checked_add(1)
                            .and_then(u64::checked_next_power_of_two)
                            .unwrap_or(u64::MAX);
                    }
                }
                let mut earlier = Vec::new();
                for i in picked {
                    let c = &stored[i];
                    let proof = if c.size <= size {
                        t.consistency_proof(c.size, size).map_err(proof_error)?
                    } else {
                        Vec::new()
                    };
                    earlier.push(BundleEarlier {
                        checkpoint: c.note.clone(),
                        consistency_proof: hexs(&proof),
                    });
                }
                Ok((signed, range, inclusion, earlier))
            })?;
        let mut events = Vec::with_capacity((to_seq - from_seq + 1) as usize);
        let mut after = from_seq - 1;
        while after < to_seq {
            let want = usize::try_from(to_seq - after)
                .unwrap_or(usize::MAX)
                .min(4096);
            let page = self.shared.log.read_tenant_raw(tenant, after, want)?;
            if page.is_empty() {
                return Err(Error::Corrupt(format!(
                    "tenant {tenant}: event {} is in the tree but not in the log",
                    after + 1
                )));
            }
            for raw in page {
                if raw.seq > to_seq {
                    break;
                }
                after = raw.seq;
                let event = envelope::decode(tenant, &raw.payload).map_err(|e| {
                    Error::Corrupt(format!("tenant {tenant} event {}: {e}", raw.seq))
                })?;
                let record = Record {
                    position: raw.position,
                    seq: raw.seq,
                    prev_hash: raw.prev_hash,
                    hash: raw.hash,
                    event,
                };
                let mut value = serde_json::to_value(AuditEntry::from(&record))
                    .map_err(|e| Error::Corrupt(e.to_string()))?;
                if let Value::Object(map) = &mut value {
                    // `position` repeats `seq`, which the chain commits
                    // to: a bundle names each event by `seq` alone.
                    map.remove("position");
                    map.insert("payload".into(), Value::String(b64(&raw.payload)));
                }
                events.push(value);
            }
        }
        Ok(Bundle {
            header: BundleHeader {
                format: BUNDLE_FORMAT.into(),
                tenant: tenant.to_string(),
                from_seq,
                to_seq,
                checkpoint: signed.note,
                range_proof: hexs(&range_proof),
                inclusion_proofs,
                earlier_checkpoints: earlier,
            },
            events,
        })
    }
}

fn proof_error(e: merkle::ProofError) -> Error {
    Error::BadRequest(e.to_string())
}

/// The kind of a problem a bundle check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The bundle is not well formed.
    Malformed,
    /// An event differs from what was signed.
    Modified,
    /// An event of the range is not in the bundle.
    Missing,
    /// Events are out of order.
    Reordered,
    /// An event is in the bundle that the log does not hold there.
    Inserted,
    /// A checkpoint's signature does not verify with the given key.
    BadSignature,
    /// Two checkpoints cannot both be heads of one append-only log.
    InconsistentCheckpoints,
    /// A Merkle proof does not verify.
    ProofFailed,
    /// A checkpoint the reviewer holds cannot be checked with this bundle.
    Unverifiable,
}

impl ProblemKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "malformed",
            ProblemKind::Modified => "modified",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::BadSignature => "bad_signature",
            ProblemKind::InconsistentCheckpoints => "inconsistent_checkpoints",
            ProblemKind::ProofFailed => "proof_failed",
            ProblemKind::Unverifiable => "unverifiable",
        }
    }
}

/// One problem found in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Where and what, for a human.
    pub message: String,
}

/// The outcome of [`verify_bundle`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// The bundle's tenant.
    pub tenant: String,
    /// First sequence number of the range.
    pub from_seq: u64,
    /// Last sequence number of the range.
    pub to_seq: u64,
    /// The size of the bundle's checkpoint.
    pub tree_size: u64,
    /// Events read from the bundle.
    pub events: u64,
    /// Checkpoint signatures that verified.
    pub signatures_ok: u64,
    /// Inclusion proofs that verified.
    pub inclusion_proofs_ok: u64,
    /// Consistency proofs that verified.
    pub consistency_proofs_ok: u64,
    /// Everything that does not hold.
    pub problems: Vec<Problem>,
}

impl BundleReport {
    /// Whether everything holds.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, kind: ProblemKind, message: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            message: message.into(),
        });
    }

    /// One line: what was checked and whether it holds.
    pub fn summary(&self) -> String {
        format!(
            "{}: tenant {}, events {}..={} ({} read), tree size {}, {} signature(s), {} inclusion \
             and {} consistency proof(s) verified; {} problem(s)",
            if self.ok() { "VALID" } else { "INVALID" },
            self.tenant,
            self.from_seq,
            self.to_seq,
            self.events,
            self.tree_size,
            self.signatures_ok,
            self.inclusion_proofs_ok,
            self.consistency_proofs_ok,
            self.problems.len()
        )
    }
}

/// One event of a bundle as read back: what the checks need.
struct ReadEvent {
    line: usize,
    seq: u64,
    prev: Hash,
    recomputed: Hash,
}

/// Checks a bundle with nothing but the public key: every signature, the
/// range, inclusion and consistency proofs, and every event recomputed from
/// its stored bytes. Never panics on any input; reports every problem.
pub fn verify_bundle(bytes: &[u8], key: &VerifyingKey) -> BundleReport {
    verify_bundle_with(bytes, key, &[])
}

/// [`verify_bundle`], and also checks the bundle against checkpoints the
/// reviewer kept from earlier (signed notes, e.g. from
/// `GET /v1/audit/checkpoint`): each must be signed by the key and be a
/// prefix of the bundle's tree. This is what catches an operator who
/// rewrote the log and its stored checkpoints after the reviewer's
/// checkpoint left the server.
pub fn verify_bundle_with(bytes: &[u8], key: &VerifyingKey, held: &[String]) -> BundleReport {
    let mut report = BundleReport::default();
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let bundle: BundleHeader = match lines.next().map(|(_, l)| serde_json::from_slice(l)) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            report.problem(
                ProblemKind::Malformed,
                format!("line 1 is not a bundle header: {e}"),
            );
            return report;
        }
        None => {
            report.problem(ProblemKind::Malformed, "the bundle is empty");
            return report;
        }
    };
    // Every other line is an event; a line that is not JSON is reported
    // and the checks go on (its event is then missing).
    let mut events: Vec<(usize, Value)> = Vec::new();
    for (line, l) in lines {
        report.events += 1;
        match serde_json::from_slice::<Value>(l) {
            Ok(v) => events.push((line, v)),
            Err(e) => report.problem(
                ProblemKind::Malformed,
                format!("line {line} is not a JSON event: {e}"),
            ),
        }
    }
    report.tenant = bundle.tenant.clone();
    report.from_seq = bundle.from_seq;
    report.to_seq = bundle.to_seq;
    if bundle.format != BUNDLE_FORMAT {
        report.problem(
            ProblemKind::Malformed,
            format!("format `{}` is not `{BUNDLE_FORMAT}`", bundle.format),
        );
        return report;
    }
    let tenant: TenantId = match bundle.tenant.parse() {
        Ok(t) => t,
        Err(e) => {
            report.problem(ProblemKind::Malformed, format!("tenant: {e}"));
            return report;
        }
    };
    if bundle.from_seq == 0 || bundle.from_seq > bundle.to_seq {
        report.problem(
            ProblemKind::Malformed,
            format!("the range {}..={} is empty", bundle.from_seq, bundle.to_seq),
        );
        return report;
    }
    // 1. The checkpoint: signed by the key, for this tenant.
    let head = match checkpoint::open(&bundle.checkpoint, key) {
        Ok(c) => {
            report.signatures_ok += 1;
            Some(c)
        }
        Err(e) => {
            report.problem(
                ProblemKind::BadSignature,
                format!("the bundle's checkpoint is not signed by the given key: {e}"),
            );
            None
        }
    };
    let head = head.filter(|c| {
        if epoch_of_origin(tenant.as_str(), &c.origin).is_none() {
            report.problem(
                ProblemKind::Malformed,
                format!(
                    "the checkpoint is for `{}`, not `{}` (or one of its later epochs)",
                    c.origin,
                    origin(tenant.as_str())
                ),
            );
            false
        } else if c.size < bundle.to_seq {
            report.problem(
                ProblemKind::Malformed,
                format!(
                    "the checkpoint's tree of {} events does not cover event {}",
                    c.size, bundle.to_seq
                ),
            );
            false
        } else {
            true
        }
    });
    report.tree_size = head.as_ref().map_or(0, |c| c.size);

    // 2. Every event: recomputed from its bytes, compared with its readable form.
    let mut read = Vec::with_capacity(events.len());
    for (line, value) in &events {
        match read_event(&tenant, *line, value) {
            Ok((ev, modified)) => {
                if let Some(m) = modified {
                    report.problem(ProblemKind::Modified, m);
                }
                read.push(ev);
            }
            Err(m) => report.problem(ProblemKind::Malformed, format!("line {line}: {m}")),
        }
    }
    drop(events);
    // 3. Order, gaps, extras.
    let mut by_seq: HashMap<u64, usize> = HashMap::new();
    let mut last_seq = 0u64;
    for (i, ev) in read.iter().enumerate() {
        if ev.seq < bundle.from_seq || ev.seq > bundle.to_seq {
            report.problem(
                ProblemKind::Inserted,
                format!(
                    "line {}: an event with sequence number {}, outside the range {}..={}: inserted",
                    ev.line, ev.seq, bundle.from_seq, bundle.to_seq
                ),
            );
            continue;
        }
        if by_seq.insert(ev.seq, i).is_some() {
            report.problem(
                ProblemKind::Inserted,
                format!(
                    "line {}: a second event with sequence number {}: inserted",
                    ev.line, ev.seq
                ),
            );
            continue;
        }
        if ev.seq < last_seq {
            report.problem(
                ProblemKind::Reordered,
                format!(
                    "line {}: event {} comes after event {}: reordered",
                    ev.line, ev.seq, last_seq
                ),
            );
        }
        last_seq = last_seq.max(ev.seq);
    }
    let mut complete = true;
    for seq in bundle.from_seq..=bundle.to_seq {
        if !by_seq.contains_key(&seq) {
            complete = false;
            report.problem(
                ProblemKind::Missing,
                format!("event with sequence number {seq} is missing"),
            );
            if report.problems.len() > 1000 {
                report.problem(ProblemKind::Missing, "too many problems; stopped listing");
                return report;
            }
        }
    }
    // 4. Links between consecutive events (in sequence order).
    for seq in bundle.from_seq + 1..=bundle.to_seq {
        if let (Some(&a), Some(&b)) = (by_seq.get(&(seq - 1)), by_seq.get(&seq))
            && read[b].prev != read[a].recomputed
        {
            report.problem(
                ProblemKind::Modified,
                format!("event {seq} does not link to event {}: one of them was replaced or an event was inserted between them", seq - 1),
            );
        }
    }
    if bundle.from_seq == 1
        && let Some(&a) = by_seq.get(&1)
        && read[a].prev != chain::GENESIS
    {
        report.problem(ProblemKind::Modified, "event 1 does not start the chain");
    }
    let Some(head) = head else {
        return report;
    };
    let leaf = |seq: u64| by_seq.get(&seq).map(|&i| leaf_of(&read[i].recomputed));

    // 5. The range proof: every leaf of the range against the signed root.
    // When it holds, the leaves and the proof are authenticated by the
    // signed root (kept for the held checkpoints, step 8).
    let mut authenticated: Option<(Vec<Hash>, Vec<Hash>)> = None;
    if complete {
        let leaves: Vec<Hash> = (bundle.from_seq..=bundle.to_seq).filter_map(leaf).collect();
        match hashes(&bundle.range_proof) {
            None => report.problem(ProblemKind::Malformed, "the range proof is not hex hashes"),
            Some(proof) => match merkle::root_from_range(bundle.from_seq - 1, head.size, &leaves, &proof) {
                Ok(root) if root == head.root => authenticated = Some((leaves, proof)),
                _ => report.problem(
                    ProblemKind::ProofFailed,
                    format!(
                        "the events {}..={} do not hash to the signed root of {} events: events were changed, added or removed",
                        bundle.from_seq, bundle.to_seq, head.size
                    ),
                ),
            },
        }
    }
    // 6. Inclusion proofs.
    for p in &bundle.inclusion_proofs {
        let Some(leaf) = leaf(p.seq) else {
            report.problem(
                ProblemKind::ProofFailed,
                format!(
                    "inclusion proof for event {} which the bundle does not hold",
                    p.seq
                ),
            );
            continue;
        };
        let ok = hashes(&p.proof).is_some_and(|proof| {
            merkle::verify_inclusion(p.seq - 1, head.size, &leaf, &proof, &head.root).is_ok()
        });
        if ok {
            report.inclusion_proofs_ok += 1;
        } else {
            report.problem(
                ProblemKind::ProofFailed,
                format!(
                    "event {} is not included in the signed tree of {} events: it was changed",
                    p.seq, head.size
                ),
            );
        }
    }
    // 7. Earlier checkpoints: signed, and consistent with the head.
    for (i, e) in bundle.earlier_checkpoints.iter().enumerate() {
        let earlier = match checkpoint::open(&e.checkpoint, key) {
            Ok(c) => {
                report.signatures_ok += 1;
                c
            }
            Err(err) => {
                report.problem(
                    ProblemKind::BadSignature,
                    format!("earlier checkpoint {}: {err}", i + 1),
                );
                continue;
            }
        };
        if earlier.origin != head.origin {
            report.problem(
                ProblemKind::Malformed,
                format!("earlier checkpoint {} is for `{}`", i + 1, earlier.origin),
            );
            continue;
        }
        if earlier.size > head.size {
            report.problem(
                ProblemKind::InconsistentCheckpoints,
                format!(
                    "an earlier checkpoint ({}) holds {} events, the bundle's checkpoint only {}: \
                     events were removed from the log",
                    earlier.extension("time").unwrap_or("no time"),
                    earlier.size,
                    head.size
                ),
            );
            continue;
        }
        let ok = hashes(&e.consistency_proof).is_some_and(|proof| {
            merkle::verify_consistency(earlier.size, head.size, &earlier.root, &head.root, &proof)
                .is_ok()
        });
        if ok {
            report.consistency_proofs_ok += 1;
        } else {
            report.problem(
                ProblemKind::InconsistentCheckpoints,
                format!(
                    "the checkpoint of {} events ({}) and the checkpoint of {} events ({}) are inconsistent: the log was rewritten between them",
                    earlier.size,
                    earlier.extension("time").unwrap_or("no time"),
                    head.size,
                    head.extension("time").unwrap_or("no time"),
                ),
            );
        }
    }
    // 8. Checkpoints the reviewer kept: signed, and a prefix of this tree.
    for (i, note) in held.iter().enumerate() {
        let n = i + 1;
        let kept = match checkpoint::open(note, key) {
            Ok(c) => {
                report.signatures_ok += 1;
                c
            }
            Err(err) => {
                report.problem(
                    ProblemKind::BadSignature,
                    format!("held checkpoint {n}: {err}"),
                );
                continue;
            }
        };
        if kept.origin != head.origin {
            report.problem(
                ProblemKind::Malformed,
                format!(
                    "held checkpoint {n} is for `{}`, not `{}`",
                    kept.origin, head.origin
                ),
            );
            continue;
        }
        let when = kept.extension("time").unwrap_or("no time").to_owned();
        let disagree = |report: &mut BundleReport, why: &str| {
            report.problem(
                ProblemKind::InconsistentCheckpoints,
                format!(
                    "held checkpoint {n} ({} events, {when}) and the bundle's checkpoint ({} events, {}) disagree: {why}",
                    kept.size,
                    head.size,
                    head.extension("time").unwrap_or("no time"),
                ),
            );
        };
        let begin = bundle.from_seq - 1;
        let by_bundle_proof = bundle.earlier_checkpoints.iter().find_map(|e| {
            let c = checkpoint::open(&e.checkpoint, key).ok()?;
            (c.origin == head.origin && c.size == kept.size).then_some(c.root)
        });
        let in_range = kept.size > begin && kept.size <= bundle.to_seq;
        let checked = if kept.size > head.size {
            Some(Err(
                "it holds more events: events were removed from the log",
            ))
        } else if kept.size == head.size || kept.size == 0 {
            let expected = if kept.size == 0 {
                merkle::empty_root()
            } else {
                head.root
            };
            Some(if kept.root == expected {
                Ok(())
            } else {
                Err("the same number of events hash to different roots: the log was rewritten")
            })
        } else if in_range {
            authenticated.as_ref().map(|(leaves, proof)| {
                match merkle::prefix_root_from_range(begin, kept.size, leaves, proof) {
                    Ok(root) if root == kept.root => Ok(()),
                    _ => Err("the bundle's events do not hash to the held root: events the held checkpoint covers were changed, removed, reordered or inserted"),
                }
            })
        } else if let Some(root) = by_bundle_proof {
            // The earlier checkpoint of that size was checked against the
            // head in step 7; the held one must be the same tree.
            Some(if root == kept.root {
                Ok(())
            } else {
                Err(
                    "the bundle's own checkpoint of that size has another root: the log was rewritten",
                )
            })
        } else {
            None
        };
        match checked {
            Some(Ok(())) => report.consistency_proofs_ok += 1,
            Some(Err(why)) => disagree(&mut report, why),
            None => report.problem(
                ProblemKind::Unverifiable,
                format!(
                    "held checkpoint {n} ({} events, {when}) cannot be checked against this bundle: {}",
                    kept.size,
                    if in_range {
                        "its events do not verify (see above)".to_owned()
                    } else {
                        format!("export a bundle whose range holds event {}", kept.size)
                    }
                ),
            ),
        }
    }
    report
}

fn hashes(hexes: &[String]) -> Option<Vec<Hash>> {
    if hexes.len() > merkle::PROOF_HASHES_MAX {
        return None;
    }
    hexes.iter().map(|h| parse_hash(h)).collect()
}

/// The line 0.1.0 wrote for a version-1 `AuditRead` payload, whose
/// `details` were `{from_seq, to_seq, what}`: `expected` (the line this
/// release writes) with those details. `None` for any other event.
fn legacy_view(payload: &[u8], event: &keyledger_core::Event, expected: &Value) -> Option<Value> {
    let keyledger_core::EventKind::AuditRead(r) = &event.kind else {
        return None;
    };
    if payload.first() != Some(&1) {
        return None;
    }
    let (from_seq, to_seq) = r.span();
    let mut legacy = expected.clone();
    legacy.as_object_mut()?.insert(
        "details".into(),
        serde_json::json!({ "from_seq": from_seq, "to_seq": to_seq, "what": r.what.as_str() }),
    );
    Some(legacy)
}

/// Reads one bundle event: recomputes its chain hash from the stored bytes
/// and compares its readable fields with the decoded bytes. Returns the
/// event and, if it was modified, what is wrong.
fn read_event(
    tenant: &TenantId,
    line: usize,
    value: &Value,
) -> Result<(ReadEvent, Option<String>), String> {
    use base64::Engine as _;
    let obj = value.as_object().ok_or("not an object")?;
    let num = |k: &str| {
        obj.get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("no `{k}`"))
    };
    let hash_of = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .and_then(parse_hash)
            .ok_or(format!("no `{k}` hash"))
    };
    let seq = num("seq")?;
    let prev = hash_of("prev_hash")?;
    let hash = hash_of("hash")?;
    let payload = obj
        .get("payload")
        .and_then(Value::as_str)
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .ok_or("no base64 `payload`")?;
    let recomputed = chain::link(&prev, tenant.as_str(), seq, &payload);
    let mut modified = None;
    if recomputed != hash {
        modified = Some(format!(
            "event {seq} (line {line}) was modified: its stored bytes do not hash to its recorded hash"
        ));
    }
    match envelope::decode(tenant, &payload) {
        Err(e) => {
            modified.get_or_insert(format!(
                "event {seq} (line {line}) was modified: its stored bytes do not decode ({e})"
            ));
        }
        Ok(event) => {
            let record = Record {
                position: 0, // not in a bundle (removed below)
                seq,
                prev_hash: prev,
                hash,
                event,
            };
            let mut expected =
                serde_json::to_value(AuditEntry::from(&record)).map_err(|e| e.to_string())?;
            if let Value::Object(m) = &mut expected {
                m.remove("position");
                m.insert(
                    "payload".into(),
                    obj.get("payload").cloned().unwrap_or(Value::Null),
                );
            }
            // A bundle written by 0.1.0 shows a version-1 `AuditRead` as
            // that release did: `{from_seq, to_seq, what}` (docs/events.md).
            let legacy = legacy_view(&payload, &record.event, &expected);
            if &expected != value && legacy.as_ref() != Some(value) && modified.is_none() {
                let fields: Vec<&str> = expected
                    .as_object()
                    .map(|e| {
                        e.iter()
                            .filter(|(k, v)| obj.get(k.as_str()) != Some(v))
                            .map(|(k, _)| k.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                modified = Some(format!(
                    "event {seq} (line {line}) was modified: {} differ from its signed bytes",
                    if fields.is_empty() {
                        "extra fields".to_owned()
                    } else {
                        fields.join(", ")
                    }
                ));
            }
        }
    }
    Ok((
        ReadEvent {
            line,
            seq,
            prev,
            recomputed,
        },
        modified,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(leaves: &[u8]) -> TenantTree {
        let mut tree = Tree::new();
        for &b in leaves {
            tree.push_leaf_hash(leaf_of(&[b; 32]));
        }
        TenantTree {
            tree,
            head: [0; 32],
            epoch: 1,
        }
    }

    /// Whatever the trees come to hold (a bug, a log changed under the
    /// process), no checkpoint is signed that does not extend the largest
    /// one signed before: not a changed tree, not a smaller one.
    #[test]
    fn a_checkpoint_that_would_fork_the_log_is_never_signed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = AuditState::new(Some(AuditConfig::in_dir(dir.path())), &crate::OsEntropy)
            .unwrap_or_else(|e| panic!("{e}"));
        let acme: TenantId = "acme".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let now = Timestamp::EPOCH;
        let put = |t: TenantTree| {
            state
                .trees
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(acme.clone(), t);
        };
        let head = |state: &AuditState| {
            state.with_tree(&acme, |t| {
                Ok((t.len(), t.root(t.len()).map_err(proof_error)?))
            })
        };
        put(tree_of(&[1, 2, 3, 4, 5]));
        let (size, root) = head(&state).unwrap_or_else(|e| panic!("{e}"));
        assert!(state.sign(&acme, size, root, now).is_ok());
        assert_eq!(
            state.write_due(now, true).unwrap_or_else(|e| panic!("{e}")),
            1
        );

        // The same five events again, and more: fine.
        put(tree_of(&[1, 2, 3, 4, 5, 6]));
        let (size, root) = head(&state).unwrap_or_else(|e| panic!("{e}"));
        assert!(state.sign(&acme, size, root, now).is_ok());

        // A changed event 3, a longer tree, a shorter one, the same size
        // with another root: each refused, and nothing stored.
        let stored = state.stored(&acme).unwrap_or_else(|e| panic!("{e}"));
        for leaves in [
            &[1, 2, 9, 4, 5, 6, 7][..],
            &[1, 2, 3, 4, 5],
            &[1, 2, 3, 4, 5, 9],
        ] {
            put(tree_of(leaves));
            let (size, root) = head(&state).unwrap_or_else(|e| panic!("{e}"));
            match state.sign(&acme, size, root, now) {
                Err(Error::Corrupt(m)) => assert!(m.contains("never forks"), "{m}"),
                other => panic!("{leaves:?}: signed a fork: {other:?}"),
            }
            // (The tree of five is not due at all: its size was stored.)
            let wrote = state.write_due(now, true);
            assert!(matches!(wrote, Err(_) | Ok(0)), "{leaves:?}: {wrote:?}");
            assert_eq!(
                state.stored(&acme).unwrap_or_else(|e| panic!("{e}")),
                stored
            );
        }
    }
}
