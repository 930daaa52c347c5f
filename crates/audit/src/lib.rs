//! keyledger's audit evidence, pure and without I/O: what a reviewer needs
//! to check what keyledger hands out, and nothing of the ledger itself.
//!
//! * [`merkle`]: RFC 6962 / RFC 9162 Merkle trees — leaf and node hashing,
//!   an incremental [`Tree`], inclusion, consistency and range proofs, and
//!   their verification by the RFC's algorithms.
//! * [`checkpoint`]: tree heads as C2SP signed notes (`tlog-checkpoint`),
//!   signed and verified with Ed25519; [`origin`]: the origins keyledger
//!   signs checkpoints under (tenants' and the global tree's).
//! * [`cosignature`]: witness cosignatures (C2SP `tlog-cosignature`,
//!   Ed25519 `cosignature/v1`) and a "k of n witnesses" [`Policy`].
//! * [`proofs`]: inclusion and consistency proofs as handed out (hex).
//! * [`receipt`]: receipts, C2SP `tlog-proof` documents for one event.
//! * [`tiles`]: the C2SP tlog-tiles paths and the bytes of hash tiles
//!   and entry bundles, built from a tree's nodes.
//! * [`bundle`]: the evidence bundle's format and its JSON Lines file.
//! * [`verify`]: the offline bundle verifier and its report.
//!
//! keyledger's leaf entry is an event's chain hash (see `docs/audit.md`);
//! this crate knows nothing of events: it hashes whatever entries it is
//! given, and the verifier reads a bundle's events through the
//! [`verify::EventFormat`] its caller passes.

pub mod bundle;
pub mod checkpoint;
pub mod cosignature;
pub mod merkle;
pub mod origin;
pub mod proofs;
pub mod receipt;
pub mod tiles;
pub mod verify;

pub use bundle::{Bundle, BundleEarlier, BundleHeader, BundleInclusion};
pub use checkpoint::{Checkpoint, NoteError};
pub use cosignature::{Cosigned, Cosigner, Policy, PolicyError};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, node_hash, prefix_root_from_range,
    root_from_range, verify_consistency, verify_inclusion,
};
pub use proofs::{ConsistencyProof, InclusionProof};
pub use receipt::{Receipt, ReceiptCheck, ReceiptError, verify_receipt};
pub use verify::{
    BundleReport, EventFormat, EventLink, Problem, ProblemKind, verify_bundle_reader,
    verify_bundle_with, verify_bundle_witnessed,
};
