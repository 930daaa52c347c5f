//! Leak response, black box: `keyledger scan` finds a key pasted into a
//! file of a git repository (and nothing in `.git`, behind a symbolic link,
//! in a binary file, nor a string with a key's prefix and a bad checksum),
//! `--report` revokes it through `POST /v1/keys/leaked`, and the trail
//! shows `KeyLeaked` then `KeyRevoked` (reason `compromised`). A reporter
//! learns only counts; a secret-scanning partner's signed report is
//! accepted, a badly signed one refused. docs/security.md's regular
//! expression matches keys and rejects near-misses.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::live::{Live, TOKEN, request, request_on, unknown_key};
use crate::util::{Data, bin};

/// Mints a key for `user` of `tenant` through the operator route.
fn mint(live: &Live, tenant: &str, user: &str) -> (String, String) {
    let operator = format!("Bearer {TOKEN}");
    let r = request(
        &live.addr,
        "POST",
        &format!("/v1/admin/tenants/{tenant}/keys"),
        &[("Authorization", &operator)],
        Some(&json!({"user": user, "name": format!("{user}'s key")})),
    )
    .expect("mint");
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// What `POST /v1/verify` says of `key`.
fn verdict(live: &Live, key: &str) -> Value {
    request(
        &live.addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({ "key": key })),
    )
    .expect("verify")
    .json()
}

/// The tenant's trail events about `key_id`, as the operator reads them.
fn trail(live: &Live, tenant: &str, key_id: &str) -> Vec<Value> {
    let operator = format!("Bearer {TOKEN}");
    let r = request(
        &live.addr,
        "GET",
        &format!("/v1/audit?key_id={key_id}"),
        &[("Authorization", &operator), ("Keyledger-Tenant", tenant)],
        None,
    )
    .expect("audit");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `klk_` and 49 base62 characters whose last six are not the checksum.
fn bad_checksum(n: u64) -> String {
    let good = unknown_key(n);
    let (body, sum) = good.split_at(good.len() - 6);
    let changed: String = sum
        .chars()
        .map(|c| if c == 'z' { 'y' } else { 'z' })
        .collect();
    let bad = format!("{body}{changed}");
    assert!(keyledger_core::secret::check(&bad).is_err());
    bad
}

/// Runs `keyledger <args>` with no data directory nor login around.
fn keyledger(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("KEYLEDGER_URL")
        .env_remove("KEYLEDGER_API_KEY")
        .env_remove("KEYLEDGER_KEY_PREFIX")
        .env_remove("KEYLEDGER_OPERATOR_TOKEN")
        .output()
        .expect("the binary runs")
}

#[test]
fn a_key_pasted_in_a_git_repository_is_found_reported_and_revoked() {
    let data = Data::new();
    let live = Live::start(&data.path(), 50);
    let (leaked, leaked_id) = mint(&live, "acme", "alice");
    let (bystander, _) = mint(&live, "acme", "alice");
    // The reporter is a key of another tenant: it learns only counts.
    let (reporter, _) = mint(&live, "globex", "bob");

    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q"]);
    let fake = bad_checksum(1);
    std::fs::write(
        repo.join("src/settings.py"),
        format!("DEBUG = True\n# the client\nAPI_KEY = \"{leaked}\"\nOTHER = \"{fake}\"\n"),
    )
    .unwrap();
    std::fs::write(repo.join("notes.md"), format!("a near miss: {fake}\n")).unwrap();
    // Skipped: a binary file, a file behind a symbolic link, `.git` itself.
    let mut binary = b"\x00\x01binary ".to_vec();
    binary.extend_from_slice(bystander.as_bytes());
    std::fs::write(repo.join("blob.bin"), binary).unwrap();
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, format!("{bystander}\n")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, repo.join("linked.txt")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "settings"]);
    std::fs::write(repo.join(".git/notes.txt"), format!("{bystander}\n")).unwrap();

    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let repo_arg = repo.to_str().unwrap();

    // Found, masked, with its file and line; exit code 1.
    let out = keyledger(&home, &["scan", repo_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let masked = keyledger_core::secret::mask(&leaked);
    assert!(
        stdout.contains(&format!("settings.py:3:12: {masked}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 key found in 2 files scanned"),
        "{stdout}"
    );
    assert!(!stdout.contains(&leaked[4..]), "the key is printed whole");
    assert!(!stdout.contains(&fake[..12]), "a bad checksum was found");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("linked.txt: a symbolic link"), "{stderr}");

    // Nothing found: exit code 0.
    let clean = tmp.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::write(clean.join("a.txt"), format!("{fake}\n")).unwrap();
    let out = keyledger(&home, &["scan", clean.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));

    // Reported: the server answers how many it found, and revokes it.
    let url = format!("http://{}", live.addr);
    let report = |args: &[&str]| {
        let mut all = vec![
            "--url", &url, "--key", &reporter, "--json", "scan", "--report",
        ];
        all.extend_from_slice(args);
        let out = keyledger(&home, &all);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let body = report(&[repo_arg]);
    assert_eq!(body["findings"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["findings"][0]["line"], 3);
    assert_eq!(body["findings"][0]["key"], masked.as_str());
    assert_eq!(body["reported"], json!({"reported": 1, "found": 1}));
    let v = verdict(&live, &leaked);
    assert_eq!(
        (v["valid"].as_bool(), v["outcome"].as_str()),
        (Some(false), Some("revoked")),
        "{v}"
    );
    assert_eq!(verdict(&live, &bystander)["valid"], true);

    // The trail: KeyLeaked (where, by whom) then KeyRevoked, compromised,
    // at the same instant, by the system (the reporter is another tenant's).
    let events = trail(&live, "acme", &leaked_id);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["KeyCreated", "KeyLeaked", "KeyRevoked"],
        "{events:?}"
    );
    let (leak, revoke) = (&events[1], &events[2]);
    assert_eq!(leak["details"]["source"], "keyledger scan");
    assert_eq!(leak["details"]["reported_by"], "other_tenant");
    assert_eq!(leak["actor"]["type"], revoke["actor"]["type"]);
    assert_eq!(revoke["details"]["reason"], "compromised");
    assert_eq!(leak["at"], revoke["at"]);
    assert_eq!(revoke["seq"].as_u64(), leak["seq"].as_u64().map(|s| s + 1));

    // Reported again: still found (it is a key here), nothing changes.
    let body = report(&[repo_arg]);
    assert_eq!(body["reported"], json!({"reported": 1, "found": 1}));
    assert_eq!(trail(&live, "acme", &leaked_id).len(), 3);

    // The answer is the same shape whatever is found, and names no tenant
    // nor key: a key of another tenant, an unknown key and junk.
    let auth = format!("Bearer {reporter}");
    let ask = |secrets: Value| {
        let r = request(
            &live.addr,
            "POST",
            "/v1/keys/leaked",
            &[("Authorization", &auth)],
            Some(&json!({ "secrets": secrets, "url": "https://paste.example/1" })),
        )
        .expect("report");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let a = ask(json!([bystander, unknown_key(9), "not a key", fake]));
    assert_eq!(a, json!({"reported": 4, "found": 1}));
    let text = a.to_string();
    assert!(!text.contains("acme") && !text.contains("key_"), "{text}");
    assert_eq!(
        ask(json!([unknown_key(10), "junk"])),
        json!({"reported": 2, "found": 0})
    );
    assert_eq!(verdict(&live, &bystander)["outcome"], "revoked");
    live.stop();
}

/// A P-256 key made from a seed (the test's own, never the OS's randomness).
fn partner_key(seed: &str) -> SigningKey {
    let bytes = sha2::Sha256::digest(seed.as_bytes());
    SigningKey::from_slice(&bytes).expect("a scalar")
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let signature: DerSignature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
}

#[test]
fn a_partners_signed_report_is_accepted_and_a_badly_signed_one_refused() {
    let data = Data::new();
    let partner = partner_key("the partner of the leak test");
    let stranger = partner_key("not a partner");
    std::fs::create_dir_all(data.path().with_extension("keys")).unwrap();
    let pem_path = data.path().with_extension("keys").join("github.pem");
    let pem = partner
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&pem_path, pem).unwrap();
    let spec = format!("github={}", pem_path.display());
    let live = Live::start_with(&data.path(), 50, "info", &["--leak-partner", &spec]);
    let (key, key_id) = mint(&live, "acme", "alice");
    let (other, _) = mint(&live, "acme", "carol");

    let send = |body: &str, headers: &[(&str, &str)]| {
        let conn = std::net::TcpStream::connect(&live.addr).unwrap();
        request_on(
            conn,
            &live.addr,
            "POST",
            "/v1/keys/leaked",
            headers,
            Some(body),
        )
        .unwrap()
    };
    // GitHub's partner body, signed over its raw bytes.
    let body = json!([
        {"token": key, "type": "keyledger_api_key",
         "url": "https://github.com/octo/app/blob/abc/config.py", "source": "content"},
        {"token": "klk_not_really", "type": "keyledger_api_key", "url": "", "source": "commit"},
    ])
    .to_string();
    let signed = [
        ("Github-Public-Key-Identifier", "any-identifier"),
        (
            "Github-Public-Key-Signature",
            &sign(&partner, body.as_bytes()),
        ),
    ];
    // Badly signed: another body's signature, or a key not configured.
    let other_body =
        json!([{"token": other, "type": "t", "url": "", "source": "content"}]).to_string();
    for bad in [
        sign(&partner, body.as_bytes()),
        sign(&stranger, other_body.as_bytes()),
        "bm90IGEgc2lnbmF0dXJl".to_owned(),
        "%%%".to_owned(),
    ] {
        let r = send(
            &other_body,
            &[
                ("Github-Public-Key-Identifier", "x"),
                ("Github-Public-Key-Signature", &bad),
            ],
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_signature"),
            "{}",
            r.text()
        );
    }
    // No credential and no signature.
    let r = send(&other_body, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        verdict(&live, &other)["valid"],
        true,
        "a refused report changed something"
    );

    let r = send(&body, &signed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"reported": 2, "found": 1}));
    assert_eq!(verdict(&live, &key)["outcome"], "revoked");
    let events = trail(&live, "acme", &key_id);
    let leak = &events[1];
    assert_eq!(leak["type"], "KeyLeaked");
    assert_eq!(leak["details"]["reported_by"], "partner:github");
    assert_eq!(leak["details"]["source"], "content");
    assert_eq!(
        leak["details"]["url"],
        "https://github.com/octo/app/blob/abc/config.py"
    );
    assert_eq!(events[2]["details"]["reason"], "compromised");

    // Limits: more than 1000 secrets is 400, a body over 1 MiB is 413.
    let operator = format!("Bearer {TOKEN}");
    let many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let r = request(
        &live.addr,
        "POST",
        "/v1/keys/leaked",
        &[("Authorization", &operator)],
        Some(&json!({ "secrets": many })),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "too_many_secrets"),
        "{}",
        r.text()
    );
    let huge = json!({ "secrets": ["x".repeat(1100 * 1024)] });
    let r = request(
        &live.addr,
        "POST",
        "/v1/keys/leaked",
        &[("Authorization", &operator)],
        Some(&huge),
    )
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    // The operator reports without naming a tenant.
    let r = request(
        &live.addr,
        "POST",
        "/v1/keys/leaked",
        &[("Authorization", &operator)],
        Some(&json!({ "secrets": [other], "source": "paste" })),
    )
    .unwrap();
    assert_eq!(r.json(), json!({"reported": 1, "found": 1}));
    assert_eq!(verdict(&live, &other)["outcome"], "revoked");
    live.stop();
}

/// Every regular expression docs/security.md gives for secret scanners
/// (gitleaks', trufflehog's and the plain one: the lines holding
/// `\bklk_`; GitHub's: its secret format between its before and after
/// patterns) matches generated keys, alone and amid text, and none of the
/// near-misses.
#[test]
fn the_documented_pattern_matches_keys_and_rejects_near_misses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    // (the pattern, the capture group that is the key)
    let mut patterns: Vec<(String, usize)> = doc
        .lines()
        .filter_map(|l| {
            let start = l.find(r"\bklk_")?;
            let rest = &l[start..];
            let end = rest.rfind(r"\b").map_or(rest.len(), |e| e + 2);
            Some((rest[..end].to_owned(), 0))
        })
        .collect();
    assert_eq!(
        patterns.len(),
        3,
        "the plain, gitleaks and trufflehog patterns: {patterns:?}"
    );
    let field = |name: &str| {
        doc.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("docs/security.md has no `{name}` line"))
            .to_owned()
    };
    patterns.push((
        format!(
            "(?:{})({})(?:{})",
            field("Before secret:"),
            field("Secret format:"),
            field("After secret:")
        ),
        1,
    ));
    let keys: Vec<String> = (0..50).map(unknown_key).collect();
    for (p, group) in &patterns {
        // ASCII classes and boundaries, as RE2 (gitleaks, trufflehog) and
        // Hyperscan (GitHub) read them.
        let re =
            regex::bytes::Regex::new(&format!("(?-u){p}")).unwrap_or_else(|e| panic!("{p}: {e}"));
        for k in &keys {
            for text in [
                k.clone(),
                format!("API_KEY=\"{k}\"\n"),
                format!("key: {k}, next"),
            ] {
                let m = re
                    .captures(text.as_bytes())
                    .and_then(|c| c.get(*group))
                    .unwrap_or_else(|| panic!("{p} misses {text}"));
                assert_eq!(m.as_bytes(), k.as_bytes());
            }
        }
        let k = &keys[0];
        let near = [
            k[..k.len() - 1].to_owned(),          // one character short
            format!("{k}a"),                      // one too many
            k.replacen("klk_", "KLK_", 1),        // the prefix in capitals
            k.replacen("klk_", "klk-", 1),        // another separator
            k.replacen("klk_", "xklk_", 1),       // a longer prefix
            format!("my_{k}"),                    // glued to a word
            format!("{}!{}", &k[..20], &k[21..]), // a character outside base62
        ];
        for n in &near {
            assert!(!re.is_match(n.as_bytes()), "{p} matches the near-miss {n}");
        }
    }
}
