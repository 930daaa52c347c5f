//! The stored record decoder (format byte, header, payload), then the
//! payload: no input panics; an accepted record re-encodes to the input.
#![no_main]

use keyledger_core::TenantId;
use keyledger_store::{decode_record_bytes, encode_record_bytes, envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode_record_bytes(7, data) else {
        return;
    };
    assert_eq!(
        encode_record_bytes(&record),
        data,
        "an accepted record is not the canonical encoding"
    );
    if let Ok(tenant) = record.tenant.parse::<TenantId>()
        && let Ok(event) = envelope::decode(&tenant, &record.payload)
    {
        assert_eq!(event.tenant, tenant);
    }
});
