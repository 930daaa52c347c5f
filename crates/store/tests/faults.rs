//! The fault-injecting backend at the store level: a failed write or sync
//! writes nothing, the log recovers by itself, and every crash image opens
//! with its chains intact and holds every append that returned.

use keyledger_store::chain::verify_tenant;
use keyledger_store::conformance::{sample_events, tenant};
use keyledger_store::faults::FaultBackend;
use keyledger_store::{EventLog, RedbLog, StoreError, TenantAppend};

fn seed() -> u64 {
    let seed = std::env::var("KEYLEDGER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("KEYLEDGER_SEED={seed}");
    seed
}

fn append_one(log: &dyn EventLog, t: &str, n: u64) -> Result<u64, StoreError> {
    let tenant = tenant(t);
    let version = log.tenant_head(&tenant)?.map_or(0, |(s, _)| s);
    let events = sample_events(&tenant, n, 1);
    let records = log.append(vec![TenantAppend {
        tenant,
        expected_version: version,
        events,
    }])?;
    Ok(records.last().map_or(0, |r| r.position))
}

fn assert_chains(log: &dyn EventLog) {
    for t in log.tenants().unwrap_or_else(|e| panic!("tenants: {e}")) {
        let report = verify_tenant(log, &t).unwrap_or_else(|e| panic!("verify {t}: {e}"));
        assert!(report.ok, "tenant {t}: {:?}", report.first_bad);
    }
}

/// Every write and every sync of one append fails in turn, for an append
/// made durable by the write-ahead log and for one that checkpoints (a
/// durable redb commit); each time the append is refused, nothing (or,
/// when the data reached the disk before a sync failed, exactly the
/// append) is in the log, and the next append works without reopening
/// anything by hand.
#[test]
fn a_failed_write_or_sync_writes_nothing_and_the_log_recovers() {
    let mut injected = 0;
    let mut landed_despite_error = 0;
    // `open_with_backend` checkpoints every 16 frames: after 16 appends
    // the next one checkpoints.
    for before in [1u64, 16] {
        for sync in [false, true] {
            for n in 1..=12u64 {
                let disk = FaultBackend::new().without_journal();
                let log =
                    RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
                for i in 0..before {
                    append_one(&log, "acme", i).unwrap_or_else(|e| panic!("append {i}: {e}"));
                }
                let faults = disk.faults_injected();
                if sync {
                    disk.fail_sync(n);
                } else {
                    disk.fail_write(n);
                }
                let result = append_one(&log, "acme", before);
                let fired = disk.faults_injected() > faults;
                disk.clear_faults();
                if !fired {
                    assert!(result.is_ok(), "no fault fired yet the append failed");
                    continue;
                }
                injected += 1;
                let head = log
                    .head()
                    .unwrap_or_else(|e| panic!("head after fault: {e}"));
                match result {
                    Err(StoreError::Backend(_)) => {
                        assert_eq!(head, before, "a refused append was written")
                    }
                    Ok(position) => {
                        // The data reached the disk before the failure (a
                        // sync failed after its write): the append is there.
                        landed_despite_error += 1;
                        assert_eq!(head, position);
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
                let next = append_one(&log, "acme", before + 1)
                    .unwrap_or_else(|e| panic!("after fault: {e}"));
                assert_eq!(next, head + 1);
                assert_chains(&log);
                drop(log);
                let reopened = RedbLog::open_with_backend(disk).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(reopened.head().unwrap_or_else(|e| panic!("{e}")), head + 1);
                assert_chains(&reopened);
            }
        }
    }
    println!(
        "fault points injected: {injected} (appends found durable after an error: {landed_despite_error})"
    );
    assert!(injected >= 8, "too few faults fired: {injected}");
}

/// A full disk and a read-only disk refuse appends with a clear error, keep
/// what was there, and the log recovers once space (or write access)
/// returns, without a restart.
#[test]
fn disk_full_and_read_only_refuse_appends_and_recover() {
    for mode in ["full", "read-only"] {
        let disk = FaultBackend::new().without_journal();
        let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut n = 0;
        // Fill past the first region so a grow is needed soon.
        for _ in 0..50 {
            append_one(&log, "acme", n).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        if mode == "full" {
            disk.set_full(true);
        } else {
            disk.set_read_only(true);
        }
        let mut refused = 0;
        for _ in 0..200 {
            match append_one(&log, "acme", n) {
                Ok(_) => n += 1,
                Err(StoreError::Backend(msg)) => {
                    refused += 1;
                    let lower = msg.to_lowercase();
                    assert!(
                        lower.contains("no space left") || lower.contains("read-only"),
                        "unclear error: {msg}"
                    );
                }
                Err(e) => panic!("{mode}: unexpected error {e}"),
            }
        }
        assert!(refused > 0, "{mode}: no append was refused");
        disk.set_full(false);
        disk.set_read_only(false);
        let head = append_one(&log, "acme", n).unwrap_or_else(|e| panic!("{mode}: recovery: {e}"));
        assert_eq!(
            head,
            n + 1,
            "{mode}: an acknowledged append is missing or extra"
        );
        assert_chains(&log);
        println!("{mode}: {refused} appends refused, then recovered at position {head}");
    }
}

/// Every crash image of a workload of single appends opens, verifies, and
/// holds every append that returned before the crashing sync began.
#[test]
fn every_crash_image_opens_and_keeps_every_returned_append() {
    let seed = seed();
    let disk = FaultBackend::new();
    let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
    // A crash before the log was first created is what `RedbLog::open`'s
    // create-and-rename covers (`a_half_made_log_file_is_replaced`): the
    // images start after it.
    let created = disk.syncs();
    // (syncs completed when the append returned, position)
    let mut acked = Vec::new();
    let tenants = ["acme", "globex", "initech"];
    let mut x = seed;
    for n in 0..60u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = tenants[(x >> 33) as usize % tenants.len()];
        let position = append_one(&log, t, n).unwrap_or_else(|e| panic!("{e}"));
        acked.push((disk.syncs(), position));
    }
    drop(log);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut images = 0;
    disk.for_each_crash_image(seed, |img| {
        if img.sync <= created {
            return;
        }
        for (kind, bytes) in [("durable", &img.durable), ("torn", &img.torn)] {
            let path = dir.path().join(format!("image-{}-{kind}.redb", img.sync));
            bytes.write_to(&path).unwrap_or_else(|e| panic!("{e}"));
            let log = RedbLog::open(&path)
                .unwrap_or_else(|e| panic!("seed {seed}: image {} {kind}: {e}", img.sync));
            let head = log.head().unwrap_or_else(|e| panic!("{e}"));
            let must = acked
                .iter()
                .filter(|(s, _)| *s < img.sync)
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(0);
            assert!(
                head >= must,
                "seed {seed}: image {} {kind}: head {head} < acknowledged {must}",
                img.sync
            );
            assert!(head <= 60, "more records than appended");
            assert_chains(&log);
            images += 1;
            std::fs::remove_file(&path).ok();
        }
    });
    println!("crash images recovered: {images}");
    assert!(images > 60);
}

/// Regression: a crash while the log file was first created left a file
/// that was not a database, and every later open failed. The file is now
/// made under a temporary name and renamed into place; a half-made one
/// left behind is replaced.
#[test]
fn a_half_made_log_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("events.redb");
    std::fs::write(dir.path().join("events.redb.creating"), b"half made")
        .unwrap_or_else(|e| panic!("{e}"));
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
    append_one(&log, "acme", 0).unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    assert!(!dir.path().join("events.redb.creating").exists());
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(log.head().unwrap_or_else(|e| panic!("{e}")), 1);
}

/// Regression: once a sync failed, redb refused every later write of that
/// handle (`PreviousIo`), so one transient I/O error stopped the log until
/// the process restarted. `RedbLog` now reopens the file after a failed
/// append and looks whether the commit reached the disk: here the failed
/// sync is retried by the reopen's own (successful) sync, so the append is
/// reported written, and a crash right after keeps it.
#[test]
fn an_append_whose_sync_failed_is_reported_written_only_once_a_reopen_made_it_durable() {
    let disk = FaultBackend::new();
    let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
    append_one(&log, "acme", 0).unwrap_or_else(|e| panic!("{e}"));
    disk.fail_sync(1);
    let position = append_one(&log, "acme", 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(disk.faults_injected(), 1, "the sync fault did not fire");
    assert_eq!(position, 2);
    // A crash now: only what was synced survives, and the append is in it.
    let images = disk.crash_images(1);
    let last = images.last().unwrap_or_else(|| panic!("no image"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("crash.redb");
    last.durable
        .write_to(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    let recovered = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recovered.head().unwrap_or_else(|e| panic!("{e}")), 2);
    assert_chains(&recovered);
    // And the log goes on without a restart.
    assert_eq!(
        append_one(&log, "acme", 2).unwrap_or_else(|e| panic!("{e}")),
        3
    );
}
