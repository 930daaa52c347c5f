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

use crate::audit::{CHECKPOINT_DIR, StoredCheckpoint, origin};

/// Most bytes of one tenant's checkpoint file read at open (a checkpoint
/// line is about 300 bytes: an hourly checkpoint for a century is 260 MB,
/// a debounced one per second for a year is 9 GB, so this is a bound on
/// damage, not on use).
pub const CHECKPOINT_FILE_BYTES_MAX: u64 = 1 << 33;

/// What the log is checked against: a tenant's tree of chain hashes.
pub trait Trees {
    /// The tenant's number of events.
    fn size(&self, tenant: &TenantId) -> u64;
    /// The root of the tenant's first `size` events (`None` past its size).
    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash>;
}

impl Trees for HashMap<TenantId, Tree> {
    fn size(&self, tenant: &TenantId) -> u64 {
        self.get(tenant).map_or(0, Tree::len)
    }

    fn root(&self, tenant: &TenantId, size: u64) -> Option<Hash> {
        match self.get(tenant) {
            Some(tree) => tree.root(size).ok(),
            None => Tree::new().root(size).ok(),
        }
    }
}

/// One stored checkpoint, its signature checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
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

/// The tenant a checkpoint file is for, from its name (`<tenant>.jsonl`).
pub fn tenant_of_checkpoint_file(name: &str) -> Option<TenantId> {
    name.strip_suffix(".jsonl")?.parse().ok()
}

/// Every checkpoint file in `dir`'s checkpoint directory, with its tenant
/// (`None`: a `.jsonl` file whose name is no tenant's), sorted by name.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<(Option<TenantId>, PathBuf)>, String> {
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
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
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
    let want = origin(tenant.as_str());
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
        line,
        size: c.size,
        root: c.root,
        at: stored.at.clone(),
    })
}

/// Checks one tenant's newest stored checkpoint against the log. Returns
/// the newest signed checkpoint when all is well (`None`: the file holds
/// none yet).
pub fn check_tenant(
    tenant: &TenantId,
    file: &Path,
    key: &VerifyingKey,
    trees: &dyn Trees,
) -> Result<Option<Signed>, Problem> {
    let log_size = trees.size(tenant);
    let problem = |signed_size, first_bad, what: String| Problem {
        tenant: tenant.to_string(),
        file: file.to_owned(),
        signed_size,
        log_size,
        first_bad,
        what,
    };
    let stored = read_checkpoint_file(file).map_err(|e| problem(None, None, e))?;
    let Some((line, newest)) = stored.last() else {
        return Ok(None);
    };
    let signed =
        open_stored(tenant, *line, newest, key).map_err(|e| problem(Some(newest.size), None, e))?;
    if log_size < signed.size {
        return Err(problem(
            Some(signed.size),
            Some(log_size + 1),
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
    let agreed = stored
        .iter()
        .rev()
        .skip(1)
        .filter_map(|(line, c)| open_stored(tenant, *line, c, key).ok())
        .find(|c| c.size <= signed.size && trees.root(tenant, c.size) == Some(c.root))
        .map_or(0, |c| c.size);
    Err(problem(
        Some(signed.size),
        Some(agreed + 1),
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

/// Checks every tenant's newest stored checkpoint in `dir` against the log.
/// Returns the newest signed checkpoint of each tenant that has one, or
/// every problem found.
pub fn check_all(
    dir: &Path,
    key: &VerifyingKey,
    trees: &dyn Trees,
) -> Result<HashMap<TenantId, Signed>, Vec<Problem>> {
    let files = checkpoint_files(dir).map_err(|e| {
        vec![Problem {
            tenant: "(all)".into(),
            file: dir.join(CHECKPOINT_DIR),
            signed_size: None,
            log_size: 0,
            first_bad: None,
            what: e,
        }]
    })?;
    let mut signed = HashMap::new();
    let mut problems = Vec::new();
    for (tenant, path) in files {
        let Some(tenant) = tenant else {
            problems.push(Problem {
                tenant: "(unknown)".into(),
                file: path,
                signed_size: None,
                log_size: 0,
                first_bad: None,
                what: "the file's name is no tenant's: it was not written by keyledger".into(),
            });
            continue;
        };
        match check_tenant(&tenant, &path, key, trees) {
            Ok(Some(s)) => {
                signed.insert(tenant, s);
            }
            Ok(None) => {}
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(signed)
    } else {
        Err(problems)
    }
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
/// tree is rebuilt from its stored chain hashes. For `audit verify`, which
/// must work on a log that cannot be replayed.
pub fn check_log(
    dir: &Path,
    log: &dyn keyledger_store::EventLog,
    only: Option<&TenantId>,
) -> Result<Vec<TenantCheck>, String> {
    let files = checkpoint_files(dir)?;
    let files: Vec<_> = files
        .into_iter()
        .filter(|(t, _)| only.is_none() || t.as_ref() == only)
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let key = read_verifying_key(dir)?;
    let mut out = Vec::new();
    for (tenant, path) in files {
        let Some(tenant) = tenant else {
            out.push(TenantCheck {
                tenant: "(unknown)".into(),
                outcome: Err(Problem {
                    tenant: "(unknown)".into(),
                    file: path,
                    signed_size: None,
                    log_size: 0,
                    first_bad: None,
                    what: "the file's name is no tenant's: it was not written by keyledger".into(),
                }),
            });
            continue;
        };
        let mut tree = Tree::new();
        let mut after = 0;
        loop {
            let page = log
                .read_tenant_raw(
                    &tenant,
                    after,
                    keyledger_store::chain::VERIFY_PAGE_EVENTS_MAX,
                )
                .map_err(|e| format!("reading tenant {tenant}: {e}"))?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            for r in &page {
                tree.push_leaf_hash(crate::audit::leaf_of(&r.hash));
            }
            after = last;
        }
        let outcome = match &key {
            Some(key) => {
                let trees = HashMap::from([(tenant.clone(), tree)]);
                check_tenant(&tenant, &path, key, &trees)
            }
            None => Err(Problem {
                tenant: tenant.to_string(),
                file: path,
                signed_size: None,
                log_size: tree.len(),
                first_bad: None,
                what: format!(
                    "{} is missing, so its checkpoints cannot be checked",
                    crate::audit::SIGNING_KEY_FILE
                ),
            }),
        };
        out.push(TenantCheck {
            tenant: tenant.to_string(),
            outcome,
        });
    }
    Ok(out)
}
