//! The at-scale loader and measurements (issue 13; `docs/performance.md`,
//! "At scale"). Driven by `scripts/scale`; run by hand as
//! `cargo bench --bench scale -- <subcommand> …`:
//!
//! * `load DIR KEYS EVENTS [SECONDS]`: builds a data directory of `KEYS`
//!   keys and about `EVENTS` events through the real writer
//!   ([`Keyledger::execute`], group-committed in batches of up to 16,384
//!   commands), with a manual clock walking 90 days: first every key is
//!   created (day 0), then usage windows, revocations and rotations over
//!   days 1–89, and user removals on day 90. A tenant `big` holds every
//!   tenth key; the others hold about 1,000 each. Stops early after
//!   `SECONDS`. Prints the load rates.
//! * `open DIR`: opens the data directory as `keyledger serve` does and
//!   prints the time to ready, the resident set and the live heap.
//! * `coldstart DIR`: open-to-ready against reading the log file's raw
//!   bytes (and against read + decode), alternating, three times.
//! * `measure DIR`: durable creates at size against an empty store,
//!   verification at size against 1,000 keys, query p99s for `big`.
//! * `queries DIR`: only the query p99s for `big`. Loaded with
//!   `SCALE_BIG_EVERY=1`, `big` holds every key (up to 980,000): the
//!   queries at a million keys in a tenant.
//! * `soak-keys DIR N`: `N` random keys of the data set, one a line as
//!   `tenant key_id secret owner`, for `scripts/scale soak`'s mixed load
//!   (synthetic keys of a bench data set, derived as `measure`'s are;
//!   the script keeps the list in its work directory and deletes it).
//! * `flush-create DIR [DIRTY [IN_FLIGHT]]`: a create's latency while the
//!   usage of `DIRTY` keys (100,000 unless given) is being written,
//!   against a create on the same ledger with nothing else to write, three
//!   rounds; `IN_FLIGHT` sets `Config::usage_in_flight_max` (0 or none:
//!   the default; a number above `DIRTY`: every usage command queued at
//!   once, as before the bound). The ledger is opened from its snapshot
//!   with a manual usage window, so the flush starts when the bench says.
//! * `memory DIR PART`: which structures hold the heap, each built alone
//!   from the log (PART: `sizes`, `runtime`, `log`, `ledger`, `decision`,
//!   `usage`, `trees`, `vmap`), counted by an instrumented allocator
//!   (stats_alloc) and by the growth of the resident set; `decision`
//!   instead opens the runtime and measures its growth after the writer
//!   wrote for every tenant (and the first write to `big`).
//!
//! Secrets are derived from the key's index and a fixed seed (`secret_of`),
//! so `measure` can present random existing keys without storing secrets.

use std::alloc::System;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "scale/layout.rs"]
mod layout;

use keyledger_audit::merkle::Tree;
use keyledger_core::{
    Command, CreateKey, KeyId, KeyPrefix, KeyStatus, KeyUsed, Ledger, Principal, RemoveUser,
    RevokeKey, RevokeReason, RotateKey, Secret, TenantId, Timestamp, Usage, UseCounts, UserId,
};
use keyledger_runtime::{
    AuditConfig, Config, Keyledger, ListQuery, ManualClock, Order, OsEntropy, PointInTime,
    SortField, SystemClock, UsageWindow,
};
use keyledger_store::{EventLog, MemoryLog, RedbLog};
use sha2::{Digest, Sha256};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DAY_MICROS: i64 = 86_400_000_000;
/// Days of history: creates on day 0, the rest on days 1..=DAYS.
const DAYS: i64 = 90;
/// The big tenant holds every tenth key, up to this many (the per-tenant
/// limit is 1,000,000, rotations included).
const BIG_KEYS_MAX: u64 = 980_000;
/// Keys per small tenant (about).
const SMALL_TENANT_KEYS: u64 = 1_110;
/// Commands in flight from the loader; the writer takes up to
/// [`BATCH`] of them per group commit.
const IN_FLIGHT: usize = 32_768;
const BATCH: usize = 16_384;
const META: &str = "scale-load.txt";

fn main() {
    // `cargo bench` passes `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: scale load DIR KEYS EVENTS [SECONDS] | open DIR [snapshots] | coldstart DIR | measure DIR | export DIR | memory DIR PART | trees DIR | soak-keys DIR N | verify-sizes N…");
            std::process::exit(2)
        })
    };
    let num = |i: usize| -> u64 {
        arg(i).replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("not a number: {}", arg(i));
            std::process::exit(2)
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = PathBuf::from(arg(1));
    match arg(0) {
        "load" => {
            let seconds = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3600);
            rt.block_on(load(&dir, num(2), num(3), Duration::from_secs(seconds)));
        }
        "open" => rt.block_on(open_report(
            &dir,
            args.get(2).is_some_and(|a| a == "snapshots"),
        )),
        "trees" => rt.block_on(trees(&dir)),
        "coldstart" => rt.block_on(coldstart(&dir)),
        "measure" => rt.block_on(measure(&dir)),
        "export" => rt.block_on(async {
            let ledger = open_dir(&dir);
            export_at_size(&ledger, &"big".parse().expect("tenant"));
        }),
        "queries" => rt.block_on(async {
            let ledger = open_dir(&dir);
            queries(&ledger, &Plan::read(&dir), &"big".parse().expect("tenant"));
        }),
        "memory" => rt.block_on(memory(&dir, args.get(2).map_or("sizes", String::as_str))),
        "soak-keys" => soak_keys(&dir, num(2)),
        "flush-create" => {
            let dirty = if args.len() > 2 { num(2) } else { 100_000 };
            let in_flight = if args.len() > 3 { num(3) as usize } else { 0 };
            rt.block_on(flush_create(&dir, dirty, in_flight));
        }
        "verify-sizes" => {
            let sizes: Vec<u64> = (1..args.len()).map(num).collect();
            rt.block_on(verify_sizes(&sizes));
        }
        "verify-layout" => {
            let sizes: Vec<u64> = (1..args.len()).map(num).collect();
            layout::verify_layout(&sizes);
        }
        other => {
            eprintln!("unknown subcommand {other}");
            std::process::exit(2)
        }
    }
}

// ---------------------------------------------------------------- the plan

/// Where key `i` of a data set of `keys` lives, and what it is.
#[derive(Clone, Copy)]
struct Plan {
    keys: u64,
    /// Microseconds: the start of day 0.
    start: i64,
    /// Every `big_every`-th key is the big tenant's (10 unless the load
    /// was given `SCALE_BIG_EVERY`; 1 puts up to [`BIG_KEYS_MAX`] keys in
    /// one tenant, for the queries at a million keys in a tenant).
    big_every: u64,
}

impl Plan {
    fn big(&self, i: u64) -> bool {
        i.is_multiple_of(self.big_every) && i / self.big_every < BIG_KEYS_MAX
    }

    fn big_keys(&self) -> u64 {
        self.keys.div_ceil(self.big_every).min(BIG_KEYS_MAX)
    }

    /// A random key of the big tenant among the first `created` keys.
    fn random_big(&self, rng: &mut Rng, created: u64) -> u64 {
        rng.below(self.big_keys().min(created.div_ceil(self.big_every))) * self.big_every
    }

    fn tenant(&self, i: u64) -> TenantId {
        if self.big(i) {
            "big".parse().expect("tenant")
        } else {
            format!("t{:05}", i / SMALL_TENANT_KEYS)
                .parse()
                .expect("tenant")
        }
    }

    fn users(&self, i: u64) -> u64 {
        if self.big(i) { 1000 } else { 10 }
    }

    fn owner(&self, i: u64) -> UserId {
        format!("u{}", (i / 10).wrapping_mul(7919) % self.users(i))
            .parse()
            .expect("user")
    }

    /// Key `i`'s id: a ULID-like value whose time part is the load's start.
    fn key_id(&self, i: u64) -> KeyId {
        let ms = (self.start / 1000) as u128;
        KeyId::from_u128((ms << 80) | (i as u128 + 1))
    }

    fn day_start(&self, day: i64) -> Timestamp {
        Timestamp::from_micros(self.start + day * DAY_MICROS)
    }

    fn write(&self, dir: &Path) {
        std::fs::write(
            dir.join(META),
            format!(
                "keys={}\nstart={}\nbig_every={}\n",
                self.keys, self.start, self.big_every
            ),
        )
        .expect("write the plan");
    }

    fn read(dir: &Path) -> Plan {
        let text = std::fs::read_to_string(dir.join(META))
            .unwrap_or_else(|e| panic!("{}: {e} (made by `scale load`)", dir.join(META).display()));
        let value = |name: &str| -> Option<i64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let field = |name: &str| value(name).unwrap_or_else(|| panic!("{META}: no {name}"));
        Plan {
            keys: field("keys") as u64,
            start: field("start"),
            // Data sets loaded before the field existed put every tenth key in big.
            big_every: value("big_every").map_or(10, |v| v.max(1) as u64),
        }
    }
}

/// Key `i`'s secret (rotations' new keys take indexes from `keys` on).
fn secret_of(i: u64) -> Secret {
    let digest = Sha256::digest([b"keyledger-scale-".as_slice(), &i.to_be_bytes()].concat());
    let mut material = [0u8; keyledger_core::secret::BODY_BYTES];
    material.copy_from_slice(&digest[..keyledger_core::secret::BODY_BYTES]);
    Secret::from_material(&KeyPrefix::default(), &material)
}

/// splitmix64: a fixed, seeded sequence (the load is the same every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `soak-keys DIR N`: the keys `scripts/scale soak` presents and changes.
fn soak_keys(dir: &Path, n: u64) {
    use std::io::Write;
    let plan = Plan::read(dir);
    let mut rng = Rng(13);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..n {
        let i = rng.below(plan.keys);
        writeln!(
            out,
            "{} {} {} {}",
            plan.tenant(i),
            plan.key_id(i),
            secret_of(i).expose(),
            plan.owner(i)
        )
        .expect("write the keys");
    }
}

// ------------------------------------------------------------ opening

/// The configuration `keyledger serve` opens a data directory with (its
/// audit directory is the data directory), less the usage window.
fn serve_config(dir: &Path, window: UsageWindow) -> Config {
    Config {
        usage_window: window,
        audit: Some(AuditConfig::in_dir(dir)),
        ..Config::default()
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("ledger.redb")
}

fn open_dir(dir: &Path) -> Keyledger {
    let log = Arc::new(RedbLog::open(&log_path(dir)).expect("open the log"));
    Keyledger::open(
        log,
        serve_config(dir, UsageWindow::Every(Duration::from_secs(1))),
    )
    .expect("open the ledger")
}

/// [`open_dir`] with snapshots, as `keyledger serve` opens by default:
/// from the newest valid snapshot if there is one (one is written after a
/// long replay, and at shutdown).
fn open_dir_snapshots(dir: &Path) -> Keyledger {
    let log = Arc::new(RedbLog::open(&log_path(dir)).expect("open the log"));
    Keyledger::open(
        log,
        Config {
            snapshots: Some(keyledger_runtime::SnapshotConfig::in_dir(dir)),
            ..serve_config(dir, UsageWindow::Every(Duration::from_secs(1)))
        },
    )
    .expect("open the ledger")
}

fn make_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .expect("create the data directory");
}

// ------------------------------------------------------------ the loader

/// Runs `commands` through the writer with up to [`IN_FLIGHT`] in flight;
/// returns how many were refused (a decision error). Panics on any other
/// error: the load must be durable.
struct Pipeline {
    ledger: Keyledger,
    tasks: tokio::task::JoinSet<Result<usize, keyledger_runtime::Error>>,
    refused: u64,
    refusals: std::collections::BTreeMap<String, u64>,
}

impl Pipeline {
    async fn push(&mut self, command: Command) {
        while self.tasks.len() >= IN_FLIGHT {
            self.reap_one().await;
        }
        let ledger = self.ledger.clone();
        self.tasks
            .spawn(async move { ledger.execute(command).await.map(|r| r.len()) });
    }

    async fn reap_one(&mut self) {
        if let Some(done) = self.tasks.join_next().await {
            match done.expect("a load task") {
                Ok(_) => {}
                Err(keyledger_runtime::Error::Command(e)) => {
                    self.refused += 1;
                    let kind = format!("{e:?}");
                    let kind = kind.split(['(', ' ']).next().unwrap_or("").to_owned();
                    *self.refusals.entry(kind).or_default() += 1;
                }
                Err(e) => panic!("the load failed: {e}"),
            }
        }
    }

    async fn drain(&mut self) {
        while !self.tasks.is_empty() {
            self.reap_one().await;
        }
    }
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("a progress template"),
    );
    bar.set_message(what.to_owned());
    bar
}

async fn load(dir: &Path, keys: u64, events: u64, limit: Duration) {
    if log_path(dir).exists() {
        eprintln!(
            "{} exists: load into a fresh directory",
            log_path(dir).display()
        );
        std::process::exit(2);
    }
    make_dir(dir);
    let now = SystemClock.now_micros();
    // Day 90 (user removals) is today, so the 30-day summary and the
    // usage of a day read today's history.
    let start = (now.div_euclid(DAY_MICROS) - DAYS) * DAY_MICROS;
    let big_every = std::env::var("SCALE_BIG_EVERY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(10, |v| v.max(1));
    let plan = Plan {
        keys,
        start,
        big_every,
    };
    plan.write(dir);
    let clock = ManualClock::new(plan.day_start(0));
    let log = Arc::new(RedbLog::open(&log_path(dir)).expect("open the log"));
    let config = Config {
        batch_commands_max: BATCH,
        queue_commands_max: IN_FLIGHT,
        ..serve_config(dir, UsageWindow::Manual)
    };
    let ledger = Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .expect("open");
    let mut p = Pipeline {
        ledger: ledger.clone(),
        tasks: tokio::task::JoinSet::new(),
        refused: 0,
        refusals: Default::default(),
    };
    let began = Instant::now();
    let out_of_time = |began: Instant| began.elapsed() >= limit;
    println!(
        "load: {keys} keys, about {events} events, into {} ({})",
        dir.display(),
        loadavg()
    );

    // Phase 1: every key, on day 0.
    let step = DAY_MICROS / keys.max(1) as i64;
    let b = bar(keys, "keys");
    let mut created = 0;
    for i in 0..keys {
        if i % 4096 == 0 {
            b.set_position(i);
            if out_of_time(began) {
                break;
            }
        }
        clock.set(Timestamp::from_micros(plan.start + i as i64 * step));
        let s = secret_of(i);
        let owner = plan.owner(i);
        p.push(Command::CreateKey(CreateKey {
            meta: None,
            credits: None,
            limits: Vec::new(),
            principal: Principal::user(plan.tenant(i), owner),
            owner: None,
            name: format!("service key {i}"),
            description: (i % 4 == 0).then(|| format!("used by deployment {}", i % 97)),
            expires_at: None,
            scopes: None,
            key_id: plan.key_id(i),
            secret_hash: s.hash(),
            masked: s.masked(),
        }))
        .await;
        created += 1;
    }
    p.drain().await;
    b.finish_and_clear();
    let keys_took = began.elapsed();
    let head_keys = ledger.head();
    println!(
        "load: {created} creates in {:.1} s: {:.0} keys/s ({})",
        keys_took.as_secs_f64(),
        created as f64 / keys_took.as_secs_f64(),
        loadavg()
    );

    // Phase 2: days 1..DAYS: usage, with a revocation and a rotation of
    // one key in a hundred spread through it; user removals on day DAYS.
    let rest = events.saturating_sub(head_keys);
    let changes = if rest >= 40 * (created / 100) {
        created / 100
    } else {
        0
    };
    let rev_every = rest.checked_div(changes).unwrap_or(u64::MAX);
    let per_day = rest.div_ceil((DAYS - 1) as u64).max(1);
    let mut rng = Rng(0x5ca1e);
    let (mut revoked, mut rotated, mut used) = (0u64, 0u64, 0u64);
    let began_events = Instant::now();
    let b = bar(rest, "events");
    let mut j = 0;
    // Events submitted (a rotation writes two).
    let mut submitted = 0;
    while submitted < rest {
        if j % 4096 == 0 {
            b.set_position(ledger.head().saturating_sub(head_keys));
            if out_of_time(began) {
                break;
            }
        }
        let day = 1 + (j / per_day).min(DAYS as u64 - 2) as i64;
        let within = (j % per_day) as i64 * (DAY_MICROS / per_day as i64);
        let at = Timestamp::from_micros(plan.start + day * DAY_MICROS + within);
        clock.set(at);
        if j % rev_every == rev_every / 2 && revoked < changes && created > 0 {
            // Key 100k+1: revoked.
            let i = (revoked * 100 + 1) % created;
            revoked += 1;
            p.push(Command::RevokeKey(RevokeKey {
                principal: Principal::user(plan.tenant(i), plan.owner(i)),
                key_id: plan.key_id(i),
                reason: RevokeReason::Manual,
            }))
            .await;
        } else if j % rev_every == 0 && rotated < changes && created > 0 {
            // Key 100k+2: rotated with a week's grace; the new key's index
            // is `keys + k`.
            let i = (rotated * 100 + 2) % created;
            let s = secret_of(keys + rotated);
            p.push(Command::RotateKey(RotateKey {
                principal: Principal::user(plan.tenant(i), plan.owner(i)),
                key_id: plan.key_id(i),
                grace_seconds: 7 * 86_400,
                expires_at: None,
                new_key_id: plan.key_id(keys + rotated),
                secret_hash: s.hash(),
                masked: s.masked(),
            }))
            .await;
            rotated += 1;
            submitted += 1;
        } else if created > 0 {
            // Half the usage is the big tenant's (a tenth of the keys).
            let i = if rng.below(2) == 0 {
                plan.random_big(&mut rng, created)
            } else {
                rng.below(created)
            };
            let valid = 1 + rng.below(50);
            p.push(Command::RecordUsage {
                tenant: plan.tenant(i),
                usage: KeyUsed {
                    key_id: plan.key_id(i),
                    window_start: Timestamp::from_micros(at.as_micros() - 1_000_000),
                    window_end: at,
                    last_valid_at: Some(at),
                    counts: UseCounts {
                        usage_exceeded: 0,
                        rate_limited: 0,
                        credits_spent: 0,
                        valid,
                        revoked: 0,
                        expired: 0,
                        insufficient_scope: u64::from(rng.below(10) == 0),
                    },
                },
            })
            .await;
            used += 1;
        }
        submitted += 1;
        j += 1;
    }
    // Day DAYS: one user removed in every twentieth small tenant and five
    // in the big one (their active keys revoked in the same append).
    let mut removed = 0;
    if changes > 0 && !out_of_time(began) {
        clock.set(plan.day_start(DAYS));
        let mut seen = std::collections::BTreeSet::new();
        for i in (0..created).step_by(SMALL_TENANT_KEYS as usize * 20) {
            let i = i + 1; // a small tenant's key
            if i < created && !plan.big(i) && seen.insert(plan.tenant(i)) {
                p.push(Command::RemoveUser(RemoveUser {
                    principal: Principal::operator(plan.tenant(i)),
                    user_id: "u3".parse().expect("user"),
                }))
                .await;
                removed += 1;
            }
        }
        for u in 0..5 {
            p.push(Command::RemoveUser(RemoveUser {
                principal: Principal::operator("big".parse().expect("tenant")),
                user_id: format!("u{}", 100 + u).parse().expect("user"),
            }))
            .await;
            removed += 1;
        }
    }
    p.drain().await;
    b.finish_and_clear();
    let events_took = began_events.elapsed();
    let head = ledger.head();
    ledger.shutdown().await.expect("shutdown");
    let took = began.elapsed();
    println!(
        "load: {} events after the creates ({used} usage windows, {revoked} revocations, \
         {rotated} rotations, {removed} user removals) in {:.1} s: {:.0} events/s ({})",
        head - head_keys,
        events_took.as_secs_f64(),
        (head - head_keys) as f64 / events_took.as_secs_f64().max(1e-9),
        loadavg()
    );
    if p.refused > 0 {
        println!("load: {} commands refused: {:?}", p.refused, p.refusals);
    }
    println!(
        "load: total {head} events in {:.1} s: {:.0} events/s; data directory {} bytes ({:.1} B/event)",
        took.as_secs_f64(),
        head as f64 / took.as_secs_f64(),
        dir_bytes(dir),
        dir_bytes(dir) as f64 / head.max(1) as f64
    );
}

// ------------------------------------------------------------ figures

trait NowMicros {
    fn now_micros(&self) -> i64;
}

impl NowMicros for SystemClock {
    fn now_micros(&self) -> i64 {
        keyledger_runtime::Clock::now(self).as_micros()
    }
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = text.split_whitespace().next().unwrap_or("?");
    format!("load {one}")
}

/// `(VmRSS, VmHWM)` in bytes.
fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Live heap: bytes and blocks asked for and not yet freed. (stats_alloc
/// adds a realloc's growth to `bytes_allocated` and its shrinking to
/// `bytes_deallocated`; `bytes_reallocated` is the same again, net.)
fn heap() -> (i64, i64) {
    let s = GLOBAL.stats();
    (
        s.bytes_allocated as i64 - s.bytes_deallocated as i64,
        s.allocations as i64 - s.deallocations as i64,
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if meta.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            use std::os::unix::fs::MetadataExt;
            meta.blocks() * 512
        }
    }
    walk(dir)
}

async fn open_report(dir: &Path, snapshots: bool) {
    let (rss0, _) = rss();
    let (heap0, _) = heap();
    if !log_path(dir).exists() {
        make_dir(dir);
    }
    let began = Instant::now();
    let ledger = if snapshots {
        open_dir_snapshots(dir)
    } else {
        open_dir(dir)
    };
    let took = began.elapsed();
    let (rss1, hwm) = rss();
    let (heap1, blocks) = heap();
    let keys: usize = ledger
        .tenants()
        .iter()
        .map(|t| ledger.key_counts(t).0)
        .sum();
    // One line, parsed by scripts/scale.
    println!(
        "open: head={} keys={keys} open_ms={:.1} rss={rss1} rss_before={rss0} hwm={hwm} \
         heap={} heap_blocks={blocks} ({})",
        ledger.head(),
        took.as_secs_f64() * 1e3,
        heap1 - heap0,
        loadavg()
    );
    ledger.shutdown().await.expect("shutdown");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

async fn coldstart(dir: &Path) {
    let path = log_path(dir);
    let (mut raw, mut decode, mut open) = (Vec::new(), Vec::new(), Vec::new());
    let mut head = 0;
    for _ in 0..3 {
        // The log file's bytes, in 1 MiB reads (a warm page cache, as for
        // the open that follows).
        let began = Instant::now();
        let mut f = std::fs::File::open(&path).expect("open the log file");
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).expect("read");
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        raw.push(began.elapsed().as_secs_f64());
        std::hint::black_box(bytes);
        // Read and decode through the store (each record's chain hash checked).
        let log = RedbLog::open(&path).expect("open the log");
        let began = Instant::now();
        let mut after = 0;
        loop {
            let page = log.read_after(after, 16_384).expect("read");
            let Some(last) = page.last() else { break };
            after = last.position;
        }
        decode.push(began.elapsed().as_secs_f64());
        drop(log);
        // Open to ready, as `serve` does.
        let began = Instant::now();
        let ledger = open_dir(dir);
        open.push(began.elapsed().as_secs_f64());
        head = ledger.head();
        ledger.shutdown().await.expect("shutdown");
    }
    let (r, d, o) = (median(&mut raw), median(&mut decode), median(&mut open));
    println!(
        "coldstart: {head} events, log file {} bytes: open to ready {:.3} s, raw read {:.3} s \
         ({:.1}× raw), read + decode {:.3} s ({:.2}× that); medians of 3 ({})",
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        o,
        r,
        o / r,
        d,
        o / d,
        loadavg()
    );
}

// ------------------------------------------------------------ trees

/// `trees DIR` (issue 13's Merkle node store): open to ready from a
/// snapshot (the first open replays the log and writes one; then three
/// opens from it, median), then, in the last of them, inclusion proofs of
/// random old events of `big` (in the first half of its trail) and random
/// full level-0 tiles of the global tree, read through the node store,
/// against the same from trees built whole in memory from the log in this
/// process (the design before), alternated in rounds.
async fn trees(dir: &Path) {
    // The same trees whole in memory (the log is read before any open:
    // one handle at a time).
    let big: TenantId = "big".parse().expect("tenant");
    let (mut big_tree, mut global) = (Tree::new(), Tree::new());
    {
        let log = RedbLog::open_with_cache(&log_path(dir), 16 << 20).expect("the log");
        fold_log(&log, |page| {
            for r in page {
                let leaf = keyledger_audit::merkle::leaf_hash(&r.hash);
                global.push_leaf_hash(leaf);
                if r.event.tenant == big {
                    big_tree.push_leaf_hash(leaf);
                }
            }
        });
    }
    // Snapshots are derived: the first open starts without one.
    let _ = std::fs::remove_dir_all(dir.join(keyledger_runtime::SNAPSHOT_DIR));
    let began = Instant::now();
    let first = open_dir_snapshots(dir);
    let replay = began.elapsed().as_secs_f64();
    first.shutdown().await.expect("shutdown");
    drop(first);
    let mut opens = Vec::new();
    let mut ledger = None;
    for _ in 0..3 {
        if let Some(l) = ledger.take() {
            let l: Keyledger = l;
            l.shutdown().await.expect("shutdown");
        }
        let began = Instant::now();
        let l = open_dir_snapshots(dir);
        opens.push(began.elapsed().as_secs_f64());
        ledger = Some(l);
    }
    let ledger = ledger.expect("opened");
    let from = ledger
        .metrics()
        .snapshots
        .start_snapshot_position
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "trees: open to ready from a snapshot (position {from}) {:.3} s (median of 3); the \
         first open (whole replay, then a snapshot) {replay:.3} s ({})",
        median(&mut opens),
        loadavg()
    );
    let size = ledger.tree_size(&big);
    let gsize = ledger.global_size();
    assert_eq!(
        (size, gsize),
        (big_tree.len(), global.len()),
        "the same trees"
    );
    let mut rng = Rng(0x7ee5);
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 200;
    let (mut disk, mut mem) = (Vec::new(), Vec::new());
    let (mut tdisk, mut tmem) = (Vec::new(), Vec::new());
    let full_tiles = gsize / 256;
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let seq = 1 + rng.below((size / 2).max(1));
            let began = Instant::now();
            let p = ledger.inclusion_proof(&big, seq, size).expect("a proof");
            disk.push(began.elapsed().as_secs_f64());
            let began = Instant::now();
            let proof = big_tree.inclusion_proof(seq - 1, size).expect("a proof");
            let same = keyledger_audit::proofs::hex_hashes(&proof);
            let hx = |h| keyledger_audit::proofs::hex_hashes(&[h]).concat();
            let root = hx(big_tree.root(size).expect("a root"));
            let leaf = hx(big_tree.leaf(seq - 1).unwrap_or_default());
            mem.push(began.elapsed().as_secs_f64());
            assert_eq!(
                (p.proof, p.root, p.leaf),
                (same, root, leaf),
                "the same proof"
            );
        }
        for _ in 0..PER_ROUND.min(full_tiles as usize) {
            let tile = keyledger_audit::tiles::TilePath::Hashes {
                level: 0,
                index: rng.below(full_tiles),
                width: 256,
            };
            let began = Instant::now();
            let bytes = ledger.global_tile(&tile).expect("a tile");
            tdisk.push(began.elapsed().as_secs_f64());
            let began = Instant::now();
            let nodes = keyledger_audit::tiles::TreeNodes {
                tree: &global,
                entries: |_: u64| None,
            };
            let same = keyledger_audit::tiles::tile_bytes(&nodes, &tile);
            tmem.push(began.elapsed().as_secs_f64());
            assert_eq!(bytes, same, "the same tile");
        }
    }
    let us = |v: &mut Vec<f64>, p: f64| percentile(v, p) * 1e6;
    println!(
        "trees: inclusion proof of a random old event of big ({size} events), node store: p50 \
         {:.1} µs p99 {:.1} µs; whole tree in memory: p50 {:.1} µs p99 {:.1} µs ({} each)",
        us(&mut disk, 0.5),
        us(&mut disk, 0.99),
        us(&mut mem, 0.5),
        us(&mut mem, 0.99),
        ROUNDS * PER_ROUND
    );
    println!(
        "trees: a random full global tile (tile/0/N of {full_tiles}), node store: p50 {:.1} µs \
         p99 {:.1} µs; whole tree in memory: p50 {:.1} µs p99 {:.1} µs ({} each; {})",
        us(&mut tdisk, 0.5),
        us(&mut tdisk, 0.99),
        us(&mut tmem, 0.5),
        us(&mut tmem, 0.99),
        tdisk.len(),
        loadavg()
    );
    ledger.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------ measure

async fn measure(dir: &Path) {
    let plan = Plan::read(dir);
    println!(
        "measure: {} ({} keys planned; {})",
        dir.display(),
        plan.keys,
        loadavg()
    );
    let ledger = open_dir(dir);
    let big: TenantId = "big".parse().expect("tenant");
    queries(&ledger, &plan, &big);
    export_at_size(&ledger, &big);
    verify_at_size(&ledger, &plan).await;
    creates_at_size(&ledger, dir).await;
    ledger.shutdown().await.expect("shutdown");
}

/// `audit export` of the big tenant's whole trail (usage included), as the
/// server streams it (JSON lines, `AuditEntry`), against reading the same
/// records raw from the store (no decoding), alternated five times each.
/// The live heap is sampled every 10,000 records: an export that streams
/// holds no more than a page of records at any time.
///
/// Beside it, in the same run, where the time goes: the store's read with
/// its chain check and decode (`read_tenant`), the export as it was before
/// the renderer (one thread, a `serde_json` value built per record), and
/// the two renderings alone over the first 100,000 records held in memory.
fn export_at_size(ledger: &Keyledger, big: &TenantId) {
    use std::io::Write;
    struct Counter(u64);
    impl Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    const PAGE: usize = 4096;
    let filter = keyledger_core::AuditFilter {
        include_usage: true,
        ..keyledger_core::AuditFilter::default()
    };
    let rate = |n: u64, t: Instant| n as f64 / t.elapsed().as_secs_f64();
    let (mut raw_rates, mut decoded_rates, mut before_rates, mut export_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut records, mut bytes, mut before_bytes, mut heap_growth) = (0u64, 0u64, 0u64, 0i64);
    for _ in 0..5 {
        // Raw store reads: no check, no decode.
        let t = Instant::now();
        let mut n = 0u64;
        walk_pages(
            |after| {
                ledger
                    .log()
                    .read_tenant_raw(big, after, 1000)
                    .expect("raw read")
            },
            |r| r.seq,
            |page| n += std::hint::black_box(page).len() as u64,
        );
        raw_rates.push(rate(n, t));
        // Read, chain-checked and decoded: what an export reads.
        let t = Instant::now();
        let mut n = 0u64;
        walk_pages(
            |after| ledger.log().read_tenant(big, after, PAGE).expect("read"),
            |r| r.seq,
            |page| n += std::hint::black_box(page).len() as u64,
        );
        decoded_rates.push(rate(n, t));
        // The export before the renderer: read and render on one thread.
        let mut out = std::io::BufWriter::new(Counter(0));
        let t = Instant::now();
        let mut n = 0u64;
        walk_pages(
            |after| ledger.log().read_tenant(big, after, PAGE).expect("read"),
            |r| r.seq,
            |page| {
                for r in page.iter().filter(|r| filter.matches(&r.event)) {
                    serde_json::to_writer(&mut out, &keyledger_runtime::views::AuditEntry::from(r))
                        .expect("encode");
                    out.write_all(b"\n").expect("count");
                    n += 1;
                }
            },
        );
        out.flush().expect("flush");
        before_rates.push(rate(n, t));
        before_bytes = out.get_ref().0;
        // The export: `for_each_audit` and the renderer, into one buffer
        // written out as the server's chunks are.
        let base = heap().0;
        let mut out = Counter(0);
        let mut buf = Vec::with_capacity(256 * 1024);
        let t = Instant::now();
        let mut seen = 0u64;
        let exported = ledger
            .for_each_audit(big, &filter, |r| -> Result<(), keyledger_runtime::Error> {
                keyledger_runtime::export::json_line(r, &mut buf);
                if buf.len() >= 128 * 1024 {
                    out.write_all(&buf).expect("count");
                    buf.clear();
                }
                seen += 1;
                if seen.is_multiple_of(10_000) {
                    heap_growth = heap_growth.max(heap().0 - base);
                }
                Ok(())
            })
            .expect("export");
        out.write_all(&buf).expect("count");
        export_rates.push(exported as f64 / t.elapsed().as_secs_f64());
        (records, bytes) = (exported, out.0);
    }
    // The renderings alone, over records held in memory.
    let mut held = Vec::new();
    while held.len() < 100_000 {
        let after = held.last().map_or(0, |r: &keyledger_store::Record| r.seq);
        let page = ledger.log().read_tenant(big, after, PAGE).expect("read");
        if page.is_empty() {
            break;
        }
        held.extend(page);
    }
    let (mut entry_rates, mut direct_rates) = (Vec::new(), Vec::new());
    let mut buf = Vec::with_capacity(1024);
    for _ in 0..3 {
        let t = Instant::now();
        for r in &held {
            buf.clear();
            serde_json::to_writer(&mut buf, &keyledger_runtime::views::AuditEntry::from(r))
                .expect("encode");
            std::hint::black_box(&buf);
        }
        entry_rates.push(rate(held.len() as u64, t));
        let t = Instant::now();
        for r in &held {
            buf.clear();
            keyledger_runtime::export::json_line(r, &mut buf);
            std::hint::black_box(&buf);
        }
        direct_rates.push(rate(held.len() as u64, t));
    }
    let (raw, export) = (median(&mut raw_rates), median(&mut export_rates));
    let (decoded, before) = (median(&mut decoded_rates), median(&mut before_rates));
    println!(
        "export: {records} records, {bytes} bytes of JSON lines: {export:.0} records/s \
         vs raw read {raw:.0} records/s: {:.2} of raw; live heap grew at most {} KiB \
         during the walk ({})",
        export / raw,
        heap_growth / 1024,
        loadavg()
    );
    println!(
        "export: stages (records/s, same run): raw read {raw:.0}; read+check+decode \
         {decoded:.0} ({:.2} of raw); rendering alone: AuditEntry+serde_json {:.0}, \
         direct {:.0}; export before (one thread, AuditEntry) {before:.0} ({:.2} of raw, \
         {}); export now {export:.0} ({:.2} of raw, {:.2}x before) ({})",
        decoded / raw,
        median(&mut entry_rates),
        median(&mut direct_rates),
        before / raw,
        if before_bytes == bytes {
            "same bytes"
        } else {
            "BYTES DIFFER"
        },
        export / raw,
        export / before,
        loadavg()
    );
}

/// Reads pages of a tenant (`read` after a sequence number) to the end,
/// handing each to `each`.
fn walk_pages<R>(
    mut read: impl FnMut(u64) -> Vec<R>,
    seq: impl Fn(&R) -> u64,
    mut each: impl FnMut(&[R]),
) {
    let mut after = 0;
    loop {
        let page = read(after);
        let Some(last) = page.last() else { break };
        after = seq(last);
        each(&page);
    }
}

/// What [`timed`] measured, in milliseconds.
struct Timings {
    runs: usize,
    p50: f64,
    p99: f64,
    max: f64,
    /// The calling thread's own time on a CPU per run (the kernel's
    /// schedstat), which a loaded machine's run-queue waits do not
    /// inflate: p50 and p99. `None` where schedstat is not available.
    cpu: Option<(f64, f64)>,
}

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `f` up to `n` times or for `budget`, whichever ends first.
fn timed(n: usize, budget: Duration, mut f: impl FnMut(usize)) -> Timings {
    let mut took = Vec::new();
    let mut cpu = Vec::new();
    let began = Instant::now();
    for i in 0..n {
        let c = thread_cpu_ns();
        let t = Instant::now();
        f(i);
        took.push(t.elapsed().as_secs_f64() * 1e3);
        if let (Some(a), Some(b)) = (c, thread_cpu_ns()) {
            cpu.push(b.saturating_sub(a) as f64 / 1e6);
        }
        if began.elapsed() >= budget {
            break;
        }
    }
    let runs = took.len();
    let max = took.iter().copied().fold(0.0, f64::max);
    let cpu = (cpu.len() == runs && runs > 0)
        .then(|| (percentile(&mut cpu, 0.5), percentile(&mut cpu, 0.99)));
    Timings {
        runs,
        p50: percentile(&mut took, 0.5),
        p99: percentile(&mut took, 0.99),
        max,
        cpu,
    }
}

fn queries(ledger: &Keyledger, plan: &Plan, big: &TenantId) {
    let (all, active) = ledger.key_counts(big);
    let events = ledger.tenant_position(big);
    println!("queries: tenant big: {all} keys ({active} active), {events} events");
    let report = |what: &str, t: Timings| {
        let cpu = t.cpu.map_or(String::new(), |(p50, p99)| {
            format!("; on a CPU: p99 {p99:.2} ms, p50 {p50:.2}")
        });
        println!(
            "query: {what}: p99 {:.2} ms (p50 {:.2}, max {:.2}, {} runs{cpu}; {})",
            t.p99,
            t.p50,
            t.max,
            t.runs,
            loadavg()
        );
    };
    let budget = Duration::from_secs(20);
    let mut rng = Rng(42);
    let big_keys = plan.big_keys();
    report(
        "list keys (first page of 50)",
        timed(200, budget, |_| {
            let page = ledger.list_keys(big, &ListQuery::default()).expect("list");
            std::hint::black_box(page);
        }),
    );
    report(
        "list keys (a name search, page of 50)",
        timed(200, budget, |i| {
            let q = ListQuery {
                q: Some(format!("key {}", i * 37 + 1)),
                ..ListQuery::default()
            };
            std::hint::black_box(ledger.list_keys(big, &q).expect("list"));
        }),
    );
    // The key list's other searches and sorts (names are `service key N`):
    // a name only one key has (the whole tenant scanned for one page),
    // and the name and last-use sorts, without and with a search.
    report(
        "list keys (a name search finding one key)",
        timed(200, budget, |i| {
            let q = ListQuery {
                q: Some(format!("key {}", 900_000 + i * 37)),
                ..ListQuery::default()
            };
            std::hint::black_box(ledger.list_keys(big, &q).expect("list"));
        }),
    );
    for (what, sort, search) in [
        ("by name, first page of 50", SortField::Name, false),
        ("by name, a name search", SortField::Name, true),
        (
            "by last use, first page of 50",
            SortField::LastUsedAt,
            false,
        ),
        ("by last use, a name search", SortField::LastUsedAt, true),
    ] {
        report(
            &format!("list keys ({what})"),
            timed(200, budget, |i| {
                let q = ListQuery {
                    q: search.then(|| format!("key {}", i * 37 + 1)),
                    sort,
                    ..ListQuery::default()
                };
                std::hint::black_box(ledger.list_keys(big, &q).expect("list"));
            }),
        );
    }
    // The last-use sort the other way (keys never used first), the next
    // page through a cursor, and with a status filter few keys pass.
    let by_use = |order, status| ListQuery {
        sort: SortField::LastUsedAt,
        order,
        status,
        ..ListQuery::default()
    };
    let next = ledger
        .list_keys(big, &by_use(Order::Desc, None))
        .expect("list")
        .next_cursor;
    for (what, q) in [
        ("by last use, oldest first", by_use(Order::Asc, None)),
        (
            "by last use, the second page",
            ListQuery {
                cursor: next,
                ..by_use(Order::Desc, None)
            },
        ),
        (
            "by last use, revoked keys",
            by_use(Order::Desc, Some(KeyStatus::Revoked)),
        ),
    ] {
        report(
            &format!("list keys ({what})"),
            timed(200, budget, |_| {
                std::hint::black_box(ledger.list_keys(big, &q).expect("list"));
            }),
        );
    }
    report(
        "key history (a random key, first page of 50)",
        timed(200, budget, |_| {
            let i = plan.random_big(&mut rng, plan.keys);
            let page = ledger
                .key_history(big, plan.key_id(i), None, None)
                .expect("history");
            std::hint::black_box(page);
        }),
    );
    let today = keyledger_runtime::Clock::now(&SystemClock).day();
    let mut days = Vec::new();
    for n in 1..=30 {
        days.push(today.minus(n));
    }
    report(
        "a day of usage (the tenant's, one of the last 30 days)",
        timed(200, budget, |i| {
            let day = days[i % days.len()];
            std::hint::black_box(ledger.usage_daily(big, None, day, day).expect("daily"));
        }),
    );
    report(
        "a day of usage (a random key's)",
        timed(200, budget, |i| {
            let day = days[i % days.len()];
            let k = plan.key_id(plan.random_big(&mut rng, plan.keys));
            std::hint::black_box(ledger.usage_daily(big, Some(k), day, day).expect("daily"));
        }),
    );
    report(
        "30-day summary",
        timed(200, budget, |_| {
            std::hint::black_box(ledger.usage_summary(big, 30).expect("summary"));
        }),
    );
    // A page of 100 keys from a random place in the key order (the
    // cursor is the key before it), then the whole tenant.
    let mut ids: Vec<KeyId> = (0..big_keys)
        .map(|i| plan.key_id(i * plan.big_every))
        .collect();
    ids.sort();
    report(
        "point-in-time state (day 45, a page of 100 keys at a random place)",
        timed(200, budget, |_| {
            let at = PointInTime::Instant(plan.day_start(45));
            let after = ids[rng.below(ids.len() as u64) as usize];
            let cursor = format!("k{:032x}", after.ulid().0);
            std::hint::black_box(
                ledger
                    .state_at_page(big, at, Some(&cursor), Some(100))
                    .expect("state"),
            );
        }),
    );
    report(
        "point-in-time state (day 45, every key)",
        timed(100, budget, |_| {
            let at = PointInTime::Instant(plan.day_start(45));
            std::hint::black_box(ledger.state_at(big, at).expect("state"));
        }),
    );
}

/// A ledger in memory (no disk) holding `n` keys, laid out over tenants as
/// a data set's are, with the secrets `secret_of(tag << 40 | i)`, created
/// through the real writer.
async fn ledger_of(n: u64, tag: u64, start: i64) -> Keyledger {
    let ledger = Keyledger::open(
        Arc::new(MemoryLog::new()),
        Config {
            usage_window: UsageWindow::Manual,
            ..Config::default()
        },
    )
    .expect("open");
    let mut p = Pipeline {
        ledger: ledger.clone(),
        tasks: tokio::task::JoinSet::new(),
        refused: 0,
        refusals: Default::default(),
    };
    let plan = Plan {
        keys: n,
        start,
        big_every: 10,
    };
    for i in 0..n {
        let s = secret_of(tag << 40 | i);
        p.push(Command::CreateKey(CreateKey {
            meta: None,
            credits: None,
            limits: Vec::new(),
            principal: Principal::user(plan.tenant(i), plan.owner(i)),
            owner: None,
            name: format!("service key {i}"),
            description: None,
            expires_at: None,
            scopes: None,
            key_id: plan.key_id(i),
            secret_hash: s.hash(),
            masked: s.masked(),
        }))
        .await;
    }
    p.drain().await;
    assert_eq!(p.refused, 0, "every create is taken");
    ledger
}

/// The mean time of one verification over `pool` (every key known).
fn verify_pool(l: &Keyledger, pool: &[String]) -> f64 {
    let began = Instant::now();
    let mut found = 0usize;
    for s in pool {
        found += l.verify_with(s, None, |_, key| usize::from(key.is_some()));
    }
    assert_eq!(found, pool.len(), "every presented key is known");
    began.elapsed().as_secs_f64() * 1e9 / pool.len() as f64
}

/// `verify-sizes N…`: verification in memory at each size, in one run:
/// a ledger per size built through the writer (all alive together), then
/// rounds that verify a pool of random keys of each in turn (the order
/// rotating), each size's median set against the smallest's.
async fn verify_sizes(sizes: &[u64]) {
    const POOL: usize = 100_000;
    const ROUNDS: usize = 7;
    let start: i64 = 1_767_225_600_000_000;
    let mut ledgers = Vec::new();
    for (tag, &n) in sizes.iter().enumerate() {
        let began = Instant::now();
        ledgers.push(ledger_of(n, tag as u64 + 1, start).await);
        eprintln!(
            "verify-sizes: {n} keys created in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    let mut rng = Rng(11);
    let pools: Vec<Vec<String>> = sizes
        .iter()
        .enumerate()
        .map(|(tag, &n)| {
            (0..POOL)
                .map(|_| {
                    secret_of((tag as u64 + 1) << 40 | rng.below(n))
                        .expose()
                        .to_owned()
                })
                .collect()
        })
        .collect();
    // One dependent random read at each size: a pointer chase over 256 B
    // a key (the verification map's footprint), in the same rounds.
    let chases: Vec<layout::Chase> = sizes
        .iter()
        .map(|&n| layout::Chase::with((n as usize * 4).max(64), &mut rng))
        .collect();
    let mut hop_ns = vec![Vec::new(); sizes.len()];
    let mut ns = vec![Vec::new(); sizes.len()];
    let mut ratios = vec![Vec::new(); sizes.len()];
    for round in 0..ROUNDS {
        let mut this = vec![0.0; sizes.len()];
        for k in 0..sizes.len() {
            let j = (k + round) % sizes.len();
            this[j] = verify_pool(&ledgers[j], &pools[j]);
            hop_ns[j].push(chases[j].run(POOL));
        }
        for j in 0..sizes.len() {
            ns[j].push(this[j]);
            ratios[j].push(this[j] / this[0]);
        }
    }
    for j in 0..sizes.len() {
        let (lo, hi) = (
            ratios[j].iter().copied().fold(f64::MAX, f64::min),
            ratios[j].iter().copied().fold(0.0, f64::max),
        );
        let (at, hop) = (median(&mut ns[j]), median(&mut hop_ns[j]));
        println!(
            "verify-sizes: {} keys {at:.1} ns: {:.2}× {} keys (rounds {lo:.2}–{hi:.2}; {ROUNDS} rounds \
             of {POOL} random keys; inline KeyEntry {} B; one dependent random read over {} MB \
             {hop:.1} ns, the verification {:.2} of them; {})",
            sizes[j],
            median(&mut ratios[j]),
            sizes[0],
            std::mem::size_of::<keyledger_runtime::KeyEntry>(),
            (sizes[j] * 256) >> 20,
            at / hop,
            loadavg()
        );
    }
    for l in ledgers {
        l.shutdown().await.expect("shutdown");
    }
}

async fn verify_at_size(ledger: &Keyledger, plan: &Plan) {
    // A pool of presented secrets the same size on both sides, drawn at
    // random from every key, so the pool itself costs both alike and the
    // map's cache misses show at size.
    const POOL: usize = 100_000;
    const ROUNDS: usize = 5;
    let small = ledger_of(1000, 1, plan.start).await;
    let mut rng = Rng(7);
    let pool_at_size: Vec<String> = (0..POOL)
        .map(|_| secret_of(rng.below(plan.keys)).expose().to_owned())
        .collect();
    let pool_small: Vec<String> = (0..POOL)
        .map(|_| secret_of(1u64 << 40 | rng.below(1000)).expose().to_owned())
        .collect();
    let run = verify_pool;
    let (mut big_ns, mut small_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first.
        let (a, b) = if round % 2 == 0 {
            let a = run(ledger, &pool_at_size);
            (a, run(&small, &pool_small))
        } else {
            let b = run(&small, &pool_small);
            (run(ledger, &pool_at_size), b)
        };
        big_ns.push(a);
        small_ns.push(b);
        ratios.push(a / b);
    }
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "verify: at size {:.1} ns, at 1,000 keys {:.1} ns: {:.2}× (rounds {lo:.2}–{hi:.2}; \
         {ROUNDS} rounds of {POOL} random keys; {})",
        median(&mut big_ns),
        median(&mut small_ns),
        median(&mut ratios),
        loadavg()
    );
    small.shutdown().await.expect("shutdown");
}

async fn creates_at_size(ledger: &Keyledger, dir: &Path) {
    // The empty store on the same disk, beside the data directory.
    let empty_dir = dir.with_extension("empty-for-measure");
    let _ = std::fs::remove_dir_all(&empty_dir);
    make_dir(&empty_dir);
    let empty = open_dir(&empty_dir);
    const ROUNDS: usize = 8;
    const BLOCK: usize = 200;
    let big: TenantId = "big".parse().expect("tenant");
    let create = |l: &Keyledger, n: usize| {
        let l = l.clone();
        let big = big.clone();
        async move {
            let began = Instant::now();
            for i in 0..n {
                l.create_key(
                    Principal::user(big.clone(), "u1".parse().expect("user")),
                    keyledger_runtime::NewKey {
                        name: format!("measured key {i}"),
                        ..Default::default()
                    },
                )
                .await
                .expect("create");
            }
            began.elapsed().as_secs_f64() / n as f64
        }
    };
    let concurrent = |l: &Keyledger, tasks: usize, per: usize| {
        let l = l.clone();
        let big = big.clone();
        async move {
            let began = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for t in 0..tasks {
                let l = l.clone();
                let big = big.clone();
                set.spawn(async move {
                    for i in 0..per {
                        l.create_key(
                            Principal::user(big.clone(), format!("u{t}").parse().expect("user")),
                            keyledger_runtime::NewKey {
                                name: format!("measured key {i}"),
                                ..Default::default()
                            },
                        )
                        .await
                        .expect("create");
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("task");
            }
            began.elapsed().as_secs_f64() / (tasks * per) as f64
        }
    };
    // The first write to a tenant copies its keys for the writer: timed
    // apart, once.
    let first_at_size = create(ledger, 1).await;
    let first_empty = create(&empty, 1).await;
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let (mut rate_size, mut rate_empty) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (s, e) = if round % 2 == 0 {
            let s = create(ledger, BLOCK).await;
            (s, create(&empty, BLOCK).await)
        } else {
            let e = create(&empty, BLOCK).await;
            (create(ledger, BLOCK).await, e)
        };
        one.push(e / s);
        rate_size.push(1.0 / s);
        rate_empty.push(1.0 / e);
        let (s, e) = if round % 2 == 0 {
            let s = concurrent(ledger, 16, BLOCK / 4).await;
            (s, concurrent(&empty, 16, BLOCK / 4).await)
        } else {
            let e = concurrent(&empty, 16, BLOCK / 4).await;
            (concurrent(ledger, 16, BLOCK / 4).await, e)
        };
        many.push(e / s);
    }
    println!(
        "creates: one at a time, at size {:.0}/s, empty {:.0}/s: at size {:.0}% of empty \
         (median of {ROUNDS} interleaved rounds of {BLOCK}; rounds {:.0}–{:.0}%); \
         16 tasks: at size {:.0}% of empty; the first create in the big tenant took {:.1} ms \
         at size, {:.1} ms empty ({})",
        median(&mut rate_size),
        median(&mut rate_empty),
        median(&mut one) * 100.0,
        one.iter().copied().fold(f64::MAX, f64::min) * 100.0,
        one.iter().copied().fold(0.0, f64::max) * 100.0,
        median(&mut many) * 100.0,
        first_at_size * 1e3,
        first_empty * 1e3,
        loadavg()
    );
    empty.shutdown().await.expect("shutdown");
    drop(empty);
    let _ = std::fs::remove_dir_all(&empty_dir);
}

/// `flush-create DIR [DIRTY]`: what a create waits behind a large usage
/// flush (issue 13: the 6.1 s first create in `measure` at 10M keys came
/// right after 500,000 verifications). Each round verifies `dirty`
/// distinct random keys once, starts [`Keyledger::flush_usage`], waits
/// until the flush has queued work for the writer, then times one
/// create; the baseline is a create on the same ledger, idle, just before.
async fn flush_create(dir: &Path, dirty: u64, in_flight: usize) {
    const ROUNDS: usize = 3;
    const IDLE: usize = 20;
    let plan = Plan::read(dir);
    let log = Arc::new(RedbLog::open(&log_path(dir)).expect("open the log"));
    let ledger = Keyledger::open(
        log,
        Config {
            snapshots: Some(keyledger_runtime::SnapshotConfig::in_dir(dir)),
            usage_in_flight_max: if in_flight == 0 {
                Config::default().usage_in_flight_max
            } else {
                in_flight
            },
            ..serve_config(dir, UsageWindow::Manual)
        },
    )
    .expect("open the ledger");
    println!(
        "flush-create: {} ({} keys; {dirty} dirty keys a round; at most {} usage commands in flight; {})",
        dir.display(),
        plan.keys,
        if in_flight == 0 {
            Config::default().usage_in_flight_max
        } else {
            in_flight
        },
        loadavg()
    );
    let tenant: TenantId = "t00001".parse().expect("tenant");
    let create = |l: &Keyledger, i: usize| {
        let l = l.clone();
        let tenant = tenant.clone();
        async move {
            let began = Instant::now();
            l.create_key(
                Principal::user(tenant, "u1".parse().expect("user")),
                keyledger_runtime::NewKey {
                    name: format!("behind a flush {i}"),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
            began.elapsed().as_secs_f64() * 1e3
        }
    };
    let mut rng = Rng(11);
    let (mut idle, mut behind, mut flushes, mut depths) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut quiet: Vec<f64> = Vec::new();
        for i in 0..IDLE {
            quiet.push(create(&ledger, round * 1000 + i).await);
        }
        idle.push(median(&mut quiet));
        let pool: Vec<String> = (0..dirty)
            .map(|_| secret_of(rng.below(plan.keys)).expose().to_owned())
            .collect();
        // A set loaded with a time limit may hold fewer keys than planned:
        // unknown ones are not counted, so the dirty keys are those found.
        let found: usize = pool
            .iter()
            .map(|s| ledger.verify_with(s, None, |_, key| usize::from(key.is_some())))
            .sum();
        let began = Instant::now();
        let flush = {
            let l = ledger.clone();
            tokio::spawn(async move { l.flush_usage().await.expect("flush") })
        };
        while ledger.queue_depth() == 0 && !flush.is_finished() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        depths.push(ledger.queue_depth() as f64);
        behind.push(create(&ledger, round * 1000 + 999).await);
        let written = flush.await.expect("flush task");
        flushes.push(began.elapsed().as_secs_f64() * 1e3);
        println!(
            "  round {round}: idle create {:.2} ms (median of {IDLE}); behind the flush {:.2} ms \
             (queue {} commands when it was sent); the flush wrote {written} usage events \
             ({found} keys found of {dirty}) in {:.0} ms",
            idle[round], behind[round], depths[round], flushes[round]
        );
    }
    println!(
        "flush-create: a create behind a flush of {dirty} keys' usage {:.2} ms against {:.2} ms idle: \
         {:.1}× (median of {ROUNDS}; the flushes took {:.0} ms; {})",
        median(&mut behind.clone()),
        median(&mut idle.clone()),
        median(&mut behind) / median(&mut idle),
        median(&mut flushes),
        loadavg()
    );
    ledger.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------ memory

/// The verification map's entry as far as memory goes: the same size
/// (checked) and the same shared texts (`KeyEntry::new` is the runtime's
/// own). The tenant's and the owner's ids are shared as the ledger shares
/// them (one copy per tenant, per owner); the name is counted here,
/// though in the runtime it is the key record's own, shared.
struct EntryStandIn {
    _tenant: TenantId,
    _owner: UserId,
    _name: Arc<str>,
    _rest: [u64; ENTRY_REST_WORDS],
}

const ENTRY_REST_WORDS: usize = (std::mem::size_of::<keyledger_runtime::KeyEntry>()
    - std::mem::size_of::<UserId>()
    - std::mem::size_of::<Arc<str>>()
    - std::mem::size_of::<TenantId>())
    / 8;

/// What `build` returns and what it holds: live heap asked of the
/// allocator (bytes, blocks) and the growth of the resident set.
fn held<T>(build: impl FnOnce() -> T) -> (T, [i64; 3]) {
    let (b0, n0) = heap();
    let (r0, _) = rss();
    let value = build();
    let (b1, n1) = heap();
    let (r1, _) = rss();
    (value, [b1 - b0, n1 - n0, r1 as i64 - r0 as i64])
}

/// Folds the log page by page (never the whole log in memory at once).
fn fold_log(log: &RedbLog, mut f: impl FnMut(&[keyledger_store::Record])) {
    let mut after = 0;
    loop {
        let page = log.read_after(after, 16_384).expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        f(&page);
    }
}

/// Rows of the memory breakdown for one part, each built alone in this
/// process from the log (`scripts/scale` runs each part in a process of
/// its own, so the resident-set growth is that part's).
async fn memory(dir: &Path, part: &str) {
    let path = log_path(dir);
    // Rows are printed at the end: counting keys reads the whole log,
    // which would move the resident set measured here.
    let mut rows: Vec<(String, [i64; 3])> = Vec::new();
    let mut filled: Option<u64> = None;
    let mut row = |what: &str, v: [i64; 3]| rows.push((what.to_owned(), v));
    // The runtime opens the log itself (one process at a time may).
    let log = (!matches!(part, "runtime" | "sizes" | "decision"))
        .then(|| RedbLog::open(&path).expect("open the log"));
    let log = log.as_ref();
    if part != "runtime" && part != "log" {
        // redb's cache fills while the log is read: warm it first, so that
        // what is counted below is the structure alone.
        log.into_iter().for_each(|l| fold_log(l, |_| {}));
    }
    match part {
        "sizes" => {}
        "runtime" => {
            // What a runtime holds on an empty data directory (tokio tasks,
            // the writer's queue, the first tables of every map).
            let empty_dir = dir.with_extension("empty-for-memory");
            let _ = std::fs::remove_dir_all(&empty_dir);
            make_dir(&empty_dir);
            let (empty, fixed) = held(|| open_dir(&empty_dir));
            let (ledger, total) = held(|| open_dir(dir));
            row("an empty runtime (fixed)", fixed);
            row("the runtime after the open, less the empty one", {
                let [a, b, c] = total;
                [a - fixed[0], b - fixed[1], c]
            });
            // What one write to `big` adds (the writer once copied that
            // tenant's keys at its first write; it keeps no copy now: the
            // `decision` part measures a write to every tenant).
            let plan = Plan::read(dir);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (b0, n0) = heap();
            let (r0, _) = rss();
            ledger
                .execute(Command::RecordUsage {
                    tenant: "big".parse().expect("tenant"),
                    usage: KeyUsed {
                        key_id: plan.key_id(0),
                        window_start: ledger.now(),
                        window_end: ledger.now(),
                        last_valid_at: None,
                        counts: UseCounts {
                            valid: 1,
                            ..UseCounts::default()
                        },
                    },
                })
                .await
                .expect("one write");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (b1, n1) = heap();
            let (r1, _) = rss();
            row(
                "the runtime after one write to big",
                [b1 - b0, n1 - n0, r1 as i64 - r0 as i64],
            );
            ledger.shutdown().await.expect("shutdown");
            empty.shutdown().await.expect("shutdown");
            let _ = std::fs::remove_dir_all(&empty_dir);
        }
        "log" => {
            let (_, cache) = held(|| fold_log(log.expect("the log"), |_| {}));
            row("the log's caches after a read through (redb)", cache);
            let (_, again) = held(|| fold_log(log.expect("the log"), |_| {}));
            row("  and after a second read through", again);
        }
        "decision" => decision_growth(dir, &mut row).await,
        "ledger" => {
            let (ledger, alone) = held(|| {
                let mut l = Ledger::new();
                fold_log(log.expect("the log"), |page| {
                    for r in page {
                        l.apply(r.seq, &r.event).expect("apply");
                    }
                });
                l
            });
            {
                row("Ledger (read model's key state)", alone);
                let (keys_map, in_keys) = held(|| {
                    ledger
                        .tenants()
                        .map(|(t, s)| (t.clone(), s.keys.clone()))
                        .collect::<Vec<_>>()
                });
                let (owners, in_owners) = held(|| {
                    ledger
                        .tenants()
                        .map(|(_, s)| s.by_owner.clone())
                        .collect::<Vec<_>>()
                });
                drop((keys_map, owners));
                row(
                    "  tenants' keys (BTreeMap<KeyId, KeyRecord>, a clone)",
                    in_keys,
                );
                row("  tenants' by_owner (a clone)", in_owners);
                row("  by_hash + key_tenants + tenants (the rest)", {
                    let d = |i: usize| alone[i] - in_keys[i] - in_owners[i];
                    [d(0), d(1), d(2)]
                });
            }
        }
        "usage" => {
            let (_usage, alone) = held(|| {
                let mut u = Usage::new();
                fold_log(log.expect("the log"), |page| {
                    u.apply_all(page.iter().map(|r| &r.event))
                });
                u
            });
            row(
                "Usage (per-key days + per-tenant days; in memory before usage.redb)",
                alone,
            );
            drop(_usage);
            let (_tenants, alone) = held(|| {
                let mut u = keyledger_core::TenantUsage::new();
                fold_log(log.expect("the log"), |page| {
                    u.apply_all(page.iter().map(|r| &r.event))
                });
                u
            });
            row("TenantUsage (per-tenant days: what stays in memory)", alone);
        }
        "trees" => {
            let (trees, alone) = held(|| {
                let mut trees: std::collections::HashMap<TenantId, Tree> = Default::default();
                fold_log(log.expect("the log"), |page| {
                    for r in page {
                        trees
                            .entry(r.event.tenant.clone())
                            .or_default()
                            .push_leaf_hash(keyledger_audit::merkle::leaf_hash(&r.hash));
                    }
                });
                trees
            });
            row(
                "Merkle trees whole in memory (before the node store)",
                alone,
            );
            // What the hashes fill (a tree of n leaves has 2n - 1 nodes):
            // the rest is the levels' spare capacity.
            let nodes: u64 = trees
                .values()
                .map(|t| (2 * t.len()).saturating_sub(1))
                .sum();
            filled = Some(nodes * 32);
            drop(trees);
            // What the runtime keeps now (crates/runtime/src/tilestore.rs):
            // per tree, its frontier (one partial tile of 256 per tile
            // level, as a tree with its inner nodes); full tiles go to
            // merkle.redb. The same shape, built here from the log.
            let (_frontiers, alone) = held(|| {
                let mut trees: std::collections::HashMap<TenantId, Vec<Tree>> = Default::default();
                fold_log(log.expect("the log"), |page| {
                    for r in page {
                        let frontier = trees.entry(r.event.tenant.clone()).or_default();
                        let mut node = keyledger_audit::merkle::leaf_hash(&r.hash);
                        let mut level = 0;
                        loop {
                            if frontier.len() == level {
                                frontier.push(Tree::new());
                            }
                            frontier[level].push_leaf_hash(node);
                            if frontier[level].len() < 256 {
                                break;
                            }
                            let tile = std::mem::take(&mut frontier[level]);
                            node = tile.node(8, 0).expect("a full tile's root");
                            level += 1;
                        }
                    }
                });
                trees
            });
            row("Merkle trees' frontiers (the rest in merkle.redb)", alone);
        }
        "vmap" => {
            let (_map, alone) = held(|| {
                let map: papaya::HashMap<keyledger_core::SecretHash, Arc<EntryStandIn>> =
                    papaya::HashMap::default();
                let pinned = map.pin();
                let mut tenants = std::collections::HashSet::new();
                let mut owners = std::collections::HashSet::new();
                fold_log(log.expect("the log"), |page| {
                    for r in page {
                        if let keyledger_core::EventKind::KeyCreated(e) = &r.event.kind {
                            if !tenants.contains(&r.event.tenant) {
                                tenants.insert(r.event.tenant.clone());
                            }
                            if !owners.contains(&e.owner) {
                                owners.insert(e.owner.clone());
                            }
                            let tenant = tenants.get(&r.event.tenant).expect("held").clone();
                            let owner = owners.get(&e.owner).expect("held").clone();
                            pinned.insert(
                                e.secret_hash,
                                Arc::new(EntryStandIn {
                                    _tenant: tenant.clone(),
                                    _owner: owner.clone(),
                                    _name: Arc::from(e.name.as_str()),
                                    _rest: [0; ENTRY_REST_WORDS],
                                }),
                            );
                        }
                    }
                });
                drop(pinned);
                map
            });
            assert_eq!(
                std::mem::size_of::<EntryStandIn>(),
                std::mem::size_of::<keyledger_runtime::KeyEntry>(),
                "the stand-in has the verification map entry's size"
            );
            row("verification map (papaya, Arc<KeyEntry>)", alone);
        }
        other => {
            eprintln!(
                "memory parts: sizes runtime log ledger decision usage trees vmap; not {other}"
            );
            std::process::exit(2);
        }
    }
    let (mut keys, mut head) = (0u64, 0u64);
    let opened;
    let log = match log {
        Some(l) => l,
        None => {
            opened = RedbLog::open(&path).expect("open the log");
            &opened
        }
    };
    fold_log(log, |page| {
        head = page.last().map_or(head, |r| r.position);
        keys += page
            .iter()
            .filter(|r| matches!(r.event.kind, keyledger_core::EventKind::KeyCreated(_)))
            .count() as u64;
    });
    let per = |bytes: i64, n: u64| bytes as f64 / n.max(1) as f64;
    if part == "sizes" {
        println!(
            "memory: {keys} keys, {head} events; inline sizes: KeyRecord {} B, KeyEntry {} B, \
             Record {} B ({})",
            std::mem::size_of::<keyledger_core::KeyRecord>(),
            std::mem::size_of::<keyledger_runtime::KeyEntry>(),
            std::mem::size_of::<keyledger_store::Record>(),
            loadavg()
        );
    }
    for (what, [bytes, blocks, resident]) in rows {
        println!(
            "memory: {what:<52} heap {:>13} B = {:>7.1} B/key {:>6.1} B/event, {:>9} blocks; \
             resident +{:>7.1} B/key",
            bytes,
            per(bytes, keys),
            per(bytes, head),
            blocks,
            per(resident, keys),
        );
    }
    if let Some(filled) = filled {
        println!(
            "memory:   (the trees' hashes fill {:.1} B/event of it; the rest is the levels' \
             spare capacity)",
            per(filled as i64, head)
        );
    }
}

/// What the runtime holds more after its writer has written for every
/// tenant: one usage window for the first key of each tenant (the writer
/// once copied a tenant's keys at its first write), then 2,048 creates in
/// `big` (which touch nearly every shard of the key indexes), through the
/// real writer, 64 commands in flight. The growth includes what the writes
/// add to the read model (2,048 keys, their usage rows), small beside a
/// second copy of the key state. Also times the first write to `big`
/// after the open (the writer's stall when it copied the tenant).
async fn decision_growth(dir: &Path, row: &mut impl FnMut(&str, [i64; 3])) {
    let plan = Plan::read(dir);
    let big: TenantId = "big".parse().expect("tenant");
    // The first key of every tenant, `big`'s first.
    let mut firsts = vec![(big.clone(), plan.key_id(0))];
    for n in 0..plan.keys.div_ceil(SMALL_TENANT_KEYS) {
        if let Some(i) = (n * SMALL_TENANT_KEYS..((n + 1) * SMALL_TENANT_KEYS).min(plan.keys))
            .find(|&i| !plan.big(i))
        {
            firsts.push((plan.tenant(i), plan.key_id(i)));
        }
    }
    let ledger = open_dir(dir);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b0, n0) = heap();
    let (r0, _) = rss();
    let usage = |tenant: TenantId, key_id: KeyId| {
        let l = ledger.clone();
        async move {
            l.execute(Command::RecordUsage {
                tenant,
                usage: KeyUsed {
                    key_id,
                    window_start: l.now(),
                    window_end: l.now(),
                    last_valid_at: None,
                    counts: UseCounts {
                        valid: 1,
                        ..UseCounts::default()
                    },
                },
            })
            .await
            .expect("a usage write")
        }
    };
    let began = Instant::now();
    usage(firsts[0].0.clone(), firsts[0].1).await;
    let first_ms = began.elapsed().as_secs_f64() * 1e3;
    let began = Instant::now();
    for chunk in firsts[1..].chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for (t, k) in chunk {
            set.spawn(usage(t.clone(), *k));
        }
        while let Some(r) = set.join_next().await {
            r.expect("task");
        }
    }
    let every_ms = began.elapsed().as_secs_f64() * 1e3;
    for chunk in 0..2048 / 64 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let l = ledger.clone();
            let big = big.clone();
            set.spawn(async move {
                l.create_key(
                    Principal::user(big, "u1".parse().expect("user")),
                    keyledger_runtime::NewKey {
                        name: format!("decision key {chunk}.{i}"),
                        ..Default::default()
                    },
                )
                .await
                .expect("create")
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b1, n1) = heap();
    let (r1, _) = rss();
    println!(
        "memory: decision: the first write to big after the open took {first_ms:.1} ms; \
         a write to each of the other {} tenants {every_ms:.0} ms ({})",
        firsts.len() - 1,
        loadavg()
    );
    row(
        "runtime growth: a write to every tenant + 2,048 creates",
        [b1 - b0, n1 - n0, r1 as i64 - r0 as i64],
    );
    ledger.shutdown().await.expect("shutdown");
}
