//! Regressions found by the fuzz targets (`fuzz/`): inputs that decoded
//! although keyledger never writes them.

use keyledger_store::chain::{self, verify_tenant};
use keyledger_store::conformance::{sample_events, tenant};
use keyledger_store::{
    EventLog, MemoryLog, RawRecord, TenantAppend, decode_record_bytes, envelope,
};

/// Found by `envelope_decode`: postcard reads an overlong varint (`80 80 00`
/// for 0), so one event had many stored forms and chain verification took
/// them all. It now refuses any payload that is not the canonical encoding.
#[test]
fn a_payload_with_an_overlong_number_fails_chain_verification() {
    let t = tenant("acme");
    let event = sample_events(&t, 0, 1).remove(0);
    let canonical = envelope::encode(&event);
    assert!(chain::canonical_event(&t, &canonical).is_ok());
    // The fuzzer's input: a varint 0 written in eight bytes.
    let fuzzed: &[u8] = &[
        1, 128, 155, 240, 228, 136, 210, 163, 6, 2, 3, 128, 128, 128, 128, 128, 128, 128, 0, 0, 0,
    ];
    let decoded = envelope::decode(&t, fuzzed).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(envelope::encode(&decoded), fuzzed);
    assert!(chain::canonical_event(&t, fuzzed).is_err());

    // Stored in a log with a correct hash, verification names it.
    let log = MemoryLog::new();
    log.append(vec![TenantAppend {
        tenant: t.clone(),
        expected_version: 0,
        events: vec![decoded],
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    let stored = log
        .read_tenant_raw(&t, 0, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw: RawRecord = stored[0].clone();
    raw.payload = fuzzed.to_vec();
    raw.hash = chain::link(&raw.prev_hash, "acme", raw.seq, &raw.payload);
    log.tamper(|records| records[0] = raw.clone());
    log.tamper_heads(|heads| {
        heads.insert("acme".into(), (1, raw.hash));
    });
    let report = verify_tenant(&log, &t).unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.ok, "a non-canonical payload passed verification");
}

/// Found by `record_decode`: the stored record header took an overlong
/// varint for its sequence number. Such a record is now refused as damaged.
#[test]
fn a_record_header_with_an_overlong_number_is_refused() {
    let raw = RawRecord {
        position: 7,
        tenant: "acme".into(),
        seq: 122,
        prev_hash: [0; 32],
        hash: [1; 32],
        payload: vec![1, 2, 3],
    };
    let canonical = keyledger_store::encode_record_bytes(&raw);
    assert_eq!(decode_record_bytes(7, &canonical).ok(), Some(raw));
    // Sequence number 122 as `fa 00` instead of `7a`.
    let mut overlong = canonical.clone();
    let at = 1 + 1 + 1 + 4;
    assert_eq!(overlong[at], 122);
    overlong.splice(at..=at, [0xfa, 0x00]);
    assert!(decode_record_bytes(7, &overlong).is_err());
}
