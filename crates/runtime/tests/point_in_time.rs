//! Point in time with keys used many times across days (issue 13): a page
//! of keys folds each key's other events and its uses summed from the
//! store's use index (`key_uses`), never the `KeyUsed` events one by one,
//! and answers as a replay of the tenant's trail does at every sequence
//! number; a key's history still lists every use; a data directory with the
//! first per-key index (uses in `key_index`) is upgraded on open and
//! answers the same.

mod common;

use std::sync::Arc;

use common::{tenant, user};
use keyledger_core::{
    AuditFilter, EventType, KeyId, Principal, RevokeReason, Timestamp, UpdateKey,
};
use keyledger_runtime::{Keyledger, ManualClock, NewKey, PointInTime};
use keyledger_store::{EventLog, Record, RedbLog};

const HOUR_MICROS: i64 = 3_600 * 1_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Every key's history, whole (pages of 50), by key.
fn histories(l: &Keyledger, t: &str, keys: &[KeyId]) -> Vec<Vec<Record>> {
    keys.iter()
        .map(|id| {
            let mut out = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = l
                    .key_history(&tenant(t), *id, cursor.as_deref(), Some(50))
                    .unwrap_or_else(|e| panic!("key_history {id}: {e}"));
                out.extend(page.records);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            out
        })
        .collect()
}

/// The events about `id` in the tenant's trail, uses included: what its
/// history must list.
fn trail_of(log: &dyn EventLog, t: &str, id: KeyId) -> Vec<Record> {
    let filter = AuditFilter {
        key_id: Some(id),
        include_usage: true,
        ..AuditFilter::default()
    };
    log.read_tenant(&tenant(t), 0, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|r| filter.matches(&r.event))
        .collect()
}

#[test]
fn pages_of_keys_used_across_days_equal_the_replay_and_survive_an_index_upgrade() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ledger.redb");
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let acme = tenant("acme");
    let ada = Principal::user(acme.clone(), user("ada"));
    let redb = Arc::new(RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}")));
    let log: Arc<dyn EventLog> = redb.clone();

    let (keys, states) = rt.block_on(async {
        let l = common::open(log.clone(), &clock, 7, 16).unwrap_or_else(|e| panic!("{e}"));
        let mut keys = Vec::new();
        let mut secrets = Vec::new();
        for (i, t) in ["acme", "acme", "globex", "acme", "acme"]
            .iter()
            .enumerate()
        {
            let created = l
                .create_key(
                    Principal::user(tenant(t), user("ada")),
                    NewKey {
                        name: format!("k{i}"),
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("create: {e}"));
            keys.push(((*t).to_owned(), created.key.id));
            secrets.push(created.secret.expose().to_owned());
        }
        // Five days, two usage windows a day, key `i` used `i + day + 1`
        // times a window and refused once for a scope; on the way a
        // revocation, a rotation (whose successor is used too) and a
        // rename.
        for day in 0..5usize {
            for _window in 0..2 {
                for (i, secret) in secrets.iter().enumerate() {
                    for _ in 0..=(i + day) {
                        let _ = l.verify(secret, None);
                    }
                    let scope = "webhooks:manage"
                        .parse()
                        .unwrap_or_else(|e| panic!("{e:?}"));
                    let _ = l.verify(secret, Some(scope));
                }
                l.flush_usage()
                    .await
                    .unwrap_or_else(|e| panic!("flush: {e}"));
                clock.advance_micros(11 * HOUR_MICROS);
            }
            match day {
                1 => {
                    l.revoke_key(ada.clone(), keys[3].1, RevokeReason::Manual)
                        .await
                        .unwrap_or_else(|e| panic!("revoke: {e}"));
                }
                2 => {
                    let next = l
                        .rotate_key(ada.clone(), keys[0].1, 86_400, None)
                        .await
                        .unwrap_or_else(|e| panic!("rotate: {e}"));
                    keys.push(("acme".to_owned(), next.key.id));
                    secrets.push(next.secret.expose().to_owned());
                }
                3 => {
                    let mut u = UpdateKey::new(ada.clone(), keys[1].1);
                    u.name = Some("renamed".into());
                    l.update_key(u)
                        .await
                        .unwrap_or_else(|e| panic!("update: {e}"));
                }
                _ => {}
            }
        }
        // The keys were used many times, on several days.
        let k1 = l.key(&acme, keys[1].1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k1.uses.valid,
            (0..5).map(|d| 2 * (1 + d + 1)).sum::<u64>(),
            "key 1: its valid uses over five days"
        );
        assert_eq!(k1.uses.insufficient_scope, 10);
        assert!(k1.last_used_at.is_some());
        let uses_of_k1 = trail_of(log.as_ref(), "acme", keys[1].1)
            .iter()
            .filter(|r| EventType::of(&r.event) == EventType::KeyUsed)
            .count();
        assert_eq!(uses_of_k1, 10, "one KeyUsed a window");
        let checked = common::check_state_at(&l, log.as_ref(), "redb");
        assert!(checked > 50, "every seq of both tenants: {checked}");
        // Histories list every use, as the trail does.
        let acme_keys: Vec<KeyId> = keys
            .iter()
            .filter(|(t, _)| t == "acme")
            .map(|(_, k)| *k)
            .collect();
        let got = histories(&l, "acme", &acme_keys);
        for (id, history) in acme_keys.iter().zip(&got) {
            assert_eq!(
                history,
                &trail_of(log.as_ref(), "acme", *id),
                "history of {id}"
            );
        }
        // The states at each hour of the run, by page of 2.
        let mut states = Vec::new();
        for hour in 0..=(5 * 22) {
            let at = PointInTime::Instant(Timestamp::from_micros(common::T0 + hour * HOUR_MICROS));
            let page = l
                .state_at_page(&acme, at, None, Some(100))
                .unwrap_or_else(|e| panic!("state_at_page: {e}"));
            let whole = l.state_at(&acme, at).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                page.keys, whole.keys,
                "at hour {hour}: a page and the replay"
            );
            states.push(page.keys);
        }
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        (acme_keys, (got, states))
    });
    drop(log);

    // As the release with the first index left it: every use in
    // `key_index`. The open builds the index anew.
    redb.raw_first_key_index().unwrap_or_else(|e| panic!("{e}"));
    drop(redb);
    let log: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap_or_else(|e| panic!("{e}")));
    rt.block_on(async {
        let l = common::open(log.clone(), &clock, 7, 16).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            histories(&l, "acme", &keys),
            states.0,
            "histories after the upgrade"
        );
        for (hour, want) in states.1.iter().enumerate() {
            let at = PointInTime::Instant(Timestamp::from_micros(
                common::T0 + hour as i64 * HOUR_MICROS,
            ));
            let page = l
                .state_at_page(&acme, at, None, Some(100))
                .unwrap_or_else(|e| panic!("state_at_page: {e}"));
            assert_eq!(&page.keys, want, "at hour {hour} after the upgrade");
        }
        common::check_state_at(&l, log.as_ref(), "redb, after the upgrade");
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}
