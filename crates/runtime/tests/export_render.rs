//! The export's renderer (`keyledger_runtime::export`) writes exactly what
//! the trail entry (`views::AuditEntry`) serializes to: for every event
//! kind and actor, for awkward strings and times, against the entry
//! itself and against a fixture the entry wrote (`BLESS=1`, from
//! `AuditEntry` only: `tests/fixtures/export/trail.{jsonl,csv}`). Evidence bundles
//! compare exported details with their signed bytes, so not one byte may
//! differ.

use keyledger_core::{
    Actor, AuditRead, AuditReadKind, Cause, Credits, CreditsRefilled, CreditsReleased,
    CreditsReserved, Event, EventKind, KeyChange, KeyCreated, KeyId, KeyLeaked, KeyRevoked,
    KeyRotated, KeyUpdated, KeyUsed, LeakReporter, LogRecovered, Meta, RateLimit, Refill,
    RefillInterval, RevokeReason, Scope, ScopeSet, SecretHash, SeqRange, Timestamp, UseCounts,
    UserRemoved, WebhookDeleted, WebhookId, WebhookSubscribed,
};
use keyledger_runtime::export::{CsvFields, json_line};
use keyledger_runtime::views::AuditEntry;
use keyledger_store::Record;
use proptest::prelude::*;

const FIXTURE_JSONL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/export/trail.jsonl"
);
const FIXTURE_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/export/trail.csv"
);

fn at(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn key(n: u128) -> KeyId {
    KeyId::from_u128(n)
}

/// Awkward text: quotes, backslashes, every kind of control character
/// serde_json escapes by name or by number, DEL, non-ASCII, separators.
const AWKWARD: &str = "a \"quoted\" \\ back\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f} é ✓ 😀 \u{2028}/</";

fn created(n: u128) -> KeyCreated {
    KeyCreated {
        key_id: key(n),
        owner: "alice".parse().expect("user"),
        name: format!("key {n}"),
        description: None,
        expires_at: None,
        scopes: ScopeSet::DEFAULT,
        secret_hash: SecretHash::of("secret"),
        masked: "klk_abcd…wxyz".into(),
        rotated_from: None,
        meta: None,
        credits: None,
        limits: Vec::new(),
    }
}

/// One event of every kind, most several times (each option set and
/// not), by every actor, at times with 0, 3 and 6 fractional digits.
fn events() -> Vec<Event> {
    let tenant: keyledger_core::TenantId = "acme-1.x_y".parse().expect("tenant");
    let alice = Actor::User {
        id: "alice".parse().expect("user"),
    };
    let awkward_user = Actor::User {
        id: "bob \"the\" \\ builder ✓".parse().expect("user"),
    };
    let api_key = Actor::ApiKey {
        key_id: key(7),
        name: AWKWARD.into(),
        owner: "alice".parse().expect("user"),
    };
    let ci = Actor::ApiKey {
        key_id: key(u128::MAX >> 2),
        name: "CI/CD Pipeline".into(),
        owner: "carol".parse().expect("user"),
    };
    let kinds: Vec<(Actor, EventKind)> = vec![
        (alice.clone(), EventKind::KeyCreated(created(1))),
        (
            api_key.clone(),
            EventKind::KeyCreated(KeyCreated {
                description: Some(AWKWARD.into()),
                expires_at: Some(at(1_767_225_600_123_000)),
                scopes: ScopeSet::ALL,
                rotated_from: Some(key(1)),
                name: AWKWARD.into(),
                meta: Meta::new(
                    r#"{"z":1,"a":{"y":[1,2.5,-3e2],"b":"x\u00e9\"y"},"m":null,"t":true}"#.into(),
                )
                .ok(),
                credits: Some(Credits {
                    remaining: u64::MAX,
                    refill: Some(Refill {
                        amount: 100,
                        interval: RefillInterval::Monthly,
                        day: Some(31),
                    }),
                }),
                limits: vec![
                    RateLimit {
                        name: "burst".into(),
                        limit: 10,
                        duration_ms: 1000,
                    },
                    RateLimit {
                        name: "day.long-1".into(),
                        limit: 0,
                        duration_ms: 86_400_000,
                    },
                ],
                ..created(2)
            }),
        ),
        (
            Actor::Operator,
            EventKind::KeyCreated(KeyCreated {
                scopes: ScopeSet::EMPTY.with(Scope::ALL[0]),
                credits: Some(Credits {
                    remaining: 0,
                    refill: Some(Refill {
                        amount: 5,
                        interval: RefillInterval::Daily,
                        day: None,
                    }),
                }),
                ..created(3)
            }),
        ),
        (
            Actor::Operator,
            EventKind::KeyCreated(KeyCreated {
                scopes: ScopeSet::EMPTY,
                credits: Some(Credits {
                    remaining: 9,
                    refill: None,
                }),
                meta: Meta::new("{}".into()).ok(),
                ..created(4)
            }),
        ),
        (
            Actor::System,
            EventKind::KeyUsed(KeyUsed {
                key_id: key(1),
                window_start: at(1_767_225_600_000_000),
                window_end: at(1_767_225_660_000_000),
                last_valid_at: Some(at(1_767_225_659_999_999)),
                counts: UseCounts {
                    valid: 12,
                    revoked: 1,
                    expired: 2,
                    insufficient_scope: 3,
                    ..UseCounts::default()
                },
            }),
        ),
        (
            Actor::System,
            EventKind::KeyUsed(KeyUsed {
                key_id: key(2),
                window_start: at(951_782_400_000_000),
                window_end: at(951_868_800_000_001),
                last_valid_at: None,
                counts: UseCounts {
                    valid: 0,
                    revoked: 0,
                    expired: 0,
                    insufficient_scope: 0,
                    usage_exceeded: 4,
                    rate_limited: 5,
                    credits_spent: u64::MAX,
                },
            }),
        ),
        (
            Actor::System,
            EventKind::KeyUsed(KeyUsed {
                key_id: key(2),
                window_start: at(0),
                window_end: at(253_402_300_799_999_999),
                last_valid_at: Some(at(1)),
                counts: UseCounts {
                    rate_limited: 1,
                    ..UseCounts::default()
                },
            }),
        ),
        (
            ci.clone(),
            EventKind::KeyRevoked(KeyRevoked {
                key_id: key(1),
                reason: RevokeReason::Manual,
                cause: None,
            }),
        ),
        (
            Actor::System,
            EventKind::KeyRevoked(KeyRevoked {
                key_id: key(2),
                reason: RevokeReason::UserRemoved,
                cause: Some(Cause::UserRemoved {
                    user_id: "bob \"the\" \\ builder ✓".parse().expect("user"),
                    seq: 41,
                }),
            }),
        ),
        (
            Actor::System,
            EventKind::KeyRevoked(KeyRevoked {
                key_id: key(3),
                reason: RevokeReason::Compromised,
                cause: None,
            }),
        ),
        (
            alice.clone(),
            EventKind::KeyRotated(KeyRotated {
                key_id: key(3),
                new_key_id: key(1 << 100),
                expires_at: at(1_709_164_800_500_000),
            }),
        ),
        (
            awkward_user.clone(),
            EventKind::UserRemoved(UserRemoved {
                user_id: "bob \"the\" \\ builder ✓".parse().expect("user"),
            }),
        ),
        (
            alice.clone(),
            EventKind::KeyUpdated(KeyUpdated {
                key_id: key(4),
                changes: vec![
                    KeyChange::Name {
                        before: "key 4".into(),
                        after: AWKWARD.into(),
                    },
                    KeyChange::Credits {
                        before: None,
                        after: Some(Credits {
                            remaining: 3,
                            refill: None,
                        }),
                    },
                ],
            }),
        ),
        (
            Actor::System,
            EventKind::CreditsReserved(CreditsReserved {
                key_id: key(4),
                epoch: 2,
                amount: 64,
            }),
        ),
        (
            Actor::System,
            EventKind::CreditsReleased(CreditsReleased {
                key_id: key(4),
                epoch: 2,
                amount: 7,
            }),
        ),
        (
            Actor::System,
            EventKind::CreditsRefilled(CreditsRefilled {
                key_id: key(4),
                due_at: at(1_767_225_600_000_000),
                remaining: 100,
            }),
        ),
        (
            Actor::Operator,
            EventKind::AuditRead(AuditRead {
                what: AuditReadKind::Export,
                count: 3,
                ranges: vec![
                    SeqRange::new(1, 4).expect("range"),
                    SeqRange::new(9, 9).expect("range"),
                ],
                window_start: at(1_767_225_600_000_000),
                window_end: at(1_767_225_601_000_000),
            }),
        ),
        (
            ci.clone(),
            EventKind::AuditRead(AuditRead::one(AuditReadKind::List, None, at(5))),
        ),
        (
            Actor::Operator,
            EventKind::LogRecovered(LogRecovered {
                epoch: 2,
                old_origin: "keyledger.example/log".into(),
                signed_size: 10,
                signed_root: [0xab; 32],
                recovered_size: 8,
                agreed_size: 7,
                reason: AWKWARD.into(),
            }),
        ),
        (
            Actor::System,
            EventKind::KeyLeaked(KeyLeaked {
                key_id: key(2),
                source: Some("commit".into()),
                url: Some("https://example.com/a?b=\"c\"".into()),
                reporter: LeakReporter::Partner("GitHub ✓".into()),
            }),
        ),
        (
            ci.clone(),
            EventKind::KeyLeaked(KeyLeaked {
                key_id: key(2),
                source: None,
                url: None,
                reporter: LeakReporter::Tenant,
            }),
        ),
        (
            alice.clone(),
            EventKind::WebhookSubscribed(WebhookSubscribed {
                webhook_id: WebhookId::from_u128(99),
                url: "https://hooks.example.com/k".into(),
                event_types: vec!["key.created".into(), "key.revoked".into()],
                description: Some(AWKWARD.into()),
            }),
        ),
        (
            alice,
            EventKind::WebhookDeleted(WebhookDeleted {
                webhook_id: WebhookId::from_u128(99),
            }),
        ),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, (actor, kind))| Event {
            tenant: tenant.clone(),
            // 0, 3 and 6 fractional digits in turn, across years.
            at: at(946_684_800_000_000
                + i as i64 * 31_622_400_000_000
                + [0, 250_000, 123_457][i % 3]),
            actor,
            kind,
        })
        .collect()
}

fn records() -> Vec<Record> {
    let mut prev = [0u8; 32];
    events()
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let n = i as u64 + 1;
            let hash: [u8; 32] = std::array::from_fn(|j| (j as u8).wrapping_mul(37) ^ n as u8);
            let r = Record {
                position: n * 3,
                seq: n,
                prev_hash: prev,
                hash,
                event,
            };
            prev = hash;
            r
        })
        .collect()
}

/// The export as the entry renders it: JSON lines, and CSV with its header.
fn by_entry(records: &[Record]) -> (Vec<u8>, Vec<u8>) {
    let mut jsonl = Vec::new();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(AuditEntry::CSV_HEADER).expect("csv");
    for r in records {
        serde_json::to_writer(&mut jsonl, &AuditEntry::from(r)).expect("json");
        jsonl.push(b'\n');
        w.write_record(AuditEntry::from(r).csv_row()).expect("csv");
    }
    (jsonl, w.into_inner().expect("csv"))
}

/// The export as the renderer writes it.
fn by_renderer(records: &[Record]) -> (Vec<u8>, Vec<u8>) {
    let mut jsonl = Vec::new();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(AuditEntry::CSV_HEADER).expect("csv");
    let mut fields = CsvFields::new();
    for r in records {
        json_line(r, &mut jsonl);
        w.write_record(fields.fill(r)).expect("csv");
    }
    (jsonl, w.into_inner().expect("csv"))
}

#[test]
fn the_renderer_writes_what_the_entry_serializes_to_for_every_kind() {
    let records = records();
    let kinds: std::collections::BTreeSet<_> =
        records.iter().map(|r| r.event.type_name()).collect();
    assert_eq!(
        kinds.len(),
        keyledger_core::EventType::ALL.len(),
        "every kind is here"
    );
    for r in &records {
        let (a, b) = (
            by_entry(std::slice::from_ref(r)),
            by_renderer(std::slice::from_ref(r)),
        );
        assert_eq!(
            String::from_utf8_lossy(&b.0),
            String::from_utf8_lossy(&a.0),
            "the JSON line of {}",
            r.event.type_name()
        );
        assert_eq!(
            String::from_utf8_lossy(&b.1),
            String::from_utf8_lossy(&a.1),
            "the CSV row of {}",
            r.event.type_name()
        );
    }
}

/// The renderer against the fixture the entry wrote: `BLESS=1` writes it
/// again from the entry, never from the renderer.
#[test]
fn the_export_is_byte_identical_to_the_fixture() {
    let records = records();
    if std::env::var_os("BLESS").is_some() {
        let (jsonl, csv) = by_entry(&records);
        std::fs::create_dir_all(std::path::Path::new(FIXTURE_JSONL).parent().expect("dir"))
            .expect("mkdir");
        std::fs::write(FIXTURE_JSONL, jsonl).expect("write");
        std::fs::write(FIXTURE_CSV, csv).expect("write");
    }
    let (jsonl, csv) = by_renderer(&records);
    assert_eq!(
        String::from_utf8_lossy(&jsonl),
        std::fs::read_to_string(FIXTURE_JSONL).expect("the JSON lines fixture")
    );
    assert_eq!(
        String::from_utf8_lossy(&csv),
        std::fs::read_to_string(FIXTURE_CSV).expect("the CSV fixture")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any time, text, id and count renders as the entry does.
    #[test]
    fn any_key_event_renders_as_the_entry(
        micros in prop_oneof![
            0i64..=253_402_300_799_999_999,
            (0i64..=253_402_300_799).prop_map(|s| s * 1_000_000),
            (0i64..=253_402_300_799_999).prop_map(|ms| ms * 1000),
        ],
        name in any::<String>(),
        ulid in any::<u128>(),
        counts in proptest::array::uniform7(prop_oneof![Just(0u64), any::<u64>()]),
        hash in any::<[u8; 32]>(),
        seq in 1u64..,
    ) {
        let ulid = ulid >> 2;
        let used = Event {
            tenant: "t".parse().expect("tenant"),
            at: at(micros),
            actor: Actor::ApiKey {
                key_id: key(ulid),
                name: name.clone(),
                owner: "o".parse().expect("user"),
            },
            kind: EventKind::KeyUsed(KeyUsed {
                key_id: key(ulid),
                window_start: at(micros),
                window_end: at(micros.saturating_add(1)),
                last_valid_at: (counts[0] % 2 == 0).then(|| at(micros)),
                counts: UseCounts {
                    valid: counts[0],
                    revoked: counts[1],
                    expired: counts[2],
                    insufficient_scope: counts[3],
                    usage_exceeded: counts[4],
                    rate_limited: counts[5],
                    credits_spent: counts[6],
                },
            }),
        };
        let made = Event {
            kind: EventKind::KeyCreated(KeyCreated {
                name: name.clone(),
                description: Some(name),
                expires_at: Some(at(micros)),
                rotated_from: Some(key(ulid)),
                ..created(ulid)
            }),
            ..used.clone()
        };
        let records: Vec<Record> = [used, made]
            .into_iter()
            .map(|event| Record { position: seq, seq, prev_hash: hash, hash, event })
            .collect();
        let (a, b) = (by_entry(&records), by_renderer(&records));
        prop_assert_eq!(String::from_utf8_lossy(&b.0), String::from_utf8_lossy(&a.0));
        prop_assert_eq!(String::from_utf8_lossy(&b.1), String::from_utf8_lossy(&a.1));
    }
}
