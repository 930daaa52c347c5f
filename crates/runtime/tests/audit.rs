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
        assert_eq!(bundle.format, BUNDLE_FORMAT);
        assert_eq!(bundle.events.len(), 7);
        let bytes = serde_json::to_vec(&bundle).unwrap();
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
