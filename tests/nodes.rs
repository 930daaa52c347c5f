//! Several real `keyledger serve --postgres <url>` processes on one
//! PostgreSQL database, driven over HTTP: what one node writes, the others
//! enforce; usage counted on every node adds up exactly; the chain
//! verifies; and a PostgreSQL restart in the middle of traffic loses no
//! acknowledged event and duplicates none.
//!
//! Needs `KEYLEDGER_TEST_POSTGRES_URL` (scripts/test starts a throwaway
//! cluster; see the README). Without it these tests fail; they do not skip.
//! The restart test starts a cluster of its own with scripts/postgres, so
//! restarting it disturbs no other test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyledger_store::postgres::TestDatabase;
use serde_json::{Value, json};

use crate::util::{Data, bin};

const TOKEN: &str = "operator-token-shared-by-the-nodes";

/// How long a node may take to enforce what another wrote, in these tests:
/// generous, as the machine is shared and slow under a full test run. The
/// figure measured under quiet conditions is in docs/performance.md.
const PROPAGATION_BOUND: Duration = Duration::from_secs(3);

/// A running `keyledger --postgres <url> serve`.
struct Node {
    child: Option<Child>,
    addr: String,
    stderr: PathBuf,
    _data: Data,
}

impl Node {
    fn start(url: &str, name: &str) -> Node {
        Node::start_with(url, name, &[])
    }

    /// [`Node::start`] with more options for `serve`.
    fn start_with(url: &str, name: &str, options: &[&str]) -> Node {
        let data = Data::new();
        let log_dir = data.path().with_extension("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let stderr = log_dir.join("stderr.log");
        let mut cmd = Command::new(bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYLEDGER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("KEYLEDGER_LOG", "debug")
            .env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
            .env("KEYLEDGER_POSTGRES_URL", url)
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--addr", "127.0.0.1:0", "--usage-window-ms", "50"])
            .args(["--node-id", name])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().expect("the binary starts");
        let Some(addr) = crate::util::listening_addr(&mut child, Duration::from_secs(60), |_| {})
        else {
            let _ = child.kill();
            panic!(
                "node {name} printed no `listening on` line; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Node {
            child: Some(child),
            addr,
            stderr,
            _data: data,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn send(&self, method: &str, path: &str, auth: Option<&str>, body: Option<&Value>) -> Resp {
        send(&self.addr, method, path, auth, body, &[])
    }

    /// A request that passes back a write's `Keyledger-Position`.
    fn send_at(&self, position: &str, method: &str, path: &str, auth: &str) -> Resp {
        send(
            &self.addr,
            method,
            path,
            Some(auth),
            None,
            &[("Keyledger-Position", position)],
        )
    }

    /// A counter of this node's `/metrics`.
    fn counter(&self, name: &str) -> u64 {
        let r = self.send("GET", "/metrics", Some(TOKEN), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Mints a key for `user` through the operator route.
    fn mint(&self, tenant: &str, user: &str, name: &str) -> (String, String) {
        let r = self.send(
            "POST",
            &format!("/v1/admin/tenants/{tenant}/keys"),
            Some(TOKEN),
            Some(&json!({"user": user, "name": name})),
        );
        assert_eq!(r.status, 201, "mint on {}: {}", self.addr, r.text());
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    fn outcome(&self, key: &str) -> String {
        let r = self.send("POST", "/v1/verify", None, Some(&json!({ "key": key })));
        assert_eq!(r.status, 200, "verify on {}: {}", self.addr, r.text());
        r.json()["outcome"].as_str().unwrap().to_owned()
    }

    /// Total uses of a key over every day, as this node's rollups say.
    fn uses(&self, admin: &str, key_id: &str) -> u64 {
        let r = self.send(
            "GET",
            &format!("/v1/usage?key_id={key_id}"),
            Some(admin),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["total"].as_u64().unwrap())
            .sum()
    }

    /// SIGTERM, then a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = crate::util::wait_exit(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the node did not stop"));
        assert!(
            status.success(),
            "exit {status:?}; stderr:\n{}",
            self.logs()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A response.
struct Resp {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Resp {
    /// A header's value (`name` lower-case).
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn send(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head"));
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Resp { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// Polls until `f` holds; returns how long it took.
#[track_caller]
fn within(bound: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

/// `keyledger --postgres <url> audit verify`: every tenant's chain.
fn chain_verifies(url: &str) -> Value {
    let out = Command::new(bin())
        .env_remove("KEYLEDGER_POSTGRES_URL")
        .args(["--postgres", url, "audit", "verify", "--json"])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "audit verify failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn three_nodes_on_one_database_enforce_each_others_writes() {
    let db = TestDatabase::create();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(db.url(), &format!("node-{i}")))
        .collect();

    // Keys created on each node are verified on every other.
    let mut made = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        made.push(n.mint("acme", "ada", &format!("made on node {i}")));
    }
    let mut seen = Vec::new();
    for (id, secret) in &made {
        for (j, n) in nodes.iter().enumerate() {
            seen.push(within(
                PROPAGATION_BOUND,
                &format!("node {j} knows {id}"),
                || n.outcome(secret) == "valid",
            ));
        }
    }

    // A key revoked through node 0 is refused by nodes 1 and 2 within the bound.
    let (admin_id, admin) = nodes[0].mint("acme", "root", "admin");
    let (doomed_id, doomed) = nodes[1].mint("acme", "ada", "doomed");
    for n in &nodes {
        within(PROPAGATION_BOUND, "the key reaches every node", || {
            n.outcome(&doomed) == "valid" && n.outcome(&admin) == "valid"
        });
    }
    let r = nodes[0].send(
        "POST",
        &format!("/v1/keys/{doomed_id}/revoke"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked_at = Instant::now();
    let mut propagation = Vec::new();
    for n in &nodes[1..] {
        within(
            PROPAGATION_BOUND,
            "the revocation reaches every node",
            || n.outcome(&doomed) == "revoked",
        );
        propagation.push(revoked_at.elapsed());
    }
    println!("revocation seen on the other nodes after {propagation:?}");
    // Revoking it again through another node: the same conflict.
    let again = nodes[2].send(
        "POST",
        &format!("/v1/keys/{doomed_id}/revoke"),
        Some(&admin),
        None,
    );
    assert_eq!(
        (again.status, again.code()),
        (409, "already_revoked".into()),
        "{}",
        again.text()
    );

    // With wait=all-nodes, every node refuses the key when the answer comes.
    let (waited_id, waited) = nodes[2].mint("acme", "ada", "waited for");
    for n in &nodes {
        within(PROPAGATION_BOUND, "the key reaches every node", || {
            n.outcome(&waited) == "valid"
        });
    }
    let r = nodes[1].send(
        "POST",
        &format!("/v1/keys/{waited_id}/revoke?wait=all-nodes&wait_ms=5000"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for (j, n) in nodes.iter().enumerate() {
        assert_eq!(
            n.outcome(&waited),
            "revoked",
            "node {j} right after a wait=all-nodes revoke"
        );
    }
    let bad = nodes[1].send(
        "POST",
        &format!("/v1/keys/{admin_id}/revoke?wait_ms=5"),
        Some(&admin),
        None,
    );
    assert_eq!(
        (bad.status, bad.code()),
        (400, "invalid_query".into()),
        "{}",
        bad.text()
    );

    // The option is in the OpenAPI document.
    let doc = nodes[0].send("GET", "/openapi.json", None, None).json();
    let params = doc["paths"]["/v1/keys/{id}/revoke"]["post"]["parameters"].to_string();
    assert!(
        params.contains("\"wait\"") && params.contains("all-nodes"),
        "{params}"
    );
    assert!(
        doc["paths"]["/v1/keys/{id}/revoke"]["post"]["responses"]["504"].is_object(),
        "the 504 of wait=all-nodes is documented"
    );

    // A user removed on node 2: their keys made on every node are refused everywhere.
    let eves: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.mint("acme", "eve", &format!("eve's on {i}")))
        .collect();
    for n in &nodes {
        for (_, s) in &eves {
            within(PROPAGATION_BOUND, "eve's keys reach every node", || {
                n.outcome(s) == "valid"
            });
        }
    }
    let r = nodes[2].send(
        "DELETE",
        "/v1/admin/tenants/acme/users/eve",
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"].as_array().unwrap().len(), eves.len());
    for (j, n) in nodes.iter().enumerate() {
        for (id, s) in &eves {
            within(PROPAGATION_BOUND, &format!("node {j} refuses {id}"), || {
                n.outcome(s) == "revoked"
            });
        }
    }

    // Usage counted on all three nodes adds up exactly, on every node.
    // The keys reach every node first (checked without verifying them,
    // which would count).
    let counted: Vec<_> = (0..3)
        .map(|i| nodes[i].mint("acme", "bob", &format!("counted {i}")))
        .collect();
    for n in &nodes {
        for (id, _) in &counted {
            within(PROPAGATION_BOUND, "counted keys reach every node", || {
                n.send("GET", &format!("/v1/keys/{id}"), Some(&admin), None)
                    .status
                    == 200
            });
        }
    }
    let mut expected = Vec::new();
    for (k, (_, s)) in counted.iter().enumerate() {
        let mut made = 0;
        for (i, n) in nodes.iter().enumerate() {
            for _ in 0..(3 + 2 * i + k) {
                assert_eq!(n.outcome(s), "valid");
                made += 1;
            }
        }
        expected.push(made);
    }
    for (j, n) in nodes.iter().enumerate() {
        for (k, (id, _)) in counted.iter().enumerate() {
            within(
                Duration::from_secs(20),
                &format!("node {j}: usage of {id}"),
                || n.uses(&admin, id) >= expected[k],
            );
        }
    }
    // And exactly: nothing counted twice, even later.
    std::thread::sleep(Duration::from_millis(300));
    for (j, n) in nodes.iter().enumerate() {
        for (k, (id, _)) in counted.iter().enumerate() {
            assert_eq!(n.uses(&admin, id), expected[k], "node {j}: usage of {id}");
        }
    }

    // The chain verifies, over HTTP on every node and offline.
    for n in &nodes {
        let r = n.send("GET", "/v1/audit/verify", Some(&admin), None);
        assert_eq!(r.json()["ok"], true, "{}", r.text());
    }
    for n in nodes {
        n.stop();
    }
    let report = chain_verifies(db.url());
    assert!(report.to_string().contains("acme"), "{report}");
    println!(
        "keys seen on other nodes after {:?} (max)",
        seen.iter().max()
    );
}

/// A throwaway PostgreSQL cluster of this test's own (scripts/postgres).
struct Cluster {
    url: String,
    dir: String,
}

impl Cluster {
    fn start() -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
        let out = Command::new(&script)
            .arg("start")
            .output()
            .expect("scripts/postgres runs");
        assert!(
            out.status.success(),
            "scripts/postgres start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .to_owned()
        };
        Cluster {
            url: var("KEYLEDGER_TEST_POSTGRES_URL"),
            dir: var("KEYLEDGER_TEST_POSTGRES_DIR"),
        }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(Path::new(&self.dir).join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_owned()
    }

    /// `pg_ctl restart -m fast`: every session is ended, the server stops
    /// and starts again on the same port.
    fn restart(&self) {
        let pg_ctl = Path::new(&self.file("bindir")).join("pg_ctl");
        let data = Path::new(&self.dir).join("data");
        let log = Path::new(&self.dir).join("run/server.log");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &self.file("user"), "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = cmd
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-m", "fast", "-w", "-t", "60", "restart"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl restart failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
        let _ = Command::new(script).args(["stop", &self.dir]).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// While PostgreSQL restarts under traffic on two nodes: verification keeps
/// answering from the projections; management calls either succeed or fail
/// with 503 `unavailable`; both nodes resume without a restart. Afterwards
/// every acknowledged key is in the log exactly once, nothing that was
/// refused is half-written, and usage equals the verifications made.
#[test]
fn a_postgresql_restart_under_traffic_loses_and_duplicates_nothing() {
    let cluster = Cluster::start();
    let nodes: Arc<Vec<Node>> = Arc::new(
        (0..2)
            .map(|i| Node::start(&cluster.url, &format!("restart-{i}")))
            .collect(),
    );
    let (_, admin) = nodes[0].mint("acme", "root", "admin");
    let counted: Vec<(String, String)> = (0..2)
        .map(|i| nodes[i].mint("acme", "bob", &format!("c{i}")))
        .collect();
    for n in nodes.iter() {
        for (id, _) in &counted {
            within(PROPAGATION_BOUND, "keys reach both nodes", || {
                n.send("GET", &format!("/v1/keys/{id}"), Some(&admin), None)
                    .status
                    == 200
            });
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let verifications: Arc<Vec<AtomicU64>> =
        Arc::new(counted.iter().map(|_| AtomicU64::new(0)).collect());
    let mut traffic = Vec::new();
    for i in 0..2 {
        // Writers: creates on both nodes, each with a unique name.
        let (writers, halt, acked, refused) = (
            nodes.clone(),
            stop.clone(),
            acknowledged.clone(),
            refused.clone(),
        );
        traffic.push(std::thread::spawn(move || {
            let mut n = 0;
            while !halt.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("w{i}-{n}");
                let r = writers[i].send(
                    "POST",
                    "/v1/admin/tenants/acme/keys",
                    Some(TOKEN),
                    Some(&json!({"user": "ada", "name": name})),
                );
                match r.status {
                    201 => acked.lock().unwrap().push(name),
                    503 => {
                        let code = r.code();
                        assert!(code == "unavailable" || code == "timeout", "{}", r.text());
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    s => panic!("create during the restart: {s} {}", r.text()),
                }
            }
        }));
        // Verifiers: never fail, whatever the database does.
        let (verifiers, halt, keys, made) = (
            nodes.clone(),
            stop.clone(),
            counted.clone(),
            verifications.clone(),
        );
        traffic.push(std::thread::spawn(move || {
            let mut k = 0;
            while !halt.load(Ordering::Relaxed) {
                k = (k + 1) % keys.len();
                assert_eq!(verifiers[i].outcome(&keys[k].1), "valid");
                made[k].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    cluster.restart();
    // Both nodes accept writes again, without being restarted.
    for (i, n) in nodes.iter().enumerate() {
        within(
            Duration::from_secs(30),
            &format!("node {i} writes again"),
            || {
                n.send(
                    "POST",
                    "/v1/admin/tenants/acme/keys",
                    Some(TOKEN),
                    Some(&json!({"user": "zed", "name": format!("after restart {i}")})),
                )
                .status
                    == 201
            },
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().expect("traffic thread");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "{} creates acknowledged, {} refused with 503 during the restart",
        acknowledged.len(),
        refused.load(Ordering::Relaxed)
    );

    // Every acknowledged create is in the log exactly once, on both nodes.
    for (j, n) in nodes.iter().enumerate() {
        within(
            Duration::from_secs(20),
            &format!("node {j} converges"),
            || {
                let names = key_names(n, &admin);
                acknowledged
                    .iter()
                    .all(|a| names.iter().filter(|x| *x == a).count() == 1)
            },
        );
        let names = key_names(n, &admin);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            names.len(),
            "node {j}: a key name appears twice"
        );
    }
    // Usage: exactly the verifications made, on both nodes.
    for (j, n) in nodes.iter().enumerate() {
        for (k, (id, _)) in counted.iter().enumerate() {
            let expected = verifications[k].load(Ordering::Relaxed);
            within(
                Duration::from_secs(20),
                &format!("node {j}: usage of {id}"),
                || n.uses(&admin, id) >= expected,
            );
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(n.uses(&admin, id), expected, "node {j}: usage of {id}");
        }
    }
    let r = nodes[0].send("GET", "/v1/audit/verify", Some(&admin), None);
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    let nodes = Arc::try_unwrap(nodes).unwrap_or_else(|_| panic!("threads joined"));
    for n in nodes {
        n.stop();
    }
    chain_verifies(&cluster.url);
}

/// Every key name of tenant `acme`, through the list (all pages).
fn key_names(n: &Node, admin: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?limit=1000&cursor={c}"),
            None => "/v1/keys?limit=1000".to_owned(),
        };
        let r = n.send("GET", &path, Some(admin), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        names.extend(
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["name"].as_str().unwrap().to_owned()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return names,
        }
    }
}

/// `--node-id` means nothing without a shared log; a bad or unreachable
/// `--postgres` URL is a clear error that never echoes the password.
#[test]
fn node_options_are_checked_and_the_password_never_shown() {
    let data = Data::new();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYLEDGER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
            .arg("--data")
            .arg(data.path())
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let out = run(&["serve", "--addr", "127.0.0.1:0", "--node-id", "a"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--postgres"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = "s3cr3t-pa55word";
    for url in [
        format!("postgres://keyledger:{secret}@127.0.0.1:1/db?connect_timeout=2"),
        format!("postgres://keyledger:{secret}@127.0.0.1:1/db?bogus_option=1"),
    ] {
        let out = run(&["--postgres", &url, "keys", "list", "--tenant", "acme"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("PostgreSQL"), "{stderr}");
        assert!(
            !stderr.contains(secret),
            "the password was printed: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
}

/// A well-formed secret (its checksum holds) that no node has: made from
/// `n`, never minted.
fn unknown_secret(n: u64) -> String {
    let mut material = [0x5au8; keyledger_core::secret::BODY_BYTES];
    material[..8].copy_from_slice(&n.to_le_bytes());
    keyledger_core::Secret::from_material(&keyledger_core::KeyPrefix::default(), &material)
        .expose()
        .to_owned()
}

/// Issue 17: a key is valid on every node from the moment its create
/// returns; a read passing back a write's `Keyledger-Position` sees the
/// write on any node; a flood of unknown keys makes at most one read of
/// the log's head per miss interval (`keyledger_miss_head_queries_total`).
#[test]
fn nodes_read_each_others_writes_at_once() {
    const MISS_INTERVAL_MS: u64 = 20;
    let db = TestDatabase::create();
    let a = Node::start(db.url(), "ryw-a");
    let interval = MISS_INTERVAL_MS.to_string();
    let b = Node::start_with(db.url(), "ryw-b", &["--miss-interval-ms", &interval]);

    // 200 keys created through a, each verified on b right after a answered.
    let mut not_valid = Vec::new();
    for i in 0..200 {
        let (id, secret) = a.mint("acme", "ada", &format!("k{i}"));
        let outcome = b.outcome(&secret);
        if outcome != "valid" {
            not_valid.push((id, outcome));
        }
    }
    assert!(
        not_valid.is_empty(),
        "{} of 200 not valid on b at once: {not_valid:?}",
        not_valid.len()
    );

    // A key made on a authenticates on b at once too; every write answers
    // the tenant's position, and a read passing it back sees the write.
    let (_, admin) = a.mint("acme", "root", "admin");
    let r = b.send("GET", "/v1/whoami", Some(&admin), None);
    assert_eq!(
        r.status,
        200,
        "a key made on a, used on b at once: {}",
        r.text()
    );
    for i in 0..30 {
        let r = a.send(
            "POST",
            "/v1/keys",
            Some(&admin),
            Some(&json!({ "name": format!("r{i}") })),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let position = r
            .header("keyledger-position")
            .expect("a write answers its position")
            .to_owned();
        let got = b.send_at(&position, "GET", &format!("/v1/keys/{id}"), &admin);
        assert_eq!(
            got.status,
            200,
            "key {i} on b at position {position}: {}",
            got.text()
        );
        let r = a.send("POST", &format!("/v1/keys/{id}/revoke"), Some(&admin), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let position = r
            .header("keyledger-position")
            .expect("a revoke answers its position")
            .to_owned();
        let history = b.send_at(&position, "GET", &format!("/v1/keys/{id}/history"), &admin);
        assert_eq!(history.status, 200, "{}", history.text());
        let types: Vec<String> = history.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            types.iter().any(|t| t == "KeyRevoked"),
            "history of key {i} on b: {types:?}"
        );
        let list = b.send_at(
            &position,
            "GET",
            "/v1/keys?status=revoked&limit=1000",
            &admin,
        );
        assert_eq!(list.status, 200, "{}", list.text());
        assert!(
            list.text().contains(&id),
            "the revoked list on b lacks key {i}"
        );
    }
    // The position is the tenant's own sequence number: 200 + 1 mints, 30
    // creates and 30 revokes, and the reads of the trail on b.
    let last = a.send(
        "POST",
        "/v1/keys",
        Some(&admin),
        Some(&json!({ "name": "last" })),
    );
    let last: u64 = last.header("keyledger-position").unwrap().parse().unwrap();
    assert!(last > 261, "{last}");
    // Another tenant's writes do not move it.
    a.mint("globex", "gus", "other tenant");
    let again = a.send(
        "POST",
        "/v1/keys",
        Some(&admin),
        Some(&json!({ "name": "again" })),
    );
    let again: u64 = again.header("keyledger-position").unwrap().parse().unwrap();
    assert!(again > last, "{again} after {last}");

    // Bad values are refused in words; a position past the tenant's
    // trail was never given out.
    for bad in ["-1", "1.5", "12abc", " ", "0x10", "99999999999999999999999"] {
        let r = b.send_at(bad, "GET", "/v1/keys", &admin);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_position".into()),
            "{bad:?}: {}",
            r.text()
        );
        assert!(r.text().contains("Keyledger-Position"), "{}", r.text());
    }
    let r = b.send_at(&(again + 1000).to_string(), "GET", "/v1/keys", &admin);
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_position".into()),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("past this tenant's last event"),
        "{}",
        r.text()
    );

    // A flood of unknown keys on b, from 8 clients for a bounded count:
    // every one `not_found`, and at most one read of the head per
    // interval, shared by the misses.
    let before_a = a.counter("keyledger_miss_head_queries_total");
    let before_b = b.counter("keyledger_miss_head_queries_total");
    let started = Instant::now();
    let misses: u64 = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8u64)
            .map(|c| {
                let b = &b;
                s.spawn(move || {
                    let mut n = 0;
                    for i in 0..150 {
                        assert_eq!(b.outcome(&unknown_secret(c * 1000 + i)), "not_found");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let elapsed = started.elapsed();
    let queries = b.counter("keyledger_miss_head_queries_total") - before_b;
    let intervals = (elapsed.as_millis() as u64) / MISS_INTERVAL_MS;
    println!("{misses} misses on b in {elapsed:?}: {queries} head reads ({intervals} intervals)");
    assert_eq!(misses, 1200);
    assert!(
        (1..=intervals + 1).contains(&queries),
        "{queries} head reads for {misses} misses in {intervals} intervals of {MISS_INTERVAL_MS} ms"
    );
    assert!(
        queries * 4 < misses,
        "{queries} head reads for {misses} misses: not shared"
    );
    assert_eq!(
        a.counter("keyledger_miss_head_queries_total"),
        before_a,
        "the flood on b made a read nothing"
    );

    a.stop();
    b.stop();
}

/// Runs one query on `url` with a client none of the nodes use, and
/// returns its rows.
fn sql(url: &str, query: &str) -> Vec<tokio_postgres::Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect for SQL: {e}"));
        tokio::spawn(connection);
        client
            .query(query, &[])
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    })
}

/// The analysts' views (`keyledger_read`, docs/operations.md) follow what
/// two nodes write: each key's row and status, and usage per key per day
/// equal to the verifications made on both nodes and to the nodes' own
/// rollups. A node started with --no-projections keeps none.
#[test]
fn two_nodes_keep_the_analysts_views() {
    let db = TestDatabase::create();
    let nodes = [
        Node::start(db.url(), "node-a"),
        Node::start_with(db.url(), "node-b", &["--no-projections"]),
    ];
    let (admin_id, admin) = nodes[0].mint("acme", "root", "admin");
    let (used_id, used) = nodes[1].mint("acme", "ada", "used on both");
    for n in &nodes {
        within(PROPAGATION_BOUND, "the key reaches every node", || {
            n.outcome(&used) == "valid"
        });
    }
    for n in &nodes {
        for _ in 0..4 {
            assert_eq!(n.outcome(&used), "valid");
        }
    }
    let r = nodes[1].send(
        "POST",
        &format!("/v1/keys/{used_id}/revoke"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    within(PROPAGATION_BOUND, "node a sees the revocation", || {
        nodes[0].outcome(&used) == "revoked"
    });
    // Both within() calls above verified at least once each, and 8 more.
    within(
        Duration::from_secs(10),
        "both nodes' usage is counted",
        || nodes[0].uses(&admin, &used_id) >= 11,
    );
    // The last usage windows may still be landing: the view and the
    // node's rollup must come to agree, and then stay equal to the log.
    let view = || {
        let rows = sql(
            db.url(),
            &format!(
                "SELECT coalesce(sum(total), 0)::bigint, coalesce(sum(valid), 0)::bigint, \
                 coalesce(sum(revoked), 0)::bigint, \
                 (SELECT projected_position = log_head FROM keyledger_read.freshness) \
                 FROM keyledger_read.usage_daily WHERE key_id = '{used_id}'"
            ),
        );
        let r = &rows[0];
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, bool>(3),
        )
    };
    within(
        Duration::from_secs(10),
        "the view and the node's rollup agree",
        || {
            let (total, _, _, fresh) = view();
            fresh && total as u64 == nodes[0].uses(&admin, &used_id)
        },
    );
    let (_, valid, revoked, _) = view();
    assert!(
        valid >= 10 && revoked >= 1,
        "valid {valid}, revoked {revoked}"
    );
    let keys = sql(
        db.url(),
        "SELECT key_id, status, revoke_reason FROM keyledger_read.keys \
         WHERE tenant = 'acme' ORDER BY key_id",
    );
    let by_id = |id: &str| {
        keys.iter()
            .find(|r| r.get::<_, String>(0) == id)
            .map(|r| (r.get::<_, String>(1), r.get::<_, Option<String>>(2)))
    };
    assert_eq!(by_id(&admin_id), Some(("active".into(), None)));
    assert_eq!(
        by_id(&used_id),
        Some(("revoked".into(), Some("manual".into())))
    );
    for n in nodes {
        n.stop();
    }
}

/// Key policy on two nodes (issue 14). Credits: 64 clients, half on each
/// node, verify a key with 1,000 credits until told `usage_exceeded`: at
/// most 1,000 `valid` in all (each node spends only blocks it reserved
/// through the log). Rate limits: each node enforces a limit on its own,
/// so two nodes admit at most twice the limit's bound (docs/policy.md);
/// the figures are printed for docs/policy.md.
#[test]
fn two_nodes_never_overspend_credits_and_bound_rate_limit_overshoot() {
    let db = TestDatabase::create();
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(db.url(), &format!("node-{i}")))
        .collect();
    let mint = |policy: Value| -> String {
        let mut body = json!({"user": "ada", "name": "metered"});
        for (k, v) in policy.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = nodes[0].send(
            "POST",
            "/v1/admin/tenants/acme/keys",
            Some(TOKEN),
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["key"].as_str().unwrap().to_owned()
    };
    let verify = |n: &Node, key: &str| -> Value {
        let r = n.send("POST", "/v1/verify", None, Some(&json!({ "key": key })));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };

    let key = mint(json!({"credits": {"remaining": 1000}}));
    let valid = AtomicU64::new(0);
    let per_node = [AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| {
        for i in 0..64 {
            let (node, valid, per_node, key) = (&nodes[i % 2], &valid, &per_node, &key);
            s.spawn(move || {
                loop {
                    let v = verify(node, key);
                    match v["outcome"].as_str().unwrap() {
                        "valid" => {
                            valid.fetch_add(1, Ordering::Relaxed);
                            per_node[i % 2].fetch_add(1, Ordering::Relaxed);
                        }
                        "usage_exceeded" => return,
                        other => panic!("unexpected outcome {other}: {v}"),
                    }
                }
            });
        }
    });
    let valid = valid.load(Ordering::Relaxed);
    eprintln!(
        "credits on two nodes: {valid} of 1000 valid ({} on node 0, {} on node 1)",
        per_node[0].load(Ordering::Relaxed),
        per_node[1].load(Ordering::Relaxed)
    );
    assert!(valid <= 1000, "{valid} valid answers for 1,000 credits");

    // A limit of 100 per minute: 32 clients on each node for about two
    // seconds. Per node the bound is 100 + elapsed × 100 / 60 s.
    let limit = 100u64;
    let key = mint(json!({"limits": [{"name": "minute", "limit": limit, "duration": 60000}]}));
    // From before the probes: each node's limiter starts at its first check.
    let started = Instant::now();
    for n in &nodes {
        within(PROPAGATION_BOUND, "the key reaches both nodes", || {
            verify(n, &key)["outcome"] != "not_found"
        });
    }
    let admitted = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    std::thread::scope(|s| {
        for i in 0..64 {
            let (node, admitted, refused, key) = (&nodes[i % 2], &admitted, &refused, &key);
            s.spawn(move || {
                while started.elapsed() < Duration::from_secs(2) {
                    match verify(node, key)["outcome"].as_str().unwrap() {
                        "valid" => admitted.fetch_add(1, Ordering::Relaxed),
                        "rate_limited" => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected outcome {other}"),
                    };
                }
            });
        }
    });
    let elapsed_ms = started.elapsed().as_millis() as u64 + 1;
    // The probes above took one cell on each node.
    let admitted = admitted.load(Ordering::Relaxed) + 2;
    let bound = 2 * (limit + elapsed_ms * limit / 60_000);
    eprintln!(
        "rate limit {limit}/min on two nodes over {elapsed_ms} ms: {admitted} admitted \
         ({:.2}× the limit; bound {bound}), {} refused",
        admitted as f64 / limit as f64,
        refused.load(Ordering::Relaxed)
    );
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(
        admitted > limit,
        "each node admits its own {limit}: {admitted}"
    );
    for n in nodes {
        n.stop();
    }
}

/// `keyledger replay` on PostgreSQL checks `keyledger.key_events` against
/// the records: an entry removed behind the log's back makes it exit 1
/// naming the entry, and the index is rebuilt from the records, so the
/// next replay finds it equal with as many entries as before.
#[test]
fn replay_on_postgresql_names_a_removed_key_index_entry_and_rebuilds_it() {
    let db = TestDatabase::create();
    let d = Data::new();
    let pg = |args: &[&str]| {
        let mut with = vec!["--postgres", db.url()];
        with.extend_from_slice(args);
        d.run(&with)
    };
    for name in ["one", "two", "three"] {
        let out = pg(&[
            "keys", "create", "--tenant", "acme", "--user", "alice", "--name", name,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let replay = || {
        let out = pg(&["replay", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, clean) = replay();
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean["key_index"]["equal"], true, "{clean}");
    let entries = clean["key_index"]["entries"].as_u64().unwrap_or(0);
    assert!(entries >= 3, "{clean}");
    let removed = sql(
        db.url(),
        "DELETE FROM keyledger.key_events WHERE (tenant, key_id, seq) = \
           (SELECT tenant, key_id, seq FROM keyledger.key_events ORDER BY key_id DESC LIMIT 1) \
         RETURNING key_id, seq",
    );
    let key_bytes: [u8; 16] = removed[0]
        .get::<_, &[u8]>(0)
        .try_into()
        .unwrap_or_else(|_| panic!("a 16-byte key id"));
    let key = keyledger_core::KeyId::from_u128(u128::from_be_bytes(key_bytes));
    let seq: i64 = removed[0].get(1);
    let (code, damaged) = replay();
    assert_eq!(code, Some(1), "a differing index exits 1: {damaged}");
    assert_eq!(damaged["key_index"]["equal"], false, "{damaged}");
    assert_eq!(
        damaged["key_index"]["difference"],
        format!("key_events: tenant acme, key {key}, event {seq} is missing"),
        "{damaged}"
    );
    let (code, again) = replay();
    assert_eq!(code, Some(0), "rebuilt by the replay before: {again}");
    assert_eq!(again["key_index"]["equal"], true, "{again}");
    assert_eq!(again["key_index"]["entries"], entries, "{again}");
}
