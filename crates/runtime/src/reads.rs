//! Reads of the audit trail, recorded by group commit: one `AuditRead`
//! event per (tenant, actor, kind of read) per window, with the exact count
//! of the reads it records, and no read answered before its event is
//! durable (`docs/audit.md`, "Reads of the trail").
//!
//! A read of a quiet slot (no event of that tenant, actor and kind written
//! in the last window) is written at once, as one read. A read that arrives
//! within a window of the slot's last write joins the slot's open batch;
//! the batch is written when the window has passed, as one event, and every
//! reader in it waits for that one commit and gets its outcome. So a reader
//! alone feels no window, and no request rate makes the log grow faster than
//! one event per slot per window. A window of zero writes one event per
//! read. At shutdown every open batch is written at once.
//!
//! The batch is written by a task of its own, not by any reader: a reader
//! that hangs up while it waits (its read was counted, its data never sent)
//! cannot leave the others waiting. Such a read stays counted, as a read
//! recorded before a client that hung up was answered always was.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use keyledger_core::{Actor, AuditRead, AuditReadKind, Command, Principal, SeqRange, TenantId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Error, Keyledger};

/// The reads of one actor of one kind in one tenant share a slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SlotKey {
    tenant: TenantId,
    actor: Actor,
    what: AuditReadKind,
}

/// Reads waiting for one commit: what they add up to, and where their
/// outcome is published.
struct Batch {
    principal: Principal,
    read: AuditRead,
    done: watch::Sender<Option<Result<(), Error>>>,
}

struct Slot {
    /// The reads waiting for the next write, if any.
    open: Option<Batch>,
    /// The earliest instant the slot's next event may be written.
    next_write: Instant,
}

/// The slots of every reader that read within the last window.
pub(crate) struct Reads {
    window: Duration,
    slots: Mutex<HashMap<SlotKey, Slot>>,
    /// Set at shutdown: open batches are written at once.
    closing: watch::Sender<bool>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Reads {
    pub(crate) fn new(window: Duration) -> Self {
        Reads {
            window,
            slots: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
            writers: Mutex::new(Vec::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<SlotKey, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every open batch now and waits for them; reads that arrive
    /// from now on are written at once, one event each.
    pub(crate) async fn close(&self) {
        self.closing.send_replace(true);
        loop {
            let writers =
                std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
            if writers.is_empty() {
                return;
            }
            for w in writers {
                let _ = w.await;
            }
        }
    }
}

impl Keyledger {
    /// Records that `principal` read the tenant's trail (events
    /// `from_seq..=to_seq`; `0..=0` for a read that covered none), durably,
    /// before the data is handed out. A reader alone is written at once;
    /// reads by the same actor of the same kind within
    /// [`Config::audit_read_window`](crate::Config::audit_read_window) of
    /// the last such event wait for the window's end and are written
    /// together, as one `AuditRead` with their count (`docs/audit.md`,
    /// "Reads of the trail"). An error means the read was not recorded:
    /// hand nothing out.
    pub async fn record_audit_read(
        &self,
        principal: Principal,
        from_seq: u64,
        to_seq: u64,
        what: AuditReadKind,
    ) -> Result<(), Error> {
        let range = ((from_seq, to_seq) != (0, 0)).then_some(SeqRange {
            from: from_seq,
            to: to_seq,
        });
        record(self, principal, what, range).await
    }

    /// Records that `principal` was handed a page of the trail: the first
    /// to the last sequence number of the page (`0..=0` for an empty page).
    pub async fn record_page_read(
        &self,
        principal: Principal,
        page: &crate::AuditPage,
        what: AuditReadKind,
    ) -> Result<(), Error> {
        let from = page.records.first().map_or(0, |r| r.seq);
        let to = page.records.last().map_or(0, |r| r.seq);
        self.record_audit_read(principal, from, to, what).await
    }

    /// Records that `principal` exports the trail, before the export
    /// starts: the tenant's events `1..=head` (`0..=0` when it has none).
    pub async fn record_trail_export(&self, principal: Principal) -> Result<(), Error> {
        let size = self.tree_size(&principal.tenant);
        self.record_audit_read(principal, size.min(1), size, AuditReadKind::Export)
            .await
    }
}

/// Records one read by `principal` of `range` (`None`: the read covered no
/// event), durably, and returns once it is: alone, or with the other reads
/// of its slot's window.
pub(crate) async fn record(
    ledger: &Keyledger,
    principal: Principal,
    what: AuditReadKind,
    range: Option<SeqRange>,
) -> Result<(), Error> {
    let shared = &ledger.shared;
    let now = shared.clock.now();
    let one = Command::RecordAuditRead {
        principal: principal.clone(),
        read: AuditRead::one(what, range, now),
    };
    if shared.reads.window.is_zero() {
        return ledger.execute(one).await.map(|_| ());
    }
    // What the decision would refuse (a missing scope, a removed user, a
    // range that runs backwards) is refused now, not after a window.
    keyledger_core::decide(&shared.read_model().ledger, &one, now)?;
    let key = SlotKey {
        tenant: principal.tenant.clone(),
        actor: principal.actor.clone(),
        what,
    };
    let mut outcome = {
        let mut slots = shared.reads.slots();
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            open: None,
            next_write: Instant::now(),
        });
        match &mut slot.open {
            Some(batch) => {
                batch.read.add(range, now);
                batch.done.subscribe()
            }
            None => {
                let (done, outcome) = watch::channel(None);
                slot.open = Some(Batch {
                    principal,
                    read: AuditRead::one(what, range, now),
                    done,
                });
                let writer = tokio::spawn(write_when_due(ledger.clone(), key, slot.next_write));
                let mut writers = shared
                    .reads
                    .writers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                writers.retain(|w| !w.is_finished());
                writers.push(writer);
                outcome
            }
        }
    };
    match outcome.wait_for(Option::is_some).await {
        Ok(result) => result.clone().unwrap_or(Err(Error::ShuttingDown)),
        // The writer task ended without an outcome: the runtime is going away.
        Err(_) => Err(Error::ShuttingDown),
    }
}

/// Waits until `due` (or shutdown), then writes the slot's open batch as
/// one event and publishes the outcome to its readers; forgets the slot
/// once a window has passed with no new read.
async fn write_when_due(ledger: Keyledger, key: SlotKey, due: Instant) {
    let reads = &ledger.shared.reads;
    let mut closing = reads.closing.subscribe();
    tokio::select! {
        _ = tokio::time::sleep_until(due) => {}
        _ = closing.wait_for(|c| *c) => {}
    }
    let taken = {
        let mut slots = reads.slots();
        slots.get_mut(&key).and_then(|slot| {
            slot.next_write = Instant::now() + reads.window;
            slot.open.take().map(|b| (b, slot.next_write))
        })
    };
    let Some((batch, next_write)) = taken else {
        return;
    };
    let Batch {
        principal,
        read,
        done,
    } = batch;
    let outcome = ledger
        .execute(Command::RecordAuditRead { principal, read })
        .await
        .map(|_| ());
    done.send_replace(Some(outcome));
    tokio::select! {
        _ = tokio::time::sleep_until(next_write) => {}
        _ = closing.wait_for(|c| *c) => {}
    }
    let mut slots = reads.slots();
    if let Some(slot) = slots.get(&key)
        && slot.open.is_none()
        && slot.next_write <= Instant::now()
    {
        slots.remove(&key);
    }
}
