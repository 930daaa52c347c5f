//! The data directory as the runtime opens it for an embedder: an unsafe
//! directory is refused before anything is read, tenants keep checkpoint
//! files of their own, and a link put in place of one is not written
//! through (docs/operations.md, "The data directory's permissions").
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyledger_core::{Principal, TenantId, Timestamp};
use keyledger_runtime::datadir::{DataDirError, Problem};
use keyledger_runtime::{
    AuditConfig, Config, Error, Keyledger, ManualClock, NewKey, OsEntropy, UsageWindow,
};
use keyledger_store::{EventLog, MemoryLog};

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(log: Arc<dyn EventLog>, clock: &ManualClock, dir: &Path) -> Result<Keyledger, Error> {
    let mut audit = AuditConfig::in_dir(dir);
    audit.checkpoint_debounce = Duration::from_secs(3600);
    Keyledger::open_with(
        log,
        Config {
            usage_window: UsageWindow::Manual,
            audit: Some(audit),
            ..Config::default()
        },
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
}

async fn create(ledger: &Keyledger, tenant: &str) {
    let tenant: TenantId = tenant.parse().unwrap();
    ledger
        .create_key(
            Principal::user(tenant, "alice".parse().unwrap()),
            NewKey {
                name: "k".into(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
}

#[test]
fn a_directory_writable_by_others_is_refused_before_anything_is_read_or_written() {
    let rt = rt();
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let result = rt.block_on(async { open(Arc::new(MemoryLog::new()), &clock, &dir) });
    match result {
        Err(Error::DataDir(DataDirError {
            problem: Problem::Writable { mode: 0o777, .. },
            ..
        })) => {}
        other => panic!("expected the directory to be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no signing key was made in it"
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o777,
        "and it was not chmod'ed"
    );
}

#[test]
fn tenants_differing_by_case_keep_their_own_files_and_a_link_is_not_written_through() {
    let rt = rt();
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, &dir).unwrap();
        create(&ledger, "ACME").await;
        create(&ledger, "acme").await;
        create(&ledger, "acme").await;
        create(&ledger, "a.b").await;
        assert_eq!(ledger.write_checkpoints().unwrap(), 3);
        let checkpoints = dir.join("checkpoints");
        let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["%41%43%4D%45.jsonl", "a%2Eb.jsonl", "acme.jsonl"]);
        let sizes = |t: &str| -> Vec<u64> {
            let t: TenantId = t.parse().unwrap();
            ledger
                .stored_checkpoints(&t)
                .unwrap()
                .iter()
                .map(|c| c.size)
                .collect()
        };
        assert_eq!(sizes("ACME"), [1]);
        assert_eq!(sizes("acme"), [2]);
        for name in &names {
            let mode = std::fs::metadata(checkpoints.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }

        // Another tenant's line in a file (earlier versions kept `ACME` and
        // `acme` in one file on a case-insensitive file system) is skipped.
        let upper = std::fs::read_to_string(checkpoints.join("%41%43%4D%45.jsonl")).unwrap();
        let lower = checkpoints.join("acme.jsonl");
        let mut mixed = std::fs::read_to_string(&lower).unwrap();
        mixed.push_str(&upper);
        std::fs::write(&lower, mixed).unwrap();
        assert_eq!(sizes("acme"), [2]);

        // A link put in place of a checkpoint file while running: the
        // append fails, naming it, and the file elsewhere is untouched.
        let elsewhere = base.path().join("elsewhere.jsonl");
        std::fs::write(&elsewhere, "not keyledger's\n").unwrap();
        std::fs::remove_file(checkpoints.join("acme.jsonl")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, checkpoints.join("acme.jsonl")).unwrap();
        create(&ledger, "acme").await;
        let e = ledger.write_checkpoints().unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(e.contains("acme.jsonl"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&elsewhere).unwrap(),
            "not keyledger's\n"
        );
        let acme: TenantId = "acme".parse().unwrap();
        assert!(
            ledger.stored_checkpoints(&acme).is_err(),
            "nor read through"
        );
        ledger.shutdown().await.ok();
    });
    // And the next open refuses the directory, naming the link.
    let e = rt
        .block_on(async { open(log, &clock, &dir) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("acme.jsonl is a symbolic link"), "{e}");
}
