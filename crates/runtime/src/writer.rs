//! The writer: the one thread that appends to the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_core::{Ledger, TenantId, Timestamp, decide};
use keyledger_store::{Record, TenantAppend};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Job, Shared};

type Reply = oneshot::Sender<Result<Vec<Record>, Error>>;

/// Runs until a [`Job::Stop`] arrives or every sender is gone.
///
/// `decision` is the writer's own copy of the key state: it runs ahead of
/// the read model by the batch being committed, so that commands in one
/// batch see each other (a second revoke in the same batch is a conflict).
/// When a commit fails it is reset from the read model, which holds only
/// committed events.
pub(crate) fn run(shared: &Arc<Shared>, mut rx: mpsc::Receiver<Job>, mut decision: Ledger) {
    let max = shared.config.batch_commands_max.max(1);
    let mut batch = Vec::with_capacity(max.min(1024));
    loop {
        let Some(first) = next(&mut rx) else {
            return;
        };
        let mut stop = false;
        for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match job {
                Job::Command(command, reply) => batch.push((command, reply)),
                Job::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() >= max {
                break;
            }
        }
        commit(shared, &mut decision, &mut batch);
        if stop {
            return;
        }
    }
}

/// How long the writer polls for the next command before it parks. A
/// sequential client sends its next command within a few tens of
/// microseconds of its reply; catching it without a futex wake-up saves
/// that wake-up on every command. Bounded, so an idle writer sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(60);

fn next(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if start.elapsed() < IDLE_SPIN => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

fn commit(
    shared: &Shared,
    decision: &mut Ledger,
    batch: &mut Vec<(keyledger_core::Command, Reply)>,
) {
    if batch.is_empty() {
        return;
    }
    let now = shared.clock.now();
    let mut appends: Vec<TenantAppend> = Vec::with_capacity(batch.len());
    let mut waiting: Vec<(Reply, usize, usize)> = Vec::with_capacity(batch.len());
    let mut events_total = 0;
    for (command, reply) in batch.drain(..) {
        note_clock_behind(shared, decision, command.tenant(), now);
        let events = match decide(decision, &command, now) {
            Ok(events) => events,
            Err(e) => {
                let _ = reply.send(Err(Error::Command(e)));
                continue;
            }
        };
        let tenant = command.tenant().clone();
        let expected_version = decision.tenant(&tenant).map_or(0, |t| t.version);
        let applied = events
            .iter()
            .enumerate()
            .try_for_each(|(i, e)| decision.apply(expected_version + 1 + i as u64, e));
        if let Err(e) = applied {
            // A decision that does not fold is a bug in the core: refuse
            // the command and rebuild the copy without it.
            tracing::error!(error = %e, "a decided command did not fold; refused");
            *decision = shared.read_model().ledger.clone();
            reapply(decision, &appends);
            let _ = reply.send(Err(Error::Corrupt(e.to_string())));
            continue;
        }
        waiting.push((reply, events_total, events.len()));
        events_total += events.len();
        appends.push(TenantAppend {
            tenant,
            expected_version,
            events,
        });
    }
    if appends.is_empty() {
        return;
    }
    let started = Instant::now();
    let result = shared.log.append(appends);
    shared.metrics.commit_latency.observe(started.elapsed());
    let outcome = result.map_err(Error::from).and_then(|records| {
        if let Err(e) = shared.apply_committed(&records) {
            // The log holds records the read model has not seen: an earlier
            // commit reported as failed reached the log after all. Apply
            // everything past the head, this batch included.
            tracing::warn!(error = %e, "the log is ahead of the read model; catching up");
            catch_up(shared)?;
        }
        Ok(records)
    });
    match outcome {
        Ok(records) => {
            shared.metrics.note_commit(records.len(), waiting.len());
            for (reply, start, len) in waiting {
                let _ = reply.send(Ok(records[start..start + len].to_vec()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; nothing in the batch is acknowledged");
            shared.metrics.note_commit_failure();
            // When the log could not tell whether the commit reached the
            // disk, a later read may show it did: apply what is there so
            // the next decisions start from the log, not from a guess.
            if let Err(e) = catch_up(shared) {
                tracing::warn!(error = %e, "cannot read the log back after a failed commit");
            }
            *decision = shared.read_model().ledger.clone();
            for (reply, _, _) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn reapply(decision: &mut Ledger, appends: &[TenantAppend]) {
    for a in appends {
        for (i, e) in a.events.iter().enumerate() {
            let _ = decision.apply(a.expected_version + 1 + i as u64, e);
        }
    }
}

/// Applies every record the log holds past the read model's head; returns
/// how many. Used after a failure, when the log may hold a commit whose
/// outcome was reported as unknown.
fn catch_up(shared: &Shared) -> Result<u64, Error> {
    const PAGE: usize = 1024;
    let mut applied = 0;
    loop {
        let head = shared.read_model().head;
        let page = shared.log.read_after(head, PAGE)?;
        if page.is_empty() {
            return Ok(applied);
        }
        applied += page.len() as u64;
        shared.apply_committed(&page)?;
    }
}

/// Records a clock behind the tenant's last event: the decision then uses
/// the tenant's last time instead (event times in a tenant never
/// decrease), and the skew is counted and logged.
fn note_clock_behind(shared: &Shared, decision: &Ledger, tenant: &TenantId, now: Timestamp) {
    let Some(last) = decision.tenant(tenant).map(|t| t.last_at) else {
        return;
    };
    if last <= now {
        return;
    }
    let behind = last.as_micros().saturating_sub(now.as_micros()).max(0) as u64;
    shared.metrics.note_clock_behind(behind);
    tracing::warn!(
        %tenant,
        behind_micros = behind,
        "the clock is behind the tenant's last event; using the event's time"
    );
}
