//! The key list (`Keyledger::list_keys`): a page is picked in one pass
//! over the tenant's keys (query.rs). Every sort, order, filter and page
//! size, paged to the end through the cursors, must give exactly the
//! matching keys sorted as a plain sort of all of them does, each once.

mod common;

use std::sync::Arc;

use common::{T0, now as now_of, open, tenant, user};
use keyledger_core::{KeyRecord, KeyStatus, Principal, RevokeReason, Timestamp, UpdateKey};
use keyledger_runtime::{Keyledger, ListQuery, ManualClock, NewKey, Order, SortField};
use keyledger_store::MemoryLog;

/// Names that sort differently by bytes and lower-cased, repeat, and have
/// non-ASCII letters (the Kelvin sign lower-cases to an ASCII `k`, a
/// capital sigma to a final sigma at the end of a word).
const NAMES: [&str; 12] = [
    "alpha",
    "Alpha",
    "beta",
    "BETA key",
    "Zulu",
    "zeta",
    "\u{212a}ey one",
    "key two",
    "Café",
    "café",
    "ΟΔΟΣ",
    "_underscore",
];

const OWNERS: [&str; 3] = ["ada", "bob", "cy"];

/// Keys created (rotations make more).
const KEYS: u64 = 150;

/// What the list is sorted by, as the cursor records it: the old
/// implementation's whole-list sort, kept here as the reference.
fn reference_value(k: &KeyRecord, sort: SortField) -> (String, i64) {
    match sort {
        SortField::Name => (k.name.to_lowercase(), 0),
        SortField::CreatedAt => (String::new(), k.created_at.as_micros()),
        SortField::LastUsedAt => (
            String::new(),
            k.last_used_at.map_or(-1, Timestamp::as_micros),
        ),
    }
}

fn reference(all: &[KeyRecord], q: &ListQuery, now: Timestamp) -> Vec<String> {
    let needle = q.q.as_deref().map(str::to_lowercase);
    let mut keys: Vec<&KeyRecord> = all
        .iter()
        .filter(|k| q.status.is_none_or(|s| k.status(now) == s))
        .filter(|k| {
            q.created_by
                .as_deref()
                .is_none_or(|c| k.owner.as_str() == c || k.created_by().matches(c))
        })
        .filter(|k| {
            needle
                .as_deref()
                .is_none_or(|n| k.name.to_lowercase().contains(n))
        })
        .collect();
    keys.sort_by(|a, b| {
        (reference_value(a, q.sort), a.id).cmp(&(reference_value(b, q.sort), b.id))
    });
    if q.order == Order::Desc {
        keys.reverse();
    }
    keys.iter().map(|k| k.id.to_string()).collect()
}

/// Every page of `q`, through the cursors.
fn paged(ledger: &Keyledger, q: &ListQuery) -> (Vec<String>, usize) {
    let acme = tenant("acme");
    let mut q = q.clone();
    let mut ids = Vec::new();
    let mut active = None;
    loop {
        let page = ledger.list_keys(&acme, &q).expect("a page");
        assert!(page.keys.len() <= q.limit.unwrap_or(50));
        assert!(
            active.is_none_or(|a| a == page.active_count),
            "the active count does not depend on the page"
        );
        active = Some(page.active_count);
        ids.extend(page.keys.iter().map(|(k, _)| k.id.to_string()));
        match page.next_cursor {
            Some(c) => {
                assert!(!page.keys.is_empty(), "a cursor after an empty page");
                q.cursor = Some(c);
            }
            None => break,
        }
    }
    (ids, active.unwrap_or(0))
}

#[test]
fn every_page_of_every_sort_and_filter_adds_up_to_a_plain_sort_of_the_keys() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let ledger =
        rt.block_on(async { open(Arc::new(MemoryLog::new()), &clock, 7, 64).expect("open") });
    let acme = tenant("acme");
    let operator = Principal::operator(acme.clone());
    let mut rng = common::Rng(0x1157);
    // Keys not revoked and their names, for renames.
    let mut named: Vec<(keyledger_core::KeyId, usize)> = Vec::new();
    // Every key's secret, revoked ones included, to use them again later.
    let mut secrets: Vec<String> = Vec::new();
    rt.block_on(async {
        // More keys than a block of the tenant's name buffer (64 names).
        for i in 0..KEYS {
            // Some keys share a creation instant (ties are broken by id).
            if rng.below(3) > 0 {
                clock.advance_micros(1 + rng.below(5_000) as i64);
            }
            let expires_at =
                (i % 7 == 3).then(|| Timestamp::from_micros(now_of(&clock).as_micros() + 20_000));
            let name = rng.below(NAMES.len() as u64) as usize;
            let created = ledger
                .create_key(
                    operator.clone(),
                    NewKey {
                        owner: Some(user(OWNERS[(i % 3) as usize])),
                        name: NAMES[name].to_owned(),
                        expires_at,
                        ..NewKey::default()
                    },
                )
                .await
                .expect("create");
            if i % 5 == 1 {
                ledger
                    .revoke_key(operator.clone(), created.key.id, RevokeReason::Manual)
                    .await
                    .expect("revoke");
            } else {
                named.push((created.key.id, name));
            }
            // Renames, of older keys too (the name buffer changes inside,
            // longer, shorter, ASCII or not).
            if i % 7 == 6 {
                let j = rng.below(named.len() as u64) as usize;
                let (id, before) = named[j];
                let after = (before + 1 + rng.below(NAMES.len() as u64 - 1) as usize) % NAMES.len();
                named[j].1 = after;
                ledger
                    .update_key(UpdateKey {
                        principal: operator.clone(),
                        key_id: id,
                        name: Some(NAMES[after].to_owned()),
                        description: None,
                        meta: None,
                        expires_at: None,
                        scopes: None,
                        credits: None,
                        limits: None,
                    })
                    .await
                    .expect("rename");
            }
            if i % 4 == 0 {
                let v = ledger.verify(created.secret.expose(), None);
                std::hint::black_box(v);
            }
            // Uses of older keys (revoked ones too, which count no valid
            // use), flushed now and then between the creates, renames and
            // revocations: a key's last use moves on, and keys used at one
            // instant share it (the clock stands still between some keys).
            secrets.push(created.secret.expose().to_owned());
            if i % 3 == 0 {
                for _ in 0..2 {
                    let j = rng.below(secrets.len() as u64) as usize;
                    std::hint::black_box(ledger.verify(&secrets[j], None));
                }
            }
            if i % 10 == 9 {
                ledger.flush_usage().await.expect("flush the usage");
            }
            // Expiries moved (an update, a rotation's grace), so the
            // tenant's count of keys by expiry follows them.
            if i % 6 == 2 && i % 5 != 1 {
                let soon = Timestamp::from_micros(now_of(&clock).as_micros() + 30_000);
                let later = Timestamp::from_micros(now_of(&clock).as_micros() + 3_600_000_000);
                ledger
                    .update_key(UpdateKey {
                        principal: operator.clone(),
                        key_id: created.key.id,
                        name: None,
                        description: None,
                        meta: None,
                        expires_at: Some(Some(if i % 12 == 2 { soon } else { later })),
                        scopes: None,
                        credits: None,
                        limits: None,
                    })
                    .await
                    .expect("update the expiry");
            }
            if i % 9 == 4 && i % 5 != 1 {
                ledger
                    .rotate_key(operator.clone(), created.key.id, 0, None)
                    .await
                    .expect("rotate");
                // Revoked by its rotation (no grace): no more renames.
                named.retain(|(id, _)| *id != created.key.id);
            }
        }
        ledger.flush_usage().await.expect("flush the usage");
    });
    // Some keys have expired by now.
    clock.advance_micros(1_000_000);
    let now = now_of(&clock);
    let all: Vec<KeyRecord> = {
        let q = ListQuery {
            limit: Some(1000),
            ..ListQuery::default()
        };
        let page = ledger.list_keys(&acme, &q).expect("every key");
        assert_eq!(page.next_cursor, None);
        page.keys.into_iter().map(|(k, _)| k).collect()
    };
    // Each rotation made a key.
    assert_eq!(
        all.len(),
        KEYS as usize + (0..KEYS).filter(|i| i % 9 == 4 && i % 5 != 1).count()
    );
    assert!(all.iter().any(|k| k.status(now) == KeyStatus::Expired));
    assert!(all.iter().any(|k| k.last_used_at.is_some()));
    assert!(all.iter().any(|k| k.last_used_at.is_none()));
    // Ties on the last use (broken by id, as the cursor records it).
    let mut uses: Vec<_> = all.iter().filter_map(|k| k.last_used_at).collect();
    uses.sort();
    assert!(
        uses.windows(2).any(|w| w[0] == w[1]),
        "no two keys last used at one instant"
    );
    let active = all
        .iter()
        .filter(|k| k.status(now) == KeyStatus::Active)
        .count();
    let mut checked = 0;
    for sort in [SortField::Name, SortField::CreatedAt, SortField::LastUsedAt] {
        for order in [Order::Asc, Order::Desc] {
            for status in [None, Some(KeyStatus::Active), Some(KeyStatus::Revoked)] {
                for created_by in [None, Some("bob")] {
                    for needle in [None, Some("KEY"), Some("al"), Some("é"), Some("ς")] {
                        for limit in [1, 3, 50] {
                            let q = ListQuery {
                                status,
                                created_by: created_by.map(str::to_owned),
                                q: needle.map(str::to_owned),
                                sort,
                                order,
                                cursor: None,
                                limit: Some(limit),
                            };
                            let (ids, active_count) = paged(&ledger, &q);
                            assert_eq!(ids, reference(&all, &q, now), "{q:?}");
                            assert_eq!(active_count, active, "{q:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 2 * 3 * 2 * 5 * 3);
    // The Kelvin sign's name is found by an ASCII search, as lower-casing finds it.
    let q = ListQuery {
        q: Some("key".into()),
        limit: Some(1000),
        ..ListQuery::default()
    };
    let found = ledger.list_keys(&acme, &q).expect("a search").keys;
    assert!(
        found
            .iter()
            .all(|(k, _)| k.name.to_lowercase().contains("key"))
    );
    assert_eq!(found.len(), reference(&all, &q, now).len());
}
