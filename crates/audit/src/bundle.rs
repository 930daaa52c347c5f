//! The evidence bundle's format: one JSON Lines file, a [`BundleHeader`]
//! on the first line (the signed checkpoint, a range proof, inclusion
//! proofs, and a sample of earlier checkpoints with consistency proofs),
//! then the range's events with their stored payloads, one per line
//! (`docs/audit.md`, "Evidence bundles"). [`crate::verify`] checks one.

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `format` of a bundle.
pub const BUNDLE_FORMAT: &str = "keyledger-audit-bundle/v1";
/// Most events one bundle holds.
pub const BUNDLE_EVENTS_MAX: u64 = 2_000_000;
/// Ranges up to this many events get an inclusion proof per event; longer
/// ones get one for their first and last event (the range proof covers all).
pub const BUNDLE_INCLUSION_PROOFS_MAX: u64 = 1000;

/// An inclusion proof inside a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleInclusion {
    /// The event's sequence number.
    pub seq: u64,
    /// The audit path (hex), for the bundle's checkpoint size.
    pub proof: Vec<String>,
}

/// An earlier checkpoint inside a bundle, with its consistency proof to
/// the bundle's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleEarlier {
    /// The earlier signed note.
    pub checkpoint: String,
    /// The consistency proof from its size to the bundle's checkpoint size (hex).
    pub consistency_proof: Vec<String>,
}

/// The first line of a bundle file: everything but the events.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleHeader {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant: String,
    /// First sequence number of the range.
    pub from_seq: u64,
    /// Last sequence number of the range.
    pub to_seq: u64,
    /// The signed checkpoint the proofs are for.
    pub checkpoint: String,
    /// Hashes of the subtrees outside the range (hex), left to right.
    pub range_proof: Vec<String>,
    /// Inclusion proofs of events of the range.
    pub inclusion_proofs: Vec<BundleInclusion>,
    /// Earlier stored checkpoints and their consistency proofs.
    pub earlier_checkpoints: Vec<BundleEarlier>,
    /// The newest stored checkpoint witnesses cosigned when the bundle was
    /// built (the signed note with the cosignature lines), with its
    /// consistency proof to `checkpoint`; absent when none was witnessed
    /// (and in bundles written before witnesses existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnessed: Option<BundleEarlier>,
}

/// Evidence a reviewer can take away, as one JSON Lines file: the
/// [`BundleHeader`] on the first line (the signed checkpoint and the
/// proofs), then one event per line, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// The checkpoint, the range and the proofs.
    pub header: BundleHeader,
    /// The events: trail entries (as `audit export --format jsonl` writes
    /// them) with `payload`, the stored bytes (base64).
    pub events: Vec<Value>,
}

impl Bundle {
    /// Writes the bundle as JSON Lines: the header, then one event per line.
    pub fn write_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut w, &self.header)?;
        w.write_all(b"\n")?;
        for e in &self.events {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// The bundle file's bytes (see [`Bundle::write_jsonl`]).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing JSON values into a Vec cannot fail.
        let _ = self.write_jsonl(&mut out);
        out
    }
}

/// A bundle file read back line by line, before any check.
#[derive(Debug)]
pub struct BundleLines {
    /// The first line.
    pub header: BundleHeader,
    /// Every other line that is not blank, with its line number (from 1):
    /// the event, or why the line is not JSON.
    pub events: Vec<(usize, Result<Value, serde_json::Error>)>,
}

/// Why a bundle file has no header.
#[derive(Debug)]
pub enum HeaderError {
    /// The file holds nothing but blank lines.
    Empty,
    /// The first line that is not blank is not a [`BundleHeader`].
    Malformed(serde_json::Error),
}

/// Reads a bundle file: its first line that is not blank as the header,
/// every later one as an event (a `\r` before a `\n` is dropped).
pub fn read_jsonl(bytes: &[u8]) -> Result<BundleLines, HeaderError> {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let header = match lines.next() {
        None => return Err(HeaderError::Empty),
        Some((_, l)) => serde_json::from_slice(l).map_err(HeaderError::Malformed)?,
    };
    let events = lines
        .map(|(line, l)| (line, serde_json::from_slice::<Value>(l)))
        .collect();
    Ok(BundleLines { header, events })
}
