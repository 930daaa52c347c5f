//! The write-ahead log in front of the redb file.
//!
//! A durable redb commit writes about twenty pages across its file before
//! its one `fdatasync`, and costs 1.5–2.5× a raw sync of the same bytes
//! (docs/performance.md). So [`RedbLog`](crate::RedbLog) makes an append
//! durable by writing its stored records as one *frame* into this file and
//! syncing it, then commits the redb transaction without a sync
//! (`Durability::None`): readers see it at once, and the disk gets it at
//! the next *checkpoint*, a durable redb commit. After a crash, opening the
//! log applies the frames the last checkpoint did not cover.
//!
//! # Layout
//!
//! The file is preallocated with zeros ([`WalOptions::capacity`]) and
//! written from the start again after every checkpoint, so a frame
//! overwrites blocks the file already has and its sync flushes only data,
//! never the file's size or extents. A frame is
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `KLW1` |
//! | 4 | CRC-32 of everything after this field (epoch, length, body) |
//! | 8 | epoch, little-endian |
//! | 4 | body length, little-endian |
//! | n | body: records, each a little-endian `u32` length and the record as the `events` table stores it |
//!
//! # Epochs
//!
//! Every checkpoint raises the *epoch* kept in the redb file's `meta`
//! table, in the same durable commit. Frames carry the epoch they were
//! written in, so frames left over from before a checkpoint (further along
//! in the file, or the whole file right after one) are never applied again:
//! a scan reads frames of the current epoch from offset 0 and stops at the
//! first that is not one (zeros, an older epoch, a torn frame whose CRC
//! fails).
//!
//! # A torn tail is not damage
//!
//! Only the last frame can be torn: each append waits for its sync before
//! the next frame is written, and a torn frame was never acknowledged. So
//! where the scan stops, the rest of the file is searched for a whole
//! frame of the same epoch (its magic, epoch and CRC all right, at any
//! offset, since a damaged length field hides where the next frame
//! starts). Finding one means a frame in the middle failed its check:
//! damage to an acknowledged frame, and the open is refused
//! ([`Tail::Damaged`]), never turned into a shorter log. A bad *last*
//! frame cannot be told from a torn one by the file alone; it is dropped
//! ([`Tail::Torn`], logged), and the runtime then refuses the log anyway
//! if a signed checkpoint covers what was dropped (docs/reliability.md).
//!
//! Frames left from older epochs never match: every open raises the epoch
//! before it writes a frame, so frames of the current epoch exist only
//! from offset 0 up to where the last append stopped.

use redb::StorageBackend;

use crate::StoreError;

const MAGIC: [u8; 4] = *b"KLW1";
/// Bytes before a frame's body.
pub(crate) const FRAME_HEADER: usize = 4 + 4 + 8 + 4;
/// Bytes of zeros written at a time when preallocating.
const ZEROS_CHUNK: usize = 1 << 20;

/// How big the write-ahead log is and how often it is checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Bytes preallocated; an append whose frame does not fit commits
    /// straight to redb, durably, and starts the file over (a checkpoint).
    pub capacity: u64,
    /// Most frames between checkpoints: bounds what redb holds uncommitted
    /// to disk (its pages freed since the last durable commit cannot be
    /// reused until the next one) and what an open after a crash applies.
    pub frames_max: u64,
}

impl Default for WalOptions {
    /// 1 MiB and 4,096 frames: a checkpoint every few thousand appends
    /// one at a time (frames of one event fill 1 MiB after ~3,400), whose
    /// durable redb commit is then spread over them. Under load, when a
    /// frame carries a group commit of tens of events, the capacity bounds
    /// what a checkpoint writes, and so how long the batch it carries
    /// waits: up to 25 ms at 20–30k creates/s, against 50 ms with 4 MiB
    /// (docs/performance.md).
    fn default() -> Self {
        WalOptions {
            capacity: 1 << 20,
            frames_max: 4096,
        }
    }
}

/// Wraps an I/O failure of the write-ahead log with what was being done.
pub(crate) fn io_error<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend(format!("write-ahead log: {what}: {e}"))
}

/// The open write-ahead log file and where the next frame goes.
pub(crate) struct Wal {
    file: Box<dyn StorageBackend>,
    pub(crate) options: WalOptions,
    /// Where the next frame is written.
    pub(crate) offset: u64,
    /// Frames written since the last checkpoint.
    pub(crate) frames: u64,
    /// The epoch frames are written in: the one in the redb file's `meta`.
    pub(crate) epoch: u64,
    /// The frame being built (kept to reuse its allocation).
    pub(crate) frame: Vec<u8>,
}

impl Wal {
    /// Takes over an opened file, growing it to its capacity with zeros.
    /// The epoch and offset are set by the recovery that follows.
    pub(crate) fn new(
        file: Box<dyn StorageBackend>,
        options: WalOptions,
    ) -> Result<Wal, StoreError> {
        let wal = Wal {
            file,
            options,
            offset: 0,
            frames: 0,
            epoch: 0,
            frame: Vec::new(),
        };
        wal.preallocate()?;
        Ok(wal)
    }

    /// Writes zeros from the file's end up to its capacity and syncs, so
    /// frames later overwrite allocated blocks (a hole would be allocated
    /// by the frame's own write, and its sync would then carry metadata).
    fn preallocate(&self) -> Result<(), StoreError> {
        let mut len = self.file.len().map_err(io_error("reading its length"))?;
        if len >= self.options.capacity {
            return Ok(());
        }
        let zeros = vec![0u8; ZEROS_CHUNK];
        while len < self.options.capacity {
            let n = (self.options.capacity - len).min(ZEROS_CHUNK as u64);
            let chunk = zeros.get(..n as usize).unwrap_or_default();
            self.file
                .write(len, chunk)
                .map_err(io_error("preallocating"))?;
            len += n;
        }
        self.file.sync_data().map_err(io_error("syncing"))
    }

    /// Starts a frame in [`Self::frame`]; add records with [`Self::push`].
    pub(crate) fn begin_frame(&mut self) {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; FRAME_HEADER]);
    }

    /// Adds one stored record to the frame being built (the layout of
    /// [`encode_frame`]).
    pub(crate) fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(record);
    }

    /// Whether the frame being built fits after the frames already written
    /// and under the frame count: if not, the append checkpoints instead.
    pub(crate) fn has_room(&self) -> bool {
        self.frames < self.options.frames_max
            && self.offset.saturating_add(self.frame.len() as u64) <= self.options.capacity
    }

    /// Seals the frame being built, writes it after the last one and syncs.
    /// Returns only once it is durable.
    pub(crate) fn write_frame(&mut self) -> Result<(), StoreError> {
        seal(&mut self.frame, self.epoch);
        self.file
            .write(self.offset, &self.frame)
            .map_err(io_error("writing a frame"))?;
        self.file.sync_data().map_err(io_error("syncing a frame"))?;
        self.offset += self.frame.len() as u64;
        self.frames += 1;
        Ok(())
    }

    /// After a checkpoint raised the epoch to `epoch`: frames start over at
    /// the beginning of the file.
    pub(crate) fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.frames = 0;
    }

    /// Reads the frames of `epoch` from the start of the file, in order:
    /// each frame's records as stored, up to the first place that does not
    /// hold a whole frame of that epoch. A frame that fails its check with
    /// a good frame of the epoch after it is damage: an error naming both
    /// offsets. A torn last frame is dropped with a warning.
    pub(crate) fn scan(&self, epoch: u64) -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
        let len = self.file.len().map_err(io_error("reading its length"))?;
        let len = usize::try_from(len).map_err(io_error("sizing a read"))?;
        let mut bytes = vec![0u8; len];
        self.file
            .read(0, &mut bytes)
            .map_err(io_error("reading it back"))?;
        let scan = scan(&bytes, epoch);
        match scan.tail {
            Tail::End => {}
            Tail::Torn { offset } => tracing::warn!(
                offset,
                frames = scan.frames.len(),
                "the write-ahead log's last frame is incomplete (a crash while it was written, \
                 so it was never acknowledged): dropped"
            ),
            Tail::Damaged { offset, next_good } => {
                return Err(StoreError::Backend(format!(
                    "write-ahead log: frame {} (byte {offset}) fails its check, but a whole \
                     frame of the same epoch follows at byte {next_good}: the file is damaged \
                     (a torn write can only be the last frame), and the events from that frame \
                     on were acknowledged. Nothing was dropped. Restore the data directory from \
                     a backup (docs/operations.md, \"Restoring after damage\")",
                    scan.frames.len() + 1
                )));
            }
        }
        Ok(scan.frames)
    }
}

/// Where a scan of the write-ahead log stopped, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// At zeros, a frame of an older epoch, or the end of the file: every
    /// frame of the epoch was read.
    End,
    /// At a frame of the epoch that is incomplete or fails its CRC, with
    /// no whole frame of the epoch anywhere after it: a torn last write.
    Torn {
        /// The byte offset of the torn frame.
        offset: usize,
    },
    /// At a frame that fails its check, with a whole frame of the same
    /// epoch after it: damage in the middle of the log.
    Damaged {
        /// The byte offset of the bad frame.
        offset: usize,
        /// The byte offset of the first whole frame of the epoch after it.
        next_good: usize,
    },
}

/// The frames of an epoch at the start of a write-ahead log, and what
/// follows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Each whole frame's records, in order.
    pub frames: Vec<Vec<Vec<u8>>>,
    /// Where and why the frames ended.
    pub tail: Tail,
}

/// Reads the frames of `epoch` from the start of `bytes` and classifies
/// where they end ([`Tail`]). Never panics, whatever the bytes (the
/// `wal_scan` fuzz target).
pub fn scan(bytes: &[u8], epoch: u64) -> Scan {
    let mut frames = Vec::new();
    let mut offset = 0;
    while let Some(rest) = bytes.get(offset..) {
        let Some((records, after)) = frame(rest, epoch) else {
            break;
        };
        frames.push(records);
        offset = bytes.len() - after.len();
    }
    let rest = bytes.get(offset..).unwrap_or_default();
    // Searched whatever is at the stop: a damaged magic or epoch field
    // must not make the frames after it look like the end of the log.
    let tail = match next_whole_frame(rest, epoch) {
        Some(at) => Tail::Damaged {
            offset,
            next_good: offset + at,
        },
        None if is_frame_of(rest, epoch) => Tail::Torn { offset },
        None => Tail::End,
    };
    Scan { frames, tail }
}

/// Whether `bytes` start with the magic and the epoch of a frame of
/// `epoch` (whole or not).
fn is_frame_of(bytes: &[u8], epoch: u64) -> bool {
    bytes.get(..4) == Some(MAGIC.as_slice())
        && bytes.get(8..16) == Some(epoch.to_le_bytes().as_slice())
}

/// The offset in `bytes` of the first whole frame of `epoch`, if any.
fn next_whole_frame(bytes: &[u8], epoch: u64) -> Option<usize> {
    let mut from = 0;
    while let Some(rest) = bytes.get(from..) {
        let at = rest.windows(MAGIC.len()).position(|w| w == MAGIC)?;
        let candidate = from + at;
        if bytes
            .get(candidate..)
            .is_some_and(|b| frame(b, epoch).is_some())
        {
            return Some(candidate);
        }
        from = candidate + 1;
    }
    None
}

/// One frame of `epoch` holding `records`, as the write-ahead log writes it (the
/// inverse of [`frames`]).
pub fn encode_frame(epoch: u64, records: &[&[u8]]) -> Vec<u8> {
    let mut frame = vec![0; FRAME_HEADER];
    for r in records {
        let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(r);
    }
    seal(&mut frame, epoch);
    frame
}

/// Fills in a built frame's header: magic, CRC, epoch and body length.
fn seal(frame: &mut [u8], epoch: u64) {
    let body = frame.len().saturating_sub(FRAME_HEADER);
    let body = u32::try_from(body).unwrap_or(u32::MAX);
    if let Some(header) = frame.get_mut(..FRAME_HEADER) {
        header[..4].copy_from_slice(&MAGIC);
        header[8..16].copy_from_slice(&epoch.to_le_bytes());
        header[16..20].copy_from_slice(&body.to_le_bytes());
    }
    let crc = crc32fast::hash(frame.get(8..).unwrap_or_default());
    if let Some(field) = frame.get_mut(4..8) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// The frames of `epoch` at the start of `bytes`, each as its records
/// ([`scan`] without the verdict on the tail).
pub fn frames(bytes: &[u8], epoch: u64) -> Vec<Vec<Vec<u8>>> {
    scan(bytes, epoch).frames
}

/// One whole frame of `epoch` at the start of `bytes`, and what follows it.
fn frame(bytes: &[u8], epoch: u64) -> Option<(Vec<Vec<u8>>, &[u8])> {
    let (header, rest) = bytes.split_first_chunk::<FRAME_HEADER>()?;
    let (magic, header) = header.split_first_chunk::<4>()?;
    let (crc, header) = header.split_first_chunk::<4>()?;
    let (frame_epoch, header) = header.split_first_chunk::<8>()?;
    let len = header.first_chunk::<4>()?;
    if *magic != MAGIC || u64::from_le_bytes(*frame_epoch) != epoch {
        return None;
    }
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let body = rest.get(..len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(frame_epoch);
    hasher.update(&u32::try_from(len).ok()?.to_le_bytes());
    hasher.update(body);
    if hasher.finalize() != u32::from_le_bytes(*crc) {
        return None;
    }
    let mut records = Vec::new();
    let mut body = body;
    while !body.is_empty() {
        let (n, after) = body.split_first_chunk::<4>()?;
        let n = usize::try_from(u32::from_le_bytes(*n)).ok()?;
        records.push(after.get(..n)?.to_vec());
        body = after.get(n..)?;
    }
    Some((records, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode_frame as built;

    #[test]
    fn frames_of_the_epoch_read_back_in_order_and_the_scan_stops_at_anything_else() {
        let mut bytes = built(7, &[b"one", b"two"]);
        bytes.extend(built(7, &[b"three"]));
        let whole = bytes.len();
        // A frame of an older epoch, then zeros.
        bytes.extend(built(6, &[b"stale"]));
        bytes.extend([0; 64]);
        let got = frames(&bytes, 7);
        assert_eq!(
            got,
            vec![
                vec![b"one".to_vec(), b"two".to_vec()],
                vec![b"three".to_vec()]
            ]
        );
        assert!(frames(&bytes, 8).is_empty(), "another epoch reads nothing");
        // Any one byte changed in the second frame drops it, never the first.
        let first = built(7, &[b"one", b"two"]).len();
        let one = vec![vec![b"one".to_vec(), b"two".to_vec()]];
        for i in first..whole {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert_eq!(frames(&damaged, 7), one, "byte {i} changed");
        }
        // Every cut short of the second frame's end keeps the first at most.
        for cut in 0..whole {
            let got = frames(&bytes[..cut], 7);
            assert_eq!(got, if cut >= first { one.clone() } else { vec![] });
        }
    }

    #[test]
    fn a_bad_frame_followed_by_a_good_one_is_damage_never_a_shorter_log() {
        let first = built(3, &[b"first record"]);
        let second = built(3, &[b"second"]);
        let third = built(3, &[b"third", b"fourth"]);
        let mut bytes = [first.clone(), second.clone(), third.clone()].concat();
        bytes.extend(built(2, &[b"older epoch"]));
        bytes.extend([0; 32]);
        assert_eq!(scan(&bytes, 3).tail, Tail::End);
        assert_eq!(scan(&bytes, 3).frames.len(), 3);
        // Every byte of the first or second frame (magic, CRC, epoch,
        // length, body), flipped: damage, naming the bad frame's offset.
        for i in 0..first.len() + second.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            let got = scan(&damaged, 3);
            let bad = if i < first.len() { 0 } else { first.len() };
            assert!(
                matches!(got.tail, Tail::Damaged { offset, next_good } if offset == bad && next_good > bad),
                "byte {i}: {:?}",
                got.tail
            );
            assert_eq!(got.frames.len(), usize::from(bad > 0), "byte {i}");
        }
        // The last frame of the epoch, flipped: a torn tail (dropped).
        let last = first.len() + second.len();
        for i in last..last + third.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            let got = scan(&damaged, 3);
            assert_eq!(got.frames.len(), 2, "byte {i}");
            // (Torn when its magic and epoch still read; a flip there
            // makes it look like bytes left from before: also dropped.)
            assert!(!matches!(got.tail, Tail::Damaged { .. }), "byte {i}");
            if i >= last + 16 {
                assert_eq!(got.tail, Tail::Torn { offset: last }, "byte {i}");
            }
        }
        // Cut inside the last frame: torn.
        let cut = &bytes[..last + third.len() / 2];
        assert_eq!(scan(cut, 3).tail, Tail::Torn { offset: last });
    }

    #[test]
    fn a_damaged_first_frame_reads_nothing() {
        let bytes = built(1, &[b"record"]);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 1;
            assert!(frames(&damaged, 1).is_empty(), "byte {i} changed yet read");
        }
    }
}
