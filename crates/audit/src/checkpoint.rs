//! Signed checkpoints in the C2SP formats: a [tlog checkpoint] (origin,
//! tree size, base64 root hash, optional extension lines) as the text of a
//! [signed note], signed with Ed25519.
//!
//! ```text
//! keyledger/acme
//! 42
//! 8nT4mJ…base64 root…=
//! time 2026-11-23T09:47:26.000000Z
//!
//! — keyledger/acme 3q2+7wL…base64(key ID || signature)…
//! ```
//!
//! The key ID is `SHA-256(key name || 0x0A || 0x01 || public key)[:4]`
//! and the key name is the origin, as the specifications recommend.
//! Verification uses `verify_strict` (no malleable or small-order
//! signatures) and treats the note as untrusted text.
//!
//! [tlog checkpoint]: https://c2sp.org/tlog-checkpoint
//! [signed note]: https://c2sp.org/signed-note

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature type byte of Ed25519 in signed notes.
pub const ED25519_TYPE: u8 = 0x01;
/// Longest note a verifier reads, in bytes.
pub const NOTE_BYTES_MAX: usize = 16 * 1024;
/// Most signature lines a verifier reads (C2SP signed-note asks verifiers to
/// accept at least 16).
pub const NOTE_SIGNATURES_MAX: usize = 16;

/// The body of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `keyledger/acme`. Also the key name.
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// The RFC 6962 root of the tree of `size` leaves.
    pub root: Hash,
    /// Extension lines (keyledger writes one: `time <RFC 3339>`).
    pub extensions: Vec<String>,
}

/// Why a note is not a valid checkpoint signed by the expected key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a signed note, or its text is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// A signature by the expected key is present but does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// No signature line is by the expected key (name and key ID).
    #[error("no signature by the expected key {0}")]
    NoKnownSignature(String),
}

fn malformed(s: impl Into<String>) -> NoteError {
    NoteError::Malformed(s.into())
}

impl Checkpoint {
    /// The note text: origin, size, root, extensions, each ending in a newline.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Reads a note text (without signatures).
    pub fn parse_text(text: &str) -> Result<Self, NoteError> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("the origin line is empty"));
        }
        let size_line = lines.next().ok_or_else(|| malformed("no tree size line"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(malformed(format!(
                "tree size `{size_line}` is not a decimal number"
            )));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| malformed(format!("tree size `{size_line}` is too large")))?;
        let root_line = lines.next().ok_or_else(|| malformed("no root hash line"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("the root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("an extension line is empty"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The value of the extension line `<name> <value>`, if present.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find_map(|e| e.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
    }

    /// Signs the checkpoint: the whole signed note, with `key`'s
    /// signature under the key name `origin`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let text = self.text();
        let signature = key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&key_id(&self.origin, &key.verifying_key()));
        blob.extend_from_slice(&signature.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }
}

/// The note key ID: `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    key_id_of_type(name, ED25519_TYPE, key)
}

/// A key ID of signature type `kind`: `SHA-256(name || 0x0A || kind || key)[:4]`.
pub(crate) fn key_id_of_type(name: &str, kind: u8, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind]);
    h.update(key.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key string of the note ecosystem:
/// `<name>+<hex key ID>+<base64(0x01 || public key)>`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut blob = vec![ED25519_TYPE];
    blob.extend_from_slice(key.as_bytes());
    let id = key_id(name, key);
    format!(
        "{name}+{:02x}{:02x}{:02x}{:02x}+{}",
        id[0],
        id[1],
        id[2],
        id[3],
        B64.encode(blob)
    )
}

/// Reads a public key: the base64 of the 32 bytes, their hex, or a note
/// verifier key (`name+keyid+base64(0x01 || key)`).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, NoteError> {
    let s = s.trim();
    let raw_b64 = B64.decode(s).ok().filter(|b| b.len() == 32);
    let bytes: Vec<u8> = if let Some(b) = raw_b64 {
        b
    } else if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("the public key is not hex"))?
    } else {
        // A verifier key: the name holds no `+`, so split at the first two.
        let mut parts = s.splitn(3, '+');
        let (Some(_name), Some(_id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed(
                "a public key is base64 or hex of 32 bytes, or name+keyid+key",
            ));
        };
        let raw = B64
            .decode(b64)
            .map_err(|_| malformed("the verifier key is not base64"))?;
        match raw.split_first() {
            Some((&ED25519_TYPE, key)) => key.to_vec(),
            _ => return Err(malformed("the verifier key is not an Ed25519 key")),
        }
    };
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| malformed("an Ed25519 public key is 32 bytes"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| malformed("not a valid Ed25519 public key"))
}

/// Checks a signed note and returns its checkpoint.
///
/// Follows the signed-note rules: valid UTF-8, no control characters but
/// newline, the text separated from the signatures by the last blank line;
/// signatures by unknown keys are ignored; a signature by the expected key
/// (key name = the checkpoint's origin, matching key ID) must verify with
/// `verify_strict`, and at least one must be present.
pub fn open(note: &str, key: &VerifyingKey) -> Result<Checkpoint, NoteError> {
    let (checkpoint, text, sigs) = split_note(note)?;
    let sigs = sigs
        .strip_suffix('\n')
        .ok_or_else(|| malformed("the signatures do not end in a newline"))?;
    let id = key_id(&checkpoint.origin, key);
    let mut lines = 0;
    let mut verified = false;
    for line in sigs.split('\n') {
        lines += 1;
        if lines > NOTE_SIGNATURES_MAX {
            return Err(malformed(format!(
                "more than {NOTE_SIGNATURES_MAX} signatures"
            )));
        }
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| malformed("a signature line does not start with an em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| malformed("a signature line has no signature"))?;
        let blob = B64
            .decode(b64)
            .map_err(|_| malformed("a signature is not base64"))?;
        if blob.len() < 4 {
            return Err(malformed("a signature is shorter than its key ID"));
        }
        if name != checkpoint.origin || blob[..4] != id {
            continue;
        }
        let signature = Signature::from_slice(&blob[4..])
            .map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        key.verify_strict(text.as_bytes(), &signature)
            .map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        verified = true;
    }
    if verified {
        Ok(checkpoint)
    } else {
        Err(NoteError::NoKnownSignature(checkpoint.origin))
    }
}

/// The checkpoint a note states, its signatures NOT checked: for comparing
/// roots before paying for a signature check ([`open`] checks it).
pub fn parse_unverified(note: &str) -> Result<Checkpoint, NoteError> {
    split_note(note).map(|(checkpoint, ..)| checkpoint)
}

/// A note's checkpoint (parsed), its text (what is signed) and its
/// signature lines.
pub(crate) fn split_note(note: &str) -> Result<(Checkpoint, &str, &str), NoteError> {
    if note.len() > NOTE_BYTES_MAX {
        return Err(malformed(format!("longer than {NOTE_BYTES_MAX} bytes")));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("holds a control character"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| malformed("no blank line between text and signatures"))?;
    let text = &note[..=split];
    let sigs = &note[split + 2..];
    Ok((Checkpoint::parse_text(text)?, text, sigs))
}
