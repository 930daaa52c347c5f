//! Signed checkpoints: C2SP signed notes (`keyledger/<tenant>`, size,
//! root, `time <RFC 3339>`), signed with the data directory's Ed25519 key
//! (`signing_key.rs`). They are appended to `<dir>/checkpoints/<tenant>.jsonl`
//! (the name encoded by [`crate::datadir::checkpoint_file_name`]) when a
//! tenant's tree has grown (at most once per
//! [`AuditConfig::checkpoint_debounce`]) and at least every
//! [`AuditConfig::checkpoint_interval`] when idle. Nothing is signed that
//! does not extend the largest checkpoint signed before.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use keyledger_audit::checkpoint::Checkpoint;
use keyledger_audit::merkle::Hash;
use keyledger_audit::origin::{LEGACY_BASE, epoch_of_origin, tenant_origin};
use keyledger_audit::{SigningKey, VerifyingKey};
use keyledger_core::{TenantId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::trees::{AuditState, LastCheckpoints, Replayed, proof_error};
use crate::{Error, Keyledger, Shared};

/// The directory of stored checkpoints, one JSON Lines file per tenant.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// Where and how often checkpoints are written.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The directory holding the signing key and the checkpoints (the data directory).
    pub dir: PathBuf,
    /// A checkpoint is written for every tenant at least this often, grown or not.
    pub checkpoint_interval: Duration,
    /// A grown tree is checkpointed at most this often.
    pub checkpoint_debounce: Duration,
    /// The base origin checkpoints are signed under (a schema-less URL:
    /// `keyledger_audit::origin`); [`LEGACY_BASE`] unless configured.
    pub origin: String,
}

impl AuditConfig {
    /// Hourly checkpoints, debounced by a second, in `dir`, under the
    /// legacy base origin `keyledger`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        AuditConfig {
            dir: dir.into(),
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_debounce: Duration::from_secs(1),
            origin: LEGACY_BASE.to_owned(),
        }
    }
}

impl AuditConfig {
    /// Whether a tree of `size` is due a stored checkpoint, `last` being
    /// the size and instant of the last one stored: none yet, grown since,
    /// or (unless `force`, at shutdown) older than the interval.
    pub(crate) fn due(
        &self,
        last: Option<(u64, Timestamp)>,
        size: u64,
        now: Timestamp,
        force: bool,
    ) -> bool {
        match last {
            None => true,
            Some((last_size, _)) if last_size != size => true,
            Some((_, when)) => {
                let interval =
                    i64::try_from(self.checkpoint_interval.as_micros()).unwrap_or(i64::MAX);
                !force && now.as_micros().saturating_sub(when.as_micros()) >= interval
            }
        }
    }
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

pub(crate) struct Signer {
    pub(crate) key: SigningKey,
    pub(crate) config: AuditConfig,
}

impl AuditState {
    pub(crate) fn signer(&self) -> Result<&Signer, Error> {
        self.signer.as_ref().ok_or_else(|| {
            Error::unavailable("audit signing is not configured (no data directory)")
        })
    }

    /// Signs the tenant's tree of `size` events with root `root`, unless
    /// that would contradict a checkpoint signed before: the tree must
    /// extend the largest one signed (the same root at that size, and no
    /// smaller size). A log never forks (C2SP tlog-checkpoint), whatever
    /// happened to the log or the trees.
    pub(crate) fn sign(
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
            return Err(Error::inconsistent(format!(
                "refusing to sign a checkpoint for tenant {tenant}: {problem}"
            )));
        }
        let mut last = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        let known = last.get(tenant).copied();
        if let Some(LastCheckpoints {
            epoch: last_epoch, ..
        }) = known
            && last_epoch > epoch
        {
            return Err(Error::inconsistent(format!(
                "refusing to sign a checkpoint for tenant {tenant} in epoch {epoch}: one was \
                 signed in epoch {last_epoch} (a log never forks)"
            )));
        }
        if let Some(LastCheckpoints {
            epoch: last_epoch,
            signed: (last_size, last_root),
            ..
        }) = known
            && last_epoch == epoch
        {
            let (prefix, whole) =
                self.with_tree(tenant, |t| Ok((t.root(last_size).ok(), t.root(size).ok())))?;
            let extends = size >= last_size
                && prefix == Some(last_root)
                && whole == Some(root)
                && (size > last_size || root == last_root);
            if !extends {
                return Err(Error::inconsistent(format!(
                    "refusing to sign a checkpoint of {size} events for tenant {tenant}: it does \
                     not extend the checkpoint of {last_size} events signed before (a log never \
                     forks)"
                )));
            }
        }
        let checkpoint = Checkpoint {
            origin: tenant_origin(&signer.config.origin, tenant.as_str(), epoch),
            size,
            root,
            extensions: vec![format!("time {}", now.to_rfc3339())],
        };
        let note = checkpoint.sign(&signer.key);
        // A new epoch's first checkpoint: nothing of it is stored yet.
        let written = known.filter(|k| k.epoch == epoch).and_then(|k| k.written);
        last.insert(
            tenant.clone(),
            LastCheckpoints {
                epoch,
                signed: (size, root),
                written,
            },
        );
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
            return Err(Error::inconsistent(crate::integrity::describe(
                &checked.problems,
            )));
        }
        let mut last = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, s) in checked.signed {
            let at = Timestamp::parse_rfc3339(&s.at).unwrap_or(Timestamp::EPOCH);
            last.insert(
                tenant,
                LastCheckpoints {
                    epoch: s.epoch,
                    signed: (s.size, s.root),
                    written: Some((s.size, at)),
                },
            );
        }
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        for p in checked.problems {
            if let Some(tenant) = p.tenant.clone() {
                blocked.insert(tenant, (p.epoch, p));
            }
        }
        drop(blocked);
        drop(last);
        self.check_global(recovering)
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
    pub(crate) fn checkpoint_path(&self, tenant: &TenantId) -> Result<PathBuf, Error> {
        Ok(self.signer()?.config.dir.join(CHECKPOINT_DIR).join(
            crate::integrity::checkpoint_file_name_in(tenant.as_str(), self.epoch(tenant)),
        ))
    }

    /// Every stored checkpoint of a tenant in its current epoch, oldest first.
    fn stored(&self, tenant: &TenantId) -> Result<Vec<StoredCheckpoint>, Error> {
        let path = self.checkpoint_path(tenant)?;
        let mut out = Vec::new();
        // Another tenant's lines are skipped: on a case-insensitive file
        // system, earlier versions kept `ACME` and `acme` in one file. A
        // torn last line (a crash mid-write) is skipped, not fatal.
        let epoch = self.epoch(tenant);
        crate::integrity::for_each_checkpoint(&path, |_, c| {
            let first_line = c.note.split('\n').next().unwrap_or_default();
            if epoch_of_origin(tenant.as_str(), first_line) == Some(epoch) {
                out.push(c);
            }
            true
        })
        .map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))?;
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
            let last = self.last_written(&tenant, epoch)?;
            let due = signer.config.due(last, size, now, force);
            if !due {
                self.note_written(&tenant, epoch, last.unwrap_or((size, now)));
                continue;
            }
            let signed = match self.sign(&tenant, size, root, now) {
                Ok(s) => s,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            self.append_stored(
                &tenant,
                &StoredCheckpoint {
                    size,
                    at: now.to_rfc3339(),
                    note: signed.note.clone(),
                },
            )?;
            // Off this thread: each witness has its own (`witness.rs`).
            self.witnessing.submit(
                &crate::witness::WitnessedLog::Tenant(tenant.clone()),
                &signed.checkpoint,
                &signed.note,
            );
            self.note_written(&tenant, epoch, (size, now));
            written += 1;
        }
        // The global tree, on the same interval (not counted: the count is
        // of tenants); its failure does not hold back the tenants'.
        if let Err(e) = self.write_global_due(now, force) {
            failed.get_or_insert(e);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Remembers the size and instant of the tenant's last stored
    /// checkpoint in `epoch`: kept only beside the largest one signed in
    /// that epoch (without it, [`AuditState::last_written`] reads the file).
    fn note_written(&self, tenant: &TenantId, epoch: u64, written: (u64, Timestamp)) {
        let mut last = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = last.get_mut(tenant).filter(|k| k.epoch == epoch) {
            k.written = Some(written);
        }
    }

    /// The size and instant of the tenant's last stored checkpoint in
    /// `epoch`: as this process remembers it, else from its file.
    fn last_written(
        &self,
        tenant: &TenantId,
        epoch: u64,
    ) -> Result<Option<(u64, Timestamp)>, Error> {
        let known = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .filter(|k| k.epoch == epoch)
            .and_then(|k| k.written);
        if known.is_some() {
            return Ok(known);
        }
        // Only the file's end is read: it may be gigabytes long.
        let path = self.checkpoint_path(tenant)?;
        let newest = crate::integrity::newest_checkpoint(&path)
            .map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))?;
        Ok(newest.map(|c| {
            let at = Timestamp::parse_rfc3339(&c.at).unwrap_or(Timestamp::EPOCH);
            (c.size, at)
        }))
    }

    /// Appends one line to the tenant's checkpoint file, durably.
    fn append_stored(&self, tenant: &TenantId, stored: &StoredCheckpoint) -> Result<(), Error> {
        append_line(&self.checkpoint_path(tenant)?, stored)
    }
}

/// Appends one stored checkpoint to a checkpoint file, durably.
pub(crate) fn append_line(path: &std::path::Path, stored: &StoredCheckpoint) -> Result<(), Error> {
    let line = serde_json::to_string(stored).map_err(|e| Error::unavailable(e.to_string()))?;
    let io = |e: std::io::Error| Error::io(path.display().to_string(), e);
    if let Some(dir) = path.parent() {
        crate::datadir::create_dir_private(dir).map_err(io)?;
    }
    let mut file =
        crate::datadir::open_no_follow(&mut crate::datadir::append_private(), path).map_err(io)?;
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io)
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

impl Keyledger {
    /// The origin the tenant's checkpoints are signed under now (it changes
    /// with each `keyledger recover`: [`tenant_origin`]).
    pub fn checkpoint_origin(&self, tenant: &TenantId) -> String {
        let base = self
            .shared
            .audit
            .signer
            .as_ref()
            .map_or(LEGACY_BASE, |s| &s.config.origin);
        tenant_origin(base, tenant.as_str(), self.shared.audit.epoch(tenant))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trees::{TenantTree, leaf_of};

    fn tree_of(leaves: &[u8]) -> TenantTree {
        let mut tree = TenantTree::default();
        for &b in leaves {
            tree.tree.push(leaf_of(&[b; 32]), None);
        }
        TenantTree {
            head: [0; 32],
            ..tree
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
                Err(e @ Error::Corrupt(crate::Damage::Inconsistent(_))) => {
                    assert!(e.to_string().contains("never forks"), "{e}")
                }
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
