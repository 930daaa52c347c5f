//! Arguments and dispatch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use keyledger_core::{
    AuditFilter, AuditReadKind, Day, KeyId, KeyPrefix, KeyStatus, Principal, RevokeReason, Scope,
    ScopeSet, TenantId, Timestamp, UserId,
};
use keyledger_runtime::views::{
    AuditPageBody, CreatedKey, KeyList, KeyView, RemovedUser, StateBody, SummaryView, UsageDays,
    VerifyResponse,
};
use keyledger_runtime::{
    AuditFilterText, Config, Keyledger, ListQuery, NewKey, Order, PointInTime, SnapshotConfig,
    SortField, UsageWindow,
};
use keyledger_store::{EventLog, RedbLog};

use crate::output::{self, Out};

/// keyledger: an event-sourced, audit-first ledger of API keys.
#[derive(Parser, Debug)]
#[command(name = "keyledger", version, about, long_about = None)]
pub struct Args {
    /// Data directory (holds `ledger.redb`).
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_DATA",
        default_value = "keyledger-data"
    )]
    pub data: PathBuf,
    /// Keep the log in this PostgreSQL database instead of the data
    /// directory's `ledger.redb`, so several nodes can share it (the data
    /// directory still holds the operator token and the audit signing key).
    /// A URL such as `postgres://user@host:5432/db`.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_POSTGRES_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub postgres: Option<String>,
    /// redb's page cache for the data directory's `ledger.redb`, in MiB
    /// (not with --postgres).
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_LOG_CACHE_MIB",
        value_name = "MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=1_048_576)
    )]
    pub log_cache_mib: u32,
    /// Print JSON instead of tables (errors too: `{"error": {"code", "message"}}` on standard error).
    #[arg(long, global = true)]
    pub json: bool,
    /// Run the command against this running server instead of a data
    /// directory (`http://…` or `https://…`). Without it, after
    /// `keyledger login`, commands go to the server logged in to unless
    /// `--data` (or KEYLEDGER_DATA) names a data directory.
    #[arg(long, global = true, env = "KEYLEDGER_URL", value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the API key to act with (acts as its owner, in its
    /// tenant). Prefer KEYLEDGER_API_KEY or `keyledger login`: an argument
    /// lands in shell history.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// With --url: a file holding the operator token (or set
    /// KEYLEDGER_OPERATOR_TOKEN), used when no API key is given.
    #[arg(long, global = true, value_name = "FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// Whether `--data` or KEYLEDGER_DATA named the data directory.
    #[arg(skip)]
    pub data_given: bool,
    /// Whether the API key was given as an argument (not from the environment).
    #[arg(skip)]
    pub key_in_argument: bool,
    /// The origin audit checkpoints are signed under: a URL without its
    /// scheme naming this node's logs, e.g. `ledger.example.com/log` (the
    /// global tree's origin; a tenant's log is `<origin>/<tenant>`).
    /// Default: `<host name>/log`. Checkpoints signed under an earlier
    /// origin (before 0.x: `keyledger`) still verify.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_AUDIT_ORIGIN",
        value_name = "ORIGIN",
        value_parser = parse_origin
    )]
    pub audit_origin: Option<String>,
    /// How often a checkpoint is signed and stored for every tenant and
    /// the global tree even when nothing changed: `1h`, `15m`, `30s`, or
    /// seconds. A grown tree is checkpointed within a second regardless.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_CHECKPOINT_INTERVAL",
        value_name = "DURATION",
        default_value = "1h",
        value_parser = parse_interval
    )]
    pub checkpoint_interval: std::time::Duration,
    /// Prefix of minted keys.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_KEY_PREFIX",
        default_value = "klk"
    )]
    pub key_prefix: String,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the HTTP service: every route of the v1 API on this data directory.
    Serve(crate::serve::ServeArgs),
    /// Create, list, show, revoke and rotate keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Subscribe endpoints to notices (webhooks), list and delete them, and
    /// see their deliveries. On a data directory this manages the
    /// subscriptions only; `serve` delivers.
    #[command(subcommand)]
    Webhooks(crate::webhooks_cli::WebhooksCmd),
    /// Remove users (revokes every key they own).
    #[command(subcommand)]
    Users(UsersCmd),
    /// Verify a key, as the API layer would (counts as a use).
    Verify {
        /// The key.
        secret: String,
        /// The scope the request needs.
        #[arg(long)]
        scope: Option<String>,
        /// Credits the call spends, for a key with credits (0: only check
        /// that some are left; docs/policy.md).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=keyledger_core::policy::CREDITS_MAX))]
        cost: u64,
    },
    /// Read, export and verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Every key of a tenant as of an instant (RFC 3339) or a position in its trail.
    State {
        #[command(flatten)]
        tenant: TenantArg,
        /// An RFC 3339 time, or a position in the tenant's trail: its
        /// sequence number, as `audit list` shows it (a whole number).
        #[arg(long)]
        at: String,
        /// Page size (at most 1000), keys in key-id order; without it,
        /// every key (a replay of the tenant: page a large one).
        #[arg(long)]
        limit: Option<usize>,
        /// Where the previous page ended.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Per-day usage rollups.
    #[command(subcommand)]
    Usage(UsageCmd),
    /// Rebuild every projection from the log and check every chain.
    Replay,
    /// Record, for a tenant whose log no longer holds what its signed
    /// checkpoints said and for which no backup exists, what was lost:
    /// starts a new checkpoint epoch (a new origin) with one `LogRecovered`
    /// event (docs/operations.md, "Recovering without a backup").
    Recover {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// Why, for the record: what happened and who decided (required).
        #[arg(long)]
        reason: String,
    },
    /// Fill an empty data directory with a realistic sample.
    Demo,
    /// Find keys of this deployment (--key-prefix) in files and
    /// directories, by shape and checksum, without a lookup; print them
    /// masked with file and line. Exit code 1 when a key is found, 0 when
    /// none, 2 on an error. `--report` sends them to the server as leaked
    /// (each active one is revoked).
    Scan(crate::scan::ScanArgs),
    /// Store a server's URL (--url) and an API key (read from standard
    /// input or KEYLEDGER_API_KEY, never from an argument) in your config
    /// directory, readable by you only; later commands go to that server.
    Login,
    /// Print the tenant, owner, key name and scopes of the credential used.
    Whoami {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Forget the stored login.
    Logout,
    /// Print a shell completion script (bash, zsh or fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(ClapArgs, Debug)]
pub struct TenantArg {
    /// The tenant (on a data directory, required; with an API key against
    /// a server, the key's own).
    #[arg(long, env = "KEYLEDGER_TENANT")]
    pub tenant: Option<String>,
}

#[derive(ClapArgs, Debug)]
pub struct ActingArg {
    /// Record the action as this user's (default: the operator's).
    #[arg(long = "as", value_name = "USER")]
    pub acting_user: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key; the secret is printed once.
    Create {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// The user who owns the key (required unless --as is given).
        #[arg(long)]
        user: Option<String>,
        /// A name that says where the key lives.
        #[arg(long)]
        name: String,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// When it stops working (RFC 3339, in the future).
        #[arg(long)]
        expires_at: Option<String>,
        /// A scope (repeat for several); none gives all but users:remove.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[command(flatten)]
        policy: crate::policy_args::PolicyArgs,
    },
    /// Change a key: name, description, expiry, scopes, metadata, credits,
    /// rate limits (only the fields named; scopes and expiry only narrow
    /// unless you could grant the wider value).
    Update(crate::policy_args::UpdateArgs),
    /// List a tenant's keys (masked).
    List {
        #[command(flatten)]
        tenant: TenantArg,
        /// active, expired or revoked.
        #[arg(long)]
        status: Option<String>,
        /// Only keys created by or for this user.
        #[arg(long)]
        created_by: Option<String>,
        /// Only keys whose name contains this.
        #[arg(long)]
        q: Option<String>,
        /// name, created_at or last_used_at.
        #[arg(long, default_value = "created_at")]
        sort: String,
        /// asc or desc.
        #[arg(long, default_value = "desc")]
        order: String,
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Where the previous page ended.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one key.
    Show {
        #[command(flatten)]
        tenant: TenantArg,
        /// `key_<ulid>`.
        id: String,
    },
    /// Revoke a key, for good.
    Revoke {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// `key_<ulid>`.
        id: String,
        /// manual or compromised.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Replace a key with a new one (same owner, name, scopes).
    Rotate {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// `key_<ulid>`.
        id: String,
        /// How long the old key keeps working (0: revoked now).
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Remove a user: every active key they own is revoked in the same append.
    Remove {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// The user.
        user: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// JSON Lines.
    Jsonl,
    /// CSV with a header.
    Csv,
}

#[derive(ClapArgs, Debug)]
pub struct TrailFilter {
    /// Only events about this key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only events by this actor (user id, key id, operator, system).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only these event types (repeatable).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// From this instant (RFC 3339, inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// To this instant (RFC 3339, exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// Include KeyUsed events.
    #[arg(long)]
    pub include_usage: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// A page of the tenant's trail.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        filter: TrailFilter,
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Where the previous page ended.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Stream the whole (filtered) trail.
    Export {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        filter: TrailFilter,
        /// jsonl or csv.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recompute the hash chain; exit 1 and name the first bad position if broken.
    Verify {
        /// One tenant (default: every tenant).
        #[arg(long, env = "KEYLEDGER_TENANT")]
        tenant: Option<String>,
    },
    /// Signed checkpoints, evidence bundles and their offline verification.
    #[command(flatten)]
    Evidence(crate::evidence_cli::EvidenceCmd),
}

#[derive(Subcommand, Debug)]
pub enum UsageCmd {
    /// Per-day rows for the tenant or one key.
    Daily {
        #[command(flatten)]
        tenant: TenantArg,
        /// One key.
        #[arg(long)]
        key_id: Option<String>,
        /// First day (YYYY-MM-DD; default 30 days ago).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD; default today).
        #[arg(long)]
        to: Option<String>,
    },
    /// Totals, success rate and per-day series.
    Summary {
        #[command(flatten)]
        tenant: TenantArg,
        /// Days, ending today.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Export per-day rows.
    Export {
        #[command(flatten)]
        tenant: TenantArg,
        /// One key.
        #[arg(long)]
        key_id: Option<String>,
        /// First day (YYYY-MM-DD; default: the epoch).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD; default today).
        #[arg(long)]
        to: Option<String>,
        /// csv or jsonl.
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
}

pub use crate::error::{Failure, Result};

/// The tenant of a command on a data directory.
pub fn tenant(t: &TenantArg) -> Result<TenantId> {
    match &t.tenant {
        Some(name) => Ok(name.parse()?),
        None => Err(Failure::msg(
            "name the tenant: --tenant NAME (or set KEYLEDGER_TENANT)",
        )),
    }
}

/// Names given as repeated options, each of which may also be a comma
/// (or space) separated list, as the API's query takes them.
pub fn split_list(names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| n.split([',', ' ']))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `state --at`'s text as the API takes it: a position and an RFC 3339
/// time as given; a plain day (`YYYY-MM-DD`, as the usage commands take)
/// is the start of that day, UTC.
pub fn state_at_text(at: &str) -> Result<String> {
    let at = at.trim();
    if at.parse::<u64>().is_ok() || Timestamp::parse_rfc3339(at).is_ok() {
        return Ok(at.to_owned());
    }
    match Day::parse(at) {
        Ok(day) => Ok(format!("{day}T00:00:00Z")),
        Err(_) => Err(Failure::msg(format!(
            "--at {at}: give an RFC 3339 time (2026-11-01T12:00:00Z), a day (2026-11-01) \
             or a position in the tenant's trail (a whole number)"
        ))),
    }
}

fn key_id(s: &str) -> Result<KeyId> {
    Ok(s.parse()?)
}

pub fn principal(tenant: &TenantId, acting: &ActingArg) -> Result<Principal> {
    Ok(match &acting.acting_user {
        Some(u) => Principal::user(tenant.clone(), u.parse()?),
        None => Principal::operator(tenant.clone()),
    })
}

fn scopes(names: &[String]) -> Result<Option<ScopeSet>> {
    if names.is_empty() {
        return Ok(None);
    }
    let set = split_list(names)
        .iter()
        .map(|n| n.parse::<Scope>().map_err(Failure::msg))
        .collect::<Result<ScopeSet>>()?;
    Ok(Some(set))
}

fn time(s: &Option<String>) -> Result<Option<Timestamp>> {
    Ok(s.as_deref().map(Timestamp::parse_rfc3339).transpose()?)
}

fn day(s: &Option<String>) -> Result<Option<Day>> {
    Ok(s.as_deref().map(Day::parse).transpose()?)
}

/// The data directory's log file.
pub fn log_path(data: &Path) -> PathBuf {
    data.join("ledger.redb")
}

/// The PostgreSQL log to use instead of the data directory's file: set
/// once from `--postgres`, before anything opens the log.
static POSTGRES_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// `--log-cache-mib`, in bytes.
static LOG_CACHE_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The audit origin and checkpoint interval: set once from
/// `--audit-origin` and `--checkpoint-interval`.
static AUDIT_SETTINGS: std::sync::OnceLock<(String, std::time::Duration)> =
    std::sync::OnceLock::new();

/// `--audit-origin`: a base origin `keyledger_audit::origin::check_base` accepts.
fn parse_origin(s: &str) -> std::result::Result<String, String> {
    keyledger_audit::origin::check_base(s).map(|()| s.to_owned())
}

/// `--checkpoint-interval`: `<n>` seconds or a [`parse_duration`]
/// (`30s`, `15m`, `1h`, `1d`); at least a second, at most 366 days.
fn parse_interval(s: &str) -> std::result::Result<std::time::Duration, String> {
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        parse_duration(&format!("{s}s"))?
    } else {
        parse_duration(s)?
    };
    let (min, max) = (
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(366 * 86_400),
    );
    if d < min || d > max {
        return Err(format!("`{s}`: a checkpoint interval is from 1s to 366d"));
    }
    Ok(d)
}

/// A duration option: a whole number and a unit, `ms`, `s`, `m`, `h` or
/// `d` (`30s`, `15m`, `24h`, `7d`).
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 24h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}`: the unit is ms, s, m, h or d")),
    };
    n.checked_mul(ms)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// The audit settings of a data directory: `--audit-origin` (default
/// `<host name>/log`) and `--checkpoint-interval`.
fn audit_config(data: &Path) -> keyledger_runtime::AuditConfig {
    let (origin, interval) = AUDIT_SETTINGS
        .get()
        .cloned()
        .unwrap_or_else(|| (default_origin(), std::time::Duration::from_secs(3600)));
    keyledger_runtime::AuditConfig {
        origin,
        checkpoint_interval: interval,
        ..keyledger_runtime::AuditConfig::in_dir(data)
    }
}

/// `<host name>/log`.
pub fn default_origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    keyledger_runtime::audit::default_base(host.as_deref())
}

/// Whether a PostgreSQL log opened from here on keeps the analysts'
/// projections (`serve` sets it; other commands open the log briefly and
/// leave them to the servers).
static KEEP_PROJECTIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says whether a PostgreSQL log opened from here on keeps the analysts'
/// projections (`keyledger_read`, docs/operations.md).
pub fn keep_projections(on: bool) {
    KEEP_PROJECTIONS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the log is in PostgreSQL (`--postgres`).
pub fn postgres() -> bool {
    POSTGRES_URL.get().is_some()
}

/// Opens the log: the PostgreSQL database given by `--postgres`, or else
/// the data directory's `ledger.redb` (the directory checked by
/// [`data_dir`] first).
pub fn open_log(data: &Path) -> Result<Arc<dyn EventLog>> {
    if let Some(url) = POSTGRES_URL.get() {
        // The URL may hold a password: the message names it by option only.
        let log = keyledger_store::PgLog::connect(url).map_err(|e| {
            Failure::msg(format!(
                "cannot open the PostgreSQL log (--postgres / KEYLEDGER_POSTGRES_URL): {e}"
            ))
        })?;
        if KEEP_PROJECTIONS.load(std::sync::atomic::Ordering::Relaxed) {
            log.start_projecting(std::time::Duration::from_secs(1));
        }
        return Ok(Arc::new(log));
    }
    let data = data_dir(data)?;
    let cache = LOG_CACHE_BYTES
        .get()
        .copied()
        .unwrap_or(keyledger_store::LOG_CACHE_BYTES_DEFAULT);
    let log = RedbLog::open_with_cache(&log_path(&data), cache).map_err(|source| {
        use keyledger_store::StoreError as E;
        let hint = match &source {
            // The message names the file and says what to do.
            E::Damaged { .. } | E::Corrupt { .. } => "",
            E::Conflict { .. } | E::BadAppend(_) | E::Backend(_) | E::Unavailable(_) => {
                " (is a keyledger server running on it?)"
            }
        };
        Failure::Open {
            data: data.clone(),
            source,
            hint,
        }
    })?;
    Ok(Arc::new(log))
}

/// Opens the data directory (checked by [`data_dir`]) and replays the log,
/// with a progress bar on a terminal.
pub fn open(data: &Path, prefix: &str, window: UsageWindow) -> Result<Keyledger> {
    let reads = keyledger_runtime::AUDIT_READ_WINDOW_DEFAULT;
    let snapshots = SnapshotConfig::in_dir(data_dir(data)?);
    open_following(data, prefix, window, reads, None, Some(snapshots))
}

/// [`open`] for `keyledger replay`: the whole log is replayed, and the
/// newest valid snapshot is compared with it (none is written).
fn open_checking_snapshot(data: &Path, prefix: &str) -> Result<Keyledger> {
    let reads = keyledger_runtime::AUDIT_READ_WINDOW_DEFAULT;
    let snapshots = SnapshotConfig {
        start: keyledger_runtime::SnapshotStart::Check,
        ..SnapshotConfig::in_dir(data_dir(data)?)
    };
    open_following(
        data,
        prefix,
        UsageWindow::Manual,
        reads,
        None,
        Some(snapshots),
    )
}

/// [`open`], following what other nodes append to a shared log when
/// `follow` is given (`serve --postgres`), writing reads of the trail
/// once per `audit_read_window` per reader and kind, with `snapshots`
/// (`None`: none read or written).
pub fn open_following(
    data: &Path,
    prefix: &str,
    window: UsageWindow,
    audit_read_window: std::time::Duration,
    follow: Option<keyledger_runtime::Follow>,
    snapshots: Option<SnapshotConfig>,
) -> Result<Keyledger> {
    open_serving(
        data,
        prefix,
        window,
        audit_read_window,
        follow,
        None,
        snapshots,
    )
}

/// [`open_following`] with the server's webhook settings (`None`: the
/// CLI's, which manage subscriptions and send nothing).
pub fn open_serving(
    data: &Path,
    prefix: &str,
    window: UsageWindow,
    audit_read_window: std::time::Duration,
    follow: Option<keyledger_runtime::Follow>,
    webhooks: Option<keyledger_runtime::webhooks::WebhookConfig>,
    snapshots: Option<SnapshotConfig>,
) -> Result<Keyledger> {
    open_with_config(
        data,
        prefix,
        Config {
            usage_window: window,
            audit_read_window,
            follow,
            webhooks,
            snapshots,
            ..Config::default()
        },
    )
}

/// Opens the data directory with `config` (its prefix and audit settings
/// are set here).
pub fn open_with_config(data: &Path, prefix: &str, config: Config) -> Result<Keyledger> {
    let data = data_dir(data)?;
    let log = open_log(&data)?;
    let config = Config {
        prefix: KeyPrefix::new(prefix).map_err(Failure::msg)?,
        audit: Some(audit_config(&data)),
        // The CLI manages subscriptions (their secrets come from the data
        // directory's root key) and sends nothing: `serve` delivers.
        webhooks: Some(config.webhooks.clone().unwrap_or_else(|| {
            keyledger_runtime::webhooks::WebhookConfig {
                deliver: false,
                ..keyledger_runtime::webhooks::WebhookConfig::in_dir(&data)
            }
        })),
        ..config
    };
    let bar = output::progress("replaying", 0);
    let ledger = Keyledger::open_with(
        log,
        config,
        Arc::new(keyledger_runtime::SystemClock),
        Arc::new(keyledger_runtime::OsEntropy),
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    Ok(ledger)
}

/// The data directory to use: made owner-only if missing, refused if
/// another user could steer it, by its real path
/// (`keyledger_runtime::datadir::prepare`; docs/operations.md, "The data
/// directory's permissions"). Every command that opens a data directory
/// goes through it.
pub fn data_dir(data: &Path) -> Result<PathBuf> {
    keyledger_runtime::datadir::prepare(data).map_err(|e| Failure::msg(e.to_string()))
}

pub async fn run(args: Args) -> Result<ExitCode> {
    if let Some(url) = &args.postgres {
        let _ = POSTGRES_URL.set(url.clone());
    }
    let _ = LOG_CACHE_BYTES.set((args.log_cache_mib as usize) << 20);
    let _ = AUDIT_SETTINGS.set((
        args.audit_origin.clone().unwrap_or_else(default_origin),
        args.checkpoint_interval,
    ));
    let out = Out::new(args.json);
    match &args.command {
        Cmd::Completions { shell } => return crate::login::completions(*shell),
        Cmd::Man => return crate::login::man(),
        Cmd::Login => return crate::login::login(&args, &out),
        Cmd::Logout => return crate::login::logout(&out),
        _ => {}
    }
    if let Cmd::Scan(scan) = &args.command {
        return crate::scan::run(&args, scan, &out);
    }
    if let Some(remote) = crate::login::remote_for(&args)? {
        let done = remote.run(&out, args.command);
        crate::login::remember_position(&remote);
        return done;
    }
    if let Cmd::Whoami { .. } = args.command {
        return Err(Failure::msg(
            "whoami asks a server: give --url (or KEYLEDGER_URL) with a credential, or `keyledger login`",
        ));
    }
    if let Cmd::Serve(serve) = &args.command {
        return crate::serve::run(&args.data, &args.key_prefix, serve).await;
    }
    if let Cmd::Demo = args.command {
        return crate::demo::run(&args.data, &args.key_prefix)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    if let Cmd::Audit(AuditCmd::Evidence(e)) = &args.command {
        return crate::evidence_cli::run(&args.data, &args.key_prefix, &out, e).await;
    }
    if let Cmd::Audit(AuditCmd::Verify { tenant }) = &args.command {
        // Straight on the store: a damaged log must be verifiable even
        // though it cannot be replayed.
        return verify_chains(&args.data, tenant.as_deref(), &out);
    }
    if let Cmd::Recover {
        tenant,
        acting,
        reason,
    } = &args.command
    {
        return recover(&args, &out, tenant, acting, reason).await;
    }
    let ledger = if let Cmd::Replay = args.command {
        open_checking_snapshot(&args.data, &args.key_prefix)?
    } else {
        open(&args.data, &args.key_prefix, UsageWindow::Manual)?
    };
    hint_unknown_tenant(&ledger, &args.command);
    let result = dispatch(&ledger, &out, args.command).await;
    let closed = ledger.shutdown().await;
    let code = result?;
    closed?;
    Ok(code)
}

/// A read of a tenant that has no event says so on standard error (an
/// empty table alone reads like a tenant without keys), naming the
/// tenants there are.
fn hint_unknown_tenant(ledger: &Keyledger, command: &Cmd) {
    let arg = match command {
        Cmd::Keys(KeysCmd::List { tenant, .. } | KeysCmd::Show { tenant, .. })
        | Cmd::Audit(AuditCmd::List { tenant, .. } | AuditCmd::Export { tenant, .. })
        | Cmd::State { tenant, .. }
        | Cmd::Usage(
            UsageCmd::Daily { tenant, .. }
            | UsageCmd::Summary { tenant, .. }
            | UsageCmd::Export { tenant, .. },
        ) => tenant,
        _ => return,
    };
    let Some(Ok(t)) = arg.tenant.as_deref().map(str::parse::<TenantId>) else {
        return;
    };
    let tenants = ledger.tenants();
    if !tenants.contains(&t) {
        let names: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
        eprintln!(
            "note: tenant `{t}` has no events in this ledger{}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" (its tenants: {})", names.join(", "))
            }
        );
    }
}

async fn dispatch(ledger: &Keyledger, out: &Out, command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Keys(k) => keys(ledger, out, k).await?,
        Cmd::Webhooks(w) => crate::webhooks_cli::offline(ledger, out, w).await?,
        Cmd::Users(UsersCmd::Remove {
            tenant: t,
            acting,
            user,
        }) => {
            let t = tenant(&t)?;
            let user: UserId = user.parse()?;
            let revoked = ledger
                .remove_user(principal(&t, &acting)?, user.clone())
                .await?;
            output::removed_user(out, &RemovedUser::new(&user, &revoked))?;
        }
        Cmd::Verify {
            secret,
            scope,
            cost,
        } => {
            let scope = scope
                .map(|s| s.parse::<Scope>())
                .transpose()
                .map_err(Failure::msg)?;
            // Async: a key with credits may wait for a reservation. The
            // answer is the API's own body, decoded as `--url` decodes it.
            let answer = ledger
                .verify_cost_with(&secret, scope, cost, |outcome, key, policy| {
                    VerifyResponse::with_policy(outcome, key, policy).to_json()
                })
                .await;
            let body: crate::remote::VerifyBody = serde_json::from_slice(&answer)?;
            out.value(&body, || crate::remote::verify_text(&body))?;
            ledger.flush_usage().await?;
            if !body.valid {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Audit(a) => return audit(ledger, out, a).await,
        Cmd::State {
            tenant: t,
            at,
            limit,
            cursor,
        } => {
            let t = tenant(&t)?;
            let at = state_at_text(&at)?;
            let point = match at.parse::<u64>() {
                Ok(seq) => PointInTime::Seq(seq),
                Err(_) => PointInTime::Instant(Timestamp::parse_rfc3339(&at)?),
            };
            let state = ledger.state_at_page(&t, point, cursor.as_deref(), limit)?;
            output::state(out, &StateBody::from(&state))?;
        }
        Cmd::Usage(u) => usage(ledger, out, u)?,
        Cmd::Replay => return replay(ledger, out),
        Cmd::Demo
        | Cmd::Serve(_)
        | Cmd::Scan(_)
        | Cmd::Recover { .. }
        | Cmd::Login
        | Cmd::Whoami { .. }
        | Cmd::Logout
        | Cmd::Completions { .. }
        | Cmd::Man => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(ledger: &Keyledger, out: &Out, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            tenant: t,
            acting,
            user,
            name,
            description,
            expires_at,
            scopes: s,
            policy,
        } => {
            let t = tenant(&t)?;
            let policy = policy.read()?;
            let new = NewKey {
                owner: user.map(|u| u.parse()).transpose()?,
                name,
                description,
                expires_at: time(&expires_at)?,
                scopes: scopes(&s)?,
                meta: policy.meta,
                credits: policy.credits,
                limits: policy.limits,
            };
            let created = ledger.create_key(principal(&t, &acting)?, new).await?;
            output::created(out, &CreatedKey::new(&created, ledger.now()))?;
        }
        KeysCmd::List {
            tenant: t,
            status,
            created_by,
            q,
            sort,
            order,
            limit,
            cursor,
        } => {
            let t = tenant(&t)?;
            let query = ListQuery {
                status: status
                    .map(|s| {
                        KeyStatus::parse(&s).ok_or_else(|| {
                            Failure::msg(format!(
                                "unknown status `{s}`: active, expired or revoked"
                            ))
                        })
                    })
                    .transpose()?,
                created_by,
                q,
                sort: SortField::parse(&sort).ok_or_else(|| {
                    Failure::msg(format!(
                        "unknown sort `{sort}`: name, created_at or last_used_at"
                    ))
                })?,
                order: Order::parse(&order)
                    .ok_or_else(|| Failure::msg(format!("unknown order `{order}`: asc or desc")))?,
                cursor,
                limit,
            };
            let page = ledger.list_keys(&t, &query)?;
            output::key_list(out, &KeyList::from(&page))?;
        }
        KeysCmd::Update(u) => {
            let t = tenant(&u.tenant)?;
            let update = u
                .read()?
                .into_update(principal(&t, &u.acting)?, key_id(&u.id)?);
            let key = ledger.update_key(update).await?;
            let view = KeyView::new(&key, key.status(ledger.now()));
            out.value(&view, || output::key_detail(&view))?;
        }
        KeysCmd::Show { tenant: t, id } => {
            let key = ledger.key(&tenant(&t)?, key_id(&id)?)?;
            let view = KeyView::new(&key, key.status(ledger.now()));
            out.value(&view, || output::key_detail(&view))?;
        }
        KeysCmd::Revoke {
            tenant: t,
            acting,
            id,
            reason,
        } => {
            let t = tenant(&t)?;
            let reason = RevokeReason::parse(&reason).ok_or_else(|| {
                Failure::msg(format!("unknown reason `{reason}`: manual or compromised"))
            })?;
            let key = ledger
                .revoke_key(principal(&t, &acting)?, key_id(&id)?, reason)
                .await?;
            let view = KeyView::new(&key, key.status(ledger.now()));
            out.value(&view, || format!("revoked {} ({})", view.id, view.name))?;
        }
        KeysCmd::Rotate {
            tenant: t,
            acting,
            id,
            grace_seconds,
        } => {
            let t = tenant(&t)?;
            let created = ledger
                .rotate_key(principal(&t, &acting)?, key_id(&id)?, grace_seconds, None)
                .await?;
            output::created(out, &CreatedKey::new(&created, ledger.now()))?;
        }
    }
    Ok(())
}

fn filter(f: &TrailFilter) -> Result<AuditFilter> {
    // The key and the types are checked before the times.
    let (from, to) = (time(&f.from), time(&f.to));
    // `--type KeyRevoked,UserRemoved` as the API's `type=` takes it.
    let types = split_list(&f.types);
    let filter = AuditFilterText {
        key_id: f.key_id.as_deref(),
        actor: f.actor.clone(),
        types: types.iter().map(String::as_str).collect(),
        from: None,
        to: None,
        include_usage: f.include_usage,
    }
    .parse()
    .map_err(|e| match e {
        // Worded as the API words it: every type named.
        keyledger_runtime::AuditFilterError::UnknownType(t) => Failure::msg(format!(
            "--type: unknown event type `{}`; types are {}",
            t.escape_debug(),
            keyledger_core::EventType::ALL
                .map(keyledger_core::EventType::as_str)
                .join(", ")
        )),
        e @ keyledger_runtime::AuditFilterError::KeyId(_) => Failure::msg(format!("--key-id: {e}")),
    })?;
    Ok(AuditFilter {
        from: from?,
        to: to?,
        ..filter
    })
}

async fn audit(ledger: &Keyledger, out: &Out, cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::List {
            tenant: t,
            filter: f,
            limit,
            cursor,
        } => {
            let t = tenant(&t)?;
            let page = ledger.audit(&t, &filter(&f)?, cursor.as_deref(), limit)?;
            // Every read of the trail is itself recorded (as the operator).
            ledger
                .record_page_read(Principal::operator(t), &page, AuditReadKind::List)
                .await?;
            output::audit_page(out, &AuditPageBody::from(&page))?;
        }
        AuditCmd::Export {
            tenant: t,
            filter: f,
            format,
            output: path,
        } => {
            let t = tenant(&t)?;
            let filter = filter(&f)?;
            // Recorded (as the operator) before anything is written.
            ledger
                .record_trail_export(Principal::operator(t.clone()))
                .await?;
            let sink: Box<dyn Write> = match &path {
                Some(p) => Box::new(std::fs::File::create(p)?),
                None => Box::new(std::io::stdout().lock()),
            };
            let sink = std::io::BufWriter::new(sink);
            let bar = output::progress(
                "exporting",
                ledger.log().tenant_head(&t)?.map_or(0, |h| h.0),
            );
            let n = output::export_trail(ledger, &t, &filter, format, sink, &bar)?;
            bar.finish_and_clear();
            if path.is_some() {
                eprintln!("exported {n} events");
            }
        }
        AuditCmd::Verify { .. } => unreachable!("verified before the ledger is opened"),
        AuditCmd::Evidence(_) => unreachable!("run before the ledger is opened"),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_chains(data: &Path, tenant: Option<&str>, out: &Out) -> Result<ExitCode> {
    if !postgres() && !log_path(data).exists() {
        return Err(Failure::msg(format!("no ledger in {}", data.display())));
    }
    let log = open_log(data)?;
    let log = log.as_ref();
    let only = tenant.map(str::parse::<TenantId>).transpose()?;
    let tenants = match &only {
        Some(t) => vec![t.clone()],
        None => log.tenants()?,
    };
    let mut reports = Vec::new();
    // Each record is read once: the chain walk hands what it reads to the
    // tenant's tree, which the stored checkpoints are checked against.
    let mut trees = std::collections::HashMap::new();
    for t in &tenants {
        let total = log.tenant_head(t)?.map_or(0, |h| h.0);
        let bar = output::progress(&format!("verifying {t}"), total);
        let mut tree = keyledger_runtime::integrity::LogTree::default();
        let report = keyledger_store::chain::verify_tenant_seeing(
            log,
            t,
            &mut |n| bar.set_position(n),
            &mut |page| tree.feed(t, page),
        )?;
        bar.finish_and_clear();
        trees.insert(t.clone(), tree);
        reports.push((t.clone(), report));
    }
    // The stored checkpoints too: a log that is whole and linked but
    // shorter than, or different from, what was signed is not "ok".
    let checks = keyledger_runtime::integrity::check_log(data, log, only.as_ref(), trees)
        .map_err(Failure::msg)?;
    let all_ok = checks.iter().all(|c| c.outcome.is_ok()) && reports.iter().all(|(_, r)| r.ok);
    output::chain_reports(out, &reports, &checks)?;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn usage(ledger: &Keyledger, out: &Out, cmd: UsageCmd) -> Result<()> {
    let today = ledger.now().day();
    match cmd {
        UsageCmd::Daily {
            tenant: t,
            key_id: k,
            from,
            to,
        } => {
            let k = k.as_deref().map(key_id).transpose()?;
            let rows = ledger.usage_daily(
                &tenant(&t)?,
                k,
                day(&from)?.unwrap_or(today.minus(29)),
                day(&to)?.unwrap_or(today),
            )?;
            let body = UsageDays::new(&rows, k);
            out.value(&body, || output::daily_table(&body.days))?;
        }
        UsageCmd::Summary { tenant: t, days } => {
            let s = ledger.usage_summary(&tenant(&t)?, days)?;
            let view = SummaryView::from(&s);
            out.value(&view, || output::summary_text(&view))?;
        }
        UsageCmd::Export {
            tenant: t,
            key_id: k,
            from,
            to,
            format,
        } => {
            let k = k.as_deref().map(key_id).transpose()?;
            let rows = ledger.usage_daily(
                &tenant(&t)?,
                k,
                day(&from)?.unwrap_or(Day::from_days(0)),
                day(&to)?.unwrap_or(today),
            )?;
            let body = UsageDays::new(&rows, k);
            output::export_rows(&body.days, k.is_some(), format, std::io::stdout().lock())?;
        }
    }
    Ok(())
}

/// `keyledger recover`: opens the data directory even though a tenant's
/// log does not hold its signed checkpoints, records the loss for the one
/// tenant named, and closes (which signs the new epoch's first checkpoint).
async fn recover(
    args: &Args,
    out: &Out,
    tenant_arg: &TenantArg,
    acting: &ActingArg,
    reason: &str,
) -> Result<ExitCode> {
    let t = tenant(tenant_arg)?;
    let ledger = open_with_config(
        &args.data,
        &args.key_prefix,
        Config {
            usage_window: UsageWindow::Manual,
            recovering: true,
            snapshots: Some(SnapshotConfig::in_dir(data_dir(&args.data)?)),
            ..Config::default()
        },
    )?;
    let recorded = ledger
        .recover(principal(&t, acting)?, reason.to_owned())
        .await;
    let new_origin = ledger.checkpoint_origin(&t);
    let closed = ledger.shutdown().await;
    let r = recorded?;
    // Other tenants with problems stay refused until each is recovered.
    if let Err(e) = closed {
        tracing::warn!(error = %e, "closing after the recovery");
    }
    out.value(
        &serde_json::json!({
            "tenant": t.as_str(),
            "epoch": r.epoch,
            "old_origin": r.old_origin,
            "new_origin": new_origin,
            "signed_size": r.signed_size,
            "signed_root": output::hex_hash(&r.signed_root),
            "recovered_size": r.recovered_size,
            "agreed_size": r.agreed_size,
            "reason": r.reason,
        }),
        || {
            format!(
                "tenant {t}: recorded the loss and started checkpoint epoch {} ({new_origin}).\n\
                 The last checkpoint signed under {} covered {} events; the log holds {} \
                 (the old checkpoints still vouch for {}). Event {} of the tenant says so, \
                 and every checkpoint from now on is signed under {new_origin}.",
                r.epoch,
                r.old_origin,
                r.signed_size,
                r.recovered_size,
                r.agreed_size,
                r.recovered_size + 1,
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Exits 1 when a chain is broken (opening the ledger already refused a
/// log that does not hold its signed checkpoints).
fn replay(ledger: &Keyledger, out: &Out) -> Result<ExitCode> {
    // Opening the ledger already replayed the log into fresh projections
    // (checking every link and sequence number); here every chain is also
    // recomputed from the stored bytes.
    let tenants = ledger.tenants();
    let mut broken = 0;
    for t in &tenants {
        let report = ledger.verify_chain(t, &mut |_| {})?;
        if !report.ok {
            broken += 1;
        }
    }
    let mut keys = 0;
    let mut active = 0;
    let now = ledger.now();
    for t in &tenants {
        let (all, live) = ledger.key_counts(t);
        keys += all;
        active += live;
    }
    // The per-key index (a key's history, its uses summed, point in
    // time) is derived from the records: it must equal them.
    let index = ledger.log().check_key_index()?;
    let index_differs = index.as_ref().is_some_and(|c| c.difference.is_some());
    let check = ledger.snapshot_check().unwrap_or_default();
    let differs = !check.differences.is_empty();
    let snapshot = serde_json::json!({
        "file": check.compared.as_ref().map(|(f, _)| f.display().to_string()),
        "position": check.compared.as_ref().map(|(_, p)| *p),
        "equal": check.compared.as_ref().map(|_| !differs),
        "differences": check.differences,
        "refused": check.refused.iter().map(|(f, why)| serde_json::json!({
            "file": f.display().to_string(),
            "problem": why,
        })).collect::<Vec<_>>(),
    });
    let body = serde_json::json!({
        "events": ledger.head(),
        "tenants": tenants.len(),
        "keys": keys,
        "active_keys": active,
        "broken_chains": broken,
        "snapshot": snapshot,
        "key_index": index.as_ref().map(|c| serde_json::json!({
            "entries": c.entries,
            "equal": c.difference.is_none(),
            "difference": c.difference,
        })),
        "at": now.to_rfc3339(),
    });
    out.value(&body, || {
        let mut text = format!(
            "replayed {} events: {} tenants, {} keys ({} active); chains: {}",
            ledger.head(),
            tenants.len(),
            keys,
            active,
            if broken == 0 {
                "all verify".to_owned()
            } else {
                format!("{broken} BROKEN (run `audit verify`)")
            }
        );
        text.push_str(&snapshot_text(&check));
        match &index {
            None => {}
            Some(c) => match &c.difference {
                None => text.push_str(&format!(
                    "\nper-key index: {} entries, equal to the records",
                    c.entries
                )),
                Some(d) => text.push_str(&format!(
                    "\nper-key index DIFFERED from the records ({d}); rebuilt from the records"
                )),
            },
        }
        text
    })?;
    Ok(if broken == 0 && !differs && !index_differs {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The lines `replay` adds about the snapshot it compared.
fn snapshot_text(check: &keyledger_runtime::SnapshotCheck) -> String {
    let mut text = String::new();
    for (file, why) in &check.refused {
        text.push_str(&format!(
            "\nsnapshot {} REFUSED: {why} (a start rebuilds from the log; see docs/operations.md, \"Snapshots\")",
            file.display()
        ));
    }
    match &check.compared {
        None => text.push_str("\nsnapshot: none to compare"),
        Some((file, position)) if check.differences.is_empty() => text.push_str(&format!(
            "\nsnapshot {} (position {position}): equal to the replay",
            file.display()
        )),
        Some((file, position)) => text.push_str(&format!(
            "\nsnapshot {} (position {position}) DIFFERS from the replay: {}; delete it \
             (docs/operations.md, \"Snapshots\")",
            file.display(),
            check.differences.join("; ")
        )),
    }
    text
}
