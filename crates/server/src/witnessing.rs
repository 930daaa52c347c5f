//! Witnessed evidence routes: the tenant's checkpoint with the witnesses'
//! cosignatures (C2SP tlog-cosignature) and receipts (C2SP tlog-proof) for
//! one event. See `docs/audit.md`, "Witnesses" and "Receipts".

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_core::AuditReadKind;
use keyledger_runtime::ReceiptAnswer;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AuditRead, Authed};
use crate::error::{ApiError, ApiQuery, responses};
use crate::handlers::blocking;

type ApiResult<T> = Result<T, ApiError>;

/// The media type of a receipt (C2SP tlog-proof; files end in `.tlog-proof`).
pub const RECEIPT_CONTENT_TYPE: &str = "text/x.tlog-proof; charset=utf-8";

/// The witness routes, merged into the main router.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(witnessed_checkpoint))
        .routes(routes!(receipt))
}

/// The tenant's best witnessed checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WitnessedBody {
    /// The checkpoint's origin.
    pub origin: String,
    /// Events in the tree.
    pub size: u64,
    /// The RFC 6962 root (hex).
    pub root: String,
    /// The signed note: the log's signature, then one cosignature line per witness.
    pub note: String,
    /// The witnesses that cosigned it.
    pub witnesses: Vec<String>,
}

/// Query of `GET /v1/audit/receipt`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceiptQuery {
    /// The event's tenant sequence number.
    #[param(minimum = 1)]
    pub position: u64,
}

/// A receipt that is not ready yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptPending {
    /// The event's position.
    pub position: u64,
    /// The size of the best checkpoint there is (it does not cover the position yet).
    pub covered: u64,
    /// Ask again after this many seconds (also in `Retry-After`).
    pub retry_after_seconds: u64,
    /// Where to fetch it.
    pub receipt_url: String,
}

/// The tenant's stored checkpoint cosigned by the most witnesses (the
/// largest among those), as a signed note with the cosignature lines
/// appended. 404 while no witness has cosigned one (or none is configured).
#[utoipa::path(
    get, path = "/v1/audit/checkpoint/witnessed", tag = "audit",
    responses((status = 200, description = "The witnessed checkpoint", body = WitnessedBody), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn witnessed_checkpoint(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
) -> ApiResult<Json<WitnessedBody>> {
    let ledger = state.ledger().clone();
    let tenant = auth.tenant().clone();
    let w = blocking(move || Ok(ledger.witnessed_checkpoint(&tenant)?)).await?;
    let w = w.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_witnessed",
            "no witness has cosigned a checkpoint of this tenant yet",
        )
    })?;
    let c = keyledger_audit::checkpoint::parse_unverified(&w.note)
        .map_err(|e| ApiError::internal(format!("a stored witnessed checkpoint: {e}")))?;
    Ok(Json(WitnessedBody {
        origin: c.origin,
        size: c.size,
        root: hex::encode(c.root),
        note: w.note,
        witnesses: w.witnesses,
    }))
}

/// A receipt for the event at `position`: a C2SP tlog-proof (the event's
/// chain hash as `extra`, its leaf index, its inclusion proof, and the
/// best witnessed checkpoint covering it with its cosignatures; without
/// witnesses configured, the newest stored checkpoint). Check it offline
/// with `keyledger audit verify-receipt`. 202 with `Retry-After` while no
/// such checkpoint covers the event yet. Recorded as a proof read.
#[utoipa::path(
    get, path = "/v1/audit/receipt", tag = "audit",
    params(ReceiptQuery),
    responses(
        (status = 200, description = "The receipt (C2SP tlog-proof)", content((String = "text/x.tlog-proof"))),
        (status = 202, description = "No checkpoint covers the event yet: ask again after `Retry-After` seconds", body = ReceiptPending),
        responses::KeyAuth, responses::Common,
    ),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn receipt(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<ReceiptQuery>,
) -> ApiResult<Response> {
    let position = q.position;
    Ok(match recorded_receipt(&state, &auth, position).await? {
        ReceiptAnswer::Ready { text, .. } => {
            ([(header::CONTENT_TYPE, RECEIPT_CONTENT_TYPE)], text).into_response()
        }
        ReceiptAnswer::NotYet {
            covered,
            retry_after,
        } => pending(position, covered, retry_after),
    })
}

/// The receipt of the caller's tenant's event at `position` (bad input is
/// refused first and changes nothing); a receipt handed out is recorded
/// as a proof read first.
async fn recorded_receipt<S>(
    state: &AppState,
    auth: &Authed<S>,
    position: u64,
) -> ApiResult<ReceiptAnswer> {
    let ledger = state.ledger().clone();
    let tenant = auth.tenant().clone();
    let answer = blocking(move || Ok(ledger.receipt(&tenant, position)?)).await?;
    if let ReceiptAnswer::Ready { .. } = answer {
        state
            .ledger()
            .record_audit_read(auth.principal(), position, position, AuditReadKind::Proof)
            .await?;
    }
    Ok(answer)
}

/// The 202 answer for a receipt that is not ready.
pub(crate) fn pending(position: u64, covered: u64, retry_after: std::time::Duration) -> Response {
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = (
        StatusCode::ACCEPTED,
        Json(ReceiptPending {
            position,
            covered,
            retry_after_seconds: seconds,
            receipt_url: format!("/v1/audit/receipt?position={position}"),
        }),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    r
}

/// The `receipt` object of a write asked with `receipt=true`: the
/// event's `position`, `receipt_url`, and `tlog_proof` (the receipt,
/// recorded as a proof read) when a checkpoint already covers it, else
/// `null` and `retry_after_seconds`.
pub(crate) async fn receipt_object<S>(
    state: &AppState,
    auth: &Authed<S>,
    position: u64,
) -> ApiResult<serde_json::Value> {
    let url = format!("/v1/audit/receipt?position={position}");
    Ok(match recorded_receipt(state, auth, position).await? {
        ReceiptAnswer::Ready { text, .. } => {
            serde_json::json!({"position": position, "receipt_url": url, "tlog_proof": text})
        }
        ReceiptAnswer::NotYet { retry_after, .. } => serde_json::json!({
            "position": position,
            "receipt_url": url,
            "tlog_proof": null,
            "retry_after_seconds": retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }),
    })
}

/// `POST /v1/keys/{id}/revoke?receipt=true`: the revoked key, as without
/// `receipt`, with a `receipt` object: the revocation's `position`,
/// `receipt_url`, and `tlog_proof` (the receipt) when a checkpoint already
/// covers it, else `retry_after_seconds`. Never waits for a checkpoint or
/// a witness.
pub(crate) async fn revoke_with_receipt(
    state: &AppState,
    auth: &Authed<crate::auth::KeysWrite>,
    id: keyledger_core::KeyId,
    reason: keyledger_core::RevokeReason,
    q: &crate::wire::RevokeQuery,
) -> ApiResult<Response> {
    use crate::wire::WaitFor;
    let wait = match q.wait.unwrap_or_default() {
        WaitFor::ThisNode if q.wait_ms.is_some() => {
            return Err(ApiError::query("wait_ms applies only with wait=all-nodes"));
        }
        WaitFor::ThisNode => None,
        WaitFor::AllNodes => {
            let wait_ms = q.wait_ms.unwrap_or(crate::handlers::REVOKE_WAIT_MS_DEFAULT);
            if !(1..=crate::handlers::REVOKE_WAIT_MS_MAX).contains(&wait_ms) {
                return Err(ApiError::query(format!(
                    "wait_ms must be 1 to {}",
                    crate::handlers::REVOKE_WAIT_MS_MAX
                )));
            }
            Some(std::time::Duration::from_millis(wait_ms))
        }
    };
    let (key, position) = state
        .ledger()
        .revoke_key_at(auth.principal(), id, reason, wait)
        .await?;
    let receipt = receipt_object(state, auth, position).await?;
    let view = keyledger_runtime::views::KeyView::new(&key, key.status(state.ledger().now()));
    let mut body =
        serde_json::to_value(&view).map_err(|e| ApiError::internal(format!("a key view: {e}")))?;
    if let Some(o) = body.as_object_mut() {
        o.insert("receipt".into(), receipt);
    }
    Ok(crate::position::answer(
        state.ledger(),
        auth.tenant(),
        Json(body),
    ))
}
