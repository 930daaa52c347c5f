//! Read-your-writes across nodes: a node that follows a shared log answers
//! a miss (a well-formed secret no key has, or a tenant position it has not
//! applied) only after making sure it has applied the log up to the head it
//! has *now*, read after the miss arrived.
//!
//! A miss does not read the head itself: it asks for a round and waits for
//! one that started after it asked. One task per node runs the rounds, one
//! at a time and at most one per [`Follow::miss_interval`](crate::Follow):
//! every miss that arrives while a round is pending or running shares the
//! next one, so a flood of unknown keys costs one head query per interval
//! however many keys it holds. A round reads the head (one indexed query),
//! has the writer read whatever this node has not applied up to it (the
//! follower usually has, as LISTEN/NOTIFY woke it), and waits until it is
//! applied. The hit path (a known key) never comes here.
//!
//! When the log cannot be read, misses do not wait for it: a round that
//! failed makes the misses after it answer from what is applied (as
//! verification does during an outage), while the next miss asks for a new
//! round, which tells when the log is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::{Job, Shared};

/// Longest a round waits for this node to apply what the head showed;
/// past it the round counts as failed and its misses answer from what is
/// applied.
const APPLY_WAIT_MAX: Duration = Duration::from_secs(2);

/// Longest a miss waits for its round (a head query that hangs on a lost
/// connection is bounded by the store's operation timeout, which is longer).
pub(crate) const MISS_WAIT_MAX: Duration = Duration::from_secs(3);

/// A finished round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Round {
    /// Rounds are numbered from 1 in the order they start.
    pub(crate) number: u64,
    /// The round read the head and this node applied the log up to it.
    pub(crate) ok: bool,
}

/// The rounds' shared state.
#[derive(Debug)]
pub(crate) struct CatchUp {
    /// Rounds started so far (the number of the last one started).
    started: AtomicU64,
    /// The highest round number a miss waits for.
    wanted: AtomicU64,
    demand: Notify,
    done: watch::Sender<Round>,
    interval: Duration,
}

impl CatchUp {
    pub(crate) fn new(interval: Duration) -> Self {
        CatchUp {
            started: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            demand: Notify::new(),
            done: watch::Sender::new(Round::default()),
            interval,
        }
    }

    /// Waits for a round that started after this call, at most `max`:
    /// true when it read the head and this node applied the log up to it,
    /// false when it failed, when the last round failed (the log is not
    /// readable: nothing to wait for), or when `max` passed.
    pub(crate) async fn round(&self, max: Duration) -> bool {
        let mut done = self.done.subscribe();
        let last = *done.borrow_and_update();
        // The round after every one started so far starts after this load
        // (`started` is raised before the head is read).
        let need = self.started.load(Ordering::SeqCst) + 1;
        self.wanted.fetch_max(need, Ordering::SeqCst);
        self.demand.notify_one();
        if last.number > 0 && !last.ok {
            return false;
        }
        match tokio::time::timeout(max, done.wait_for(|r| r.number >= need)).await {
            Ok(Ok(r)) => r.ok,
            _ => false,
        }
    }
}

/// The task that runs the rounds, for as long as the runtime lives (it is
/// aborted at shutdown).
pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(c) = shared.catch_up.as_ref() else {
        return;
    };
    let mut last_start: Option<Instant> = None;
    loop {
        let finished = c.done.borrow().number;
        if c.wanted.load(Ordering::SeqCst) <= finished {
            c.demand.notified().await;
            continue;
        }
        if let Some(at) = last_start {
            tokio::time::sleep_until(at + c.interval).await;
        }
        last_start = Some(Instant::now());
        let number = c.started.fetch_add(1, Ordering::SeqCst) + 1;
        let ok = one_round(&shared).await;
        c.done.send_replace(Round { number, ok });
    }
}

/// Reads the head, and makes sure this node applies the log up to it.
async fn one_round(shared: &Arc<Shared>) -> bool {
    shared
        .metrics
        .miss_head_queries
        .fetch_add(1, Ordering::Relaxed);
    let log = shared.log.clone();
    let head = match tokio::task::spawn_blocking(move || log.head()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read the log's head to answer a miss");
            return false;
        }
        Err(_) => return false,
    };
    let mut applied = shared.applied.subscribe();
    if *applied.borrow_and_update() >= head {
        return true;
    }
    // The follower is usually on it already (woken by the append's
    // notification); the writer reading the log itself bounds the wait when
    // a notification is late or lost. Applying twice is not possible: the
    // writer skips what it has applied.
    if shared.tx.send(Job::CatchUp).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(APPLY_WAIT_MAX, applied.wait_for(|&a| a >= head)).await,
        Ok(Ok(_))
    )
}
