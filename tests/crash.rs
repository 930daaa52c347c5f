//! The crash harness: the real `keyledger serve`, under concurrent load
//! over HTTP (creates, revokes, user removals, verifications), killed with
//! SIGKILL at random moments and restarted, many times over one data
//! directory. After every kill, with the data directory as the crash left
//! it:
//!
//! * `keyledger audit verify` passes (and every tenth cycle an evidence
//!   bundle, `keyledger audit bundle`, verifies offline with every
//!   checkpoint signed before the crash), and the tenants' trail exports
//!   (`keyledger audit export --include-usage`) hold every event of the log
//!   (as many as `keyledger replay` counts), each tenant's numbered 1, 2, 3, …;
//! * every acknowledged (2xx) create, revoke and user removal is in the
//!   log, as answered (same key id, owner, name; every key the removal
//!   answered revoked with reason `user_removed`);
//! * nothing is in the log that was not requested: every created name, every
//!   manual revocation, every removed user was asked for, and a request whose
//!   answer was lost in the crash either landed before the crash or never
//!   does (it does not turn up in a later cycle);
//! * a removed user owns no active key;
//! * usage counts never exceed the verifications (and authentications) made
//!   with each key;
//! * after the restart, the server's projections (`GET /v1/keys`: status,
//!   owner, name, use counts) equal a fold of the log done by this test.
//!
//! Some cycles end otherwise: a *quiet kill* stops the load, lets the
//! usage flusher finish, then kills: no use is lost (a crash loses only
//! the counts of its last window). A *graceful* cycle stops the server with
//! SIGTERM: every use is written, and the projections read before the stop
//! equal those after the restart (a fresh replay). Every seventh cycle the
//! server is also killed while it starts (during recovery).
//!
//! Seeded: the seed is printed; `KEYLEDGER_CRASH_SEED=<n>` replays a run's
//! choices (timing still varies), `KEYLEDGER_CRASH_CYCLES` (default 50)
//! sets the number of SIGKILL cycles under load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::live::{Live, Rng, TOKEN, env_u64, request, seed};
use crate::util::Data;

const TENANTS: [&str; 2] = ["acme", "globex"];

/// The usage window of the server under test, in milliseconds.
const WINDOW_MS: u64 = 50;

/// Concurrent clients.
const WORKERS: usize = 4;

/// What became of a request, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// A 2xx answer arrived: it must be in the log, now and forever.
    Acked,
    /// Refused (4xx): it must never be in the log.
    Refused,
    /// The answer was lost in a crash: either in the log after the
    /// restart (then kept for good) or never.
    Lost,
}

#[derive(Debug)]
struct Create {
    tenant: usize,
    owner: String,
    fate: Fate,
    id: Option<String>,
}

#[derive(Debug)]
struct Key {
    tenant: usize,
    secret: Option<String>,
    /// An acknowledged revocation or removal covers it: it must verify as
    /// revoked from then on.
    dead: bool,
}

#[derive(Debug, Default)]
struct Revokes {
    /// A request is out whose answer was lost (resolved at the next check).
    open: bool,
    acked: bool,
}

#[derive(Debug)]
struct Removal {
    fate: Fate,
    revoked: Vec<String>,
}

#[derive(Debug, Default)]
struct Model {
    /// Per tenant: the key the harness reads with (never revoked).
    readers: Vec<(String, String)>,
    /// By requested name (unique).
    creates: HashMap<String, Create>,
    keys: HashMap<String, Key>,
    /// Per tenant: ids of keys with a known secret.
    verifiable: Vec<Vec<String>>,
    /// Per tenant: ids of every known key.
    ids: Vec<Vec<String>>,
    revokes: HashMap<String, Revokes>,
    /// Manual revocations seen in the log at earlier checks.
    revoked_seen: HashSet<String>,
    /// (tenant, user) → the removal request.
    removals: HashMap<(usize, String), Removal>,
    /// Per tenant: users a worker may pick (never asked to be removed).
    users: Vec<Vec<String>>,
    next_user: u64,
    next_name: u64,
    /// Per tenant: trail exports made by the checks.
    exports: Vec<u64>,
    /// Verifications and authentications sent, per key id (counted
    /// before sending).
    presented: HashMap<String, u64>,
}

impl Model {
    fn new() -> Self {
        let mut m = Model {
            verifiable: vec![Vec::new(); TENANTS.len()],
            ids: vec![Vec::new(); TENANTS.len()],
            users: vec![Vec::new(); TENANTS.len()],
            exports: vec![0; TENANTS.len()],
            ..Model::default()
        };
        for t in 0..TENANTS.len() {
            for _ in 0..4 {
                m.add_user(t);
            }
        }
        m
    }

    fn add_user(&mut self, t: usize) {
        self.next_user += 1;
        let u = format!("u{}", self.next_user);
        self.users[t].push(u);
    }

    fn present(&mut self, id: &str) {
        *self.presented.entry(id.to_owned()).or_default() += 1;
    }
}

struct Shared {
    model: Mutex<Model>,
    stop: AtomicBool,
    seed: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the load did, for the report.
#[derive(Default, Debug)]
struct Load {
    requests: u64,
    acked: u64,
    lost: u64,
    refused: u64,
}

fn operator() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// One client: random operations until told to stop or the server dies.
fn worker(addr: &str, shared: &Shared, mut rng: Rng) -> Load {
    let mut load = Load::default();
    let (auth_name, auth_value) = operator();
    while !shared.stop.load(Ordering::Relaxed) {
        let t = rng.below(TENANTS.len() as u64) as usize;
        let tenant = TENANTS[t];
        let roll = rng.below(100);
        load.requests += 1;
        let outcome: Result<Fate, String> = if roll < 30 {
            // Create a key for a user of the pool.
            let (owner, name) = {
                let mut m = shared.lock();
                let pool = &m.users[t];
                let owner = pool[rng.below(pool.len() as u64) as usize].clone();
                m.next_name += 1;
                let name = format!("k{}", m.next_name);
                m.creates.insert(
                    name.clone(),
                    Create {
                        tenant: t,
                        owner: owner.clone(),
                        fate: Fate::Lost,
                        id: None,
                    },
                );
                (owner, name)
            };
            let r = request(
                addr,
                "POST",
                &format!("/v1/admin/tenants/{tenant}/keys"),
                &[(auth_name, &auth_value)],
                Some(&json!({"user": owner, "name": name})),
            );
            match r {
                Err(e) => Err(e),
                Ok(r) if r.status == 201 => {
                    let v = r.json();
                    let id = v["id"].as_str().expect("an id").to_owned();
                    let secret = v["key"].as_str().expect("a key").to_owned();
                    assert_eq!(v["name"], name.as_str());
                    assert_eq!(v["created_by"], owner.as_str());
                    let mut m = shared.lock();
                    let c = m.creates.get_mut(&name).expect("recorded");
                    c.fate = Fate::Acked;
                    c.id = Some(id.clone());
                    m.keys.insert(
                        id.clone(),
                        Key {
                            tenant: t,
                            secret: Some(secret),
                            dead: false,
                        },
                    );
                    m.ids[t].push(id.clone());
                    m.verifiable[t].push(id);
                    Ok(Fate::Acked)
                }
                // The user was removed meanwhile.
                Ok(r) if r.status == 409 && r.code() == "user_removed" => {
                    shared.lock().creates.get_mut(&name).expect("recorded").fate = Fate::Refused;
                    Ok(Fate::Refused)
                }
                Ok(r) => panic!(
                    "seed {}: create answered {} {}",
                    shared.seed,
                    r.status,
                    r.text()
                ),
            }
        } else if roll < 45 {
            // Revoke a known key, as the tenant's reader key.
            let picked = {
                let mut m = shared.lock();
                let ids = &m.ids[t];
                if ids.is_empty() {
                    None
                } else {
                    let id = ids[rng.below(ids.len() as u64) as usize].clone();
                    let (reader_id, reader) = m.readers[t].clone();
                    m.present(&reader_id);
                    m.revokes.entry(id.clone()).or_default().open = true;
                    Some((id, reader))
                }
            };
            let Some((id, reader)) = picked else {
                continue;
            };
            let r = request(
                addr,
                "POST",
                &format!("/v1/keys/{id}/revoke"),
                &[("Authorization", &format!("Bearer {reader}"))],
                None,
            );
            match r {
                Err(e) => Err(e),
                Ok(r) if r.status == 200 => {
                    let v = r.json();
                    assert_eq!(v["status"], "revoked", "seed {}", shared.seed);
                    assert_eq!(v["revoke_reason"], "manual", "seed {}", shared.seed);
                    let mut m = shared.lock();
                    m.revokes.entry(id.clone()).or_default().acked = true;
                    if let Some(k) = m.keys.get_mut(&id) {
                        k.dead = true;
                    }
                    Ok(Fate::Acked)
                }
                Ok(r) if r.status == 409 && r.code() == "already_revoked" => Ok(Fate::Refused),
                Ok(r) => panic!(
                    "seed {}: revoke answered {} {}",
                    shared.seed,
                    r.status,
                    r.text()
                ),
            }
        } else if roll < 50 {
            // Remove a user of the pool.
            let user = {
                let mut m = shared.lock();
                let pool = &mut m.users[t];
                let user = pool.remove(rng.below(pool.len() as u64) as usize);
                if m.users[t].len() < 3 {
                    m.add_user(t);
                }
                m.removals.insert(
                    (t, user.clone()),
                    Removal {
                        fate: Fate::Lost,
                        revoked: Vec::new(),
                    },
                );
                user
            };
            let r = request(
                addr,
                "DELETE",
                &format!("/v1/admin/tenants/{tenant}/users/{user}"),
                &[(auth_name, &auth_value)],
                None,
            );
            match r {
                Err(e) => Err(e),
                Ok(r) if r.status == 200 => {
                    let v = r.json();
                    let revoked: Vec<String> = v["revoked"]
                        .as_array()
                        .expect("revoked")
                        .iter()
                        .map(|i| i.as_str().expect("an id").to_owned())
                        .collect();
                    let mut m = shared.lock();
                    for id in &revoked {
                        if let Some(k) = m.keys.get_mut(id) {
                            k.dead = true;
                        }
                    }
                    let rem = m.removals.get_mut(&(t, user)).expect("recorded");
                    rem.fate = Fate::Acked;
                    rem.revoked = revoked;
                    Ok(Fate::Acked)
                }
                Ok(r) => panic!(
                    "seed {}: removal answered {} {}",
                    shared.seed,
                    r.status,
                    r.text()
                ),
            }
        } else {
            // Verify a known key (any status), or now and then one nobody holds.
            let picked = {
                let mut m = shared.lock();
                let ids = &m.verifiable[t];
                if ids.is_empty() || rng.below(20) == 0 {
                    None
                } else {
                    let id = ids[rng.below(ids.len() as u64) as usize].clone();
                    m.present(&id);
                    let k = &m.keys[&id];
                    Some((id, k.secret.clone().expect("verifiable"), k.dead))
                }
            };
            let (id, secret, dead) = match picked {
                Some(p) => p,
                None => (String::new(), crate::live::unknown_key(rng.next()), false),
            };
            match request(
                addr,
                "POST",
                "/v1/verify",
                &[],
                Some(&json!({ "key": secret })),
            ) {
                Err(e) => Err(e),
                Ok(r) if r.status == 200 => {
                    let outcome = r.json()["outcome"].as_str().unwrap_or("").to_owned();
                    if id.is_empty() {
                        assert_eq!(outcome, "not_found", "seed {}", shared.seed);
                    } else if dead {
                        assert_eq!(
                            outcome, "revoked",
                            "seed {}: {id} was acknowledged revoked, yet verifies {outcome}",
                            shared.seed
                        );
                    } else {
                        assert!(
                            outcome == "valid" || outcome == "revoked",
                            "seed {}: {id}: {outcome}",
                            shared.seed
                        );
                    }
                    Ok(Fate::Acked)
                }
                Ok(r) => panic!(
                    "seed {}: verify answered {} {}",
                    shared.seed,
                    r.status,
                    r.text()
                ),
            }
        };
        match outcome {
            Ok(Fate::Acked) => load.acked += 1,
            Ok(_) => load.refused += 1,
            Err(_) => {
                // The server is gone: this answer is lost, and so would be
                // the next request.
                load.lost += 1;
                break;
            }
        }
    }
    load
}

/// A key's state as folded from the log by this test.
#[derive(Debug, Clone, PartialEq)]
struct Folded {
    owner: String,
    name: String,
    /// (reason, user of the cascade)
    revoked: Option<(String, Option<String>)>,
    uses: u64,
}

/// The log as this test reads it: per tenant, keys and removed users.
#[derive(Debug, Default)]
struct Fold {
    keys: Vec<BTreeMap<String, Folded>>,
    removed: Vec<HashSet<String>>,
    events: u64,
}

/// Runs the binary on the (stopped) server's data directory.
fn cli(data: &Data, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(data.path())
        .args(args)
        .env("KEYLEDGER_LOG", "warn")
        .env_remove("KEYLEDGER_TENANT")
        .output()
        .expect("the binary runs")
}

#[derive(Default, Debug)]
struct Checked {
    acks: u64,
}

/// The checks after a crash (or a stop), on the data directory alone.
/// `exact`: every use answered since the previous check must be written.
/// `evidence`: also export and verify an evidence bundle.
fn check(
    data: &Data,
    shared: &Shared,
    what: &str,
    exact: Option<&HashMap<String, u64>>,
    previous: &Fold,
    evidence: bool,
) -> (Fold, Checked) {
    let seed = shared.seed;
    macro_rules! fail {
        ($($arg:tt)*) => { panic!("seed {seed}, {what}: {}", format!($($arg)*)) };
    }
    if evidence {
        // An evidence bundle of the whole trail verifies offline, and with
        // it every checkpoint signed before the crash: each is a prefix of
        // the recovered tree (a crash never leaves a signed checkpoint the
        // log contradicts). The export is recorded as an audit read.
        shared.lock().exports[0] += 1;
        let file = data.path().with_extension("bundle.jsonl");
        let file_arg = file.to_string_lossy().into_owned();
        let made = cli(
            data,
            &[
                "audit", "bundle", "--tenant", TENANTS[0], "--output", &file_arg,
            ],
        );
        if !made.status.success() {
            fail!("audit bundle: {}", String::from_utf8_lossy(&made.stderr));
        }
        let key = cli(data, &["--json", "audit", "public-key"]);
        let key: Value = serde_json::from_slice(&key.stdout).expect("public-key JSON");
        let key = key["public_key"].as_str().expect("a public key").to_owned();
        let checked = cli(
            data,
            &["audit", "verify-bundle", &file_arg, "--public-key", &key],
        );
        if !checked.status.success() {
            fail!(
                "the bundle does not verify: {}{}",
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        let _ = std::fs::remove_file(&file);
    }
    let verify = cli(data, &["--json", "audit", "verify"]);
    if !verify.status.success() {
        fail!(
            "audit verify failed: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let reports: Value = serde_json::from_slice(&verify.stdout).expect("audit verify JSON");
    let verified: u64 = reports
        .as_array()
        .expect("one report per tenant")
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "seed {seed}, {what}: {r}");
            r["events"].as_u64().expect("events")
        })
        .sum();

    let mut fold = Fold {
        keys: vec![BTreeMap::new(); TENANTS.len()],
        removed: vec![HashSet::new(); TENANTS.len()],
        events: 0,
    };
    let mut m = shared.lock();
    let mut manual = HashSet::new();
    for (t, tenant) in TENANTS.iter().enumerate() {
        m.exports[t] += 1;
        let out = cli(
            data,
            &["audit", "export", "--tenant", tenant, "--include-usage"],
        );
        if !out.status.success() {
            fail!("export {tenant}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut seq = 0;
        let mut audit_reads = 0;
        let mut removal_seq: HashMap<String, u64> = HashMap::new();
        for line in text.lines() {
            let e: Value = serde_json::from_str(line).expect("a JSON line");
            seq += 1;
            if e["seq"] != seq || e["position"] != seq {
                fail!(
                    "{tenant}: event {seq} has seq {} and position {}",
                    e["seq"],
                    e["position"]
                );
            }
            fold.events += 1;
            let d = &e["details"];
            let key_id = e["key_id"].as_str().unwrap_or("").to_owned();
            match e["type"].as_str().unwrap_or("") {
                "KeyCreated" => {
                    let name = d["name"].as_str().unwrap_or("").to_owned();
                    let owner = d["owner"].as_str().unwrap_or("").to_owned();
                    let is_reader = m.readers.get(t).is_some_and(|(id, _)| *id == key_id);
                    if !is_reader {
                        let Some(c) = m.creates.get(&name) else {
                            fail!("{tenant}: key {name} was never requested");
                        };
                        if c.tenant != t || c.owner != owner {
                            fail!(
                                "{tenant}: key {name} created for the wrong tenant or owner ({owner})"
                            );
                        }
                        match c.fate {
                            Fate::Refused => fail!(
                                "{tenant}: key {name} is in the log though its create was refused (or lost before a crash)"
                            ),
                            Fate::Acked if c.id.as_deref() != Some(&key_id) => {
                                fail!("{tenant}: key {name} has id {key_id}, answered {:?}", c.id)
                            }
                            _ => {}
                        }
                    }
                    fold.keys[t].insert(
                        key_id,
                        Folded {
                            owner,
                            name,
                            revoked: None,
                            uses: 0,
                        },
                    );
                }
                "KeyRevoked" => {
                    let reason = d["reason"].as_str().unwrap_or("").to_owned();
                    let cause = d["cause"]["user_removed"].as_str().map(str::to_owned);
                    let Some(k) = fold.keys[t].get_mut(&key_id) else {
                        fail!("{tenant}: {key_id} revoked before it was created");
                    };
                    if k.revoked.is_some() {
                        fail!("{tenant}: {key_id} revoked twice");
                    }
                    match (&*reason, &cause) {
                        ("manual", None) => {
                            let asked = m.revokes.get(&key_id).is_some_and(|r| r.open || r.acked)
                                || m.revoked_seen.contains(&key_id);
                            if !asked {
                                fail!(
                                    "{tenant}: {key_id} revoked though no revoke was requested (or a lost one came back)"
                                );
                            }
                            manual.insert(key_id.clone());
                        }
                        ("user_removed", Some(u)) => {
                            if !removal_seq.contains_key(u) {
                                fail!("{tenant}: {key_id} revoked for {u}, not removed before");
                            }
                            if k.owner != *u {
                                fail!("{tenant}: {key_id} of {} revoked for removing {u}", k.owner);
                            }
                        }
                        _ => fail!("{tenant}: {key_id} revoked with {reason} {cause:?}"),
                    }
                    k.revoked = Some((reason, cause));
                }
                "UserRemoved" => {
                    let u = d["user_id"].as_str().unwrap_or("").to_owned();
                    match m.removals.get(&(t, u.clone())) {
                        None => fail!("{tenant}: user {u} removed, never requested"),
                        Some(r) if r.fate == Fate::Refused => fail!(
                            "{tenant}: user {u} removed by a request lost before an earlier crash"
                        ),
                        _ => {}
                    }
                    if !fold.removed[t].insert(u.clone()) {
                        fail!("{tenant}: user {u} removed twice");
                    }
                    removal_seq.insert(u, seq);
                }
                "KeyUsed" => {
                    let Some(k) = fold.keys[t].get_mut(&key_id) else {
                        fail!("{tenant}: uses of {key_id}, which does not exist");
                    };
                    k.uses += ["valid", "revoked", "expired", "insufficient_scope"]
                        .iter()
                        .map(|f| d[*f].as_u64().unwrap_or(0))
                        .sum::<u64>();
                }
                // The exports of these checks are recorded, as the operator.
                "AuditRead" => {
                    audit_reads += 1;
                    if audit_reads > m.exports[t] {
                        fail!(
                            "{tenant}: {audit_reads} audit reads recorded, {} made",
                            m.exports[t]
                        );
                    }
                }
                other => fail!("{tenant}: unexpected event {other}"),
            }
        }
    }
    // Each export first records itself: one event more per tenant.
    let head = verified + TENANTS.len() as u64;
    // The whole log, as the operator counts it: no event outside the
    // tenants' trails.
    let replay = cli(data, &["--json", "replay"]);
    if !replay.status.success() {
        fail!("replay: {}", String::from_utf8_lossy(&replay.stderr));
    }
    let replay: Value = serde_json::from_slice(&replay.stdout).expect("replay JSON");
    if fold.events != head || replay["events"] != head {
        fail!(
            "the exports hold {} events, the chains {head}, the log {}",
            fold.events,
            replay["events"]
        );
    }

    // Every acknowledgement is in the log.
    let mut checked = Checked::default();
    for (name, c) in &m.creates {
        if c.fate == Fate::Acked {
            let id = c.id.as_deref().unwrap_or("");
            if !fold.keys[c.tenant].contains_key(id) {
                fail!("acknowledged key {name} ({id}) is missing");
            }
            checked.acks += 1;
        }
    }
    for (id, r) in &m.revokes {
        if r.acked {
            let t = m.keys[id].tenant;
            match fold.keys[t].get(id).and_then(|k| k.revoked.as_ref()) {
                Some((reason, None)) if reason == "manual" => {}
                other => fail!("acknowledged revocation of {id} is missing: {other:?}"),
            }
            checked.acks += 1;
        }
    }
    for ((t, u), r) in &m.removals {
        if r.fate != Fate::Acked {
            continue;
        }
        if !fold.removed[*t].contains(u) {
            fail!("acknowledged removal of {u} is missing");
        }
        for id in &r.revoked {
            match fold.keys[*t].get(id).and_then(|k| k.revoked.as_ref()) {
                Some((reason, Some(cause))) if reason == "user_removed" && cause == u => {}
                other => fail!("{id}, revoked by the acknowledged removal of {u}, is {other:?}"),
            }
        }
        checked.acks += 1;
    }
    // A removed user owns no active key.
    for t in 0..TENANTS.len() {
        for (id, k) in &fold.keys[t] {
            if fold.removed[t].contains(&k.owner) && k.revoked.is_none() {
                fail!("{id} of removed user {} is active", k.owner);
            }
        }
    }
    // Usage never exceeds what was presented; with `exact`, it is all there.
    for t in 0..TENANTS.len() {
        for (id, k) in &fold.keys[t] {
            let presented = m.presented.get(id).copied().unwrap_or(0);
            if k.uses > presented {
                fail!("{id}: {} uses written, {presented} presented", k.uses);
            }
            if let Some(sent_before) = exact {
                let before = previous
                    .keys
                    .get(t)
                    .and_then(|p| p.get(id))
                    .map_or(0, |p| p.uses);
                let sent = presented - sent_before.get(id).copied().unwrap_or(0);
                if k.uses - before != sent {
                    fail!(
                        "{id}: {} uses written since the last check, {sent} answered",
                        k.uses - before
                    );
                }
            }
        }
    }

    // Resolve lost answers: what landed is acknowledged from now on, what
    // did not must never appear.
    let mut landed = Vec::new();
    for (name, c) in m.creates.iter_mut() {
        if c.fate == Fate::Lost {
            let found = fold.keys[c.tenant]
                .iter()
                .find(|(_, k)| k.name == *name)
                .map(|(id, _)| id.clone());
            match found {
                Some(id) => {
                    c.fate = Fate::Acked;
                    c.id = Some(id.clone());
                    landed.push((c.tenant, id));
                }
                None => c.fate = Fate::Refused,
            }
        }
    }
    for (t, id) in landed {
        m.keys.insert(
            id.clone(),
            Key {
                tenant: t,
                secret: None,
                dead: false,
            },
        );
        m.ids[t].push(id);
    }
    for r in m.revokes.values_mut() {
        r.open = false;
    }
    m.revoked_seen.extend(manual);
    for ((t, u), r) in m.removals.iter_mut() {
        if r.fate == Fate::Lost {
            r.fate = if fold.removed[*t].contains(u) {
                Fate::Acked
            } else {
                Fate::Refused
            };
        }
    }
    // Keys revoked in the log verify as revoked from now on.
    for t in 0..TENANTS.len() {
        for (id, k) in &fold.keys[t] {
            if k.revoked.is_some()
                && let Some(key) = m.keys.get_mut(id)
            {
                key.dead = true;
            }
        }
    }
    drop(m);
    (fold, checked)
}

/// Every key of every tenant as the running server shows it.
fn api_keys(live: &Live, shared: &Shared) -> Vec<BTreeMap<String, Value>> {
    let mut out = Vec::new();
    for t in 0..TENANTS.len() {
        let (reader_id, reader) = shared.lock().readers[t].clone();
        let mut keys = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            shared.lock().present(&reader_id);
            let path = match &cursor {
                Some(c) => format!("/v1/keys?limit=1000&cursor={c}"),
                None => "/v1/keys?limit=1000".to_owned(),
            };
            let r = request(
                &live.addr,
                "GET",
                &path,
                &[("Authorization", &format!("Bearer {reader}"))],
                None,
            )
            .unwrap_or_else(|e| panic!("seed {}: list keys: {e}", shared.seed));
            assert_eq!(r.status, 200, "seed {}: {}", shared.seed, r.text());
            let v = r.json();
            for k in v["keys"].as_array().expect("keys") {
                let mut k = k.clone();
                let id = k["id"].as_str().expect("id").to_owned();
                if id == reader_id {
                    // Its own reads change its counts.
                    k["uses"] = Value::Null;
                    k["last_used_at"] = Value::Null;
                }
                keys.insert(id, k);
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        out.push(keys);
    }
    out
}

/// The restarted server's projections equal this test's fold of the log.
fn compare_with_fold(api: &[BTreeMap<String, Value>], fold: &Fold, seed: u64, what: &str) {
    for (t, listed) in api.iter().enumerate() {
        let ours: Vec<&String> = fold.keys[t].keys().collect();
        let theirs: Vec<&String> = listed.keys().collect();
        assert_eq!(
            ours, theirs,
            "seed {seed}, {what}: the server lists other keys than the log holds"
        );
        for (id, k) in &fold.keys[t] {
            let v = &listed[id];
            let status = if k.revoked.is_some() {
                "revoked"
            } else {
                "active"
            };
            let same = v["name"] == k.name.as_str()
                && v["created_by"] == k.owner.as_str()
                && v["status"] == status
                && v["revoke_reason"].as_str() == k.revoked.as_ref().map(|r| r.0.as_str())
                && (v["uses"].is_null() || v["uses"]["total"] == k.uses);
            assert!(
                same,
                "seed {seed}, {what}: {id}: the server shows {v}, the log says {k:?}"
            );
        }
    }
}

/// Snapshots of the projections every [`SNAPSHOT_EVERY_EVENTS`] events:
/// kills land while one is written, and each restart starts from the newest
/// whole one and replays the tail (its projections are then compared with
/// a fold of the log like any other restart's).
const SNAPSHOT_EVERY_EVENTS: &str = "300";

/// Starts the server on the harness's data directory.
fn start(data: &std::path::Path) -> Live {
    Live::start_with(
        data,
        WINDOW_MS,
        "info",
        &["--snapshot-every-events", SNAPSHOT_EVERY_EVENTS],
    )
}

/// Mints the tenant's reader key (through the operator route).
fn mint_readers(live: &Live, shared: &Shared) {
    let (n, v) = operator();
    for tenant in TENANTS {
        let r = request(
            &live.addr,
            "POST",
            &format!("/v1/admin/tenants/{tenant}/keys"),
            &[(n, &v)],
            Some(&json!({"user": "auditor", "name": "crash harness reader"})),
        )
        .expect("mint a reader");
        assert_eq!(r.status, 201, "{}", r.text());
        let body = r.json();
        shared.lock().readers.push((
            body["id"].as_str().expect("id").to_owned(),
            body["key"].as_str().expect("key").to_owned(),
        ));
    }
}

/// Waits until every use counted is written: the usage flusher writes
/// within a window or two, so until the log head has not moved for 20
/// windows.
fn settle(server: &Live) {
    let mut last = server.head();
    let mut still = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while still.elapsed() < Duration::from_millis(20 * WINDOW_MS) {
        assert!(Instant::now() < deadline, "the log head never settled");
        std::thread::sleep(Duration::from_millis(WINDOW_MS));
        let h = server.head();
        if h != last {
            last = h;
            still = Instant::now();
        }
    }
}

/// How a cycle ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// SIGKILL under load, at a random moment.
    Kill,
    /// The load stops, the usage flusher settles, then SIGKILL.
    QuietKill,
    /// SIGTERM.
    Graceful,
}

#[test]
fn sigkill_under_load_never_loses_an_acknowledged_event() {
    let seed = seed("KEYLEDGER_CRASH_SEED");
    let kills = env_u64("KEYLEDGER_CRASH_CYCLES", 50);
    let started = Instant::now();
    let data = Data::new();
    let shared = Arc::new(Shared {
        model: Mutex::new(Model::new()),
        stop: AtomicBool::new(false),
        seed,
    });
    let mut rng = Rng(seed);
    let mut live = Some(start(&data.path()));
    mint_readers(live.as_ref().expect("running"), &shared);
    let mut presented_at_check = HashMap::new();

    let mut fold = Fold {
        keys: vec![BTreeMap::new(); TENANTS.len()],
        removed: vec![HashSet::new(); TENANTS.len()],
        events: 0,
    };
    let mut total = Load::default();
    let (mut sigkills, mut quiet, mut graceful, mut startup_kills) = (0u64, 0u64, 0u64, 0u64);
    let mut from_snapshot = (0u64, 0u64);
    let mut ack_checks = 0u64;
    let mut bundles = 0u64;
    let mut cycle = 0u64;
    // Time spent checking, starting, reading the projections.
    let mut timing = [Duration::ZERO; 3];
    while sigkills < kills {
        cycle += 1;
        let end = if cycle.is_multiple_of(6) {
            End::Graceful
        } else if cycle % 6 == 3 {
            End::QuietKill
        } else {
            End::Kill
        };
        let what = format!("cycle {cycle} ({end:?})");
        // Load: WORKERS clients for a random time.
        shared.stop.store(false, Ordering::Relaxed);
        let addr = live.as_ref().expect("running").addr.clone();
        let handles: Vec<_> = (0..WORKERS)
            .map(|_| {
                let shared = shared.clone();
                let addr = addr.clone();
                let r = Rng(rng.next());
                std::thread::spawn(move || worker(&addr, &shared, r))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        if end == End::Kill {
            live.take().expect("running").kill();
        }
        shared.stop.store(true, Ordering::Relaxed);
        for h in handles {
            match h.join() {
                Ok(l) => {
                    total.requests += l.requests;
                    total.acked += l.acked;
                    total.lost += l.lost;
                    total.refused += l.refused;
                }
                Err(p) => {
                    eprintln!("crash harness failed: KEYLEDGER_CRASH_SEED={seed} ({what})");
                    std::panic::resume_unwind(p);
                }
            }
        }
        let (mut exact, mut before_stop) = (None, None);
        match end {
            End::Kill => sigkills += 1,
            End::QuietKill => {
                let server = live.take().expect("running");
                settle(&server);
                server.kill();
                sigkills += 1;
                quiet += 1;
                exact = Some(presented_at_check.clone());
            }
            End::Graceful => {
                let server = live.take().expect("running");
                // The live projections, once every counted use is written.
                settle(&server);
                before_stop = Some(api_keys(&server, &shared));
                server.stop();
                graceful += 1;
                exact = Some(presented_at_check.clone());
            }
        }
        let t_check = Instant::now();
        let evidence = cycle.is_multiple_of(10);
        bundles += u64::from(evidence);
        let (new_fold, checked) = check(&data, &shared, &what, exact.as_ref(), &fold, evidence);
        timing[0] += t_check.elapsed();
        fold = new_fold;
        ack_checks += checked.acks;
        presented_at_check = shared.lock().presented.clone();
        // Now and then, a crash during start-up (recovery) too.
        if cycle.is_multiple_of(7) {
            Live::start_and_kill(
                &data.path(),
                WINDOW_MS,
                Duration::from_millis(rng.below(200)),
            );
            startup_kills += 1;
        }
        let t_start = Instant::now();
        let server = start(&data.path());
        timing[1] += t_start.elapsed();
        // From a snapshot (the checks' commands write one when they end),
        // with a tail after it to replay?
        let logs = server.all_logs();
        let ready = logs.lines().find(|l| l.contains("projections ready"));
        if let Some(l) = ready.filter(|l| !l.contains("snapshot_position=0 ")) {
            from_snapshot.0 += 1;
            from_snapshot.1 += u64::from(!l.contains(" replayed=0 "));
        }
        let t_api = Instant::now();
        let api = api_keys(&server, &shared);
        timing[2] += t_api.elapsed();
        live = Some(server);
        compare_with_fold(&api, &fold, seed, &what);
        if let Some(before) = before_stop {
            for t in 0..TENANTS.len() {
                assert_eq!(
                    before[t].len(),
                    api[t].len(),
                    "seed {seed}, {what}: key counts"
                );
                for (id, k) in &before[t] {
                    assert_eq!(
                        Some(k),
                        api[t].get(id),
                        "seed {seed}, {what}: {id} before the stop and after a replay"
                    );
                }
            }
        }
    }
    live.take().expect("running").stop();
    let m = shared.lock();
    let acked_events = m.creates.values().filter(|c| c.fate == Fate::Acked).count()
        + m.revokes.values().filter(|r| r.acked).count()
        + m.removals
            .values()
            .filter(|r| r.fate == Fate::Acked)
            .count();
    println!(
        "crash harness, seed {seed}: kill cycles survived: {sigkills} (of which quiet: {quiet}), \
         graceful restarts: {graceful}, kills during start-up: {startup_kills}, \
         restarts from a snapshot: {} (with a tail to replay: {}); \
         requests: {}, answered 2xx: {}, refused: {}, answers lost in a crash: {}; \
         acknowledged management events: {acked_events}, acknowledgement checks: {ack_checks}; \
         evidence bundles verified on recovered data: {bundles}; \
         events in the log: {}; {:.1} s (checks {:.1} s, starts {:.1} s, reads {:.1} s)",
        from_snapshot.0,
        from_snapshot.1,
        total.requests,
        total.acked,
        total.refused,
        total.lost,
        fold.events,
        started.elapsed().as_secs_f64(),
        timing[0].as_secs_f64(),
        timing[1].as_secs_f64(),
        timing[2].as_secs_f64(),
    );
    assert!(sigkills >= kills);
    assert!(acked_events > 0);
}
