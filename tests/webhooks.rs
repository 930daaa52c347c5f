//! Webhooks end to end: the real binary delivers to a real receiver
//! (tests/webhook_receiver.py) that checks every signature with
//! `standardwebhooks`, the Standard Webhooks authors' library from PyPI.
//! The receiver's venv is made by `scripts/webhook-receiver-venv`; without
//! it these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::live::{Live, TOKEN, request};
use crate::util::{Data, contains, files};

/// The venv's Python, or a failure that names the command that makes it.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("target/webhooks-venv/bin/python");
    assert!(
        py.exists(),
        "the webhook receiver's venv is missing ({}): run scripts/webhook-receiver-venv",
        py.display()
    );
    py
}

/// A running receiver.
pub(crate) struct Receiver {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    pub(crate) fn start(fail_first: u32, delay_s: f64) -> Receiver {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let child = Command::new(python())
            .arg(script)
            .arg("--port-file")
            .arg(dir.path().join("port"))
            .arg("--secret-file")
            .arg(dir.path().join("secret"))
            .arg("--out")
            .arg(dir.path().join("requests.jsonl"))
            .args(["--fail-first", &fail_first.to_string()])
            .args(["--delay", &delay_s.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"))
            .spawn()
            .expect("the receiver starts");
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().expect("a port");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the receiver did not start: {}",
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Receiver { child, dir, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub(crate) fn set_secret(&self, secret: &str) {
        std::fs::write(self.dir.path().join("secret"), secret).expect("the secret file");
    }

    /// Every request received so far.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits until `done` holds for the requests, or fails after a minute.
    pub(crate) fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let r = self.requests();
            if done(&r) {
                return r;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; received: {r:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn operator() -> String {
    format!("Bearer {TOKEN}")
}

/// A key of `tenant` for `user` with `scopes`.
pub(crate) fn mint(live: &Live, tenant: &str, user: &str, scopes: &[&str]) -> (String, String) {
    let auth = operator();
    let r = request(
        &live.addr,
        "POST",
        &format!("/v1/admin/tenants/{tenant}/keys"),
        &[("Authorization", &auth)],
        Some(&json!({"user": user, "name": format!("{user} key"), "scopes": scopes})),
    )
    .expect("mint");
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

fn call(live: &Live, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let r = request(
        &live.addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_ref(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// Subscribes `url`; the answer's body.
pub(crate) fn subscribe(live: &Live, key: &str, url: &str, types: &[&str]) -> Value {
    let (status, v) = call(
        live,
        key,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "event_types": types, "description": "test receiver"})),
    );
    assert_eq!(status, 201, "{v}");
    v
}

const ALL_TYPES: [&str; 4] = ["key.created", "key.revoked", "key.rotated", "user.removed"];

const MANAGE: [&str; 3] = ["keys:read", "keys:write", "webhooks:manage"];

/// The distinct message ids in the order they first arrived.
fn first_arrivals(reqs: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in reqs {
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn options() -> Vec<&'static str> {
    vec![
        "--webhook-backoff",
        "50ms",
        "--webhook-backoff-max",
        "200ms",
    ]
}

/// A server with `opts` (logs at `log`), alice's key of acme holding
/// `webhooks:manage`, and a receiver (`fail_first`, `delay_s`) subscribed
/// to `types` and given its secret. The subscription's answer is last.
fn setup(
    data: &Data,
    log: &str,
    opts: &[&str],
    fail_first: u32,
    delay_s: f64,
    types: &[&str],
) -> (Live, String, Receiver, Value) {
    let live = Live::start_with(&data.path(), 50, log, opts);
    let (admin, _) = mint(&live, "acme", "alice", &MANAGE);
    let rx = Receiver::start(fail_first, delay_s);
    let made = subscribe(&live, &admin, &rx.url(), types);
    rx.set_secret(made["secret"].as_str().unwrap());
    (live, admin, rx, made)
}

/// An RFC 3339 time `seconds` from now.
fn from_now(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    keyledger_core::Timestamp::from_micros(now + seconds * 1_000_000).to_rfc3339()
}

#[test]
fn deliveries_are_signed_in_log_order_at_least_once_across_a_restart() {
    let data = Data::new();
    let opts = options();
    // Slow enough that deliveries are still pending when the server dies.
    let (live, admin, rx, made) = setup(&data, "info", &opts, 0, 0.15, &ALL_TYPES);
    assert!(
        made["secret"].as_str().unwrap().starts_with("whsec_"),
        "{made}"
    );
    let wh = made["id"].as_str().unwrap().to_owned();

    // Another tenant's events, and one of its own subscriptions elsewhere:
    // none of them may reach this receiver.
    let (other, _) = mint(&live, "globex", "gina", &MANAGE);
    let other_rx = Receiver::start(0, 0.0);
    let other_made = subscribe(&live, &other, &other_rx.url(), &["key.created"]);
    other_rx.set_secret(other_made["secret"].as_str().unwrap());

    let mut expected = Vec::new(); // (type, key id)
    for i in 0..4 {
        let (s, v) = call(
            &live,
            &admin,
            "POST",
            "/v1/keys",
            Some(json!({"name": format!("k{i}")})),
        );
        assert_eq!(s, 201, "{v}");
        expected.push(("key.created", v["id"].as_str().unwrap().to_owned()));
        let (s, _) = call(
            &live,
            &other,
            "POST",
            "/v1/keys",
            Some(json!({"name": "g"})),
        );
        assert_eq!(s, 201);
    }
    let first = expected[0].1.clone();
    let (s, _) = call(
        &live,
        &admin,
        "POST",
        &format!("/v1/keys/{first}/revoke"),
        None,
    );
    assert_eq!(s, 200);
    expected.push(("key.revoked", first));
    // Killed with deliveries still to send (the receiver takes 150 ms each).
    let before_kill = first_arrivals(&rx.requests()).len();
    live.kill();
    assert!(
        before_kill < expected.len(),
        "every notice arrived before the kill: the restart proves nothing"
    );

    let live = Live::start_with(&data.path(), 50, "info", &opts);
    let second = expected[1].1.clone();
    let (s, v) = call(
        &live,
        &admin,
        "POST",
        &format!("/v1/keys/{second}/rotate"),
        None,
    );
    assert_eq!(s, 201, "{v}");
    let new_key = v["id"].as_str().unwrap().to_owned();
    // A rotation without grace: the new key, then the old one revoked.
    expected.push(("key.created", new_key));
    expected.push(("key.revoked", second));
    let auth = operator();
    let r = request(
        &live.addr,
        "DELETE",
        "/v1/users/bob",
        &[("Authorization", &auth), ("Keyledger-Tenant", "acme")],
        None,
    )
    .expect("remove bob");
    assert_eq!(r.status, 200, "{}", r.text());
    expected.push(("user.removed", String::new()));

    let reqs = rx.wait_for("every notice", |r| {
        first_arrivals(r).len() >= expected.len()
    });
    for r in &reqs {
        assert_eq!(r["verified"], true, "a delivery failed verification: {r}");
        assert_eq!(r["payload"]["data"]["tenant_id"], "acme", "{r}");
    }
    let order = first_arrivals(&reqs);
    assert_eq!(order.len(), expected.len(), "{reqs:#?}");
    // The first arrival of each message is in log order.
    let payload_of = |id: &str| {
        reqs.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["payload"].clone())
            .unwrap()
    };
    let mut seqs = Vec::new();
    for (id, (ty, key)) in order.iter().zip(&expected) {
        let p = payload_of(id);
        assert_eq!(p["type"], *ty, "{p}");
        if !key.is_empty() {
            assert_eq!(p["data"]["key_id"], key.as_str(), "{p}");
        }
        seqs.push(
            id.rsplit('_')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap(),
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {order:?}"
    );
    // The deliveries list shows them all delivered, with their attempts.
    let list = settled_deliveries(&live, &admin, &wh, expected.len());
    let ds = list["deliveries"].as_array().unwrap();
    assert_eq!(ds.len(), expected.len(), "{list}");
    for d in ds {
        assert_eq!(d["status"], "delivered", "{d}");
        assert!(
            d["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["status_code"] == 200)
        );
    }
    // The other tenant's receiver got its own key.created notices only.
    let others = other_rx.wait_for("globex's notices", |r| first_arrivals(r).len() >= 4);
    for r in &others {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["payload"]["data"]["tenant_id"], "globex", "{r}");
        assert_eq!(r["payload"]["type"], "key.created", "{r}");
    }
    live.stop();
}

/// The webhook's deliveries once `n` of them are listed and none is still
/// pending: the receiver sees an attempt's answer before the server has
/// recorded it, so a list read at once may still say `pending`.
fn settled_deliveries(live: &Live, admin: &str, wh: &str, n: usize) -> Value {
    let started = Instant::now();
    loop {
        let (s, list) = call(
            live,
            admin,
            "GET",
            &format!("/v1/webhooks/{wh}/deliveries"),
            None,
        );
        assert_eq!(s, 200, "{list}");
        let ds = list["deliveries"].as_array().cloned().unwrap_or_default();
        if ds.len() >= n && ds.iter().all(|d| d["status"] != "pending") {
            return list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {n} settled deliveries: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_receiver_failing_three_attempts_gets_the_fourth() {
    let data = Data::new();
    let opts = options();
    let (live, admin, rx, made) = setup(&data, "info", &opts, 3, 0.0, &["key.created"]);
    let wh = made["id"].as_str().unwrap();
    let (s, _) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "x"})),
    );
    assert_eq!(s, 201);
    let reqs = rx.wait_for("four attempts", |r| r.iter().any(|x| x["status"] == 200));
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert!(reqs.iter().all(|r| r["verified"] == true), "{reqs:#?}");
    assert_eq!(
        first_arrivals(&reqs).len(),
        1,
        "one message, the same id each time"
    );
    let list = settled_deliveries(&live, &admin, wh, 1);
    let d = &list["deliveries"][0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempt_count"], 4, "{d}");
    let codes: Vec<Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(
        codes,
        [json!(500), json!(500), json!(500), json!(200)],
        "{d}"
    );
    // A retry by hand sends it once more.
    let id = d["id"].as_str().unwrap();
    let (s, v) = call(
        &live,
        &admin,
        "POST",
        &format!("/v1/webhooks/{wh}/deliveries/{id}/retry"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    rx.wait_for("the replay", |r| r.len() >= 5);
    // The metrics count the attempts by outcome.
    let auth = operator();
    let metrics = request(
        &live.addr,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        None,
    )
    .expect("metrics")
    .text();
    let count = |outcome: &str| -> u64 {
        let prefix = format!("keyledger_webhook_attempts_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in /metrics"))
    };
    assert_eq!(count("http_error"), 3);
    assert!(count("delivered") >= 1);
    live.stop();
}

#[test]
fn webhooks_need_their_scope_and_a_public_or_loopback_target() {
    let data = Data::new();
    let live = Live::start(&data.path(), 50);
    let (admin, _) = mint(&live, "acme", "alice", &MANAGE);
    // A key made without scopes has every scope but users:remove and
    // webhooks:manage.
    let (s, v) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "plain"})),
    );
    assert_eq!(s, 201);
    assert!(!v["scopes"].to_string().contains("webhooks:manage"), "{v}");
    let plain = v["key"].as_str().unwrap().to_owned();
    let (s, v) = call(&live, &plain, "GET", "/v1/webhooks", None);
    assert_eq!(s, 403, "{v}");
    for url in [
        "https://10.0.0.1/hook",
        "https://192.168.1.20/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/hook",
        "https://[fd00::1]/hook",
        "http://93.184.215.14/hook",
        "ftp://example.com/",
    ] {
        let (s, v) = call(
            &live,
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "event_types": ["key.revoked"]})),
        );
        assert_eq!(s, 422, "{url}: {v}");
        assert_eq!(v["error"]["code"], "webhook_url_refused", "{url}: {v}");
    }
    let (s, v) = call(
        &live,
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["key.nope"]})),
    );
    assert_eq!(s, 422, "{v}");
    // Nothing was subscribed.
    let (s, v) = call(&live, &admin, "GET", "/v1/webhooks", None);
    assert_eq!(s, 200);
    assert_eq!(v["data"], json!([]), "{v}");
    live.stop();
    // The operator can allow private targets.
    let live = Live::start_with(&data.path(), 50, "info", &["--webhook-allow-private"]);
    let (s, v) = call(
        &live,
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": "https://10.0.0.1/hook", "event_types": ["key.revoked"]})),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    let (s, _) = call(&live, &admin, "DELETE", &format!("/v1/webhooks/{id}"), None);
    assert_eq!(s, 200);
    let (s, v) = call(&live, &admin, "GET", &format!("/v1/webhooks/{id}"), None);
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "webhook_not_found");
    live.stop();
}

#[test]
fn the_signing_secret_is_never_in_the_data_directory_or_the_logs() {
    let data = Data::new();
    let (live, admin, rx, made) = setup(&data, "trace", &options(), 1, 0.0, &["key.created"]);
    let secret = made["secret"].as_str().unwrap().to_owned();
    let (s, _) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "x"})),
    );
    assert_eq!(s, 201);
    rx.wait_for("a delivery", |r| r.iter().any(|x| x["status"] == 200));
    let logs = live.all_logs();
    live.stop();
    let body = secret.trim_start_matches("whsec_").to_owned();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .expect("base64");
    let dir = data.path();
    let mut scanned = 0;
    for f in files(&dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!contains(&bytes, &body), "{} holds the secret", f.display());
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
            "{} holds the secret's bytes",
            f.display()
        );
        scanned += 1;
    }
    assert!(
        scanned >= 3,
        "the data directory holds the log, the store and the root key"
    );
    assert!(!logs.contains(&body), "the log lines hold the secret");
}

#[test]
fn the_cli_manages_subscriptions_offline_and_with_url() {
    let data = Data::new();
    let made = data.json(&[
        "webhooks",
        "create",
        "--tenant",
        "acme",
        "http://127.0.0.1:9/hook",
        "--event",
        "key.revoked",
        "--event",
        "user.removed",
    ]);
    assert!(
        made["secret"].as_str().unwrap().starts_with("whsec_"),
        "{made}"
    );
    let id = made["id"].as_str().unwrap().to_owned();
    let list = data.json(&["webhooks", "list", "--tenant", "acme"]);
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
    assert_eq!(
        list["data"][0]["event_types"],
        json!(["key.revoked", "user.removed"])
    );
    assert!(
        !list.to_string().contains("whsec_"),
        "a list shows no secret: {list}"
    );
    let refused = data.run(&[
        "webhooks",
        "create",
        "--tenant",
        "acme",
        "https://10.1.2.3/",
        "--event",
        "key.revoked",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("10.1.2.3") && stderr.contains("private"),
        "{stderr}"
    );

    let live = Live::start(&data.path(), 50);
    let url = format!("http://{}", live.addr);
    let remote = |args: &[&str]| {
        let out = Command::new(crate::util::bin())
            .args(["--url", &url])
            .args(args)
            .arg("--json")
            .env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
            .env_remove("KEYLEDGER_API_KEY")
            .env("XDG_CONFIG_HOME", data.path().with_extension("config"))
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    };
    let listed = remote(&["webhooks", "list", "--tenant", "acme"]);
    assert_eq!(listed["data"][0]["id"], id.as_str(), "{listed}");
    let deliveries = remote(&["webhooks", "deliveries", "--tenant", "acme", &id]);
    assert_eq!(deliveries["webhook_id"], id.as_str(), "{deliveries}");
    let deleted = remote(&["webhooks", "delete", "--tenant", "acme", &id]);
    assert_eq!(deleted["status"], "deleted", "{deleted}");
    live.stop();
    let list = data.json(&["webhooks", "list", "--tenant", "acme"]);
    assert_eq!(list["data"], json!([]), "{list}");
}

#[test]
fn key_expiring_is_sent_once_per_key_across_a_restart() {
    let data = Data::new();
    let mut opts = options();
    opts.extend([
        "--webhook-expiring-before",
        "1h",
        "--webhook-expiring-scan",
        "100ms",
    ]);
    let (live, admin, rx, _) = setup(&data, "info", &opts, 0, 0.0, &["key.expiring"]);
    let (soon, later) = (from_now(30 * 60), from_now(48 * 3600));
    let (s, soon_key) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "soon", "expires_at": soon})),
    );
    assert_eq!(s, 201, "{soon_key}");
    let (s, _) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "later", "expires_at": later})),
    );
    assert_eq!(s, 201);
    let reqs = rx.wait_for("key.expiring", |r| !r.is_empty());
    assert_eq!(reqs[0]["verified"], true, "{reqs:#?}");
    assert_eq!(reqs[0]["payload"]["type"], "key.expiring");
    assert_eq!(reqs[0]["payload"]["data"]["key_id"], soon_key["id"]);
    live.stop();
    // Restarted, scanning again: the notice was made already.
    let live = Live::start_with(&data.path(), 50, "info", &opts);
    std::thread::sleep(Duration::from_millis(800));
    let reqs = rx.requests();
    assert_eq!(first_arrivals(&reqs).len(), 1, "{reqs:#?}");
    live.stop();
}

#[test]
fn a_leaked_key_is_revoked_and_announced_as_key_leaked() {
    let data = Data::new();
    let opts = options();
    let (live, admin, rx, _) = setup(&data, "info", &opts, 0, 0.0, &["key.leaked"]);
    let (s, made) = call(
        &live,
        &admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": "pasted in a gist"})),
    );
    assert_eq!(s, 201, "{made}");
    let secret = made["key"].as_str().unwrap();
    let key_id = made["id"].as_str().unwrap();
    // Reported by another tenant's key: the caller learns a count only.
    let (reporter, _) = mint(&live, "globex", "gina", &["keys:read"]);
    let (s, v) = call(
        &live,
        &reporter,
        "POST",
        "/v1/keys/leaked",
        Some(json!({"secrets": [secret], "source": "gist", "url": "https://gist.example/1"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["found"], 1, "{v}");
    let reqs = rx.wait_for("key.leaked", |r| {
        r.iter().any(|x| x["payload"]["type"] == "key.leaked")
    });
    let leaked: Vec<&Value> = reqs
        .iter()
        .filter(|x| x["payload"]["type"] == "key.leaked")
        .collect();
    assert!(leaked.iter().all(|r| r["verified"] == true), "{reqs:#?}");
    let data = &leaked[0]["payload"]["data"];
    assert_eq!(data["key_id"], key_id, "{data}");
    assert_eq!(data["tenant_id"], "acme", "{data}");
    assert_eq!(data["source"], "gist", "{data}");
    assert_eq!(data["url"], "https://gist.example/1", "{data}");
    assert_eq!(data["reporter"], "other_tenant", "{data}");
    // Only key.leaked was asked for: the create and the revocation are not sent.
    assert!(
        reqs.iter().all(|x| x["payload"]["type"] == "key.leaked"),
        "{reqs:#?}"
    );
    live.stop();
}
