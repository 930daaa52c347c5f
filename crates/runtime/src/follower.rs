//! The follower: how a node takes in what other nodes append to a shared
//! log (PostgreSQL), so its projections and verification map follow them.
//!
//! One thread per node waits for the log to move past the node's head
//! ([`EventLog::wait_for_append`](keyledger_store::EventLog::wait_for_append):
//! LISTEN/NOTIFY on PostgreSQL), then reads by position from the head and
//! hands the page to the writer, which applies it: the writer stays the
//! only thread that changes the projections, so every record is applied
//! exactly once and in log order, whoever wrote it. The wait is bounded
//! ([`Follow::wait_max`]), so a lost notification delays a record by at
//! most that long; nothing depends on a notification arriving.
//!
//! After each step the node publishes the position it has applied
//! ([`EventLog::report_applied`](keyledger_store::EventLog::report_applied)),
//! which is what a revocation waits for when it asks to be enforced by
//! every live node ([`crate::Keyledger::wait_enforced_everywhere`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Job, Shared};

/// How a node follows a log that other nodes append to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follow {
    /// This node's name in the log's table of applied positions: unique
    /// among the nodes sharing the log.
    pub node_id: String,
    /// Longest wait for a wake-up before reading the log anyway: the bound
    /// on propagation when a notification is lost.
    pub wait_max: Duration,
    /// A node reports its applied position at least this often, even when
    /// idle, so it is counted as live.
    pub report_every: Duration,
    /// A node that has not reported for this long is counted as gone when
    /// waiting for every live node.
    pub live_within: Duration,
    /// A miss (a well-formed secret no key has here, or a tenant position
    /// not applied here) is answered after this node read the log's head
    /// and applied the log up to it; one such read serves every miss that
    /// waits for it, and they start at most once per this interval, so a
    /// flood of unknown keys costs at most one query per interval (see
    /// `catchup.rs`). It is also about the longest a miss waits for its
    /// read to start.
    pub miss_interval: Duration,
}

impl Follow {
    /// Defaults for a node named `node_id`: a bound of 100 ms without
    /// notifications, a report every second, gone after five, a head read
    /// for misses at most every millisecond.
    pub fn new(node_id: impl Into<String>) -> Self {
        Follow {
            node_id: node_id.into(),
            wait_max: Duration::from_millis(100),
            report_every: Duration::from_secs(1),
            live_within: Duration::from_secs(5),
            miss_interval: MISS_INTERVAL_DEFAULT,
        }
    }
}

/// The default [`Follow::miss_interval`].
pub const MISS_INTERVAL_DEFAULT: Duration = Duration::from_millis(1);

/// A node name unique enough among the nodes sharing a log: the host name,
/// the process id and a few random bits (a restarted process on the same
/// host gets a new name; its old one stops reporting and ages out).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let mut salt = [0u8; 3];
    let salt = getrandom::fill(&mut salt).map_or(0, |()| {
        u32::from(salt[0]) << 16 | u32::from(salt[1]) << 8 | u32::from(salt[2])
    });
    format!("{host}-{}-{salt:06x}", std::process::id())
}

/// Between the follower and the writer: the follower waits until the
/// writer has applied a page it handed over.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    lock: Mutex<()>,
    applied: Condvar,
    stopping: AtomicBool,
    /// Pages handed over that the writer has dealt with.
    handled: AtomicU64,
}

impl Signal {
    /// The writer dealt with a page the follower handed over.
    pub(crate) fn handled(&self) {
        self.handled.fetch_add(1, Ordering::AcqRel);
        self.notify();
    }

    fn notify(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.applied.notify_all();
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.notify();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits until `done()` holds, the runtime stops, or `timeout` passes.
    fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !done() && !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = self
                .applied
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Most records handed to the writer at once.
const PAGE: usize = 4096;

/// The follower thread: runs until the runtime stops.
pub(crate) fn run(shared: &Arc<Shared>, follow: &Follow) {
    let mut reported: Option<(u64, Instant)> = None;
    let mut failing = false;
    // One page at a time in the writer's queue: a writer that is slow (a
    // long commit) is not flooded with copies of the same records.
    let mut sent = 0u64;
    while !shared.follow.stopping() {
        let head = shared.read_model().head;
        // Reported before waiting: what the writer applied since the last
        // report (another node's records, or this node's own commits) is
        // published at once, not after the next wake-up.
        let due = reported.is_none_or(|(p, at)| p != head || at.elapsed() >= follow.report_every);
        if due {
            match shared.log.report_applied(&follow.node_id, head) {
                Ok(()) => reported = Some((head, Instant::now())),
                Err(e) => tracing::debug!(error = %e, "cannot report the applied position"),
            }
        }
        let step = shared
            .log
            .wait_for_append(head, follow.wait_max)
            .and_then(|()| shared.log.read_after(head, PAGE));
        if shared.follow.stopping() {
            return;
        }
        let page = match step {
            Ok(page) => {
                if failing {
                    tracing::info!("the event log is reachable again; following it");
                    failing = false;
                }
                page
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot follow the event log; verifying from what is applied, retrying");
                    failing = true;
                }
                shared.follow.wait_until(follow.wait_max, || false);
                continue;
            }
        };
        if let Some(last) = page.last().map(|r| r.position)
            && last > shared.read_model().head
        {
            if shared.follow.handled.load(Ordering::Acquire) == sent {
                if shared.tx.blocking_send(Job::Apply(page)).is_err() {
                    return;
                }
                sent += 1;
            }
            shared.follow.wait_until(follow.wait_max, || {
                shared.read_model().head >= last
                    || shared.follow.handled.load(Ordering::Acquire) == sent
            });
            if shared.read_model().head < last {
                // The writer could not apply it (or is busy): back off.
                shared.follow.wait_until(follow.wait_max, || false);
            }
        }
    }
}
