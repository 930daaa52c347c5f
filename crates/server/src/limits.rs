//! The server's named limits. The domain's own limits (name and
//! description length, grace period, keys per tenant, summary days) live in
//! `keyledger_core::limits`; page sizes in `keyledger_runtime`.

use std::time::Duration;

pub use keyledger_core::limits::{
    DESCRIPTION_CHARS_MAX, NAME_CHARS_MAX, ROTATION_GRACE_SECONDS_MAX, SUMMARY_DAYS_MAX,
};
pub use keyledger_runtime::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};

/// Largest request body, in bytes; a larger one is answered 413. The
/// largest valid body (a create with a 500-character description in 4-byte
/// characters) is well under it.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// Longest path and query, in bytes; a longer one is answered 414 in the
/// JSON error format. (hyper itself answers a URI over 65,534 bytes 414
/// with an empty body, before any of keyledger's code runs.)
pub const URI_BYTES_MAX: usize = 8 * 1024;

/// Largest header section (names, values and their separators), in bytes;
/// a larger one is answered 431 in the JSON error format. A key is under
/// 100 bytes. (hyper itself answers a request head over its ~400 KB buffer,
/// or with over 100 headers, 431 with an empty body.)
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Requests handled at once; more wait for a slot (within the request time
/// limit). Sized for a 2-core machine: enough to keep the writer's group
/// commits full, few enough to bound memory.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 512;

/// Connections held open at once, from every client together; more wait
/// in the kernel's backlog until one closes. One client alone cannot fill
/// them: see [`CONNECTIONS_PER_CLIENT_MAX`].
pub const CONNECTIONS_MAX: usize = 1024;

/// Connections held open at once from one client (one peer IP address);
/// a client at its limit gets its next connection answered 429
/// `too_many_connections` and closed at once, without waiting for
/// anything, so the accept loop never waits on one client.
pub const CONNECTIONS_PER_CLIENT_MAX: usize = 256;

/// Longest time from a request's arrival to its response's headers,
/// waiting for a slot included; past it the answer is 503 `timeout`.
/// A streamed export's body may take longer: only its start is bounded.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time from a connection's accept, or from its previous
/// response, to a complete request head; past it the connection is closed.
/// A client that trickles its head a byte at a time (a slow-loris client)
/// cannot hold a connection slot for longer.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time a connection may stay open with no request in progress
/// and no byte received or sent (an idle keep-alive connection, or one
/// that sends nothing at all); past it the connection is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits a server is started with that an embedder (or a test) may
/// change; [`Default`] gives the constants above, which `keyledger serve`
/// uses unless its options say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests handled at once ([`REQUESTS_IN_FLIGHT_MAX`]).
    pub requests_in_flight_max: usize,
    /// Connections held open at once, all clients together ([`CONNECTIONS_MAX`]).
    pub connections_max: usize,
    /// Connections held open at once from one peer IP address
    /// ([`CONNECTIONS_PER_CLIENT_MAX`]).
    pub connections_per_client_max: usize,
    /// Longest time to a response's headers ([`REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Longest time to a complete request head ([`REQUEST_HEAD_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// Longest idle time of a connection ([`IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
            connections_max: CONNECTIONS_MAX,
            connections_per_client_max: CONNECTIONS_PER_CLIENT_MAX,
            request_timeout: REQUEST_TIMEOUT,
            header_read_timeout: REQUEST_HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Bytes gathered before a chunk of a streamed export is sent.
pub const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// Chunks of a streamed export buffered ahead of a slow client.
pub const EXPORT_CHUNKS_BUFFERED: usize = 4;

/// Shortest operator token accepted from the environment, in characters.
pub const OPERATOR_TOKEN_CHARS_MIN: usize = 24;

/// Longest operator token accepted, in characters.
pub const OPERATOR_TOKEN_CHARS_MAX: usize = 512;

const _: () = assert!(BODY_BYTES_MAX > 4 * (DESCRIPTION_CHARS_MAX + NAME_CHARS_MAX + 256) + 1024);
const _: () = assert!(REQUESTS_IN_FLIGHT_MAX <= CONNECTIONS_MAX);
const _: () = assert!(CONNECTIONS_PER_CLIENT_MAX < CONNECTIONS_MAX);
const _: () = assert!(OPERATOR_TOKEN_CHARS_MIN < OPERATOR_TOKEN_CHARS_MAX);
