//! Who is asking.
//!
//! * An API key, presented as `Authorization: Bearer <key>` or
//!   `X-API-Key: <key>`, acts as its owner in its tenant, narrowed by its
//!   scopes ([`Authed`]). It is checked with the runtime's verification
//!   path, for the scope the route needs, so using the API is a counted use
//!   of the key like any other. The checksum rejects a malformed key before
//!   any lookup.
//! * The operator token acts on any tenant: through `/v1/admin/...`
//!   ([`Operator`]), and on the tenant routes ([`Authed`]) in the tenant
//!   named by a `Keyledger-Tenant` header (400 `tenant_required` without
//!   it), with every scope, as the operator or as the user named by
//!   `Keyledger-Act-As`; the trail records which. An API key sending those
//!   headers is refused unless they name its own tenant and no other user.
//!   The token is compared as a SHA-256 digest in constant time, and only
//!   its digest is kept in memory.
//!
//! Neither a key nor the token ever appears in a log line or an error message.

use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use keyledger_core::{Principal, Scope, TenantId, UserId};
use keyledger_runtime::{KeyEntry, VerifyOutcome};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::limits::{OPERATOR_TOKEN_CHARS_MAX, OPERATOR_TOKEN_CHARS_MIN};

/// The header that carries a key when `Authorization` is not used.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Reads the presented credential from either header. Both may be sent only
/// if they agree.
pub(crate) fn presented(headers: &HeaderMap) -> Result<&str, ApiError> {
    let bearer = headers.get_all(header::AUTHORIZATION);
    let api_key = headers.get_all(API_KEY_HEADER);
    if bearer.iter().count() > 1 || api_key.iter().count() > 1 {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "send one credential, once",
        ));
    }
    let bearer = headers.get(header::AUTHORIZATION).map(|v| {
        let text = v.to_str().map_err(|_| malformed_header())?;
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "invalid_credentials",
                "the Authorization header must be `Bearer <key>`",
            ));
        }
        Ok(rest.trim())
    });
    let api_key = headers
        .get(API_KEY_HEADER)
        .map(|v| v.to_str().map(str::trim).map_err(|_| malformed_header()));
    let credential = match (bearer.transpose()?, api_key.transpose()?) {
        (None, None) => {
            return Err(ApiError::unauthorized(
                "missing_credentials",
                "send a key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ));
        }
        (Some(b), None) => b,
        (None, Some(k)) => k,
        (Some(b), Some(k)) if b == k => b,
        (Some(_), Some(_)) => {
            return Err(ApiError::unauthorized(
                "invalid_credentials",
                "the Authorization and X-API-Key headers hold different credentials",
            ));
        }
    };
    if credential.is_empty() {
        return Err(ApiError::unauthorized(
            "missing_credentials",
            "the credential is empty",
        ));
    }
    Ok(credential)
}

fn malformed_header() -> ApiError {
    ApiError::unauthorized(
        "invalid_credentials",
        "the credential header is not readable text",
    )
}

/// The scope a route needs, as a type: `Authed<KeysRead>`.
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope; `None` for any valid key.
    const SCOPE: Option<Scope>;
}

macro_rules! scopes {
    ($($(#[$doc:meta])* $name:ident => $scope:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl RequiredScope for $name {
            const SCOPE: Option<Scope> = $scope;
        }
    )*};
}

scopes! {
    /// `keys:read`.
    KeysRead => Some(Scope::KeysRead);
    /// `keys:write`.
    KeysWrite => Some(Scope::KeysWrite);
    /// `audit:read`.
    AuditRead => Some(Scope::AuditRead);
    /// `usage:read`.
    UsageRead => Some(Scope::UsageRead);
    /// `users:remove`.
    UsersRemove => Some(Scope::UsersRemove);
    /// `webhooks:manage`.
    WebhooksManage => Some(Scope::WebhooksManage);
    /// Any valid key.
    AnyScope => None;
}

/// The header naming the tenant the operator token acts in on a tenant route.
pub const TENANT_HEADER: &str = "keyledger-tenant";
/// The header naming the user the operator token acts as on a tenant route.
pub const ACT_AS_HEADER: &str = "keyledger-act-as";

/// Who is asking on a tenant route.
#[derive(Clone)]
enum Caller {
    /// An API key, as its owner in its tenant, narrowed by its scopes.
    Key(std::sync::Arc<KeyEntry>),
    /// The operator token, in the tenant named by `Keyledger-Tenant`, as
    /// itself or as the user named by `Keyledger-Act-As`, with every scope.
    Operator {
        tenant: TenantId,
        act_as: Option<UserId>,
    },
}

/// A request on a tenant route, authenticated by an API key holding scope
/// `S`, or by the operator token with a `Keyledger-Tenant` header.
pub struct Authed<S> {
    caller: Caller,
    _scope: PhantomData<S>,
}

impl<S> std::fmt::Debug for Authed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.caller {
            Caller::Key(k) => f
                .debug_struct("Authed")
                .field("key_id", &k.key_id)
                .field("tenant", &k.tenant)
                .finish(),
            Caller::Operator { tenant, act_as } => f
                .debug_struct("Authed")
                .field("operator", &true)
                .field("tenant", tenant)
                .field("act_as", act_as)
                .finish(),
        }
    }
}

impl<S> Authed<S> {
    /// The key that authenticated; `None` for the operator token.
    pub fn key(&self) -> Option<&KeyEntry> {
        match &self.caller {
            Caller::Key(k) => Some(k),
            Caller::Operator { .. } => None,
        }
    }

    /// The tenant acted in.
    pub fn tenant(&self) -> &TenantId {
        match &self.caller {
            Caller::Key(k) => &k.tenant,
            Caller::Operator { tenant, .. } => tenant,
        }
    }

    /// The user named by `Keyledger-Act-As`, for the operator token.
    pub fn act_as(&self) -> Option<&UserId> {
        match &self.caller {
            Caller::Key(_) => None,
            Caller::Operator { act_as, .. } => act_as.as_ref(),
        }
    }

    /// The principal recorded on what the request causes: the key acting
    /// as its owner, narrowed by its scopes; or the operator (or the user
    /// it acts as) with every scope.
    pub fn principal(&self) -> Principal {
        match &self.caller {
            Caller::Key(k) => Principal::api_key(
                k.tenant.clone(),
                k.key_id,
                k.name.to_string(),
                k.owner.clone(),
                k.scopes,
            ),
            Caller::Operator {
                tenant,
                act_as: None,
            } => Principal::operator(tenant.clone()),
            Caller::Operator {
                tenant,
                act_as: Some(user),
            } => Principal::user(tenant.clone(), user.clone()),
        }
    }
}

/// The two headers that place the operator token on a tenant route.
#[derive(Clone, Copy)]
enum OperatorHeader {
    Tenant,
    ActAs,
}

impl OperatorHeader {
    fn name(self) -> &'static str {
        match self {
            OperatorHeader::Tenant => TENANT_HEADER,
            OperatorHeader::ActAs => ACT_AS_HEADER,
        }
    }

    /// 400 `invalid_header`; the value is never quoted back.
    fn invalid(self, why: impl std::fmt::Display) -> ApiError {
        let title = match self {
            OperatorHeader::Tenant => "Keyledger-Tenant",
            OperatorHeader::ActAs => "Keyledger-Act-As",
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("the `{title}` header {why}"),
        )
    }

    /// The header's text, if sent and not blank; refused when unreadable,
    /// repeated or shaped like a key.
    fn read(self, headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
        let mut values = headers.get_all(self.name()).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(self.invalid("is sent more than once"));
        }
        let text = value
            .to_str()
            .map_err(|_| self.invalid("is not readable text"))?
            .trim();
        if crate::redact::holds_key(text) {
            return Err(self.invalid(
                "holds text shaped like an API key; send a key only in `Authorization` or `X-API-Key`",
            ));
        }
        Ok(Some(text).filter(|t| !t.is_empty()))
    }
}

/// The operator token on a tenant route: the tenant from `Keyledger-Tenant`
/// (400 `tenant_required` without it), the user from `Keyledger-Act-As`.
fn operator_caller(headers: &HeaderMap) -> Result<Caller, ApiError> {
    let tenant = OperatorHeader::Tenant.read(headers)?;
    let act_as = OperatorHeader::ActAs.read(headers)?;
    let Some(tenant) = tenant else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "tenant_required",
            "the operator token acts on a tenant route only in the tenant named by a \
             `Keyledger-Tenant: <tenant>` header (and as the user named by \
             `Keyledger-Act-As: <user>`, if given); add the header, or use /v1/admin/...",
        ));
    };
    let tenant: TenantId = tenant.parse().map_err(|e: keyledger_core::IdError| {
        OperatorHeader::Tenant.invalid(format_args!("is not a tenant id: {e}"))
    })?;
    let act_as = act_as
        .map(|u| {
            u.parse::<UserId>().map_err(|e: keyledger_core::IdError| {
                OperatorHeader::ActAs.invalid(format_args!("is not a user id: {e}"))
            })
        })
        .transpose()?;
    Ok(Caller::Operator { tenant, act_as })
}

/// An API key with an operator header: ignored when it names the key's own
/// tenant, refused otherwise (a key acts only in its tenant, as its owner).
fn key_headers(headers: &HeaderMap, key: &KeyEntry) -> Result<(), ApiError> {
    let forbidden = |what: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{what} is for the operator token: an API key acts only in its own tenant, as its owner"
            ),
        )
    };
    if let Some(t) = OperatorHeader::Tenant.read(headers)?
        && t != key.tenant.as_str()
    {
        return Err(forbidden("the `Keyledger-Tenant` header"));
    }
    if OperatorHeader::ActAs.read(headers)?.is_some() {
        return Err(forbidden("the `Keyledger-Act-As` header"));
    }
    Ok(())
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authed<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = presented(&parts.headers)?;
        if state.operator().matches(credential) {
            let authed = Authed {
                caller: operator_caller(&parts.headers)?,
                _scope: PhantomData,
            };
            // Read your writes, as for a key (below).
            crate::position::wait(state.ledger(), authed.tenant(), &parts.headers).await?;
            return Ok(authed);
        }
        // A key another node created a moment ago is found too.
        let v = state.ledger().verify_current(credential, S::SCOPE).await;
        let key = match (v.outcome, v.key) {
            (VerifyOutcome::Valid, Some(key)) => key,
            (VerifyOutcome::InsufficientScope, _) => {
                let scope = S::SCOPE.map_or("", Scope::as_str);
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!("this route needs the `{scope}` scope, which the key does not hold"),
                ));
            }
            (VerifyOutcome::Malformed, _) => {
                return Err(ApiError::unauthorized(
                    "malformed_key",
                    "the key is not shaped like a key or its checksum does not match",
                ));
            }
            (VerifyOutcome::Revoked, _) => {
                return Err(ApiError::unauthorized("key_revoked", "the key is revoked"));
            }
            (VerifyOutcome::Expired, _) => {
                return Err(ApiError::unauthorized("key_expired", "the key has expired"));
            }
            (VerifyOutcome::RateLimited, _) => {
                let now = state.ledger().now();
                let wait_us = v
                    .policy
                    .and_then(|p| p.retry_at())
                    .map_or(0, |t| t.as_micros().saturating_sub(now.as_micros()).max(0));
                let secs = u64::try_from(wait_us).unwrap_or(0).div_ceil(1_000_000);
                return Err(ApiError::rate_limited(secs));
            }
            (VerifyOutcome::UsageExceeded, _) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "usage_exceeded",
                    "the key has no credits left",
                ));
            }
            (VerifyOutcome::NotFound | VerifyOutcome::Valid, _) => {
                return Err(ApiError::unauthorized("unknown_key", "no such key"));
            }
        };
        key_headers(&parts.headers, &key)?;
        // Read your writes: wait for the position the request passes back.
        crate::position::wait(state.ledger(), &key.tenant, &parts.headers).await?;
        Ok(Authed {
            caller: Caller::Key(key),
            _scope: PhantomData,
        })
    }
}

/// The operator token, as its SHA-256 digest.
#[derive(Clone)]
pub struct OperatorToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(…)")
    }
}

/// Where the operator token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `KEYLEDGER_OPERATOR_TOKEN`.
    Environment,
    /// The data directory's `operator-token` file, from an earlier start.
    File,
    /// Generated now and written to the data directory: a first start.
    Created,
}

/// The token file's name in the data directory.
pub const OPERATOR_TOKEN_FILE: &str = keyledger_runtime::datadir::OPERATOR_TOKEN_FILE;

impl OperatorToken {
    /// A token from its text. Fails on a token that is too short, too long
    /// or holds white space or control characters.
    pub fn new(token: &str) -> Result<Self, String> {
        let chars = token.chars().count();
        if !(OPERATOR_TOKEN_CHARS_MIN..=OPERATOR_TOKEN_CHARS_MAX).contains(&chars) {
            return Err(format!(
                "an operator token is {OPERATOR_TOKEN_CHARS_MIN} to {OPERATOR_TOKEN_CHARS_MAX} characters"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("an operator token may not hold white space or control characters".into());
        }
        Ok(OperatorToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token: digests compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = d
            .iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// The token file of a data directory.
    pub fn path(data: &Path) -> PathBuf {
        data.join(OPERATOR_TOKEN_FILE)
    }

    /// The token from `env` (the value of `KEYLEDGER_OPERATOR_TOKEN`) if
    /// given, else from `<data>/operator-token`, else a new one from the
    /// OS CSPRNG, written there readable by the owner only.
    pub fn load_or_create(data: &Path, env: Option<&str>) -> Result<(Self, TokenSource), String> {
        if let Some(t) = env.filter(|t| !t.is_empty()) {
            return Ok((
                Self::new(t).map_err(|e| format!("KEYLEDGER_OPERATOR_TOKEN: {e}"))?,
                TokenSource::Environment,
            ));
        }
        let path = Self::path(data);
        let read = keyledger_runtime::datadir::open_no_follow(
            std::fs::OpenOptions::new().read(true),
            &path,
        )
        .and_then(std::io::read_to_string);
        match read {
            Ok(text) => {
                warn_if_shared(&path);
                let token =
                    Self::new(text.trim()).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((token, TokenSource::File))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = generate()?;
                write_private(&path, &token)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok((Self::new(&token)?, TokenSource::Created))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// A new token: `klop_` and 64 hex digits of OS CSPRNG output (256 bits).
fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
    Ok(format!("klop_{}", hex::encode(bytes)))
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = keyledger_runtime::datadir::open_no_follow(&mut options, path)?;
    writeln!(file, "{token}")?;
    file.sync_all()
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the operator token file is readable by others; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// A request authenticated by the operator token.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = presented(&parts.headers)?;
        if state.operator().matches(credential) {
            Ok(Operator)
        } else {
            Err(ApiError::unauthorized(
                "invalid_operator_token",
                "the credential is not the operator token, which this route takes (the admin \
                 routes and /metrics take only the operator token)",
            ))
        }
    }
}

/// Whether the request carries the operator token, for the unauthenticated
/// routes that show more to the operator (the log position on `/healthz`).
/// Never refuses: no credential, or any other, is simply not the operator.
#[derive(Debug)]
pub struct MaybeOperator(pub bool);

impl FromRequestParts<AppState> for MaybeOperator {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        let operator = presented(&parts.headers).is_ok_and(|c| state.operator().matches(c));
        Ok(MaybeOperator(operator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks_and_matches() {
        let t = OperatorToken::new("klop_0123456789abcdef0123456789").unwrap();
        assert!(t.matches("klop_0123456789abcdef0123456789"));
        assert!(!t.matches("klop_0123456789abcdef012345678"));
        assert!(OperatorToken::new("short").is_err());
        assert!(OperatorToken::new("has a space in it, which is not ok").is_err());
        assert!(!format!("{t:?}").contains("klop"));
    }

    #[test]
    fn token_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (a, source) = OperatorToken::load_or_create(dir.path(), None).unwrap();
        assert_eq!(source, TokenSource::Created);
        let text = std::fs::read_to_string(OperatorToken::path(dir.path())).unwrap();
        assert!(a.matches(text.trim()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(OperatorToken::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, source) = OperatorToken::load_or_create(dir.path(), None).unwrap();
        assert_eq!(source, TokenSource::File);
        assert!(b.matches(text.trim()));
        let (c, source) =
            OperatorToken::load_or_create(dir.path(), Some("from-the-environment-0123456789"))
                .unwrap();
        assert_eq!(source, TokenSource::Environment);
        assert!(c.matches("from-the-environment-0123456789"));
        assert!(!c.matches(text.trim()));
    }

    #[test]
    #[cfg(unix)]
    fn a_linked_token_file_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("their-token");
        std::fs::write(&theirs, "klop_chosen_by_someone_else_0123456789\n").unwrap();
        let link = OperatorToken::path(dir.path());
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        let e = OperatorToken::load_or_create(dir.path(), None).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(e.contains(&link.display().to_string()), "{e}");
        // A dangling link is not written through either.
        std::fs::remove_file(&theirs).unwrap();
        let e = OperatorToken::load_or_create(dir.path(), None).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(!theirs.exists());
    }

    #[test]
    fn credential_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h).unwrap_err().code(), "missing_credentials");
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h).unwrap(), "abc");
        h.insert(API_KEY_HEADER, "abc".parse().unwrap());
        assert_eq!(presented(&h).unwrap(), "abc");
        h.insert(API_KEY_HEADER, "xyz".parse().unwrap());
        assert_eq!(presented(&h).unwrap_err().code(), "invalid_credentials");
        h.remove(API_KEY_HEADER);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented(&h).unwrap_err().code(), "invalid_credentials");
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(presented(&h).is_err());
    }
}
