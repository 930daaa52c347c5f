//! The per-key index of the redb log: entries of records recovered from
//! the write-ahead log, and the index built on open for a file made
//! before it existed.

use std::collections::BTreeMap;

use keyledger_core::{KeyId, TenantId, UseTotals, as_use, touched_keys};
use keyledger_store::conformance::{sample_events, tenant};
use keyledger_store::faults::{DiskImage, FaultBackend};
use keyledger_store::{EventLog, Record, RedbLog, TenantAppend};

fn append(log: &dyn EventLog, t: &TenantId, first: u64, n: usize) {
    let version = log
        .tenant_head(t)
        .unwrap_or_else(|e| panic!("{e}"))
        .map_or(0, |(s, _)| s);
    log.append(vec![TenantAppend {
        events: sample_events(t, first, n),
        tenant: t.clone(),
        expected_version: version,
    }])
    .unwrap_or_else(|e| panic!("append: {e}"));
}

/// Each key's records, from a walk of the tenant's whole trail.
fn scanned(log: &dyn EventLog, t: &TenantId) -> BTreeMap<KeyId, Vec<Record>> {
    let mut by_key: BTreeMap<KeyId, Vec<Record>> = BTreeMap::new();
    for r in log
        .read_tenant(t, 0, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"))
    {
        for k in touched_keys(&r.event) {
            by_key.entry(k).or_default().push(r.clone());
        }
    }
    by_key
}

/// The index answers every key exactly as the walk does.
fn assert_index_complete(log: &dyn EventLog, t: &TenantId, when: &str) {
    let want = scanned(log, t);
    assert!(want.len() >= 4, "{when}: the sample names several keys");
    for (key, records) in &want {
        let got = log
            .read_key(t, *key, 0, usize::MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, records, "{when}: key {key}");
    }
    let keys: Vec<KeyId> = log
        .tenant_keys(t, None, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, want.keys().copied().collect::<Vec<_>>(), "{when}");
    // Up to each sequence number, all the keys: the records without the
    // uses, and the uses summed, as a walk of the trail makes them.
    let head = log
        .tenant_head(t)
        .unwrap_or_else(|e| panic!("{e}"))
        .map_or(0, |h| h.0);
    let trail = log
        .read_tenant(t, 0, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"));
    for until in 0..=head {
        let mut records = Vec::new();
        let mut uses = BTreeMap::<KeyId, UseTotals>::new();
        for r in trail
            .iter()
            .filter(|r| r.seq <= until && touched_keys(&r.event).any(|k| keys.contains(&k)))
        {
            match as_use(&r.event) {
                Some(u) => uses.entry(u.key_id).or_default().add_used(u),
                None => records.push(r.clone()),
            }
        }
        let got = log
            .read_keys_until_summed(t, &keys, until)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.records, records, "{when}: up to {until}");
        assert_eq!(
            got.uses,
            uses.into_iter().collect::<Vec<_>>(),
            "{when}: uses up to {until}"
        );
    }
}

/// Appends past the last checkpoint live in the write-ahead log only; the
/// open that applies them writes their index entries too.
#[test]
fn index_entries_of_records_recovered_from_the_write_ahead_log() {
    let disk = FaultBackend::new();
    let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
    let t = tenant("acme");
    // Fewer than the 16 frames between checkpoints of `open_with_backend`:
    // every event of the sample's cycle, rotations included.
    for n in 0..8 {
        append(&log, &t, n * 3, 3);
    }
    let image: DiskImage = disk
        .crash_images(1)
        .last()
        .unwrap_or_else(|| panic!("no crash image"))
        .durable
        .clone();
    std::mem::forget(log);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    image.write_to(&path).unwrap_or_else(|e| panic!("{e}"));
    let recovered = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recovered.head().unwrap_or_else(|e| panic!("{e}")), 24);
    assert_index_complete(&recovered, &t, "after the recovery");
    append(&recovered, &t, 100, 3);
    assert_index_complete(&recovered, &t, "after the next append");
}

/// A file written before the index existed (no `key_index` table, no
/// mark) gets the index built on open, for every record; appends go on
/// indexing.
#[test]
fn an_older_file_gets_its_key_index_built_on_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let (a, b) = (tenant("a"), tenant("b"));
    {
        let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..5 {
            append(&log, &a, n * 7, 7);
            append(&log, &b, 1000 + n * 3, 3);
        }
        log.raw_forget_key_index().unwrap_or_else(|e| panic!("{e}"));
        let key = *scanned(&log, &a)
            .keys()
            .next()
            .unwrap_or_else(|| panic!("a key"));
        assert!(
            log.read_key(&a, key, 0, 10).is_err(),
            "the file is as an older release left it: no key index"
        );
    }
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    for t in [&a, &b] {
        assert_index_complete(&log, t, "after the open that built it");
    }
    append(&log, &a, 500, 6);
    assert_index_complete(&log, &a, "after an append");
    drop(log);
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_index_complete(&log, &a, "after a plain reopen");
}

/// A file with the first per-key index (every record, uses included, in
/// `key_index`, no `key_uses`) gets the index built anew on open: uses
/// apart, summed; appends go on indexing.
#[test]
fn a_file_with_the_first_key_index_gets_it_built_anew_on_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let (a, b) = (tenant("a"), tenant("b"));
    {
        let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..5 {
            append(&log, &a, n * 7, 7);
            append(&log, &b, 1000 + n * 3, 3);
        }
        log.raw_first_key_index().unwrap_or_else(|e| panic!("{e}"));
    }
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    for t in [&a, &b] {
        assert_index_complete(&log, t, "after the open that rebuilt it");
    }
    append(&log, &a, 500, 6);
    assert_index_complete(&log, &a, "after an append");
    drop(log);
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_index_complete(&log, &a, "after a plain reopen");
}

/// A record that does not decode, met while the index is built on open,
/// fails the open with its position named: an index short of it would
/// answer a key's history and its uses summed without it, silently.
#[test]
fn a_record_that_does_not_decode_fails_the_index_build_named() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let a = tenant("a");
    {
        let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        append(&log, &a, 0, 12);
        // As the release before `key_uses` left the file: the next open
        // builds the index anew, reading every record.
        log.raw_first_key_index().unwrap_or_else(|e| panic!("{e}"));
        let mut raw = log
            .raw_record(5)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a record at 5"));
        raw.payload = vec![0xff; raw.payload.len().max(1)];
        log.raw_put_record(&raw).unwrap_or_else(|e| panic!("{e}"));
    }
    match RedbLog::open(&path) {
        Ok(_) => panic!("a file with a damaged record was opened and indexed"),
        Err(e) => assert!(
            e.to_string().contains('5'),
            "the error names the position: {e}"
        ),
    }
}

/// `check_key_index` (what `keyledger replay` runs) finds the index equal
/// to the records, and names an entry changed behind the log's back: a
/// use sum that still decodes, a history entry gone, one that no record
/// gives. Each time the index is then rebuilt from the records, so it
/// answers as they do and the next check finds it equal.
#[test]
fn the_key_index_is_checked_against_the_records_and_rebuilt_when_it_differs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let (a, b) = (tenant("a"), tenant("b"));
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..5 {
        append(&log, &a, n * 7, 7);
        append(&log, &b, 1000 + n * 3, 3);
    }
    let check = || {
        log.check_key_index()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the redb log keeps an index apart"))
    };
    let equal = check();
    assert_eq!(equal.difference, None);
    assert!(equal.entries >= 45, "{equal:?}");

    let trail = log
        .read_tenant(&a, 0, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"));
    let (used, use_seq) = trail
        .iter()
        .find_map(|r| as_use(&r.event).map(|u| (u.key_id, r.seq)))
        .unwrap_or_else(|| panic!("the sample uses a key"));
    let (other, other_seq) = trail
        .iter()
        .find_map(|r| match as_use(&r.event) {
            Some(_) => None,
            None => touched_keys(&r.event).next().map(|k| (k, r.seq)),
        })
        .unwrap_or_else(|| panic!("the sample creates a key"));

    // A valid count one higher: the entry still decodes, so only the
    // comparison with the records can tell.
    let mut value = log
        .raw_key_use("a", used, use_seq)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("an entry for the use"));
    assert!(value[8] < 0x7f, "a one-byte valid count");
    value[8] += 1;
    log.raw_put_key_use("a", used, use_seq, &value)
        .unwrap_or_else(|e| panic!("{e}"));
    let found = check();
    let said = found.difference.unwrap_or_else(|| panic!("a changed sum"));
    assert!(
        said.starts_with("key_uses: ")
            && said.contains(&format!("key {used}, event {use_seq}"))
            && said.contains("differs"),
        "{said}"
    );
    assert_index_complete(&log, &a, "after the check rebuilt a changed sum");
    assert_eq!(check(), equal);

    log.raw_put_key_index("a", other, other_seq, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let said = check()
        .difference
        .unwrap_or_else(|| panic!("an entry gone"));
    assert_eq!(
        said,
        format!("key_index: tenant a, key {other}, event {other_seq} is missing")
    );
    assert_index_complete(&log, &a, "after the check rebuilt a missing entry");

    log.raw_put_key_index("b", other, 99, Some(1))
        .unwrap_or_else(|e| panic!("{e}"));
    let said = check()
        .difference
        .unwrap_or_else(|| panic!("an entry added"));
    assert_eq!(
        said,
        format!("key_index: tenant b, key {other}, event 99 is in no record")
    );
    assert_index_complete(&log, &b, "after the check removed an entry");
    assert_eq!(check(), equal);
    assert!(
        !dir.path().join("ledger.redb.key-index-check").exists(),
        "the scratch file is gone"
    );
    // The rebuild is a checkpoint: appends after it, in the write-ahead
    // log, are recovered once on the next open, and indexed.
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    append(&log, &a, 700, 3);
    drop(log);
    let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.head().unwrap_or_else(|e| panic!("{e}")), head + 3);
    assert_index_complete(&log, &a, "after appends past the rebuild, reopened");
    assert_eq!(
        log.check_key_index()
            .unwrap_or_else(|e| panic!("{e}"))
            .and_then(|c| c.difference),
        None
    );
}
