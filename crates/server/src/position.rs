//! `Keyledger-Position`: read-your-writes across nodes (docs/api.md,
//! "Reading your writes on any node").
//!
//! Every write answers the tenant's position after it (the tenant's own
//! sequence number, never the global log position). A key-authenticated
//! request that passes it back waits, at most [`POSITION_WAIT_MAX`], until
//! the node serving it has applied the tenant's trail up to there; then
//! lists, a key's history, usage and the trail show that write, whichever
//! node wrote it.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyledger_core::TenantId;
use keyledger_runtime::{Keyledger, PositionWait};
use utoipa::openapi::path::{HttpMethod, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Header, OpenApi, RefOr, Required};

use crate::error::ApiError;

/// The header's name, as written in answers (HTTP names are
/// case-insensitive).
pub const POSITION_HEADER: &str = "Keyledger-Position";

/// The longest a request waits for its position (well under the request
/// timeout).
pub const POSITION_WAIT_MAX: Duration = Duration::from_secs(5);
const _: () = assert!(POSITION_WAIT_MAX.as_secs() < crate::limits::REQUEST_TIMEOUT.as_secs());

/// The position a request passes back, if any: one whole number.
fn parse(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all(POSITION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad(
            "the Keyledger-Position header is given more than once; give it once",
        ));
    }
    let text = value.to_str().unwrap_or("");
    // Digits only: no sign, no space, no `0x`, at most u64.
    match text.parse::<u64>() {
        Ok(p) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(p)),
        _ => Err(bad(format!(
            "the Keyledger-Position header must be a whole number, a position a write of this \
             tenant answered; got `{}`",
            String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(40)
                .collect::<String>()
                .escape_debug()
        ))),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_position", message)
}

/// Waits until this node has applied `tenant`'s trail up to the position
/// the request passes back, if it passes one.
pub(crate) async fn wait(
    ledger: &Keyledger,
    tenant: &TenantId,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(position) = parse(headers)? else {
        return Ok(());
    };
    match ledger
        .wait_tenant_position(tenant, position, POSITION_WAIT_MAX)
        .await
    {
        PositionWait::Reached => Ok(()),
        PositionWait::Beyond { last } => Err(bad(format!(
            "Keyledger-Position {position} is past this tenant's last event ({last}): pass back \
             a position a write of this tenant answered"
        ))),
        PositionWait::Behind { applied } => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "position_not_reached",
            format!(
                "this node has applied this tenant's trail up to {applied}, not yet up to \
                 Keyledger-Position {position}, after waiting {} ms; retry, or send the request \
                 to another node",
                POSITION_WAIT_MAX.as_millis()
            ),
        )),
    }
}

/// `response` with the tenant's position after a write.
pub(crate) fn answer(
    ledger: &Keyledger,
    tenant: &TenantId,
    response: impl IntoResponse,
) -> Response {
    let mut response = response.into_response();
    if response.status().is_success() {
        response.headers_mut().insert(
            POSITION_HEADER,
            HeaderValue::from(ledger.tenant_position(tenant)),
        );
    }
    response
}

/// Documents the header: a parameter of every route an API key
/// authenticates, and a header of every write's successful answer.
pub(crate) fn document(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for (method, op) in [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
        ] {
            let Some(op) = op.as_mut() else { continue };
            let by = |scheme: &str| {
                op.security.iter().flatten().any(|s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_object().map(|o| o.contains_key(scheme)))
                        .unwrap_or(false)
                })
            };
            let key = by("bearer");
            let write = method != HttpMethod::Get && (key || by("operator"));
            if key {
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::T(parameter()));
            }
            if write {
                for (status, response) in op.responses.responses.iter_mut() {
                    if let (true, RefOr::T(r)) = (status.starts_with('2'), response) {
                        r.headers
                            .insert(POSITION_HEADER.to_owned(), RefOr::T(header()));
                    }
                }
            }
        }
    }
}

fn position_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(0))
}

fn parameter() -> Parameter {
    ParameterBuilder::new()
        .name(POSITION_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Read your writes on any node: the `Keyledger-Position` a write of this tenant \
             answered. The request waits (at most 5 s) until this node has applied the tenant's \
             trail up to it; 400 when it is not a whole number or is past the tenant's last \
             event, 503 `position_not_reached` when the node has not applied it in time.",
        ))
        .schema(Some(position_schema()))
        .build()
}

fn header() -> Header {
    let mut h = Header::new(position_schema());
    h.description = Some(
        "The tenant's position after this write (its own sequence number): pass it back as \
         `Keyledger-Position` to read this write on any node."
            .to_owned(),
    );
    h
}
