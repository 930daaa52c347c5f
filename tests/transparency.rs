//! Transparency (docs/audit.md, "The global tree and its tiles"): an
//! independent verifier written in Go (tests/go/verify, built from Debian's
//! golang-go and golang-golang-x-mod-dev, nothing downloaded) checks the
//! real server's checkpoints, proofs and C2SP tiles over HTTP; the global
//! tree's tiles hold nothing but hashes; the audit origin's default and the
//! upgrade from the legacy origin.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::live::{Live, TOKEN, request};
use crate::util::{Data, bin};

/// Debian's x/mod sources, which GOPATH mode reads.
const GOPATH: &str = "/usr/share/gocode";
const INSTALL: &str = "apt-get install -y golang-go golang-golang-x-mod-dev (scripts/test and \
                       .ci/run install them)";

/// Builds tests/go/verify once, offline (GOPATH mode, GOPROXY off).
fn go_verifier() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let go = Command::new("go").arg("version").output();
        assert!(
            go.as_ref().is_ok_and(|o| o.status.success()),
            "Go is needed for the independent verifier and is not installed: {INSTALL}"
        );
        assert!(
            Path::new(GOPATH)
                .join("src/golang.org/x/mod/sumdb/tlog")
                .is_dir(),
            "golang.org/x/mod is not in {GOPATH}: {INSTALL}"
        );
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-verify");
        std::fs::create_dir_all(&target).unwrap();
        let out = target.join("verify");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/verify"))
            .env("GOPATH", GOPATH)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOCACHE", target.join("cache"))
            .output()
            .expect("go runs");
        assert!(
            built.status.success(),
            "building tests/go/verify failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Runs the Go verifier against `addr` with `key`; (success, stdout+stderr).
fn run_verifier(addr: &str, key: &str, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(go_verifier());
    cmd.arg("-url")
        .arg(format!("http://{addr}"))
        .args(args)
        .env("KEYLEDGER_API_KEY", key)
        .env_remove("KEYLEDGER_OPERATOR_TOKEN");
    if let Some(t) = token {
        cmd.env("KEYLEDGER_OPERATOR_TOKEN", t);
    }
    let out = cmd.output().expect("the verifier runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn operator() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// Mints a key through the operator route; its JSON.
fn mint(addr: &str, tenant: &str, body: Value) -> Value {
    let (h, v) = operator();
    let r = request(
        addr,
        "POST",
        &format!("/v1/admin/tenants/{tenant}/keys"),
        &[(h, &v)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn get(addr: &str, path: &str, credential: Option<&str>) -> crate::live::Resp {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    request(addr, "GET", path, &headers, None).unwrap()
}

/// An auditor's key for `tenant`.
fn auditor(addr: &str, tenant: &str) -> String {
    let k = mint(
        addr,
        tenant,
        json!({"user": "auditor", "name": "audit", "scopes": ["audit:read"]}),
    );
    k["key"].as_str().unwrap().to_owned()
}

/// Creates 300 events in three tenants: more than 256, so there are full
/// and partial level-0 tiles and a level-1 tile.
fn three_hundred_events(addr: &str) {
    for i in 0..300 {
        let tenant = ["acme", "globex", "initech"][i % 3];
        mint(addr, tenant, json!({"user": format!("u{i}"), "name": "k"}));
    }
}

/// With `--tiles-public`, an auditor's API key is all the Go verifier
/// needs: the checkpoints open with the API's verifier keys, the proofs
/// check, tiles over HTTP give the same proof, and every alteration is
/// rejected; later, an older global checkpoint is consistent with the new.
#[test]
fn the_go_verifier_checks_checkpoints_proofs_and_tiles_and_rejects_altered_ones() {
    let verifier = go_verifier();
    assert!(verifier.exists());
    let d = Data::new();
    let live = Live::start_with(&d.path(), 0, "warn", &["--tiles-public"]);
    let addr = live.addr.clone();
    three_hundred_events(&addr);
    let key = auditor(&addr, "acme");

    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.note");
    let old = old.to_str().unwrap();
    let (passed, out) = run_verifier(&addr, &key, None, &["-save", old]);
    assert!(passed, "{out}");
    assert!(out.contains("VERIFIED"), "{out}");
    for rejected in [
        "altered tenant checkpoint is rejected",
        "altered global checkpoint is rejected",
        "altered checkpoint of another log",
        "altered served global inclusion proof is rejected",
        "altered level-0 tile is rejected",
        "altered level-1 tile is rejected",
        "altered entry is rejected",
    ] {
        assert!(out.contains(rejected), "{rejected}: {out}");
    }

    // The log grows; the older global checkpoint is consistent with the new.
    for i in 0..20 {
        mint(
            &addr,
            "globex",
            json!({"user": format!("v{i}"), "name": "k"}),
        );
    }
    let (passed, out) = run_verifier(&addr, &key, None, &["-old", old]);
    assert!(passed, "{out}");
    assert!(out.contains("-> "), "{out}");

    // An older checkpoint that was altered is refused.
    let note = std::fs::read_to_string(old).unwrap();
    let mut lines: Vec<String> = note.split('\n').map(str::to_owned).collect();
    let size: u64 = lines[1].parse().unwrap();
    lines[1] = (size - 1).to_string();
    std::fs::write(old, lines.join("\n")).unwrap();
    let (passed, out) = run_verifier(&addr, &key, None, &["-old", old]);
    assert!(!passed, "an altered older checkpoint passed: {out}");
    live.stop();
}

/// By default the global tree is the operator's: its tiles and checkpoint
/// take the operator token, and an API key's tenant checkpoint comes
/// without its global inclusion (whose index is a global log position).
/// With the operator token (in the tenant), the Go verifier passes.
#[test]
fn without_tiles_public_the_global_tree_is_the_operators() {
    go_verifier();
    let d = Data::new();
    let live = Live::start_with(&d.path(), 0, "warn", &[]);
    let addr = live.addr.clone();
    three_hundred_events(&addr);
    let key = auditor(&addr, "acme");
    for path in [
        "/log/checkpoint",
        "/log/tile/0/000",
        "/log/tile/entries/000",
    ] {
        for credential in [None, Some(key.as_str())] {
            let r = get(&addr, path, credential);
            assert_eq!(r.status, 401, "{path}: {}", r.text());
            assert_eq!(r.code(), "invalid_operator_token");
        }
        assert_eq!(get(&addr, path, Some(TOKEN)).status, 200, "{path}");
    }
    let cp = get(&addr, "/v1/audit/checkpoint", Some(&key)).json();
    assert!(cp["note"].is_string() && cp.get("global").is_none(), "{cp}");
    let (passed, out) = run_verifier(&addr, &key, Some(TOKEN), &[]);
    assert!(
        !passed && out.contains("without its global inclusion"),
        "{out}"
    );

    let (passed, out) = run_verifier(&addr, TOKEN, Some(TOKEN), &["-tenant", "acme"]);
    assert!(passed, "{out}");
    assert!(out.contains("VERIFIED"), "{out}");
    live.stop();
}

/// Every byte of every tile and entry bundle of the global tree, with
/// `--tiles-public` (no credential): hashes only. No tenant name, user id,
/// key id, key name or secret appears, each entry is 32 bytes, and each
/// level-0 hash is the RFC 6962 leaf hash of its entry.
#[test]
fn the_global_tiles_are_public_on_request_and_expose_nothing_but_hashes() {
    let d = Data::new();
    let live = Live::start_with(&d.path(), 0, "warn", &["--tiles-public"]);
    let addr = live.addr.clone();
    let mut needles: Vec<String> = Vec::new();
    for i in 0..270 {
        let tenant = ["acme-corporation", "globex-industries"][i % 2];
        let user = format!("user-{i}@example.com");
        let name = format!("payments-service-{i}");
        let k = mint(&addr, tenant, json!({"user": user, "name": name}));
        if i % 50 == 0 {
            needles.push(k["id"].as_str().unwrap().to_owned());
            needles.push(k["key"].as_str().unwrap().to_owned());
            needles.push(user);
            needles.push(name);
        }
    }
    needles.push("acme-corporation".into());
    needles.push("globex-industries".into());

    let r = get(&addr, "/log/checkpoint", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let note = r.text();
    let size: u64 = note.split('\n').nth(1).unwrap().parse().unwrap();
    assert!(size >= 270, "{note}");
    for n in ["acme-corporation", "globex-industries"] {
        assert!(!note.contains(n), "{note}");
    }

    let mut all = Vec::new();
    let tile = |level: &str, n: u64, w: u64| {
        let path = if w == 256 {
            format!("/log/tile/{level}/{n:03}")
        } else {
            format!("/log/tile/{level}/{n:03}.p/{w}")
        };
        let r = get(&addr, &path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.body
    };
    let mut entries = Vec::new();
    let mut leaves = Vec::new();
    for n in 0..=size / 256 {
        let w = if (n + 1) * 256 <= size {
            256
        } else {
            size % 256
        };
        if w == 0 {
            continue;
        }
        let hashes = tile("0", n, w);
        assert_eq!(hashes.len() as u64, 32 * w);
        let bundle = tile("entries", n, w);
        assert_eq!(bundle.len() as u64, 34 * w, "entries of 32 bytes each");
        for e in bundle.chunks(34) {
            assert_eq!(&e[..2], &[0, 32]);
            entries.push(e[2..].to_vec());
        }
        leaves.extend(hashes.chunks(32).map(<[u8]>::to_vec));
        all.extend_from_slice(&hashes);
        all.extend_from_slice(&bundle);
    }
    all.extend_from_slice(&tile("1", 0, size / 256));
    for (e, leaf) in entries.iter().zip(&leaves) {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(e);
        assert_eq!(h.finalize().as_slice(), leaf.as_slice());
    }
    assert_eq!(entries.len() as u64, size);
    for needle in &needles {
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        for form in [needle.clone(), hex.clone(), hex.to_uppercase()] {
            assert!(
                !crate::util::contains(&all, &form),
                "the tiles hold `{form}`"
            );
        }
    }
    // Beyond the tree, and not a tile path: 404 in the error format.
    for path in [
        format!("/log/tile/0/{:03}", size / 256 + 1),
        format!("/log/tile/0/000.p/{}", 300),
        "/log/tile/0/0".to_owned(),
        "/log/tile/00/000".to_owned(),
        "/log/tile/entries/x000/001".to_owned(),
    ] {
        let r = get(&addr, &path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.code(), "not_found", "{path}");
    }
    // Counted under the documented route.
    let metrics = get(&addr, "/metrics", Some(TOKEN)).text();
    for series in [
        r#"route="/log/tile/{path}",status="200"}"#,
        r#"route="/log/tile/{path}",status="404"}"#,
        r#"route="/log/checkpoint",status="200"}"#,
    ] {
        assert!(metrics.contains(series), "{series}");
    }
    live.stop();
}

/// `GET /v1/audit/checkpoints` pages through what the node stored, and the
/// public key comes as C2SP verifier keys of the tenant's and the global
/// origin.
#[test]
fn stored_checkpoints_are_listed_and_the_public_key_is_a_verifier_key() {
    let d = Data::new();
    let live = Live::start_with(&d.path(), 0, "warn", &[]);
    let addr = live.addr.clone();
    let key = auditor(&addr, "acme");
    // One stored checkpoint per growth (debounced by a second).
    let mut sizes = 0;
    for i in 0..3 {
        mint(&addr, "acme", json!({"user": format!("u{i}"), "name": "k"}));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let page = get(&addr, "/v1/audit/checkpoints?limit=1000", Some(&key)).json();
            let n = page["checkpoints"].as_array().unwrap().len();
            if n > sizes {
                sizes = n;
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no checkpoint stored");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let all = get(&addr, "/v1/audit/checkpoints", Some(&key)).json();
    let all = all["checkpoints"].as_array().unwrap().clone();
    assert!(all.len() >= 3, "{all:?}");
    assert!(all.iter().all(|c| c["origin"] == "keyledger/acme"));
    // Page by page, the same list.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/audit/checkpoints?limit=1{cursor}");
        let page = get(&addr, &path, Some(&key)).json();
        paged.extend(page["checkpoints"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let second = all[1]["size"].as_u64().unwrap();
    let from = get(
        &addr,
        &format!("/v1/audit/checkpoints?from={second}&to={second}"),
        Some(&key),
    )
    .json();
    let from = from["checkpoints"].as_array().unwrap();
    assert!(!from.is_empty() && from.iter().all(|c| c["size"] == second));
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?cursor=x",
        "?cursor=c",
        "?from=3&to=2",
    ] {
        let r = get(&addr, &format!("/v1/audit/checkpoints{bad}"), Some(&key));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    let pk = get(&addr, "/v1/audit/public-key", Some(&key)).json();
    assert_eq!(pk["origin"], "keyledger/acme");
    assert_eq!(pk["global_origin"], "keyledger");
    let vk = pk["verifier_key"].as_str().unwrap();
    let parts: Vec<&str> = vk.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3, "{vk}");
    assert_eq!(parts[0], "keyledger/acme");
    assert_eq!(parts[1].len(), 8);
    assert!(
        pk["global_verifier_key"]
            .as_str()
            .unwrap()
            .starts_with("keyledger+")
    );
    live.stop();
}

/// Without `--audit-origin`, checkpoints are signed under `<host
/// name>/log/<tenant>`; a data directory whose checkpoints were signed
/// under the legacy `keyledger/<tenant>` still opens, and its bundles still
/// verify, after the origin changed.
#[test]
fn the_origin_defaults_to_the_host_name_and_legacy_checkpoints_still_verify() {
    let d = Data::new();
    // Signed under the legacy origin first (the test helpers' default).
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "a",
    ]);
    let legacy = d.json(&["audit", "checkpoint", "--tenant", "acme"]);
    assert_eq!(legacy["origin"], "keyledger/acme", "{legacy}");

    let run = |args: &[&str], origin: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.arg("--data")
            .arg(d.path())
            .args(args)
            .env_remove("KEYLEDGER_AUDIT_ORIGIN")
            .env_remove("KEYLEDGER_TENANT");
        if let Some(o) = origin {
            cmd.arg("--audit-origin").arg(o);
        }
        cmd.output().unwrap()
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let out = run(&["--json", "audit", "checkpoint", "--tenant", "acme"], None);
    assert!(out.status.success(), "{out:?}");
    let now: Value = serde_json::from_slice(&out.stdout).unwrap();
    let origin = now["origin"].as_str().unwrap();
    assert!(origin.ends_with("/log/acme"), "{origin}");
    if !host.is_empty() && !host.contains(['/', ' ']) {
        assert_eq!(origin, format!("{host}/log/acme"));
    }

    // Configured: the new origin; the key's events since verify in a bundle.
    let out = run(
        &[
            "keys", "create", "--tenant", "acme", "--user", "bob", "--name", "b",
        ],
        Some("ledger.example.com/audit"),
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        &["--json", "audit", "checkpoint", "--tenant", "acme"],
        Some("ledger.example.com/audit"),
    );
    let now: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(now["origin"], "ledger.example.com/audit/acme");
    for bad in ["https://x/log", "x/", "a b", "x/~y"] {
        let out = run(&["audit", "checkpoint", "--tenant", "acme"], Some(bad));
        assert!(!out.status.success(), "{bad}");
    }
    let out = run(
        &[
            "--checkpoint-interval",
            "0s",
            "audit",
            "checkpoint",
            "--tenant",
            "acme",
        ],
        None,
    );
    assert!(!out.status.success(), "an interval of 0 was taken");
    for good in ["15m", "2h", "90"] {
        let out = run(
            &[
                "--checkpoint-interval",
                good,
                "audit",
                "checkpoint",
                "--tenant",
                "acme",
            ],
            None,
        );
        assert!(out.status.success(), "{good}: {out:?}");
    }
    // The stored checkpoints of both origins still open (the ledger opens
    // with them checked) and a bundle over the whole log verifies.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    let out = run(
        &[
            "audit",
            "bundle",
            "--tenant",
            "acme",
            "--output",
            file.to_str().unwrap(),
        ],
        Some("ledger.example.com/audit"),
    );
    assert!(out.status.success(), "{out:?}");
    let stored = std::fs::read_to_string(d.path().join("checkpoints/acme.jsonl")).unwrap();
    assert!(stored.contains("keyledger/acme\\n"), "{stored}");
    assert!(
        stored.contains("ledger.example.com/audit/acme\\n"),
        "{stored}"
    );
    let out = Command::new(bin())
        .args(["audit", "verify-bundle"])
        .arg(&file)
        .arg("--public-key")
        .arg(d.path().join("audit-signing.pub"))
        .env_remove("KEYLEDGER_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
