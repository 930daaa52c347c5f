//! Counters and histograms, rendered as Prometheus text by the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of latency buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_SECONDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bucket bound, then the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS_SECONDS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                acc += n.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        (
            buckets,
            count,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// The runtime's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Verifications by outcome, in `VerifyOutcome::index` order. Outcomes
    /// of known keys are added when their usage is written (at most one
    /// usage window late); `not_found` and `malformed` at once.
    pub verifications: [AtomicU64; crate::VerifyOutcome::ALL.len()],
    /// Events appended.
    pub events_appended: AtomicU64,
    /// Commands acknowledged.
    pub commands_committed: AtomicU64,
    /// Durable commits (group commits).
    pub commits: AtomicU64,
    /// Commits that failed.
    pub commit_failures: AtomicU64,
    /// Time of each commit.
    pub commit_latency: Histogram,
    /// `KeyUsed` events written.
    pub usage_events: AtomicU64,
    /// Commands decided while the clock was behind their tenant's last
    /// event time (the event then takes the tenant's last time).
    pub clock_behind_decisions: AtomicU64,
    /// The largest such skew seen, in microseconds.
    pub clock_behind_micros_max: AtomicU64,
    /// Webhook delivery attempts by outcome, in
    /// [`crate::webhooks::OUTCOMES`] order.
    pub webhook_attempts: [AtomicU64; 4],
    /// Webhook attempts' latency by outcome, in the same order.
    pub webhook_latency: [Histogram; 4],
    /// Webhook deliveries given up after the retry time.
    pub webhook_failed: AtomicU64,
    /// Appends refused because another node wrote to a tenant first; each
    /// was retried after catching up.
    pub append_conflicts: AtomicU64,
    /// Events written by other nodes and applied here.
    pub events_followed: AtomicU64,
    /// Reads of the log's head made to answer a miss (an unknown key, or a
    /// position not applied yet) on a node that follows a shared log: at
    /// most one per [`crate::Follow::miss_interval`], shared by every miss
    /// waiting for it.
    pub miss_head_queries: AtomicU64,
    /// Snapshots of the projections: written, refused, and what open
    /// replayed.
    pub snapshots: crate::SnapshotMetrics,
}

impl Metrics {
    pub(crate) fn note_commit(&self, events: usize, commands: usize) {
        self.events_appended
            .fetch_add(events as u64, Ordering::Relaxed);
        self.commands_committed
            .fetch_add(commands as u64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds uses of known keys, once their `KeyUsed` event is committed.
    pub(crate) fn note_uses(&self, counts: &keyledger_core::UseCounts) {
        use crate::VerifyOutcome as V;
        for (outcome, n) in [
            (V::Valid, counts.valid),
            (V::Revoked, counts.revoked),
            (V::Expired, counts.expired),
            (V::InsufficientScope, counts.insufficient_scope),
            (V::RateLimited, counts.rate_limited),
            (V::UsageExceeded, counts.usage_exceeded),
        ] {
            self.verifications[outcome.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn note_clock_behind(&self, micros: u64) {
        self.clock_behind_decisions.fetch_add(1, Ordering::Relaxed);
        self.clock_behind_micros_max
            .fetch_max(micros, Ordering::Relaxed);
    }

    pub(crate) fn note_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }
}
