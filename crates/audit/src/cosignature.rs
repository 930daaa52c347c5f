//! Witness cosignatures in the C2SP [tlog-cosignature] format (Ed25519,
//! `cosignature/v1`, with a timestamp), and a "k of n witnesses" policy.
//!
//! A cosignature is a note signature line on a checkpoint:
//!
//! ```text
//! — witness.example/w1 base64(key ID || u64 timestamp || Ed25519 signature)
//! ```
//!
//! where the key ID is `SHA-256(name || 0x0A || 0x04 || public key)[:4]`
//! and the signed message is `cosignature/v1\ntime <timestamp>\n` followed
//! by the checkpoint's whole note text (extension lines included). A
//! witness is named to a verifier by its verifier key,
//! `<name>+<hex key ID>+<base64(0x04 || public key)>`.
//!
//! Pure: no clock. The timestamp is what the witness signed; this module
//! checks it is below 2^63 and reports it, and leaves "not in the future"
//! to the caller.
//!
//! [tlog-cosignature]: https://c2sp.org/tlog-cosignature

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::checkpoint::{Checkpoint, NoteError, split_note};

/// The signature type byte of Ed25519 `cosignature/v1` keys.
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// Bytes of an Ed25519 cosignature blob: key ID, timestamp, signature.
const BLOB_LEN: usize = 4 + 8 + 64;

fn malformed(s: impl Into<String>) -> NoteError {
    NoteError::Malformed(s.into())
}

/// A witness (cosigner) as a verifier knows it: its name and Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigner {
    /// The key name, e.g. `witness.example/w1`.
    pub name: String,
    /// The public key.
    pub key: VerifyingKey,
}

impl Cosigner {
    /// Reads a cosigner verifier key, `<name>+<hex key ID>+<base64(0x04 || key)>`;
    /// the key ID must be the one the name and key give.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed(
                "a witness key is <name>+<hex key ID>+<base64 key>",
            ));
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed("a witness name is non-empty, without spaces"));
        }
        let raw = B64
            .decode(b64)
            .map_err(|_| malformed("the witness key is not base64"))?;
        let key: [u8; 32] = match raw.split_first() {
            Some((&COSIGNATURE_TYPE, k)) => k
                .try_into()
                .map_err(|_| malformed("an Ed25519 witness key is 32 bytes"))?,
            Some((&crate::checkpoint::ED25519_TYPE, _)) => {
                return Err(malformed(
                    "this is a log (signed-note 0x01) key, not a cosignature/v1 (0x04) witness key",
                ));
            }
            _ => {
                return Err(malformed(
                    "the witness key is not a cosignature/v1 Ed25519 key",
                ));
            }
        };
        let key =
            VerifyingKey::from_bytes(&key).map_err(|_| malformed("not a valid Ed25519 key"))?;
        let cosigner = Cosigner {
            name: name.to_owned(),
            key,
        };
        if hex::encode(cosigner.key_id()) != id.to_ascii_lowercase() {
            return Err(malformed(format!(
                "the key ID {id} of witness {name} does not match its name and key"
            )));
        }
        Ok(cosigner)
    }

    /// The key ID: `SHA-256(name || 0x0A || 0x04 || key)[:4]`.
    pub fn key_id(&self) -> [u8; 4] {
        cosigner_key_id(&self.name, &self.key)
    }

    /// The verifier key string (what [`Cosigner::parse`] reads).
    pub fn verifier_key(&self) -> String {
        let mut blob = vec![COSIGNATURE_TYPE];
        blob.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(blob)
        )
    }
}

/// The cosignature key ID of `name` and `key`.
pub fn cosigner_key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    crate::checkpoint::key_id_of_type(name, COSIGNATURE_TYPE, key)
}

/// The message a `cosignature/v1` signs: the header line, the time line,
/// then the checkpoint's note text (ending in a newline).
pub fn signed_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// A cosignature line (ending in a newline) by `name` with `key` over the
/// checkpoint note text `text` at `timestamp` (POSIX seconds, below 2^63).
pub fn cosign(text: &str, name: &str, key: &SigningKey, timestamp: u64) -> String {
    let signature = key.sign(signed_message(text, timestamp).as_bytes());
    let mut blob = Vec::with_capacity(BLOB_LEN);
    blob.extend_from_slice(&cosigner_key_id(name, &key.verifying_key()));
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    format!("\u{2014} {name} {}\n", B64.encode(blob))
}

/// Checks one signature line against `cosigner` for the note text `text`:
/// `Ok(None)` when the line is not by it (another name or key ID: ignored,
/// as signed-note requires), `Ok(Some(timestamp))` when it verifies, and
/// an error when it is by the cosigner but does not verify.
pub fn check_line(text: &str, line: &str, cosigner: &Cosigner) -> Result<Option<u64>, NoteError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let rest = line
        .strip_prefix("\u{2014} ")
        .ok_or_else(|| malformed("a signature line does not start with an em dash"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or_else(|| malformed("a signature line has no signature"))?;
    if name != cosigner.name {
        return Ok(None);
    }
    let blob = B64
        .decode(b64)
        .map_err(|_| malformed("a signature is not base64"))?;
    if blob.len() < 4 || blob[..4] != cosigner.key_id() {
        return Ok(None);
    }
    let bad = || NoteError::BadSignature(cosigner.name.clone());
    if blob.len() != BLOB_LEN {
        return Err(bad());
    }
    let timestamp = u64::from_be_bytes(blob[4..12].try_into().map_err(|_| bad())?);
    if timestamp > i64::MAX as u64 {
        return Err(bad());
    }
    let signature = Signature::from_slice(&blob[12..]).map_err(|_| bad())?;
    cosigner
        .key
        .verify_strict(signed_message(text, timestamp).as_bytes(), &signature)
        .map_err(|_| bad())?;
    Ok(Some(timestamp))
}

/// A cosignature that verified: by whom, and when it says it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    /// The witness's name.
    pub name: String,
    /// The signed timestamp (POSIX seconds).
    pub timestamp: u64,
}

/// The checkpoint of a signed note and the cosignatures on it by
/// `cosigners` that verify. Lines by other keys are ignored; a line by a
/// listed cosigner that does not verify is an error (a malformed note, per
/// signed-note). The log's own signature is NOT checked here
/// ([`crate::checkpoint::open`] does that).
pub fn cosignatures(
    note: &str,
    cosigners: &[Cosigner],
) -> Result<(Checkpoint, Vec<Cosigned>), NoteError> {
    let (checkpoint, text, sigs) = split_note(note)?;
    let mut out: Vec<Cosigned> = Vec::new();
    for line in sigs.lines() {
        for c in cosigners {
            if let Some(timestamp) = check_line(text, line, c)?
                && !out.iter().any(|o| o.name == c.name)
            {
                out.push(Cosigned {
                    name: c.name.clone(),
                    timestamp,
                });
            }
        }
    }
    Ok((checkpoint, out))
}

/// Why a checkpoint does not satisfy a witness policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The note, or a cosignature by a listed witness, is malformed or does not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// Fewer listed witnesses cosigned than the policy asks.
    #[error("cosigned by {got} of the {needed} witnesses required ({names})")]
    TooFew {
        /// How many listed witnesses cosigned.
        got: usize,
        /// How many the policy asks for.
        needed: usize,
        /// Who did, comma separated (or `none`).
        names: String,
    },
}

/// "At least `quorum` of these witnesses cosigned": a verifier's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The witnesses the verifier trusts (distinct names).
    pub witnesses: Vec<Cosigner>,
    /// How many of them must have cosigned.
    pub quorum: usize,
}

impl Policy {
    /// A policy of `quorum` of `witnesses`; refused when the quorum is 0 or
    /// larger than the list, or two witnesses share a name.
    pub fn new(witnesses: Vec<Cosigner>, quorum: usize) -> Result<Self, String> {
        if quorum == 0 || quorum > witnesses.len() {
            return Err(format!(
                "a policy of {quorum} of {} witnesses: the quorum must be 1 to the number of witnesses",
                witnesses.len()
            ));
        }
        for (i, w) in witnesses.iter().enumerate() {
            if witnesses[..i].iter().any(|o| o.name == w.name) {
                return Err(format!("witness {} is listed twice", w.name));
            }
        }
        Ok(Policy { witnesses, quorum })
    }

    /// Checks a signed note's cosignatures against the policy; returns who
    /// cosigned (at least `quorum` of the listed witnesses).
    pub fn check(&self, note: &str) -> Result<Vec<Cosigned>, PolicyError> {
        let (_, cosigned) = cosignatures(note, &self.witnesses)?;
        if cosigned.len() < self.quorum {
            let names = if cosigned.is_empty() {
                "none".to_owned()
            } else {
                cosigned
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(PolicyError::TooFew {
                got: cosigned.len(),
                needed: self.quorum,
                names,
            });
        }
        Ok(cosigned)
    }
}

/// The signature lines of a signed note (everything after its last blank
/// line), each ending in a newline; a note that is not one gives none.
pub fn signature_lines(note: &str) -> Vec<&str> {
    match note.rfind("\n\n") {
        Some(i) => note[i + 2..].split_inclusive('\n').collect(),
        None => Vec::new(),
    }
}
