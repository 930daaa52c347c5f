//! `keyledger serve`: the HTTP service (crate `keyledger-server`) on a data
//! directory, with the operator token and a first-start welcome.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use keyledger_runtime::{Follow, SnapshotConfig, UsageWindow};
use keyledger_server::{AppState, OperatorToken, TokenSource, limits};

use crate::cli::{self, Failure};

/// Options of `keyledger serve` (the data directory and the key prefix are global).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Not an option of `serve` (it prints no result): the global `--json`,
    /// taken here so that `serve --help` does not offer it.
    #[arg(long, hide = true)]
    pub json: bool,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KEYLEDGER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Serve the global tree's checkpoint and tiles (`/log/checkpoint`,
    /// `/log/tile/...`, C2SP tlog-tiles) to anyone; without it they take
    /// the operator token. They hold only hashes (docs/audit.md).
    #[arg(long, env = "KEYLEDGER_TILES_PUBLIC")]
    pub tiles_public: bool,
    /// Uses are counted in memory and written as one KeyUsed event per key
    /// per window of this many milliseconds (0: one event per use).
    #[arg(long, env = "KEYLEDGER_USAGE_WINDOW_MS", default_value_t = 1000)]
    pub usage_window_ms: u64,
    /// Reads of the audit trail by one actor of one kind are written as one
    /// AuditRead event per window of this many milliseconds, with their
    /// count; each reader waits for the event that records its read (a
    /// reader alone waits for none). 0: one event per read.
    #[arg(
        long,
        env = "KEYLEDGER_AUDIT_READ_WINDOW_MS",
        default_value_t = keyledger_runtime::AUDIT_READ_WINDOW_DEFAULT.as_millis() as u64
    )]
    pub audit_read_window_ms: u64,
    /// With --postgres: this node's name among the nodes sharing the log,
    /// used to wait until every node enforces a revocation (default: the
    /// host name, the process id and a random suffix).
    #[arg(long, env = "KEYLEDGER_NODE_ID")]
    pub node_id: Option<String>,
    /// With --postgres: a key this node does not know (or a
    /// Keyledger-Position it has not applied) is answered after it read
    /// the log's head and applied the log up to it; such reads start at
    /// most once per this many milliseconds, each shared by every miss
    /// waiting (docs/operations.md, "What a client sees while nodes catch up").
    #[arg(long, env = "KEYLEDGER_MISS_INTERVAL_MS",
        default_value_t = keyledger_runtime::MISS_INTERVAL_DEFAULT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub miss_interval_ms: u64,
    /// Connections held open at once, all clients together; more wait in
    /// the kernel's backlog until one closes.
    #[arg(long, env = "KEYLEDGER_CONNECTIONS_MAX", default_value_t = limits::CONNECTIONS_MAX as u64,
        value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_OPTION_MAX))]
    pub connections_max: u64,
    /// Connections held open at once from one client (peer IP address); its
    /// next one is answered 429 and closed at once. At most --connections-max.
    #[arg(long, env = "KEYLEDGER_CONNECTIONS_PER_CLIENT_MAX",
        default_value_t = limits::CONNECTIONS_PER_CLIENT_MAX as u64,
        value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_OPTION_MAX))]
    pub connections_per_client_max: u64,
    /// Milliseconds from a connection's accept, or its previous response,
    /// to a complete request head; past it the connection is closed.
    #[arg(long, env = "KEYLEDGER_HEADER_READ_TIMEOUT_MS",
        default_value_t = limits::REQUEST_HEAD_TIMEOUT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no request in progress
    /// and no byte in or out (an idle keep-alive connection); then it is closed.
    #[arg(long, env = "KEYLEDGER_IDLE_TIMEOUT_MS",
        default_value_t = limits::IDLE_TIMEOUT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// A snapshot of the projections is written once this many events
    /// were applied since the last one, so that a restart replays only
    /// the log after it (docs/operations.md, "Snapshots"). 0: no snapshot
    /// is read or written, and every start replays the whole log.
    #[arg(long, env = "KEYLEDGER_SNAPSHOT_EVERY_EVENTS",
        default_value_t = keyledger_runtime::SNAPSHOT_EVERY_EVENTS_DEFAULT)]
    pub snapshot_every_events: u64,
    /// ... or once this many seconds have passed since the last one, if
    /// any event was applied since. One is also written at shutdown.
    #[arg(long, env = "KEYLEDGER_SNAPSHOT_EVERY_SECS",
        default_value_t = keyledger_runtime::SNAPSHOT_EVERY_DEFAULT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_secs: u64,
    /// Accept signed leak reports (`POST /v1/keys/leaked`) from a
    /// secret-scanning partner: NAME (a-z, 0-9, `-`) and a file of its
    /// P-256 public keys in PEM (GitHub publishes its keys at
    /// /meta/public_keys/secret_scanning of its API). Repeatable
    /// (docs/security.md).
    #[arg(long, value_name = "NAME=PATH.pem")]
    pub leak_partner: Vec<String>,
    /// Let webhooks go to private, loopback (over HTTPS), link-local and
    /// other non-public addresses (plain http:// stays loopback-only).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Send no webhook deliveries from this node (with several nodes on one
    /// PostgreSQL log, let one node deliver). Subscriptions are still managed.
    #[arg(long, env = "KEYLEDGER_NO_WEBHOOK_DELIVERY")]
    pub no_webhook_delivery: bool,
    /// With --postgres, keep no SQL projections for analysts from this node
    /// (the `keyledger_read` views; docs/operations.md). Other nodes still
    /// keep them; one node projecting is enough.
    #[arg(long, env = "KEYLEDGER_NO_PROJECTIONS")]
    pub no_projections: bool,
    /// How long a webhook delivery is retried, from its first attempt,
    /// before it is marked failed (`30s`, `15m`, `24h`, `3d`).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_RETRY_FOR", default_value = "24h",
        value_parser = cli::parse_duration)]
    pub webhook_retry_for: Duration,
    /// The wait after a webhook's first failed attempt; it doubles per
    /// attempt (less up to half, at random) up to --webhook-backoff-max.
    #[arg(long, env = "KEYLEDGER_WEBHOOK_BACKOFF", default_value = "5s",
        value_parser = cli::parse_duration)]
    pub webhook_backoff: Duration,
    /// The longest wait between two attempts of a webhook delivery.
    #[arg(long, env = "KEYLEDGER_WEBHOOK_BACKOFF_MAX", default_value = "1h",
        value_parser = cli::parse_duration)]
    pub webhook_backoff_max: Duration,
    /// How long one webhook attempt may take (connect, send, answer).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_TIMEOUT", default_value = "10s",
        value_parser = cli::parse_duration)]
    pub webhook_timeout: Duration,
    /// `key.expiring` is sent this long before a key expires, once per key.
    #[arg(long, env = "KEYLEDGER_WEBHOOK_EXPIRING_BEFORE", default_value = "7d",
        value_parser = cli::parse_duration)]
    pub webhook_expiring_before: Duration,
    /// How often keys are looked at for `key.expiring` (only in tenants
    /// with a subscription to it).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_EXPIRING_SCAN", default_value = "30s",
        value_parser = cli::parse_duration)]
    pub webhook_expiring_scan: Duration,
    /// A witness each stored checkpoint is sent to (C2SP tlog-witness
    /// `add-checkpoint`), as `<verifier key>=<URL prefix>`: its C2SP
    /// cosignature/v1 verifier key and the prefix `add-checkpoint` is posted
    /// under. Its cosignatures are kept with the checkpoint. Repeatable.
    #[arg(long = "witness", value_name = "VKEY=URL")]
    pub witnesses: Vec<keyledger_runtime::WitnessTarget>,
}

/// The largest connection limit the options take.
const CONNECTIONS_OPTION_MAX: u64 = 1 << 20;

impl ServeArgs {
    /// The server's limits: these options over the defaults.
    fn limits(&self) -> cli::Result<limits::ServerLimits> {
        if self.connections_per_client_max > self.connections_max {
            return Err(Failure::msg(format!(
                "--connections-per-client-max ({}) is over --connections-max ({})",
                self.connections_per_client_max, self.connections_max
            )));
        }
        Ok(limits::ServerLimits {
            connections_max: self.connections_max as usize,
            connections_per_client_max: self.connections_per_client_max as usize,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            ..limits::ServerLimits::default()
        })
    }
}

/// The environment variable that holds the operator token, if it is not
/// to be read from (or created in) the data directory.
const OPERATOR_TOKEN_ENV: &str = "KEYLEDGER_OPERATOR_TOKEN";

pub async fn run(data: &Path, key_prefix: &str, args: &ServeArgs) -> cli::Result<ExitCode> {
    let limits = args.limits()?;
    let mut partners = keyledger_server::leaks::LeakPartners::none();
    for spec in &args.leak_partner {
        partners.add_spec(spec).map_err(Failure::msg)?;
    }
    raise_file_limit(limits.connections_max);
    // On a shared log, follow what the other nodes append.
    let follow = cli::postgres().then(|| Follow {
        miss_interval: Duration::from_millis(args.miss_interval_ms),
        ..Follow::new(
            args.node_id
                .clone()
                .unwrap_or_else(keyledger_runtime::default_node_id),
        )
    });
    if args.node_id.is_some() && follow.is_none() {
        return Err(Failure::msg(
            "--node-id names a node among several sharing a PostgreSQL log: give --postgres too",
        ));
    }
    if let Some(f) = &follow {
        check_node_id(&f.node_id)?;
        tracing::info!(node = %f.node_id, "following the shared PostgreSQL log");
    }
    cli::keep_projections(!args.no_projections);
    // A bad token in the environment is refused before the data directory
    // is opened, not after a replay of the whole log.
    let env_token = std::env::var(OPERATOR_TOKEN_ENV).ok();
    if let Some(t) = env_token.as_deref().filter(|t| !t.is_empty()) {
        OperatorToken::new(t).map_err(|e| Failure::msg(format!("{OPERATOR_TOKEN_ENV}: {e}")))?;
    }
    // Checked once, and used by its real path from here on.
    let data = &cli::data_dir(data)?;
    let webhooks = keyledger_runtime::webhooks::WebhookConfig {
        deliver: !args.no_webhook_delivery,
        allow_private: args.webhook_allow_private,
        retry_for: args.webhook_retry_for,
        backoff_first: args.webhook_backoff,
        backoff_max: args.webhook_backoff_max.max(args.webhook_backoff),
        attempt_timeout: args.webhook_timeout,
        expiring_before: args.webhook_expiring_before,
        expiring_scan: args.webhook_expiring_scan,
        ..keyledger_runtime::webhooks::WebhookConfig::in_dir(data)
    };
    let snapshots = (args.snapshot_every_events > 0).then(|| SnapshotConfig {
        every_events: args.snapshot_every_events,
        every: Duration::from_secs(args.snapshot_every_secs),
        ..SnapshotConfig::in_dir(data)
    });
    let started = std::time::Instant::now();
    let ledger = cli::open_with_config(
        data,
        key_prefix,
        keyledger_runtime::Config {
            usage_window: UsageWindow::from_millis(args.usage_window_ms),
            audit_read_window: std::time::Duration::from_millis(args.audit_read_window_ms),
            follow,
            webhooks: Some(webhooks),
            witnesses: args.witnesses.clone(),
            snapshots,
            ..keyledger_runtime::Config::default()
        },
    )?;
    let start = &ledger.metrics().snapshots;
    tracing::info!(
        snapshot_position = start.start_snapshot_position.load(Ordering::Relaxed),
        replayed = start.start_replayed_events.load(Ordering::Relaxed),
        ms = started.elapsed().as_millis() as u64,
        "projections ready"
    );
    let (token, source) = match OperatorToken::load_or_create(data, env_token.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            let _ = ledger.shutdown().await;
            return Err(Failure::msg(e));
        }
    };
    // Until the ledger holds an event, every start says what to do next:
    // a first start that failed after creating the token (a port in use)
    // is not the last chance to read it.
    let newcomer = match source {
        TokenSource::Created => true,
        TokenSource::Environment | TokenSource::File => ledger.head() == 0,
    };
    for name in partners.names() {
        tracing::info!(partner = name, "accepting signed leak reports");
    }
    let state = AppState::with_limits(ledger, token, limits)
        .with_leak_partners(partners)
        .with_tiles_public(args.tiles_public);
    keyledger_server::serve(state, &args.addr, |addr| {
        if newcomer {
            println!("{}", welcome(data, addr, source));
        }
    })
    .await
    .map_err(|e| Failure::msg(e.to_string()))?;
    // Said at any log level: the operator who pressed Ctrl-C knows the
    // counted uses are on disk.
    eprintln!(
        "keyledger stopped: the requests in flight were answered and every counted use is written"
    );
    Ok(ExitCode::SUCCESS)
}

/// File descriptors the process needs besides its connections (the log,
/// its indexes, the listener, the runtime), with room to spare.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files to the hard one when the soft one
/// is too low for `connections` connections (often 1024 by default): a
/// server out of descriptors cannot accept, nor open its log. Warns when
/// even the hard limit is too low (see docs/operations.md).
fn raise_file_limit(connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let want = connections as u64 + FILES_BESIDES_CONNECTIONS;
        let limit = getrlimit(Resource::Nofile);
        let (soft, hard) = (limit.current, limit.maximum);
        if soft.is_none_or(|s| s >= want) {
            return;
        }
        let target = hard.map_or(want, |h| h.min(want));
        let mut now = soft;
        if soft.is_some_and(|s| s < target) {
            let raised = rustix::process::Rlimit {
                current: Some(target),
                maximum: hard,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::info!(from = ?soft, to = target, "raised the open-file limit");
                    now = Some(target);
                }
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
        if now.is_some_and(|n| n < want) {
            tracing::warn!(
                limit = ?now,
                want,
                "the open-file limit is below --connections-max plus the server's own files; raise it (ulimit -n, LimitNOFILE=)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = connections;
}

/// Longest node name.
const NODE_ID_CHARS_MAX: usize = 100;

/// A node name: 1 to 100 printable characters without spaces.
fn check_node_id(id: &str) -> cli::Result<()> {
    let fine = !id.is_empty()
        && id.chars().count() <= NODE_ID_CHARS_MAX
        && id.chars().all(|c| c.is_ascii_graphic());
    if fine {
        Ok(())
    } else {
        Err(Failure::msg(format!(
            "--node-id must be 1 to {NODE_ID_CHARS_MAX} printable ASCII characters without spaces"
        )))
    }
}

/// What a newcomer does next: mint a first key through the operator route.
/// Names where the token is, never the token itself.
fn welcome(data: &Path, addr: SocketAddr, source: TokenSource) -> String {
    let token = match source {
        TokenSource::Environment => format!("${OPERATOR_TOKEN_ENV}"),
        _ => format!("$(cat '{}')", OperatorToken::path(data).display()),
    };
    let whence = match source {
        TokenSource::Environment => format!("taken from {OPERATOR_TOKEN_ENV}"),
        _ => format!(
            "written to {} (readable by you only)",
            OperatorToken::path(data).display()
        ),
    };
    format!(
        "\nkeyledger is running for the first time. The operator token was {whence};\n\
         it acts on /v1/admin/... routes (and on a tenant's routes with a `Keyledger-Tenant` header).\n\
         Mint a first key for user `alice` of tenant `acme`:\n\n\
         \x20 curl -sS -X POST http://{addr}/v1/admin/tenants/acme/keys \\\n\
         \x20   -H \"Authorization: Bearer {token}\" \\\n\
         \x20   -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"user\": \"alice\", \"name\": \"first key\"}}'\n\n\
         The answer holds the key (shown once). Use it as `Authorization: Bearer <key>`:\n\n\
         \x20 curl -sS http://{addr}/v1/whoami -H \"Authorization: Bearer <key>\"\n\n\
         Or open the web console at http://{addr}/ and sign in with the key (or the token).\n\
         The API is described at http://{addr}/openapi.json and in docs/api.md.\n"
    )
}
