//! Audit evidence routes: the tenant's signed checkpoint,
//! inclusion and consistency proofs, evidence bundles, and the public key
//! that checkpoints are signed with. See `docs/audit.md`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use keyledger_core::AuditReadKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AnyScope, AuditRead, Authed};
use crate::error::{ApiError, ApiQuery, responses};
use crate::handlers::blocking;

type ApiResult<T> = Result<T, ApiError>;

/// The audit routes, merged into the main router.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkpoint))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(bundle))
        .routes(routes!(public_key))
}

/// A signed checkpoint of the tenant's Merkle tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointBody {
    /// `<origin>/<tenant>` (`--audit-origin`; `/epoch-<n>` after a recovery).
    pub origin: String,
    /// Events in the tree.
    pub size: u64,
    /// The RFC 6962 root (hex).
    pub root: String,
    /// The C2SP signed note (origin, size, base64 root, `time` line, signature).
    pub note: String,
    /// The proof that the tenant's last event is a leaf of a global
    /// checkpoint: absent for a tenant without events, and for an API key
    /// unless the global tree's tiles are public (`serve --tiles-public`;
    /// its index is a global log position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalInclusionBody>,
}

/// A tenant checkpoint's inclusion in the global tree: the tenant's last
/// event (leaf `size - 1` of its tree) is leaf `index` of the global tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalInclusionBody {
    /// The global checkpoint's origin (`<origin>`).
    pub origin: String,
    /// Leaves in the global tree.
    pub size: u64,
    /// Its root (hex).
    pub root: String,
    /// The global checkpoint as a C2SP signed note (also at `/log/checkpoint`).
    pub note: String,
    /// The tenant's last event's leaf index in the global tree (its log
    /// position minus one).
    pub index: u64,
    /// The leaf hash (hex): the same as the tenant tree's last leaf.
    pub leaf: String,
    /// The RFC 9162 inclusion proof of `index` in the global tree (hex, bottom up).
    pub proof: Vec<String>,
}

/// The public key checkpoints are signed with.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKeyBody {
    /// Ed25519, base64 of the 32 bytes.
    pub public_key: String,
    /// The signature algorithm: `ed25519`.
    pub algorithm: &'static str,
    /// The C2SP verifier key of the tenant's log
    /// (`<origin>/<tenant>+<hex key ID>+<base64(0x01 || key)>`), as Go's
    /// `note.NewVerifier` reads it.
    pub verifier_key: String,
    /// The tenant's origin (the verifier key's name).
    pub origin: String,
    /// The C2SP verifier key of the global tree (`<origin>+…`).
    pub global_verifier_key: String,
    /// The global tree's origin.
    pub global_origin: String,
}

/// Query of `GET /v1/audit/proof/inclusion`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The event's tenant sequence number (1-based; leaf `position - 1`).
    #[param(minimum = 1)]
    pub position: u64,
    /// The tree size (default: the current size).
    pub size: Option<u64>,
}

/// Query of the consistency proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// The older tree size, a whole number.
    pub from: u64,
    /// The newer tree size, a whole number (default: the current size).
    pub to: Option<u64>,
}

/// Query of the bundle.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BundleQuery {
    /// The first sequence number, a whole number (default 1: the whole log, as
    /// `keyledger audit evidence bundle` does).
    #[param(minimum = 1)]
    pub from: Option<u64>,
    /// The last sequence number, a whole number (default: the current size).
    #[param(minimum = 1)]
    pub to: Option<u64>,
}

/// An inclusion proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionBody {
    /// The event's sequence number.
    pub position: u64,
    /// The tree size.
    pub size: u64,
    /// The leaf hash, `SHA-256(0x00 || chain hash)` (hex).
    pub leaf: String,
    /// The RFC 9162 audit path (hex), bottom up.
    pub proof: Vec<String>,
    /// The root of the tree of `size` (hex).
    pub root: String,
}

/// A consistency proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyBody {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The older root (hex).
    pub from_root: String,
    /// The newer root (hex).
    pub to_root: String,
    /// The RFC 9162 consistency proof (hex).
    pub proof: Vec<String>,
}

/// A freshly signed checkpoint of the tenant's tree.
#[utoipa::path(
    get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "The signed checkpoint", body = CheckpointBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn checkpoint(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
) -> ApiResult<Json<CheckpointBody>> {
    // Global positions interleave the tenants (docs/api.md, "Positions"):
    // shown to whoever may read the global tree, i.e. to anyone when its
    // tiles are public, else to the operator only.
    let (signed, global) = if state.tiles_public() || auth.key().is_none() {
        state.ledger().checkpoint_in_global(auth.tenant())?
    } else {
        (state.ledger().checkpoint(auth.tenant())?, None)
    };
    Ok(Json(CheckpointBody {
        origin: signed.checkpoint.origin,
        size: signed.checkpoint.size,
        root: hex::encode(signed.checkpoint.root),
        note: signed.note,
        global: global.map(|g| GlobalInclusionBody {
            origin: g.checkpoint.checkpoint.origin,
            size: g.checkpoint.checkpoint.size,
            root: hex::encode(g.checkpoint.checkpoint.root),
            note: g.checkpoint.note,
            index: g.index,
            leaf: g.leaf,
            proof: g.proof,
        }),
    }))
}

/// The inclusion proof of the event at `position` in the tree of `size`.
#[utoipa::path(
    get, path = "/v1/audit/proof/inclusion", tag = "audit",
    params(InclusionQuery),
    responses((status = 200, description = "The inclusion proof", body = InclusionBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn inclusion(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> ApiResult<Json<InclusionBody>> {
    let ledger = state.ledger();
    let tenant = auth.tenant().clone();
    // Checked first (bad input changes nothing), recorded before it is handed out.
    let p = ledger.inclusion_proof(&tenant, q.position, q.size.unwrap_or(0))?;
    ledger
        .record_audit_read(auth.principal(), p.seq, p.seq, AuditReadKind::Proof)
        .await?;
    Ok(Json(InclusionBody {
        position: p.seq,
        size: p.size,
        leaf: p.leaf,
        proof: p.proof,
        root: p.root,
    }))
}

/// The consistency proof between the trees of sizes `from` and `to`.
#[utoipa::path(
    get, path = "/v1/audit/proof/consistency", tag = "audit",
    params(RangeQuery),
    responses((status = 200, description = "The consistency proof", body = ConsistencyBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn consistency(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<ConsistencyBody>> {
    let c = state
        .ledger()
        .consistency_proof(auth.tenant(), q.from, q.to.unwrap_or(0))?;
    Ok(Json(ConsistencyBody {
        from: c.from,
        to: c.to,
        from_root: c.from_root,
        to_root: c.to_root,
        proof: c.proof,
    }))
}

/// An evidence bundle of events `from..=to` (by default the whole log), as one JSON Lines file: a
/// header line (format, tenant, range, the signed checkpoint, the range,
/// inclusion and consistency proofs), then one event per line with its
/// stored bytes. Verify it offline with `keyledger audit verify-bundle`.
/// The export is recorded in the trail first.
#[utoipa::path(
    get, path = "/v1/audit/bundle", tag = "audit",
    params(BundleQuery),
    responses(
        (status = 200, description = "The bundle (format `keyledger-audit-bundle/v1`): a header line, then one event per line",
            content((String = "application/x-ndjson"))),
        responses::KeyAuth, responses::Common,
    ),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn bundle(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<BundleQuery>,
) -> ApiResult<Response> {
    let ledger = state.ledger().clone();
    let tenant = auth.tenant().clone();
    let from = q.from.unwrap_or(1);
    let to = q.to.unwrap_or_else(|| ledger.tree_size(&tenant));
    ledger.check_bundle_range(&tenant, from, to)?;
    ledger
        .record_audit_read(auth.principal(), from, to, AuditReadKind::Bundle)
        .await?;
    // The header (checkpoint, proofs) first, so its errors are answered
    // as such; then the events, streamed in bounded memory.
    let (l, t) = (ledger.clone(), tenant.clone());
    let header = blocking(move || Ok(l.bundle_header_now(&t, from, to)?)).await?;
    Ok(crate::export::bundle(ledger, tenant, header))
}

/// The Ed25519 public key that signs every checkpoint. Any valid key may
/// read it (every `/v1/` route is authenticated); a reviewer should still
/// compare it with one obtained out of band (`keyledger audit public-key`).
#[utoipa::path(
    get, path = "/v1/audit/public-key", tag = "audit",
    responses((status = 200, description = "The public key", body = PublicKeyBody), responses::KeyAuth, responses::Common),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn public_key(
    State(state): State<AppState>,
    auth: Authed<AnyScope>,
) -> ApiResult<Json<PublicKeyBody>> {
    let ledger = state.ledger();
    let key = ledger
        .audit_public_key()
        .ok_or_else(|| ApiError::internal("audit signing is not configured".to_owned()))?;
    let origin = ledger.checkpoint_origin(auth.tenant());
    let global_origin = ledger.global_origin();
    Ok(Json(PublicKeyBody {
        public_key: keyledger_runtime::audit::encode_public_key(&key),
        algorithm: "ed25519",
        verifier_key: keyledger_audit::checkpoint::verifier_key(&origin, &key),
        origin,
        global_verifier_key: keyledger_audit::checkpoint::verifier_key(&global_origin, &key),
        global_origin,
    }))
}
