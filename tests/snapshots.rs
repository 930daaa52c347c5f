//! Snapshots of the projections, black box: a restart of the real binary
//! starts from the snapshot the previous run wrote at shutdown and replays
//! only what follows it; `replay` compares the snapshot with a replay of
//! the whole log; a damaged snapshot is refused with a warning, and the
//! answers are the same as from the log.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::live::{Live, TOKEN, request};
use crate::util::{Data, contains};

/// The snapshot files (`.bin`) in the data directory.
fn snapshots(data: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(data.join("snapshots"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|e| e == "bin"));
    out.sort();
    out
}

/// A gauge of a running server's `/metrics`.
fn metric(live: &Live, name: &str) -> u64 {
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        &live.addr,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        None,
    )
    .unwrap_or_else(|e| panic!("/metrics: {e}"));
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Where the server's start began: (snapshot position, events replayed),
/// from `/metrics`, checked against its `projections ready` log line.
fn started(live: &Live) -> (u64, u64) {
    let from = (
        metric(live, "keyledger_start_snapshot_position"),
        metric(live, "keyledger_start_replayed_events"),
    );
    let logs = live.all_logs();
    let line = format!("snapshot_position={} replayed={}", from.0, from.1);
    assert!(logs.contains(&line), "no `{line}` in:\n{logs}");
    from
}

fn keys(d: &Data) -> Value {
    d.json(&["keys", "list", "--tenant", "acme"])
}

/// A restart of `serve` starts from the snapshot written when it stopped:
/// nothing to replay; after a crash, from that snapshot plus the events
/// written since (only those). `replay` compares the snapshot with the
/// whole log.
#[test]
fn a_restart_starts_from_the_snapshot_and_replays_only_the_tail() {
    let d = Data::new();
    d.ok(&["demo"]);
    let events = d.json(&["replay"])["events"].as_u64().unwrap_or(0);
    assert!(events > 20);
    assert!(
        snapshots(&d.path()).is_empty(),
        "`demo` and `replay` write none"
    );
    // No snapshot yet: the whole log; one is written at the stop.
    let live = Live::start(&d.path(), 1000);
    assert_eq!(started(&live), (0, events));
    live.stop();
    let files = snapshots(&d.path());
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(mode(&d.path().join("snapshots")), 0o700);
    }
    let before = keys(&d);
    assert_eq!(snapshots(&d.path()).len(), 1, "nothing new to write");
    // From the snapshot at the head: nothing replayed.
    let live = Live::start(&d.path(), 1000);
    assert_eq!(started(&live), (events, 0));
    // Three creates, then a crash: no snapshot covers them.
    let auth = format!("Bearer {TOKEN}");
    for i in 0..3 {
        let r = request(
            &live.addr,
            "POST",
            "/v1/admin/tenants/acme/keys",
            &[("Authorization", &auth)],
            Some(&serde_json::json!({"user": "ada", "name": format!("after {i}")})),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    live.kill();
    let live = Live::start(&d.path(), 1000);
    assert_eq!(started(&live), (events, 3), "only the tail is replayed");
    live.stop();
    let head = events + 3;
    let after = keys(&d);
    assert_eq!(
        after["keys"].as_array().map(Vec::len),
        before["keys"].as_array().map(|k| k.len() + 3)
    );
    assert_eq!(snapshots(&d.path()).len(), 2, "the newest two are kept");
    // `replay` rebuilds from the log and compares with the newest snapshot.
    let replay = d.json(&["replay"]);
    assert_eq!(replay["snapshot"]["position"], head);
    assert_eq!(replay["snapshot"]["equal"], true, "{replay}");
    let text = d.ok(&["replay"]);
    assert!(
        text.contains(&format!("(position {head}): equal to the replay")),
        "{text}"
    );
}

#[test]
fn a_damaged_snapshot_is_refused_with_a_warning_and_the_answers_are_the_same() {
    let d = Data::new();
    d.ok(&["demo"]);
    let before = keys(&d);
    let file = snapshots(&d.path()).pop().unwrap_or_default();
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("{e}"));
    // `replay` reports it, and still exits 0: the log is sound.
    let replay = d.json(&["replay"]);
    let refused = &replay["snapshot"]["refused"];
    assert_eq!(refused.as_array().map(Vec::len), Some(1), "{replay}");
    assert!(
        refused[0]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("checksum"),
        "{replay}"
    );
    // A start refuses it, says why, and answers from the log.
    let out = d.run(&["keys", "list", "--tenant", "acme", "--json"]);
    assert!(out.status.success());
    assert!(
        contains(&out.stderr, "refusing a snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contains(&out.stderr, "checksum"));
    let after: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after, before);
    let mut aside = file.clone().into_os_string();
    aside.push(".refused");
    assert!(Path::new(&aside).exists(), "kept aside for the operator");
}
