//! Transparency routes: the checkpoints this node signed for the tenant
//! (`GET /v1/audit/checkpoints`), and the global tree's C2SP tlog-tiles
//! read API under [`TILES_PREFIX`]: `/log/checkpoint`,
//! `/log/tile/<L>/<N>[.p/<W>]` and `/log/tile/entries/<N>[.p/<W>]` (entries
//! are the 32-byte chain hashes). The tiles are public with
//! `serve --tiles-public`, else behind the operator token. See
//! `docs/audit.md`, "The global tree and its tiles".

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_runtime::audit::TilePath;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AuditRead, Authed, MaybeOperator};
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody, responses};
use crate::handlers::blocking;

type ApiResult<T> = Result<T, ApiError>;

/// The URL prefix of the global tree's tiles.
pub const TILES_PREFIX: &str = "/log";

/// How long a client may cache the checkpoint, in seconds (C2SP: "not
/// beyond a few seconds").
const CHECKPOINT_MAX_AGE: u32 = 2;
/// How long a partial tile may be cached (a full one replaces it).
const PARTIAL_TILE_MAX_AGE: u32 = 60;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_checkpoints))
        .routes(routes!(log_checkpoint))
        // A tile path spans several segments: routed with a wildcard, and
        // documented as `/log/tile/{path}` (`crate::openapi`).
        .route(TILE_ROUTE, axum::routing::get(log_tile))
}

/// The tile route as axum matches it (a wildcard).
const TILE_ROUTE: &str = "/log/tile/{*path}";

/// A matched route as the OpenAPI document (and so the metrics) name it:
/// the tile route's wildcard is documented as `/log/tile/{path}`.
pub(crate) fn documented_route(route: &str) -> &str {
    if route == TILE_ROUTE {
        "/log/tile/{path}"
    } else {
        route
    }
}

/// Query of `GET /v1/audit/checkpoints`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointsQuery {
    /// The smallest tree size listed, a whole number (default 0).
    pub from: Option<u64>,
    /// The largest tree size listed, a whole number (default: no limit).
    pub to: Option<u64>,
    /// Where the previous page ended: a page's `next_cursor` (`c<n>`).
    #[param(pattern = r"^c[0-9]+$")]
    pub cursor: Option<String>,
    /// Page size: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One stored checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredCheckpointBody {
    /// Its origin (`<origin>/<tenant>`, or a legacy `keyledger/<tenant>`).
    pub origin: String,
    /// Events in the tree.
    pub size: u64,
    /// When it was signed (RFC 3339).
    pub at: String,
    /// The C2SP signed note.
    pub note: String,
}

/// A page of the checkpoints this node signed and stored for the tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointsPage {
    /// Oldest first.
    pub checkpoints: Vec<StoredCheckpointBody>,
    /// Pass as `cursor` to continue; null when there are no more.
    pub next_cursor: Option<String>,
}

/// The checkpoints this node signed and stored for the tenant in its
/// current checkpoint epoch (on every growth, debounced, and at least every
/// `--checkpoint-interval`), oldest first, of tree sizes `from..=to`.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "audit",
    params(CheckpointsQuery),
    responses((status = 200, description = "A page of stored checkpoints", body = CheckpointsPage), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn list_checkpoints(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<CheckpointsQuery>,
) -> ApiResult<Json<CheckpointsPage>> {
    let limit = q.limit.unwrap_or(keyledger_runtime::PAGE_LIMIT_DEFAULT);
    if !(1..=keyledger_runtime::PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::query(format!(
            "limit: 1 to {}",
            keyledger_runtime::PAGE_LIMIT_MAX
        )));
    }
    let start: usize = match &q.cursor {
        None => 0,
        Some(c) => c
            .strip_prefix('c')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ApiError::query("cursor: not a cursor of this list (`c<n>`)"))?,
    };
    let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    if from > to {
        return Err(ApiError::query(format!("from {from} is after to {to}")));
    }
    let ledger = state.ledger().clone();
    let tenant = auth.tenant().clone();
    let stored = blocking(move || Ok(ledger.stored_checkpoints(&tenant)?)).await?;
    let mut page = Vec::new();
    let mut next = None;
    for (i, c) in stored.into_iter().enumerate().skip(start) {
        if c.size < from || c.size > to {
            continue;
        }
        if page.len() == limit {
            next = Some(format!("c{i}"));
            break;
        }
        page.push(StoredCheckpointBody {
            origin: c.note.split('\n').next().unwrap_or_default().to_owned(),
            size: c.size,
            at: c.at,
            note: c.note,
        });
    }
    Ok(Json(CheckpointsPage {
        checkpoints: page,
        next_cursor: next,
    }))
}

/// Refuses a tile request without the operator token unless the tiles are
/// public; and the `Cache-Control` visibility to use.
fn tiles_access(state: &AppState, operator: bool) -> ApiResult<&'static str> {
    if state.tiles_public() {
        Ok("public")
    } else if operator {
        Ok("private")
    } else {
        Err(ApiError::unauthorized(
            "invalid_operator_token",
            "the global tree's tiles take the operator token on this server (`serve \
             --tiles-public` publishes them)",
        ))
    }
}

fn with_headers(body: Vec<u8>, content_type: &'static str, cache: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&cache) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    response
}

/// The global tree's newest signed checkpoint (C2SP tlog-checkpoint, origin
/// `<origin>`), as `text/plain`; with `serve --witness`, once a witness
/// cosigned one, the best witnessed global checkpoint with its cosignature
/// lines appended instead. Public with `serve --tiles-public`, else for the
/// operator token.
#[utoipa::path(
    get, path = "/log/checkpoint", tag = "audit",
    responses(
        (status = 200, description = "The signed note", content((String = "text/plain"))),
        responses::OperatorAuth, responses::Common,
    ),
    security((), ("operator" = [])),
)]
async fn log_checkpoint(
    State(state): State<AppState>,
    MaybeOperator(operator): MaybeOperator,
) -> ApiResult<Response> {
    let visibility = tiles_access(&state, operator)?;
    // The cosignatures are read from their file the first time.
    let ledger = state.ledger().clone();
    let note = blocking(move || Ok(ledger.served_global_checkpoint()?)).await?;
    Ok(with_headers(
        note.into_bytes(),
        "text/plain; charset=utf-8",
        format!("{visibility}, max-age={CHECKPOINT_MAX_AGE}"),
    ))
}

/// A tile of the global tree (`tile/<L>/<N>[.p/<W>]`: 32-byte hashes) or
/// an entry bundle (`tile/entries/<N>[.p/<W>]`: each entry a big-endian
/// `u16` length, 32, and an event's chain hash), by C2SP tlog-tiles. Full
/// tiles are immutable and cached for a year; partial ones for a minute.
#[utoipa::path(
    get, path = "/log/tile/{path}", tag = "audit",
    params(("path" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, `<N>` in three-digit groups (`x001/234`)")),
    responses(
        (status = 200, description = "The tile's bytes", content((Vec<u8> = "application/octet-stream"))),
        (status = 404, description = "Not a C2SP tile path, or beyond the tree", body = ErrorBody),
        responses::OperatorAuth, responses::Common,
    ),
    security((), ("operator" = [])),
)]
pub(crate) async fn log_tile(
    State(state): State<AppState>,
    MaybeOperator(operator): MaybeOperator,
    ApiPath(path): ApiPath<String>,
) -> ApiResult<Response> {
    let visibility = tiles_access(&state, operator)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such tile: not a C2SP tile path, or beyond the tree",
        )
    };
    let tile = TilePath::parse(&format!("tile/{path}")).ok_or_else(not_found)?;
    let bytes = state.ledger().global_tile(&tile)?.ok_or_else(not_found)?;
    let cache = if tile.is_full() {
        format!("{visibility}, max-age=31536000, immutable")
    } else {
        format!("{visibility}, max-age={PARTIAL_TILE_MAX_AGE}")
    };
    Ok(with_headers(bytes, "application/octet-stream", cache))
}
