//! The writer: the one thread that appends to the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_core::{Overlay, StateView, TenantId, Timestamp, decide};
use keyledger_store::{Record, StoreError, TenantAppend};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Job, Shared};

type Reply = oneshot::Sender<Result<Vec<Record>, Error>>;

/// Runs until a [`Job::Stop`] arrives or every sender is gone.
///
/// The writer decides against the read model (it is the read model's only
/// mutator) through an [`Overlay`] of what the batch being decided changed,
/// so that commands in one batch see each other (a second revoke in the
/// same batch is a conflict). The overlay is dropped once the batch is
/// decided: the committed events reach the read model by applying them,
/// and a failed commit leaves no trace.
pub(crate) fn run(shared: &Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let max = shared.config.batch_commands_max.max(1);
    let mut batch = Vec::with_capacity(max.min(1024));
    let mut in_doubt: Vec<InDoubt> = Vec::new();
    loop {
        let tick = (!in_doubt.is_empty()).then_some(IN_DOUBT_RETRY);
        let first = match next(&mut rx, tick) {
            Next::Job(job) => Some(job),
            Next::Tick => None,
            Next::Closed => {
                settle_in_doubt(shared, &mut in_doubt, true);
                return;
            }
        };
        let mut stop = false;
        for job in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match job {
                Job::Command(command, reply) => batch.push((command, reply)),
                Job::Apply(page) => follow(shared, &page),
                Job::CatchUp => {
                    if let Err(e) = catch_up(shared) {
                        tracing::debug!(error = %e, "cannot read the log to answer a miss");
                    }
                }
                Job::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() >= max {
                break;
            }
        }
        if !in_doubt.is_empty() {
            // Shutting down: the flusher's last flush waits for these.
            let giving_up = stop || shared.follow.stopping();
            settle_in_doubt(shared, &mut in_doubt, giving_up);
        }
        commit(shared, &mut batch, &mut in_doubt);
        // Between two commits the projections are of one position.
        shared.snapshot_tick();
        if stop {
            settle_in_doubt(shared, &mut in_doubt, true);
            return;
        }
    }
}

/// Usage whose append failed in a way that may have written it after all
/// (the connection to a shared database was lost with the `COMMIT` sent).
/// The flusher puts counts back on an error and writes them again later,
/// so answering it before knowing would count those uses twice; the writer
/// keeps the answer until a read of the log tells.
struct InDoubt {
    tenant: keyledger_core::TenantId,
    expected_version: u64,
    events: Vec<keyledger_core::Event>,
    reply: Reply,
}

/// How often the writer looks at the log again while usage is in doubt.
const IN_DOUBT_RETRY: Duration = Duration::from_millis(100);

/// Answers in-doubt usage once the log can be read: written (its events
/// are the tenant's events right after the version they were decided
/// against) or not (another event holds that place, or none does: a
/// shared log's appends are serialized, so once it can be read a failed
/// append has either committed or never will). `giving_up` (shutdown):
/// what cannot be told is answered as failed, counts kept in memory only.
fn settle_in_doubt(shared: &Shared, in_doubt: &mut Vec<InDoubt>, giving_up: bool) {
    if in_doubt.is_empty() {
        return;
    }
    let caught_up = catch_up(shared);
    let mut kept = Vec::new();
    for d in in_doubt.drain(..) {
        let found = caught_up.as_ref().map_err(Clone::clone).and_then(|_| {
            shared
                .log
                .read_tenant(&d.tenant, d.expected_version, d.events.len())
                .map_err(Error::from)
        });
        match found {
            Ok(records) => {
                let written = records.len() == d.events.len()
                    && records.iter().zip(&d.events).all(|(r, e)| r.event == *e);
                if written {
                    tracing::info!(tenant = %d.tenant, "usage whose commit was in doubt is in the log");
                    let _ = d.reply.send(Ok(records));
                } else {
                    let _ = d.reply.send(Err(Error::unavailable(
                        "the log was unavailable; these uses were not written",
                    )));
                }
            }
            Err(e) if giving_up => {
                tracing::error!(error = %e, tenant = %d.tenant, "stopping while usage is in doubt: whether it was written is not known");
                let _ = d.reply.send(Err(e));
            }
            Err(_) => kept.push(d),
        }
    }
    *in_doubt = kept;
}

/// Applies a page of the log the follower read (records other nodes
/// wrote), skipping what is applied already: the follower may have read
/// this node's own commits too, which the writer applied when it made them.
fn follow(shared: &Shared, page: &[Record]) {
    let head = shared.read_model().head;
    let fresh = &page[page.partition_point(|r| r.position <= head)..];
    let applied = match fresh.first() {
        None => Ok(()),
        Some(r) if r.position == head + 1 => apply_records(shared, fresh, |_| false),
        // The page does not start where the read model ends: read the log.
        Some(_) => catch_up(shared).map(|_| ()),
    };
    if let Err(e) = applied {
        tracing::warn!(error = %e, "cannot apply what other nodes wrote; retrying");
    }
    shared.follow.handled();
}

/// How long the writer polls for the next command before it parks. A
/// sequential client sends its next command within a few tens of
/// microseconds of its reply; catching it without a futex wake-up saves
/// that wake-up on every command. Bounded, so an idle writer sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(60);

// Returned once per job, moved straight into the batch: boxing would cost
// an allocation per command.
#[allow(clippy::large_enum_variant)]
enum Next {
    Job(Job),
    /// `tick` passed without a job.
    Tick,
    /// Every sender is gone.
    Closed,
}

/// The next job; with a `tick`, gives up after it (polling: tokio's
/// channel has no blocking receive with a timeout).
fn next(rx: &mut mpsc::Receiver<Job>, tick: Option<Duration>) -> Next {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Next::Job(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::error::TryRecvError::Empty) if start.elapsed() < IDLE_SPIN => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => match tick {
                None => return rx.blocking_recv().map_or(Next::Closed, Next::Job),
                Some(t) if start.elapsed() >= t => return Next::Tick,
                Some(_) => std::thread::sleep(Duration::from_millis(2)),
            },
        }
    }
}

/// Most times one batch is decided again after another node appended to
/// one of its tenants first. Each retry follows the log first, so it only
/// loses again if yet another append slipped in; past this, the callers
/// get an error instead of waiting forever.
const CONFLICT_RETRIES_MAX: u32 = 64;

/// Longest wait for the log to show this node's own commit when reading
/// it back (a log that orders by commit shows it at once).
const READ_BACK_WAIT_MAX: Duration = Duration::from_secs(30);

/// Decides, appends and applies one batch, answering every caller.
///
/// The append is optimistic: each tenant's events name the version they
/// were decided against. When another node appended to one of those
/// tenants first, nothing is written; the writer takes in what the log
/// holds and decides the whole batch again, so a command is never lost,
/// never applied twice, and one that no longer holds gets its real
/// refusal (a second revoke: `AlreadyRevoked`).
fn commit(
    shared: &Shared,
    batch: &mut Vec<(keyledger_core::Command, Reply)>,
    in_doubt: &mut Vec<InDoubt>,
) {
    let mut conflicts = 0;
    loop {
        if batch.is_empty() {
            return;
        }
        let now = shared.clock.now();
        let Decided {
            appends,
            waiting,
            usage,
        } = decide_batch(shared, batch, now);
        if appends.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = shared.log.append(appends);
        shared.metrics.commit_latency.observe(started.elapsed());
        let failure = match result {
            Ok(records) => match apply_own(shared, &records) {
                Ok(()) => {
                    shared.metrics.note_commit(records.len(), waiting.len());
                    for ((_, reply), (start, len)) in batch.drain(..).zip(waiting) {
                        let _ = reply.send(Ok(records[start..start + len].to_vec()));
                    }
                    return;
                }
                Err(e) => e,
            },
            Err(StoreError::Conflict {
                tenant,
                expected,
                actual,
            }) if conflicts < CONFLICT_RETRIES_MAX => {
                // Nothing was written (and the batch's events were never
                // applied): take in what the other nodes wrote, and decide
                // again.
                conflicts += 1;
                shared
                    .metrics
                    .append_conflicts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%tenant, expected, actual, conflicts, "another node appended first; deciding again");
                match catch_up(shared) {
                    Ok(_) => continue,
                    Err(e) => e,
                }
            }
            Err(e) => {
                // The backend may have written it after all (an unanswered
                // COMMIT): usage waits until the log tells.
                // (Only a shared backend says `Unavailable`; a local
                // file's failed commit is not written.)
                let maybe_written = matches!(e, StoreError::Unavailable(_));
                let e = Error::from(e);
                if maybe_written {
                    set_usage_in_doubt(batch, usage, in_doubt);
                }
                e
            }
        };
        fail_batch(shared, batch, &failure);
        return;
    }
}

/// A batch decided against the read model and the batch's overlay, ready
/// to append.
struct Decided {
    /// One append per command that holds, in the batch's order.
    appends: Vec<TenantAppend>,
    /// Where each kept command's events start among all the batch's
    /// events, and how many there are.
    waiting: Vec<(usize, usize)>,
    /// Usage commands' appends, kept in case the outcome is in doubt.
    usage: Vec<Option<TenantAppend>>,
}

/// Decides each command of `batch` in order against the read model under
/// an overlay, applying each one's events to the overlay so the next is
/// decided after it. A refused command is answered at once and leaves the
/// batch; the rest stay, in order, beside their appends. The read model
/// is read-locked while deciding (the writer is its only mutator, so it
/// waits for no one), and the overlay is dropped on return.
fn decide_batch(
    shared: &Shared,
    batch: &mut Vec<(keyledger_core::Command, Reply)>,
    now: Timestamp,
) -> Decided {
    let read = shared.read_model();
    let mut decision = Overlay::new(&read.ledger);
    let mut appends: Vec<TenantAppend> = Vec::with_capacity(batch.len());
    let mut waiting: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
    let mut usage: Vec<Option<TenantAppend>> = Vec::with_capacity(batch.len());
    let mut kept = Vec::with_capacity(batch.len());
    let mut events_total = 0;
    for (command, reply) in batch.drain(..) {
        if let Some(tenant) = command.tenant() {
            note_clock_behind(shared, &decision, tenant, now);
        }
        let events = match decide(&decision, &command, now) {
            Ok(events) => events,
            Err(e) => {
                let _ = reply.send(Err(Error::Command(e)));
                continue;
            }
        };
        if events.is_empty() {
            // Nothing to append (a leak report that names no active key).
            let _ = reply.send(Ok(Vec::new()));
            continue;
        }
        // One append per tenant the events are in, in their order: one for
        // every command but a leak report, which may span tenants.
        let first_append = appends.len();
        let mut failed = None;
        let mut rest = events;
        while let Some(first) = rest.first() {
            // The run of the first event's tenant; a command's whole list
            // is moved as it is (no copy) when it is all one tenant's.
            let tenant = first.tenant.clone();
            let run_end = rest
                .iter()
                .position(|e| e.tenant != tenant)
                .unwrap_or(rest.len());
            let tail = rest.split_off(run_end);
            let tenant_events = std::mem::replace(&mut rest, tail);
            let expected_version = decision.tenant_view(&tenant).version();
            let applied = tenant_events
                .iter()
                .enumerate()
                .try_for_each(|(i, e)| decision.apply(expected_version + 1 + i as u64, e));
            if let Err(e) = applied {
                failed = Some(e);
                break;
            }
            appends.push(TenantAppend {
                tenant,
                expected_version,
                events: tenant_events,
            });
        }
        if let Some(e) = failed {
            // A decision that does not fold is a bug in the core: refuse
            // the command and rebuild the overlay without it.
            tracing::error!(error = %e, "a decided command did not fold; refused");
            appends.truncate(first_append);
            decision = Overlay::new(&read.ledger);
            reapply(&mut decision, &appends);
            let _ = reply.send(Err(e.into()));
            continue;
        }
        let len: usize = appends[first_append..].iter().map(|a| a.events.len()).sum();
        waiting.push((events_total, len));
        usage.push(
            matches!(command, keyledger_core::Command::RecordUsage { .. })
                .then(|| appends.get(first_append).cloned())
                .flatten(),
        );
        kept.push((command, reply));
        events_total += len;
    }
    *batch = kept;
    Decided {
        appends,
        waiting,
        usage,
    }
}

/// Moves the batch's usage commands, whose commit may have been written,
/// to `in_doubt`: they are answered once the log shows whether it was.
/// The other commands stay in `batch`.
fn set_usage_in_doubt(
    batch: &mut Vec<(keyledger_core::Command, Reply)>,
    usage: Vec<Option<TenantAppend>>,
    in_doubt: &mut Vec<InDoubt>,
) {
    let mut rest = Vec::with_capacity(batch.len());
    for ((command, reply), kept_usage) in batch.drain(..).zip(usage) {
        match kept_usage {
            Some(a) => in_doubt.push(InDoubt {
                tenant: a.tenant,
                expected_version: a.expected_version,
                events: a.events,
                reply,
            }),
            None => rest.push((command, reply)),
        }
    }
    *batch = rest;
}

/// Answers every command left in `batch` with `failure`, after reading
/// the log past the read model's head.
fn fail_batch(shared: &Shared, batch: &mut Vec<(keyledger_core::Command, Reply)>, failure: &Error) {
    tracing::error!(error = %failure, "commit failed; nothing in the batch is acknowledged");
    shared.metrics.note_commit_failure();
    // When the log could not tell whether the commit reached it, a later
    // read may show it did: apply what is there so the next decisions
    // start from the log, not from a guess.
    if let Err(e) = catch_up(shared) {
        tracing::warn!(error = %e, "cannot read the log back after a failed commit");
    }
    for (_, reply) in batch.drain(..) {
        let _ = reply.send(Err(failure.clone()));
    }
}

fn reapply(decision: &mut Overlay<'_>, appends: &[TenantAppend]) {
    for a in appends {
        for (i, e) in a.events.iter().enumerate() {
            let _ = decision.apply(a.expected_version + 1 + i as u64, e);
        }
    }
}

/// Applies this node's just-committed `own` records to the read model,
/// together with whatever other nodes committed before them, in log order.
///
/// When the first own record directly follows the read model's head,
/// nothing came in between: they are applied as they are. Otherwise the
/// log is read from the head up to the last own record.
fn apply_own(shared: &Shared, own: &[Record]) -> Result<(), Error> {
    let (Some(first), Some(last)) = (own.first(), own.last()) else {
        return Ok(());
    };
    let (first, last) = (first.position, last.position);
    let contiguous = last.checked_sub(first) == Some(own.len() as u64 - 1);
    if contiguous && shared.read_model().head + 1 == first {
        return shared.apply_committed(own);
    }
    let deadline = Instant::now() + READ_BACK_WAIT_MAX;
    loop {
        let head = shared.read_model().head;
        if head >= last {
            return Ok(());
        }
        let page = shared.log.read_after(head, PAGE)?;
        if page.is_empty() {
            // The log does not show our commit yet (an earlier-numbered
            // transaction of another node is still committing).
            if Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "the log does not show this node's commit at position {last} \
                     (it shows up to {head})"
                )));
            }
            shared.log.wait_for_append(head, Duration::from_millis(5))?;
            continue;
        }
        apply_records(shared, &page, |p| {
            own.binary_search_by_key(&p, |r| r.position).is_ok()
        })?;
    }
}

/// Catch-up reads: up to this many records per read.
const PAGE: usize = 1024;

/// Applies `page` to the read model; those records `is_own` does not
/// claim are counted as followed (other nodes' commits).
fn apply_records(
    shared: &Shared,
    page: &[Record],
    is_own: impl Fn(u64) -> bool,
) -> Result<(), Error> {
    shared.apply_committed(page)?;
    let followed = page.iter().filter(|r| !is_own(r.position)).count() as u64;
    shared
        .metrics
        .events_followed
        .fetch_add(followed, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Applies every record the log holds past the read model's head to the
/// read model; returns how many. This is how a node takes in what other
/// nodes wrote, and how it settles a commit whose outcome was unknown.
pub(crate) fn catch_up(shared: &Shared) -> Result<u64, Error> {
    let mut applied = 0;
    loop {
        let head = shared.read_model().head;
        let page = shared.log.read_after(head, PAGE)?;
        if page.is_empty() {
            return Ok(applied);
        }
        applied += page.len() as u64;
        apply_records(shared, &page, |_| false)?;
    }
}

/// Records a clock behind the tenant's last event: the decision then uses
/// the tenant's last time instead (event times in a tenant never
/// decrease), and the skew is counted and logged.
fn note_clock_behind(shared: &Shared, decision: &Overlay<'_>, tenant: &TenantId, now: Timestamp) {
    let view = decision.tenant_view(tenant);
    if !view.exists() {
        return;
    }
    let last = view.last_at();
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
