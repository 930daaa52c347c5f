//! The server's limits on a real socket: [`keyledger_server::serve_until`]
//! on a bound port with small [`ServerLimits`], driven by a raw HTTP/1.1
//! client that can stall a body half way. Each test shows one limit biting
//! and then letting go: the request time limit (503 `timeout`, nothing
//! written), the connection limit (the next connection waits for a slot)
//! and the in-flight limit (the next request waits for a slot).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use keyledger_runtime::{Config, Keyledger, OsEntropy, SystemClock, UsageWindow};
use keyledger_server::limits::ServerLimits;
use keyledger_server::{AppState, OperatorToken, ServeError, serve_until};
use keyledger_store::MemoryLog;
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-the-limit-tests";

/// A server on its own runtime, stopped (gracefully) on drop.
struct Running {
    addr: String,
    ledger: Keyledger,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    fn start(limits: ServerLimits) -> Running {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ledger = Keyledger::open_with(
                    Arc::new(MemoryLog::new()),
                    Config {
                        usage_window: UsageWindow::Manual,
                        ..Config::default()
                    },
                    Arc::new(SystemClock),
                    Arc::new(OsEntropy),
                    &mut |_, _| {},
                )
                .unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let state = AppState::with_limits(
                    ledger.clone(),
                    OperatorToken::new(OPERATOR).unwrap(),
                    limits,
                );
                ready_tx.send((addr, ledger)).unwrap();
                serve_until(state, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let (addr, ledger) = ready_rx.recv().unwrap();
        Running {
            addr,
            ledger,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// A connection from another client: a socket bound to `source` (any
    /// of 127.0.0.0/8 is this machine on Linux) before it connects.
    fn connect_from(&self, source: &str) -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap()
        });
        let s = stream.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// One request on a fresh connection, closed after the answer.
    fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Resp {
        let mut s = self.connect();
        s.write_all(&request(method, path, auth, body, true))
            .unwrap();
        read_response(&mut s).unwrap()
    }

    fn mint(&self) -> String {
        let r = self.call(
            "POST",
            "/v1/admin/tenants/acme/keys",
            Some(OPERATOR),
            Some(r#"{"user": "alice", "name": "limits"}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["key"].as_str().unwrap().to_owned()
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("the server stops cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A raw request; `close` asks the server to close the connection after it.
fn request(
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
    close: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: limits\r\n");
    if close {
        head.push_str("Connection: close\r\n");
    }
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    head.into_bytes()
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Reads one response (its head, then `Content-Length` bytes), leaving the
/// connection open for the next.
fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    Ok(Resp {
        status,
        body: String::from_utf8(body).unwrap(),
    })
}

/// Whether an answer arrives within `wait` (false: the read timed out).
fn answers_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    let got = match s.peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("{e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    got
}

fn active_count(server: &Running, key: &str) -> u64 {
    let r = server.call("GET", "/v1/keys", Some(key), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["active_count"].as_u64().unwrap()
}

#[test]
fn a_request_over_the_time_limit_is_answered_503_and_writes_nothing() {
    let server = Running::start(ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    });
    let key = server.mint();
    let head = server.ledger.head();
    // A create whose body never finishes arriving (a slow-loris client).
    let body = r#"{"name": "never finished"}"#;
    let mut slow = server.connect();
    let raw = request("POST", "/v1/keys", Some(&key), Some(body), false);
    slow.write_all(&raw[..raw.len() - 8]).unwrap();
    let r = read_response(&mut slow).expect("an answer at the time limit");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "timeout", "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300ms")
    );
    assert_eq!(server.ledger.head(), head, "nothing was written");
    assert_eq!(active_count(&server, &key), 1);
    // A prompt request is not affected.
    assert_eq!(server.call("GET", "/healthz", None, None).status, 200);
    server.stop();
}

/// A keep-alive connection served once and left open.
fn served_once(mut c: TcpStream) -> TcpStream {
    c.write_all(&request("GET", "/healthz", None, None, false))
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    c
}

/// A metric, read by a client of its own (127.0.0.9).
fn metric(server: &Running, name: &str) -> u64 {
    let mut c = server.connect_from("127.0.0.9");
    c.write_all(&request("GET", "/metrics", Some(OPERATOR), None, true))
        .unwrap();
    let body = read_response(&mut c).unwrap().body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

#[test]
fn a_connection_over_the_global_limit_waits_for_a_slot() {
    let server = Running::start(ServerLimits {
        connections_max: 2,
        connections_per_client_max: 1,
        ..ServerLimits::default()
    });
    // Two clients, one keep-alive connection each.
    let mut held = vec![
        served_once(server.connect_from("127.0.0.1")),
        served_once(server.connect_from("127.0.0.2")),
    ];
    held[1]
        .write_all(&request("GET", "/metrics", Some(OPERATOR), None, false))
        .unwrap();
    let metrics = read_response(&mut held[1]).unwrap().body;
    assert!(
        metrics.contains("keyledger_http_connections_open 2\n"),
        "{metrics}"
    );
    // A third client's connection waits in the backlog: not answered.
    let mut third = server.connect_from("127.0.0.3");
    third
        .write_all(&request("GET", "/healthz", None, None, false))
        .unwrap();
    assert!(
        !answers_within(&mut third, Duration::from_millis(400)),
        "a third connection was served with a limit of two"
    );
    // One closes; the third takes its slot and is answered.
    drop(held.remove(0));
    let r = read_response(&mut third).expect("served once a slot is free");
    assert_eq!(r.status, 200, "{}", r.body);
    drop(held);
    drop(third);
    server.stop();
}

#[test]
fn a_client_over_its_limit_is_refused_at_once_and_the_others_are_served() {
    let server = Running::start(ServerLimits {
        connections_max: 16,
        connections_per_client_max: 2,
        ..ServerLimits::default()
    });
    let mut held = vec![
        served_once(server.connect_from("127.0.0.1")),
        served_once(server.connect_from("127.0.0.1")),
    ];
    // The same client's third connection: 429 at once, then closed.
    let mut over = server.connect_from("127.0.0.1");
    let started = std::time::Instant::now();
    let r = read_response(&mut over).expect("an answer without asking");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "too_many_connections");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut byte = [0u8; 1];
    assert_eq!(
        over.read(&mut byte).unwrap_or(0),
        0,
        "closed after the answer"
    );
    // Another client is served meanwhile, and the refusal is counted.
    let other = server.connect_from("127.0.0.2");
    drop(served_once(other));
    assert_eq!(
        metric(&server, "keyledger_http_connections_refused_total"),
        1
    );
    // Once one of its connections closes, the client is served again.
    drop(held.remove(0));
    std::thread::sleep(Duration::from_millis(100));
    drop(served_once(server.connect_from("127.0.0.1")));
    drop(held);
    server.stop();
}

/// Whether the server closes `s` within `wait` (reads answers meanwhile).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_connections_and_slow_request_heads_are_closed_at_their_timeouts() {
    let server = Running::start(ServerLimits {
        idle_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(1500),
        ..ServerLimits::default()
    });
    // Idle after a response, and silent from the start: closed at the idle
    // timeout, well before the header-read one.
    let mut kept = served_once(server.connect());
    let mut silent = server.connect();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(5)));
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "idle connections closed after {:?}",
        started.elapsed()
    );
    // A head trickled a byte every 100 ms is never idle, but is cut at
    // the header-read timeout.
    let mut slow = server.connect();
    let started = std::time::Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(10) {
        if slow.write_all(b"X").is_err() || closed_within(&mut slow, Duration::from_millis(100)) {
            cut = true;
            break;
        }
    }
    let held = started.elapsed();
    assert!(cut, "a trickled head held its connection for {held:?}");
    assert!(
        held >= Duration::from_millis(1000),
        "cut after {held:?}, before the header-read timeout"
    );
    // A request in progress is not idle: a body trickled over twice the
    // idle timeout is answered.
    let key = server.mint();
    let mut busy = server.connect();
    let body = format!(r#"{{"key": "{key}"}}"#);
    let raw = request("POST", "/v1/verify", None, Some(&body), false);
    let (start, rest) = raw.split_at(raw.len() - 10);
    busy.write_all(start).unwrap();
    for chunk in rest.chunks(5) {
        std::thread::sleep(Duration::from_millis(250));
        busy.write_all(chunk).unwrap();
    }
    let r = read_response(&mut busy).expect("answered");
    assert_eq!(r.json()["outcome"], "valid", "{}", r.body);
    server.stop();
}

#[test]
fn a_request_over_the_in_flight_limit_waits_for_a_slot() {
    let server = Running::start(ServerLimits {
        requests_in_flight_max: 1,
        ..ServerLimits::default()
    });
    let key = server.mint();
    // A verification holds the one slot while its body trickles in.
    let mut first = server.connect();
    let body = format!(r#"{{"key": "{key}"}}"#);
    let raw = request("POST", "/v1/verify", None, Some(&body), false);
    let (start, rest) = raw.split_at(raw.len() - 10);
    first.write_all(start).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A second request, on its own connection, waits for that slot.
    let mut second = server.connect();
    second
        .write_all(&request("GET", "/healthz", None, None, false))
        .unwrap();
    assert!(
        !answers_within(&mut second, Duration::from_millis(400)),
        "a second request ran with a limit of one in flight"
    );
    // The first finishes; then the second runs.
    first.write_all(rest).unwrap();
    let r = read_response(&mut first).unwrap();
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("valid"))
    );
    assert_eq!(read_response(&mut second).unwrap().status, 200);
    server.stop();
}
