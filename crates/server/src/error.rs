//! One error type for every route, and the extractors that make axum's own
//! rejections speak the same format.
//!
//! Every failure is `{"error": {"code": "<snake_case>", "message": "…"}}`:
//!
//! | status | when |
//! |---|---|
//! | 400 | the request does not match the documented shape: malformed JSON, wrong types, missing or unknown fields, values outside an enum, bad dates, cursors, limits or ids in the path or query; a path or query holding text shaped like a key (`key_in_url`) |
//! | 401 | no credential, a malformed one, or an unknown, revoked or expired key (or a wrong operator token) |
//! | 403 | the key lacks the scope, or asks to grant one it does not hold; the key has no credits left (`usage_exceeded`) |
//! | 404 | unknown route, or an id that names nothing in the caller's tenant (a foreign id included) |
//! | 405 | a known route with another method |
//! | 409 | already revoked, already rotated, user already removed, user removed, a tenant's key limit |
//! | 413 | a body over [`crate::limits::BODY_BYTES_MAX`] |
//! | 414 | a path and query over [`crate::limits::URI_BYTES_MAX`] |
//! | 431 | headers over [`crate::limits::HEADER_BYTES_MAX`] |
//! | 415 | a body that is not `application/json` |
//! | 422 | well-shaped, but refused by the rules: blank, over-long or control-character names, a past expiry, no scopes, a grace period too long, a bad user id, a key policy value out of range (the field named: `credits.refill.day`, `limits[1].name`), a change of a key that changes nothing (`no_change`); a body holding text shaped like a key (`key_in_body`); a webhook URL that is not HTTPS (or HTTP to loopback) or resolves to a private, loopback, link-local or otherwise special address (`webhook_url_refused`) |
//! | 429 | a client over its connection limit (`too_many_connections`, written by the accept loop, `crate::conn`); an API key over one of its rate limits (`rate_limited`, with `Retry-After`) |
//! | 503 | the log is unavailable or found damaged (`log_damaged`), the server is shutting down, or the request timed out |
//! | 504 | a revoke asked to wait for every node (`wait=all-nodes`) is committed, but not every live node confirmed it in time |
//! | 500 | a bug, or the log and what was built from it disagree: never for anything a client sends |

use std::borrow::Cow;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_core::CommandError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::{IntoParams, ToSchema};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, snake_case code: `malformed_json`, `invalid_body`,
    /// `invalid_query`, `invalid_path`, `tenant_required`, `invalid_header`, `missing_credentials`,
    /// `invalid_credentials`, `malformed_key`, `unknown_key`, `key_revoked`,
    /// `key_expired`, `invalid_operator_token`, `insufficient_scope`,
    /// `forbidden`, `not_found`, `key_not_found`, `webhook_not_found`,
    /// `delivery_not_found`, `webhook_url_refused`, `method_not_allowed`,
    /// `already_revoked`, `already_rotated`, `conflict`, `user_already_removed`, `user_removed`, `no_change`,
    /// `limit_reached`, `body_too_large`, `unsupported_media_type`,
    /// `invalid_field`, `key_in_url`, `key_in_body`, `too_many_connections`,
    /// `rate_limited`, `usage_exceeded`,
    /// `unavailable`, `log_damaged`, `shutting_down`, `timeout`, `internal_error`.
    pub code: Cow<'static, str>,
    /// For a human; never holds a secret: anything shaped like a key is
    /// masked when the error is rendered.
    pub message: String,
}

/// An error answered in the API's format. Maps the runtime's and the
/// core's errors to statuses in one place, and logs what the client is not
/// shown.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Logged, never sent.
    internal: Option<String>,
    /// Seconds for a `Retry-After` header (429 `rate_limited`).
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            internal: None,
            retry_after: None,
        }
    }

    /// 429: an API key over one of its rate limits; retry in
    /// `retry_after_secs` (at least 1), sent as `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let secs = retry_after_secs.max(1);
        ApiError {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("the key is over one of its rate limits; retry in {secs} s"),
            )
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 400: a query parameter is not acceptable.
    pub fn query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 400: a path parameter is not acceptable.
    pub fn path(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", message)
    }

    /// 422: a field is well-shaped but refused.
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: {message}"),
        )
    }

    /// 401.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 404 for a route that does not exist.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see /openapi.json",
        )
    }

    /// 503 when a request took longer than its time limit
    /// ([`crate::limits::REQUEST_TIMEOUT`] unless configured otherwise).
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than the limit of {limit:?} (a slow body, or every slot busy)"
            ),
        )
    }

    /// 400: the path or query holds text shaped like a key.
    pub fn key_in_url() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "key_in_url",
            "the path or query holds text shaped like an API key; send a key only in \
             `Authorization: Bearer` or `X-API-Key` (or in the body of /v1/verify)",
        )
    }

    /// 422: a JSON body holds text shaped like a key, where none belongs.
    pub fn key_in_body() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "key_in_body",
            "the body holds text shaped like an API key; no field takes one (a key would be \
             stored in the log for good): send a key only in `Authorization: Bearer` or `X-API-Key`",
        )
    }

    /// 500 for a bug; `what` is logged, not sent.
    pub fn internal(what: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: "internal error; it has been logged".into(),
            internal: Some(what.into()),
            retry_after: None,
        }
    }

    /// The error for a bare status some layer answered without a body.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        let over = |what: &str, limit: usize| format!("{what} over the limit of {limit} bytes");
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route; see /openapi.json".into()),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this route does not take that method".into(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "body_too_large",
                over("the body is", crate::limits::BODY_BYTES_MAX),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "send application/json".into())
            }
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long".into()),
            StatusCode::URI_TOO_LONG => (
                "uri_too_long",
                over("the path and query are", crate::limits::URI_BYTES_MAX),
            ),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                over("the request's headers are", crate::limits::HEADER_BYTES_MAX),
            ),
            s if s.is_server_error() => ("internal_error", "internal error".into()),
            _ => ("bad_request", "the request is not acceptable".into()),
        };
        ApiError::new(status, code, message)
    }

    /// This error as a response that keeps `original`'s headers (an
    /// `Allow` on a 405, say) but not its body.
    pub(crate) fn with_headers_of(self, original: Response) -> Response {
        let (parts, _) = original.into_parts();
        let mut response = self.into_response();
        for (name, value) in parts.headers.iter() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    /// Every error goes out here: anything in its message or its logged
    /// detail shaped like a key (quoted from the request) is masked first
    /// ([`crate::redact`]).
    fn into_response(mut self) -> Response {
        if let Cow::Owned(masked) = crate::redact::mask_keys(&self.message) {
            self.message = masked;
        }
        if let Some(Cow::Owned(masked)) = self.internal.as_deref().map(crate::redact::mask_keys) {
            self.internal = Some(masked);
        }
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                detail = self.internal.as_deref().unwrap_or(&self.message),
                "request failed"
            );
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %self.message, "refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: Cow::Borrowed(self.code),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let message = e.to_string();
        match e {
            CommandError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            CommandError::KeyNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "key_not_found", message)
            }
            CommandError::AlreadyRevoked(_) => {
                Self::new(StatusCode::CONFLICT, "already_revoked", message)
            }
            CommandError::AlreadyRotated(..) => {
                Self::new(StatusCode::CONFLICT, "already_rotated", message)
            }
            CommandError::UserAlreadyRemoved(_) => {
                Self::new(StatusCode::CONFLICT, "user_already_removed", message)
            }
            CommandError::UserRemoved(_) => {
                Self::new(StatusCode::CONFLICT, "user_removed", message)
            }
            CommandError::Invalid(f) => Self::field(f.field, f.message),
            CommandError::Limit(_) => Self::new(StatusCode::CONFLICT, "limit_reached", message),
            CommandError::WebhookNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "webhook_not_found", message)
            }
            // A duplicate id or secret hash is the caller's bug, never chance.
            CommandError::Duplicate(_) => Self::internal(message),
            CommandError::Policy(p) => Self::field(&p.field, p.message),
            CommandError::NoChange(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_change", message)
            }
            // The credit commands are the system's (the verification path
            // reserves and refills); a client meets these only through it.
            CommandError::NoCredits(_) => Self::new(StatusCode::CONFLICT, "no_credits", message),
            CommandError::CreditsExhausted(_) => {
                Self::new(StatusCode::CONFLICT, "usage_exceeded", message)
            }
            CommandError::StaleEpoch { .. } => {
                Self::new(StatusCode::CONFLICT, "stale_epoch", message)
            }
            CommandError::RefillNotDue(..) => {
                Self::new(StatusCode::CONFLICT, "refill_not_due", message)
            }
        }
    }
}

impl From<keyledger_runtime::Error> for ApiError {
    fn from(e: keyledger_runtime::Error) -> Self {
        use keyledger_runtime::{Damage, Error as E};
        match e {
            E::Command(c) => c.into(),
            E::NotFound(m @ keyledger_runtime::Missing::Key(_)) => {
                Self::new(StatusCode::NOT_FOUND, "key_not_found", m.to_string())
            }
            E::NotFound(m @ keyledger_runtime::Missing::Webhook(_)) => {
                Self::new(StatusCode::NOT_FOUND, "webhook_not_found", m.to_string())
            }
            E::NotFound(m @ keyledger_runtime::Missing::Delivery(_)) => {
                Self::new(StatusCode::NOT_FOUND, "delivery_not_found", m.to_string())
            }
            E::WebhookTarget(why) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhook_url_refused",
                format!("url: {why}"),
            ),
            E::BadRequest(b) => Self::query(b.to_string()),
            // No route records a recovery (`keyledger recover` does).
            e @ E::Recovery(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            e @ E::Unavailable(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                message: "the event log is unavailable; nothing was acknowledged".into(),
                internal: Some(e.to_string()),
                retry_after: None,
            },
            E::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "keyledger is shutting down",
            ),
            // The store found its file or a record damaged after start-up
            // (a release build finds a damaged page only when it reads it):
            // the operator must restore the file; the client is told no
            // more than that, and nothing was acknowledged.
            E::Corrupt(d @ (Damage::File(_) | Damage::Record(_) | Damage::Decode { .. })) => {
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "log_damaged",
                    message: "the event log is damaged; nothing was acknowledged (the operator \
                              has been told)"
                        .into(),
                    internal: Some(d.to_string()),
                    retry_after: None,
                }
            }
            // The log and what was built from it disagree: a bug, or damage
            // that no check of the store caught.
            E::Corrupt(d @ (Damage::Apply(_) | Damage::Inconsistent(_))) => {
                Self::internal(d.to_string())
            }
            // Committed and enforced here; the other nodes did not confirm in time.
            e @ E::NotConfirmed { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "not_confirmed", e.to_string())
            }
            e @ E::DataDir(_) => Self::internal(e.to_string()),
        }
    }
}

/// A panic in a handler, answered as a 500 in the API's format.
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("a handler panicked").into_response()
}

/// What a body or a query that did not deserialize is told, in the API's
/// words rather than serde's or axum's: the field or parameter named
/// (`place` says which, in `whole`, the body or the query), and what it takes (`takes`, from the route's
/// documentation, where it has one).
fn refusal<E: std::fmt::Display>(
    (whole, place): (&str, &str),
    e: &serde_path_to_error::Error<E>,
    takes: &dyn Fn(&str) -> Option<String>,
) -> String {
    let inner = e.inner().to_string();
    let takes = |name: &str| takes(name).map_or(String::new(), |t| format!("; it takes {t}"));
    let quoted = |prefix: &str| {
        inner
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, rest)| (name.to_owned(), rest.to_owned()))
    };
    if let Some((name, _)) = quoted("missing field `") {
        return format!("the {place} `{name}` is required{}", takes(&name));
    }
    if let Some((name, rest)) = quoted("unknown field `") {
        let known = match rest.strip_prefix(", ") {
            Some("there are no fields") | None => "none is taken here".to_owned(),
            Some(known) => known.to_owned(),
        };
        return format!("there is no {place} `{name}`; {known}");
    }
    let inner = plain_types(&inner);
    let path = e.path().to_string();
    if path == "." {
        // serde's derive also reads a struct from a JSON array.
        return if inner.contains(", expected struct ") {
            format!("the {whole} must be a JSON object")
        } else {
            inner
        };
    }
    let top = path.split(['.', '[']).next().unwrap_or(&path);
    format!("the {place} `{path}` is not valid: {inner}{}", takes(top))
}

/// serde's names of Rust number types, as a client reads them.
fn plain_types(message: &str) -> String {
    for (rust, plain) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("usize", "a whole number, 0 or more"),
        ("i64", "a whole number"),
        ("bool", "true or false"),
        ("a boolean", "true or false"),
    ] {
        if let Some(head) = message.strip_suffix(&format!("expected {rust}")) {
            return format!("{head}expected {plain}");
        }
    }
    match message {
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            "not a whole number (0 or more)".into()
        }
        "number too large to fit in target type" => "a number too large".into(),
        "provided string was not `true` or `false`" => "expected true or false".into(),
        other => other.to_owned(),
    }
}

/// The description of the query parameter `name` of `T`, as the route's
/// documentation gives it (on one line, first letter lower-cased, no
/// final stop).
fn described<T: IntoParams>(name: &str) -> Option<String> {
    let params = T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query));
    let text = params.into_iter().find(|p| p.name == name)?.description?;
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    let first = chars.next()?;
    Some(first.to_lowercase().chain(chars).collect())
}

/// A JSON body, with axum's rejections in the API's error format.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// A body that parses is also searched, as a JSON value: one holding
    /// text shaped like a key anywhere, escaped or not, is refused (422
    /// `key_in_body`) before any field is used, so no key is stored or
    /// quoted back.
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        // Parsed once, as a JSON value: the request type is read from it,
        // and it is searched for keys.
        let value: serde_json::Value = parse_json(&bytes)?;
        let parsed = serde_path_to_error::deserialize(&value).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                refusal(("body", "field"), &e, &|_| None),
            )
        })?;
        if crate::redact::json_holds_key(&value) {
            return Err(ApiError::key_in_body());
        }
        Ok(ApiJson(parsed))
    }
}

/// A JSON body that may be left out (no body at all): then `T::default()`.
/// A body that is present must be `application/json`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
                    } else {
                        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
                    }
                })?;
        if bytes.is_empty() && !has_type {
            return Ok(OptionalJson(T::default()));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|j| OptionalJson(j.0))
    }
}

/// A JSON body as bytes, for handlers that parse it borrowing (the verify
/// hot path): the content type is checked and the size limit applied, as
/// [`ApiJson`] does; parse it with [`parse_json`].
#[derive(Debug)]
pub struct JsonBytes(pub axum::body::Bytes);

/// Whether a content type is JSON: `application/json` or `application/*+json`.
fn is_json_type(value: &str) -> bool {
    // No allocation: this runs on every verification.
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || (sub.len() > 5 && sub.as_bytes()[sub.len() - 5..].eq_ignore_ascii_case(b"+json")))
}

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_type);
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        axum::body::Bytes::from_request(req, state)
            .await
            .map(JsonBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
                }
            })
    }
}

/// Parses a JSON body, with the same errors as [`ApiJson`]: 400
/// `malformed_json` for bad syntax, 400 `invalid_body` for the wrong shape.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    })
}

/// Query parameters, with axum's rejections in the API's error format.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + IntoParams, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    /// Read as axum's `Query` reads it (`serde_urlencoded`); a refusal
    /// names the parameter and what it takes (`refusal`).
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let params = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(params)
            .map(ApiQuery)
            .map_err(|e| {
                ApiError::query(refusal(("query", "query parameter"), &e, &described::<T>))
            })
    }
}

/// Path parameters, with axum's rejections in the API's error format.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::path(e.body_text()))
    }
}

/// Error responses for the OpenAPI document, grouped as routes share them.
pub(crate) mod responses {
    use super::ErrorBody;

    /// Errors every `/v1` route may answer.
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum Common {
        /// Malformed path or query parameters (bad id, cursor, limit or date).
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// The path and query are over the limit (8 KiB).
        #[response(status = 414)]
        UriTooLong(ErrorBody),
        /// The headers are over the limit (16 KiB).
        #[response(status = 431)]
        HeadersTooLarge(ErrorBody),
        /// The log is unavailable or found damaged, the server is shutting down, or the request timed out.
        #[response(status = 503)]
        Unavailable(ErrorBody),
    }

    /// Errors of routes authenticated by an API key.
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum KeyAuth {
        /// No credential, a malformed one, or an unknown, revoked or expired key.
        #[response(status = 401)]
        Unauthorized(ErrorBody),
        /// The key lacks the scope the route needs, or asks to grant one it does not hold.
        #[response(status = 403)]
        Forbidden(ErrorBody),
    }

    /// Errors of the operator's routes.
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum OperatorAuth {
        /// No operator token, or a wrong one (API keys are not accepted here).
        #[response(status = 401)]
        Unauthorized(ErrorBody),
    }

    /// Errors of routes with a JSON body.
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum Body {
        /// The body is over the size limit.
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// The body is not `application/json`.
        #[response(status = 415)]
        UnsupportedMediaType(ErrorBody),
        /// A field is well-shaped but refused: blank, over-long or
        /// control-character name, past expiry, no scopes, grace too long, bad user id,
        /// a key policy value out of range; a change that changes nothing (`no_change`).
        #[response(status = 422)]
        Invalid(ErrorBody),
    }

    /// The id names no key of the caller's tenant (a foreign id included).
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum NotFound {
        /// No such key in this tenant.
        #[response(status = 404)]
        NotFound(ErrorBody),
    }

    /// The request conflicts with the ledger's state.
    #[derive(utoipa::IntoResponses)]
    #[allow(dead_code)]
    pub enum Conflict {
        /// Already revoked, user already removed, user removed, or a tenant's key limit.
        #[response(status = 409)]
        Conflict(ErrorBody),
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_type;

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;charset=UTF-8",
            "application/problem+json",
            "application/vnd.api+JSON",
        ] {
            assert!(is_json_type(yes), "{yes}");
        }
        for no in [
            "",
            "json",
            "text/json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "application/+json",
            "multipart/form-data; boundary=application/json",
        ] {
            assert!(!is_json_type(no), "{no}");
        }
        // Header text is ASCII, but nothing here may panic on other text.
        for odd in ["application/é", "é/+json", "application/éé+json", "/"] {
            let _ = is_json_type(odd);
        }
    }
}
