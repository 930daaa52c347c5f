//! The data directory: checked before anything in it is read or written,
//! so that another local user cannot steer what keyledger reads (the
//! operator token, the signing key, the log) or where it writes.
//!
//! [`prepare`] is the one entry: every command of the `keyledger` binary
//! and [`crate::Keyledger::open_with`] (for the audit directory) go
//! through it. It refuses, as OpenSSH's `StrictModes` does, a data
//! directory when
//!
//! * the directory, or any entry in it or in its `checkpoints/`, is owned
//!   by another user than the one running keyledger (effective uid);
//! * any of them is writable by group or others;
//! * `operator-token` or `audit-signing.key` is readable (or anything
//!   else) by group or others: they hold secrets;
//! * one of keyledger's own files (the log, its write-ahead log, the token,
//!   the keys, a checkpoint file) is a symbolic link;
//! * a directory above it is owned by another user than root or this user,
//!   or is writable by group or others without the sticky bit (whoever
//!   can write there can swap the whole data directory);
//! * a symbolic link on the given path belongs to another user than root
//!   or this user.
//!
//! A `--data` given as a symbolic link is resolved once, checked as the
//! real directory it names, and used by that real path from then on, so a
//! link changed later does not move a running process. Nothing is ever
//! chmod'ed: a new directory is made 0700, an existing one is refused or
//! accepted as it is. Files are then opened without following links
//! ([`keyledger_store::no_follow`]).
//!
//! It also names checkpoint files so that no tenant id can steer a path
//! ([`checkpoint_file_name`]), and renames the files of earlier versions.
//! See docs/operations.md, "The data directory's permissions".

use std::fmt;
use std::fs::{self, Metadata, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use keyledger_core::TenantId;

use crate::audit::{CHECKPOINT_DIR, PUBLIC_KEY_FILE, SIGNING_KEY_FILE};

pub use keyledger_store::no_follow::open as open_no_follow;

/// The operator token's file in the data directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";
/// The log file in the data directory.
pub const LOG_FILE: &str = "ledger.redb";
/// The log's write-ahead log, beside it.
pub const WAL_FILE: &str = "ledger.redb-wal";

/// keyledger's own files: a symbolic link in their place is refused.
const OWN_FILES: [&str; 6] = [
    crate::audit::GLOBAL_CHECKPOINT_FILE,
    LOG_FILE,
    WAL_FILE,
    OPERATOR_TOKEN_FILE,
    SIGNING_KEY_FILE,
    PUBLIC_KEY_FILE,
];
/// Files holding secrets: refused when group or others have any access.
const SECRET_FILES: [&str; 2] = [OPERATOR_TOKEN_FILE, SIGNING_KEY_FILE];

/// Why a data directory was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refusing the data directory {dir}: {problem}")]
pub struct DataDirError {
    /// The data directory, as given.
    pub dir: PathBuf,
    /// What is wrong, naming the path, and how to fix it.
    pub problem: Problem,
}

/// What is wrong with a data directory. Each names the path at fault and
/// says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The directory or an entry in it belongs to another user.
    OwnedByOther {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The running user (effective uid).
        user: u32,
    },
    /// The directory or an entry in it is writable by group or others.
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file holding a secret is open to group or others.
    SecretShared {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// One of keyledger's files is a symbolic link.
    Link {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link on the way to the directory belongs to another user.
    LinkOwnedByOther {
        /// The link.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// A directory above the data directory lets another user swap it.
    UnsafeParent {
        /// The directory above.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not a directory.
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A checkpoint file of an earlier version and its new name both exist.
    CheckpointNameClash {
        /// The earlier version's file.
        old: PathBuf,
        /// The file under its current name.
        new: PathBuf,
    },
    /// The directory or an entry could not be read, made or renamed.
    Io {
        /// The path.
        path: PathBuf,
        /// The OS's words.
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::OwnedByOther { path, owner, user } => write!(
                f,
                "{p} is owned by uid {owner}, not by the user running keyledger (uid {user}), \
                 who could then have keyledger read what they wrote; use a directory of your \
                 own, or `chown -R {user} {p}` if it is yours",
                p = path.display()
            ),
            Problem::Writable { path, mode } => write!(
                f,
                "{p} is writable by group or others (mode {mode:04o}), who could replace what \
                 keyledger reads; run `chmod go-w {p}`",
                p = path.display()
            ),
            Problem::SecretShared { path, mode } => write!(
                f,
                "{p} holds a secret and is open to group or others (mode {mode:04o}); run \
                 `chmod 600 {p}` (and replace the secret if someone else may have read it)",
                p = path.display()
            ),
            Problem::Link { path } => write!(
                f,
                "{p} is a symbolic link; keyledger does not follow links inside its data \
                 directory: replace the link with the file itself",
                p = path.display()
            ),
            Problem::LinkOwnedByOther { path, owner } => write!(
                f,
                "the symbolic link {p} on the way to it is owned by uid {owner}, who could \
                 point it elsewhere; give the real directory instead, or a link of your own",
                p = path.display()
            ),
            Problem::UnsafeParent { path, owner, mode } => write!(
                f,
                "the directory {p} above it (owner uid {owner}, mode {mode:04o}) lets another \
                 user rename or replace the data directory; it must belong to root or to you \
                 and not be writable by group or others (`chmod go-w {p}`) unless sticky (like \
                 /tmp), or move the data directory",
                p = path.display()
            ),
            Problem::NotADirectory { path } => {
                write!(f, "{} is not a directory", path.display())
            }
            Problem::CheckpointNameClash { old, new } => write!(
                f,
                "{o} (named by an earlier version) and {n} (its name now) both exist; append \
                 the first to the second (`cat {o} >> {n} && rm {o}`) and start again",
                o = old.display(),
                n = new.display()
            ),
            Problem::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

/// Makes the data directory if it does not exist (mode 0700), resolves
/// symbolic links, checks it (see the module's documentation), renames
/// checkpoint files an earlier version named, and returns the real path to
/// use from then on.
pub fn prepare(dir: &Path) -> Result<PathBuf, DataDirError> {
    let refuse = |problem| DataDirError {
        dir: dir.to_owned(),
        problem,
    };
    create_if_missing(dir).map_err(refuse)?;
    let real = fs::canonicalize(dir).map_err(|e| refuse(io_problem(dir, &e)))?;
    let user = effective_uid();
    check_links_on_the_way(dir, user).map_err(refuse)?;
    check_parents(&real, user).map_err(refuse)?;
    check(&real, user).map_err(refuse)?;
    rename_old_checkpoint_files(&real).map_err(refuse)?;
    Ok(real)
}

fn io_problem(path: &Path, e: &io::Error) -> Problem {
    Problem::Io {
        path: path.to_owned(),
        error: e.to_string(),
    }
}

/// The user keyledger runs as: the owner of the files it creates.
fn effective_uid() -> u32 {
    #[cfg(unix)]
    {
        rustix::process::geteuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        0
    }
}

fn create_if_missing(dir: &Path) -> Result<(), Problem> {
    match fs::symlink_metadata(dir) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_problem(dir, &e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_problem(parent, &e))?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // The umask can only take bits away: never more than 0700.
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => Ok(()),
        // Made meanwhile by someone else: checked like any existing one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_problem(dir, &e)),
    }
}

#[cfg(unix)]
fn owner_and_mode(meta: &Metadata) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    (meta.uid(), meta.mode() & 0o7777)
}

#[cfg(not(unix))]
fn owner_and_mode(_: &Metadata) -> (u32, u32) {
    (0, 0o700)
}

const GROUP_OTHER_WRITE: u32 = 0o022;
const GROUP_OTHER_ALL: u32 = 0o077;
const STICKY: u32 = 0o1000;

/// Every symbolic link among the given path's components belongs to root
/// or to `user`: another user's link could later point elsewhere.
fn check_links_on_the_way(dir: &Path, user: u32) -> Result<(), Problem> {
    let absolute = std::path::absolute(dir).map_err(|e| io_problem(dir, &e))?;
    let mut prefix = PathBuf::new();
    for part in absolute.components() {
        prefix.push(part);
        let meta = fs::symlink_metadata(&prefix).map_err(|e| io_problem(&prefix, &e))?;
        if meta.file_type().is_symlink() {
            let (owner, _) = owner_and_mode(&meta);
            if owner != user && owner != 0 {
                return Err(Problem::LinkOwnedByOther {
                    path: prefix,
                    owner,
                });
            }
        }
    }
    Ok(())
}

/// Every directory above `real` (a resolved path) belongs to root or to
/// `user`, and is not writable by group or others unless sticky.
fn check_parents(real: &Path, user: u32) -> Result<(), Problem> {
    for parent in real.ancestors().skip(1) {
        let meta = fs::metadata(parent).map_err(|e| io_problem(parent, &e))?;
        let (owner, mode) = owner_and_mode(&meta);
        let owner_ok = owner == user || owner == 0;
        let mode_ok = mode & GROUP_OTHER_WRITE == 0 || mode & STICKY != 0;
        if !(owner_ok && mode_ok) {
            return Err(Problem::UnsafeParent {
                path: parent.to_owned(),
                owner,
                mode,
            });
        }
    }
    Ok(())
}

/// Checks the directory `real` (resolved), every entry in it, and every
/// entry of its `checkpoints/`, for the running user `user`.
fn check(real: &Path, user: u32) -> Result<(), Problem> {
    let meta = fs::symlink_metadata(real).map_err(|e| io_problem(real, &e))?;
    if !meta.is_dir() {
        return Err(Problem::NotADirectory {
            path: real.to_owned(),
        });
    }
    check_entry(real, &meta, user, Kind::Plain)?;
    for (path, meta) in entries(real)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kind = if SECRET_FILES.contains(&name) {
            Kind::Secret
        } else if OWN_FILES.contains(&name) || name == CHECKPOINT_DIR {
            Kind::Own
        } else {
            Kind::Plain
        };
        check_entry(&path, &meta, user, kind)?;
        if name == CHECKPOINT_DIR && meta.is_dir() {
            for (path, meta) in entries(&path)? {
                check_entry(&path, &meta, user, Kind::Own)?;
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Anything: owned by the user, not writable by group or others.
    Plain,
    /// keyledger's own: not a symbolic link either.
    Own,
    /// Holding a secret: not open to group or others at all.
    Secret,
}

fn entries(dir: &Path) -> Result<Vec<(PathBuf, Metadata)>, Problem> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_problem(dir, &e))? {
        let path = entry.map_err(|e| io_problem(dir, &e))?.path();
        // `symlink_metadata`: a link is judged as a link, never followed.
        let meta = fs::symlink_metadata(&path).map_err(|e| io_problem(&path, &e))?;
        out.push((path, meta));
    }
    Ok(out)
}

fn check_entry(path: &Path, meta: &Metadata, user: u32, kind: Kind) -> Result<(), Problem> {
    let (owner, mode) = owner_and_mode(meta);
    let link = meta.file_type().is_symlink();
    if link && kind != Kind::Plain {
        return Err(Problem::Link {
            path: path.to_owned(),
        });
    }
    if owner != user {
        return Err(Problem::OwnedByOther {
            path: path.to_owned(),
            owner,
            user,
        });
    }
    // A link's own mode bits mean nothing (its target is what is opened).
    if link {
        return Ok(());
    }
    if mode & GROUP_OTHER_WRITE != 0 {
        return Err(Problem::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    if kind == Kind::Secret && mode & GROUP_OTHER_ALL != 0 {
        return Err(Problem::SecretShared {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Options to append to a file of the data directory, creating it
/// readable and writable by its owner only (0600). Open with
/// [`open_no_follow`].
pub fn append_private() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Options to replace a file of the data directory that anyone may read
/// (the public key, 0644). Open with [`open_no_follow`].
pub fn write_public() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o644);
    }
    options
}

/// Makes a directory inside the data directory, and any missing above it,
/// owner-only (0700): a loose umask must not leave one the next start
/// refuses.
pub fn create_dir_private(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The file name of a tenant's checkpoints: `[a-z0-9_-]` kept, every other
/// byte (upper-case letters, `.`, `%`, anything) as `%XX` with upper-case
/// hex digits, then `.jsonl`. Tenants that differ in any way get different
/// names, on a case-insensitive file system too (letters kept are lower
/// case, and hex digits are always upper case), and no tenant id can name
/// `.`, `..` or a path with a `/`. `ACME` is `%41%43%4D%45.jsonl`.
pub fn checkpoint_file_name(tenant: &str) -> String {
    let mut name = String::with_capacity(tenant.len() + 6);
    for b in tenant.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(".jsonl");
    name
}

/// Earlier versions named a tenant's checkpoints `<tenant>.jsonl`. Each such
/// file whose tenant is now named otherwise is renamed to
/// [`checkpoint_file_name`], before anything reads checkpoints. A file
/// whose new name exists as well is refused: which of the two is newer is
/// not known here, and neither may be lost.
fn rename_old_checkpoint_files(real: &Path) -> Result<(), Problem> {
    let dir = real.join(CHECKPOINT_DIR);
    let listing = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_problem(&dir, &e)),
    };
    let mut renamed = false;
    for entry in listing {
        let old = entry.map_err(|e| io_problem(&dir, &e))?.path();
        let Some(tenant) = old
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        // A current name holds `%` or only kept characters; an old name is
        // a tenant id, which never holds `%`.
        if tenant.parse::<TenantId>().is_err() {
            continue;
        }
        // A later checkpoint epoch's file (`<name>.epoch-<n>.jsonl`, see
        // `integrity::checkpoint_file_name_in`) reads like an old name of a
        // tenant with a `.`: its lines say which it is.
        if is_epoch_file(&old) {
            continue;
        }
        let new = dir.join(checkpoint_file_name(tenant));
        if new == old {
            continue;
        }
        if fs::symlink_metadata(&new).is_ok() {
            return Err(Problem::CheckpointNameClash { old, new });
        }
        fs::rename(&old, &new).map_err(|e| io_problem(&old, &e))?;
        tracing::info!(from = %old.display(), to = %new.display(), "renamed a checkpoint file");
        renamed = true;
    }
    if renamed {
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_problem(&dir, &e))?;
    }
    Ok(())
}

/// Whether `path` is named and signed as a checkpoint file of a later
/// epoch: its name parses as one and its first line is for that epoch's
/// origin.
fn is_epoch_file(path: &Path) -> bool {
    let Some((tenant, epoch)) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(crate::integrity::tenant_of_checkpoint_file)
    else {
        return false;
    };
    if epoch < 2 {
        return false;
    }
    let mut first_is_of_epoch = false;
    let _ = crate::integrity::for_each_checkpoint(path, |_, c| {
        let first_line = c.note.split('\n').next().unwrap_or_default();
        first_is_of_epoch =
            crate::audit::epoch_of_origin(tenant.as_str(), first_line) == Some(epoch);
        false
    });
    first_is_of_epoch
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn problem(dir: &Path) -> Problem {
        prepare(dir).unwrap_err().problem
    }

    #[test]
    fn checkpoint_names_keep_lower_case_and_encode_everything_else() {
        assert_eq!(checkpoint_file_name("acme"), "acme.jsonl");
        assert_eq!(checkpoint_file_name("ACME"), "%41%43%4D%45.jsonl");
        assert_eq!(checkpoint_file_name("a-b_9"), "a-b_9.jsonl");
        assert_eq!(checkpoint_file_name("."), "%2E.jsonl");
        assert_eq!(checkpoint_file_name(".."), "%2E%2E.jsonl");
        assert_eq!(checkpoint_file_name("a/b"), "a%2Fb.jsonl");
        assert_eq!(checkpoint_file_name("%41"), "%2541.jsonl");
        assert_eq!(checkpoint_file_name("é"), "%C3%A9.jsonl");
        // The longest tenant id, all upper case, stays within NAME_MAX (255).
        let longest = "Z".repeat(keyledger_core::limits::TENANT_ID_BYTES_MAX);
        assert!(checkpoint_file_name(&longest).len() <= 255);
    }

    #[test]
    fn checkpoint_names_differ_even_folded_to_one_case() {
        let tenants = [
            "acme", "ACME", "Acme", "aCME", ".", "..", "a.b", "a%2Eb", "A", "a", "%41", "_", "-",
        ];
        let mut folded = std::collections::HashSet::new();
        for t in tenants {
            let name = checkpoint_file_name(t);
            assert!(!name.contains('/'), "{name}");
            assert!(name != "." && name != "..");
            assert!(
                folded.insert(name.to_ascii_lowercase()),
                "{t} collides once case is folded"
            );
        }
    }

    #[test]
    fn a_new_directory_is_made_owner_only_and_an_existing_one_is_left_as_it_is() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/data");
        let real = prepare(&dir).unwrap();
        assert_eq!(real, fs::canonicalize(&dir).unwrap());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Readable by others is accepted, and not changed.
        chmod(&dir, 0o755);
        prepare(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn writable_by_group_or_others_is_refused_and_not_changed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        prepare(&dir).unwrap();
        for mode in [0o777, 0o770, 0o702] {
            chmod(&dir, mode);
            let p = problem(&dir);
            assert!(
                matches!(p, Problem::Writable { mode: m, .. } if m == mode),
                "{p}"
            );
            assert!(p.to_string().contains("chmod go-w"), "{p}");
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                mode
            );
        }
        chmod(&dir, 0o700);
        for (name, mode) in [("ledger.redb", 0o664), ("notes.txt", 0o646)] {
            let file = dir.join(name);
            fs::write(&file, "x").unwrap();
            chmod(&file, mode);
            let p = problem(&dir);
            assert_eq!(
                p,
                Problem::Writable {
                    path: fs::canonicalize(&file).unwrap(),
                    mode
                }
            );
            chmod(&file, 0o644);
        }
        prepare(&dir).unwrap();
        let checkpoints = dir.join(CHECKPOINT_DIR);
        fs::create_dir(&checkpoints).unwrap();
        chmod(&checkpoints, 0o775);
        assert!(matches!(problem(&dir), Problem::Writable { .. }));
        chmod(&checkpoints, 0o700);
        fs::write(checkpoints.join("acme.jsonl"), "").unwrap();
        chmod(&checkpoints.join("acme.jsonl"), 0o666);
        assert!(matches!(problem(&dir), Problem::Writable { .. }));
    }

    #[test]
    fn secrets_open_to_group_or_others_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        prepare(&dir).unwrap();
        for name in SECRET_FILES {
            let file = dir.join(name);
            fs::write(&file, "secret").unwrap();
            chmod(&file, 0o640);
            let p = problem(&dir);
            assert!(
                matches!(p, Problem::SecretShared { mode: 0o640, .. }),
                "{p}"
            );
            assert!(p.to_string().contains("chmod 600"), "{p}");
            chmod(&file, 0o600);
        }
        // The public key may be read by anyone.
        fs::write(dir.join(PUBLIC_KEY_FILE), "public").unwrap();
        chmod(&dir.join(PUBLIC_KEY_FILE), 0o644);
        prepare(&dir).unwrap();
    }

    #[test]
    fn links_in_place_of_keyledgers_files_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        prepare(&dir).unwrap();
        let elsewhere = base.path().join("elsewhere");
        fs::write(&elsewhere, "").unwrap();
        for name in OWN_FILES {
            std::os::unix::fs::symlink(&elsewhere, dir.join(name)).unwrap();
            let p = problem(&dir);
            assert!(
                matches!(&p, Problem::Link { path } if path.ends_with(name)),
                "{p}"
            );
            fs::remove_file(dir.join(name)).unwrap();
        }
        let checkpoints = dir.join(CHECKPOINT_DIR);
        fs::create_dir(&checkpoints).unwrap();
        std::os::unix::fs::symlink(&elsewhere, checkpoints.join("acme.jsonl")).unwrap();
        assert!(matches!(problem(&dir), Problem::Link { .. }));
        fs::remove_file(checkpoints.join("acme.jsonl")).unwrap();
        fs::remove_dir(&checkpoints).unwrap();
        std::os::unix::fs::symlink(base.path(), &checkpoints).unwrap();
        assert!(matches!(problem(&dir), Problem::Link { .. }));
        fs::remove_file(&checkpoints).unwrap();
        // A link of the user's own that keyledger never opens is fine.
        std::os::unix::fs::symlink(&elsewhere, dir.join("notes")).unwrap();
        prepare(&dir).unwrap();
    }

    #[test]
    fn a_linked_data_directory_is_checked_and_used_by_its_real_path() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(prepare(&link).unwrap(), fs::canonicalize(&real).unwrap());
        // The real directory is judged, and never chmod'ed through the link.
        chmod(&real, 0o777);
        let p = problem(&link);
        assert_eq!(
            p,
            Problem::Writable {
                path: fs::canonicalize(&real).unwrap(),
                mode: 0o777
            }
        );
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o7777,
            0o777
        );
    }

    #[test]
    fn a_parent_that_lets_others_swap_the_directory_is_refused_unless_sticky() {
        let base = tempfile::tempdir().unwrap();
        let parent = base.path().join("shared");
        let dir = parent.join("data");
        prepare(&dir).unwrap();
        chmod(&parent, 0o777);
        assert!(matches!(
            problem(&dir),
            Problem::UnsafeParent { mode: 0o777, .. }
        ));
        chmod(&parent, 0o1777);
        prepare(&dir).unwrap();
        chmod(&parent, 0o755);
        prepare(&dir).unwrap();
    }

    #[test]
    fn ownership_is_compared_with_the_running_user() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let real = prepare(&dir).unwrap();
        let meta = fs::metadata(&real).unwrap();
        let user = effective_uid();
        check_entry(&real, &meta, user, Kind::Plain).unwrap();
        let other = user.wrapping_add(1);
        let p = check_entry(&real, &meta, other, Kind::Plain).unwrap_err();
        assert_eq!(
            p,
            Problem::OwnedByOther {
                path: real.clone(),
                owner: user,
                user: other
            }
        );
        assert!(p.to_string().contains(&format!("chown -R {other}")), "{p}");
    }

    /// Only root can give a file away; run as root (CI containers are),
    /// this checks a real file of another user.
    #[test]
    fn a_directory_or_file_of_another_user_is_refused_and_not_changed() {
        if effective_uid() != 0 {
            return;
        }
        let nobody = 65_534;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        prepare(&dir).unwrap();
        let token = dir.join(OPERATOR_TOKEN_FILE);
        fs::write(&token, "theirs").unwrap();
        chmod(&token, 0o600);
        std::os::unix::fs::chown(&token, Some(nobody), None).unwrap();
        assert!(matches!(
            problem(&dir),
            Problem::OwnedByOther { owner: 65_534, .. }
        ));
        fs::remove_file(&token).unwrap();
        std::os::unix::fs::chown(&dir, Some(nobody), None).unwrap();
        chmod(&dir, 0o777);
        assert!(matches!(
            problem(&dir),
            Problem::OwnedByOther { owner: 65_534, .. }
        ));
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o777
        );
        // Another user's link on the way is refused too.
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        chmod(&dir, 0o700);
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(nobody), None).unwrap();
        assert!(matches!(
            problem(&link),
            Problem::LinkOwnedByOther { owner: 65_534, .. }
        ));
    }

    #[test]
    fn checkpoint_files_of_an_earlier_version_are_renamed_once() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        prepare(&dir).unwrap();
        let checkpoints = dir.join(CHECKPOINT_DIR);
        fs::create_dir(&checkpoints).unwrap();
        for (name, text) in [
            ("ACME.jsonl", "upper\n"),
            ("acme.jsonl", "lower\n"),
            ("a.b.jsonl", "dots\n"),
        ] {
            fs::write(checkpoints.join(name), text).unwrap();
        }
        prepare(&dir).unwrap();
        let read = |name: &str| fs::read_to_string(checkpoints.join(name)).unwrap();
        assert_eq!(read("%41%43%4D%45.jsonl"), "upper\n");
        assert_eq!(read("acme.jsonl"), "lower\n");
        assert_eq!(read("a%2Eb.jsonl"), "dots\n");
        assert!(!checkpoints.join("ACME.jsonl").exists());
        assert!(!checkpoints.join("a.b.jsonl").exists());
        // Again: nothing to do.
        prepare(&dir).unwrap();
        assert_eq!(read("%41%43%4D%45.jsonl"), "upper\n");
        // Both names: refused, neither touched.
        fs::write(checkpoints.join("ACME.jsonl"), "older\n").unwrap();
        let p = problem(&dir);
        assert!(matches!(p, Problem::CheckpointNameClash { .. }), "{p}");
        assert_eq!(read("ACME.jsonl"), "older\n");
        assert_eq!(read("%41%43%4D%45.jsonl"), "upper\n");
    }
}
