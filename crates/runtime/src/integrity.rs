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

use crate::audit::{CHECKPOINT_DIR, StoredCheckpoint, epoch_of_origin, origin_in};

/// Most bytes of one stored checkpoint line (a signed note is at most
/// `NOTE_BYTES_MAX`, 16 KiB; keyledger writes about 300 bytes). A longer
/// line is damage, and is never read into memory whole.
pub const CHECKPOINT_LINE_BYTES_MAX: usize = 64 * 1024;

// Room for a whole note, JSON-escaped, in one line.
const _: () = assert!(CHECKPOINT_LINE_BYTES_MAX > 2 * keyledger_audit::checkpoint::NOTE_BYTES_MAX);

/// What the log is checked against: a tenant's tree of chain hashes.
pub trait Trees {
    /// The tenant's checkpoint epoch (1 until a `LogRecovered`).
    fn epoch(&self, tenant: &TenantId) -> u64;
    /// The tenant's number of events.
    fn size(&self, tenant: &TenantId) -> u64;
    /// The root of the tenant's first `size` events (`None` past its size).
    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash>;
}

/// Trees rebuilt from the store, with each tenant's epoch (`audit verify`).
#[derive(Default)]
struct Rebuilt(HashMap<TenantId, (Tree, u64)>);

impl Trees for Rebuilt {
    fn epoch(&self, tenant: &TenantId) -> u64 {
        self.0.get(tenant).map_or(1, |(_, epoch)| *epoch)
    }

    fn size(&self, tenant: &TenantId) -> u64 {
        self.0.get(tenant).map_or(0, |(tree, _)| tree.len())
    }

    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash> {
        match self.0.get(tenant) {
            Some((tree, _)) => tree.root(size).ok(),
            None => Tree::new().root(size).ok(),
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
    /// The tenant, as named by the file (`None`: the file is no tenant's).
    pub tenant: Option<TenantId>,
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

impl Problem {
    /// The tenant's name, or `(unknown)` for a file that is no tenant's.
    pub fn tenant_name(&self) -> String {
        self.tenant
            .as_ref()
            .map_or_else(|| "(unknown)".to_owned(), TenantId::to_string)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {} ({}): {}",
            self.tenant_name(),
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

/// The newest stored checkpoint of a file: its last complete line, read
/// from the file's end, so opening a data directory costs the same whatever
/// the files' length (a checkpoint a second is 9 GB a year). A torn last
/// line (a crash while it was appended: no newline at its end) is skipped
/// with a warning. Signatures are not checked here.
pub fn newest_checkpoint(path: &Path) -> Result<Option<StoredCheckpoint>, String> {
    use std::io::{Seek, SeekFrom};
    let Some(mut file) = open_checkpoints(path)? else {
        return Ok(None);
    };
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    // The last line and the one before it fit in this (a torn last line
    // is skipped, so the newest may be the second to last).
    let window = (2 * CHECKPOINT_LINE_BYTES_MAX) as u64;
    let start = len.saturating_sub(window);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(window).read_to_end(&mut tail))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let mut lines: Vec<&[u8]> = tail.split(|&b| b == b'\n').collect();
    // What follows the last newline: empty, or a torn line.
    if let Some(torn) = lines.pop()
        && !torn.is_empty()
    {
        tracing::warn!(
            file = %path.display(),
            "the last line of a checkpoint file is incomplete (a crash while it was \
             written); skipped"
        );
    }
    // The first piece may be the end of a line that began before the window.
    let whole_from = usize::from(start > 0);
    let Some(line) = lines
        .iter()
        .skip(whole_from)
        .rev()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
    else {
        return if start > 0 {
            Err(format!(
                "no line ends in its last {window} bytes: the file is damaged"
            ))
        } else {
            Ok(None)
        };
    };
    serde_json::from_slice::<StoredCheckpoint>(line)
        .map(Some)
        .map_err(|e| {
            format!("its newest line is not a stored checkpoint ({e}): the file is damaged")
        })
}

/// Opens a checkpoint file for reading, without following a link (`None`:
/// there is none, which holds no checkpoint).
fn open_checkpoints(path: &Path) -> Result<Option<std::fs::File>, String> {
    match crate::datadir::open_no_follow(std::fs::OpenOptions::new().read(true), path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot open it: {e}")),
    }
}

/// Calls `f` with every stored checkpoint of a file, in order, with its
/// line number, until `f` returns `false`. Lines that are not stored
/// checkpoints (a torn last line, damage) are skipped; a line over
/// [`CHECKPOINT_LINE_BYTES_MAX`] ends the reading (it is never held whole).
pub fn for_each_checkpoint(
    path: &Path,
    mut f: impl FnMut(usize, StoredCheckpoint) -> bool,
) -> Result<(), String> {
    use std::io::BufRead;
    let Some(file) = open_checkpoints(path)? else {
        return Ok(());
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(CHECKPOINT_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if read == 0 || (read == CHECKPOINT_LINE_BYTES_MAX && line.last() != Some(&b'\n')) {
            return Ok(());
        }
        if let Ok(c) = serde_json::from_slice::<StoredCheckpoint>(&line)
            && !f(n, c)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Opens a stored checkpoint: signed by `key` for `tenant`'s origin, and
/// its stored size is the signed size.
/// `line` is its line in the file, or 0 for the newest (read from the end).
pub fn open_stored(
    tenant: &TenantId,
    epoch: u64,
    line: usize,
    stored: &StoredCheckpoint,
    key: &VerifyingKey,
) -> Result<Signed, String> {
    let which = if line == 0 {
        "the newest checkpoint".to_owned()
    } else {
        format!("the checkpoint on line {line}")
    };
    let c = checkpoint::open(&stored.note, key).map_err(|e| {
        format!(
            "{which} is not signed by this data directory's audit key (audit-signing.key): it \
             comes from another data directory, or it was changed ({e})"
        )
    })?;
    // Under any base origin: `--audit-origin` may have changed since.
    if epoch_of_origin(tenant.as_str(), &c.origin) != Some(epoch) {
        let want = origin_in(tenant.as_str(), epoch);
        return Err(format!(
            "{which} is for `{}`, not `{want}` (under any origin)",
            c.origin
        ));
    }
    if c.size != stored.size {
        return Err(format!(
            "{which} is stored as size {} but signed for size {}",
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
            tenant: Some(tenant.clone()),
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
    let Some(newest) = newest_checkpoint(file).map_err(|e| problem(None, None, 0, e))? else {
        return Ok(None);
    };
    let signed =
        open_stored(tenant, epoch, 0, &newest, key).map_err(|e| problem(None, None, 0, e))?;
    // The largest checkpoint the log still agrees with, found by reading
    // the file once: roots are compared first, and only the best match's
    // signature is checked (one that fails counts as none: conservative).
    let agreed = || {
        let limit = log_size.min(signed.size);
        let mut best: Option<(usize, StoredCheckpoint)> = None;
        let _ = for_each_checkpoint(file, |n, c| {
            let root = checkpoint::parse_unverified(&c.note).ok().map(|cp| cp.root);
            if c.size <= limit
                && best.as_ref().is_none_or(|(_, b)| c.size > b.size)
                && root.is_some()
                && trees.root(tenant, c.size) == root
            {
                best = Some((n, c));
            }
            true
        });
        best.and_then(|(n, c)| open_stored(tenant, epoch, n, &c, key).ok())
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
        tenant: None,
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
    match checkpoint_files(dir) {
        Ok(files) => check_files(files, key, trees),
        Err(e) => Checked {
            problems: vec![stray(dir.join(CHECKPOINT_DIR), e)],
            ..Checked::default()
        },
    }
}

/// The checkpoints of a file not named for any tenant.
fn nameless(path: PathBuf) -> Problem {
    stray(
        path,
        "the file's name is no tenant's: it was not written by keyledger".into(),
    )
}

/// [`check_all`] over the files given (from [`checkpoint_files`]).
fn check_files(
    files: Vec<(Option<(TenantId, u64)>, PathBuf)>,
    key: &VerifyingKey,
    trees: &dyn Trees,
) -> Checked {
    let mut checked = Checked::default();
    for (named, path) in files {
        let Some((tenant, epoch)) = named else {
            checked.problems.push(nameless(path));
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
    crate::signing_key::read_key(dir)
        .map(|key| key.map(|k| k.verifying_key()))
        .map_err(|e| e.to_string())
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
///
/// The trees of the tenants in `fed` are built already from the records a
/// chain walk read (`chain::verify_tenant_seeing`): only what the walk did
/// not read is read here.
pub fn check_log(
    dir: &Path,
    log: &dyn keyledger_store::EventLog,
    only: Option<&TenantId>,
    mut fed: HashMap<TenantId, LogTree>,
) -> Result<Vec<TenantCheck>, String> {
    let files: Vec<_> = checkpoint_files(dir)?
        .into_iter()
        .filter(|(t, _)| only.is_none() || t.as_ref().map(|(t, _)| t) == only)
        .collect();
    let mut trees = Rebuilt::default();
    for (tenant, _) in files.iter().filter_map(|(named, _)| named.as_ref()) {
        if !trees.0.contains_key(tenant) {
            let tree = fed.remove(tenant).unwrap_or_default();
            trees.0.insert(tenant.clone(), tree.finish(log, tenant)?);
        }
    }
    let checked = match read_verifying_key(dir)? {
        Some(key) => check_files(files, &key, &trees),
        None => Checked {
            problems: files
                .into_iter()
                // A retired epoch's file is history: only current ones report.
                .filter(|(named, _)| named.as_ref().is_none_or(|(t, e)| *e >= trees.epoch(t)))
                .map(|(named, path)| match named {
                    None => nameless(path),
                    Some((tenant, _)) => Problem {
                        tenant: Some(tenant.clone()),
                        what: format!(
                            "{} is missing, so its checkpoints cannot be checked",
                            crate::audit::SIGNING_KEY_FILE
                        ),
                        log_size: trees.size(&tenant),
                        ..stray(path, String::new())
                    },
                })
                .collect(),
            ..Checked::default()
        },
    };
    let signed = checked.signed.into_iter().map(|(t, s)| TenantCheck {
        tenant: t.to_string(),
        outcome: Ok(Some(s)),
    });
    let problems = checked.problems.into_iter().map(|p| TenantCheck {
        tenant: p.tenant_name(),
        outcome: Err(p),
    });
    Ok(signed.chain(problems).collect())
}

/// A tenant's tree of stored chain hashes and its checkpoint epoch (from
/// its `LogRecovered` events), built from its stored records as they are
/// read, in order: fed the pages a chain walk reads ([`LogTree::feed`]),
/// it reads only the rest.
#[derive(Debug)]
pub struct LogTree {
    tree: Tree,
    epoch: u64,
    /// The sequence number of the last record fed (as stored).
    after: u64,
}

impl Default for LogTree {
    fn default() -> Self {
        LogTree {
            tree: Tree::new(),
            epoch: 1,
            after: 0,
        }
    }
}

impl LogTree {
    /// Adds the next page of the tenant's stored records.
    pub fn feed(&mut self, tenant: &TenantId, page: &[keyledger_store::RawRecord]) {
        for r in page {
            self.tree.push_leaf_hash(crate::audit::leaf_of(&r.hash));
            // A payload that does not decode is the chain check's to name.
            if let Ok(event) = keyledger_store::envelope::decode(tenant, &r.payload)
                && let keyledger_core::EventKind::LogRecovered(e) = &event.kind
            {
                self.epoch = e.epoch;
            }
        }
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
    }

    /// Reads the tenant's records after the last one fed, and the tree
    /// and epoch of all of them.
    fn finish(
        mut self,
        log: &dyn keyledger_store::EventLog,
        tenant: &TenantId,
    ) -> Result<(Tree, u64), String> {
        loop {
            let page = log
                .read_tenant_raw(
                    tenant,
                    self.after,
                    keyledger_store::chain::VERIFY_PAGE_EVENTS_MAX,
                )
                .map_err(|e| format!("reading tenant {tenant}: {e}"))?;
            if page.is_empty() {
                return Ok((self.tree, self.epoch));
            }
            self.feed(tenant, &page);
        }
    }
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
            return Err(crate::RecoveryRefused::NothingLost(tenant).into());
        };
        let (Some(signed_size), Some(signed_root)) = (problem.signed_size, problem.signed_root)
        else {
            return Err(crate::RecoveryRefused::NotSigned(Box::new(problem)).into());
        };
        let current = self.shared.audit_epoch(&tenant);
        if problem.epoch != current {
            return Err(crate::RecoveryRefused::EpochSigned(Box::new(problem)).into());
        }
        let epoch = current + 1;
        let recovery = keyledger_core::LogRecovered {
            epoch,
            old_origin: self.checkpoint_origin(&tenant),
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
            _ => Err(crate::Error::inconsistent(
                "the recovery was not recorded as one LogRecovered event",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(size: u64) -> String {
        let c = StoredCheckpoint {
            size,
            at: "2026-12-07T00:00:00Z".into(),
            note: format!("keyledger/acme\n{size}\nroot\n\n— sig\n"),
        };
        format!("{}\n", serde_json::to_string(&c).unwrap_or_default())
    }

    /// The newest checkpoint is read from the file's end, whatever its
    /// length; a torn last line is skipped; a damaged newest line or a
    /// tail without any line end is an error, never an older checkpoint
    /// passed off as the newest.
    #[test]
    fn the_newest_checkpoint_is_read_from_the_end_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("acme.jsonl");
        let newest = |text: &str| {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            newest_checkpoint(&path).map(|c| c.map(|c| c.size))
        };
        assert_eq!(newest(""), Ok(None));
        // 20,000 lines (several MB): only the tail is read.
        let many: String = (1..=20_000).map(line).collect();
        assert_eq!(newest(&many), Ok(Some(20_000)));
        // A torn last line: the one before is the newest.
        assert_eq!(
            newest(&format!("{many}{{\"size\":20001,\"at")),
            Ok(Some(20_000))
        );
        // A damaged newest line: refused, not skipped.
        let damaged = newest(&format!("{many}{{\"size\":20001,\"at\" garbage}}\n"));
        assert!(damaged.is_err_and(|e| e.contains("damaged")));
        // A tail with no line end at all (one huge line): refused.
        let huge = format!("{many}{}\n", "x".repeat(3 * CHECKPOINT_LINE_BYTES_MAX));
        assert!(newest(&huge).is_err());
        // Reading every line stops at an overlong one instead of holding it.
        std::fs::write(&path, &huge).unwrap_or_else(|e| panic!("{e}"));
        let mut seen = 0;
        for_each_checkpoint(&path, |_, _| {
            seen += 1;
            true
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, 20_000);
    }
}
