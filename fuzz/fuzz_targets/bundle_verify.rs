//! The offline evidence-bundle verifier (`keyledger audit verify-bundle`,
//! `keyledger_runtime::verify_bundle`) on untrusted input. No input panics,
//! and a bundle is accepted only if every event in it is a genuine event
//! of the ledger that signed it: the fixture (`fuzz/fixtures/bundle.jsonl`,
//! written by `keyledger audit bundle`, and its public key) is the only
//! truth the fuzzer can start from, so any accepted input may hold nothing
//! but the fixture's events, verbatim.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const BUNDLE: &[u8] = include_bytes!("../fixtures/bundle.jsonl");
const KEY_HEX: &str = include_str!("../fixtures/bundle.key");

struct Truth {
    key: VerifyingKey,
    /// The fixture's events by sequence number.
    events: HashMap<u64, Value>,
}

fn truth() -> &'static Truth {
    static TRUTH: OnceLock<Truth> = OnceLock::new();
    TRUTH.get_or_init(|| {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&KEY_HEX.trim()[2 * i..2 * i + 2], 16).expect("hex key");
        }
        let key = VerifyingKey::from_bytes(&bytes).expect("a public key");
        assert!(
            keyledger_runtime::verify_bundle(BUNDLE, &key).ok(),
            "the fixture verifies"
        );
        let events = BUNDLE
            .split(|&b| b == b'\n')
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_slice(l).expect("a JSON event");
                (v["seq"].as_u64().expect("seq"), v)
            })
            .collect();
        Truth { key, events }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = truth();
    let report = keyledger_runtime::verify_bundle(data, &t.key);
    if !report.ok() {
        return;
    }
    assert!(report.events > 0, "accepted a bundle without events");
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    lines.next();
    for l in lines {
        let v: Value = serde_json::from_slice(l).expect("an accepted event line is JSON");
        let seq = v["seq"].as_u64().expect("an accepted event has a seq");
        assert_eq!(
            Some(&v),
            t.events.get(&seq),
            "accepted an event that is not the ledger's"
        );
    }
});
