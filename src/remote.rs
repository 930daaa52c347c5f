//! The command line against a running server (`--url`): every subcommand
//! but `serve`, `demo`, `replay` and `recover` asks the HTTP API and prints
//! its answer exactly as the same command prints on a data directory: the
//! answers are decoded into the runtime's views (the bodies the API is made
//! of) and printed by the same functions of [`crate::output`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keyledger_runtime::views::{
    AuditPageBody, ChainBody, CreatedKey, KeyList, KeyView, RemovedUser, StateBody, SummaryView,
    UsageDays,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::{
    ActingArg, AuditCmd, Cmd, Failure, Format, KeysCmd, Result, TenantArg, TrailFilter, UsageCmd,
    UsersCmd,
};
use crate::evidence_cli::EvidenceCmd;
use crate::output::{self, Out};

/// The longest a request may take (an export of a large trail included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest JSON answer read (a page is at most 1,000 entries).
const BODY_BYTES_MAX: u64 = 64 << 20;

/// Who the requests are made as.
pub enum Credential {
    /// An API key: acts as its owner in its tenant, within its scopes.
    Key(String),
    /// The operator token: the admin routes, and the tenant routes with
    /// `Keyledger-Tenant` (and `Keyledger-Act-As`).
    Operator(String),
}

/// A server and a credential.
pub struct Remote {
    agent: ureq::Agent,
    base: String,
    credential: Credential,
    /// The tenant position of the newest write this client has seen
    /// (`Keyledger-Position`), sent back on every tenant request so that a
    /// node that has not applied it yet waits for it: a read right after a
    /// write, through any node, sees the write. 0: none.
    position: std::cell::Cell<u64>,
    /// Whether that position was kept by an earlier command (the stored
    /// login's), not given for this one: then a server that calls it past
    /// the tenant's log (a server since reset) has it dropped, not refused.
    position_kept: bool,
    /// Set when the kept position was dropped that way.
    position_dropped: std::cell::Cell<bool>,
}

/// The header a write's answer carries its tenant position in, and a read
/// passes back.
const POSITION_HEADER: &str = "keyledger-position";

/// A request: method, path (segments already encoded), query and body.
struct Call<'a> {
    method: &'a str,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    /// The tenant named on the command line (for the operator token).
    tenant: Option<&'a str>,
    /// `--as`: the user the operator acts as.
    acting: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn get(path: impl Into<String>) -> Self {
        Call {
            method: "GET",
            path: path.into(),
            query: Vec::new(),
            body: None,
            tenant: None,
            acting: None,
        }
    }

    fn post(path: impl Into<String>, body: Value) -> Self {
        Call {
            method: "POST",
            body: Some(body),
            ..Call::get(path)
        }
    }

    fn patch(path: impl Into<String>, body: Value) -> Self {
        Call {
            method: "PATCH",
            body: Some(body),
            ..Call::get(path)
        }
    }

    fn delete(path: impl Into<String>) -> Self {
        Call {
            method: "DELETE",
            ..Call::get(path)
        }
    }

    fn query(mut self, name: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name, v.to_string()));
        }
        self
    }

    fn tenant(mut self, tenant: &'a TenantArg) -> Self {
        self.tenant = tenant.tenant.as_deref();
        self
    }

    fn acting(mut self, acting: &'a ActingArg) -> Self {
        self.acting = acting.acting_user.as_deref();
        self
    }
}

/// A path segment, percent-encoded (ids may hold `@`, `/`, spaces).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Remote {
    /// A client of the server at `url` (`http://` or `https://`).
    pub fn new(url: &str, credential: Credential) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::msg(format!(
                "--url {url}: give the server's URL, starting with http:// or https://"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("keyledger-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Remote {
            agent,
            base,
            credential,
            position: std::cell::Cell::new(0),
            position_kept: false,
            position_dropped: std::cell::Cell::new(false),
        })
    }

    /// Starts from a position the reads must see: given for this command
    /// (KEYLEDGER_POSITION; a server that refuses it is an error), or
    /// `kept` by an earlier one (the stored login's; dropped if refused).
    pub fn with_position(mut self, position: u64, kept: bool) -> Self {
        self.position.set(position);
        self.position_kept = kept;
        self
    }

    /// The tenant position of the newest write seen (0: none).
    pub fn position(&self) -> u64 {
        self.position.get()
    }

    /// Whether the kept position was refused by the server and dropped.
    pub fn position_dropped(&self) -> bool {
        self.position_dropped.get()
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether the requests are made with the API key `key`.
    pub fn uses_key(&self, key: &str) -> bool {
        matches!(&self.credential, Credential::Key(k) if k == key)
    }

    /// Sends `call`; the response when its status is a success, else the
    /// server's error. A kept position the server calls past the tenant's
    /// log (kept from a server since reset) is dropped and the call sent
    /// again without it.
    fn send(&self, call: Call<'_>) -> Result<ureq::http::Response<ureq::Body>> {
        match self.send_once(&call) {
            Err(Failure::Server { code, .. })
                if code == "invalid_position" && self.position_kept && self.position.get() > 0 =>
            {
                self.position.set(0);
                self.position_dropped.set(true);
                self.send_once(&call)
            }
            other => other,
        }
    }

    fn send_once(&self, call: &Call<'_>) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{}", self.base, call.path);
        let http = |e: ureq::Error| Failure::Http {
            url: url.clone(),
            source: Box::new(e),
        };
        let mut headers: Vec<(&str, String)> = Vec::new();
        match &self.credential {
            Credential::Key(k) => {
                if let Some(user) = call.acting {
                    return Err(Failure::msg(format!(
                        "--as {user}: an API key acts as its own owner; acting as another user \
                         needs the operator token (KEYLEDGER_OPERATOR_TOKEN or --operator-token-file)"
                    )));
                }
                // `verify` may run with no credential at all.
                if !k.is_empty() {
                    headers.push(("authorization", format!("Bearer {k}")));
                }
            }
            Credential::Operator(t) => {
                headers.push(("authorization", format!("Bearer {t}")));
                if !call.path.starts_with("/v1/admin/") {
                    if let Some(tenant) = call.tenant {
                        headers.push(("keyledger-tenant", tenant.to_owned()));
                    }
                    if let Some(user) = call.acting {
                        headers.push(("keyledger-act-as", user.to_owned()));
                    }
                }
            }
        }
        let position = self.position.get();
        if position > 0 && !call.path.starts_with("/v1/admin/") && call.path != "/v1/verify" {
            headers.push((POSITION_HEADER, position.to_string()));
        }
        let response = match call.method {
            "POST" | "PATCH" => {
                let mut r = if call.method == "PATCH" {
                    self.agent.patch(&url)
                } else {
                    self.agent.post(&url)
                };
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                for (k, v) in &call.query {
                    r = r.query(*k, v);
                }
                match &call.body {
                    Some(b) => r
                        .content_type("application/json")
                        .send(serde_json::to_vec(b)?),
                    None => r.send_empty(),
                }
            }
            method => {
                let mut r = if method == "DELETE" {
                    self.agent.delete(&url)
                } else {
                    self.agent.get(&url)
                };
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                for (k, v) in &call.query {
                    r = r.query(*k, v);
                }
                r.call()
            }
        }
        .map_err(http)?;
        if response.status().is_success() {
            let seen = response
                .headers()
                .get(POSITION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(p) = seen.filter(|&p| p > self.position.get()) {
                self.position.set(p);
            }
            return Ok(response);
        }
        Err(server_error(response, &url))
    }

    /// Sends `call` and decodes its JSON answer.
    fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let path = call.path.clone();
        let mut response = self.send(call)?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(BODY_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| Failure::Http {
                url: format!("{}{path}", self.base),
                source: Box::new(e),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::msg(format!(
                "{}{path}: the server's answer is not what this keyledger reads ({e}); \
                 is the server the same version?",
                self.base
            ))
        })
    }

    /// Sends `call` and copies its body to `sink`; the bytes copied.
    fn copy(&self, call: Call<'_>, sink: &mut dyn Write) -> Result<Vec<u8>> {
        let mut response = self.send(call)?;
        let mut reader = response.body_mut().as_reader();
        let mut kept = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])?;
            kept.extend_from_slice(&buf[..n]);
        }
        sink.flush()?;
        Ok(kept)
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI> {
        self.json(Call::get("/v1/whoami"))
    }

    /// `POST /v1/keys/leaked`: reports `secrets` (at most 1000) as found
    /// in `source`.
    pub fn report_leaked(&self, secrets: &[&str], source: &str) -> Result<LeakReportBody> {
        self.json(Call::post(
            "/v1/keys/leaked",
            json!({ "secrets": secrets, "source": source }),
        ))
    }
}

/// The answer of `POST /v1/keys/leaked`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeakReportBody {
    /// How many secrets were reported.
    pub reported: usize,
    /// How many of them are keys of the server.
    pub found: usize,
}

/// The server's `{"error": {"code", "message"}}`, or the status alone.
fn server_error(mut response: ureq::http::Response<ureq::Body>, url: &str) -> Failure {
    let status = response.status().as_u16();
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .ok()
        .and_then(|b| serde_json::from_slice::<Body>(&b).ok());
    match body {
        Some(Body { error }) => Failure::Server {
            status,
            code: error.code,
            message: error.message,
        },
        None => Failure::Server {
            status,
            code: "http_error".into(),
            message: format!(
                "{url} answered {status} {}",
                response.status().canonical_reason().unwrap_or("")
            ),
        },
    }
}

/// The answer of `GET /v1/whoami`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The tenant.
    pub tenant_id: String,
    /// The key's owner (none for the operator).
    #[serde(default)]
    pub owner: Option<String>,
    /// The key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether this is the operator token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The answer of `POST /v1/verify`, as the API and `verify --json` give it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyBody {
    /// Whether the key works for the scope asked.
    pub valid: bool,
    /// What was found.
    pub outcome: String,
    /// The key's id.
    pub key_id: Option<String>,
    /// The key's tenant.
    pub tenant_id: Option<String>,
    /// Its owner.
    pub owner: Option<String>,
    /// Its scopes.
    pub scopes: Option<Vec<String>>,
    /// Its expiry.
    pub expires_at: Option<String>,
    /// Credits left, for a key with credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// Each rate limit checked, for a key with rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<RateLimitState>>,
}

/// One rate limit in a verification's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RateLimitState {
    /// The limit's name.
    pub name: String,
    /// How many verifications its window admits.
    pub limit: u64,
    /// How many it admits right now.
    pub remaining: u64,
    /// When a retry is admitted (refused) or the whole limit is back (admitted).
    pub reset: String,
}

/// What `verify` prints for people, on a data directory or a server: the
/// verdict and the key, then credits left and each rate limit, if the key
/// has them.
pub fn verify_text(v: &VerifyBody) -> String {
    let mut text = match (&v.key_id, &v.tenant_id, &v.owner) {
        (Some(id), Some(t), Some(o)) => format!("{}: {id} (tenant {t}, owner {o})", v.outcome),
        _ => v.outcome.clone(),
    };
    if let Some(n) = v.credits_remaining {
        text.push_str(&format!("\ncredits remaining: {n}"));
    }
    for l in v.ratelimits.iter().flatten() {
        text.push_str(&format!(
            "\nrate limit {}: {} of {} left, reset {}",
            l.name, l.remaining, l.limit, l.reset
        ));
    }
    text
}

/// `audit list`'s and `audit export`'s filter as the API's query.
fn trail_query<'a>(mut call: Call<'a>, f: &TrailFilter) -> Call<'a> {
    let types = crate::cli::split_list(&f.types);
    call = call
        .query("key_id", f.key_id.as_ref())
        .query("actor", f.actor.as_ref())
        .query("type", (!types.is_empty()).then(|| types.join(",")))
        .query("from", f.from.as_ref())
        .query("to", f.to.as_ref())
        .query("include_usage", f.include_usage.then_some(true));
    call
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Jsonl => "jsonl",
        Format::Csv => "csv",
    }
}

impl Remote {
    /// With an API key and `--tenant`: the tenant must be the key's (the
    /// server answers for the key's tenant only).
    fn check_tenant(&self, tenant: &TenantArg) -> Result<()> {
        if let (Credential::Key(_), Some(t)) = (&self.credential, &tenant.tenant) {
            let me = self.whoami()?;
            if &me.tenant_id != t {
                return Err(Failure::msg(format!(
                    "--tenant {t}: the API key belongs to tenant {}; a key acts in its own tenant only",
                    me.tenant_id
                )));
            }
        }
        if let (Credential::Operator(_), None) = (&self.credential, &tenant.tenant) {
            return Err(Failure::msg(
                "with the operator token, name the tenant: --tenant (or KEYLEDGER_TENANT)",
            ));
        }
        Ok(())
    }

    /// Runs `command` against the server.
    pub fn run(&self, out: &Out, command: Cmd) -> Result<ExitCode> {
        match command {
            Cmd::Keys(k) => self.keys(out, k)?,
            Cmd::Webhooks(w) => self.webhooks(out, w)?,
            Cmd::Users(UsersCmd::Remove {
                tenant,
                acting,
                user,
            }) => {
                self.check_tenant(&tenant)?;
                let call = match (&self.credential, &acting.acting_user, &tenant.tenant) {
                    (Credential::Operator(_), None, Some(t)) => Call::delete(format!(
                        "/v1/admin/tenants/{}/users/{}",
                        segment(t),
                        segment(&user)
                    )),
                    _ => Call::delete(format!("/v1/users/{}", segment(&user))),
                };
                let body: RemovedUser = self.json(call.tenant(&tenant).acting(&acting))?;
                output::removed_user(out, &body)?;
            }
            Cmd::Verify {
                secret,
                scope,
                cost,
            } => {
                // No credential: the key in the body is the one checked.
                let body: VerifyBody = self.json(Call::post(
                    "/v1/verify",
                    json!({ "key": secret, "scope": scope, "cost": cost }),
                ))?;
                out.value(&body, || verify_text(&body))?;
                if !body.valid {
                    return Ok(ExitCode::from(1));
                }
            }
            Cmd::Audit(a) => return self.audit(out, a),
            Cmd::State {
                tenant,
                at,
                limit,
                cursor,
            } => {
                self.check_tenant(&tenant)?;
                let at = crate::cli::state_at_text(&at)?;
                let body: StateBody = self.json(
                    Call::get("/v1/state")
                        .query("at", Some(at))
                        .query("limit", limit)
                        .query("cursor", cursor.as_ref())
                        .tenant(&tenant),
                )?;
                output::state(out, &body)?;
            }
            Cmd::Usage(u) => self.usage(out, u)?,
            Cmd::Whoami { tenant } => {
                self.check_tenant(&tenant)?;
                let me: WhoAmI = self.json(Call::get("/v1/whoami").tenant(&tenant))?;
                out.value(&me, || whoami_text(&me))?;
            }
            Cmd::Serve(_)
            | Cmd::Demo
            | Cmd::Scan(_)
            | Cmd::Replay
            | Cmd::Recover { .. }
            | Cmd::Login
            | Cmd::Logout
            | Cmd::Completions { .. }
            | Cmd::Man => {
                unreachable!("run on this machine, never against a server")
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn webhooks(&self, out: &Out, cmd: crate::webhooks_cli::WebhooksCmd) -> Result<()> {
        use crate::webhooks_cli::{self as w, WebhooksCmd as C};
        match cmd {
            C::Create {
                tenant,
                acting,
                endpoint,
                events,
                description,
            } => {
                self.check_tenant(&tenant)?;
                let body = serde_json::json!({
                    "url": endpoint,
                    "event_types": crate::cli::split_list(&events),
                    "description": description,
                });
                let made = self.json(
                    Call::post("/v1/webhooks", body)
                        .tenant(&tenant)
                        .acting(&acting),
                )?;
                w::created(out, &made)
            }
            C::List { tenant } => {
                self.check_tenant(&tenant)?;
                w::list(out, &self.json(Call::get("/v1/webhooks").tenant(&tenant))?)
            }
            C::Delete { tenant, acting, id } => {
                self.check_tenant(&tenant)?;
                let call = Call::delete(format!("/v1/webhooks/{}", segment(&id)));
                w::deleted(out, &self.json(call.tenant(&tenant).acting(&acting))?)
            }
            C::Deliveries { tenant, id, limit } => {
                self.check_tenant(&tenant)?;
                let call = Call::get(format!("/v1/webhooks/{}/deliveries", segment(&id)))
                    .query("limit", Some(limit));
                w::deliveries(out, &self.json(call.tenant(&tenant))?)
            }
        }
    }

    fn keys(&self, out: &Out, cmd: KeysCmd) -> Result<()> {
        match cmd {
            KeysCmd::Create {
                tenant,
                acting,
                user,
                name,
                description,
                expires_at,
                scopes,
                policy,
            } => {
                self.check_tenant(&tenant)?;
                let scopes = crate::cli::split_list(&scopes);
                let mut body = json!({
                    "name": name,
                    "description": description,
                    "expires_at": expires_at,
                    "scopes": (!scopes.is_empty()).then_some(scopes),
                });
                if let Some(fields) = body.as_object_mut() {
                    policy.add_to(fields)?;
                }
                let call = match (&self.credential, &user, &acting.acting_user) {
                    (Credential::Key(_), Some(u), _) => {
                        return Err(Failure::msg(format!(
                            "--user {u}: an API key creates keys for its own owner; minting a key \
                             for another user needs the operator token"
                        )));
                    }
                    (Credential::Operator(_), Some(u), None) => {
                        body["user"] = json!(u);
                        let t = tenant.tenant.as_deref().unwrap_or_default();
                        Call::post(format!("/v1/admin/tenants/{}/keys", segment(t)), body)
                    }
                    (Credential::Operator(_), None, None) => {
                        return Err(Failure::msg(
                            "name the key's owner: --user (or act as a user with --as)",
                        ));
                    }
                    _ => Call::post("/v1/keys", body),
                };
                let created: CreatedKey = self.json(call.tenant(&tenant).acting(&acting))?;
                output::created(out, &created)?;
            }
            KeysCmd::List {
                tenant,
                status,
                created_by,
                q,
                sort,
                order,
                limit,
                cursor,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::get("/v1/keys")
                    .query("status", status)
                    .query("created_by", created_by)
                    .query("q", q)
                    .query("sort", Some(sort))
                    .query("order", Some(order))
                    .query("limit", limit)
                    .query("cursor", cursor)
                    .tenant(&tenant);
                let body: KeyList = self.json(call)?;
                output::key_list(out, &body)?;
            }
            KeysCmd::Update(u) => {
                self.check_tenant(&u.tenant)?;
                let call = Call::patch(format!("/v1/keys/{}", segment(&u.id)), u.body()?);
                let view: KeyView = self.json(call.tenant(&u.tenant).acting(&u.acting))?;
                out.value(&view, || output::key_detail(&view))?;
            }
            KeysCmd::Show { tenant, id } => {
                self.check_tenant(&tenant)?;
                let view: KeyView =
                    self.json(Call::get(format!("/v1/keys/{}", segment(&id))).tenant(&tenant))?;
                out.value(&view, || output::key_detail(&view))?;
            }
            KeysCmd::Revoke {
                tenant,
                acting,
                id,
                reason,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::post(
                    format!("/v1/keys/{}/revoke", segment(&id)),
                    json!({ "reason": reason }),
                );
                let view: KeyView = self.json(call.tenant(&tenant).acting(&acting))?;
                out.value(&view, || format!("revoked {} ({})", view.id, view.name))?;
            }
            KeysCmd::Rotate {
                tenant,
                acting,
                id,
                grace_seconds,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::post(
                    format!("/v1/keys/{}/rotate", segment(&id)),
                    json!({ "grace_seconds": grace_seconds }),
                );
                let created: CreatedKey = self.json(call.tenant(&tenant).acting(&acting))?;
                output::created(out, &created)?;
            }
        }
        Ok(())
    }

    fn audit(&self, out: &Out, cmd: AuditCmd) -> Result<ExitCode> {
        match cmd {
            AuditCmd::List {
                tenant,
                filter,
                limit,
                cursor,
            } => {
                self.check_tenant(&tenant)?;
                let call = trail_query(Call::get("/v1/audit"), &filter)
                    .query("limit", limit)
                    .query("cursor", cursor)
                    .tenant(&tenant);
                let body: AuditPageBody = self.json(call)?;
                output::audit_page(out, &body)?;
            }
            AuditCmd::Export {
                tenant,
                filter,
                format,
                output: path,
            } => {
                self.check_tenant(&tenant)?;
                let call = trail_query(Call::get("/v1/audit/export"), &filter)
                    .query("format", Some(format_name(format)))
                    .tenant(&tenant);
                let mut sink: Box<dyn Write> = match &path {
                    Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                    None => Box::new(std::io::stdout().lock()),
                };
                let bytes = self.copy(call, &mut sink)?;
                if path.is_some() {
                    let lines = bytes.iter().filter(|b| **b == b'\n').count();
                    let n = match format {
                        Format::Jsonl => lines,
                        Format::Csv => lines.saturating_sub(1),
                    };
                    eprintln!("exported {n} events");
                }
            }
            AuditCmd::Verify { tenant } => {
                let tenant = TenantArg { tenant };
                self.check_tenant(&tenant)?;
                let body: ChainBody = self.json(Call::get("/v1/audit/verify").tenant(&tenant))?;
                let ok = body.ok;
                output::chain_bodies(out, vec![body])?;
                if !ok {
                    return Ok(ExitCode::from(1));
                }
            }
            AuditCmd::Evidence(e) => return self.evidence(out, e),
        }
        Ok(ExitCode::SUCCESS)
    }

    fn evidence(&self, out: &Out, cmd: EvidenceCmd) -> Result<ExitCode> {
        match cmd {
            EvidenceCmd::Checkpoint { tenant } => {
                self.check_tenant(&tenant)?;
                let body: Checkpoint =
                    self.json(Call::get("/v1/audit/checkpoint").tenant(&tenant))?;
                out.value(&body, || body.note.trim_end().to_owned())?;
            }
            EvidenceCmd::Bundle {
                tenant,
                acting,
                from,
                to,
                output: path,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::get("/v1/audit/bundle")
                    .query("from", Some(from.unwrap_or(1)))
                    .query("to", to)
                    .tenant(&tenant)
                    .acting(&acting);
                let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
                let bytes = self.copy(call, &mut file)?;
                let header: Value = bytes
                    .split(|b| *b == b'\n')
                    .next()
                    .and_then(|l| serde_json::from_slice(l).ok())
                    .unwrap_or(Value::Null);
                let events = bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
                    .saturating_sub(1);
                output::bundle_written(
                    out,
                    &path,
                    events,
                    header["from_seq"].as_u64().unwrap_or(0),
                    header["to_seq"].as_u64().unwrap_or(0),
                )?;
            }
            EvidenceCmd::PublicKey { tenant } => {
                #[derive(Deserialize)]
                struct PublicKey {
                    public_key: String,
                    verifier_key: String,
                    global_verifier_key: String,
                }
                let t = TenantArg { tenant };
                let key: PublicKey = self.json(Call::get("/v1/audit/public-key").tenant(&t))?;
                let vkey = match &t.tenant {
                    None => None,
                    Some(_) => {
                        self.check_tenant(&t)?;
                        Some(key.verifier_key)
                    }
                };
                output::public_key(
                    out,
                    &key.public_key,
                    vkey.as_deref(),
                    &key.global_verifier_key,
                )?;
            }
            EvidenceCmd::VerifyBundle { .. } | EvidenceCmd::VerifyReceipt { .. } => {
                unreachable!("verified on this machine")
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn usage(&self, out: &Out, cmd: UsageCmd) -> Result<()> {
        match cmd {
            UsageCmd::Daily {
                tenant,
                key_id,
                from,
                to,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::get("/v1/usage")
                    .query("key_id", key_id)
                    .query("from", from)
                    .query("to", to)
                    .tenant(&tenant);
                let body: UsageDays = self.json(call)?;
                out.value(&body, || output::daily_table(&body.days))?;
            }
            UsageCmd::Summary { tenant, days } => {
                self.check_tenant(&tenant)?;
                let call = Call::get("/v1/usage/summary")
                    .query("days", Some(days))
                    .tenant(&tenant);
                let view: SummaryView = self.json(call)?;
                out.value(&view, || output::summary_text(&view))?;
            }
            UsageCmd::Export {
                tenant,
                key_id,
                from,
                to,
                format,
            } => {
                self.check_tenant(&tenant)?;
                let call = Call::get("/v1/usage/export")
                    .query("format", Some(format_name(format)))
                    .query("key_id", key_id)
                    .query("from", from)
                    .query("to", to)
                    .tenant(&tenant);
                self.copy(call, &mut std::io::stdout().lock())?;
            }
        }
        Ok(())
    }
}

/// `GET /v1/audit/checkpoint`, as `audit checkpoint --json` prints it.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    origin: String,
    size: u64,
    root: String,
    note: String,
}

/// What `whoami` prints for people.
pub fn whoami_text(me: &WhoAmI) -> String {
    let who = if me.operator {
        match &me.owner {
            Some(u) => format!("the operator, acting as {u}"),
            None => "the operator".to_owned(),
        }
    } else {
        format!(
            "API key {} ({}), owned by {}",
            me.name.as_deref().unwrap_or("?"),
            me.key_id.as_deref().unwrap_or("?"),
            me.owner.as_deref().unwrap_or("?")
        )
    };
    let mut text = format!(
        "tenant {}: {who}\nscopes: {}",
        me.tenant_id,
        me.scopes.join(" ")
    );
    if let Some(e) = &me.expires_at {
        text.push_str(&format!("\nexpires {e}"));
    }
    text
}

/// The operator token from `--operator-token-file` or
/// `KEYLEDGER_OPERATOR_TOKEN`.
pub fn operator_token(file: Option<&PathBuf>) -> Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::msg(format!("--operator-token-file {}: {e}", path.display())))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(Failure::msg(format!(
                "--operator-token-file {}: the file is empty",
                path.display()
            )));
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("KEYLEDGER_OPERATOR_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}
