//! Receipts: C2SP [tlog-proof] documents, an offline-verifiable proof that
//! one event is in the log, under a checkpoint signed by the log and
//! (optionally) cosigned by witnesses.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the event's 32-byte chain hash>
//! index <seq - 1>
//! <inclusion proof, one base64 hash per line>
//!
//! <the checkpoint: a signed note, log signature and cosignatures>
//! ```
//!
//! keyledger's leaf entry is the event's chain hash (`docs/audit.md`), so
//! the `extra` line carries it: the leaf is `SHA-256(0x00 || extra)`.
//! `extra` is not authenticated by itself: what the receipt proves is that
//! the log holds, at position `index + 1`, an event whose chain hash is
//! `extra`; a reviewer compares it with the event's `hash` (or recomputes
//! it from the event's stored bytes).
//!
//! [tlog-proof]: https://c2sp.org/tlog-proof

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::VerifyingKey;

use crate::checkpoint::{self, Checkpoint};
use crate::cosignature::{Cosigned, Policy, PolicyError};
use crate::merkle::{self, Hash, PROOF_HASHES_MAX};

/// The first line of a tlog-proof.
pub const RECEIPT_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// Longest receipt a verifier reads, in bytes.
pub const RECEIPT_BYTES_MAX: usize = 64 * 1024;

/// A receipt, as written and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The event's chain hash (the `extra` line).
    pub chain_hash: Hash,
    /// The zero-based leaf index (the event's sequence number minus one).
    pub index: u64,
    /// The inclusion proof, leaf's sibling first.
    pub proof: Vec<Hash>,
    /// The checkpoint note, with every signature line.
    pub note: String,
}

/// Why a receipt does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not a tlog-proof as keyledger writes them.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The checkpoint is not signed by the log's key.
    #[error("the checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::NoteError),
    /// The inclusion proof does not bind the event to the signed root.
    #[error(
        "the inclusion proof of position {position} does not verify against the checkpoint of size {size}: {reason}"
    )]
    Proof {
        /// The event's position (sequence number).
        position: u64,
        /// The checkpoint's size.
        size: u64,
        /// What failed.
        reason: String,
    },
    /// The witnesses' cosignatures do not satisfy the policy.
    #[error("the witnesses: {0}")]
    Policy(#[from] PolicyError),
}

fn malformed(s: impl Into<String>) -> ReceiptError {
    ReceiptError::Malformed(s.into())
}

impl Receipt {
    /// The receipt's text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{RECEIPT_HEADER}\nextra {}\nindex {}\n",
            B64.encode(self.chain_hash),
            self.index
        );
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.note);
        s
    }

    /// Reads a receipt's text (nothing is verified).
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        if text.len() > RECEIPT_BYTES_MAX {
            return Err(malformed(format!("longer than {RECEIPT_BYTES_MAX} bytes")));
        }
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| malformed("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(RECEIPT_HEADER) {
            return Err(malformed(format!(
                "the first line is not `{RECEIPT_HEADER}`"
            )));
        }
        let extra = lines
            .next()
            .and_then(|l| l.strip_prefix("extra "))
            .ok_or_else(|| malformed("no `extra` line (the event's chain hash)"))?;
        let chain_hash: Hash = B64
            .decode(extra)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("`extra` is not 32 bytes of base64"))?;
        let index_line = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| malformed("no `index` line"))?;
        if index_line.is_empty()
            || !index_line.bytes().all(|b| b.is_ascii_digit())
            || (index_line.len() > 1 && index_line.starts_with('0'))
        {
            return Err(malformed("`index` is not a decimal number"));
        }
        let index: u64 = index_line
            .parse()
            .map_err(|_| malformed("`index` is too large"))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() >= PROOF_HASHES_MAX {
                return Err(malformed("too many proof lines"));
            }
            let h: Hash = B64
                .decode(l)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| malformed("a proof line is not 32 bytes of base64"))?;
            proof.push(h);
        }
        Ok(Receipt {
            chain_hash,
            index,
            proof,
            note: note.to_owned(),
        })
    }
}

/// What a receipt that holds proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptCheck {
    /// The signed checkpoint.
    pub checkpoint: Checkpoint,
    /// The event's position (tenant sequence number).
    pub position: u64,
    /// The event's chain hash.
    pub chain_hash: Hash,
    /// The witnesses of the policy that cosigned (empty without a policy).
    pub cosigned: Vec<Cosigned>,
}

/// Verifies a receipt by the steps of C2SP tlog-proof: the leaf from the
/// chain hash, the log's signature with `key`, the witnesses against
/// `policy` (when given), and the inclusion proof against the signed root.
pub fn verify_receipt(
    text: &str,
    key: &VerifyingKey,
    policy: Option<&Policy>,
) -> Result<ReceiptCheck, ReceiptError> {
    let receipt = Receipt::parse(text)?;
    let leaf = merkle::leaf_hash(&receipt.chain_hash);
    let checkpoint = checkpoint::open(&receipt.note, key)?;
    let cosigned = match policy {
        Some(p) => p.check(&receipt.note)?,
        None => Vec::new(),
    };
    let position = receipt.index.saturating_add(1);
    merkle::verify_inclusion(
        receipt.index,
        checkpoint.size,
        &leaf,
        &receipt.proof,
        &checkpoint.root,
    )
    .map_err(|e| ReceiptError::Proof {
        position,
        size: checkpoint.size,
        reason: e.to_string(),
    })?;
    Ok(ReceiptCheck {
        checkpoint,
        position,
        chain_hash: receipt.chain_hash,
        cosigned,
    })
}
