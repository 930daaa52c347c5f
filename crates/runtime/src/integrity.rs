//! The log checked against the signed checkpoints stored beside it.
//!
//! A signed checkpoint is a promise made to whoever saw it: "tenant T's log
//! held these `size` events, with this root". The log and the checkpoints
//! live in different files (`ledger.redb` and its write-ahead log;
//! `checkpoints/<tenant>.jsonl`), so damage to one is caught by the other.
//! At every open, after replay, and in `audit verify` and `replay`, the
//! newest stored checkpoint of every tenant must be
//!
//! * signed by this data directory's audit key, for the tenant's origin;
//! * covered by the log: the tenant holds at least `size` events;
//! * consistent with the log: the root of its first `size` events is the
//!   signed root.
//!
//! Anything else is a [`Problem`], and the runtime refuses to open: a log
//! that lost or changed what was signed is never served, and never signed
//! again under the same origin (a log never forks: C2SP tlog-checkpoint).
//! The way out is a backup, or `keyledger recover` (docs/operations.md).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use keyledger_audit::merkle::{Hash, Tree};
use keyledger_audit::{VerifyingKey, checkpoint};
use keyledger_core::TenantId;

use crate::audit::{CHECKPOINT_DIR, StoredCheckpoint, origin_in};

/// Most bytes of one tenant's checkpoint file read at open (a checkpoint
/// line is about 300 bytes: an hourly checkpoint for a century is 260 MB,
/// a debounced one per second for a year is 9 GB, so this is a bound on
/// damage, not on use).
pub const CHECKPOINT_FILE_BYTES_MAX: u64 = 1 << 33;

/// What the log is checked against: a tenant's tree of chain hashes.
pub trait Trees {
    /// The tenant's checkpoint epoch (1 until a `LogRecovered`).
    fn epoch(&self, tenant: &TenantId) -> u64;
    /// The tenant's number of events.
    fn size(&self, tenant: &TenantId) -> u64;
    /// The root of the tenant's first `size` events (`None` past its size).
    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash>;
}

/// One tenant's tree and epoch, rebuilt from the store (`audit verify`).
struct Rebuilt<'a> {
    tenant: &'a TenantId,
    tree: &'a Tree,
    epoch: u64,
}

impl Trees for Rebuilt<'_> {
    fn epoch(&self, tenant: &TenantId) -> u64 {
        if tenant == self.tenant { self.epoch } else { 1 }
    }

    fn size(&self, tenant: &TenantId) -> u64 {
        if tenant == self.tenant {
            self.tree.len()
        } else {
            0
        }
    }

    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash> {
        if tenant == self.tenant {
            self.tree.root(size).ok()
        } else {
            Tree::new().root(size).ok()
        }
    }
}

/// One stored checkpoint, its signature checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The checkpoint epoch it was signed in.
    pub epoch: u64,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The tree size.
    pub size: u64,
    /// The signed root.
    pub root: Hash,
    /// When it was signed (as stored).
    pub at: String,
}

/// What is wrong between the log and one tenant's stored checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The tenant (as named by the file).
    pub tenant: String,
    /// The checkpoint epoch of the file.
    pub epoch: u64,
    /// The checkpoint file.
    pub file: PathBuf,
    /// The newest signed checkpoint's size, when one could be read.
    pub signed_size: Option<u64>,
    /// The tenant's number of events in the log.
    pub log_size: u64,
    /// The first tenant sequence number that is missing or not as signed
    /// (for a changed log: the first one the stored checkpoints no longer
    /// vouch for), when known.
    pub first_bad: Option<u64>,
    /// The newest signed checkpoint's root, when one could be read.
    pub signed_root: Option<Hash>,
    /// How many of the log's events a stored checkpoint of the file still
    /// vouches for (the largest size whose root the log still has).
    pub agreed_size: u64,
    /// What is wrong, in words.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {} ({}): {}",
            self.tenant,
            self.file.display(),
            self.what
        )
    }
}

/// The advice printed under every list of problems.
pub const RECOVERY_ADVICE: &str = "Restore the data directory from a backup that covers these checkpoints (docs/operations.md, \"Restoring after \
     damage\"). With no such backup, `keyledger recover --tenant <tenant> --reason <why>` \
     starts a new checkpoint epoch whose first event records what was lost \
     (docs/operations.md, \"Recovering without a backup\").";

/// Joins problems into one message, with the advice.
pub fn describe(problems: &[Problem]) -> String {
    let mut out = String::from(
        "the log does not hold what its signed checkpoints say it held (a log must never \
         shrink or fork):",
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out.push_str("\nNothing was served or signed. ");
    out.push_str(RECOVERY_ADVICE);
    out
}

/// The file name of a tenant's checkpoints in checkpoint epoch `epoch`:
/// [`checkpoint_file_name`](crate::datadir::checkpoint_file_name) for the
/// first, `<name>.epoch-<n>.jsonl` after (an encoded tenant holds no `.`).
pub fn checkpoint_file_name_in(tenant: &str, epoch: u64) -> String {
    let name = crate::datadir::checkpoint_file_name(tenant);
    if epoch <= 1 {
        name
    } else {
        let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
        format!("{stem}.epoch-{epoch}.jsonl")
    }
}

/// The tenant and epoch a checkpoint file is for, from its name: the
/// inverse of [`checkpoint_file_name_in`] (`None`: no tenant's name).
pub fn tenant_of_checkpoint_file(name: &str) -> Option<(TenantId, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (encoded, epoch) = match stem.split_once(".epoch-") {
        Some((encoded, n)) => (encoded, n.parse::<u64>().ok().filter(|n| *n >= 2)?),
        None => (stem, 1),
    };
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&b, after)) = rest.split_first() {
        if b == b'%' {
            let hex = after.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = after.get(2..)?;
        } else {
            bytes.push(b);
            rest = after;
        }
    }
    let tenant: TenantId = String::from_utf8(bytes).ok()?.parse().ok()?;
    // One name per tenant and epoch: anything else was not written here.
    (checkpoint_file_name_in(tenant.as_str(), epoch) == name).then_some((tenant, epoch))
}

/// Every checkpoint file in `dir`'s checkpoint directory, with its tenant
/// and epoch (`None`: a `.jsonl` file whose name is no tenant's), sorted by
/// name.
#[allow(clippy::type_complexity)]
pub fn checkpoint_files(dir: &Path) -> Result<Vec<(Option<(TenantId, u64)>, PathBuf)>, String> {
    let cdir = dir.join(CHECKPOINT_DIR);
    let entries = match std::fs::read_dir(&cdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", cdir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", cdir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.ends_with(".jsonl") {
            continue;
        }
        out.push((tenant_of_checkpoint_file(name), entry.path()));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Reads a checkpoint file: every line a stored checkpoint, except a torn
/// last line (a crash while it was appended: no newline at its end), which
/// is skipped. Signatures are not checked here.
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<(usize, StoredCheckpoint)>, String> {
    let file = crate::datadir::open_no_follow(std::fs::OpenOptions::new().read(true), path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let mut text = String::new();
    file.take(CHECKPOINT_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > CHECKPOINT_FILE_BYTES_MAX {
        return Err(format!(
            "it is over {CHECKPOINT_FILE_BYTES_MAX} bytes: not a file keyledger wrote"
        ));
    }
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<StoredCheckpoint>(line) {
            Ok(c) => out.push((i + 1, c)),
            Err(_) if torn_tail && i + 1 == lines.len() => {
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    "the last line of a checkpoint file is incomplete (a crash while it was \
                     written); skipped"
                );
            }
            Err(e) => {
                return Err(format!(
                    "line {} is not a stored checkpoint ({e}): the file is damaged",
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// Opens a stored checkpoint: signed by `key` for `tenant`'s origin, and
/// its stored size is the signed size.
pub fn open_stored(
    tenant: &TenantId,
    epoch: u64,
    line: usize,
    stored: &StoredCheckpoint,
    key: &VerifyingKey,
) -> Result<Signed, String> {
    let c = checkpoint::open(&stored.note, key).map_err(|e| {
        format!(
            "the checkpoint on line {line} is not signed by this data directory's audit key \
             (audit-signing.key): it comes from another data directory, or it was changed ({e})"
        )
    })?;
    let want = origin_in(tenant.as_str(), epoch);
    if c.origin != want {
        return Err(format!(
            "the checkpoint on line {line} is for `{}`, not `{want}`",
            c.origin
        ));
    }
    if c.size != stored.size {
        return Err(format!(
            "the checkpoint on line {line} is stored as size {} but signed for size {}",
            stored.size, c.size
        ));
    }
    Ok(Signed {
        epoch,
        line,
        size: c.size,
        root: c.root,
        at: stored.at.clone(),
    })
}

/// Checks one tenant's newest stored checkpoint of epoch `epoch` against
/// the log. Returns it when all is well (`None`: the file holds none yet).
/// A file of an earlier epoch than the log's is history (a recovery
/// retired it) and is not compared; one of a later epoch means the log
/// lost its recovery and what followed.
pub fn check_tenant(
    tenant: &TenantId,
    epoch: u64,
    file: &Path,
    key: &VerifyingKey,
    trees: &dyn Trees,
) -> Result<Option<Signed>, Box<Problem>> {
    let log_size = trees.size(tenant);
    let log_epoch = trees.epoch(tenant);
    let problem = |signed: Option<&Signed>, first_bad, agreed_size, what: String| {
        Box::new(Problem {
            tenant: tenant.to_string(),
            epoch,
            file: file.to_owned(),
            signed_size: signed.map(|s| s.size),
            signed_root: signed.map(|s| s.root),
            log_size,
            first_bad,
            agreed_size,
            what,
        })
    };
    if epoch < log_epoch {
        return Ok(None);
    }
    let stored = read_checkpoint_file(file).map_err(|e| problem(None, None, 0, e))?;
    let Some((line, newest)) = stored.last() else {
        return Ok(None);
    };
    let signed =
        open_stored(tenant, epoch, *line, newest, key).map_err(|e| problem(None, None, 0, e))?;
    // The largest older checkpoint the log still agrees with.
    let agreed = || {
        stored
            .iter()
            .rev()
            .skip(1)
            .filter_map(|(line, c)| open_stored(tenant, epoch, *line, c, key).ok())
            .find(|c| {
                c.size <= log_size.min(signed.size) && trees.root(tenant, c.size) == Some(c.root)
            })
            .map_or(0, |c| c.size)
    };
    if epoch > log_epoch {
        return Err(problem(
            Some(&signed),
            Some(log_size + 1),
            0,
            format!(
                "a checkpoint of {} events was signed in checkpoint epoch {epoch}, but the log \
                 is in epoch {log_epoch} with {log_size} events: the log lost the recovery that \
                 started epoch {epoch} and what followed it",
                signed.size
            ),
        ));
    }
    if log_size < signed.size {
        return Err(problem(
            Some(&signed),
            Some(log_size + 1),
            agreed(),
            format!(
                "the checkpoint signed at {} covers {} events, but the log holds {log_size}: \
                 events {} to {} are missing",
                signed.at,
                signed.size,
                log_size + 1,
                signed.size
            ),
        ));
    }
    if trees.root(tenant, signed.size) == Some(signed.root) {
        return Ok(Some(signed));
    }
    // Changed, not shortened: the newest older checkpoint the log still
    // agrees with bounds where the change starts.
    let agreed = agreed();
    Err(problem(
        Some(&signed),
        Some(agreed + 1),
        agreed,
        format!(
            "the log's first {} events are not the ones the checkpoint signed at {} covers \
             (another root): the log was changed at or after event {}{}",
            signed.size,
            signed.at,
            agreed + 1,
            if agreed > 0 {
                format!(" (its first {agreed} events still match an older checkpoint)")
            } else {
                String::new()
            }
        ),
    ))
}

/// What [`check_all`] found.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    /// The newest signed checkpoint of each tenant that has one in its
    /// current epoch and whose log holds it.
    pub signed: HashMap<TenantId, Signed>,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

/// A problem with a file that is no tenant's, or the directory itself.
fn stray(file: PathBuf, what: String) -> Problem {
    Problem {
        tenant: "(unknown)".into(),
        epoch: 1,
        file,
        signed_size: None,
        signed_root: None,
        log_size: 0,
        first_bad: None,
        agreed_size: 0,
        what,
    }
}

/// Checks every tenant's newest stored checkpoint in `dir` against the log.
pub fn check_all(dir: &Path, key: &VerifyingKey, trees: &dyn Trees) -> Checked {
    let mut checked = Checked::default();
    let files = match checkpoint_files(dir) {
        Ok(f) => f,
        Err(e) => {
            checked.problems.push(stray(dir.join(CHECKPOINT_DIR), e));
            return checked;
        }
    };
    for (named, path) in files {
        let Some((tenant, epoch)) = named else {
            checked.problems.push(stray(
                path,
                "the file's name is no tenant's: it was not written by keyledger".into(),
            ));
            continue;
        };
        match check_tenant(&tenant, epoch, &path, key, trees) {
            Ok(Some(s)) => {
                checked.signed.insert(tenant, s);
            }
            Ok(None) => {}
            Err(p) => checked.problems.push(*p),
        }
    }
    checked
}

/// The public half of the data directory's audit signing key, read
/// without creating it (`None`: the directory has none yet).
pub fn read_verifying_key(dir: &Path) -> Result<Option<VerifyingKey>, String> {
    let path = dir.join(crate::audit::SIGNING_KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{} does not hold 64 hex digits", path.display()))?;
    Ok(Some(
        keyledger_audit::SigningKey::from_bytes(&seed).verifying_key(),
    ))
}

/// The outcome of checking one tenant's stored checkpoints against a log
/// read straight from the store (`audit verify`).
#[derive(Clone, Debug)]
pub struct TenantCheck {
    /// The tenant, as its file names it.
    pub tenant: String,
    /// The newest signed checkpoint when it holds (`None`: no checkpoint
    /// stored yet), or what is wrong.
    pub outcome: Result<Option<Signed>, Problem>,
}

/// Checks the stored checkpoints of every tenant (or of `only`) against
/// `log` read straight from the store, without replaying it: each tenant's
/// tree is rebuilt from its stored chain hashes, its epoch from its
/// `LogRecovered` events. For `audit verify`, which must work on a log
/// that cannot be replayed.
pub fn check_log(
    dir: &Path,
    log: &dyn keyledger_store::EventLog,
    only: Option<&TenantId>,
) -> Result<Vec<TenantCheck>, String> {
    let files = checkpoint_files(dir)?;
    let files: Vec<_> = files
        .into_iter()
        .filter(|(t, _)| only.is_none() || t.as_ref().map(|(t, _)| t) == only)
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let key = read_verifying_key(dir)?;
    let mut trees: HashMap<TenantId, (Tree, u64)> = HashMap::new();
    let mut out = Vec::new();
    for (named, path) in files {
        let Some((tenant, epoch)) = named else {
            out.push(TenantCheck {
                tenant: "(unknown)".into(),
                outcome: Err(stray(
                    path,
                    "the file's name is no tenant's: it was not written by keyledger".into(),
                )),
            });
            continue;
        };
        if !trees.contains_key(&tenant) {
            let rebuilt = rebuild(log, &tenant)?;
            trees.insert(tenant.clone(), rebuilt);
        }
        let Some((tree, log_epoch)) = trees.get(&tenant) else {
            continue;
        };
        let view = Rebuilt {
            tenant: &tenant,
            tree,
            epoch: *log_epoch,
        };
        let outcome = match &key {
            Some(key) => check_tenant(&tenant, epoch, &path, key, &view).map_err(|p| *p),
            None => Err(Problem {
                tenant: tenant.to_string(),
                what: format!(
                    "{} is missing, so its checkpoints cannot be checked",
                    crate::audit::SIGNING_KEY_FILE
                ),
                log_size: tree.len(),
                ..stray(path, String::new())
            }),
        };
        // A retired epoch's file is history: only the current one reports.
        if epoch < *log_epoch {
            continue;
        }
        out.push(TenantCheck {
            tenant: tenant.to_string(),
            outcome,
        });
    }
    Ok(out)
}

/// A tenant's tree of stored chain hashes and its checkpoint epoch, read
/// straight from the store.
fn rebuild(log: &dyn keyledger_store::EventLog, tenant: &TenantId) -> Result<(Tree, u64), String> {
    let mut tree = Tree::new();
    let mut epoch = 1;
    let mut after = 0;
    loop {
        let page = log
            .read_tenant_raw(
                tenant,
                after,
                keyledger_store::chain::VERIFY_PAGE_EVENTS_MAX,
            )
            .map_err(|e| format!("reading tenant {tenant}: {e}"))?;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        for r in &page {
            tree.push_leaf_hash(crate::audit::leaf_of(&r.hash));
            // A payload that does not decode is the chain check's to name.
            if let Ok(event) = keyledger_store::envelope::decode(tenant, &r.payload)
                && let keyledger_core::EventKind::LogRecovered(e) = &event.kind
            {
                epoch = e.epoch;
            }
        }
        after = last;
    }
    Ok((tree, epoch))
}

impl crate::Keyledger {
    /// What is wrong between the tenant's log and its stored checkpoints,
    /// for a ledger opened with [`Config::recovering`](crate::Config)
    /// (`None`: nothing, or not opened so).
    pub fn checkpoint_problem(&self, tenant: &TenantId) -> Option<Problem> {
        self.shared.audit.problem(tenant)
    }

    /// Records that the tenant's log lost (or changed) what its newest
    /// signed checkpoint covered, and starts a new checkpoint epoch: one
    /// `LogRecovered` event, stating the old origin, the signed size and
    /// root, the events the log holds and how many of them the old
    /// checkpoints still vouch for, and who decided and why. Checkpoints
    /// are then signed under the new origin only. Needs a ledger opened
    /// with [`Config::recovering`](crate::Config).
    pub async fn recover(
        &self,
        principal: keyledger_core::Principal,
        reason: String,
    ) -> Result<keyledger_core::LogRecovered, crate::Error> {
        let tenant = principal.tenant.clone();
        let Some(problem) = self.checkpoint_problem(&tenant) else {
            return Err(crate::Error::BadRequest(format!(
                "tenant {tenant}'s log holds its signed checkpoints: there is nothing to recover"
            )));
        };
        let (Some(signed_size), Some(signed_root)) = (problem.signed_size, problem.signed_root)
        else {
            return Err(crate::Error::BadRequest(format!(
                "{problem}; this is not a signed checkpoint of this log, so there is no loss to \
                 record: move the file aside (keep it: it is evidence) and start again"
            )));
        };
        let current = self.shared.audit_epoch(&tenant);
        if problem.epoch != current {
            return Err(crate::Error::BadRequest(format!(
                "{problem}; a recovery cannot start an epoch that was already signed in: restore \
                 the data directory from a backup (docs/operations.md, \"Restoring after damage\")"
            )));
        }
        let epoch = current + 1;
        let recovery = keyledger_core::LogRecovered {
            epoch,
            old_origin: crate::audit::origin_in(tenant.as_str(), problem.epoch),
            signed_size,
            signed_root,
            recovered_size: problem.log_size,
            agreed_size: problem.agreed_size,
            reason,
        };
        let records = self
            .execute(keyledger_core::Command::RecordRecovery {
                principal,
                recovery,
            })
            .await?;
        match records.first().map(|r| &r.event.kind) {
            Some(keyledger_core::EventKind::LogRecovered(e)) => Ok(e.clone()),
            _ => Err(crate::Error::Corrupt(
                "the recovery was not recorded as one LogRecovered event".into(),
            )),
        }
    }
}
