//! Tampering with the stored records, on both backends: chain verification
//! names the first bad position and sequence number, never misses one.

use std::path::PathBuf;

use keyledger_store::chain::{self, ChainProblem};
use keyledger_store::conformance::{batch, sample_events, tenant};
use keyledger_store::{EventLog, MemoryLog, RawRecord, RedbLog, StoreError, envelope};

/// A backend whose storage a test can damage directly.
trait Subject {
    fn name(&self) -> &'static str;
    fn log(&self) -> &dyn EventLog;
    /// The record stored at `position`.
    fn record(&self, position: u64) -> RawRecord;
    /// Stores `r` at `r.position`, overwriting or inserting.
    fn put(&mut self, r: &RawRecord);
    /// Deletes the record at `position` (not its index entry).
    fn delete(&mut self, position: u64);
    /// The position the tenant index names for `(tenant, seq)`.
    fn index(&self, tenant: &str, seq: u64) -> Option<u64>;
    fn put_index(&mut self, tenant: &str, seq: u64, position: u64);
    fn delete_index(&mut self, tenant: &str, seq: u64);
    /// Closes and reopens the storage (a no-op in memory).
    fn reopen(&mut self);
}

struct Memory(MemoryLog);

impl Subject for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn log(&self) -> &dyn EventLog {
        &self.0
    }
    fn record(&self, position: u64) -> RawRecord {
        self.0
            .raw_records()
            .into_iter()
            .find(|r| r.position == position)
            .unwrap_or_else(|| panic!("no record at {position}"))
    }
    fn put(&mut self, r: &RawRecord) {
        self.0.tamper(|records| {
            records.retain(|x| x.position != r.position);
            records.push(r.clone());
        });
    }
    fn delete(&mut self, position: u64) {
        self.0
            .tamper(|records| records.retain(|x| x.position != position));
    }
    fn index(&self, tenant: &str, seq: u64) -> Option<u64> {
        let mut found = None;
        self.0
            .tamper_index(|index| found = index.get(&(tenant.to_owned(), seq)).copied());
        found
    }
    fn put_index(&mut self, tenant: &str, seq: u64, position: u64) {
        self.0.tamper_index(|index| {
            index.insert((tenant.to_owned(), seq), position);
        });
    }
    fn delete_index(&mut self, tenant: &str, seq: u64) {
        self.0.tamper_index(|index| {
            index.remove(&(tenant.to_owned(), seq));
        });
    }
    fn reopen(&mut self) {
        self.0 = self.0.clone();
    }
}

struct Redb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Option<RedbLog>,
}

impl Redb {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("keyledger.redb");
        let log = RedbLog::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
        Redb {
            _dir: dir,
            path,
            log: Some(log),
        }
    }

    fn db(&self) -> &RedbLog {
        self.log.as_ref().unwrap_or_else(|| panic!("closed"))
    }
}

fn ok<T>(r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Subject for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn log(&self) -> &dyn EventLog {
        self.db()
    }
    fn record(&self, position: u64) -> RawRecord {
        ok(self.db().raw_record(position)).unwrap_or_else(|| panic!("no record at {position}"))
    }
    fn put(&mut self, r: &RawRecord) {
        ok(self.db().raw_put_record(r));
    }
    fn delete(&mut self, position: u64) {
        assert!(ok(self.db().raw_delete_record(position)));
    }
    fn index(&self, tenant: &str, seq: u64) -> Option<u64> {
        ok(self.db().raw_index(tenant, seq))
    }
    fn put_index(&mut self, tenant: &str, seq: u64, position: u64) {
        ok(self.db().raw_put_index(tenant, seq, position));
    }
    fn delete_index(&mut self, tenant: &str, seq: u64) {
        assert!(ok(self.db().raw_delete_index(tenant, seq)));
    }
    fn reopen(&mut self) {
        drop(self.log.take());
        self.log = Some(RedbLog::open(&self.path).unwrap_or_else(|e| panic!("reopen: {e}")));
    }
}

/// Runs `scenario` on a filled log of each backend.
///
/// Tenant `a` holds 8 events at positions 1 2 3 6 7 8 10 11 (seqs 1–8);
/// tenant `b` holds 3 at positions 4 5 9.
fn on_both(scenario: impl Fn(&mut dyn Subject)) {
    let subjects: Vec<Box<dyn Subject>> =
        vec![Box::new(Memory(MemoryLog::new())), Box::new(Redb::new())];
    for mut s in subjects {
        let log = s.log();
        let (a, b) = (tenant("a"), tenant("b"));
        for (t, n) in [(&a, 3), (&b, 2), (&a, 3), (&b, 1), (&a, 2)] {
            let v = ok(log.tenant_head(t)).map_or(0, |h| h.0);
            ok(log.append(vec![batch(t, v, sample_events(t, v, n))]));
        }
        scenario(&mut *s);
    }
}

/// Verifies `tenant` after a reopen; returns the first problem.
fn first_bad(s: &mut dyn Subject, tenant_name: &str) -> Option<ChainProblem> {
    s.reopen();
    let report = ok(chain::verify_tenant(s.log(), &tenant(tenant_name)));
    assert_eq!(
        report.ok,
        report.first_bad.is_none(),
        "{}: ok agrees",
        s.name()
    );
    report.first_bad
}

#[track_caller]
fn assert_problem(s: &mut dyn Subject, t: &str, position: u64, seq: u64, words: &str) {
    let name = s.name();
    let p = first_bad(s, t).unwrap_or_else(|| panic!("{name}: tampering with {t} was missed"));
    assert_eq!(
        (p.position, p.seq),
        (position, seq),
        "{name}: first bad position and seq of {t}: {p:?}"
    );
    assert!(
        p.problem.contains(words),
        "{name}: the problem says `{words}`: {}",
        p.problem
    );
}

#[test]
fn untouched_logs_verify() {
    on_both(|s| {
        for (t, n) in [("a", 8), ("b", 3)] {
            let r = ok(chain::verify_tenant(s.log(), &tenant(t)));
            assert!(r.ok, "{}: {r:?}", s.name());
            assert_eq!(r.events, n);
        }
        assert_eq!(first_bad(s, "a"), None, "{}: after reopen", s.name());
    });
}

#[test]
fn a_changed_payload_byte_is_named() {
    on_both(|s| {
        let mut r = s.record(7);
        assert_eq!((r.tenant.as_str(), r.seq), ("a", 5));
        if let Some(byte) = r.payload.last_mut() {
            *byte ^= 0x01;
        }
        s.put(&r);
        assert_problem(s, "a", 7, 5, "hash does not match: the event was changed");
        assert_eq!(first_bad(s, "b"), None, "{}: b is untouched", s.name());
    });
}

#[test]
fn a_changed_time_with_recomputed_hash_is_named() {
    // A careful forger recomputes the changed event's own hash: the next
    // event's link then breaks.
    on_both(|s| {
        let mut r = s.record(7);
        let mut event =
            ok(
                envelope::decode(&tenant("a"), &r.payload).map_err(|e| StoreError::Corrupt {
                    position: 7,
                    message: e.to_string(),
                }),
            );
        event.at = event.at.plus_seconds(3600);
        r.payload = envelope::encode(&event);
        r.hash = chain::link(&r.prev_hash, &r.tenant, r.seq, &r.payload);
        s.put(&r);
        assert_problem(s, "a", 8, 6, "link to predecessor broken");
    });
}

#[test]
fn a_deleted_event_is_named() {
    on_both(|s| {
        s.delete(7);
        s.delete_index("a", 5);
        assert_problem(s, "a", 8, 5, "sequence number 5 expected, 6 found");
        assert!(
            matches!(
                s.log().read_after(0, 100),
                Err(StoreError::Corrupt { position: 7, .. })
            ),
            "{}: replay stops at the hole",
            s.name()
        );
        assert!(
            matches!(
                s.log().read_tenant(&tenant("a"), 0, 100),
                Err(StoreError::Corrupt { .. })
            ),
            "{}: the tenant read stops at the hole",
            s.name()
        );
    });
}

#[test]
fn a_deleted_event_with_its_index_entry_left_is_named() {
    on_both(|s| {
        s.delete(7);
        assert_problem(s, "a", 8, 5, "sequence number 5 expected, 6 found");
    });
}

#[test]
fn two_swapped_events_are_named() {
    on_both(|s| {
        let (r2, r5) = (s.record(2), s.record(7));
        s.put(&RawRecord { position: 2, ..r5 });
        s.put(&RawRecord { position: 7, ..r2 });
        assert_problem(s, "a", 2, 2, "sequence number 2 expected, 5 found");
        assert!(
            matches!(
                s.log().read_tenant(&tenant("a"), 0, 100),
                Err(StoreError::Corrupt { .. })
            ),
            "{}: reads check the stored seq against the index",
            s.name()
        );
    });
}

#[test]
fn events_swapped_across_tenants_are_named() {
    on_both(|s| {
        let (a3, b1) = (s.record(3), s.record(4));
        s.put(&RawRecord { position: 3, ..b1 });
        s.put(&RawRecord { position: 4, ..a3 });
        assert_problem(s, "a", 3, 3, "belongs to tenant `b`");
        assert_problem(s, "b", 4, 1, "belongs to tenant `a`");
    });
}

/// Inserts `r` as tenant a's event `seq`, shifting the later index entries
/// up by one, as someone splicing an event into the chain would.
fn splice(s: &mut dyn Subject, seq: u64, r: &RawRecord) {
    for later in (seq..=8).rev() {
        let p = s
            .index("a", later)
            .unwrap_or_else(|| panic!("a/{later} is indexed"));
        s.put_index("a", later + 1, p);
    }
    s.put(r);
    s.put_index("a", seq, r.position);
}

#[test]
fn an_inserted_event_is_named() {
    on_both(|s| {
        let prev = s.record(6);
        let payload = envelope::encode(&sample_events(&tenant("a"), 99, 1)[0]);
        let forged = RawRecord {
            position: 12,
            tenant: "a".into(),
            seq: 5,
            prev_hash: prev.hash,
            hash: [9; 32],
            payload,
        };
        splice(s, 5, &forged);
        assert_problem(s, "a", 12, 5, "hash does not match");
    });
}

#[test]
fn an_inserted_event_with_a_correct_link_is_named_at_its_successor() {
    on_both(|s| {
        let prev = s.record(6);
        let payload = envelope::encode(&sample_events(&tenant("a"), 99, 1)[0]);
        let hash = chain::link(&prev.hash, "a", 5, &payload);
        let forged = RawRecord {
            position: 12,
            tenant: "a".into(),
            seq: 5,
            prev_hash: prev.hash,
            hash,
            payload,
        };
        splice(s, 5, &forged);
        // The forged event itself links; the old event 5, now sixth in the
        // index, says it is number 5.
        assert_problem(s, "a", 7, 6, "sequence number 6 expected, 5 found");
    });
}

#[test]
fn a_truncated_tail_is_named() {
    on_both(|s| {
        for (position, seq) in [(11, 8), (10, 7)] {
            s.delete(position);
            s.delete_index("a", seq);
        }
        assert_problem(s, "a", 0, 7, "removed from the end");
        let report = ok(chain::verify_tenant(s.log(), &tenant("a")));
        assert_eq!(
            report.events,
            6,
            "{}: six good events before the cut",
            s.name()
        );
    });
}

#[test]
fn an_event_appended_behind_the_logs_back_is_named() {
    on_both(|s| {
        let last = s.record(11);
        let payload = envelope::encode(&sample_events(&tenant("a"), 99, 1)[0]);
        let hash = chain::link(&last.hash, "a", 9, &payload);
        s.put(&RawRecord {
            position: 12,
            tenant: "a".into(),
            seq: 9,
            prev_hash: last.hash,
            hash,
            payload,
        });
        s.put_index("a", 9, 12);
        assert_problem(s, "a", 0, 9, "appended behind the log's back");
    });
}

#[test]
fn appending_to_a_damaged_chain_is_refused() {
    on_both(|s| {
        let mut r = s.record(11);
        r.hash = [7; 32];
        s.put(&r);
        s.reopen();
        let a = tenant("a");
        let res = s.log().append(vec![batch(&a, 8, sample_events(&a, 8, 1))]);
        assert!(
            matches!(res, Err(StoreError::Corrupt { position: 11, .. })),
            "{}: {res:?}",
            s.name()
        );
        // Other tenants keep working.
        let b = tenant("b");
        ok(s.log().append(vec![batch(&b, 3, sample_events(&b, 3, 1))]));
    });
}

#[test]
fn unreadable_record_bytes_are_named_in_redb() {
    let mut s = Redb::new();
    let a = tenant("a");
    ok(s.db().append(vec![batch(&a, 0, sample_events(&a, 0, 5))]));
    ok(s.db().raw_put_bytes(3, &[1, 0xff, 0xff]));
    assert_problem(&mut s, "a", 3, 3, "cannot be read");
    ok(s.db().raw_put_bytes(3, &[]));
    assert_problem(&mut s, "a", 3, 3, "cannot be read");
    // What the log said (it may name global positions) is kept apart from
    // the problem, which a tenant may be shown.
    let p = first_bad(&mut s, "a").expect("still bad");
    assert!(p.detail.is_some(), "{p:?}");
    assert!(matches!(
        s.db().read_after(0, 10),
        Err(StoreError::Corrupt { position: 3, .. })
    ));
}
