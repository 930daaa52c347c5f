//! Proofs as keyledger hands them out (`GET /v1/audit/proof/...`,
//! `keyledger audit proof`): hashes as lowercase hex.

use serde::{Deserialize, Serialize};

use crate::merkle::{Hash, PROOF_HASHES_MAX};

/// An inclusion proof of one event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InclusionProof {
    /// The event's tenant sequence number (its leaf is `seq - 1`).
    pub seq: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The leaf hash (hex).
    pub leaf: String,
    /// The audit path, bottom up (hex).
    pub proof: Vec<String>,
    /// The root of the tree of `size` (hex).
    pub root: String,
}

/// A consistency proof between two tree sizes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The older root (hex).
    pub from_root: String,
    /// The newer root (hex).
    pub to_root: String,
    /// The proof (hex).
    pub proof: Vec<String>,
}

/// Hashes as hex, in order.
pub fn hex_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// A hash from its hex; `None` unless it is exactly 32 bytes of hex.
pub fn parse_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// A proof from its hex hashes; `None` if one is not a hash or there are
/// more than [`PROOF_HASHES_MAX`].
pub fn parse_hashes(hexes: &[String]) -> Option<Vec<Hash>> {
    if hexes.len() > PROOF_HASHES_MAX {
        return None;
    }
    hexes.iter().map(|h| parse_hash(h)).collect()
}
