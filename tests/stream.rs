//! Bundles of large ranges: built event by event (`audit bundle`) and
//! verified one line at a time (`audit verify-bundle`), in bounded memory.

use std::process::Command;

use keyledger_store::RedbLog;

use crate::util::{Data, bin};

#[path = "../benches/common/mod.rs"]
mod common;

/// The peak resident memory of `args` run by the binary (KiB, from
/// `/usr/bin/time`), its exit code and its output.
fn peak_kib(args: &[&str]) -> (u64, Option<i32>, String) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak-kib %M", bin()])
        .args(args)
        .env_remove("KEYLEDGER_URL")
        .output()
        .expect("/usr/bin/time runs the binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-kib "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in {stderr}"));
    (
        kib,
        out.status.code(),
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    )
}

/// 100,000 events: the bundle file is tens of megabytes; the verifier's
/// peak memory stays a fraction of it (it holds no event but the one it
/// reads, and O(log n) subtree roots), and a changed event in the middle
/// is still found. Prints the figures.
#[test]
fn a_large_bundle_is_verified_in_bounded_memory() {
    let d = Data::new();
    d.ok(&["audit", "public-key"]); // the data directory, its log and key
    {
        let log = RedbLog::open(&d.path().join("ledger.redb")).expect("a log");
        common::fill(&log, 100_000);
    }
    let file = d.path().join("big.jsonl");
    let file = file.to_str().unwrap();
    let (build_kib, code, out) = peak_kib(&[
        "--data",
        d.path().to_str().unwrap(),
        "audit",
        "bundle",
        "--tenant",
        "acme",
        "--output",
        file,
    ]);
    assert_eq!(code, Some(0), "{out}");
    let bytes = std::fs::metadata(file).unwrap().len();
    let key = d.path().join("audit-signing.pub");
    let key = key.to_str().unwrap();
    let (verify_kib, code, out) = peak_kib(&["audit", "verify-bundle", file, "--public-key", key]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("VALID"), "{out}");
    println!(
        "bundle of 100,000 events: {} MB; build peak RSS {} MB, verify peak RSS {} MB",
        bytes / 1_000_000,
        build_kib / 1024,
        verify_kib / 1024
    );
    // Holding the file, let alone its parsed events, would take more
    // (the process alone, before any bundle, is about 10 MB).
    assert!(
        verify_kib * 1024 < bytes / 2,
        "verify-bundle peaked at {verify_kib} KiB for a {bytes}-byte bundle"
    );

    // One event in the middle changed in place: named, streaming all the same.
    let text = std::fs::read_to_string(file).unwrap();
    let changed = text.replacen("\"insufficient_scope\":1", "\"insufficient_scope\":2", 1);
    assert_ne!(changed, text);
    drop(text);
    std::fs::write(file, changed).unwrap();
    let (_, code, out) = peak_kib(&["audit", "verify-bundle", file, "--public-key", key]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("MODIFIED"), "{out}");
}
