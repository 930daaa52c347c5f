//! The delivery store: a small redb file in the data directory
//! ([`STORE_FILE`]) holding how far the log was read for deliveries, every
//! delivery with its attempts, and the keys whose `key.expiring` notice was
//! made. It is this node's: with several nodes sharing a PostgreSQL log,
//! each node's store is its own (docs/operations.md, "Webhooks").
//!
//! Every change is one durable redb transaction: a delivery is made in the
//! same transaction that moves the read cursor past its event, so a crash
//! makes it again or not at all, never half; an attempt's result is
//! written before the next attempt starts.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::Path;

use keyledger_core::{KeyId, WebhookId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The delivery store's file in the data directory.
pub const STORE_FILE: &str = "webhooks.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (subscription, delivery number) → JSON of [`Delivery`].
const DELIVERIES: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("deliveries");
/// The deliveries still to send, in order: (subscription, delivery number).
const PENDING: TableDefinition<(u128, u64), ()> = TableDefinition::new("pending");
/// (subscription, delivery number, attempt number) → JSON of [`Attempt`].
const ATTEMPTS: TableDefinition<(u128, u64, u32), &[u8]> = TableDefinition::new("attempts");
/// Keys whose `key.expiring` notice was made → the expiry it announced.
const EXPIRING: TableDefinition<u128, i64> = TableDefinition::new("expiring");

const CURSOR: &str = "cursor";
const NEXT: &str = "next_delivery";

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet answered with a 2xx; attempts go on.
    Pending,
    /// Answered with a 2xx.
    Delivered,
    /// Not delivered within the retry time: given up.
    Failed,
    /// The subscription was deleted before it was delivered.
    Cancelled,
}

/// One message to one subscription, and how its delivery went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// The `webhook-id` header: the same on every attempt.
    pub(crate) msg_id: String,
    /// The notice type (`key.revoked`, …).
    pub(crate) ty: String,
    /// The event's global log position (none for a derived notice).
    pub(crate) position: Option<u64>,
    /// The event's tenant sequence number (none for a derived notice).
    pub(crate) seq: Option<u64>,
    /// The body, exactly as signed.
    pub(crate) body: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
    /// Microseconds: when it was made.
    pub(crate) created_at: i64,
    /// When the current round of attempts began (retries are bounded from it).
    pub(crate) first_attempt_at: Option<i64>,
    /// When the next attempt is due.
    pub(crate) next_attempt_at: i64,
}

/// One attempt to deliver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Attempt {
    /// Microseconds.
    pub(crate) at: i64,
    /// The receiver's status code, if it answered.
    pub(crate) status_code: Option<u16>,
    /// From the start of the request to its end, in milliseconds.
    pub(crate) latency_ms: u64,
    /// Why it failed, if it did (never holds the secret or the signature).
    pub(crate) error: Option<String>,
    /// `delivered`, `http_error`, `network_error` or `refused`.
    pub(crate) outcome: String,
}

/// The delivery store.
pub(crate) struct Store {
    db: Database,
}

fn fail(what: &'static str) -> impl Fn(redb::Error) -> Error {
    move |e| Error::unavailable(format!("the webhook delivery store: {what}: {e}"))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|e| unreachable!("a delivery serializes: {e}"))
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::unavailable(format!(
            "the webhook delivery store holds a bad record: {e}"
        ))
    })
}

impl Store {
    /// Opens (or creates) the store in `dir`, owner-only, without following a link.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(STORE_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = crate::datadir::open_no_follow(&mut options, &path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let backend =
            redb::backends::FileBackend::new(file).map_err(|e| fail("cannot open")(e.into()))?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| fail("cannot open")(e.into()))?;
        let store = Store { db };
        store.write(|tx| {
            tx.open_table(META)?;
            tx.open_table(DELIVERIES)?;
            tx.open_table(PENDING)?;
            tx.open_table(ATTEMPTS)?;
            tx.open_table(EXPIRING)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, Error> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| fail("cannot write")(e.into()))?;
        let out = f(&tx).map_err(fail("cannot write"))?;
        tx.commit().map_err(|e| fail("cannot commit")(e.into()))?;
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, Error> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| fail("cannot read")(e.into()))?;
        f(&tx).map_err(fail("cannot read"))
    }

    /// The last log position read for deliveries.
    pub(crate) fn cursor(&self) -> Result<u64, Error> {
        self.read(|tx| {
            let t = tx.open_table(META)?;
            Ok(t.get(CURSOR)?.map_or(0, |v| v.value()))
        })
    }

    /// Makes `deliveries` (in order), marks `expiring` keys as announced
    /// and moves the cursor to `cursor` (if given), in one transaction.
    pub(crate) fn enqueue(
        &self,
        deliveries: &[(WebhookId, Delivery)],
        expiring: &[(KeyId, i64)],
        cursor: Option<u64>,
    ) -> Result<(), Error> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let mut next = meta.get(NEXT)?.map_or(1, |v| v.value());
            {
                let mut all = tx.open_table(DELIVERIES)?;
                let mut pending = tx.open_table(PENDING)?;
                for (wh, d) in deliveries {
                    all.insert((wh.to_u128(), next), json(d).as_slice())?;
                    pending.insert((wh.to_u128(), next), ())?;
                    next += 1;
                }
            }
            meta.insert(NEXT, next)?;
            if let Some(c) = cursor {
                meta.insert(CURSOR, c)?;
            }
            let mut exp = tx.open_table(EXPIRING)?;
            for (key, at) in expiring {
                exp.insert(key.to_u128(), *at)?;
            }
            Ok(())
        })
    }

    /// Whether `key`'s `key.expiring` notice was made.
    pub(crate) fn expiring_announced(&self, key: KeyId) -> Result<bool, Error> {
        self.read(|tx| Ok(tx.open_table(EXPIRING)?.get(key.to_u128())?.is_some()))
    }

    /// The subscriptions with a delivery still to send.
    pub(crate) fn pending_webhooks(&self) -> Result<BTreeSet<WebhookId>, Error> {
        self.read(|tx| {
            let t = tx.open_table(PENDING)?;
            let mut out = BTreeSet::new();
            for row in t.iter()? {
                out.insert(WebhookId::from_u128(row?.0.value().0));
            }
            Ok(out)
        })
    }

    /// The subscription's first delivery still to send.
    pub(crate) fn next_pending(&self, wh: WebhookId) -> Result<Option<(u64, Delivery)>, Error> {
        let found = self.read(|tx| {
            let pending = tx.open_table(PENDING)?;
            let id = wh.to_u128();
            let Some(first) = pending.range((id, 0)..=(id, u64::MAX))?.next() else {
                return Ok(None);
            };
            let n = first?.0.value().1;
            let all = tx.open_table(DELIVERIES)?;
            Ok(all.get((id, n))?.map(|v| (n, v.value().to_vec())))
        })?;
        found.map(|(n, bytes)| Ok((n, parse(&bytes)?))).transpose()
    }

    /// Records an attempt and the delivery as it now stands (off the
    /// pending list unless it is still pending).
    pub(crate) fn record(
        &self,
        wh: WebhookId,
        n: u64,
        d: &Delivery,
        attempt: Option<&Attempt>,
    ) -> Result<(), Error> {
        let id = wh.to_u128();
        self.write(|tx| {
            tx.open_table(DELIVERIES)?
                .insert((id, n), json(d).as_slice())?;
            if let Some(a) = attempt {
                tx.open_table(ATTEMPTS)?
                    .insert((id, n, d.attempts), json(a).as_slice())?;
            }
            let mut pending = tx.open_table(PENDING)?;
            if d.status == DeliveryStatus::Pending {
                pending.insert((id, n), ())?;
            } else {
                pending.remove((id, n))?;
            }
            Ok(())
        })
    }

    /// The subscription's deliveries, newest first, before delivery
    /// number `before` (if given), at most `limit`, each with its attempts.
    pub(crate) fn list(
        &self,
        wh: WebhookId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Delivery, Vec<Attempt>)>, Error> {
        let id = wh.to_u128();
        let raw = self.read(|tx| {
            let all = tx.open_table(DELIVERIES)?;
            let attempts = tx.open_table(ATTEMPTS)?;
            let end = before.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            for row in all.range((id, 0)..(id, end))?.rev().take(limit) {
                let (k, v) = row?;
                let n = k.value().1;
                let mut tries = Vec::new();
                for a in attempts.range((id, n, 0)..=(id, n, u32::MAX))? {
                    tries.push(a?.1.value().to_vec());
                }
                out.push((n, v.value().to_vec(), tries));
            }
            Ok(out)
        })?;
        raw.into_iter()
            .map(|(n, d, tries)| {
                let tries = tries.iter().map(|a| parse(a)).collect::<Result<_, _>>()?;
                Ok((n, parse(&d)?, tries))
            })
            .collect()
    }

    /// One delivery.
    pub(crate) fn get(&self, wh: WebhookId, n: u64) -> Result<Option<Delivery>, Error> {
        let raw = self.read(|tx| {
            let all = tx.open_table(DELIVERIES)?;
            Ok(all.get((wh.to_u128(), n))?.map(|v| v.value().to_vec()))
        })?;
        raw.map(|b| parse(&b)).transpose()
    }
}
