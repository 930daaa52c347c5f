//! `verify-layout N…`: what the verification map's look-up costs at each
//! size, by layout, beside what one dependent DRAM read costs at that size
//! (issue 13: "cache misses will show: measure them"). No SHA-256, no
//! checksum, no runtime: a pool of digests known to the map, each looked up
//! and counted (one counter incremented, the dirty flag swapped), as
//! `KeyEntry::count` does.
//!
//! Layouts, built alone at each size, all alive together, measured in
//! rotating order (7 rounds, medians):
//! - `chase`: a pointer chase over random cache lines of an array of
//!   256 B per key (the current map's footprint): one dependent miss per
//!   hop, the floor of any look-up that must read one random line.
//! - `papaya`: the current map, `papaya::HashMap<SecretHash, Arc<Entry>>`
//!   with a 152-byte entry (`KeyEntry`'s size): the meta byte and the
//!   entry pointer (two arrays, same index), the boxed key/value pair, the
//!   `Arc`'s allocation: three levels of dependent reads.
//! - `papaya-inline`: the same map holding the entry itself
//!   (`HashMap<SecretHash, Entry>`): the entry in papaya's box, one
//!   dependent read fewer.
//! - `inline`: open addressing (linear probing) over 128-byte slots that
//!   hold the digest, the status and the counters in place, sharded behind
//!   `RwLock`s taken for reading (what a writer-safe table would take): a
//!   look-up reads the slot it probes, and counting touches its second line.
//!   Load factor 0.8.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use keyledger_core::SecretHash;

const POOL: usize = 100_000;
const ROUNDS: usize = 7;

/// The current entry's stand-in: `KeyEntry`'s size, counters first.
#[allow(dead_code)]
struct ArcEntry {
    counts: [AtomicU64; 6],
    dirty: AtomicBool,
    rest: [u64; 12],
}

/// A slot of the inline table: the first line is what a look-up reads
/// (digest, status), the second what counting writes.
#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    hash: [u8; 32],
    expires_at: AtomicI64,
    revoked: AtomicBool,
    dirty: AtomicBool,
    scopes: u64,
    /// The policy box, when the key has limits (a pointer in the real one).
    policy: usize,
    counts: [AtomicU64; 6],
    last_valid: AtomicI64,
    first_use: AtomicI64,
}

// Two cache lines: the look-up's and the counters'.
const _: () = assert!(std::mem::size_of::<Slot>() == 128);

const SHARDS: usize = 64;

/// Sharded open-addressing table of inline slots.
struct Inline {
    shards: Vec<RwLock<Box<[Slot]>>>,
    /// Slots per shard (every shard the same here; a real table would
    /// keep each shard's length beside its slots).
    cap: usize,
}

fn word(h: &[u8; 32], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Inline {
    fn with(hashes: &[SecretHash]) -> Inline {
        let per = (hashes.len() / SHARDS).max(1);
        // Load factor 0.8 (and at least a few slots per shard).
        let cap = (per * 5 / 4 + 8).max(16);
        let mut shards: Vec<Box<[Slot]>> = (0..SHARDS)
            .map(|_| (0..cap).map(|_| Slot::default()).collect())
            .collect();
        for h in hashes {
            let (s, mut i) = Self::home(&h.0, cap);
            let shard = &mut shards[s];
            // Grown tables are not modelled: a shard that fills up would
            // be rehashed by its writer; here every shard has room.
            while shard[i].hash != [0; 32] {
                i = (i + 1) % cap;
            }
            shard[i].hash = h.0;
            shard[i].expires_at = AtomicI64::new(i64::MAX);
        }
        Inline {
            shards: shards.into_iter().map(RwLock::new).collect(),
            cap,
        }
    }

    fn home(h: &[u8; 32], cap: usize) -> (usize, usize) {
        let w = word(h, 0);
        let shard = (w >> 58) as usize % SHARDS;
        let i = ((u128::from(word(h, 8)) * cap as u128) >> 64) as usize;
        (shard, i)
    }

    /// Looks `h` up and counts one valid use; the slot's scopes if found.
    fn verify(&self, h: &SecretHash, now: i64) -> Option<u64> {
        let cap = self.cap;
        let (s, mut i) = Self::home(&h.0, cap);
        let shard = self.shards[s].read().unwrap_or_else(|e| e.into_inner());
        loop {
            let slot = &shard[i];
            if slot.hash == h.0 {
                if slot.revoked.load(Ordering::Acquire)
                    || slot.expires_at.load(Ordering::Acquire) <= now
                {
                    return Some(slot.scopes);
                }
                slot.counts[0].fetch_add(1, Ordering::Relaxed);
                if !slot.dirty.swap(true, Ordering::AcqRel) {
                    slot.first_use.store(now, Ordering::Release);
                }
                return Some(slot.scopes);
            }
            if slot.hash == [0; 32] {
                return None;
            }
            i = (i + 1) % cap;
        }
    }
}

/// A random cyclic chase over `lines` cache lines (Sattolo's shuffle).
pub(crate) struct Chase {
    next: Vec<[u64; 8]>,
}

impl Chase {
    pub(crate) fn with(lines: usize, rng: &mut super::Rng) -> Chase {
        let mut order: Vec<usize> = (0..lines).collect();
        for i in (1..lines).rev() {
            let j = rng.below(i as u64) as usize;
            order.swap(i, j);
        }
        let mut next = vec![[0u64; 8]; lines];
        for w in 0..lines {
            next[order[w]][0] = order[(w + 1) % lines] as u64;
        }
        Chase { next }
    }

    /// ns per hop over `hops` dependent reads.
    pub(crate) fn run(&self, hops: usize) -> f64 {
        let began = Instant::now();
        let mut at = 0usize;
        for _ in 0..hops {
            at = self.next[at][0] as usize;
        }
        std::hint::black_box(at);
        began.elapsed().as_secs_f64() * 1e9 / hops as f64
    }
}

struct AtSize {
    keys: u64,
    chase: Chase,
    papaya: papaya::HashMap<SecretHash, Arc<ArcEntry>, keyledger_runtime::DigestHash>,
    boxed: papaya::HashMap<SecretHash, ArcEntry, keyledger_runtime::DigestHash>,
    inline: Inline,
    pool: Vec<SecretHash>,
    bytes: [f64; 3],
}

fn digest(tag: u64, i: u64) -> SecretHash {
    SecretHash::of(&format!("layout-{tag}-{i}"))
}

fn entry() -> ArcEntry {
    ArcEntry {
        counts: Default::default(),
        dirty: AtomicBool::new(false),
        rest: [0; 12],
    }
}

/// Looks every digest of the pool up in a papaya map and counts a use.
/// `serial`: each look-up's address depends on what the one before read
/// from its entry (as a request follows the one before it), so misses
/// cannot overlap; otherwise the CPU may run several look-ups at once.
fn run_papaya<V: std::borrow::Borrow<ArcEntry>>(
    map: &papaya::HashMap<SecretHash, V, keyledger_runtime::DigestHash>,
    pool: &[SecretHash],
    serial: bool,
) -> f64 {
    let map = map.pin();
    run(pool, serial, |h| {
        let e: &ArcEntry = map.get(h)?.borrow();
        e.counts[0].fetch_add(1, Ordering::Relaxed);
        e.dirty.swap(true, Ordering::AcqRel);
        Some(e.rest[0])
    })
}

/// Times `look` over the pool (ns each); see [`run_papaya`] for `serial`.
fn run(pool: &[SecretHash], serial: bool, mut look: impl FnMut(&SecretHash) -> Option<u64>) -> f64 {
    // Zero, but not to the compiler: `read & zero` makes the next address
    // depend on the read.
    let zero = std::hint::black_box(0usize);
    let serial = std::hint::black_box(serial);
    let began = Instant::now();
    let (mut found, mut dep) = (0usize, 0usize);
    for i in 0..pool.len() {
        if let Some(read) = look(&pool[(i + dep) % pool.len()]) {
            found += 1;
            if serial {
                dep = read as usize & zero;
            }
        }
    }
    assert_eq!(found, pool.len(), "every digest is known");
    began.elapsed().as_secs_f64() * 1e9 / pool.len() as f64
}

pub(crate) fn verify_layout(sizes: &[u64]) {
    let mut rng = super::Rng(13);
    let mut at = Vec::new();
    for (tag, &n) in sizes.iter().enumerate() {
        let tag = tag as u64;
        let hashes: Vec<SecretHash> = (0..n).map(|i| digest(tag, i)).collect();
        let (papaya, p) = super::held(|| {
            let map = papaya::HashMap::<SecretHash, Arc<ArcEntry>, keyledger_runtime::DigestHash>::default();
            let pinned = map.pin();
            for h in &hashes {
                pinned.insert(*h, Arc::new(entry()));
            }
            drop(pinned);
            map
        });
        let (boxed, b) = super::held(|| {
            let map =
                papaya::HashMap::<SecretHash, ArcEntry, keyledger_runtime::DigestHash>::default();
            let pinned = map.pin();
            for h in &hashes {
                pinned.insert(*h, entry());
            }
            drop(pinned);
            map
        });
        let (inline, q) = super::held(|| Inline::with(&hashes));
        let pool = (0..POOL).map(|_| hashes[rng.below(n) as usize]).collect();
        drop(hashes);
        at.push(AtSize {
            keys: n,
            chase: Chase::with((n as usize * 4).max(64), &mut rng),
            papaya,
            boxed,
            inline,
            pool,
            bytes: [p[0], b[0], q[0]].map(|x| x as f64 / n as f64),
        });
    }
    let mut ns = vec![[const { Vec::new() }; 7]; sizes.len()];
    for round in 0..ROUNDS {
        for k in 0..sizes.len() {
            let a = &at[(k + round) % sizes.len()];
            let j = (k + round) % sizes.len();
            ns[j][0].push(a.chase.run(POOL));
            for serial in [false, true] {
                let at = if serial { 4 } else { 1 };
                ns[j][at].push(run_papaya(&a.papaya, &a.pool, serial));
                ns[j][at + 1].push(run_papaya(&a.boxed, &a.pool, serial));
                ns[j][at + 2].push(run(&a.pool, serial, |h| a.inline.verify(h, 1)));
            }
        }
    }
    let med: Vec<[f64; 7]> = ns
        .iter_mut()
        .map(|v| v.each_mut().map(|v| super::median(v)))
        .collect();
    let names = ["papaya+Arc", "papaya-inline", "inline"];
    for (j, a) in at.iter().enumerate() {
        let c = med[j][0];
        for (mode, at) in [("independent", 1), ("serial", 4)] {
            let layouts: Vec<String> = (0..3)
                .map(|l| {
                    let t = med[j][at + l];
                    format!(
                        "{} {t:.1} ns ({:.2}× {} keys, {:.2} of papaya+Arc, {:.2} hops, {:.0} B/key)",
                        names[l],
                        t / med[0][at + l],
                        sizes[0],
                        t / med[j][at],
                        t / c,
                        a.bytes[l]
                    )
                })
                .collect();
            println!(
                "verify-layout: {} keys, {mode}: chase {c:.1} ns/hop ({:.2}× {} keys); {} \
                 ({ROUNDS} rounds of {POOL} random keys; slot {} B; {})",
                a.keys,
                c / med[0][0],
                sizes[0],
                layouts.join("; "),
                std::mem::size_of::<Slot>(),
                super::loadavg()
            );
        }
    }
}
