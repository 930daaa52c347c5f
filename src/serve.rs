//! `keyledger serve`: the HTTP service (crate `keyledger-server`) on a data
//! directory, with the operator token and a first-start welcome.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use keyledger_runtime::{Follow, UsageWindow};
use keyledger_server::{AppState, OperatorToken, TokenSource};

use crate::cli::{self, Failure};

/// Options of `keyledger serve` (the data directory and the key prefix are global).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KEYLEDGER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
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
}

/// The environment variable that holds the operator token, if it is not
/// to be read from (or created in) the data directory.
const OPERATOR_TOKEN_ENV: &str = "KEYLEDGER_OPERATOR_TOKEN";

pub async fn run(data: &Path, key_prefix: &str, args: &ServeArgs) -> cli::Result<ExitCode> {
    // On a shared log, follow what the other nodes append.
    let follow = cli::postgres().then(|| {
        Follow::new(
            args.node_id
                .clone()
                .unwrap_or_else(keyledger_runtime::default_node_id),
        )
    });
    if args.node_id.is_some() && follow.is_none() {
        return Err(Failure(
            "--node-id names a node among several sharing a PostgreSQL log: give --postgres too"
                .into(),
        ));
    }
    if let Some(f) = &follow {
        check_node_id(&f.node_id)?;
        tracing::info!(node = %f.node_id, "following the shared PostgreSQL log");
    }
    // Checked once, and used by its real path from here on.
    let data = &cli::data_dir(data)?;
    let ledger = cli::open_following(
        data,
        key_prefix,
        UsageWindow::from_millis(args.usage_window_ms),
        std::time::Duration::from_millis(args.audit_read_window_ms),
        follow,
    )?;
    let env_token = std::env::var(OPERATOR_TOKEN_ENV).ok();
    let (token, source) = match OperatorToken::load_or_create(data, env_token.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            let _ = ledger.shutdown().await;
            return Err(Failure(e));
        }
    };
    let newcomer = match source {
        TokenSource::Created => true,
        TokenSource::Environment => ledger.head() == 0,
        TokenSource::File => false,
    };
    let state = AppState::new(ledger, token);
    keyledger_server::serve(state, &args.addr, |addr| {
        if newcomer {
            println!("{}", welcome(data, addr, source));
        }
    })
    .await
    .map_err(|e| Failure(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
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
        Err(Failure(format!(
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
         it acts only on /v1/admin/... routes. Mint a first key for user `alice` of tenant `acme`:\n\n\
         \x20 curl -sS -X POST http://{addr}/v1/admin/tenants/acme/keys \\\n\
         \x20   -H \"Authorization: Bearer {token}\" \\\n\
         \x20   -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"user\": \"alice\", \"name\": \"first key\"}}'\n\n\
         The answer holds the key (shown once). Use it as `Authorization: Bearer <key>`:\n\n\
         \x20 curl -sS http://{addr}/v1/whoami -H \"Authorization: Bearer <key>\"\n\n\
         The API is described at http://{addr}/openapi.json and in docs/api.md.\n"
    )
}
