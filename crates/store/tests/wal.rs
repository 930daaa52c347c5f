//! The write-ahead log in front of redb: what it holds, what an open
//! applies from it, and what it refuses.

use keyledger_store::conformance::{sample_events, tenant};
use keyledger_store::faults::{DiskImage, FaultBackend};
use keyledger_store::wal::{encode_frame, frames};
use keyledger_store::{EventLog, RedbLog, StoreError, TenantAppend};

fn append(log: &dyn EventLog, t: &str, n: u64) -> u64 {
    let tenant = tenant(t);
    let version = log
        .tenant_head(&tenant)
        .unwrap_or_else(|e| panic!("{e}"))
        .map_or(0, |(s, _)| s);
    let records = log
        .append(vec![TenantAppend {
            events: sample_events(&tenant, n, 1),
            tenant,
            expected_version: version,
        }])
        .unwrap_or_else(|e| panic!("append: {e}"));
    records.last().map_or(0, |r| r.position)
}

/// The files a crash right now would leave, once every sync completed.
/// A log on a fault disk with three appends of tenant `acme`.
fn three_appends() -> (FaultBackend, RedbLog) {
    let disk = FaultBackend::new();
    let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..3 {
        append(&log, "acme", n);
    }
    (disk, log)
}

fn crash_now(disk: &FaultBackend) -> DiskImage {
    let images = disk.crash_images(1);
    images
        .last()
        .unwrap_or_else(|| panic!("no crash image"))
        .durable
        .clone()
}

fn open_image(image: &DiskImage) -> (tempfile::TempDir, Result<RedbLog, StoreError>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    image.write_to(&path).unwrap_or_else(|e| panic!("{e}"));
    let log = RedbLog::open(&path);
    (dir, log)
}

/// The epoch in a write-ahead log's first frame.
fn first_epoch(wal: &[u8]) -> u64 {
    let bytes = wal.get(8..16).unwrap_or_else(|| panic!("no frame"));
    u64::from_le_bytes(bytes.try_into().unwrap_or_else(|e| panic!("{e}")))
}

/// Appends acknowledged since the last checkpoint are in the write-ahead
/// log only: the synced redb file alone lacks them, and an open applies
/// them from the write-ahead log (then checkpoints, so a second crash
/// right after loses nothing either).
#[test]
fn acknowledged_appends_past_the_checkpoint_are_recovered_from_the_write_ahead_log() {
    let disk = FaultBackend::new();
    let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
    // Fewer than the 16 frames between checkpoints of `open_with_backend`.
    for n in 0..5 {
        append(&log, if n % 2 == 0 { "acme" } else { "globex" }, n);
    }
    let image = crash_now(&disk);
    std::mem::forget(log);

    let without_wal = DiskImage {
        database: image.database.clone(),
        wal: Vec::new(),
    };
    let (_dir, bare) = open_image(&without_wal);
    let bare = bare.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bare.head().unwrap_or_else(|e| panic!("{e}")),
        0,
        "the redb file was synced past the checkpoint"
    );

    let (dir, recovered) = open_image(&image);
    let recovered = recovered.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recovered.head().unwrap_or_else(|e| panic!("{e}")), 5);
    for t in ["acme", "globex"] {
        let report = keyledger_store::chain::verify_tenant(&recovered, &tenant(t))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok, "{t}: {:?}", report.first_bad);
    }
    assert_eq!(append(&recovered, "acme", 5), 6, "the log goes on");
    // The open checkpointed: the redb file alone now holds the five.
    drop(recovered);
    let path = dir.path().join("ledger.redb");
    std::fs::remove_file(RedbLog::wal_path(&path)).unwrap_or_else(|e| panic!("{e}"));
    let reopened = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reopened.head().unwrap_or_else(|e| panic!("{e}")), 6);
}

/// A frame whose CRC is right but whose record does not extend its
/// tenant's chain (written by someone else, or damaged and re-sealed) is
/// refused at open with the position it claims, and nothing is applied.
#[test]
fn a_resealed_frame_that_breaks_the_chain_is_refused_at_open() {
    let (disk, log) = three_appends();
    let image = crash_now(&disk);
    std::mem::forget(log);
    let epoch = first_epoch(&image.wal);
    let found = frames(&image.wal, epoch);
    assert_eq!(found.len(), 3, "one frame per append");

    // Change one byte of the second record's payload (its last byte) and
    // seal the frame again: the CRC is right, the chain hash is not.
    let mut wal = Vec::new();
    for (i, records) in found.iter().enumerate() {
        let mut records = records.clone();
        if i == 1
            && let Some(byte) = records.first_mut().and_then(|r| r.last_mut())
        {
            *byte ^= 1;
        }
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        wal.extend(encode_frame(epoch, &refs));
    }
    let damaged = DiskImage {
        database: image.database.clone(),
        wal,
    };
    let (_dir, opened) = open_image(&damaged);
    match opened {
        Err(StoreError::Corrupt { position, message }) => {
            assert_eq!(position, 2, "{message}");
            assert!(message.contains("write-ahead log"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(log) => panic!(
            "opened with head {}",
            log.head().unwrap_or_else(|e| panic!("{e}"))
        ),
    }
}

/// A frame of an older epoch (left over from before a checkpoint) is
/// never applied again, even where a frame of the current epoch would go:
/// here the last record is removed by hand after a checkpoint, and its
/// frame, still in the file, does not bring it back.
#[test]
fn frames_from_before_a_checkpoint_are_not_applied_again() {
    let (disk, log) = three_appends();
    log.checkpoint().unwrap_or_else(|e| panic!("{e}"));
    let second = log
        .raw_record(2)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no record 2"));
    let removed = log.raw_delete_record(3).unwrap_or_else(|e| panic!("{e}"))
        && log
            .raw_delete_index("acme", 3)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(removed);
    log.raw_put_head("acme", Some((2, second.hash)))
        .unwrap_or_else(|e| panic!("{e}"));
    let image = crash_now(&disk);
    std::mem::forget(log);
    // The three frames are still in the file, of an older epoch.
    assert_eq!(frames(&image.wal, first_epoch(&image.wal)).len(), 3);
    let (_dir, opened) = open_image(&image);
    let opened = opened.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opened.head().unwrap_or_else(|e| panic!("{e}")), 2);
}

/// A second open of a log another handle holds is refused with a clear
/// error, before anything is read or written.
#[test]
fn a_log_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    append(&log, "acme", 0);
    match RedbLog::open(&path) {
        Err(StoreError::Backend(m)) => assert!(m.contains("in use"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second handle opened the log"),
    }
    assert_eq!(append(&log, "acme", 1), 2);
}

/// The byte offsets of the frames in a write-ahead log image: where each
/// whole frame of `epoch` starts.
fn frame_offsets(wal: &[u8], epoch: u64) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    for records in frames(wal, epoch) {
        offsets.push(at);
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        at += encode_frame(epoch, &records).len();
    }
    offsets
}

/// A frame in the middle of the write-ahead log damaged, not torn (a
/// flipped byte in its body, its CRC left as it was, the frames after it
/// whole): the open is refused, naming the frame, and nothing is
/// dropped. Before, the log opened as if the acknowledged appends from
/// that frame on had never happened.
#[test]
fn a_corrupt_frame_in_the_middle_of_the_write_ahead_log_is_refused_not_dropped() {
    let (disk, log) = three_appends();
    let image = crash_now(&disk);
    std::mem::forget(log);
    let epoch = first_epoch(&image.wal);
    let offsets = frame_offsets(&image.wal, epoch);
    assert_eq!(offsets.len(), 3);
    for (frame, &start) in offsets.iter().enumerate().take(2) {
        // A byte of the body (past the 20-byte header) and one of the header.
        for at in [start + 30, start + 1, start + 17] {
            let mut wal = image.wal.clone();
            wal[at] ^= 0x04;
            let damaged = DiskImage {
                database: image.database.clone(),
                wal,
            };
            let (_dir, opened) = open_image(&damaged);
            let err = match opened {
                Ok(log) => panic!(
                    "frame {} damaged at byte {at} opened with {} events",
                    frame + 1,
                    log.head().unwrap_or(0)
                ),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&format!("frame {}", frame + 1)) && err.contains("damaged"),
                "{err}"
            );
        }
    }
}

/// The last frame damaged: it cannot be told from a torn write, so it is
/// dropped (the runtime refuses the log if a signed checkpoint covered
/// it); the frames before it are kept.
#[test]
fn a_corrupt_last_frame_of_the_write_ahead_log_is_dropped_alone() {
    let (disk, log) = three_appends();
    let image = crash_now(&disk);
    std::mem::forget(log);
    let epoch = first_epoch(&image.wal);
    let offsets = frame_offsets(&image.wal, epoch);
    let mut wal = image.wal.clone();
    wal[offsets[2] + 30] ^= 0x04;
    let damaged = DiskImage {
        database: image.database.clone(),
        wal,
    };
    let (_dir, opened) = open_image(&damaged);
    let log = opened.unwrap_or_else(|e| panic!("{e}"));
    // Three appends of one event each: the third is dropped.
    assert_eq!(log.head().unwrap_or_else(|e| panic!("{e}")), 2);
}
