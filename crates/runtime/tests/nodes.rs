//! Several nodes on one shared log: each a full `Keyledger` runtime with its
//! own writer, follower, projections and verification map. Every test runs
//! twice: on one `MemoryLog` shared in process (which wakes the others on
//! append, as LISTEN/NOTIFY does), and on one PostgreSQL database with a
//! connection of its own per node, as separate processes would have
//! (`KEYLEDGER_TEST_POSTGRES_URL`; without it the PostgreSQL cases fail,
//! they do not skip).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Rng, SeededEntropy, fold, seed, tenant, user};
use keyledger_core::{CommandError, KeyId, Principal, Reporter, RevokeReason};
use keyledger_runtime::{
    Config, Error, Follow, Keyledger, NewKey, ReportedSecret, SnapshotConfig, SystemClock,
    UsageWindow, VerifyOutcome,
};
use keyledger_store::postgres::TestDatabase;
use keyledger_store::{EventLog, MemoryLog, PgLog};

/// How long a node may take to show what another wrote, in these tests.
/// Generous: the machine is shared; the measured figure is in
/// docs/performance.md (`benches/postgres.rs`).
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

fn follow(name: &str) -> Follow {
    Follow {
        wait_max: Duration::from_millis(50),
        report_every: Duration::from_millis(200),
        live_within: Duration::from_secs(2),
        ..Follow::new(name)
    }
}

/// Where the nodes' log lives.
enum Backend {
    Memory(MemoryLog),
    Postgres(TestDatabase),
}

impl Backend {
    fn memory() -> Self {
        Backend::Memory(MemoryLog::new())
    }

    fn postgres() -> Self {
        Backend::Postgres(TestDatabase::create())
    }

    /// A node's own handle on the log: the shared memory log, or a new
    /// connection to the database.
    fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Postgres(db) => {
                Arc::new(PgLog::connect(db.url()).unwrap_or_else(|e| panic!("connect: {e}")))
            }
        }
    }
}

/// Runs a test on both backends: `<test>::memory` and `<test>::postgres`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$test(super::Backend::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(super::Backend::postgres()).await;
            }
        }
    )*};
}

on_every_backend!(
    keys_created_on_each_node_verify_on_the_others,
    a_key_revoked_on_one_node_is_refused_by_the_others,
    a_conflicting_append_is_decided_again_after_catching_up,
    concurrent_writers_on_the_same_tenants_lose_nothing,
    usage_counted_on_every_node_adds_up_exactly,
    removing_a_user_on_one_node_cascades_on_every_node,
    revoke_everywhere_answers_once_every_live_node_refuses,
    revoke_everywhere_names_a_lagging_node_then_ages_it_out,
    a_node_restarts_from_its_snapshot_and_follows_the_tail,
);

fn node(b: &Backend, name: &str, follow: Option<Follow>, seed: u64) -> Keyledger {
    let log = b.log();
    let config = Config {
        usage_window: UsageWindow::Manual,
        follow,
        ..Config::default()
    };
    Keyledger::open_with(
        log,
        config,
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::new(
            seed ^ name.len() as u64 ^ u64::from(name.as_bytes()[0]),
        )),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// Three following nodes on one log.
fn three(b: &Backend, seed: u64) -> [Keyledger; 3] {
    ["a", "b", "c"].map(|n| node(b, n, Some(follow(n)), seed))
}

/// Waits until `f` holds, or fails naming `what`; returns how long it took.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < PROPAGATION_BOUND,
            "{what}: not within {PROPAGATION_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// Waits until every node has applied the whole log.
async fn converge(nodes: &[Keyledger], log: &Arc<dyn EventLog>) {
    let head = log.head().unwrap_or_else(|e| panic!("head: {e}"));
    eventually("every node applies the whole log", || {
        nodes.iter().all(|n| n.head() == head)
    })
    .await;
}

/// Every node's projections equal a fresh fold of the log.
fn assert_projections_match(nodes: &[Keyledger], log: &Arc<dyn EventLog>) {
    let (ledger, usage) = fold(log.as_ref());
    for (i, n) in nodes.iter().enumerate() {
        let (l, u) = n.projections();
        assert!(
            l == ledger,
            "node {i}: key state differs from a fresh replay"
        );
        assert!(u == usage, "node {i}: usage differs from a fresh replay");
    }
}

async fn create(n: &Keyledger, t: &str, owner: &str, name: &str) -> (KeyId, String) {
    let c = n
        .create_key(
            Principal::operator(tenant(t)),
            NewKey {
                owner: Some(user(owner)),
                name: name.into(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    (c.key.id, c.secret.expose().to_owned())
}

/// A node's snapshot is in its own data directory: restarted, it starts
/// from it and replays only what the other nodes wrote meanwhile from the
/// shared log, then follows them as before.
async fn a_node_restarts_from_its_snapshot_and_follows_the_tail(b: Backend) {
    let seed = seed("a_node_restarts_from_its_snapshot_and_follows_the_tail");
    let log = b.log();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let open_a = || {
        let config = Config {
            usage_window: UsageWindow::Manual,
            follow: Some(follow("a")),
            snapshots: Some(SnapshotConfig {
                every: Duration::from_secs(3600),
                ..SnapshotConfig::in_dir(dir.path())
            }),
            ..Config::default()
        };
        Keyledger::open_with(
            b.log(),
            config,
            Arc::new(SystemClock),
            Arc::new(SeededEntropy::new(seed ^ 0xa)),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("open a: {e}"))
    };
    let a = open_a();
    let other = node(&b, "b", Some(follow("b")), seed);
    for i in 0..5 {
        create(&a, "acme", "ada", &format!("before {i}")).await;
    }
    converge(&[a.clone(), other.clone()], &log).await;
    a.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let at = log.head().unwrap_or_else(|e| panic!("{e}"));
    let mut meanwhile = Vec::new();
    for i in 0..4 {
        meanwhile.push(create(&other, "acme", "bob", &format!("meanwhile {i}")).await);
    }
    let a = open_a();
    let started = &a.metrics().snapshots;
    assert_eq!(
        started.start_snapshot_position.load(Ordering::Relaxed),
        at,
        "a starts from its snapshot"
    );
    assert_eq!(
        started.start_replayed_events.load(Ordering::Relaxed),
        4,
        "and replays only what b wrote meanwhile"
    );
    for (_, secret) in &meanwhile {
        assert_eq!(a.verify(secret, None).outcome, VerifyOutcome::Valid);
    }
    let (_, later) = create(&other, "acme", "bob", "later").await;
    eventually("a follows b after its restart", || {
        a.verify(&later, None).outcome == VerifyOutcome::Valid
    })
    .await;
    converge(&[a.clone(), other.clone()], &log).await;
    assert_projections_match(&[a.clone(), other.clone()], &log);
    for n in [a, other] {
        n.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn keys_created_on_each_node_verify_on_the_others(b: Backend) {
    let seed = seed("keys_created_on_each_node_verify_on_the_others");
    let log = b.log();
    let nodes = three(&b, seed);
    let mut secrets = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        secrets.push(create(n, "acme", "ada", &format!("made on {i}")).await);
    }
    for (id, secret) in &secrets {
        for (j, other) in nodes.iter().enumerate() {
            eventually(&format!("node {j} knows key {id}"), || {
                other.verify(secret, None).outcome == VerifyOutcome::Valid
            })
            .await;
        }
    }
    converge(&nodes, &log).await;
    assert_projections_match(&nodes, &log);
    for n in &nodes {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

async fn a_key_revoked_on_one_node_is_refused_by_the_others(b: Backend) {
    let seed = seed("a_key_revoked_on_one_node_is_refused_by_the_others");
    let [a, b, c] = three(&b, seed);
    let (id, secret) = create(&a, "acme", "ada", "doomed").await;
    for n in [&b, &c] {
        eventually("the key reaches every node", || {
            n.verify(&secret, None).outcome == VerifyOutcome::Valid
        })
        .await;
    }
    a.revoke_key(
        Principal::operator(tenant("acme")),
        id,
        RevokeReason::Compromised,
    )
    .await
    .unwrap_or_else(|e| panic!("revoke: {e}"));
    assert_eq!(a.verify(&secret, None).outcome, VerifyOutcome::Revoked);
    for n in [&b, &c] {
        eventually("the revocation reaches every node", || {
            n.verify(&secret, None).outcome == VerifyOutcome::Revoked
        })
        .await;
    }
    // Revoking again on another node is the same conflict as on the first.
    let again = b
        .revoke_key(
            Principal::operator(tenant("acme")),
            id,
            RevokeReason::Manual,
        )
        .await;
    assert!(
        matches!(again, Err(Error::Command(CommandError::AlreadyRevoked(_)))),
        "{again:?}"
    );
    for n in [a, b, c] {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

/// A node that does not follow (its decision copy goes stale) shows the
/// optimistic append at work, deterministically: its append conflicts, it
/// catches up, decides again, and the command succeeds or gets its real
/// refusal. Nothing is lost, nothing applied twice.
async fn a_conflicting_append_is_decided_again_after_catching_up(b: Backend) {
    let seed = seed("a_conflicting_append_is_decided_again_after_catching_up");
    let log = b.log();
    let a = node(&b, "a", Some(follow("a")), seed);
    let stale = node(&b, "stale", None, seed ^ 1);
    let (first, _) = create(&a, "acme", "ada", "first").await;
    assert_eq!(stale.head(), 0, "a node without a follower does not follow");

    // Decided against version 0, appended against version 1: a conflict,
    // retried after catching up, and it succeeds.
    let (second, second_secret) = create(&stale, "acme", "bob", "second").await;
    let conflicts = |n: &Keyledger| {
        n.metrics()
            .append_conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(conflicts(&stale), 1);
    assert_eq!(
        stale.head(),
        2,
        "caught up with the first key and added its own"
    );
    assert!(stale.key(&tenant("acme"), first).is_ok());
    eventually("the follower sees the retried key", || {
        a.verify(&second_secret, None).outcome == VerifyOutcome::Valid
    })
    .await;

    // Both nodes believe `second` is active; `a` revokes it first. The
    // stale node's revoke is decided against its old copy, conflicts, and
    // after catching up gets the refusal a single node would give.
    a.revoke_key(
        Principal::operator(tenant("acme")),
        second,
        RevokeReason::Manual,
    )
    .await
    .unwrap_or_else(|e| panic!("revoke on a: {e}"));
    let late = stale
        .revoke_key(
            Principal::operator(tenant("acme")),
            second,
            RevokeReason::Manual,
        )
        .await;
    assert!(
        matches!(late, Err(Error::Command(CommandError::AlreadyRevoked(_)))),
        "{late:?}"
    );
    assert_eq!(conflicts(&stale), 2);
    assert_eq!(
        stale.verify(&second_secret, None).outcome,
        VerifyOutcome::Revoked
    );
    let revocations = {
        let mut n = 0;
        let mut after = 0;
        loop {
            let page = log.read_after(after, 100).unwrap_or_else(|e| panic!("{e}"));
            let Some(last) = page.last() else { break };
            after = last.position;
            n += page
                .iter()
                .filter(|r| r.event.type_name() == "KeyRevoked")
                .count();
        }
        n
    };
    assert_eq!(revocations, 1, "the key is revoked exactly once in the log");
    converge(std::slice::from_ref(&a), &log).await;
    assert_projections_match(&[a.clone(), stale.clone()], &log);
    for n in [a, stale] {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

/// Three nodes create keys in the same tenants at the same time: the
/// appends conflict with each other all the time; every acknowledged key
/// is in the log exactly once, and every node ends with the same state.
async fn concurrent_writers_on_the_same_tenants_lose_nothing(b: Backend) {
    let seed = seed("concurrent_writers_on_the_same_tenants_lose_nothing");
    let log = b.log();
    let nodes = three(&b, seed);
    const PER_CLIENT: usize = 30;
    const CLIENTS_PER_NODE: usize = 3;
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for c in 0..CLIENTS_PER_NODE {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for k in 0..PER_CLIENT {
                    let t = if k % 2 == 0 { "acme" } else { "globex" };
                    let (id, _) = create(&n, t, "ada", &format!("n{i}c{c}k{k}")).await;
                    ids.push(id);
                }
                ids
            }));
        }
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap_or_else(|e| panic!("client: {e}")));
    }
    converge(&nodes, &log).await;
    assert_projections_match(&nodes, &log);
    let (state, _) = fold(log.as_ref());
    let in_log: usize = state.tenants().map(|(_, t)| t.keys.len()).sum();
    assert_eq!(
        in_log,
        acknowledged.len(),
        "every acknowledged key, exactly once"
    );
    for id in &acknowledged {
        assert!(
            state.key(&tenant("acme"), *id).is_some()
                || state.key(&tenant("globex"), *id).is_some(),
            "acknowledged key {id} is missing"
        );
    }
    let conflicts: u64 = nodes
        .iter()
        .map(|n| {
            n.metrics()
                .append_conflicts
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    println!(
        "{} keys, {conflicts} conflicting appends retried",
        acknowledged.len()
    );
    for n in nodes {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

async fn usage_counted_on_every_node_adds_up_exactly(b: Backend) {
    let seed = seed("usage_counted_on_every_node_adds_up_exactly");
    let mut rng = Rng(seed);
    let log = b.log();
    let nodes = three(&b, seed);
    let mut keys = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        keys.push(create(n, "acme", "ada", &format!("k{i}")).await);
    }
    converge(&nodes, &log).await;
    let mut made: HashMap<KeyId, u64> = HashMap::new();
    for round in 0..4 {
        for n in &nodes {
            for (id, secret) in &keys {
                let uses = rng.below(20);
                for _ in 0..uses {
                    assert_eq!(n.verify(secret, None).outcome, VerifyOutcome::Valid);
                }
                *made.entry(*id).or_default() += uses;
            }
        }
        // Flushes from every node at once, racing for the same tenant.
        let flushes: Vec<_> = nodes
            .iter()
            .map(|n| {
                let n = n.clone();
                tokio::spawn(async move { n.flush_usage().await })
            })
            .collect();
        for f in flushes {
            f.await
                .unwrap_or_else(|e| panic!("round {round}: {e}"))
                .unwrap_or_else(|e| panic!("round {round}: flush: {e}"));
        }
    }
    converge(&nodes, &log).await;
    assert_projections_match(&nodes, &log);
    let today = nodes[0].now().day();
    let (from, to) = (today.minus(1), today.next());
    for (i, n) in nodes.iter().enumerate() {
        let (state, usage) = n.projections();
        for (id, _) in &keys {
            let expected = made.get(id).copied().unwrap_or(0);
            let k = state
                .key(&tenant("acme"), *id)
                .unwrap_or_else(|| panic!("key {id}"));
            assert_eq!(k.uses.total(), expected, "node {i}: total uses of {id}");
            let rolled: u64 = usage
                .daily_key(*id, from, to)
                .iter()
                .map(|r| r.counts.total())
                .sum();
            assert_eq!(rolled, expected, "node {i}: per-day rollups of {id}");
        }
        let tenant_rolled: u64 = usage
            .daily_tenant(&tenant("acme"), from, to)
            .iter()
            .map(|r| r.counts.total())
            .sum();
        assert_eq!(
            tenant_rolled,
            made.values().sum::<u64>(),
            "node {i}: the tenant's per-day rollups"
        );
    }
    for n in nodes {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

async fn removing_a_user_on_one_node_cascades_on_every_node(b: Backend) {
    let seed = seed("removing_a_user_on_one_node_cascades_on_every_node");
    let log = b.log();
    let nodes = three(&b, seed);
    let mut hers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        hers.push(create(n, "acme", "eve", &format!("eve's on {i}")).await);
    }
    let (_, kept) = create(&nodes[2], "acme", "bob", "bob's").await;
    converge(&nodes, &log).await;
    let revoked = nodes[1]
        .remove_user(Principal::operator(tenant("acme")), user("eve"))
        .await
        .unwrap_or_else(|e| panic!("remove: {e}"));
    assert_eq!(revoked.len(), hers.len());
    for (j, n) in nodes.iter().enumerate() {
        for (id, secret) in &hers {
            eventually(&format!("node {j} refuses {id}"), || {
                n.verify(secret, None).outcome == VerifyOutcome::Revoked
            })
            .await;
        }
        assert_eq!(n.verify(&kept, None).outcome, VerifyOutcome::Valid);
    }
    // A removed user cannot get a key on any node.
    let refused = nodes[0]
        .create_key(
            Principal::operator(tenant("acme")),
            NewKey {
                owner: Some(user("eve")),
                name: "again".into(),
                ..NewKey::default()
            },
        )
        .await;
    assert!(matches!(refused, Err(Error::Command(_))), "{refused:?}");
    converge(&nodes, &log).await;
    assert_projections_match(&nodes, &log);
    for n in nodes {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

/// With the wait, the revoke answers only when every live node refuses the
/// key: checked right after the answer, with no polling.
async fn revoke_everywhere_answers_once_every_live_node_refuses(b: Backend) {
    let seed = seed("revoke_everywhere_answers_once_every_live_node_refuses");
    let [a, b, c] = three(&b, seed);
    for round in 0..20 {
        let (id, secret) = create(&a, "acme", "ada", &format!("k{round}")).await;
        for n in [&b, &c] {
            eventually("the key reaches every node", || {
                n.verify(&secret, None).outcome == VerifyOutcome::Valid
            })
            .await;
        }
        let revoker = if round % 2 == 0 { &b } else { &c };
        revoker
            .revoke_key_everywhere(
                Principal::operator(tenant("acme")),
                id,
                RevokeReason::Manual,
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("revoke: {e}"));
        for (j, n) in [&a, &b, &c].into_iter().enumerate() {
            assert_eq!(
                n.verify(&secret, None).outcome,
                VerifyOutcome::Revoked,
                "round {round}: node {j} still accepts the key after the answer"
            );
        }
    }
    for n in [a, b, c] {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

/// A node that reported once and then stopped applying holds the wait up
/// until the timeout (a clear error, the key revoked all the same); once
/// it has not reported for `live_within`, it is counted as gone.
async fn revoke_everywhere_names_a_lagging_node_then_ages_it_out(b: Backend) {
    let seed = seed("revoke_everywhere_names_a_lagging_node_then_ages_it_out");
    let log = b.log();
    let a = node(&b, "a", Some(follow("a")), seed);
    let (id, secret) = create(&a, "acme", "ada", "k").await;
    log.report_applied("hung", 0)
        .unwrap_or_else(|e| panic!("report: {e}"));
    let waited = a
        .revoke_key_everywhere(
            Principal::operator(tenant("acme")),
            id,
            RevokeReason::Manual,
            Duration::from_millis(200),
        )
        .await;
    match waited {
        Err(e @ Error::NotConfirmed { waited_ms, .. }) => {
            // The caller is a tenant: the message names no log position
            // (the revoke was at position 2, the hung node at 0).
            let text = e.to_string();
            assert!(
                text.contains("a live node has not applied it yet"),
                "{text}"
            );
            assert!(!text.contains("position"), "{text}");
            let rest = text.replace(&format!("within {waited_ms} ms"), "");
            assert!(!rest.chars().any(|c| c.is_ascii_digit()), "{text}");
        }
        other => panic!("expected NotConfirmed, got {other:?}"),
    }
    assert_eq!(a.verify(&secret, None).outcome, VerifyOutcome::Revoked);
    // `live_within` is 2 s: after it the hung node no longer counts.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    a.wait_enforced_everywhere(a.head(), Duration::from_millis(500))
        .await
        .unwrap_or_else(|e| panic!("after the hung node aged out: {e}"));
    a.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// A shared log whose connection drops around a `COMMIT`: the next append
/// either reaches the log or not, and in both cases reports
/// `StoreError::Unavailable`, as PostgreSQL does when it cannot tell. And
/// whose wake-ups never come while `deaf` is set: a node's follower then
/// reads only after its whole `wait_max`, as when notifications are lost.
struct DroppedCommit {
    inner: MemoryLog,
    /// 0: normal; 1: the next append is written, then reported failed;
    /// 2: the next append is not written, and reported failed.
    next: std::sync::atomic::AtomicU8,
    /// Made deaf: wake-ups come only from `deaf` being cleared.
    lossy: bool,
    deaf: std::sync::atomic::AtomicBool,
}

impl DroppedCommit {
    fn new(deaf: bool) -> Self {
        DroppedCommit {
            inner: MemoryLog::new(),
            next: std::sync::atomic::AtomicU8::new(0),
            lossy: deaf,
            deaf: std::sync::atomic::AtomicBool::new(deaf),
        }
    }
}

impl EventLog for DroppedCommit {
    fn append(
        &self,
        batches: Vec<keyledger_store::TenantAppend>,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        let unknown = || {
            keyledger_store::StoreError::Unavailable(
                "the connection was lost with the COMMIT sent".into(),
            )
        };
        match self.next.swap(0, std::sync::atomic::Ordering::SeqCst) {
            1 => self.inner.append(batches).and_then(|_| Err(unknown())),
            2 => Err(unknown()),
            _ => self.inner.append(batches),
        }
    }

    fn head(&self) -> Result<u64, keyledger_store::StoreError> {
        self.inner.head()
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        self.inner.read_after(after, limit)
    }

    fn read_tenant(
        &self,
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        self.inner.read_tenant(tenant, after_seq, limit)
    }

    fn read_tenant_raw(
        &self,
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::RawRecord>, keyledger_store::StoreError> {
        self.inner.read_tenant_raw(tenant, after_seq, limit)
    }

    fn tenant_head(
        &self,
        tenant: &keyledger_core::TenantId,
    ) -> Result<Option<(u64, keyledger_store::Hash)>, keyledger_store::StoreError> {
        self.inner.tenant_head(tenant)
    }

    fn tenants(&self) -> Result<Vec<keyledger_core::TenantId>, keyledger_store::StoreError> {
        self.inner.tenants()
    }

    fn wait_for_append(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<(), keyledger_store::StoreError> {
        if !self.lossy {
            return self.inner.wait_for_append(after, timeout);
        }
        let until = Instant::now() + timeout;
        while self.deaf.load(std::sync::atomic::Ordering::SeqCst) {
            if Instant::now() >= until {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Hearing again (the test is ending): spurious wake-ups from now
        // on, so that the follower sees its stop at once.
        Ok(())
    }
}

/// Usage whose append's outcome is unknown is neither counted twice (it
/// was written: the writer finds it in the log and says so) nor lost (it
/// was not: the flusher gets an error, keeps the counts and writes them
/// with its next flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_whose_commit_is_in_doubt_is_counted_exactly_once() {
    let seed = seed("usage_whose_commit_is_in_doubt_is_counted_exactly_once");
    let log = Arc::new(DroppedCommit::new(false));
    let shared: Arc<dyn EventLog> = log.clone();
    let config = Config {
        usage_window: UsageWindow::Manual,
        follow: Some(follow("a")),
        ..Config::default()
    };
    let a = Keyledger::open_with(
        shared.clone(),
        config,
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::new(seed)),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    let (id, secret) = create(&a, "acme", "ada", "counted").await;
    let uses = |n: &Keyledger| {
        n.projections()
            .0
            .key(&tenant("acme"), id)
            .map_or(0, |k| k.uses.total())
    };

    // Written, reported failed: found in the log, answered as written.
    for _ in 0..5 {
        assert_eq!(a.verify(&secret, None).outcome, VerifyOutcome::Valid);
    }
    log.next.store(1, std::sync::atomic::Ordering::SeqCst);
    let flushed = a
        .flush_usage()
        .await
        .unwrap_or_else(|e| panic!("flush: {e}"));
    assert_eq!(flushed, 1, "the in-doubt usage was found written");
    assert_eq!(a.flush_usage().await.unwrap_or_else(|e| panic!("{e}")), 0);
    assert_eq!(uses(&a), 5);

    // Not written, reported failed: an error, the counts kept and written once.
    for _ in 0..3 {
        assert_eq!(a.verify(&secret, None).outcome, VerifyOutcome::Valid);
    }
    log.next.store(2, std::sync::atomic::Ordering::SeqCst);
    let failed = a.flush_usage().await;
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
    assert_eq!(uses(&a), 5);
    assert_eq!(a.flush_usage().await.unwrap_or_else(|e| panic!("{e}")), 1);
    assert_eq!(uses(&a), 8);

    let (state, _) = fold(shared.as_ref());
    assert_eq!(
        state.key(&tenant("acme"), id).map(|k| k.uses.total()),
        Some(8),
        "the log holds every use exactly once"
    );
    a.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// A node whose follower hears nothing (its `wait_max` is a minute) still
/// finds a key created on another node from the moment the create
/// returned, and reaches a position another node gave out; a flood of
/// unknown keys shares one read of the head per `miss_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_reads_the_head_so_a_lagging_node_reads_its_writes() {
    let seed = seed("a_miss_reads_the_head_so_a_lagging_node_reads_its_writes");
    let log = Arc::new(DroppedCommit::new(true));
    let open = |name: &str, follow: Follow| {
        let config = Config {
            usage_window: UsageWindow::Manual,
            follow: Some(follow),
            ..Config::default()
        };
        Keyledger::open_with(
            log.clone(),
            config,
            Arc::new(SystemClock),
            Arc::new(SeededEntropy::new(seed ^ name.len() as u64)),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
    };
    let interval = Duration::from_millis(20);
    let a = open("a", follow("a"));
    let b = open(
        "bb",
        Follow {
            wait_max: Duration::from_secs(60),
            miss_interval: interval,
            ..follow("bb")
        },
    );
    let queries = || {
        b.metrics()
            .miss_head_queries
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let acme = tenant("acme");
    for i in 0..20 {
        let (id, secret) = create(&a, "acme", "ada", &format!("k{i}")).await;
        // The follower has not read it (that is what is being tested; later
        // keys may be read by b's writer still reading for the last miss) …
        if i == 0 {
            assert_eq!(b.verify(&secret, None).outcome, VerifyOutcome::NotFound);
        }
        // … yet the key is valid on b from the moment the create returned.
        let v = b.verify_current(&secret, None).await;
        assert_eq!(v.outcome, VerifyOutcome::Valid, "key {i}");
        assert_eq!(v.key.map(|k| k.key_id), Some(id));
    }
    let after_keys = queries();
    assert!(
        (1..=20).contains(&after_keys),
        "one head read per miss at most: {after_keys}"
    );

    // A position a's write gave out is reached on b; one past the
    // tenant's last event is refused as never given out. First, b's last
    // miss read (a head read may follow a miss by `miss_interval`, and the
    // catch-up it starts runs on b's writer) is let finish, so the next
    // event is one b has no reason to read until asked (its follower
    // sleeps a minute): otherwise that read may take it in first.
    tokio::time::sleep(interval * 25).await;
    let (_, _) = create(&a, "acme", "ada", "one more").await;
    let position = a.tenant_position(&acme);
    assert_eq!(position, 21);
    assert!(b.tenant_position(&acme) < position);
    assert_eq!(
        b.wait_tenant_position(&acme, position, Duration::from_secs(5))
            .await,
        keyledger_runtime::PositionWait::Reached
    );
    assert_eq!(b.tenant_position(&acme), position);
    assert_eq!(
        b.wait_tenant_position(&acme, position + 5, Duration::from_secs(5))
            .await,
        keyledger_runtime::PositionWait::Beyond { last: position }
    );

    // A flood of unknown keys: many misses, at most one head read per
    // interval (plus the one running when the flood began).
    let unknown: Vec<String> = {
        let mut rng = Rng(seed);
        let other = node(&Backend::memory(), "x", None, rng.next());
        let mut out = Vec::new();
        for i in 0..64 {
            out.push(create(&other, "zzz", "ada", &format!("u{i}")).await.1);
        }
        other.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        out
    };
    let before = queries();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let b = b.clone();
        let unknown = unknown.clone();
        tasks.push(tokio::spawn(async move {
            let mut misses = 0u64;
            for i in 0..40 {
                let secret = &unknown[(t * 40 + i) % unknown.len()];
                let v = b.verify_current(secret, None).await;
                assert_eq!(v.outcome, VerifyOutcome::NotFound);
                misses += 1;
            }
            misses
        }));
    }
    let mut misses = 0;
    for t in tasks {
        misses += t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let elapsed = started.elapsed();
    let flood = queries() - before;
    let intervals = (elapsed.as_nanos() / interval.as_nanos()) as u64;
    assert_eq!(misses, 640);
    assert!(
        flood >= 1 && flood <= intervals + 1,
        "{flood} head reads for {misses} misses in {elapsed:?} ({intervals} intervals)"
    );
    assert!(flood < misses / 4, "{flood} head reads for {misses} misses");

    log.deaf.store(false, std::sync::atomic::Ordering::SeqCst);
    for n in [&a, &b] {
        n.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// On a single node nothing changes: a miss reads no head, and a
/// position past the tenant's trail is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_answers_misses_and_positions_at_once() {
    let seed = seed("a_single_node_answers_misses_and_positions_at_once");
    let b = Backend::memory();
    let n = node(&b, "solo", None, seed);
    let other = node(&Backend::memory(), "other", None, seed ^ 1);
    let (_, unknown) = create(&other, "acme", "ada", "elsewhere").await;
    let (_, secret) = create(&n, "acme", "ada", "here").await;
    assert_eq!(
        n.verify_current(&secret, None).await.outcome,
        VerifyOutcome::Valid
    );
    assert_eq!(
        n.verify_current(&unknown, None).await.outcome,
        VerifyOutcome::NotFound
    );
    let acme = tenant("acme");
    assert_eq!(n.tenant_position(&acme), 1);
    assert_eq!(
        n.wait_tenant_position(&acme, 1, Duration::from_secs(5))
            .await,
        keyledger_runtime::PositionWait::Reached
    );
    assert_eq!(
        n.wait_tenant_position(&acme, 2, Duration::from_secs(5))
            .await,
        keyledger_runtime::PositionWait::Beyond { last: 1 }
    );
    assert_eq!(
        n.metrics()
            .miss_head_queries
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    for l in [&n, &other] {
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A leak report on a node that has not yet read the key's create (its
/// follower hears no wake-up) finds the key all the same, as a
/// verification's miss does, revokes it, and the other node refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_reported_on_a_lagging_node_revokes_a_key_it_had_not_read() {
    let seed = seed("a_leak_reported_on_a_lagging_node_revokes_a_key_it_had_not_read");
    let log = Arc::new(DroppedCommit::new(true));
    let open = |name: &str, follow: Follow| {
        let config = Config {
            usage_window: UsageWindow::Manual,
            follow: Some(follow),
            ..Config::default()
        };
        Keyledger::open_with(
            log.clone(),
            config,
            Arc::new(SystemClock),
            Arc::new(SeededEntropy::new(seed ^ name.len() as u64)),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
    };
    let a = open("a", follow("a"));
    let b = open(
        "bb",
        Follow {
            wait_max: Duration::from_secs(60),
            ..follow("bb")
        },
    );
    let (_, secret) = create(&a, "acme", "ada", "pasted").await;
    assert_eq!(b.verify(&secret, None).outcome, VerifyOutcome::NotFound);
    let report = b
        .report_leaked(
            Reporter::Operator,
            vec![ReportedSecret {
                secret: secret.clone(),
                source: Some("commit".into()),
                url: None,
            }],
        )
        .await
        .unwrap_or_else(|e| panic!("report: {e}"));
    assert_eq!((report.reported, report.found), (1, 1));
    assert_eq!(b.verify(&secret, None).outcome, VerifyOutcome::Revoked);
    eventually("the node that made it refuses it", || {
        a.verify(&secret, None).outcome == VerifyOutcome::Revoked
    })
    .await;
    log.deaf.store(false, std::sync::atomic::Ordering::SeqCst);
    for n in [a, b] {
        n.shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
}

// ---------------------------------------------------------------------
// Starting from the snapshots shared in PostgreSQL (issue 13).

mod a_new_node_starts_from_the_shared_snapshot_and_the_tail {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_new_node_starts_from_the_shared_snapshot_and_the_tail().await;
    }
}

mod a_damaged_shared_snapshot_is_refused_and_the_log_replayed {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_damaged_shared_snapshot_is_refused_and_the_log_replayed().await;
    }
}

/// A node with its snapshots in `dir`, following the others.
fn node_in(b: &Backend, name: &str, dir: &std::path::Path, seed: u64) -> Keyledger {
    let config = Config {
        usage_window: UsageWindow::Manual,
        follow: Some(follow(name)),
        snapshots: Some(SnapshotConfig {
            every: Duration::from_secs(3600),
            ..SnapshotConfig::in_dir(dir)
        }),
        ..Config::default()
    };
    Keyledger::open_with(
        b.log(),
        config,
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::new(seed ^ u64::from(name.as_bytes()[0]))),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// `n` keys made at once on `node` in `t` (batched by its writer), with
/// their secrets.
async fn create_many(node: &Keyledger, t: &'static str, n: usize) -> Vec<(KeyId, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { create(&node, t, "ada", &format!("{t} {i}")).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.unwrap_or_else(|e| panic!("create: {e}")));
    }
    out
}

/// Uses of some of `keys` on `node`, written to the log.
async fn use_keys(node: &Keyledger, keys: &[(KeyId, String)]) {
    for (i, (_, secret)) in keys.iter().enumerate() {
        for _ in 0..=(i % 3) {
            assert_eq!(node.verify(secret, None).outcome, VerifyOutcome::Valid);
        }
    }
    node.flush_usage()
        .await
        .unwrap_or_else(|e| panic!("flush usage: {e}"));
}

/// `starting` answers the same proofs and tiles as `other`, which replayed
/// the whole log itself.
fn assert_same_proofs(starting: &Keyledger, other: &Keyledger, events: &[(&str, u64)]) {
    for (t, n) in events {
        for seq in [1, 2, n / 2, n - 1, *n] {
            let t = tenant(t);
            let (mine, theirs) = (
                starting.inclusion_proof(&t, seq, 0),
                other.inclusion_proof(&t, seq, 0),
            );
            assert!(mine.is_ok(), "{t} event {seq}: {mine:?}");
            assert_eq!(mine.ok(), theirs.ok(), "{t} event {seq}: the same proof");
        }
    }
    for path in ["tile/0/000", "tile/entries/000"] {
        let p = keyledger_audit::tiles::TilePath::parse(path)
            .unwrap_or_else(|| panic!("a tile path: {path}"));
        let mine = starting
            .global_tile(&p)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(mine.is_some(), "{path}: a complete tile");
        assert_eq!(
            mine,
            other
                .global_tile(&p)
                .unwrap_or_else(|e| panic!("{path}: {e}")),
            "{path}: the same bytes"
        );
    }
}

/// Runs one statement on the test database.
async fn sql(url: &str, statement: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    drop(client);
    let _ = connection.await;
}

/// A node started on an empty data directory after hundreds of events
/// (complete Merkle tiles among them) starts from the snapshot another
/// node shared in PostgreSQL: it replays only the events after it,
/// rebuilds the tiles from the chain hashes, fills its per-key usage rows
/// from the analysts' projection (here ahead of the snapshot, so replay
/// must not count those uses again), and answers the same state, proofs
/// and usage as a node that replayed everything.
async fn a_new_node_starts_from_the_shared_snapshot_and_the_tail() {
    let seed = seed("a_new_node_starts_from_the_shared_snapshot_and_the_tail");
    let b = Backend::postgres();
    let log = b.log();
    let dir_a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = node_in(&b, "a", dir_a.path(), seed);
    let other = node(&b, "b", Some(follow("b")), seed);
    let acme = create_many(&a, "acme", 200).await;
    let globex = create_many(&a, "globex", 90).await;
    use_keys(&a, &acme[..40]).await;
    a.revoke_key(
        Principal::operator(tenant("acme")),
        acme[0].0,
        RevokeReason::Compromised,
    )
    .await
    .unwrap_or_else(|e| panic!("revoke: {e}"));
    converge(&[a.clone(), other.clone()], &log).await;
    a.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let at = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert!(at > 256, "complete tiles: {at} events");
    assert_eq!(
        log.shared_snapshots().ok(),
        Some(vec![at]),
        "a published its snapshot at its stop"
    );
    // The tail: other nodes' writes and uses after the snapshot, the
    // analysts' projection moved past them, then more.
    let more = create_many(&other, "globex", 5).await;
    use_keys(&other, &acme[1..30]).await;
    use_keys(&other, &more).await;
    let projected = match &b {
        Backend::Postgres(db) => PgLog::connect(db.url())
            .and_then(|l| l.project_all())
            .unwrap_or_else(|e| panic!("project: {e}")),
        Backend::Memory(_) => unreachable!(),
    };
    assert!(projected > at, "the projection is ahead of the snapshot");
    use_keys(&other, &globex[..10]).await;
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert!(head > projected);

    let dir_c = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let c = node_in(&b, "c", dir_c.path(), seed);
    let started = &c.metrics().snapshots;
    assert_eq!(
        started.start_snapshot_position.load(Ordering::Relaxed),
        at,
        "c starts from the shared snapshot"
    );
    assert_eq!(
        started.start_replayed_events.load(Ordering::Relaxed),
        head - at,
        "and replays only the tail"
    );
    assert_eq!(
        started.start_usage_position.load(Ordering::Relaxed),
        projected,
        "its usage rows come from the shared projection"
    );
    assert_eq!(started.refused.load(Ordering::Relaxed), 0);
    converge(&[c.clone(), other.clone()], &log).await;
    assert_projections_match(&[c.clone(), other.clone()], &log);
    assert_same_proofs(&c, &other, &[("acme", 201), ("globex", 95)]);
    assert_eq!(c.verify(&acme[0].1, None).outcome, VerifyOutcome::Revoked);
    assert_eq!(c.verify(&more[4].1, None).outcome, VerifyOutcome::Valid);
    // It follows the others as any node does.
    let (_, later) = create(&other, "acme", "bob", "later").await;
    eventually("c follows b", || {
        c.verify(&later, None).outcome == VerifyOutcome::Valid
    })
    .await;
    // Restarted, it starts from its own snapshot (written at its stop).
    c.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let again = log.head().unwrap_or_else(|e| panic!("{e}"));
    let c = node_in(&b, "c", dir_c.path(), seed);
    assert_eq!(
        c.metrics()
            .snapshots
            .start_snapshot_position
            .load(Ordering::Relaxed),
        again
    );
    assert_projections_match(std::slice::from_ref(&c), &log);
    for n in [c, other] {
        n.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A shared snapshot whose bytes were changed (and its checksum in the
/// table made to match) is refused with a warning, never trusted: the new
/// node replays the whole log and answers as the others do.
async fn a_damaged_shared_snapshot_is_refused_and_the_log_replayed() {
    let seed = seed("a_damaged_shared_snapshot_is_refused_and_the_log_replayed");
    let b = Backend::postgres();
    let log = b.log();
    let dir_a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = node_in(&b, "a", dir_a.path(), seed);
    let acme = create_many(&a, "acme", 280).await;
    use_keys(&a, &acme[..20]).await;
    a.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.shared_snapshots().ok(), Some(vec![head]));
    let Backend::Postgres(db) = &b else {
        unreachable!()
    };
    sql(
        db.url(),
        "UPDATE keyledger.snapshot_chunks \
             SET bytes = set_byte(bytes, 200, 255 - get_byte(bytes, 200)); \
         UPDATE keyledger.snapshots s SET checksum = sha256((SELECT string_agg(c.bytes, ''::bytea \
             ORDER BY c.chunk) FROM keyledger.snapshot_chunks c WHERE c.position = s.position))",
    )
    .await;
    let dir_c = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let c = node_in(&b, "c", dir_c.path(), seed);
    let started = &c.metrics().snapshots;
    assert_eq!(started.refused.load(Ordering::Relaxed), 1, "refused");
    assert_eq!(started.start_snapshot_position.load(Ordering::Relaxed), 0);
    assert_eq!(
        started.start_replayed_events.load(Ordering::Relaxed),
        head,
        "the whole log replayed"
    );
    assert_eq!(started.start_usage_position.load(Ordering::Relaxed), 0);
    let a = node_in(&b, "a", dir_a.path(), seed);
    assert_projections_match(&[c.clone(), a.clone()], &log);
    assert_same_proofs(&c, &a, &[("acme", head)]);
    for n in [c, a] {
        n.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
