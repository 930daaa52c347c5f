//! The data directory's signing key: an Ed25519 key whose seed is kept in
//! [`SIGNING_KEY_FILE`] (mode 0600) and whose public half is published
//! beside it in [`PUBLIC_KEY_FILE`]. Checkpoints are signed with it
//! (`checkpoints.rs`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use keyledger_audit::{SigningKey, VerifyingKey};

use crate::Error;

/// The signing key's file in the audit directory (hex of the 32-byte seed, mode 0600).
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// The public key's file in the audit directory (base64 of 32 bytes).
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";

/// A public key as published: base64 of its 32 bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    b64(key.as_bytes())
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads the signing key of `dir` without creating it (`None`: there is
/// none yet). The file is opened without following a link.
pub fn read_key(dir: &Path) -> Result<Option<SigningKey>, Error> {
    let path = dir.join(SIGNING_KEY_FILE);
    let fail = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", path.display()), e);
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
                .ok_or_else(|| {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "not 64 hex digits");
                    fail("cannot read", e)
                })?;
            Ok(Some(SigningKey::from_bytes(&seed)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail("cannot read", e)),
    }
}

/// Loads the signing key from `dir`, creating it (mode 0600) and its public
/// key file on first use.
pub fn load_or_create_key(dir: &Path, entropy: &dyn crate::Entropy) -> Result<SigningKey, Error> {
    if let Some(key) = read_key(dir)? {
        return Ok(key);
    }
    let path = dir.join(SIGNING_KEY_FILE);
    let fail = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", path.display()), e);
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", e))?;
    let mut seed = [0u8; 32];
    entropy.fill(&mut seed).map_err(Error::unavailable)?;
    let key = SigningKey::from_bytes(&seed);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = crate::datadir::open_no_follow(&mut options, &path)
        .map_err(|e| fail("cannot create", e))?;
    file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("cannot write", e))?;
    let public = dir.join(PUBLIC_KEY_FILE);
    crate::datadir::open_no_follow(&mut crate::datadir::write_public(), &public)
        .and_then(|mut f| writeln!(f, "{}", b64(key.verifying_key().as_bytes())))
        .map_err(|e| fail("cannot write the public key beside", e))?;
    Ok(key)
}
