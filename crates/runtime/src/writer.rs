//! The writer: the one thread that appends to the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_core::{Ledger, decide};
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
        shared.apply_committed(&records)?;
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
