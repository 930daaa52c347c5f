//! Audit evidence at scale: one tenant with `KEYLEDGER_BENCH_EVENTS` events
//! (default 1,000,000). Prints a Markdown table of times and sizes:
//!
//! * two baselines measured in the same run: one RFC 6962 node hash
//!   (SHA-256 of 65 bytes), and parsing a bundle's JSON Lines with nothing
//!   checked; figures are also given as multiples of them;
//! * building the tenant's Merkle tree (timed on its own, and set against
//!   the whole replay that builds it at open);
//! * inclusion and consistency proof generation and verification at the
//!   full size (median of many);
//! * signing and verifying a checkpoint;
//! * building, serializing and verifying a bundle of the last 1,000 events
//!   and of the whole trail.
//!
//! One-shot figures, not a criterion run: a whole-trail bundle takes
//! seconds, and these machines are shared and noisy.
//!
//! Run: `cargo bench --bench audit`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_audit::merkle::{self, Tree};
use keyledger_core::TenantId;
use keyledger_runtime::{AuditConfig, Config, Keyledger, UsageWindow};
use keyledger_store::{EventLog, MemoryLog};

fn main() {
    let n: usize = std::env::var("KEYLEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = Arc::new(MemoryLog::new());
    common::fill(log.as_ref(), n);
    let tenant: TenantId = "acme".parse().expect("tenant");

    // Rows: workload, keyledger, the same run's baseline.
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Baseline 1: one RFC 6962 node hash (SHA-256 of 65 bytes).
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut h = a;
        for _ in 0..1000 {
            h = merkle::node_hash(&h, &b);
        }
        std::hint::black_box(h);
        times.push(t.elapsed() / 1000);
    }
    let sha = median(&mut times);
    rows.push((
        "baseline: one node hash, SHA-256(0x01 ‖ 32 B ‖ 32 B) (median of 200×1000)".into(),
        format!("{:.0} ns", sha.as_secs_f64() * 1e9),
        "1×".into(),
    ));

    // The tree on its own: what replay adds per event.
    let raw = log.read_tenant_raw(&tenant, 0, n).expect("read");
    let start = Instant::now();
    let mut tree = Tree::new();
    for r in &raw {
        tree.push_leaf_hash(merkle::leaf_hash(&r.hash));
    }
    let built = start.elapsed();
    drop(raw);

    let (ledger, opened) = rt.block_on(async {
        let config = Config {
            usage_window: UsageWindow::Manual,
            audit: Some(AuditConfig::in_dir(dir.path())),
            ..Config::default()
        };
        let start = Instant::now();
        let l = Keyledger::open(log.clone(), config).expect("open");
        (l, start.elapsed())
    });
    rows.push((
        format!("build the tree of {n} events (leaf + node hashing)"),
        format!("{} ({:.0} ns/event)", ms(built), per(built, n)),
        format!(
            "{:.1} SHA-256/event; {:.0}% of the whole replay ({})",
            per(built, n) / (sha.as_secs_f64() * 1e9),
            100.0 * built.as_secs_f64() / opened.as_secs_f64(),
            ms(opened)
        ),
    ));
    rows.push((
        "tree memory".into(),
        format!("64 B/event ({} MB)", 64 * n / 1_000_000),
        String::new(),
    ));
    assert_eq!(ledger.tree_size(&tenant), n as u64);
    let size = n as u64;
    // One stored checkpoint, as the background task would have written:
    // bundles carry it with a consistency proof.
    assert_eq!(ledger.write_checkpoints().expect("checkpoint"), 1);
    let ratio = |d: Duration| format!("{:.0}×", d.as_secs_f64() / sha.as_secs_f64());

    // Proofs at full size, median of many.
    let samples = 2000u64;
    times.clear();
    let mut proof_len = 0;
    for i in 0..samples {
        let seq = 1 + (i * 7_919) % size;
        let t = Instant::now();
        let p = ledger
            .inclusion_proof(&tenant, seq, size)
            .expect("inclusion");
        times.push(t.elapsed());
        proof_len = p.proof.len();
    }
    let m = median(&mut times);
    rows.push((
        format!("inclusion proof at size {n} (median of {samples})"),
        format!("{} µs; {} hashes = {} B", us(m), proof_len, proof_len * 32),
        ratio(m),
    ));
    let root = tree.root(size).expect("root");
    let index = size / 3;
    let proof = tree.inclusion_proof(index, size).expect("proof");
    let leaf = tree.leaf(index).expect("leaf");
    times.clear();
    for _ in 0..samples {
        let t = Instant::now();
        merkle::verify_inclusion(index, size, &leaf, &proof, &root).expect("verifies");
        times.push(t.elapsed());
    }
    let m = median(&mut times);
    rows.push((
        "verify an inclusion proof".into(),
        format!("{} µs", us(m)),
        ratio(m),
    ));
    times.clear();
    proof_len = 0;
    for i in 0..samples {
        let old = 1 + (i * 104_729) % (size - 1);
        let t = Instant::now();
        let p = ledger
            .consistency_proof(&tenant, old, size)
            .expect("consistency");
        times.push(t.elapsed());
        proof_len = proof_len.max(p.proof.len());
    }
    let m = median(&mut times);
    rows.push((
        format!("consistency proof to size {n} (median of {samples})"),
        format!(
            "{} µs; at most {} hashes = {} B",
            us(m),
            proof_len,
            proof_len * 32
        ),
        ratio(m),
    ));
    let old = size / 3;
    let cproof = tree.consistency_proof(old, size).expect("proof");
    let old_root = tree.root(old).expect("root");
    times.clear();
    for _ in 0..samples {
        let t = Instant::now();
        merkle::verify_consistency(old, size, &old_root, &root, &cproof).expect("verifies");
        times.push(t.elapsed());
    }
    let m = median(&mut times);
    rows.push((
        "verify a consistency proof".into(),
        format!("{} µs", us(m)),
        ratio(m),
    ));
    times.clear();
    let mut note = String::new();
    for _ in 0..200 {
        let t = Instant::now();
        note = ledger.checkpoint(&tenant).expect("checkpoint").note;
        times.push(t.elapsed());
    }
    let m = median(&mut times);
    rows.push((
        "sign a checkpoint (root + Ed25519)".into(),
        format!("{} µs; {} B note", us(m), note.len()),
        ratio(m),
    ));
    let key = ledger.audit_public_key().expect("a key");
    times.clear();
    for _ in 0..200 {
        let t = Instant::now();
        keyledger_audit::checkpoint::open(&note, &key).expect("verifies");
        times.push(t.elapsed());
    }
    let m = median(&mut times);
    rows.push((
        "verify a checkpoint (`verify_strict`)".into(),
        format!("{} µs", us(m)),
        ratio(m),
    ));

    for (label, from) in [
        ("the last 1,000 events", size.saturating_sub(999).max(1)),
        ("the whole trail", 1),
    ] {
        let t = Instant::now();
        let bundle = ledger.bundle(&tenant, from, size).expect("bundle");
        let bytes = bundle.to_jsonl();
        let made = t.elapsed();
        let proofs = (
            bundle.header.range_proof.len(),
            bundle.header.inclusion_proofs.len(),
            bundle.header.earlier_checkpoints.len(),
        );
        drop(bundle);
        // Baseline 2: parsing the same file's lines as JSON, nothing checked.
        let t = Instant::now();
        let parsed = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("json"))
            .fold(0, |n, v| {
                std::hint::black_box(v);
                n + 1
            });
        let parse = t.elapsed();
        assert_eq!(parsed as u64, size - from + 2);
        let t = Instant::now();
        let report = keyledger_runtime::verify_bundle(&bytes, &key);
        let checked = t.elapsed();
        assert!(report.ok(), "{:?}", report.problems.first());
        rows.push((
            format!("bundle of {label}: build + write"),
            format!(
                "{}; {:.1} MB ({:.0} B/event): range proof {} hashes, {} inclusion proofs, {} earlier checkpoints",
                ms(made),
                bytes.len() as f64 / 1e6,
                bytes.len() as f64 / (size - from + 1) as f64,
                proofs.0,
                proofs.1,
                proofs.2
            ),
            String::new(),
        ));
        rows.push((
            format!("bundle of {label}: verify offline"),
            format!(
                "{} ({:.1} µs/event)",
                ms(checked),
                checked.as_secs_f64() * 1e6 / report.events as f64,
            ),
            format!(
                "{:.1}× parsing the file's JSON alone ({})",
                checked.as_secs_f64() / parse.as_secs_f64(),
                ms(parse)
            ),
        ));
    }
    rt.block_on(ledger.shutdown()).expect("shutdown");

    println!("| workload ({n} events, one tenant) | keyledger | against the same run's baseline |");
    println!("|---|---|---|");
    for (w, f, b) in rows {
        println!("| {w} | {f} | {b} |");
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}
