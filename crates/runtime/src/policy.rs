//! Key policy enforced on the verification path (issue 14): named rate
//! limits and credits, kept beside a key's entry in the verification map
//! only for keys that have a policy (`KeyEntry::policy`, an
//! `Option<Box<_>>`: a plain key pays one pointer and one branch).
//!
//! * **Rate limits**: one GCRA per named limit (the `governor` crate, on the
//!   runtime's own clock through [`PolicyClock`], so a manual clock drives
//!   them in tests). Each node enforces every limit on its own: across `n`
//!   nodes a key may be admitted up to `n` times its limit (docs/policy.md).
//! * **Credits**: the log holds what no node has reserved yet; each node
//!   spends from an in-memory *allowance* (one atomic, compare-and-swap)
//!   that it fills by reserving blocks through the log
//!   (`CreditsReserved`). The block is [`block_for`]: it follows the key's
//!   rate on this node (a few seconds of its traffic), and is never more
//!   than an eighth of what the log has left; it bounds what a crash can
//!   lose (one block per node and key), and nothing a node has not
//!   reserved is ever spent, so credits are never overspent: not across
//!   callers, crashes or nodes.
//!
//! The allowance word carries the low bits of the credit epoch it was
//! reserved in: a refill or a change of credits starts a new epoch and
//! drops what was set aside in the old one, and a reservation that lands
//! after that is dropped too instead of being spent in the new epoch.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Reference;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use keyledger_core::policy::{RATE_LIMITS_PER_KEY_MAX, RateLimit};
use keyledger_core::{KeyId, TenantId, Timestamp};

use crate::clock::Clock;

/// The block a key's first reservation asks for, and the least a block
/// shrinks to.
pub const BLOCK_MIN: u64 = 16;
/// The most one reservation asks for, whatever the rate.
pub const BLOCK_MAX: u64 = 1 << 20;
/// A block spent faster than this (µs): the next one is twice as large.
pub const BLOCK_FAST_US: i64 = 2_000_000;
/// A block that lasted longer than this (µs): the next one is half.
pub const BLOCK_SLOW_US: i64 = 20_000_000;

/// How many credits a node reserves next, having reserved `previous` a
/// block `lasted_us` ago, with `remaining` left in the log. The block
/// follows the key's rate on this node (doubled when the last one went in
/// under [`BLOCK_FAST_US`], halved when it lasted over [`BLOCK_SLOW_US`]),
/// within [`BLOCK_MIN`]..[`BLOCK_MAX`], and is never more than an eighth of
/// what the log has left (at least 1), so the credits stay spread over
/// the nodes while few are left. A crash loses at most one block: up to
/// about twenty seconds of the key's traffic on that node (at least 16
/// credits), and never more than an eighth of what was left. Blocks of a
/// few seconds of traffic keep reservations (durable commits) rare: with
/// blocks of a quarter second, 1,000 keys verified over HTTP spent a
/// quarter of the server's time reserving (docs/performance.md).
pub fn block_for(remaining: u64, previous: u64, lasted_us: i64) -> u64 {
    let size = if lasted_us < BLOCK_FAST_US {
        previous.saturating_mul(2)
    } else if lasted_us > BLOCK_SLOW_US {
        previous / 2
    } else {
        previous
    };
    size.clamp(BLOCK_MIN, BLOCK_MAX).min((remaining / 8).max(1))
}

/// The pace of a key's reservations on this node (held under the
/// reservation mutex).
#[derive(Debug)]
struct Pace {
    /// The last block asked for.
    block: u64,
    /// When it was granted.
    at: Option<Timestamp>,
}

// ---------------------------------------------------------------------------
// The clock the limiters read.

/// An instant for the limiters: nanoseconds since the Unix epoch (0 before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyInstant(u64);

impl PolicyInstant {
    fn of(t: Timestamp) -> Self {
        PolicyInstant(
            u64::try_from(t.as_micros())
                .unwrap_or(0)
                .saturating_mul(1000),
        )
    }

    /// Rounded up to the microsecond: a retry at that instant is admitted.
    fn timestamp(self) -> Timestamp {
        Timestamp::from_micros(i64::try_from(self.0.div_ceil(1000)).unwrap_or(i64::MAX))
    }
}

impl std::ops::Add<Nanos> for PolicyInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        PolicyInstant(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for PolicyInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::new(self.0.saturating_sub(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        PolicyInstant(self.0.saturating_sub(duration.as_u64()))
    }
}

/// The runtime's clock, as the limiters read it (coarse: the verification
/// path's own reading, at most about a millisecond stale).
#[derive(Clone)]
pub struct PolicyClock(pub(crate) Arc<dyn Clock>);

impl governor::clock::Clock for PolicyClock {
    type Instant = PolicyInstant;

    fn now(&self) -> PolicyInstant {
        PolicyInstant::of(self.0.now_coarse())
    }
}

impl std::fmt::Debug for PolicyClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyClock")
    }
}

// ---------------------------------------------------------------------------
// Rate limits.

type Gcra = RateLimiter<NotKeyed, InMemoryState, PolicyClock, StateInformationMiddleware>;

/// One named limit and its GCRA state.
pub struct Limiter {
    /// The limit as configured.
    pub limit: RateLimit,
    /// Nanoseconds between two admissions at the steady rate (rounded up,
    /// so the rate never exceeds `limit` per `duration`).
    emission_ns: u64,
    gcra: Gcra,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.limit)
            .finish()
    }
}

impl Limiter {
    /// A limiter for `limit` (already checked by the core: 1 ≤ limit ≤ 10⁹,
    /// 100 ms ≤ duration ≤ 1 day) on `clock`. Burst: the whole `limit`;
    /// steady rate: `limit` per `duration`.
    pub fn new(limit: RateLimit, clock: PolicyClock) -> Self {
        let cells = limit.limit.clamp(1, u64::from(u32::MAX));
        let duration_ns = limit.duration_ms.max(1).saturating_mul(1_000_000);
        let emission_ns = duration_ns.div_ceil(cells).max(1);
        let burst =
            NonZeroU32::new(u32::try_from(cells).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(Duration::from_nanos(emission_ns))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let gcra = RateLimiter::direct_with_clock(quota, clock).with_middleware();
        Limiter {
            limit,
            emission_ns,
            gcra,
        }
    }

    /// Takes one cell: `Ok` with what is left, or `Err` with when to retry.
    fn check(&self, now: Timestamp) -> Result<LimitState, LimitState> {
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                let missing = self.limit.limit.saturating_sub(remaining);
                let full_ns = missing.saturating_mul(self.emission_ns);
                let reset = (PolicyInstant::of(now) + Nanos::new(full_ns)).timestamp();
                Ok(LimitState { remaining, reset })
            }
            Err(not_until) => Err(LimitState {
                remaining: 0,
                reset: not_until.earliest_possible().timestamp().max(now),
            }),
        }
    }
}

/// One limit's state after a verification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitState {
    /// Verifications this limit admits right now.
    pub remaining: u64,
    /// Admitted: when the whole limit is available again. Refused: the
    /// earliest instant a retry can be admitted.
    pub reset: Timestamp,
}

// ---------------------------------------------------------------------------
// Credits.

const TAG_BITS: u32 = 20;
const AMOUNT_BITS: u32 = 64 - TAG_BITS;
const AMOUNT_MASK: u64 = (1 << AMOUNT_BITS) - 1;

fn tag_of(epoch: u64) -> u64 {
    (epoch & ((1 << TAG_BITS) - 1)) << AMOUNT_BITS
}

/// What spending from the allowance found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Spent (or, for cost 0, credits are left).
    Spent,
    /// None left here nor in the log.
    Exhausted,
    /// The allowance is short and the log has credits: reserve.
    Short,
}

/// A key's credits on this node. Shared by every verification-map entry
/// the key has had (a change of the key makes a new entry and keeps this).
#[derive(Debug)]
pub struct Allowance {
    /// Epoch tag (high bits) and this node's unspent allowance (low bits).
    allowance: AtomicU64,
    /// The credit epoch in force, as applied here.
    epoch: AtomicU64,
    /// What the log holds unreserved, as applied here.
    log_remaining: AtomicU64,
    /// One reservation per key at a time; others wait on it.
    reserving: tokio::sync::Mutex<Pace>,
    /// Credits spent since the usage flusher last took them.
    spent: AtomicU64,
}

impl Allowance {
    /// Credits as the log has them in `epoch`, with no allowance.
    pub fn new(epoch: u64, log_remaining: u64) -> Self {
        Allowance {
            allowance: AtomicU64::new(tag_of(epoch)),
            epoch: AtomicU64::new(epoch),
            log_remaining: AtomicU64::new(log_remaining),
            reserving: tokio::sync::Mutex::new(Pace {
                block: BLOCK_MIN / 2,
                at: None,
            }),
            spent: AtomicU64::new(0),
        }
    }

    /// Counts credits spent, for the next `KeyUsed`.
    pub(crate) fn note_spent(&self, n: u64) {
        self.spent.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes the credits spent since the last take.
    pub(crate) fn take_spent(&self) -> u64 {
        self.spent.swap(0, Ordering::AcqRel)
    }

    /// The epoch in force here.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// This node's unspent allowance.
    pub fn allowance(&self) -> u64 {
        self.allowance.load(Ordering::Acquire) & AMOUNT_MASK
    }

    /// What the log holds unreserved, as applied here.
    pub fn log_remaining(&self) -> u64 {
        self.log_remaining.load(Ordering::Acquire)
    }

    /// The log's remaining plus this node's allowance: what this node can
    /// tell of the credits left (other nodes' allowances not counted).
    pub fn remaining(&self) -> u64 {
        self.log_remaining().saturating_add(self.allowance())
    }

    /// Applies the log's view after an event: `epoch` and what it holds
    /// unreserved. A new epoch drops the allowance of the old one.
    pub fn set_log(&self, epoch: u64, log_remaining: u64) {
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.allowance.store(tag_of(epoch), Ordering::Release);
        }
        self.log_remaining.store(log_remaining, Ordering::Release);
    }

    /// Spends `cost` from the allowance if it covers it.
    pub fn try_spend(&self, cost: u64) -> Spend {
        let mut current = self.allowance.load(Ordering::Acquire);
        loop {
            let amount = current & AMOUNT_MASK;
            if amount < cost || (cost == 0 && amount == 0) {
                return Spend::Short;
            }
            match self.allowance.compare_exchange_weak(
                current,
                current - cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Spend::Spent,
                Err(now) => current = now,
            }
        }
    }

    /// The allowance is short: is the key out of credits? Decided only
    /// while no reservation is in flight (one may be about to add to the
    /// allowance), so an answer `Exhausted` is never premature. `None`: a
    /// reservation is running, or the log has credits: take the slow path.
    pub fn exhausted_now(&self, cost: u64) -> Option<Spend> {
        let _alone = self.reserving.try_lock().ok()?;
        self.settled(cost)
    }

    /// With no reservation in flight: spent, out of credits, or `None`
    /// (the log has enough: reserve). Cost 0 asks whether any are left.
    fn settled(&self, cost: u64) -> Option<Spend> {
        if self.try_spend(cost) == Spend::Spent {
            return Some(Spend::Spent);
        }
        let log = self.log_remaining();
        if cost == 0 {
            return Some(if log > 0 {
                Spend::Spent
            } else {
                Spend::Exhausted
            });
        }
        (log < cost.saturating_sub(self.allowance())).then_some(Spend::Exhausted)
    }

    /// Adds a reservation made in `epoch`; dropped if the epoch has moved
    /// on since (those credits lapsed with it).
    fn add(&self, epoch: u64, granted: u64) -> bool {
        let tag = tag_of(epoch);
        let mut current = self.allowance.load(Ordering::Acquire);
        loop {
            if current & !AMOUNT_MASK != tag || self.epoch() != epoch {
                return false;
            }
            let amount = (current & AMOUNT_MASK)
                .saturating_add(granted)
                .min(AMOUNT_MASK);
            match self.allowance.compare_exchange_weak(
                current,
                tag | amount,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Takes the whole allowance (to give it back to the log at shutdown):
    /// the epoch it belongs to and the amount.
    pub fn take_allowance(&self) -> (u64, u64) {
        let epoch = self.epoch();
        let tag = tag_of(epoch);
        let mut current = self.allowance.load(Ordering::Acquire);
        loop {
            if current & !AMOUNT_MASK != tag {
                return (epoch, 0);
            }
            match self.allowance.compare_exchange_weak(
                current,
                tag,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (epoch, current & AMOUNT_MASK),
                Err(now) => current = now,
            }
        }
    }

    /// The slow path: spends `cost`, reserving through `reserve(epoch,
    /// want) -> granted` when the allowance cannot cover it. One caller per
    /// key reserves; the others wait for it and then spend from what it
    /// added. A failed reservation (the log unavailable) answers
    /// `Exhausted`: refusing is safe, granting is not.
    pub async fn spend_reserving<F, Fut, E>(
        &self,
        cost: u64,
        now: Timestamp,
        mut reserve: F,
    ) -> Spend
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: std::fmt::Display,
    {
        let mut pace = self.reserving.lock().await;
        // A refill, a change or another node can each move the epoch
        // between reading it and the reservation landing: a few rounds.
        for _ in 0..4 {
            if let Some(settled) = self.settled(cost) {
                return settled;
            }
            let log = self.log_remaining();
            let short = cost.saturating_sub(self.allowance());
            let epoch = self.epoch();
            let lasted = pace
                .at
                .map_or(0, |t| now.as_micros().saturating_sub(t.as_micros()));
            let block = block_for(log, pace.block, lasted);
            let want = short.max(block).min(log);
            match reserve(epoch, want).await {
                Ok(granted) => {
                    *pace = Pace {
                        block,
                        at: Some(now),
                    };
                    self.add(epoch, granted);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a credit reservation failed");
                    if self.epoch() == epoch {
                        return Spend::Exhausted;
                    }
                }
            }
        }
        match self.try_spend(cost) {
            Spend::Spent => Spend::Spent,
            _ => Spend::Exhausted,
        }
    }
}

// ---------------------------------------------------------------------------
// A key's policy.

/// What a key's policy decided, before credits are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    /// Admitted, credits (if any) spent.
    Valid,
    /// Over a rate limit.
    RateLimited,
    /// No credits left.
    UsageExceeded,
    /// Admitted by the limits; the allowance must be refilled first.
    Reserve,
}

/// The policy part of a verification's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyAnswer {
    /// Credits left as this node sees them (approximate across nodes), if
    /// the key has credits.
    pub credits_remaining: Option<u64>,
    limits: [LimitState; RATE_LIMITS_PER_KEY_MAX],
    checked: u8,
    /// The credits this verification spent.
    pub spent: u64,
}

impl PolicyAnswer {
    /// The state of each limit checked, in the key's order (a refused
    /// verification stops at the limit that refused it).
    pub fn limits(&self) -> &[LimitState] {
        &self.limits[..usize::from(self.checked)]
    }

    /// When a refused verification may be retried: the latest reset of
    /// the limits checked.
    pub fn retry_at(&self) -> Option<Timestamp> {
        self.limits().iter().map(|l| l.reset).max()
    }
}

/// The enforcement state of a key with a policy.
#[derive(Debug)]
pub struct Enforcement {
    /// Its rate limits, in the key's order.
    pub limiters: Box<[Arc<Limiter>]>,
    /// Its credits, if it has any.
    pub credits: Option<Arc<Allowance>>,
}

impl Enforcement {
    /// The enforcement of `limits` and of credits (`(epoch, remaining in
    /// the log)`), reading `clock`. State that still applies is carried
    /// over from `previous` (the entry a change replaces): a limit with
    /// the same name, limit and duration keeps its GCRA, and the credits
    /// keep their allowance (dropped by [`Allowance::set_log`] if the
    /// epoch moved).
    pub fn build(
        limits: &[RateLimit],
        credits: Option<(u64, u64)>,
        clock: &Arc<dyn Clock>,
        previous: Option<&Enforcement>,
    ) -> Self {
        let limiters = limits
            .iter()
            .map(|l| {
                previous
                    .and_then(|p| p.limiters.iter().find(|o| o.limit == *l))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Limiter::new(l.clone(), PolicyClock(clock.clone())))
                    })
            })
            .collect();
        let credits =
            credits.map(
                |(epoch, remaining)| match previous.and_then(|p| p.credits.clone()) {
                    Some(a) => {
                        a.set_log(epoch, remaining);
                        a
                    }
                    None => Arc::new(Allowance::new(epoch, remaining)),
                },
            );
        Enforcement { limiters, credits }
    }

    /// Whether there is anything to enforce.
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty() && self.credits.is_none()
    }

    /// Rate limits, then credits from the allowance. `Reserve` means the
    /// limits admitted the call and the allowance must be refilled (the
    /// caller then calls [`Allowance::spend_reserving`]; the limits are
    /// not taken twice).
    pub fn enforce(&self, cost: u64, now: Timestamp, answer: &mut PolicyAnswer) -> Enforced {
        for (slot, limiter) in answer.limits.iter_mut().zip(self.limiters.iter()) {
            answer.checked += 1;
            match limiter.check(now) {
                Ok(state) => *slot = state,
                Err(state) => {
                    *slot = state;
                    self.note_credits(answer);
                    return Enforced::RateLimited;
                }
            }
        }
        let Some(credits) = &self.credits else {
            return Enforced::Valid;
        };
        let spend = match credits.try_spend(cost) {
            Spend::Spent => Spend::Spent,
            _ => credits.exhausted_now(cost).unwrap_or(Spend::Short),
        };
        let enforced = match spend {
            Spend::Spent => {
                answer.spent = cost;
                Enforced::Valid
            }
            Spend::Exhausted => Enforced::UsageExceeded,
            Spend::Short => return Enforced::Reserve,
        };
        self.note_credits(answer);
        enforced
    }

    /// Writes the credits left into the answer.
    pub fn note_credits(&self, answer: &mut PolicyAnswer) {
        answer.credits_remaining = self.credits.as_ref().map(|c| c.remaining());
    }
}

// ---------------------------------------------------------------------------
// Refills.

/// The keys whose credits refill, by their next refill instant: filled as
/// events are applied (a key created or changed with a refill, a refill
/// applied), read by the refill pass (`Keyledger::refill_due`). A key may
/// be in it more than once, or after its refill was removed: the pass
/// asks the decision, which refuses a refill that is not due.
#[derive(Debug, Default)]
pub(crate) struct RefillQueue(
    std::sync::Mutex<std::collections::BinaryHeap<std::cmp::Reverse<(Timestamp, TenantId, KeyId)>>>,
);

impl RefillQueue {
    /// Puts `key` in line for its next refill after the one its credit
    /// epoch stands for, if it has a refill.
    pub(crate) fn schedule(&self, tenant: &TenantId, key: &keyledger_core::KeyRecord) {
        let Some(c) = key.credit_state() else {
            return;
        };
        let Some(refill) = c.refill else {
            return;
        };
        let next = refill.next_after(c.since);
        self.lock()
            .push(std::cmp::Reverse((next, tenant.clone(), key.id)));
    }

    /// Takes every key whose refill instant is at or before `now`.
    pub(crate) fn due(&self, now: Timestamp) -> Vec<(TenantId, KeyId)> {
        let mut q = self.lock();
        let mut out = Vec::new();
        while q
            .peek()
            .is_some_and(|std::cmp::Reverse((at, _, _))| *at <= now)
        {
            if let Some(std::cmp::Reverse((_, tenant, key))) = q.pop() {
                out.push((tenant, key));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Puts a key back to be tried again at `at` (the log was unavailable).
    pub(crate) fn retry(&self, at: Timestamp, tenant: TenantId, key: KeyId) {
        self.lock().push(std::cmp::Reverse((at, tenant, key)));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BinaryHeap<std::cmp::Reverse<(Timestamp, TenantId, KeyId)>>,
    > {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a future to its end on the calling thread (the synchronous
/// verification's reservation). What it waits for is the writer, a thread
/// of its own, so it needs no async runtime to make progress.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn clock_at(micros: i64) -> (ManualClock, PolicyClock) {
        let c = ManualClock::new(Timestamp::from_micros(micros));
        (c.clone(), PolicyClock(Arc::new(c)))
    }

    fn limit(limit: u64, duration_ms: u64) -> RateLimit {
        RateLimit {
            name: "l".into(),
            limit,
            duration_ms,
        }
    }

    #[test]
    fn a_limit_admits_its_burst_then_refuses_until_the_clock_moves() {
        let start = 1_800_000_000_000_000;
        let (clock, pc) = clock_at(start);
        let l = Limiter::new(limit(3, 1000), pc);
        let now = Timestamp::from_micros(start);
        let left: Vec<u64> = (0..3).map(|_| l.check(now).unwrap().remaining).collect();
        assert_eq!(left, [2, 1, 0]);
        let refused = l.check(now).unwrap_err();
        // One cell comes back every 333.34 ms.
        assert_eq!(refused.reset.as_micros(), start + 333_334);
        clock.advance_micros(333_333);
        assert!(l.check(now).is_err());
        clock.advance_micros(1);
        assert!(l.check(Timestamp::from_micros(start + 333_334)).is_ok());
        assert!(l.check(now).is_err());
    }

    #[test]
    fn the_allowance_never_spends_what_it_was_not_given() {
        let c = Allowance::new(1, 10);
        assert_eq!(c.try_spend(1), Spend::Short);
        assert!(c.add(1, 3));
        assert_eq!(c.try_spend(2), Spend::Spent);
        assert_eq!(c.try_spend(2), Spend::Short);
        assert_eq!(c.try_spend(0), Spend::Spent);
        assert_eq!(c.try_spend(1), Spend::Spent);
        assert_eq!(c.try_spend(0), Spend::Short);
        // A new epoch drops the allowance, and a grant of the old one.
        assert!(c.add(1, 5));
        c.set_log(2, 7);
        assert_eq!(c.allowance(), 0);
        assert!(!c.add(1, 5));
        assert_eq!(c.remaining(), 7);
        assert!(c.add(2, 4));
        assert_eq!(c.take_allowance(), (2, 4));
        assert_eq!(c.allowance(), 0);
    }

    #[test]
    fn out_of_credits_only_when_the_log_is_empty_too() {
        let c = Allowance::new(1, 0);
        assert_eq!(c.exhausted_now(1), Some(Spend::Exhausted));
        let c = Allowance::new(1, 5);
        assert_eq!(c.exhausted_now(1), None);
        assert_eq!(c.exhausted_now(6), Some(Spend::Exhausted));
    }

    #[test]
    fn blocks_follow_the_rate_within_an_eighth_of_what_is_left() {
        let (fast, steady, slow) = (1_000, 5_000_000, 30_000_000);
        assert_eq!(block_for(1 << 40, 100, fast), 200);
        assert_eq!(block_for(1 << 40, 100, steady), 100);
        assert_eq!(block_for(1 << 40, 100, slow), 50);
        assert_eq!(block_for(1 << 40, 20, slow), BLOCK_MIN);
        assert_eq!(block_for(1 << 40, BLOCK_MAX, fast), BLOCK_MAX);
        assert_eq!(block_for(1000, 1000, steady), 125);
        assert_eq!(block_for(7, 100, steady), 1);
        assert_eq!(block_for(0, 100, steady), 1);
    }

    /// A log of credits: reservations take from it, as the decision does.
    struct Log(std::sync::Mutex<(u64, u64)>);

    impl Log {
        fn reserve(&self, epoch: u64, want: u64) -> Result<u64, String> {
            let mut g = self.0.lock().unwrap();
            if g.0 != epoch {
                return Err("stale epoch".into());
            }
            let granted = want.min(g.1);
            g.1 -= granted;
            Ok(granted)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Calls at random instants: in every stretch of time `w` a limit
        /// admits at most `limit + w × limit / duration` (its burst, then
        /// its steady rate), the bound docs/policy.md states per node.
        #[test]
        fn a_limit_never_admits_more_than_its_bound(
            limit in 1u64..20,
            duration_ms in 100u64..5000,
            gaps in proptest::collection::vec(0i64..400_000, 1..300),
        ) {
            let start = 1_800_000_000_000_000;
            let (clock, pc) = clock_at(start);
            let l = Limiter::new(RateLimit { name: "l".into(), limit, duration_ms }, pc);
            let mut admitted = Vec::new();
            let mut t = start;
            for gap in gaps {
                t += gap;
                clock.set(Timestamp::from_micros(t));
                if l.check(Timestamp::from_micros(t)).is_ok() {
                    admitted.push(t);
                }
            }
            let duration_us = i128::from(duration_ms) * 1000;
            for (i, a) in admitted.iter().enumerate() {
                for (j, b) in admitted.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as i128;
                    let bound = i128::from(limit) + i128::from(b - a) * i128::from(limit) / duration_us;
                    proptest::prop_assert!(n <= bound, "{} admitted in {} us, bound {}", n, b - a, bound);
                }
            }
        }

        /// Callers on several threads spend random costs from credits
        /// reserved in blocks: what they spend is never more than the
        /// log held, and all of it is spent when they ask for more than it.
        #[test]
        fn concurrent_spenders_never_overspend(
            credits in 0u64..3000,
            costs in proptest::collection::vec(0u64..40, 1..200),
            threads in 1usize..5,
        ) {
            let state = Arc::new(Allowance::new(1, credits));
            let log = Arc::new(Log(std::sync::Mutex::new((1, credits))));
            let spent = Arc::new(AtomicU64::new(0));
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).build().unwrap();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for t in 0..threads {
                    let (state, log, spent) = (state.clone(), log.clone(), spent.clone());
                    let costs: Vec<u64> = costs.iter().skip(t).step_by(threads).copied().collect();
                    tasks.push(tokio::spawn(async move {
                        for cost in costs {
                            let done = match state.try_spend(cost) {
                                Spend::Spent => Spend::Spent,
                                _ => state.exhausted_now(cost).unwrap_or(Spend::Short),
                            };
                            let done = if done == Spend::Short {
                                let log = log.clone();
                                let state2 = state.clone();
                                state.spend_reserving(cost, Timestamp::EPOCH, move |e, w| {
                                    let r = log.reserve(e, w);
                                    if let Ok(g) = r {
                                        let left = log.0.lock().unwrap().1;
                                        state2.set_log(e, left);
                                        return std::future::ready(Ok::<u64, String>(g));
                                    }
                                    std::future::ready(r)
                                }).await
                            } else {
                                done
                            };
                            if done == Spend::Spent {
                                spent.fetch_add(cost, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let spent = spent.load(Ordering::Relaxed);
            proptest::prop_assert!(spent <= credits, "spent {} of {}", spent, credits);
            let unreserved = log.0.lock().unwrap().1;
            proptest::prop_assert_eq!(spent + state.allowance() + unreserved, credits);
        }
    }
}
