//! What several benchmarks share: a log filled straight through
//! `EventLog::append`, the shape replay and audit figures are measured on.

use keyledger_core::{
    Actor, Event, EventKind, KeyCreated, KeyId, KeyPrefix, KeyUsed, ScopeSet, Secret, TenantId,
    Timestamp, UseCounts, UserId,
};
use keyledger_store::{EventLog, TenantAppend};

/// Appends `n` events to tenant `acme`: a tenth `KeyCreated`, then
/// `KeyUsed` windows spread over those keys, in batches of 10,000.
///
/// Key ids start at `key_base`, and `tag` goes into every key's material,
/// so a log that already holds keys (a database shared by several phases)
/// gets new ids and secrets. Continues from the tenant's head.
pub fn fill_with(log: &dyn EventLog, n: usize, key_base: u128, tag: u8) {
    let tenant: TenantId = "acme".parse().expect("tenant");
    let owner: UserId = "alice".parse().expect("user");
    let keys = (n / 10).max(1);
    let prefix = KeyPrefix::default();
    let at = Timestamp::from_micros(1_767_225_600_000_000);
    let mut version = log.tenant_head(&tenant).expect("head").map_or(0, |h| h.0);
    let mut written = 0;
    while written < n {
        let batch = (n - written).min(10_000);
        let events: Vec<Event> = (written..written + batch)
            .map(|i| {
                let kind = if i < keys {
                    let mut material = [0u8; 32];
                    material[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    material[8] = tag;
                    let s = Secret::from_material(&prefix, &material);
                    EventKind::KeyCreated(KeyCreated {
                        meta: None,
                        credits: None,
                        limits: Vec::new(),
                        key_id: KeyId::from_u128(key_base + i as u128),
                        owner: owner.clone(),
                        name: format!("key {i}"),
                        description: None,
                        expires_at: None,
                        scopes: ScopeSet::DEFAULT,
                        secret_hash: s.hash(),
                        masked: s.masked(),
                        rotated_from: None,
                    })
                } else {
                    EventKind::KeyUsed(KeyUsed {
                        key_id: KeyId::from_u128(key_base + (i % keys) as u128),
                        window_start: at,
                        window_end: at.plus_seconds(1),
                        last_valid_at: Some(at),
                        counts: UseCounts {
                            usage_exceeded: 0,
                            rate_limited: 0,
                            credits_spent: 0,
                            valid: 7,
                            revoked: 0,
                            expired: 0,
                            insufficient_scope: 1,
                        },
                    })
                };
                Event {
                    tenant: tenant.clone(),
                    at,
                    actor: Actor::System,
                    kind,
                }
            })
            .collect();
        log.append(vec![TenantAppend {
            tenant: tenant.clone(),
            expected_version: version,
            events,
        }])
        .expect("fill");
        version += batch as u64;
        written += batch;
    }
}

/// [`fill_with`] on a fresh log: key ids from 1.
#[allow(dead_code)] // Not every benchmark uses both.
pub fn fill(log: &dyn EventLog, n: usize) {
    fill_with(log, n, 1, 0);
}
