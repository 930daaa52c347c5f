//! Connections: the global and per-client limits, the idle timeout, and
//! the accept loop that applies them (docs/operations.md, "Connections").
//!
//! * All clients together hold at most
//!   [`ServerLimits::connections_max`](crate::limits::ServerLimits)
//!   connections; beyond it new connections wait in the kernel's backlog.
//! * One client (one peer IP address) holds at most
//!   `connections_per_client_max`; its next connection is answered 429
//!   `too_many_connections` with a non-blocking write and closed at once.
//!   The per-client limit is below the global one, so one client cannot
//!   make the accept loop wait, and the others keep being served.
//! * A connection with no request in progress and no byte in or out for
//!   `idle_timeout` is closed (gracefully: a response being written is
//!   finished first); hyper closes one whose request head is not complete
//!   `header_read_timeout` after the accept or the previous response.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

/// Open connections by peer address.
#[derive(Debug)]
pub(crate) struct Clients {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

impl Clients {
    pub(crate) fn new(max: usize) -> Self {
        Clients {
            max,
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot for one more connection of `ip`, or `None` when it holds
    /// its limit already (counted as refused).
    pub(crate) fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }

    /// Connections refused because their client was at its limit.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open from `ip` (for tests).
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One connection of a client, counted until dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection has been doing: the last byte in or out, and the
/// requests in progress.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Nanoseconds from `base` to the last byte read or written, or to the
    /// end of the last request.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// A request in progress until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection becomes idle past `idle`: `None` while a
    /// request is in progress.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + idle)
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's socket: records its activity and holds the connection's
/// global and per-client slots until it is dropped.
pub(crate) struct Tracked {
    pub(crate) inner: TcpStream,
    pub(crate) activity: Arc<Activity>,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
    pub(crate) _slot: ClientSlot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The whole answer to a connection over its client's limit.
const REFUSAL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 127\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"this client holds as many connections as it may; reuse one, or close some\"}}";

/// Answers a connection over its client's limit and closes it, never
/// waiting: one non-blocking write into the new socket's empty send buffer.
pub(crate) fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSAL);
    drop(stream);
}

/// The next connection: retried after a pause when accepting fails (out of
/// file descriptors, say), so the loop neither spins nor stops.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_whole_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn a_client_holds_at_most_its_limit_and_a_closed_slot_is_freed() {
        let clients = Arc::new(Clients::new(2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let one = clients.try_enter(a).unwrap();
        let _two = clients.try_enter(mapped).unwrap();
        assert!(clients.try_enter(a).is_none(), "a third from one address");
        assert_eq!(clients.refused(), 1);
        let _other = clients
            .try_enter(b)
            .expect("another client is not affected");
        drop(one);
        assert_eq!(clients.open_from(a), 1);
        let _again = clients.try_enter(a).expect("a freed slot is taken again");
    }

    #[test]
    fn idle_counts_from_the_last_activity_and_not_while_busy() {
        let a = Activity::new();
        let idle = Duration::from_secs(5);
        let first = a.idle_deadline(idle).unwrap();
        let busy = a.begin();
        assert!(a.idle_deadline(idle).is_none());
        std::thread::sleep(Duration::from_millis(5));
        drop(busy);
        assert!(a.idle_deadline(idle).unwrap() > first);
    }
}
