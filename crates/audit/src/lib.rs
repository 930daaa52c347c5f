//! keyledger's audit proofs, pure and without I/O.
//!
//! * [`merkle`]: RFC 6962 / RFC 9162 Merkle trees — leaf and node hashing,
//!   an incremental [`Tree`], inclusion, consistency and range proofs, and
//!   their verification by the RFC's algorithms.
//! * [`checkpoint`]: tree heads as C2SP signed notes (`tlog-checkpoint`),
//!   signed and verified with Ed25519.
//!
//! keyledger's leaf entry is an event's chain hash (see `docs/audit.md`);
//! this crate knows nothing of events and hashes whatever entries it is given.

pub mod checkpoint;
pub mod merkle;

pub use checkpoint::{Checkpoint, NoteError};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, node_hash, prefix_root_from_range,
    root_from_range, verify_consistency, verify_inclusion,
};
