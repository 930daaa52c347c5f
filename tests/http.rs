//! Black-box tests of `keyledger serve`: the real binary on a free port
//! (`--addr 127.0.0.1:0`, the port read from its `listening on` line),
//! driven over HTTP with a small raw HTTP/1.1 client, so that garbage
//! headers and bodies can be sent as they are.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Data, bin, files};

mod bodies;
mod console;
mod history;
mod operator;
mod policy;
mod positions;

/// The operator token the tests that do not test its creation pass in.
const TOKEN: &str = "operator-token-of-the-black-box-tests";

/// A running `keyledger serve`.
struct Server {
    child: Option<Child>,
    addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: PathBuf,
}

struct Options<'a> {
    usage_window_ms: u64,
    /// `--audit-read-window-ms`; `None`: the default.
    audit_read_window_ms: Option<u64>,
    token: Option<&'a str>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            usage_window_ms: 50,
            audit_read_window_ms: None,
            token: Some(TOKEN),
        }
    }
}

/// `keyledger` with logs at `trace` and no `KEYLEDGER_*` setting from the
/// environment the tests run in.
fn clean_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("KEYLEDGER_LOG", "trace");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYLEDGER_") && name != "KEYLEDGER_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

impl Server {
    fn start(data: &Data, opts: Options<'_>) -> Server {
        let log_dir = data.path().with_extension("logs");
        let mut cmd = clean_command();
        cmd.arg("--data")
            .arg(data.path())
            .args(["serve", "--addr", "127.0.0.1:0", "--usage-window-ms"])
            .arg(opts.usage_window_ms.to_string());
        if let Some(ms) = opts.audit_read_window_ms {
            cmd.arg("--audit-read-window-ms").arg(ms.to_string());
        }
        if let Some(t) = opts.token {
            cmd.env("KEYLEDGER_OPERATOR_TOKEN", t);
        }
        Server::spawn(cmd, &log_dir)
    }

    /// Starts a prepared `keyledger … serve` command, its standard error
    /// in a file under `log_dir`, and waits for its `listening on` line.
    fn spawn(mut cmd: Command, log_dir: &std::path::Path) -> Server {
        std::fs::create_dir_all(log_dir).unwrap();
        let stderr = log_dir.join(format!("stderr-{}.log", std::process::id() ^ rand_suffix()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let tee = move |line: &str| {
            let mut all = sink.lock().unwrap();
            all.push_str(line);
            all.push('\n');
        };
        let Some(addr) = crate::util::listening_addr(&mut child, Duration::from_secs(60), tee)
        else {
            let _ = child.kill();
            panic!(
                "the server printed no `listening on` line; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Server {
            child: Some(child),
            addr,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit (status 0).
    fn stop(self) -> String {
        self.stop_with("TERM")
    }

    /// Sends a signal (`TERM`, or `INT` as Ctrl-C does).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Sends a signal and waits for a clean exit (status 0).
    fn stop_with(mut self, signal: &str) -> String {
        self.signal(signal);
        self.wait_for_exit()
    }

    /// Waits for the server to exit by itself, with status 0; its logs.
    fn wait_for_exit(&mut self) -> String {
        let mut child = self.child.take().unwrap();
        let status = crate::util::wait_exit(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the server did not stop"));
        assert!(
            status.success(),
            "exit status {status:?} after a signal; stderr:\n{}",
            self.logs()
        );
        self.logs()
    }

    fn req(&self, method: &str, path: &str) -> Req<'_> {
        Req {
            addr: &self.addr,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn get(&self, path: &str) -> Req<'_> {
        self.req("GET", path)
    }

    fn post(&self, path: &str) -> Req<'_> {
        self.req("POST", path)
    }

    fn delete(&self, path: &str) -> Req<'_> {
        self.req("DELETE", path)
    }

    /// Mints a key through the operator route.
    fn mint(&self, tenant: &str, body: Value) -> Value {
        let r = self
            .post(&format!("/v1/admin/tenants/{tenant}/keys"))
            .bearer(TOKEN)
            .json(&body)
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    /// The last applied log position, from `/metrics` (the operator's).
    fn head(&self) -> u64 {
        let text = self.get("/metrics").bearer(TOKEN).send().text();
        text.lines()
            .find_map(|l| l.strip_prefix("keyledger_log_head "))
            .and_then(|n| n.trim().parse().ok())
            .expect("keyledger_log_head in /metrics")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// A request being built.
struct Req<'a> {
    addr: &'a str,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Req<'_> {
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn bearer(self, key: &str) -> Self {
        self.header("Authorization", format!("Bearer {key}"))
    }

    fn api_key(self, key: &str) -> Self {
        self.header("X-API-Key", key)
    }

    fn json(self, v: &Value) -> Self {
        self.raw_body(Some("application/json"), v.to_string().into_bytes())
    }

    fn raw_body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        if let Some(ct) = content_type {
            self = self.header("Content-Type", ct);
        }
        self.body = Some(body.into());
        self
    }

    fn send(self) -> Resp {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.path, self.addr
        )
        .into_bytes();
        for (k, v) in &self.headers {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        if let Some(b) = &self.body {
            head.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        if let Some(b) = &self.body {
            head.extend_from_slice(b);
        }
        // The server may answer (413) and close before reading a large body.
        let _ = s.write_all(&head);
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if raw.is_empty() => panic!("{} {}: {e}", self.method, self.path),
                Err(_) => break,
            }
        }
        Resp::parse(&raw)
    }
}

/// A response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn parse(raw: &[u8]) -> Resp {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Resp {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the error format, the status and the code.
    #[track_caller]
    fn error(&self, status: u16, code: &str) {
        if let Err(e) = self.check_error(status, code) {
            panic!("{e}");
        }
    }

    /// Whether this is `{"error": {"code", "message"}}` as JSON, with this status and code.
    fn check_error(&self, status: u16, code: &str) -> Result<(), String> {
        let got = format!(
            "got {} {:?} {}",
            self.status,
            self.header("content-type"),
            self.text()
        );
        let v: Value = serde_json::from_slice(&self.body).map_err(|_| got.clone())?;
        let shaped = v.as_object().is_some_and(|o| o.len() == 1)
            && v["error"].as_object().is_some_and(|e| e.len() == 2)
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
        let json = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"));
        if self.status == status && json && shaped && v["error"]["code"] == code {
            Ok(())
        } else {
            Err(format!("expected {status} `{code}`, {got}"))
        }
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
}

/// A well-formed key (right shape, right checksum) that no ledger holds.
fn unknown_key() -> String {
    keyledger_core::Secret::from_material(&keyledger_core::KeyPrefix::default(), &[7u8; 32])
        .expose()
        .to_owned()
}

fn verify(s: &Server, key: &str, scope: Option<&str>) -> Value {
    let mut body = json!({ "key": key });
    if let Some(sc) = scope {
        body["scope"] = json!(sc);
    }
    let r = s.post("/v1/verify").json(&body).send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn in_seconds(s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339()
}

/// Polls until `f` holds (usage is written every window, asynchronously).
#[track_caller]
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn first_start_creates_the_operator_token_and_says_what_to_do() {
    let d = Data::new();
    let s = Server::start(
        &d,
        Options {
            token: None,
            ..Options::default()
        },
    );
    let token_file = d.path().join("operator-token");
    let token = std::fs::read_to_string(&token_file)
        .expect("the token file")
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = s.stdout();
    assert!(out.contains("/v1/admin/tenants/"), "{out}");
    assert!(out.contains("operator-token"), "{out}");
    assert!(
        out.contains(&format!("http://{}/ ", s.addr)),
        "the console: {out}"
    );
    assert!(!out.contains(&token), "the token itself is never printed");
    // Bootstrap exactly as the welcome says.
    let r = s
        .post("/v1/admin/tenants/acme/keys")
        .bearer(&token)
        .json(&json!({"user": "alice", "name": "first key"}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        s.get("/v1/whoami").bearer(&key).send().json()["owner"],
        "alice"
    );
    let logs = s.stop();
    assert!(
        !logs.contains(&token) && !logs.contains(&key),
        "no secret in the logs"
    );

    // A second start reads the same token and welcomes nobody.
    let s = Server::start(
        &d,
        Options {
            token: None,
            ..Options::default()
        },
    );
    assert!(!s.stdout().contains("/v1/admin/tenants/"), "{}", s.stdout());
    assert_eq!(
        s.post("/v1/admin/tenants/acme/keys")
            .bearer(&token)
            .json(&json!({"user": "bob", "name": "b"}))
            .send()
            .status,
        201
    );
    s.stop();
}

#[test]
fn the_tour_over_http_survives_a_restart() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let mut secrets = Vec::new();

    // Bootstrap through the operator route.
    let boot = s.mint(
        "acme",
        json!({"user": "alice", "name": "bootstrap", "scopes": ["keys:read", "keys:write", "audit:read", "usage:read", "users:remove"]}),
    );
    let admin = boot["key"].as_str().unwrap().to_owned();
    secrets.push(admin.clone());
    assert_eq!(boot["created_via"]["type"], "operator");
    assert_eq!(boot["created_by"], "alice");

    // Create with Bearer and with X-API-Key.
    let r = s
        .post("/v1/keys")
        .bearer(&admin)
        .json(&json!({"name": "CI/CD Pipeline", "scopes": ["keys:read"]}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let ci = r.json();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/keys/{}", ci["id"].as_str().unwrap()).as_str())
    );
    for field in [
        "key",
        "id",
        "name",
        "masked",
        "created_at",
        "created_by",
        "expires_at",
        "scopes",
        "status",
    ] {
        assert!(ci.get(field).is_some(), "create answers `{field}`: {ci}");
    }
    assert_eq!(ci["created_via"]["display"], "API Key: bootstrap");
    assert_eq!(ci["created_via"]["id"], boot["id"], "the acting key's id");
    let created_at = ci["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "RFC 3339 UTC: {created_at}"
    );
    let ci_key = ci["key"].as_str().unwrap().to_owned();
    secrets.push(ci_key.clone());
    let r = s
        .post("/v1/keys")
        .api_key(&admin)
        .json(&json!({"name": "Mobile App", "description": "iOS", "expires_at": in_seconds(3)}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let mobile = r.json();
    let mobile_key = mobile["key"].as_str().unwrap().to_owned();
    secrets.push(mobile_key.clone());
    assert_eq!(
        mobile["scopes"],
        json!(["keys:read", "keys:write", "audit:read", "usage:read"]),
        "default scopes"
    );

    // The list: masked only, and the active count.
    let r = s.get("/v1/keys").bearer(&admin).send();
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list["active_count"], 3);
    assert_eq!(list["keys"].as_array().unwrap().len(), 3);
    for k in list["keys"].as_array().unwrap() {
        assert!(k.get("key").is_none(), "no secret in a list: {k}");
        let masked = k["masked"].as_str().unwrap();
        assert_eq!(masked.chars().count(), 13, "{masked}");
        assert_eq!(masked.chars().nth(8), Some('…'));
    }
    for secret in &secrets {
        assert!(!r.text().contains(secret.as_str()));
    }
    let page = s
        .get("/v1/keys?limit=2&sort=name&order=asc")
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(page["keys"][0]["name"], "bootstrap");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = s
        .get(&format!(
            "/v1/keys?limit=2&sort=name&order=asc&cursor={cursor}"
        ))
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(ids(&rest["keys"]).len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    let found = s.get("/v1/keys?q=mobile").bearer(&admin).send().json();
    assert_eq!(
        ids(&found["keys"]),
        vec![mobile["id"].as_str().unwrap().to_owned()]
    );
    assert_eq!(
        found["active_count"], 3,
        "the tenant's, whatever the filter"
    );
    let by_alice = s
        .get("/v1/keys?created_by=alice")
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(by_alice["keys"].as_array().unwrap().len(), 3);
    let one = s
        .get(&format!("/v1/keys/{}", ci["id"].as_str().unwrap()))
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(one["name"], "CI/CD Pipeline");
    assert!(one.get("key").is_none());
    for secret in &secrets {
        assert!(!one.to_string().contains(secret.as_str()));
    }
    assert!(
        one.as_object().unwrap().keys().all(|f| !f.contains("hash")),
        "never the secret's hash: {one}"
    );
    let me = s.get("/v1/whoami").api_key(&ci_key).send().json();
    assert_eq!(
        (me["tenant_id"].as_str(), me["owner"].as_str()),
        (Some("acme"), Some("alice"))
    );
    assert_eq!(me["scopes"], json!(["keys:read"]));
    let before_revocations = one["created_at"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(20));

    // Every verify outcome.
    let v = verify(&s, &ci_key, Some("keys:read"));
    assert_eq!(
        (v["valid"].as_bool(), v["outcome"].as_str()),
        (Some(true), Some("valid"))
    );
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["key_id"], ci["id"]);
    assert_eq!(
        verify(&s, &ci_key, Some("keys:write"))["outcome"],
        "insufficient_scope"
    );
    assert_eq!(verify(&s, &unknown_key(), None)["outcome"], "not_found");
    let malformed = verify(&s, "klk_not-a-key", None);
    assert_eq!(
        (malformed["valid"].as_bool(), malformed["outcome"].as_str()),
        (Some(false), Some("malformed"))
    );
    assert_eq!(malformed["key_id"], Value::Null);
    let mut typo = ci_key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(
        verify(&s, &typo, None)["outcome"],
        "malformed",
        "the checksum catches a typo"
    );

    // Revoke; a second revoke is a conflict; the revoked key is refused at once.
    let r = s
        .post(&format!("/v1/keys/{}/revoke", ci["id"].as_str().unwrap()))
        .bearer(&admin)
        .json(&json!({"reason": "compromised"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    assert_eq!(r.json()["revoke_reason"], "compromised");
    s.post(&format!("/v1/keys/{}/revoke", ci["id"].as_str().unwrap()))
        .bearer(&admin)
        .send()
        .error(409, "already_revoked");
    assert_eq!(verify(&s, &ci_key, None)["outcome"], "revoked");
    s.get("/v1/whoami")
        .bearer(&ci_key)
        .send()
        .error(401, "key_revoked");

    // Rotate without grace: the old key is revoked now.
    let old = s.mint("acme", json!({"user": "alice", "name": "Worker"}));
    let old_key = old["key"].as_str().unwrap().to_owned();
    let r = s
        .post(&format!("/v1/keys/{}/rotate", old["id"].as_str().unwrap()))
        .bearer(&admin)
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let new = r.json();
    secrets.extend([old_key.clone(), new["key"].as_str().unwrap().to_owned()]);
    assert_eq!(
        (new["name"].as_str(), new["rotated_from"].as_str()),
        (Some("Worker"), old["id"].as_str())
    );
    assert_eq!(new["scopes"], old["scopes"]);
    assert_eq!(verify(&s, &old_key, None)["outcome"], "revoked");
    assert_eq!(
        verify(&s, new["key"].as_str().unwrap(), None)["outcome"],
        "valid"
    );
    let old_now = s
        .get(&format!("/v1/keys/{}", old["id"].as_str().unwrap()))
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(
        (
            old_now["revoke_reason"].as_str(),
            old_now["rotated_to"].as_str()
        ),
        (Some("rotated"), new["id"].as_str())
    );

    // Rotate with a grace period: the old key works until it ends.
    let graced = s.mint("acme", json!({"user": "alice", "name": "Graced"}));
    let graced_key = graced["key"].as_str().unwrap().to_owned();
    let r = s
        .post(&format!(
            "/v1/keys/{}/rotate",
            graced["id"].as_str().unwrap()
        ))
        .api_key(&admin)
        .json(&json!({"grace_seconds": 2}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    secrets.extend([
        graced_key.clone(),
        r.json()["key"].as_str().unwrap().to_owned(),
    ]);
    assert_eq!(verify(&s, &graced_key, None)["outcome"], "valid");
    let graced_until = verify(&s, &graced_key, None)["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&graced_until).is_ok());

    // A user's removal revokes every active key they own, in one append, and lists them.
    let b1 = s.mint("acme", json!({"user": "bob", "name": "bob 1"}));
    let b2 = s.mint("acme", json!({"user": "bob", "name": "bob 2"}));
    let b3 = s.mint("acme", json!({"user": "bob", "name": "bob 3"}));
    secrets.extend([&b1, &b2, &b3].map(|b| b["key"].as_str().unwrap().to_owned()));
    let bob_admin = s.mint(
        "acme",
        json!({"user": "bob", "name": "bob admin", "scopes": ["keys:write"]}),
    );
    secrets.push(bob_admin["key"].as_str().unwrap().to_owned());
    let r = s
        .post(&format!("/v1/keys/{}/revoke", b3["id"].as_str().unwrap()))
        .bearer(bob_admin["key"].as_str().unwrap())
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.delete("/v1/users/bob").bearer(&admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let removed = r.json();
    assert_eq!(removed["user_id"], "bob");
    let mut revoked: Vec<String> = removed["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    revoked.sort();
    let mut expected: Vec<String> = [&b1, &b2, &bob_admin]
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .to_vec();
    expected.sort();
    assert_eq!(
        revoked, expected,
        "the active ones, not the one revoked before"
    );
    // The removed user's keys and new mints are refused.
    assert_eq!(
        verify(&s, b1["key"].as_str().unwrap(), None)["outcome"],
        "revoked"
    );
    s.get("/v1/keys")
        .bearer(b2["key"].as_str().unwrap())
        .send()
        .error(401, "key_revoked");
    s.post("/v1/admin/tenants/acme/keys")
        .bearer(TOKEN)
        .json(&json!({"user": "bob", "name": "again"}))
        .send()
        .error(409, "user_removed");
    s.delete("/v1/users/bob")
        .bearer(&admin)
        .send()
        .error(409, "user_already_removed");
    s.delete("/v1/admin/tenants/acme/users/bob")
        .bearer(TOKEN)
        .send()
        .error(409, "user_already_removed");
    let revoked_now = s
        .get("/v1/keys?status=revoked&limit=1000")
        .bearer(&admin)
        .send()
        .json();
    assert!(
        revoked_now["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["status"] == "revoked")
    );
    assert!(ids(&revoked_now["keys"]).contains(&b1["id"].as_str().unwrap().to_owned()));
    let carol = s.mint("acme", json!({"user": "carol", "name": "carol"}));
    let r = s
        .delete("/v1/admin/tenants/acme/users/carol")
        .bearer(TOKEN)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], json!([carol["id"]]));

    // Expiry and the end of the grace period.
    eventually("the mobile key and the graced key to expire", || {
        verify(&s, &mobile_key, None)["outcome"] == "expired"
            && verify(&s, &graced_key, None)["outcome"] == "expired"
    });
    s.get("/v1/whoami")
        .bearer(&mobile_key)
        .send()
        .error(401, "key_expired");

    // The audit trail: actors, reasons, the cascade.
    let trail = s.get("/v1/audit?limit=1000").bearer(&admin).send().json();
    let events = trail["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["type"] != "KeyUsed"),
        "usage only on request"
    );
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in ["KeyCreated", "KeyRevoked", "KeyRotated", "UserRemoved"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    let cascade: Vec<&Value> = events
        .iter()
        .filter(|e| e["details"]["reason"] == "user_removed")
        .collect();
    assert_eq!(cascade.len(), 4, "bob's three active keys and carol's");
    assert!(cascade.iter().all(|e| e["actor"]["type"] == "system"));
    // Every management event names its actor; a key with its id and name.
    let by_key = |e: &&Value| {
        e["actor"]["type"] == "api_key"
            && e["actor"]["id"] == boot["id"]
            && e["actor"]["name"] == "bootstrap"
            && e["actor"]["display"] == "API Key: bootstrap"
    };
    let about = |id: &Value, t: &str| {
        events
            .iter()
            .find(|e| e["key_id"] == *id && e["type"] == t)
            .unwrap_or_else(|| panic!("a {t} of {id}"))
    };
    assert!(
        by_key(&about(&ci["id"], "KeyRevoked")),
        "the revocation's actor"
    );
    assert!(
        by_key(&about(&old["id"], "KeyRevoked")),
        "a rotation's revocation"
    );
    assert!(
        by_key(&about(&graced["id"], "KeyRotated")),
        "a rotation with grace"
    );
    assert!(
        by_key(&about(&ci["id"], "KeyCreated")),
        "the creation's actor"
    );
    assert_eq!(
        about(&boot["id"], "KeyCreated")["actor"]["type"],
        "operator"
    );
    let removals: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "UserRemoved")
        .collect();
    assert_eq!(removals.len(), 2);
    assert!(by_key(&removals[0]), "bob's removal: {}", removals[0]);
    assert_eq!(removals[1]["actor"]["type"], "operator", "carol's removal");
    assert!(
        events.iter().all(|e| e["actor"]["display"]
            .as_str()
            .is_some_and(|d| !d.is_empty())),
        "every event has an actor"
    );
    let by_system = s.get("/v1/audit?actor=system").bearer(&admin).send().json();
    assert_eq!(by_system["events"].as_array().unwrap().len(), 4);
    let created_by_admin = s
        .get(&format!(
            "/v1/audit?actor={}&type=KeyCreated",
            boot["id"].as_str().unwrap()
        ))
        .bearer(&admin)
        .send()
        .json();
    assert!(
        created_by_admin["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"]["display"] == "API Key: bootstrap")
    );
    // CI, Mobile, and the two keys that replaced Worker and Graced.
    assert_eq!(created_by_admin["events"].as_array().unwrap().len(), 4);
    let paged = s.get("/v1/audit?limit=3").bearer(&admin).send().json();
    assert_eq!(paged["events"].as_array().unwrap().len(), 3);
    let next = s
        .get(&format!(
            "/v1/audit?limit=3&cursor={}",
            paged["next_cursor"].as_str().unwrap()
        ))
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(next["events"][0]["position"], events[3]["position"]);

    // Usage is written every window: wait for it, then read it back.
    eventually("usage to be written", || {
        let t = s
            .get("/v1/audit?include_usage=true&type=KeyUsed&limit=1000")
            .bearer(&admin)
            .send()
            .json();
        !t["events"].as_array().unwrap().is_empty()
    });
    let history = s
        .get(&format!("/v1/keys/{}/history", ci["id"].as_str().unwrap()))
        .bearer(&admin)
        .send()
        .json();
    let h_types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(h_types.first(), Some(&"KeyCreated"));
    assert!(
        h_types.contains(&"KeyUsed") && h_types.contains(&"KeyRevoked"),
        "{h_types:?}"
    );

    // State at a past instant: the CI key was active then.
    let then = s
        .get(&format!("/v1/state?at={before_revocations}"))
        .bearer(&admin)
        .send()
        .json();
    let ci_then = then["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == ci["id"])
        .expect("the CI key existed then");
    assert_eq!(ci_then["status"], "active");
    assert!(
        then["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] != "Worker"),
        "the Worker key did not exist yet"
    );
    let epoch = s
        .get("/v1/state?at=1970-01-01T00:00:00Z")
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(epoch["keys"], json!([]));
    let at_position = s.get("/v1/state?at=1").bearer(&admin).send().json();
    assert_eq!(
        ids(&at_position["keys"]),
        vec![boot["id"].as_str().unwrap().to_owned()]
    );

    // Usage daily, summary and export.
    eventually("usage rollups to count the verifications", || {
        let u = s
            .get(&format!("/v1/usage?key_id={}", ci["id"].as_str().unwrap()))
            .bearer(&admin)
            .send()
            .json();
        u["days"]
            .as_array()
            .is_some_and(|d| d.iter().map(|r| r["total"].as_u64().unwrap()).sum::<u64>() >= 4)
    });
    let daily = s.get("/v1/usage").bearer(&admin).send().json();
    let today = &daily["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        today["day"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    assert!(
        today["valid"].as_u64().unwrap() > 0 && today["rejected"].as_u64().unwrap() > 0,
        "{today}"
    );
    let summary = s
        .get("/v1/usage/summary?days=7")
        .bearer(&admin)
        .send()
        .json();
    assert_eq!(summary["days"], 7);
    assert_eq!(summary["series"].as_array().unwrap().len(), 7);
    assert!(
        summary["success_rate"]
            .as_f64()
            .is_some_and(|r| r > 0.0 && r < 1.0),
        "{summary}"
    );
    let csv = s.get("/v1/usage/export").bearer(&admin).send();
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        csv.text()
            .starts_with("day,total,valid,rejected,revoked,expired,insufficient_scope\n"),
        "{}",
        csv.text()
    );
    let jsonl = s.get("/v1/usage/export?format=jsonl").bearer(&admin).send();
    assert_eq!(jsonl.header("content-type"), Some("application/x-ndjson"));
    assert!(
        jsonl
            .text()
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );

    // Audit export (streamed) and the chain check.
    let export = s
        .get("/v1/audit/export?format=jsonl&include_usage=true")
        .bearer(&admin)
        .send();
    assert_eq!(export.status, 200);
    let exported: Vec<Value> = export
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(exported.len() > events.len());
    let csv = s.get("/v1/audit/export?format=csv").bearer(&admin).send();
    assert!(
        csv.text()
            .starts_with("position,seq,at,tenant,type,actor,key_id,details,hash\n")
    );
    // Management events as listed before; reads of the trail since then
    // are recorded too (`AuditRead`), so they are left out of the count.
    assert_eq!(
        csv.text()
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .filter(|l| l.split(',').nth(4) != Some("AuditRead"))
            .count(),
        events.iter().filter(|e| e["type"] != "AuditRead").count()
    );
    let chain = s.get("/v1/audit/verify").bearer(&admin).send().json();
    assert_eq!(chain["ok"], true, "{chain}");
    // Usage of the requests in between may have been written since the export.
    assert!(chain["events"].as_u64().unwrap() as usize >= exported.len());

    // Metrics by matched route.
    let metrics = s.get("/metrics").bearer(TOKEN).send().text();
    assert!(
        metrics.contains(r#"route="/v1/keys/{id}/revoke",status="409"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"keyledger_verifications_total{outcome="expired"}"#));
    assert_eq!(s.get("/healthz").send().json()["status"], "ok");
    let openapi = s.get("/openapi.json").send().json();
    assert_eq!(openapi["openapi"], "3.1.0");

    // Restart: SIGTERM, exit 0, and everything is still there.
    let list_before = s.get("/v1/keys?limit=1000").bearer(&admin).send().json();
    let trail_before = s
        .get("/v1/audit/export?include_usage=true")
        .bearer(&admin)
        .send()
        .text();
    let logs = s.stop();
    let s = Server::start(&d, Options::default());
    let list_after = s.get("/v1/keys?limit=1000").bearer(&admin).send().json();
    assert_eq!(ids(&list_before["keys"]), ids(&list_after["keys"]));
    assert_eq!(list_before["active_count"], list_after["active_count"]);
    let trail_after = s
        .get("/v1/audit/export?include_usage=true")
        .bearer(&admin)
        .send()
        .text();
    assert!(
        trail_after.starts_with(&trail_before),
        "the trail is kept, in order"
    );
    assert_eq!(verify(&s, &ci_key, None)["outcome"], "revoked");
    assert_eq!(verify(&s, &admin, None)["outcome"], "valid");
    let chain = s.get("/v1/audit/verify").bearer(&admin).send().json();
    assert_eq!(chain["ok"], true, "after the restart: {chain}");
    let logs2 = s.stop();

    // No secret in the data directory, and neither a secret nor the token in any log line.
    for f in files(&d.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for secret in &secrets {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "a secret in {}",
                f.display()
            );
        }
    }
    for text in [&logs, &logs2] {
        assert!(!text.contains(TOKEN), "the operator token in a log");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in a log");
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn graceful_shutdown_writes_every_counted_use() {
    let d = Data::new();
    // A window far longer than the test: uses are written only at shutdown.
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: 3_600_000,
            ..Options::default()
        },
    );
    let k = s.mint("acme", json!({"user": "alice", "name": "counted"}));
    let key = k["key"].as_str().unwrap();
    for _ in 0..25 {
        assert_eq!(verify(&s, key, None)["outcome"], "valid");
    }
    for _ in 0..5 {
        assert_eq!(
            verify(&s, key, Some("users:remove"))["outcome"],
            "insufficient_scope"
        );
    }
    let head = s.head();
    s.stop();
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: 3_600_000,
            ..Options::default()
        },
    );
    assert!(s.head() > head, "the uses were written at shutdown");
    let u = s.get("/v1/usage").bearer(key).send().json();
    let day = &u["days"][0];
    assert_eq!(
        (day["valid"].as_u64(), day["insufficient_scope"].as_u64()),
        (Some(25), Some(5)),
        "{u}"
    );
    let shown = s
        .get(&format!("/v1/keys/{}", k["id"].as_str().unwrap()))
        .bearer(key)
        .send()
        .json();
    assert_eq!(shown["uses"]["total"], 30);
    assert!(shown["last_used_at"].is_string());
    s.stop();
}

/// A key with only `audit:read` reading the trail from 32 connections at
/// once: each read is answered only once it is recorded, yet the log grows
/// by at most one `AuditRead` per window (the default 100 ms), not one per
/// read; the events' counts add up to exactly the reads answered, and a
/// replay (the CLI) shows the same.
#[test]
fn a_flood_of_audit_reads_grows_the_log_by_one_event_per_window() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    const READERS: usize = 32;
    const READS: u64 = 640;
    let d = Data::new();
    // Uses (each read authenticates a key) are written only at shutdown,
    // so the head moves by the reads' events alone.
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: 3_600_000,
            ..Options::default()
        },
    );
    let k = s.mint(
        "acme",
        json!({"user": "auditor", "name": "reader", "scopes": ["audit:read"]}),
    );
    let key = k["key"].as_str().unwrap();
    let head = s.head();
    let (next, answered) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| {
                while next.fetch_add(1, SeqCst) < READS {
                    let r = s.get("/v1/audit?limit=5").api_key(key).send();
                    assert_eq!(r.status, 200, "{}", r.text());
                    answered.fetch_add(1, SeqCst);
                }
            });
        }
    });
    let took = started.elapsed();
    assert_eq!(answered.into_inner(), READS);
    let moved = s.head() - head;
    // Events of one reader and kind are at least a window apart.
    let windows = took.as_millis() as u64 / 100 + 2;
    assert!(
        moved <= windows,
        "{moved} events in {took:?}: more than one per 100 ms"
    );
    assert!(moved * 8 <= READS, "{moved} events for {READS} reads");
    s.stop();
    let trail = d.json(&[
        "audit",
        "list",
        "--tenant",
        "acme",
        "--type",
        "AuditRead",
        "--limit",
        "1000",
    ]);
    let by_key: Vec<&Value> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"]["id"] == k["id"])
        .collect();
    assert_eq!(by_key.len() as u64, moved, "{trail}");
    let counted: u64 = by_key
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, READS, "{trail}");
    eprintln!("{READS} reads from {READERS} connections in {took:?}: {moved} AuditRead events");
}

#[test]
fn a_second_tenant_sees_nothing_of_the_first_on_any_route() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let all = json!([
        "keys:read",
        "keys:write",
        "audit:read",
        "usage:read",
        "users:remove"
    ]);
    let a = s.mint(
        "acme",
        json!({"user": "alice", "name": "acme admin", "scopes": all}),
    );
    let a_key = a["key"].as_str().unwrap().to_owned();
    let a2 = s
        .post("/v1/keys")
        .bearer(&a_key)
        .json(&json!({"name": "acme second"}))
        .send()
        .json();
    let a2_id = a2["id"].as_str().unwrap().to_owned();
    let a_ids = [a["id"].as_str().unwrap().to_owned(), a2_id.clone()];
    for _ in 0..3 {
        verify(&s, a2["key"].as_str().unwrap(), None);
    }
    eventually("acme's usage", || {
        !s.get("/v1/usage").bearer(&a_key).send().json()["days"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let g = s.mint(
        "globex",
        json!({"user": "alice", "name": "globex admin", "scopes": all}),
    );
    let g_key = g["key"].as_str().unwrap().to_owned();

    // Every route that takes an id: a foreign id is answered exactly like an unknown one.
    let unknown = "key_01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for (method, path) in [
        ("GET", "/v1/keys/{}"),
        ("GET", "/v1/keys/{}/history"),
        ("POST", "/v1/keys/{}/revoke"),
        ("POST", "/v1/keys/{}/rotate"),
        ("GET", "/v1/usage?key_id={}"),
        ("GET", "/v1/usage/export?key_id={}"),
    ] {
        let foreign = s
            .req(method, &path.replace("{}", &a2_id))
            .bearer(&g_key)
            .send();
        let missing = s
            .req(method, &path.replace("{}", unknown))
            .bearer(&g_key)
            .send();
        foreign.error(404, "key_not_found");
        missing.error(404, "key_not_found");
        assert_eq!(
            foreign.text().replace(&a2_id, "ID"),
            missing.text().replace(unknown, "ID"),
            "{method} {path}"
        );
    }
    // Every route that returns tenant data: nothing of acme's.
    let g_routes = [
        "/v1/keys",
        "/v1/keys?created_by=alice",
        "/v1/whoami",
        &format!("/v1/audit?key_id={a2_id}"),
        "/v1/audit?include_usage=true",
        "/v1/audit?actor=alice",
        &format!("/v1/audit/export?key_id={a2_id}&include_usage=true"),
        "/v1/audit/export?format=csv&include_usage=true",
        "/v1/audit/verify",
        "/v1/state?at=2999-01-01T00:00:00Z",
        "/v1/state?at=1000000",
        "/v1/usage",
        "/v1/usage/summary",
        "/v1/usage/export",
        "/v1/usage/export?format=jsonl",
        "/v1/audit/checkpoint",
        "/v1/audit/bundle?from=1",
        "/v1/audit/proof/inclusion?position=1",
        "/v1/audit/proof/consistency?from=1",
    ];
    for path in g_routes {
        let r = s.get(path).bearer(&g_key).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let text = r.text();
        assert!(!text.contains("acme"), "{path} shows acme: {text}");
        for id in &a_ids {
            assert!(!text.contains(id.as_str()), "{path} shows acme's key {id}");
        }
    }
    assert_eq!(
        ids(&s.get("/v1/keys").bearer(&g_key).send().json()["keys"]),
        vec![g["id"].as_str().unwrap().to_owned()]
    );
    assert_eq!(
        s.get(&format!("/v1/audit/export?key_id={a2_id}"))
            .bearer(&g_key)
            .send()
            .text(),
        ""
    );
    // Globex's usage is its own key's, and nothing of acme's.
    let total = |v: &Value| {
        v["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["total"].as_u64().unwrap())
            .sum::<u64>()
    };
    eventually("globex's tenant usage to equal its one key's", || {
        let tenant = s.get("/v1/usage").bearer(&g_key).send().json();
        let key = s
            .get(&format!("/v1/usage?key_id={}", g["id"].as_str().unwrap()))
            .bearer(&g_key)
            .send()
            .json();
        let summary = s.get("/v1/usage/summary").bearer(&g_key).send().json();
        total(&tenant) == total(&key) && summary["totals"]["total"].as_u64() == Some(total(&key))
    });
    eventually("globex's chain to hold exactly globex's events", || {
        // The export records itself first; the chain check records nothing.
        let export = s
            .get("/v1/audit/export?include_usage=true")
            .bearer(&g_key)
            .send()
            .text();
        let chain = s.get("/v1/audit/verify").bearer(&g_key).send().json();
        chain["tenant"] == "globex"
            && chain["ok"] == true
            && chain["events"].as_u64() == Some(export.lines().count() as u64)
    });

    // Removing "alice" in globex is globex's own alice: acme's keys live on.
    let r = s.delete("/v1/users/alice").bearer(&g_key).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], json!([g["id"]]));
    assert_eq!(verify(&s, &a_key, None)["outcome"], "valid");
    let list = s.get("/v1/keys").bearer(&a_key).send().json();
    assert_eq!(list["active_count"], 2);
    // The operator acting on globex cannot reach acme either.
    let r = s
        .delete("/v1/admin/tenants/globex/users/bob")
        .bearer(TOKEN)
        .send();
    assert_eq!(r.json()["revoked"], json!([]));
    assert_eq!(
        s.get("/v1/keys").bearer(&a_key).send().json()["active_count"],
        2
    );
    let logs = s.stop();
    assert_no_secret(
        &d,
        &logs,
        &[TOKEN, &a_key, &g_key, a2["key"].as_str().unwrap()],
    );
}

#[test]
fn bad_input_is_answered_in_the_error_format_and_writes_nothing() {
    let d = Data::new();
    // No usage is written during the test: only management events could move the head.
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: 3_600_000,
            ..Options::default()
        },
    );
    let k = s.mint("acme", json!({"user": "alice", "name": "k", "scopes": ["keys:read", "keys:write", "audit:read", "usage:read"]}));
    let key = k["key"].as_str().unwrap().to_owned();
    let id = k["id"].as_str().unwrap().to_owned();
    let reader = s.mint(
        "acme",
        json!({"user": "alice", "name": "reader", "scopes": ["keys:read"]}),
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = s.mint("acme", json!({"user": "alice", "name": "gone"}));
    s.post(&format!(
        "/v1/keys/{}/revoke",
        revoked["id"].as_str().unwrap()
    ))
    .bearer(&key)
    .send();
    let revoked_key = revoked["key"].as_str().unwrap().to_owned();
    // Reading the trail is itself recorded (an `AuditRead` event): read it
    // first, then take the head.
    let trail = s
        .get("/v1/audit/export?include_usage=true")
        .bearer(&key)
        .send()
        .text();
    let head = s.head();

    let json_ct = Some("application/json");
    let create = |body: &str| {
        s.post("/v1/keys")
            .bearer(&key)
            .raw_body(json_ct, body.to_owned())
    };
    let long_name = format!("{{\"name\": \"{}\"}}", "n".repeat(101));
    let long_description = format!(
        "{{\"name\": \"ok\", \"description\": \"{}\"}}",
        "d".repeat(501)
    );
    let over_limit = format!(
        "{{\"name\": \"{}\"}}",
        "x".repeat(keyledger_server::limits::BODY_BYTES_MAX + 1)
    );
    let past = "{\"name\": \"ok\", \"expires_at\": \"2020-01-01T00:00:00Z\"}";
    let get = |path: &str| s.get(path).bearer(&key);
    let cases: Vec<(&str, Req<'_>, u16, &str)> = vec![
        // Bodies.
        (
            "malformed JSON",
            create("{\"name\": "),
            400,
            "malformed_json",
        ),
        ("not JSON at all", create("name=x"), 400, "malformed_json"),
        ("wrong type", create("{\"name\": 42}"), 400, "invalid_body"),
        (
            "wrong type in a list",
            create("{\"name\": \"a\", \"scopes\": \"keys:read\"}"),
            400,
            "invalid_body",
        ),
        ("a JSON array", create("[]"), 400, "invalid_body"),
        (
            "missing field",
            create("{\"description\": \"no name\"}"),
            400,
            "invalid_body",
        ),
        (
            "unknown field",
            create("{\"name\": \"a\", \"owner\": \"mallory\"}"),
            400,
            "invalid_body",
        ),
        (
            "unknown scope",
            create("{\"name\": \"a\", \"scopes\": [\"keys:delete\"]}"),
            400,
            "invalid_body",
        ),
        (
            "empty name",
            create("{\"name\": \"\"}"),
            422,
            "invalid_field",
        ),
        (
            "blank name",
            create("{\"name\": \"   \"}"),
            422,
            "invalid_field",
        ),
        ("over-long name", create(&long_name), 422, "invalid_field"),
        (
            "control character in the name",
            create("{\"name\": \"a\\u0000b\"}"),
            422,
            "invalid_field",
        ),
        (
            "newline in the name",
            create("{\"name\": \"a\\nb\"}"),
            422,
            "invalid_field",
        ),
        (
            "over-long description",
            create(&long_description),
            422,
            "invalid_field",
        ),
        ("expiry in the past", create(past), 422, "invalid_field"),
        (
            "expiry not a time",
            create("{\"name\": \"a\", \"expires_at\": \"next week\"}"),
            400,
            "invalid_body",
        ),
        (
            "no scopes",
            create("{\"name\": \"a\", \"scopes\": []}"),
            422,
            "invalid_field",
        ),
        (
            "granting a scope it lacks",
            create("{\"name\": \"a\", \"scopes\": [\"users:remove\"]}"),
            403,
            "forbidden",
        ),
        (
            "body over the limit",
            create(&over_limit),
            413,
            "body_too_large",
        ),
        (
            "no content type",
            s.post("/v1/keys")
                .bearer(&key)
                .raw_body(None, "{\"name\": \"a\"}"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong content type",
            s.post("/v1/keys")
                .bearer(&key)
                .raw_body(Some("text/plain"), "{\"name\": \"a\"}"),
            415,
            "unsupported_media_type",
        ),
        (
            "empty body",
            s.post("/v1/keys").bearer(&key).raw_body(json_ct, ""),
            400,
            "malformed_json",
        ),
        (
            "unknown revoke reason",
            s.post(&format!("/v1/keys/{id}/revoke"))
                .bearer(&key)
                .json(&json!({"reason": "bored"})),
            400,
            "invalid_body",
        ),
        (
            "negative grace",
            s.post(&format!("/v1/keys/{id}/rotate"))
                .bearer(&key)
                .json(&json!({"grace_seconds": -1})),
            400,
            "invalid_body",
        ),
        (
            "grace too long",
            s.post(&format!("/v1/keys/{id}/rotate"))
                .bearer(&key)
                .json(&json!({"grace_seconds": 100_000_000})),
            422,
            "invalid_field",
        ),
        (
            "verify without a key",
            s.post("/v1/verify").json(&json!({"scope": "keys:read"})),
            400,
            "invalid_body",
        ),
        (
            "verify a number",
            s.post("/v1/verify").json(&json!({"key": 5})),
            400,
            "invalid_body",
        ),
        (
            "verify an unknown scope",
            s.post("/v1/verify")
                .json(&json!({"key": "x", "scope": "root"})),
            400,
            "invalid_body",
        ),
        (
            "admin: blank user",
            s.post("/v1/admin/tenants/acme/keys")
                .bearer(TOKEN)
                .json(&json!({"user": " ", "name": "a"})),
            422,
            "invalid_field",
        ),
        (
            "admin: missing user",
            s.post("/v1/admin/tenants/acme/keys")
                .bearer(TOKEN)
                .json(&json!({"name": "a"})),
            400,
            "invalid_body",
        ),
        (
            "admin: bad tenant",
            s.post("/v1/admin/tenants/a%2Fb/keys")
                .bearer(TOKEN)
                .json(&json!({"user": "u", "name": "a"})),
            400,
            "invalid_path",
        ),
        // Queries, cursors and dates.
        (
            "bad list cursor",
            get("/v1/keys?cursor=garbage"),
            400,
            "invalid_query",
        ),
        (
            "hex but not a cursor",
            get("/v1/keys?cursor=6b31"),
            400,
            "invalid_query",
        ),
        (
            "bad audit cursor",
            get("/v1/audit?cursor=s-1"),
            400,
            "invalid_query",
        ),
        (
            "bad history cursor",
            get(&format!("/v1/keys/{id}/history?cursor=x")),
            400,
            "invalid_query",
        ),
        ("limit 0", get("/v1/keys?limit=0"), 400, "invalid_query"),
        (
            "limit over the maximum",
            get("/v1/audit?limit=1001"),
            400,
            "invalid_query",
        ),
        (
            "limit not a number",
            get("/v1/keys?limit=lots"),
            400,
            "invalid_query",
        ),
        (
            "unknown sort",
            get("/v1/keys?sort=size"),
            400,
            "invalid_query",
        ),
        (
            "unknown status",
            get("/v1/keys?status=zombie"),
            400,
            "invalid_query",
        ),
        (
            "unknown event type",
            get("/v1/audit?type=KeyDeleted"),
            400,
            "invalid_query",
        ),
        (
            "bad audit date",
            get("/v1/audit?from=yesterday"),
            400,
            "invalid_query",
        ),
        (
            "bad audit key id",
            get("/v1/audit?key_id=nope"),
            400,
            "invalid_query",
        ),
        (
            "bad include_usage",
            get("/v1/audit?include_usage=maybe"),
            400,
            "invalid_query",
        ),
        (
            "unknown export format",
            get("/v1/audit/export?format=xml"),
            400,
            "invalid_query",
        ),
        ("state without at", get("/v1/state"), 400, "invalid_query"),
        (
            "consistency without from",
            get("/v1/audit/proof/consistency"),
            400,
            "invalid_query",
        ),
        (
            "bundle from not a number",
            get("/v1/audit/bundle?from=first"),
            400,
            "invalid_query",
        ),
        (
            "expiry tomorrow",
            create("{\"name\": \"a\", \"expires_at\": \"tomorrow\"}"),
            400,
            "invalid_body",
        ),
        (
            "state at garbage",
            get("/v1/state?at=last%20tuesday"),
            400,
            "invalid_query",
        ),
        (
            "bad usage day",
            get("/v1/usage?from=2026-13-01"),
            400,
            "invalid_query",
        ),
        (
            "usage from after to",
            get("/v1/usage?from=2026-02-01&to=2026-01-01"),
            400,
            "invalid_query",
        ),
        (
            "summary of 0 days",
            get("/v1/usage/summary?days=0"),
            400,
            "invalid_query",
        ),
        (
            "summary of too many days",
            get("/v1/usage/summary?days=10000"),
            400,
            "invalid_query",
        ),
        (
            "summary of -1 days",
            get("/v1/usage/summary?days=-1"),
            400,
            "invalid_query",
        ),
        (
            "usage export bad format",
            get("/v1/usage/export?format=xlsx"),
            400,
            "invalid_query",
        ),
        (
            "bad key id in the path",
            get("/v1/keys/nope"),
            400,
            "invalid_path",
        ),
        (
            "bad key id to revoke",
            s.post("/v1/keys/key_123/revoke").bearer(&key),
            400,
            "invalid_path",
        ),
        (
            "unknown key",
            get("/v1/keys/key_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            404,
            "key_not_found",
        ),
        (
            "revoking a revoked key",
            s.post(&format!(
                "/v1/keys/{}/revoke",
                revoked["id"].as_str().unwrap()
            ))
            .bearer(&key),
            409,
            "already_revoked",
        ),
        // Routes and methods.
        ("unknown route", s.get("/v1/nope"), 404, "not_found"),
        // `/` is the web console (tests/http/console.rs); any other path
        // outside the API is not.
        (
            "a path outside the API and the console",
            s.get("/keys"),
            404,
            "not_found",
        ),
        (
            "another version",
            s.get("/v2/keys").bearer(&key),
            404,
            "not_found",
        ),
        (
            "trailing slash",
            s.get("/v1/keys/").bearer(&key),
            404,
            "not_found",
        ),
        (
            "PUT on keys",
            s.req("PUT", "/v1/keys").bearer(&key),
            405,
            "method_not_allowed",
        ),
        (
            "DELETE a key",
            s.delete(&format!("/v1/keys/{id}")).bearer(&key),
            405,
            "method_not_allowed",
        ),
        ("GET verify", s.get("/v1/verify"), 405, "method_not_allowed"),
        (
            "POST healthz",
            s.post("/healthz"),
            405,
            "method_not_allowed",
        ),
        (
            "PATCH admin",
            s.req("PATCH", "/v1/admin/tenants/acme/keys").bearer(TOKEN),
            405,
            "method_not_allowed",
        ),
        // Credentials.
        (
            "no credential",
            s.get("/v1/keys"),
            401,
            "missing_credentials",
        ),
        (
            "empty bearer",
            s.get("/v1/keys").header("Authorization", "Bearer "),
            401,
            "missing_credentials",
        ),
        (
            "basic auth",
            s.get("/v1/keys")
                .header("Authorization", "Basic YWxpY2U6c2VjcmV0"),
            401,
            "invalid_credentials",
        ),
        (
            "a bare token",
            s.get("/v1/keys").header("Authorization", key.as_str()),
            401,
            "invalid_credentials",
        ),
        (
            "bytes in Authorization",
            s.get("/v1/keys")
                .header("Authorization", b"Bearer \xff\xfe"),
            401,
            "invalid_credentials",
        ),
        (
            "bytes in X-API-Key",
            s.get("/v1/keys").header("X-API-Key", b"\x80\x81"),
            401,
            "invalid_credentials",
        ),
        (
            "garbage X-API-Key",
            s.get("/v1/keys").api_key("hello world"),
            401,
            "malformed_key",
        ),
        (
            "garbage bearer",
            s.get("/v1/keys")
                .bearer("klk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            401,
            "malformed_key",
        ),
        (
            "an unknown key",
            s.get("/v1/keys").bearer(&unknown_key()),
            401,
            "unknown_key",
        ),
        (
            "a revoked key",
            s.get("/v1/keys").api_key(&revoked_key),
            401,
            "key_revoked",
        ),
        (
            "two different keys",
            s.get("/v1/keys").bearer(&key).api_key(&reader),
            401,
            "invalid_credentials",
        ),
        (
            "two Authorization headers",
            s.get("/v1/keys").bearer(&key).bearer(&key),
            401,
            "invalid_credentials",
        ),
        (
            "the token on a tenant route without Keyledger-Tenant",
            s.get("/v1/keys").bearer(TOKEN),
            400,
            "tenant_required",
        ),
        (
            "a key as the token",
            s.delete("/v1/admin/tenants/acme/users/alice").bearer(&key),
            401,
            "invalid_operator_token",
        ),
        (
            "no token",
            s.delete("/v1/admin/tenants/acme/users/alice"),
            401,
            "missing_credentials",
        ),
        (
            "a scope the key lacks",
            s.delete("/v1/users/alice").bearer(&key),
            403,
            "insufficient_scope",
        ),
        (
            "a reader writing",
            s.post("/v1/keys")
                .bearer(&reader)
                .json(&json!({"name": "x"})),
            403,
            "insufficient_scope",
        ),
        (
            "a reader reading usage",
            s.get("/v1/usage").bearer(&reader),
            403,
            "insufficient_scope",
        ),
        (
            "auth comes before the body",
            s.post("/v1/keys").raw_body(json_ct, "{"),
            401,
            "missing_credentials",
        ),
    ];
    let n = cases.len();
    let mut failures = Vec::new();
    for (what, req, status, code) in cases {
        let r = req.send();
        if let Err(e) = r.check_error(status, code) {
            failures.push(format!("{what}: {e}"));
        }
        // Every refusal in the API's words, never the framework's.
        if ["Failed to", "serde", "deserialize"]
            .iter()
            .any(|w| r.text().contains(w))
        {
            failures.push(format!("{what}: framework wording: {}", r.text()));
        }
        if status == 405 && r.header("allow").is_none() {
            failures.push(format!("{what}: a 405 names the allowed methods"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(n >= 80, "{n} cases");
    assert_eq!(s.head(), head, "no refused request wrote anything");
    let after = s
        .get("/v1/audit/export?include_usage=true")
        .bearer(&key)
        .send()
        .text();
    let added: Vec<Value> = after
        .strip_prefix(trail.as_str())
        .expect("the trail is unchanged")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(
        (
            added[0]["type"].as_str(),
            added[0]["details"]["what"].as_str()
        ),
        (Some("AuditRead"), Some("export")),
        "only this export's own record: {added:?}"
    );
    assert_eq!(
        s.get("/v1/keys").bearer(&key).send().json()["active_count"],
        2,
        "nothing was created"
    );
    // Garbage, keys and the token went through every header above: none of
    // them reaches a log line (the server logs at `trace`) or the disk.
    let logs = s.stop();
    assert_no_secret(&d, &logs, &[TOKEN, &key, &reader, &revoked_key]);
}

#[test]
fn refusals_name_the_parameter_and_what_it_takes() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let k = s.mint(
        "acme",
        json!({"user": "alice", "name": "k", "scopes": ["keys:write", "audit:read", "usage:read"]}),
    );
    let key = k["key"].as_str().unwrap();
    let create = |body: &str| {
        s.post("/v1/keys")
            .bearer(key)
            .raw_body(Some("application/json"), body.to_owned())
    };
    for (what, req, code, words) in [
        (
            "state without at",
            s.get("/v1/state").bearer(key),
            "invalid_query",
            &[
                "the query parameter `at` is required",
                "RFC 3339",
                "a whole number",
            ][..],
        ),
        (
            "consistency without from",
            s.get("/v1/audit/proof/consistency").bearer(key),
            "invalid_query",
            &["the query parameter `from` is required", "older tree size"],
        ),
        (
            "a month 13",
            s.get("/v1/usage?from=2026-13-01").bearer(key),
            "invalid_query",
            &[
                "the query parameter `from` is not valid",
                "`2026-13-01`",
                "YYYY-MM-DD",
            ],
        ),
        (
            "a limit in words",
            s.get("/v1/audit?limit=lots").bearer(key),
            "invalid_query",
            &[
                "the query parameter `limit` is not valid",
                "whole number",
                "1 to 1000",
            ],
        ),
        (
            "an expiry of tomorrow",
            create(r#"{"name": "a", "expires_at": "tomorrow"}"#),
            "invalid_body",
            &[
                "the field `expires_at` is not valid",
                "`tomorrow`",
                "RFC 3339",
            ],
        ),
        (
            "a body without its name",
            create(r#"{"description": "d"}"#),
            "invalid_body",
            &["the field `name` is required"],
        ),
        (
            "a field the body does not take",
            create(r#"{"name": "a", "owner": "mallory"}"#),
            "invalid_body",
            &["there is no field `owner`", "`name`"],
        ),
        (
            "a list for a body",
            create("[]"),
            "invalid_body",
            &["the body must be a JSON object"],
        ),
    ] {
        let r = req.send();
        r.check_error(400, code)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        for w in words {
            assert!(message.contains(w), "{what}: `{w}` not in: {message}");
        }
    }
    // A bundle without `from` is the whole log, as the CLI's `audit bundle`.
    let r = s.get("/v1/audit/bundle").bearer(key).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let header: Value = serde_json::from_str(r.text().lines().next().unwrap()).unwrap();
    assert_eq!(header["from_seq"], 1, "{header}");
    assert_eq!(
        r.text().lines().count() as u64 - 1,
        header["to_seq"].as_u64().unwrap(),
        "every event from 1"
    );
}

/// No secret in `logs` or in any file of the data directory; the logs are
/// the server's trace of the requests, so the search is not vacuous.
#[track_caller]
fn assert_no_secret(d: &Data, logs: &str, secrets: &[&str]) {
    assert!(
        logs.contains("request{method=") && logs.contains("answered"),
        "the logs trace every request: {logs}"
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert!(!logs.contains(secret), "secret #{i} in a log line");
        for f in files(&d.path()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "secret #{i} in {}",
                f.display()
            );
        }
    }
}

#[test]
fn serve_needs_no_setup_and_takes_its_settings_from_the_environment() {
    let help = clean_command().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for shown in [
        "default: 127.0.0.1:8080",
        "env: KEYLEDGER_ADDR",
        "env: KEYLEDGER_USAGE_WINDOW_MS",
        "env: KEYLEDGER_DATA",
        "default: keyledger-data",
    ] {
        assert!(
            help.contains(shown),
            "`serve --help` shows {shown}:\n{help}"
        );
    }

    // No flag at all but the address (from the environment): the data goes
    // to ./keyledger-data, created with the operator token in it.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = clean_command();
    cmd.current_dir(dir.path())
        .arg("serve")
        .env("KEYLEDGER_ADDR", "127.0.0.1:0");
    let s = Server::spawn(cmd, &dir.path().join("logs"));
    let data = dir.path().join("keyledger-data");
    let token = std::fs::read_to_string(data.join("operator-token"))
        .expect("./keyledger-data/operator-token")
        .trim()
        .to_owned();
    assert!(
        s.stdout().contains("keyledger-data/operator-token"),
        "{}",
        s.stdout()
    );
    let r = s
        .post("/v1/admin/tenants/acme/keys")
        .bearer(&token)
        .json(&json!({"user": "alice", "name": "first"}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json()["key"].as_str().unwrap().to_owned();
    let logs = s.stop();
    assert!(!logs.contains(&token) && !logs.contains(&first));
    assert!(
        files(&data).len() > 1,
        "the embedded store lives beside the token"
    );

    // KEYLEDGER_DATA, KEYLEDGER_OPERATOR_TOKEN, KEYLEDGER_USAGE_WINDOW_MS
    // and KEYLEDGER_KEY_PREFIX.
    let elsewhere = dir.path().join("elsewhere");
    let mut cmd = clean_command();
    cmd.current_dir(dir.path())
        .arg("serve")
        .env("KEYLEDGER_ADDR", "127.0.0.1:0")
        .env("KEYLEDGER_DATA", &elsewhere)
        .env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
        .env("KEYLEDGER_USAGE_WINDOW_MS", "0")
        .env("KEYLEDGER_KEY_PREFIX", "tst");
    let s = Server::spawn(cmd, &dir.path().join("logs"));
    assert!(
        s.stdout().contains("$KEYLEDGER_OPERATOR_TOKEN"),
        "an empty ledger welcomes, naming where the token is: {}",
        s.stdout()
    );
    assert!(!s.stdout().contains(TOKEN), "never the token itself");
    let k = s.mint("acme", json!({"user": "alice", "name": "second"}));
    let key = k["key"].as_str().unwrap();
    assert!(key.starts_with("tst_"), "the prefix from the environment");
    let list = s.get("/v1/keys").bearer(key).send().json();
    assert_eq!(
        ids(&list["keys"]),
        vec![k["id"].as_str().unwrap().to_owned()],
        "a ledger of its own"
    );
    // A usage window of 0 ms: one KeyUsed per use, written without waiting a window.
    let head = s.head();
    assert_eq!(verify(&s, key, None)["outcome"], "valid");
    eventually("the use to be written at once", || s.head() > head);
    s.stop();
    assert!(
        !elsewhere.join("operator-token").exists(),
        "the token came from the environment"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("operator-token"))
            .unwrap()
            .trim(),
        token,
        "the first data directory is untouched"
    );
}

/// Sends the head of a request and part of its body on a fresh connection,
/// after one complete request on it, so the server has surely accepted it.
fn start_slow_request(s: &Server, head: &str, body: &[u8], sent: usize) -> TcpStream {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !(contains(&seen, b"\"status\":\"ok\"") && seen.ends_with(b"}")) {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "healthz answered");
        seen.extend_from_slice(&buf[..n]);
    }
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&body[..sent]).unwrap();
    c
}

#[test]
fn sigterm_and_ctrl_c_finish_requests_in_flight_then_stop() {
    let d = Data::new();
    let mut made = Vec::new();
    for signal in ["TERM", "INT"] {
        let mut s = Server::start(
            &d,
            Options {
                usage_window_ms: 3_600_000,
                ..Options::default()
            },
        );
        let writer = s.mint(
            "acme",
            json!({"user": "alice", "name": format!("writer {signal}")}),
        );
        let key = writer["key"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            assert_eq!(verify(&s, &key, None)["outcome"], "valid");
        }
        // A create in flight: its head and part of its body sent.
        let body = json!({"name": format!("in flight at SIG{signal}")}).to_string();
        let head = format!(
            "POST /v1/keys HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            s.addr,
            body.len()
        );
        let mut slow = start_slow_request(&s, &head, body.as_bytes(), 5);
        std::thread::sleep(Duration::from_millis(300));
        s.signal(signal);
        // It stops accepting…
        eventually("new connections to be refused", || {
            TcpStream::connect(&s.addr).is_err()
        });
        // …but the request in flight is finished, and answered.
        slow.write_all(&body.as_bytes()[5..]).unwrap();
        let mut raw = Vec::new();
        slow.read_to_end(&mut raw).unwrap();
        let r = Resp::parse(&raw);
        assert_eq!(r.status, 201, "{}", r.text());
        made.push((r.json()["id"].as_str().unwrap().to_owned(), key));
        let logs = s.wait_for_exit();
        let said = if signal == "TERM" {
            "SIGTERM: shutting down"
        } else {
            "Ctrl-C: shutting down"
        };
        assert!(logs.contains(said), "{logs}");
    }
    // Everything acknowledged is there, and every counted use was written.
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: 3_600_000,
            ..Options::default()
        },
    );
    for (id, key) in &made {
        let shown = s.get(&format!("/v1/keys/{id}")).bearer(key).send();
        assert_eq!(shown.status, 200, "{}", shown.text());
        assert!(
            shown.json()["name"]
                .as_str()
                .unwrap()
                .starts_with("in flight at SIG")
        );
    }
    let list = s.get("/v1/keys").bearer(&made[0].1).send().json();
    assert_eq!(list["active_count"], 4);
    let writers: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"].as_str().unwrap().starts_with("writer"))
        .collect();
    assert_eq!(writers.len(), 2);
    for w in writers {
        // Three verifications, one /v1/keys create: four counted uses each.
        assert_eq!(w["uses"]["total"], 4, "{w}");
    }
    s.stop();
}
