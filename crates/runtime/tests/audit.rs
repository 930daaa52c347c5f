//! Audit evidence in the runtime: trees follow the log (live and after
//! replay), proofs verify against signed checkpoints, reads are recorded,
//! idle tenants are checkpointed on the interval, and bundles verify.

use std::sync::Arc;
use std::time::Duration;

use keyledger_audit::checkpoint;
use keyledger_audit::merkle::{self, Hash};
use keyledger_core::{AuditReadKind, Principal, ScopeSet, TenantId, Timestamp};
use keyledger_runtime::audit::{BUNDLE_FORMAT, leaf_of, verify_bundle};
use keyledger_runtime::{AuditConfig, Config, Keyledger, ManualClock, NewKey, OsEntropy};
use keyledger_store::{EventLog, MemoryLog};

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(log: Arc<dyn EventLog>, clock: &ManualClock, dir: &std::path::Path) -> Keyledger {
    let mut audit = AuditConfig::in_dir(dir);
    // The background task stays out of the way; the test writes on demand.
    audit.checkpoint_debounce = Duration::from_secs(3600);
    Keyledger::open_with(
        log,
        Config {
            usage_window: keyledger_runtime::UsageWindow::Manual,
            audit: Some(audit),
            ..Config::default()
        },
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap()
}

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn trees_proofs_checkpoints_and_bundles() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let acme: TenantId = "acme".parse().unwrap();
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        for i in 0..9 {
            ledger
                .create_key(
                    Principal::user(acme.clone(), "alice".parse().unwrap()),
                    NewKey {
                        name: format!("key {i}"),
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap();
        }
        assert_eq!(ledger.tree_size(&acme), 9);
        // Leaves are the chain hashes of the log, in order.
        let raw = log.read_tenant_raw(&acme, 0, 100).unwrap();
        let leaves: Vec<Hash> = raw.iter().map(|r| leaf_of(&r.hash)).collect();
        let key = ledger.audit_public_key().unwrap();
        let signed = ledger.checkpoint(&acme).unwrap();
        assert_eq!(
            checkpoint::open(&signed.note, &key),
            Ok(signed.checkpoint.clone())
        );
        assert_eq!(signed.checkpoint.root, merkle::root_of_leaves(&leaves));
        assert_eq!(signed.checkpoint.origin, "keyledger/acme");
        // Inclusion and consistency proofs verify against the roots.
        for seq in 1..=9 {
            let p = ledger.inclusion_proof(&acme, seq, 9).unwrap();
            let proof: Vec<Hash> = p.proof.iter().map(|x| h(x)).collect();
            merkle::verify_inclusion(
                seq - 1,
                9,
                &leaves[seq as usize - 1],
                &proof,
                &signed.checkpoint.root,
            )
            .unwrap();
        }
        for old in 0..=9 {
            let c = ledger.consistency_proof(&acme, old, 9).unwrap();
            let proof: Vec<Hash> = c.proof.iter().map(|x| h(x)).collect();
            merkle::verify_consistency(old, 9, &h(&c.from_root), &h(&c.to_root), &proof).unwrap();
        }
        assert!(ledger.inclusion_proof(&acme, 10, 9).is_err());
        assert!(ledger.consistency_proof(&acme, 5, 10).is_err());

        // Reading the trail needs `audit:read` and is itself an event.
        let reader = Principal::api_key(
            acme.clone(),
            keyledger_core::KeyId::from_u128(1),
            "ci".into(),
            "alice".parse().unwrap(),
            ScopeSet::DEFAULT,
        );
        let no_audit = Principal {
            scopes: ScopeSet::EMPTY,
            ..reader.clone()
        };
        assert!(
            ledger
                .record_audit_read(no_audit, 1, 9, AuditReadKind::List)
                .await
                .is_err()
        );
        assert_eq!(ledger.tree_size(&acme), 9);
        let bundle = ledger
            .export_bundle(Principal::operator(acme.clone()), 2, 8)
            .await
            .unwrap();
        assert_eq!(ledger.tree_size(&acme), 10, "the export was recorded");
        assert_eq!(bundle.header.format, BUNDLE_FORMAT);
        assert_eq!(bundle.events.len(), 7);
        let bytes = bundle.to_jsonl();
        let report = verify_bundle(&bytes, &key);
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.inclusion_proofs_ok, 7);

        // Checkpoints: written when grown, and after an idle hour again.
        assert_eq!(ledger.write_checkpoints().unwrap(), 1);
        assert_eq!(ledger.write_checkpoints().unwrap(), 0, "nothing new");
        clock.advance_micros(3_600_000_000);
        assert_eq!(ledger.write_checkpoints().unwrap(), 1, "hourly when idle");
        let stored = ledger.stored_checkpoints(&acme).unwrap();
        assert_eq!(stored.len(), 2);
        assert!(stored.iter().all(|c| c.size == 10));
        ledger.shutdown().await.unwrap();
    });
    // After a restart, the tree is rebuilt by replay and matches.
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        assert_eq!(ledger.tree_size(&acme), 10);
        let stored = ledger.stored_checkpoints(&acme).unwrap();
        let key = ledger.audit_public_key().unwrap();
        let last = checkpoint::open(&stored[1].note, &key).unwrap();
        assert_eq!(ledger.checkpoint(&acme).unwrap().checkpoint.root, last.root);
        assert_eq!(
            ledger.write_checkpoints().unwrap(),
            0,
            "already checkpointed"
        );
        ledger.shutdown().await.unwrap();
    });
}

/// Polls `f` every 10 ms for up to 10 s (the background task runs on real
/// time; what it decides runs on the injected clock).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real background task, driven by an injected clock: a checkpoint
/// when the tree grows, none while idle within the hour, one per idle hour
/// (same size, later time: nothing happened in that window).
#[test]
fn the_background_task_checkpoints_growth_and_every_idle_hour() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let acme: TenantId = "acme".parse().unwrap();
    let hour = 3_600_000_000;
    let at = |micros: i64| Timestamp::from_micros(micros).to_rfc3339();
    rt.block_on(async {
        let mut audit = AuditConfig::in_dir(dir.path());
        audit.checkpoint_debounce = Duration::from_millis(20);
        let ledger = Keyledger::open_with(
            Arc::new(MemoryLog::new()),
            Config {
                usage_window: keyledger_runtime::UsageWindow::Manual,
                audit: Some(audit),
                ..Config::default()
            },
            Arc::new(clock.clone()),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
        .unwrap();
        let create = |name: &str| {
            ledger.create_key(
                Principal::user(acme.clone(), "alice".parse().unwrap()),
                NewKey {
                    name: name.into(),
                    ..NewKey::default()
                },
            )
        };
        create("one").await.unwrap();
        create("two").await.unwrap();
        let stored = || ledger.stored_checkpoints(&acme).unwrap();
        eventually("a checkpoint of the grown tree", || {
            stored().last().is_some_and(|c| c.size == 2)
        });
        let n = stored().len();
        // Idle, and less than an hour on the clock: nothing new.
        tokio::time::sleep(Duration::from_millis(200)).await;
        clock.advance_micros(hour - 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored().len(), n, "no checkpoint within the hour");
        // The hour is up: the same size, signed again at the new time.
        clock.advance_micros(1);
        eventually("the idle hour's checkpoint", || stored().len() == n + 1);
        let idle = stored().last().unwrap().clone();
        assert_eq!(idle.size, 2);
        assert_eq!(idle.at, at(T0 + hour));
        let key = ledger.audit_public_key().unwrap();
        let note = checkpoint::open(&idle.note, &key).unwrap();
        assert_eq!(note.extension("time"), Some(at(T0 + hour).as_str()));
        clock.advance_micros(hour);
        eventually("the next idle hour's", || stored().len() == n + 2);
        assert_eq!(stored().last().unwrap().at, at(T0 + 2 * hour));
        // Growth again: checkpointed at once, not at the hour.
        create("three").await.unwrap();
        eventually("the grown tree's", || {
            stored().last().is_some_and(|c| c.size == 3)
        });
        ledger.shutdown().await.unwrap();
    });
}

/// The signing key is created on first start, owner-only, with its public
/// key beside it; a restart signs with the same key.
#[test]
fn the_signing_key_is_created_once_owner_only() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let first = rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        let key = ledger.audit_public_key().unwrap();
        ledger.shutdown().await.unwrap();
        key
    });
    let path = dir.path().join(keyledger_runtime::audit::SIGNING_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    let public =
        std::fs::read_to_string(dir.path().join(keyledger_runtime::audit::PUBLIC_KEY_FILE))
            .unwrap();
    assert_eq!(
        public.trim(),
        keyledger_runtime::audit::encode_public_key(&first)
    );
    let again = rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        let key = ledger.audit_public_key().unwrap();
        ledger.shutdown().await.unwrap();
        key
    });
    assert_eq!(first, again, "the same key after a restart");
    // A damaged key file is refused, not replaced.
    std::fs::write(&path, "not a key\n").unwrap();
    let opened = Keyledger::open_with(
        log,
        Config {
            audit: Some(AuditConfig::in_dir(dir.path())),
            ..Config::default()
        },
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    );
    assert!(opened.is_err());
}

/// A bundle of 12 events (the 5th to the 16th of 20) and its key.
fn sample_bundle() -> &'static (Vec<u8>, keyledger_audit::VerifyingKey) {
    static SAMPLE: std::sync::OnceLock<(Vec<u8>, keyledger_audit::VerifyingKey)> =
        std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let acme: TenantId = "acme".parse().unwrap();
        rt.block_on(async {
            let ledger = open(Arc::new(MemoryLog::new()), &clock, dir.path());
            for i in 0..20 {
                ledger
                    .create_key(
                        Principal::user(acme.clone(), "alice".parse().unwrap()),
                        NewKey {
                            name: format!("key {i}"),
                            ..NewKey::default()
                        },
                    )
                    .await
                    .unwrap();
            }
            ledger.write_checkpoints().unwrap();
            let bytes = ledger.bundle(&acme, 5, 16).unwrap().to_jsonl();
            let key = ledger.audit_public_key().unwrap();
            ledger.shutdown().await.unwrap();
            (bytes, key)
        })
    })
}

/// What a valid bundle vouches for: the signed note text and every event,
/// field for field.
fn vouched(bytes: &[u8]) -> Option<(String, Vec<serde_json::Value>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: serde_json::Value = serde_json::from_str(lines.next()?).ok()?;
    let note = header["checkpoint"].as_str()?;
    let signed = note[..note.rfind("\n\n")?].to_owned();
    let mut events = Vec::new();
    for l in lines {
        events.push(serde_json::from_str::<serde_json::Value>(l).ok()?);
    }
    Some((signed, events))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Random damage to a bundle file (bytes overwritten, the file cut, a
    /// line repeated or dropped) never panics the verifier, and whenever it
    /// still says VALID, everything it vouches for is unchanged.
    /// proptest prints the failing case; `PROPTEST_RNG_SEED` replays one.
    #[test]
    fn damaged_bundles_never_panic_and_never_pass_changed(
        writes in proptest::collection::vec((proptest::prelude::any::<usize>(), 0x20u8..0x7f), 0..4),
        cut in proptest::prelude::any::<Option<usize>>(),
        line_op in proptest::prelude::any::<Option<(bool, usize)>>(),
    ) {
        let (good, key) = sample_bundle();
        let mut bytes = good.clone();
        for (at, b) in &writes {
            let i = at % bytes.len();
            bytes[i] = *b;
        }
        if let Some((repeat, at)) = line_op {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut lines: Vec<&str> = text.lines().collect();
            let i = at % lines.len();
            if repeat { lines.insert(i, lines[i]) } else { lines.remove(i); }
            bytes = (lines.join("\n") + "\n").into_bytes();
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let report = verify_bundle(&bytes, key);
        if report.ok() {
            proptest::prop_assert_eq!(vouched(&bytes), vouched(good), "{:?}", report);
        }
    }
}
