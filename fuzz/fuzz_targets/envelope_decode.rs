//! The stored event decoder: no input panics; whatever decodes is an event
//! of the tenant asked for that survives a re-encode; and what chain
//! verification accepts (`chain::canonical_event`) is exactly the encoding
//! keyledger writes in the payload's version (`envelope::encode_as`), so
//! one event has one stored form per version.
#![no_main]

use keyledger_core::TenantId;
use keyledger_store::{chain, envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tenant) = "acme".parse::<TenantId>() else {
        return;
    };
    let Ok(event) = envelope::decode(&tenant, data) else {
        assert!(chain::canonical_event(&tenant, data).is_err());
        return;
    };
    assert_eq!(event.tenant, tenant, "decoded into another tenant");
    let again = envelope::encode(&event);
    let back = envelope::decode(&tenant, &again).expect("a re-encoded event must decode");
    assert_eq!(back, event);
    let stored_form = envelope::encode_as(&event, data[0]);
    if chain::canonical_event(&tenant, data).is_ok() {
        assert_eq!(
            stored_form.as_deref(),
            Some(data),
            "verification accepted a non-canonical payload"
        );
    } else {
        assert_ne!(
            stored_form.as_deref(),
            Some(data),
            "verification refused the canonical payload"
        );
    }
});
