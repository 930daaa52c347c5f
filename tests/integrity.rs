//! Damaged storage never becomes a smaller "valid" ledger: the real binary
//! on data directories damaged as a disk, a bad restore or a careless copy
//! would leave them. Each test is named after the damage it guards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Data, bin, copy_dir, serve_until_exit};

const TOKEN: &str = "operator-token-of-the-integrity-tests";

/// The size of the newest checkpoint stored for `tenant`, if any.
fn signed_size(data: &Path, tenant: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(data.join("checkpoints").join(format!("{tenant}.jsonl"))).ok()?;
    let last = text.lines().rfind(|l| !l.trim().is_empty())?;
    serde_json::from_str::<Value>(last).ok()?["size"].as_u64()
}

/// Creates `n` keys for alice in `tenant` with the offline CLI (each run
/// ends cleanly: the write-ahead log is checkpointed, the checkpoints
/// signed).
fn create_keys(d: &Data, tenant: &str, n: usize) {
    for i in 0..n {
        d.ok(&[
            "keys",
            "create",
            "--tenant",
            tenant,
            "--user",
            "alice",
            "--name",
            &format!("key {i}"),
        ]);
    }
}

/// Runs `keyledger <args>` and expects a non-zero exit whose standard
/// error holds every one of `needles` and no panic; returns it.
#[track_caller]
fn refused(d: &Data, args: &[&str], needles: &[&str]) -> String {
    let out = d.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{stderr}");
    assert!(
        !out.status.success(),
        "keyledger {args:?} succeeded on damaged data:\n{all}"
    );
    assert!(
        !all.contains("panicked"),
        "keyledger {args:?} panicked:\n{all}"
    );
    for n in needles {
        assert!(all.contains(n), "keyledger {args:?}: no `{n}` in:\n{all}");
    }
    all
}

/// `serve` on the data directory must exit non-zero by itself, with
/// `needles` in its standard error, and never listen.
#[track_caller]
fn serve_refuses(d: &Data, needles: &[&str]) {
    let output = serve_until_exit(&d.path());
    let status = output.status;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "serve exited 0 on damaged data:\n{out}");
    assert!(
        !out.contains("listening on"),
        "serve listened on damaged data:\n{out}"
    );
    assert!(!out.contains("panicked"), "serve panicked:\n{out}");
    for n in needles {
        assert!(out.contains(n), "serve: no `{n}` in:\n{out}");
    }
}

/// A backup of `ledger.redb` (and its write-ahead log) taken after two
/// events, restored after five were signed: every command refuses the
/// log, naming the tenant, the signed size and the first missing event,
/// and nothing is signed over it. Before, the shorter log was served and
/// its checkpoints signed: a fork.
#[test]
fn a_log_restored_below_a_signed_checkpoint_is_refused() {
    let d = Data::new();
    create_keys(&d, "acme", 2);
    let backup = Data::new();
    copy_dir(&d.path(), &backup.path());
    create_keys(&d, "acme", 3);
    let signed = signed_size(&d.path(), "acme").expect("a stored checkpoint");
    assert_eq!(signed, 5);
    for file in ["ledger.redb", "ledger.redb-wal"] {
        std::fs::copy(backup.path().join(file), d.path().join(file)).unwrap();
    }
    let checkpoints = std::fs::read(d.path().join("checkpoints/acme.jsonl")).unwrap();
    let needles = [
        "tenant acme",
        "covers 5 events",
        "the log holds 2",
        "events 3 to 5 are missing",
        "docs/operations.md",
    ];
    refused(&d, &["keys", "list", "--tenant", "acme"], &needles);
    refused(&d, &["replay"], &needles);
    refused(&d, &["audit", "verify"], &needles);
    let json = d.run(&["audit", "verify", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let reports: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports[0]["ok"], false);
    assert_eq!(reports[0]["checkpoint"]["signed_size"], 5);
    assert_eq!(reports[0]["checkpoint"]["first_bad_seq"], 3);
    serve_refuses(&d, &needles);
    assert_eq!(
        std::fs::read(d.path().join("checkpoints/acme.jsonl")).unwrap(),
        checkpoints,
        "a checkpoint was signed over the shorter log"
    );
}

/// A log rewritten from some event on, its chain recomputed so that it
/// links: the chain alone cannot tell, the stored checkpoints do.
#[test]
fn a_rewritten_log_whose_chain_still_links_is_refused_by_its_checkpoints() {
    // Two data directories with the same first two events' shape but
    // different keys: the second's log, under the first's checkpoints.
    let d = Data::new();
    create_keys(&d, "acme", 2);
    let other = Data::new();
    create_keys(&other, "acme", 4);
    // The other's log is longer and links; its signing key is another, so
    // take the first's key and checkpoints with it.
    for file in ["ledger.redb", "ledger.redb-wal"] {
        std::fs::copy(other.path().join(file), d.path().join(file)).unwrap();
    }
    refused(
        &d,
        &["keys", "list", "--tenant", "acme"],
        &[
            "tenant acme",
            "not the ones the checkpoint",
            "changed at or after event 1",
        ],
    );
    refused(&d, &["audit", "verify"], &["CHECKPOINT MISMATCH"]);
}

/// A checkpoint file copied in from another data directory is not signed
/// by this one's key: refused, never taken as this log's promise.
#[test]
fn a_checkpoint_file_from_another_data_directory_is_refused() {
    let d = Data::new();
    create_keys(&d, "acme", 2);
    let other = Data::new();
    create_keys(&other, "acme", 2);
    std::fs::copy(
        other.path().join("checkpoints/acme.jsonl"),
        d.path().join("checkpoints/acme.jsonl"),
    )
    .unwrap();
    let needles = [
        "tenant acme",
        "not signed by this data directory's audit key",
    ];
    refused(&d, &["keys", "list", "--tenant", "acme"], &needles);
    refused(&d, &["audit", "verify"], &needles);
    serve_refuses(&d, &needles);
}

/// Every event of a tenant lost (a checkpoint file for a tenant the log
/// no longer knows): refused, and `audit verify` says so instead of
/// printing nothing and exiting 0.
#[test]
fn a_tenant_lost_from_the_log_is_refused_not_forgotten() {
    let d = Data::new();
    create_keys(&d, "acme", 1);
    create_keys(&d, "globex", 3);
    // The log of a directory that never held an event, under this one's
    // key and checkpoints.
    let empty = Data::new();
    empty.ok(&["replay"]);
    for file in ["ledger.redb", "ledger.redb-wal"] {
        std::fs::copy(empty.path().join(file), d.path().join(file)).unwrap();
    }
    refused(
        &d,
        &["audit", "verify"],
        &["globex", "covers 3 events", "the log holds 0"],
    );
    refused(
        &d,
        &["replay"],
        &["tenant globex", "events 1 to 3 are missing"],
    );
}

/// Sends one HTTP/1.1 request; the status and the JSON body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: (&str, &str),
    body: Option<Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        auth.0,
        auth.1,
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let json = raw
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The probe that found the defect: mint a key, create four, revoke one,
/// let a checkpoint of every event be signed (six, and the `KeyUsed` of
/// the key's uses), SIGKILL the server. The events are then in the
/// write-ahead log only. Returns the data directory and the signed size.
fn six_acknowledged_events_then_sigkill() -> (Data, u64) {
    let d = Data::new();
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(d.path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let addr = crate::util::listening_addr(&mut child, Duration::from_secs(60), |_| {})
        .expect("the server listens");
    let admin = ("Authorization", format!("Bearer {TOKEN}"));
    let (status, minted) = http(
        &addr,
        "POST",
        "/v1/admin/tenants/acme/keys",
        (admin.0, &admin.1),
        Some(json!({"user": "alice", "name": "bootstrap"})),
    );
    assert_eq!(status, 201, "{minted}");
    let key = minted["key"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..4 {
        let (status, created) = http(
            &addr,
            "POST",
            "/v1/keys",
            ("X-API-Key", &key),
            Some(json!({"name": format!("key {i}")})),
        );
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (status, revoked) = http(
        &addr,
        "POST",
        &format!("/v1/keys/{}/revoke", ids[0]),
        ("X-API-Key", &key),
        Some(json!({})),
    );
    assert_eq!(status, 200, "{revoked}");
    // Uses are flushed every second and checkpoints debounced by one:
    // wait until the signed size has not moved for three seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut size, mut since) = (None, Instant::now());
    loop {
        let now = signed_size(&d.path(), "acme");
        if now != size {
            (size, since) = (now, Instant::now());
        } else if size.is_some_and(|s| s >= 6) && since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of every event: {size:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    (d, size.unwrap_or(0))
}

/// The write-ahead log's frames of the current epoch: (offset, length).
fn wal_frames(data: &Path) -> (Vec<u8>, Vec<(usize, usize)>) {
    let wal = std::fs::read(data.join("ledger.redb-wal")).unwrap();
    let epoch = u64::from_le_bytes(wal[8..16].try_into().unwrap());
    let mut at = 0;
    let mut out = Vec::new();
    for records in keyledger_store::wal::frames(&wal, epoch) {
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let len = keyledger_store::wal::encode_frame(epoch, &records).len();
        out.push((at, len));
        at += len;
    }
    (wal, out)
}

/// One byte flipped inside the body of the write-ahead log's first frame
/// (its CRC left as it was): the server used to start as if for the first
/// time, every acknowledged key gone and `audit verify` exiting 0. Now
/// every command refuses, naming the damaged frame.
#[test]
fn a_corrupt_first_frame_of_the_write_ahead_log_loses_nothing_silently() {
    let (d, _) = six_acknowledged_events_then_sigkill();
    let (mut wal, frames) = wal_frames(&d.path());
    assert!(
        frames.len() >= 2,
        "the events are in the write-ahead log: {frames:?}"
    );
    wal[frames[0].0 + 30] ^= 0x01;
    std::fs::write(d.path().join("ledger.redb-wal"), &wal).unwrap();
    let needles = ["write-ahead log", "frame 1", "damaged"];
    serve_refuses(&d, &needles);
    refused(&d, &["audit", "verify"], &needles);
    refused(&d, &["replay"], &needles);
}

/// The last frame (an acknowledged event) damaged: it cannot be told from a torn
/// write, but a signed checkpoint covers it, so the log is refused rather
/// than served with the revoked key valid again.
#[test]
fn a_corrupt_last_frame_under_a_signed_checkpoint_is_refused() {
    let (d, n) = six_acknowledged_events_then_sigkill();
    let (mut wal, frames) = wal_frames(&d.path());
    let &(last, _) = frames.last().unwrap();
    wal[last + 30] ^= 0x01;
    std::fs::write(d.path().join("ledger.redb-wal"), &wal).unwrap();
    let covers = format!("covers {n} events");
    let holds = format!("the log holds {}", n - 1);
    let needles = ["tenant acme", &covers, &holds];
    serve_refuses(&d, &needles);
    refused(&d, &["keys", "list", "--tenant", "acme"], &needles);
}

/// No backup covers the signed checkpoints: `keyledger recover` records the
/// loss on the log (one `LogRecovered` event: the old origin, the signed
/// size and root, the size recovered, who decided and why) and starts a new
/// checkpoint epoch under a new origin. The old origin is never signed
/// again; reviewers see the break in the trail and in the origins.
#[test]
fn a_log_without_a_backup_is_recovered_into_a_new_epoch_on_the_record() {
    let d = Data::new();
    create_keys(&d, "acme", 2);
    let backup = Data::new();
    copy_dir(&d.path(), &backup.path());
    create_keys(&d, "acme", 3);
    for file in ["ledger.redb", "ledger.redb-wal"] {
        std::fs::copy(backup.path().join(file), d.path().join(file)).unwrap();
    }
    refused(
        &d,
        &["keys", "list", "--tenant", "acme"],
        &["events 3 to 5 are missing"],
    );
    let old_file = d.path().join("checkpoints/acme.jsonl");
    let old_checkpoints = std::fs::read(&old_file).unwrap();

    // A reason is required, and a key cannot do it.
    refused(&d, &["recover", "--tenant", "acme"], &["--reason"]);
    let why = "restored the backup of 1 December; keys 3 to 5 were lost (decided by ops)";
    let rec = d.json(&["recover", "--tenant", "acme", "--reason", why]);
    assert_eq!(rec["epoch"], 2, "{rec}");
    assert_eq!(rec["old_origin"], "keyledger/acme");
    assert_eq!(rec["new_origin"], "keyledger/acme/epoch-2");
    assert_eq!(rec["signed_size"], 5);
    assert_eq!(rec["recovered_size"], 2);
    assert_eq!(
        rec["agreed_size"], 2,
        "the checkpoint of 2 events still holds"
    );
    assert_eq!(rec["reason"], why);

    // The ledger opens again; the trail states the break as event 3.
    d.ok(&["keys", "list", "--tenant", "acme"]);
    let trail = d.json(&["audit", "list", "--tenant", "acme"]);
    let events = trail["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "LogRecovered", "{trail}");
    assert_eq!(last["seq"], 3);
    assert_eq!(last["actor"]["display"], "Operator");
    assert_eq!(last["details"]["signed_size"], 5);
    assert_eq!(last["details"]["recovered_size"], 2);
    assert_eq!(last["details"]["old_origin"], "keyledger/acme");
    assert_eq!(last["details"]["reason"], why);
    d.ok(&["audit", "verify"]);

    // The old origin's file is untouched; the new epoch has its own.
    create_keys(&d, "acme", 1);
    assert_eq!(std::fs::read(&old_file).unwrap(), old_checkpoints);
    let new_file = d.path().join("checkpoints/acme.epoch-2.jsonl");
    let newest = std::fs::read_to_string(&new_file).unwrap();
    let newest: Value = serde_json::from_str(newest.lines().last().unwrap()).unwrap();
    // Two kept, the recovery, the `AuditRead` of the listing, the new key.
    assert_eq!(newest["size"], 5);
    assert!(
        newest["note"]
            .as_str()
            .unwrap()
            .starts_with("keyledger/acme/epoch-2\n5\n"),
        "{newest}"
    );
    let cp = d.json(&["audit", "checkpoint", "--tenant", "acme"]);
    assert_eq!(cp["origin"], "keyledger/acme/epoch-2");

    // A bundle of the new epoch verifies offline; the checkpoint a
    // reviewer kept from before the loss does not, and says why.
    let bundle = d.path().join("bundle.jsonl");
    d.ok(&[
        "audit",
        "bundle",
        "--tenant",
        "acme",
        "--output",
        bundle.to_str().unwrap(),
    ]);
    let key = d.path().join("audit-signing.pub");
    let args = [
        "audit",
        "verify-bundle",
        bundle.to_str().unwrap(),
        "--public-key",
    ];
    d.ok(&[&args[..], &[key.to_str().unwrap()]].concat());
    let held = d.path().join("held.note");
    let old_newest: Value = serde_json::from_str(
        std::str::from_utf8(&old_checkpoints)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&held, old_newest["note"].as_str().unwrap()).unwrap();
    let out = d.run(
        &[
            &args[..],
            &[
                key.to_str().unwrap(),
                "--checkpoint",
                held.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keyledger/acme"), "{text}");

    // Nothing is left to recover.
    refused(
        &d,
        &["recover", "--tenant", "acme", "--reason", why],
        &["nothing to recover"],
    );
}
