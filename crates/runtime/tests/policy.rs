//! The writer's key-policy calls (issue 14) through the real command path:
//! `update_key`, `reserve_credits`, `release_credits`, `refill_credits`;
//! what a key's change does to verification; and that the log they write
//! replays to the live projections, on redb and after a reopen.

mod common;

use std::sync::Arc;

use common::*;
use keyledger_core::{
    CommandError, Credits, Principal, RateLimit, Refill, RefillInterval, Scope, ScopeSet,
    Timestamp, UpdateKey,
};
use keyledger_runtime::{Error, ManualClock, NewKey, VerifyOutcome};
use keyledger_store::{EventLog, RedbLog};

/// 2026-03-01T10:00:00Z.
const T0: i64 = 1_772_359_200_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn metered() -> NewKey {
    NewKey {
        name: "metered".into(),
        scopes: Some(ScopeSet::EMPTY.with(Scope::KeysRead).with(Scope::UsageRead)),
        credits: Some(Credits {
            remaining: 100,
            refill: Some(Refill {
                amount: 40,
                interval: RefillInterval::Daily,
                day: None,
            }),
        }),
        limits: vec![RateLimit {
            name: "burst".into(),
            limit: 10,
            duration_ms: 1000,
        }],
        ..NewKey::default()
    }
}

#[test]
fn the_writer_calls_reserve_release_refill_and_update_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let acme = tenant("acme");
    rt().block_on(async {
        let log: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap());
        let l = open(log, &clock, 1, 64).unwrap();
        let alice = Principal::user(acme.clone(), user("alice"));
        let created = l.create_key(alice.clone(), metered()).await.unwrap();
        let id = created.key.id;
        let epoch = created.key.credit_state().unwrap().epoch;
        assert_eq!(created.key.limits().len(), 1);

        // Reservations grant min(want, remaining), then refuse distinctly.
        assert_eq!(l.reserve_credits(&acme, id, epoch, 64).await.unwrap(), 64);
        assert_eq!(l.reserve_credits(&acme, id, epoch, 64).await.unwrap(), 36);
        assert!(matches!(
            l.reserve_credits(&acme, id, epoch, 1).await,
            Err(Error::Command(CommandError::CreditsExhausted(k))) if k == id
        ));
        l.release_credits(&acme, id, epoch, 6).await.unwrap();
        assert_eq!(
            l.key(&acme, id).unwrap().credit_state().unwrap().remaining,
            6
        );

        // No refill is due before midnight; after, one is written.
        assert_eq!(l.refill_credits(&acme, id).await.unwrap(), None);
        clock.advance_micros(3 * 86_400 * 1_000_000);
        let due = l
            .refill_credits(&acme, id)
            .await
            .unwrap()
            .expect("a refill is due");
        assert_eq!(due.to_rfc3339(), "2026-03-04T00:00:00Z");
        assert_eq!(l.refill_credits(&acme, id).await.unwrap(), None);
        let c = l.key(&acme, id).unwrap().credit_state().cloned().unwrap();
        assert_eq!((c.remaining, c.outstanding), (40, 0));
        assert!(matches!(
            l.release_credits(&acme, id, epoch, 1).await,
            Err(Error::Command(CommandError::StaleEpoch { .. }))
        ));

        // An update narrows the scopes and the verification map follows at once.
        let secret = created.secret.expose().to_owned();
        assert_eq!(
            l.verify(&secret, Some(Scope::UsageRead)).outcome,
            VerifyOutcome::Valid
        );
        let mut u = UpdateKey::new(alice.clone(), id);
        u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead));
        u.name = Some("narrowed".into());
        let updated = l.update_key(u).await.unwrap();
        assert_eq!(&*updated.name, "narrowed");
        assert_eq!(
            l.verify(&secret, Some(Scope::UsageRead)).outcome,
            VerifyOutcome::InsufficientScope
        );
        assert_eq!(
            l.verify(&secret, Some(Scope::KeysRead)).outcome,
            VerifyOutcome::Valid
        );
        // A shorter expiry is enforced at once too.
        let mut u = UpdateKey::new(alice.clone(), id);
        u.expires_at = Some(Some(Timestamp::from_micros(
            clock_now(&clock).as_micros() + 1_000_000,
        )));
        l.update_key(u).await.unwrap();
        clock.advance_micros(2_000_000);
        assert_eq!(l.verify(&secret, None).outcome, VerifyOutcome::Expired);
        // Nothing to change is refused.
        assert!(matches!(
            l.update_key(UpdateKey::new(alice, id)).await,
            Err(Error::Command(CommandError::NoChange(_)))
        ));
        l.flush_usage().await.unwrap();
        l.shutdown().await.unwrap();
        let live = l.projections();
        drop(l);

        // The log replays to the same projections, and a reopen agrees.
        let log: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap());
        assert_eq!(fold(log.as_ref()), live);
        let reopened = open(log, &clock, 2, 64).unwrap();
        assert_eq!(reopened.projections(), live);
        assert_eq!(
            reopened.verify(&secret, None).outcome,
            VerifyOutcome::Expired
        );
        let report = reopened.verify_chain(&acme, &mut |_| {}).unwrap();
        assert!(report.ok, "{:?}", report.first_bad);
        reopened.shutdown().await.unwrap();
    });
}

fn clock_now(c: &ManualClock) -> Timestamp {
    keyledger_runtime::Clock::now(c)
}
