//! Witnesses, black box: a witness written from C2SP tlog-witness in this
//! file ([`TestWitness`], on loopback), the node's witness client against
//! it (`serve --witness`), cosigned checkpoints, bundles under a "k of n"
//! witness policy, and receipts (C2SP tlog-proof) checked offline.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::cosignature::{self, Cosigner};
use keyledger_audit::merkle::{self, Hash, Tree};
use keyledger_audit::{Policy, SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::live::{Live, TOKEN, request};
use crate::util::{Data, bin};

// ---------------------------------------------------------------------------
// The test witness: C2SP tlog-witness `add-checkpoint`, from the spec.
// ---------------------------------------------------------------------------

/// What the witness answered, for the tests to look at.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The old size the request gave.
    pub old: Option<u64>,
    /// The status answered.
    pub status: u16,
}

/// A witness: it keeps the latest size and root it cosigned per origin, for
/// the logs whose keys it was given, and answers `POST /add-checkpoint`.
pub struct TestWitness {
    /// Its name (the cosignature key name).
    pub name: String,
    key: SigningKey,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    logs: Arc<Mutex<HashMap<String, VerifyingKey>>>,
    state: Arc<Mutex<HashMap<String, (u64, Hash)>>>,
    answered: Arc<Mutex<Vec<Answered>>>,
    stop: Arc<AtomicBool>,
}

impl TestWitness {
    /// Starts a witness named `name` with a key from `seed` on a free port.
    pub fn start(name: &str, seed: u8) -> TestWitness {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let w = TestWitness {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&[seed; 32]),
            url,
            logs: Arc::default(),
            state: Arc::default(),
            answered: Arc::default(),
            stop: Arc::default(),
        };
        let (name, key, logs, state, answered, stop) = (
            w.name.clone(),
            w.key.clone(),
            w.logs.clone(),
            w.state.clone(),
            w.answered.clone(),
            w.stop.clone(),
        );
        std::thread::spawn(move || {
            // One request at a time: what a witness's atomic check-and-update needs anyway.
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    let ctx = (&name, &key, &*logs, &*state, &*answered);
                    serve_one(conn, ctx);
                }
            }
        });
        w
    }

    /// Trusts a log: its note verifier key names its origin.
    pub fn trust(&self, vkey: &str) {
        let origin = vkey.split('+').next().expect("a name").to_owned();
        let key = checkpoint::parse_public_key(vkey).expect("a log verifier key");
        self.logs.lock().unwrap().insert(origin, key);
    }

    /// Its cosigner verifier key (`name+id+base64(0x04 || key)`).
    pub fn vkey(&self) -> String {
        self.cosigner().verifier_key()
    }

    /// As a verifier knows it.
    pub fn cosigner(&self) -> Cosigner {
        Cosigner {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `--witness` for `serve`.
    pub fn option(&self) -> String {
        format!("{}={}", self.vkey(), self.url)
    }

    /// What it answered so far.
    pub fn answered(&self) -> Vec<Answered> {
        self.answered.lock().unwrap().clone()
    }

    /// The size it holds for `origin`.
    pub fn size(&self, origin: &str) -> Option<u64> {
        self.state.lock().unwrap().get(origin).map(|s| s.0)
    }
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then ends.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

type Ctx<'a> = (
    &'a String,
    &'a SigningKey,
    &'a Mutex<HashMap<String, VerifyingKey>>,
    &'a Mutex<HashMap<String, (u64, Hash)>>,
    &'a Mutex<Vec<Answered>>,
);

/// Reads one HTTP/1.1 request and answers it, closing the connection.
fn serve_one(conn: TcpStream, ctx: Ctx<'_>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("a clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let request_line = line.trim_end().to_owned();
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (status, content_type, text, old) = if request_line.starts_with("POST /add-checkpoint ") {
        add_checkpoint(&String::from_utf8_lossy(&body), ctx)
    } else {
        (404, "text/plain", "not found\n".to_owned(), None)
    };
    ctx.4.lock().unwrap().push(Answered { old, status });
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Unprocessable Entity",
    };
    let mut conn = conn;
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
}

/// `add-checkpoint`, step by step as C2SP tlog-witness says.
fn add_checkpoint(body: &str, ctx: Ctx<'_>) -> (u16, &'static str, String, Option<u64>) {
    let (name, key, logs, state, _) = ctx;
    let plain = "text/plain";
    let bad = |m: &str| (400, plain, format!("{m}\n"), None);
    // An old size line, proof lines, an empty line, then the checkpoint.
    let Some((head, note)) = body.split_once("\n\n") else {
        return bad("no empty line");
    };
    let mut lines = head.split('\n');
    let Some(old) = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| *n == "0" || !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return bad("no old size line");
    };
    let mut proof: Vec<Hash> = Vec::new();
    for l in lines {
        let Some(h) = B64.decode(l).ok().and_then(|b| b.try_into().ok()) else {
            return bad("a proof line is not a base64 hash");
        };
        proof.push(h);
    }
    if proof.len() > 63 {
        return bad("more than 63 proof lines");
    }
    let Ok(unverified) = checkpoint::parse_unverified(note) else {
        return bad("not a checkpoint");
    };
    // The origin must be known, and signed by its key.
    let Some(log_key) = logs.lock().unwrap().get(&unverified.origin).copied() else {
        return (404, plain, "unknown origin\n".into(), Some(old));
    };
    let c: Checkpoint = match checkpoint::open(note, &log_key) {
        Ok(c) => c,
        Err(_) => return (403, plain, "not signed by the log\n".into(), Some(old)),
    };
    if old > c.size {
        return (
            400,
            plain,
            "old size above the checkpoint\n".into(),
            Some(old),
        );
    }
    // Checked and updated atomically: one lock for both.
    let mut state = state.lock().unwrap();
    let (seen, seen_root) = state
        .get(&c.origin)
        .copied()
        .unwrap_or((0, merkle::empty_root()));
    if old != seen {
        return (409, "text/x.tlog.size", format!("{seen}\n"), Some(old));
    }
    let unprocessable = |m: &str| (422, plain, format!("{m}\n"), Some(old));
    if c.size == 0 && c.root != merkle::empty_root() {
        return unprocessable("an empty tree with another root");
    }
    if old == 0 {
        if !proof.is_empty() {
            return unprocessable("a proof from size 0");
        }
    } else if old == c.size {
        if c.root != seen_root || !proof.is_empty() {
            return unprocessable("the same size with another root");
        }
    } else if merkle::verify_consistency(old, c.size, &seen_root, &c.root, &proof).is_err() {
        return unprocessable("the consistency proof does not verify");
    }
    state.insert(c.origin.clone(), (c.size, c.root));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    (
        200,
        plain,
        cosignature::cosign(&c.text(), name, key, now),
        Some(old),
    )
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// POSTs an `add-checkpoint` body: the status, the content type and the body.
fn post(url: &str, body: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut r = agent
        .post(&format!("{url}/add-checkpoint"))
        .send(body.as_bytes())
        .expect("the witness answers");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        r.status().as_u16(),
        ct,
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut s = format!("old {old}\n");
    for h in proof {
        s.push_str(&B64.encode(h));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(note);
    s
}

/// A log of `leaves` (one byte each) signed as `origin`.
fn signed(tree: &Tree, size: u64, origin: &str, key: &SigningKey) -> String {
    Checkpoint {
        origin: origin.into(),
        size,
        root: tree.root(size).unwrap(),
        extensions: vec![],
    }
    .sign(key)
}

fn tree_of(leaves: &[u8]) -> Tree {
    let mut t = Tree::new();
    for b in leaves {
        t.push(&[*b]);
    }
    t
}

/// The tenant's note verifier key, from the CLI.
fn log_vkey(d: &Data, tenant: &str) -> String {
    let v = d.json(&["audit", "public-key", "--tenant", tenant]);
    v["verifier_key"]
        .as_str()
        .unwrap_or_else(|| panic!("a verifier key in {v}"))
        .to_owned()
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < until, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(live: &Live, key: &str, path: &str) -> crate::live::Resp {
    let auth = format!("Bearer {key}");
    request(&live.addr, "GET", path, &[("Authorization", &auth)], None).expect("an answer")
}

/// Mints an `audit:read` + `keys:write` key for `tenant` on the live server.
fn mint(live: &Live, tenant: &str, name: &str) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        &live.addr,
        "POST",
        &format!("/v1/admin/tenants/{tenant}/keys"),
        &[("Authorization", &auth)],
        Some(&json!({"user": "auditor", "name": name, "scopes": ["audit:read", "keys:write", "keys:read"]})),
    )
    .expect("an answer");
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// A data directory with one event in `acme`, `n` witnesses trusting its
/// log (`witness.test/<prefix><i>`, keys from `seed + i`), and the node
/// serving it with the first two of them.
fn witnessed_node(
    prefix: &str,
    n: u8,
    seed: u8,
    log: &str,
) -> (Data, String, Vec<TestWitness>, Live) {
    let d = Data::new();
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "one",
    ]);
    let vkey = log_vkey(&d, "acme");
    let ws: Vec<TestWitness> = (0..n)
        .map(|i| TestWitness::start(&format!("witness.test/{prefix}{i}"), seed + i))
        .collect();
    for w in &ws {
        w.trust(&vkey);
    }
    let live = Live::start_with(
        d.path().as_path(),
        1000,
        log,
        &["--witness", &ws[0].option(), "--witness", &ws[1].option()],
    );
    (d, vkey, ws, live)
}

/// Runs the binary with no data directory, from an empty directory.
fn offline(args: &[&str]) -> (Option<i32>, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .current_dir(cwd.path())
        .args(args)
        .env_remove("KEYLEDGER_DATA")
        .env_remove("KEYLEDGER_URL")
        .env("HOME", cwd.path())
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// The test witness cosigns a log it trusts; its cosignature verifies with
/// its verifier key and under a policy, and not on another checkpoint.
#[test]
fn cosignatures_of_the_witness_verify() {
    let w = TestWitness::start("witness.test/w1", 11);
    let log = SigningKey::from_bytes(&[7; 32]);
    let origin = "example.test/log";
    w.trust(&checkpoint::verifier_key(origin, &log.verifying_key()));
    let tree = tree_of(&[1, 2, 3, 4, 5]);
    let note = signed(&tree, 5, origin, &log);
    let (status, _, cosig) = post(&w.url, &body(0, &[], &note));
    assert_eq!(status, 200, "{cosig}");
    assert!(cosig.starts_with("\u{2014} witness.test/w1 "), "{cosig}");
    let cosigned = format!("{note}{cosig}");
    // The log's own signature still opens it, the witness's verifies.
    assert_eq!(
        checkpoint::open(&cosigned, &log.verifying_key())
            .unwrap()
            .size,
        5
    );
    let parsed = Cosigner::parse(&w.vkey()).unwrap();
    assert_eq!(parsed, w.cosigner());
    let policy = Policy::new(vec![parsed.clone()], 1).unwrap();
    let who = policy.check(&cosigned).unwrap();
    assert_eq!(who[0].name, "witness.test/w1");
    // The same cosignature on another checkpoint of the log does not verify.
    let other = signed(&tree_of(&[1, 2, 3, 4, 6]), 5, origin, &log);
    assert!(policy.check(&format!("{other}{cosig}")).is_err());
    // An unknown origin is a 404; a note not signed by the log a 403.
    let stranger = SigningKey::from_bytes(&[8; 32]);
    let (s, ..) = post(
        &w.url,
        &body(0, &[], &signed(&tree, 5, "other.test/log", &stranger)),
    );
    assert_eq!(s, 404);
    let (s, ..) = post(&w.url, &body(0, &[], &signed(&tree, 5, origin, &stranger)));
    assert_eq!(s, 403);
}

/// A witness refuses a checkpoint inconsistent with what it saw: a fork
/// with a proof that cannot verify (422), another old size (409 with its
/// size as `text/x.tlog.size`), the same size with another root (422); it
/// keeps what it had, and cosigns a consistent extension.
#[test]
fn a_witness_refuses_a_checkpoint_inconsistent_with_what_it_saw() {
    let w = TestWitness::start("witness.test/w2", 12);
    let log = SigningKey::from_bytes(&[7; 32]);
    let origin = "example.test/log";
    w.trust(&checkpoint::verifier_key(origin, &log.verifying_key()));
    let honest = tree_of(&[1, 2, 3, 4, 5, 6, 7]);
    let (s, ..) = post(&w.url, &body(0, &[], &signed(&honest, 5, origin, &log)));
    assert_eq!(s, 200);

    // A fork: event 3 changed, the proof from 5 computed on the fork.
    let fork = tree_of(&[1, 2, 9, 4, 5, 6, 7]);
    let proof = fork.consistency_proof(5, 7).unwrap();
    let (s, _, text) = post(&w.url, &body(5, &proof, &signed(&fork, 7, origin, &log)));
    assert_eq!(s, 422, "{text}");
    // The same size with another root.
    let (s, ..) = post(&w.url, &body(5, &[], &signed(&fork, 5, origin, &log)));
    assert_eq!(s, 422);
    // Another old size: 409 with the size it holds.
    let proof = honest.consistency_proof(3, 7).unwrap();
    let (s, ct, text) = post(&w.url, &body(3, &proof, &signed(&honest, 7, origin, &log)));
    assert_eq!(
        (s, ct.as_str(), text.as_str()),
        (409, "text/x.tlog.size", "5\n")
    );
    // Rolling back (old above the checkpoint) is a 400.
    let (s, ..) = post(&w.url, &body(5, &[], &signed(&honest, 4, origin, &log)));
    assert_eq!(s, 400);
    assert_eq!(w.size(origin), Some(5));
    // The honest extension is cosigned.
    let proof = honest.consistency_proof(5, 7).unwrap();
    let (s, ..) = post(&w.url, &body(5, &proof, &signed(&honest, 7, origin, &log)));
    assert_eq!(s, 200);
    assert_eq!(w.size(origin), Some(7));
}

/// The node sends its checkpoints to the witness; the witness already holds
/// a checkpoint of the tenant the node does not know about, answers 409,
/// and the node sends again from that size with a fresh consistency proof;
/// the cosigned checkpoint is served and verifies.
#[test]
fn the_node_resyncs_after_a_409_and_serves_the_cosigned_checkpoint() {
    let d = Data::new();
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "one",
    ]);
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "two",
    ]);
    let vkey = log_vkey(&d, "acme");
    let origin = vkey.split('+').next().unwrap().to_owned();
    let w = TestWitness::start("witness.test/resync", 13);
    w.trust(&vkey);
    // Someone (a monitor, an earlier run) gave the witness a checkpoint.
    let cp = d.json(&["audit", "checkpoint", "--tenant", "acme"]);
    let held = cp["size"].as_u64().unwrap();
    let (s, ..) = post(&w.url, &body(0, &[], cp["note"].as_str().unwrap()));
    assert_eq!(s, 200);

    let live = Live::start_with(
        d.path().as_path(),
        1000,
        "info",
        &["--witness", &w.option()],
    );
    let key = mint(&live, "acme", "auditor");
    eventually("a checkpoint beyond the held one is cosigned", || {
        w.size(&origin).is_some_and(|s| s > held)
    });
    let answered = w.answered();
    let i409 = answered
        .iter()
        .position(|a| a.status == 409)
        .unwrap_or_else(|| panic!("no 409: {answered:?}"));
    assert!(
        answered[i409..]
            .iter()
            .any(|a| a.status == 200 && a.old == Some(held)),
        "no resend from {held} after the 409: {answered:?}"
    );
    let secret = key["key"].as_str().unwrap();
    let mut body = Value::Null;
    eventually("the cosigned checkpoint is served", || {
        let r = get(&live, secret, "/v1/audit/checkpoint/witnessed");
        body = if r.status == 200 {
            r.json()
        } else {
            Value::Null
        };
        r.status == 200
    });
    assert_eq!(body["witnesses"], json!(["witness.test/resync"]));
    let note = body["note"].as_str().unwrap();
    let policy = Policy::new(vec![w.cosigner()], 1).unwrap();
    policy.check(note).expect("the served cosignature verifies");
    let log_key = checkpoint::parse_public_key(&vkey).unwrap();
    assert_eq!(
        checkpoint::open(note, &log_key).unwrap().size,
        body["size"].as_u64().unwrap()
    );
    // The cosignatures are kept beside the checkpoint file.
    let files = crate::util::files(&d.path().join("checkpoints"));
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".jsonl.cosignatures")),
        "{files:?}"
    );
    live.stop();
}

/// Two of three trusted witnesses cosign: a revocation's receipt and a
/// bundle verify offline under a policy of 2 of 3, and not with one
/// cosignature removed (1 of 3) or when altered.
#[test]
fn a_bundle_under_a_policy_of_2_of_3_passes_with_2_and_fails_with_1() {
    // Three witnesses; the node knows two of them.
    let (_d, vkey, ws, live) = witnessed_node("k", 3, 20, "info");
    let auditor = mint(&live, "acme", "auditor");
    let secret = auditor["key"].as_str().unwrap().to_owned();
    let doomed = mint(&live, "acme", "doomed");
    let auth = format!("Bearer {secret}");
    let r = request(
        &live.addr,
        "POST",
        &format!(
            "/v1/keys/{}/revoke?receipt=true",
            doomed["id"].as_str().unwrap()
        ),
        &[("Authorization", &auth)],
        None,
    )
    .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked = r.json();
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    let position = revoked["receipt"]["position"].as_u64().expect("a position");
    let url = revoked["receipt"]["receipt_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(url, format!("/v1/audit/receipt?position={position}"));

    // Fetched once two witnesses cosigned a checkpoint covering it.
    let all: Vec<Cosigner> = ws.iter().map(TestWitness::cosigner).collect();
    let two_of_three = Policy::new(all.clone(), 2).unwrap();
    let mut receipt = String::new();
    eventually("a receipt cosigned by two witnesses", || {
        let r = get(&live, &secret, &url);
        if r.status == 202 {
            assert!(r.json()["retry_after_seconds"].as_u64().unwrap() >= 1);
            return false;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        receipt = r.text();
        let note = &receipt[receipt.find("\n\n").unwrap() + 2..];
        two_of_three.check(note).is_ok()
    });
    assert!(
        receipt.starts_with("c2sp.org/tlog-proof@v1\nextra "),
        "{receipt}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "revocation.tlog-proof", &receipt);
    let witness_args: Vec<String> = ws
        .iter()
        .flat_map(|w| ["--witness".to_owned(), w.vkey()])
        .collect();
    let verify_receipt = |file: &str, k: &str| {
        let mut args = vec![
            "audit",
            "verify-receipt",
            file,
            "--key",
            &vkey,
            "--policy",
            k,
        ];
        args.extend(witness_args.iter().map(String::as_str));
        offline(&args)
    };
    let (code, out) = verify_receipt(&file, "2");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("VALID: event {position} ")), "{out}");
    // Three of three: the third never saw it.
    let (code, out) = verify_receipt(&file, "3");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("cosigned by 2 of the 3 witnesses required"),
        "{out}"
    );
    // Another index: the proof no longer binds the event.
    let moved = receipt.replacen(
        &format!("\nindex {}\n", position - 1),
        &format!("\nindex {}\n", position),
        1,
    );
    let (code, out) = verify_receipt(&write(tmp.path(), "moved.tlog-proof", &moved), "2");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("INVALID"), "{out}");

    // A bundle of the range up to the revocation, witnessed by two.
    let r = get(
        &live,
        &secret,
        &format!("/v1/audit/bundle?from=1&to={position}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bundle = r.text();
    let path = write(tmp.path(), "acme.jsonl", &bundle);
    let verify_bundle = |path: &str| {
        let mut args = vec![
            "audit",
            "verify-bundle",
            path,
            "--public-key",
            &vkey,
            "--policy",
            "2",
        ];
        args.extend(witness_args.iter().map(String::as_str));
        offline(&args)
    };
    let (code, out) = verify_bundle(&path);
    assert_eq!(code, Some(0), "{out}");
    // One cosignature removed: 1 of 3 is not enough.
    let (head, events) = bundle.split_once('\n').unwrap();
    let mut header: Value = serde_json::from_str(head).unwrap();
    let note = header["witnessed"]["checkpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let one: String = note
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("\u{2014} witness.test/k1 "))
        .collect();
    assert_ne!(one, note);
    header["witnessed"]["checkpoint"] = json!(one);
    let stripped = format!("{header}\n{events}");
    let (code, out) = verify_bundle(&write(tmp.path(), "one.jsonl", &stripped));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT WITNESSED"), "{out}");
    assert!(
        out.contains("cosigned by 1 of the 2 witnesses required"),
        "{out}"
    );
    live.stop();
}

/// Figures for docs/performance.md ("Witnesses and receipts"), printed,
/// never asserted: the witness round trip on loopback against a same-run
/// baseline (an HTTP round trip the witness answers 404 without any
/// check), the node's queue-to-stored cosigning time from its log, and the
/// size of a receipt. `cargo nextest run --test tests --run-ignored only
/// figures_ --no-capture`.
#[test]
#[ignore = "prints figures; run on a quiet machine"]
fn figures_cosigning_latency_and_receipt_size() {
    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }
    let w = TestWitness::start("witness.test/figures", 30);
    let log = SigningKey::from_bytes(&[7; 32]);
    let origin = "example.test/log";
    w.trust(&checkpoint::verifier_key(origin, &log.verifying_key()));
    let n = 200u64;
    let mut tree = Tree::new();
    for i in 0..100_000u64 {
        tree.push(&i.to_be_bytes());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let (mut rt, mut base) = (Vec::new(), Vec::new());
    let mut old = 0;
    for i in 0..n {
        let size = 99_000 + i * 5;
        let proof = if old == 0 {
            vec![]
        } else {
            tree.consistency_proof(old, size).unwrap()
        };
        let b = body(old, &proof, &signed(&tree, size, origin, &log));
        let t = Instant::now();
        let mut r = agent
            .post(&format!("{}/add-checkpoint", w.url))
            .send(b.as_bytes())
            .unwrap();
        let _ = r.body_mut().read_to_string();
        rt.push(t.elapsed());
        assert_eq!(r.status().as_u16(), 200);
        old = size;
        let t = Instant::now();
        let mut r = agent
            .post(&format!("{}/nothing", w.url))
            .send(b.as_bytes())
            .unwrap();
        let _ = r.body_mut().read_to_string();
        base.push(t.elapsed());
    }
    let (rt, base) = (median(rt), median(base));
    println!(
        "add-checkpoint round trip (100,000-leaf log, {}-hash proofs): median {rt:?}; \
         baseline HTTP round trip {base:?}; ratio {:.1}",
        tree.consistency_proof(99_000, 99_005).unwrap().len(),
        rt.as_secs_f64() / base.as_secs_f64()
    );

    // The node: queue-to-stored per cosignature, and a receipt's size.
    let (_d, _, ws, live) = witnessed_node("f", 2, 40, "info,keyledger_runtime=debug");
    let auditor = mint(&live, "acme", "auditor");
    let secret = auditor["key"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {secret}");
    let mut positions = Vec::new();
    for i in 0..10 {
        let k = mint(&live, "acme", &format!("k{i}"));
        let r = request(
            &live.addr,
            "POST",
            &format!("/v1/keys/{}/revoke?receipt=true", k["id"].as_str().unwrap()),
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
        positions.push(r.json()["receipt"]["position"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let all: Vec<Cosigner> = ws.iter().map(TestWitness::cosigner).collect();
    let policy = Policy::new(all, 2).unwrap();
    let last = *positions.last().unwrap();
    let mut receipt = String::new();
    eventually("a receipt cosigned by both", || {
        let r = get(
            &live,
            &secret,
            &format!("/v1/audit/receipt?position={last}"),
        );
        receipt = r.text();
        r.status == 200
            && policy
                .check(&receipt[receipt.find("\n\n").unwrap() + 2..])
                .is_ok()
    });
    let logs = live.all_logs();
    let mut us: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("checkpoint cosigned"))
        .filter_map(|l| {
            l.split("queued_to_stored_us=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    us.sort_unstable();
    let proof_lines = receipt[..receipt.find("\n\n").unwrap()].lines().count() - 3;
    println!(
        "node: {} cosignatures, queue-to-stored median {} µs, max {} µs; receipt of position {last} \
         in a tree of about {last} events: {} bytes ({proof_lines} proof hashes, 2 cosignatures)",
        us.len(),
        us.get(us.len() / 2).copied().unwrap_or(0),
        us.last().copied().unwrap_or(0),
        receipt.len()
    );
    live.stop();
}
