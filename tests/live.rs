//! A `keyledger serve` that a test may kill at any moment, and a raw
//! HTTP/1.1 client that tells a lost answer (the server died, the request
//! may or may not have taken effect) from a received one. Used by the crash
//! harness (`crash.rs`) and the resource-limit tests (`limits.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::bin;

/// The operator token the servers of these tests are given.
pub const TOKEN: &str = "operator-token-of-the-reliability-tests";

/// A small deterministic generator (SplitMix64): every random choice of a
/// test comes from one printed seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from `var`, or from the clock; printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{var}={seed}");
    seed
}

/// A number from the environment, or `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A running `keyledger serve` on a free port.
pub struct Live {
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    stderr: PathBuf,
}

impl Live {
    /// Starts `keyledger --data <data> serve` with the usage window given
    /// and waits for its `listening on` line.
    pub fn start(data: &Path, usage_window_ms: u64) -> Live {
        Live::start_with(data, usage_window_ms, "info", &[])
    }

    /// [`Live::start`] with logs at `log` (`KEYLEDGER_LOG`) and more
    /// options of `serve`.
    pub fn start_with(data: &Path, usage_window_ms: u64, log: &str, options: &[&str]) -> Live {
        let (mut child, stderr) = Live::spawn(data, usage_window_ms, log, options);
        match crate::util::listening_addr(&mut child, Duration::from_secs(60), |_| {}) {
            Some(addr) => Live {
                child: Some(child),
                addr,
                stderr,
            },
            None => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the server printed no `listening on` line ({status:?}); stderr:\n{}",
                    tail(&std::fs::read_to_string(&stderr).unwrap_or_default())
                );
            }
        }
    }

    /// Starts the server and kills it with SIGKILL after `after`, whether
    /// or not it is listening yet (a crash during start-up and recovery).
    pub fn start_and_kill(data: &Path, usage_window_ms: u64, after: Duration) {
        let (mut child, _) = Live::spawn(data, usage_window_ms, "info", &[]);
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn spawn(data: &Path, usage_window_ms: u64, log: &str, options: &[&str]) -> (Child, PathBuf) {
        let log_dir = data.with_extension("logs");
        std::fs::create_dir_all(&log_dir).expect("a log directory");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let stderr = log_dir.join(format!("stderr-{stamp}.log"));
        let child = Command::new(bin())
            .arg("--data")
            .arg(data)
            .args(["serve", "--addr", "127.0.0.1:0", "--usage-window-ms"])
            .arg(usage_window_ms.to_string())
            .args(options)
            .env("KEYLEDGER_OPERATOR_TOKEN", TOKEN)
            .env("KEYLEDGER_LOG", log)
            .env("KEYLEDGER_AUDIT_ORIGIN", crate::util::LEGACY_ORIGIN)
            .env_remove("KEYLEDGER_ADDR")
            .env_remove("KEYLEDGER_USAGE_WINDOW_MS")
            .env_remove("KEYLEDGER_KEY_PREFIX")
            .env_remove("KEYLEDGER_DATA")
            .env_remove("KEYLEDGER_TENANT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a stderr file"))
            .spawn()
            .expect("the binary starts");
        (child, stderr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's log so far (its last lines).
    pub fn logs(&self) -> String {
        tail(&self.all_logs())
    }

    /// The server's whole log so far.
    pub fn all_logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits (bounded) for a clean exit.
    pub fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let Some(status) = crate::util::wait_exit(&mut child, Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("the server did not stop on SIGTERM; log:\n{}", self.logs());
        };
        assert!(
            status.success(),
            "exit status {status:?} after SIGTERM; log:\n{}",
            self.logs()
        );
    }

    /// Resident memory of the server, in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The last applied log position, from `/metrics`.
    pub fn head(&self) -> u64 {
        let auth = format!("Bearer {TOKEN}");
        let r = request(
            &self.addr,
            "GET",
            "/metrics",
            &[("Authorization", &auth)],
            None,
        )
        .expect("/metrics answers");
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix("keyledger_log_head "))
            .and_then(|n| n.trim().parse().ok())
            .expect("keyledger_log_head in /metrics")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads
/// the whole answer. `Err` means no complete answer arrived: the
/// connection was refused, or closed before the response was complete.
/// Whatever the request asked may or may not have happened.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Resp, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let body = body.map(Value::to_string);
    request_on(s, addr, method, path, headers, body.as_deref())
}

/// [`request`] on a connection made already (from another address, say),
/// with a body of any text (sent as `application/json`).
pub fn request_on(
    mut s: TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp, String> {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    out.push_str("\r\n");
    if let Some(b) = body {
        out.push_str(b);
    }
    s.write_all(out.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(format!("read: {e}"));
    }
    parse_complete(&raw).ok_or_else(|| format!("incomplete answer ({} bytes)", raw.len()))
}

/// A connection to `addr` from `source`, another address of this machine
/// (all of 127.0.0.0/8 is loopback on Linux): to the server, another client.
pub fn connect_from(source: &str, addr: &str) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let source: std::net::SocketAddr = format!("{source}:0")
        .parse()
        .map_err(std::io::Error::other)?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(source)?;
        socket.connect(addr).await
    })?;
    let s = stream.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// A response, only if it is complete (the whole body per
/// `Content-Length`, or every chunk up to the last).
pub fn parse_complete(raw: &[u8]) -> Option<Resp> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        if k == "content-length" {
            length = v.trim().parse::<usize>().ok();
        } else if k == "transfer-encoding" && v.contains("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        let n = length?;
        rest.get(..n)?.to_vec()
    };
    Some(Resp { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let start = eol + 2;
        out.extend_from_slice(data.get(start..start + size)?);
        data = data.get(start + size + 2..)?;
    }
}

/// A well-formed key (right shape and checksum) that no ledger holds,
/// different for each `n`.
pub fn unknown_key(n: u64) -> String {
    let mut material = [7u8; 32];
    material[..8].copy_from_slice(&n.to_le_bytes());
    keyledger_core::Secret::from_material(&keyledger_core::KeyPrefix::default(), &material)
        .expose()
        .to_owned()
}
