//! Opening a data directory's files without following symbolic links.
//!
//! A link where keyledger expects one of its own files would make it read
//! or write a file elsewhere (another user's, or one the link's maker
//! chose). Every file of the data directory is opened with `O_NOFOLLOW`,
//! so a link in the last component of the path is refused by the kernel,
//! at the moment of the open, with no window between a check and the use.
//! The directory itself is checked when it is opened (the runtime's
//! `datadir` module; docs/operations.md, "The data directory's
//! permissions").

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens `path` with `options`, refusing a symbolic link as its last
/// component: the error then names the path and says so. Sets the options'
/// custom flags (`O_NOFOLLOW` on Unix).
pub fn open(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOFOLLOW is a small positive flag on every Unix.
        let flag = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(i32::MAX);
        options.custom_flags(flag);
    }
    options.open(path).map_err(|e| explain(path, e))
}

/// Options to open a data file for reading and writing, creating it if
/// missing readable and writable by its owner only (0600), never truncating:
/// what the log file and its write-ahead log are opened with.
pub fn read_write_private() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// The error of an open that met a link (ELOOP on Linux, EMLINK on the
/// BSDs) says so and names the path; any other error is returned as is.
fn explain(path: &Path, e: io::Error) -> io::Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; keyledger does not follow links in its data directory \
                 (replace the link with the file itself)",
                path.display()
            ),
        )
    } else {
        e
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_refused_and_named_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs\n").unwrap();
        let link = dir.path().join("file");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open(OpenOptions::new().append(true).create(true), &link).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        // A dangling link is not created through either.
        std::fs::remove_file(&target).unwrap();
        let e = open(OpenOptions::new().write(true).create(true), &link).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(!target.exists());
        // A plain file opens.
        std::fs::write(dir.path().join("plain"), "ours\n").unwrap();
        assert!(open(OpenOptions::new().read(true), &dir.path().join("plain")).is_ok());
    }
}
