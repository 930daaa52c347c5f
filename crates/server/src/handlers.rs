//! The routes. Each handler authenticates (first, so nothing is parsed for
//! an unauthenticated caller), parses, calls the runtime and shapes the
//! answer with the runtime's views. Reads of the log (audit, history,
//! state, chain checks, exports) and sorts run on the blocking pool.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_core::{AuditFilter, EventType, KeyId, Principal, Scope, ScopeSet, TenantId, UserId};
use keyledger_runtime::views::{KeyView, SummaryView};
use keyledger_runtime::{
    AuditFilterError, AuditFilterText, Created, ListQuery, NewKey, PointInTime,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{
    AnyScope, AuditRead, Authed, KeysRead, KeysWrite, MaybeOperator, Operator, UsageRead,
    UsersRemove,
};
use crate::error::{
    ApiError, ApiJson, ApiPath, ApiQuery, JsonBytes, OptionalJson, parse_json, responses,
};
use crate::policy::NewPolicy;
use crate::position;
use crate::wire::*;

/// Every documented route.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(create_key, list_keys))
        .routes(routes!(get_key, update_key))
        .routes(routes!(revoke_key))
        .routes(routes!(rotate_key))
        .routes(routes!(key_history))
        .routes(routes!(remove_user))
        .routes(routes!(whoami))
        .routes(routes!(verify))
        .routes(routes!(audit))
        .routes(routes!(audit_export))
        .routes(routes!(audit_verify))
        .merge(crate::evidence::router())
        .merge(crate::leaks::router())
        .merge(crate::webhooks::router())
        .merge(crate::transparency::router())
        .merge(crate::witnessing::router())
        .routes(routes!(state_at))
        .routes(routes!(usage))
        .routes(routes!(usage_summary))
        .routes(routes!(usage_export))
        .routes(routes!(admin_create_key))
        .routes(routes!(admin_remove_user))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// Unknown routes: 404 in the error format.
pub(crate) async fn not_found() -> ApiError {
    ApiError::no_route()
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking work (log reads, sorts) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))?
}

fn key_id(text: &str) -> ApiResult<KeyId> {
    text.parse()
        .map_err(|e: keyledger_core::IdError| ApiError::path(e.to_string()))
}

fn query_key_id(text: Option<&str>) -> ApiResult<Option<KeyId>> {
    text.map(|t| {
        t.parse()
            .map_err(|e: keyledger_core::IdError| ApiError::query(format!("key_id: {e}")))
    })
    .transpose()
}

fn scopes(names: Option<Vec<ScopeName>>) -> Option<ScopeSet> {
    names.map(|n| n.into_iter().map(Scope::from).collect())
}

/// A created key's answer, with the tenant's position after the write.
fn created_response(state: &AppState, tenant: &TenantId, c: Created) -> Response {
    created_response_with(state, tenant, c, None)
}

/// [`created_response`], with `receipt` added to the body when given.
fn created_response_with(
    state: &AppState,
    tenant: &TenantId,
    c: Created,
    receipt: Option<serde_json::Value>,
) -> Response {
    let body = CreatedKey::new(&c, state.ledger().now());
    let location = format!("/v1/keys/{}", body.view.id);
    let location = [(header::LOCATION, location)];
    match receipt {
        None => position::answer(
            state.ledger(),
            tenant,
            (StatusCode::CREATED, location, Json(body)),
        ),
        Some(r) => {
            let mut v = serde_json::to_value(&body).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("receipt".into(), r);
            }
            position::answer(
                state.ledger(),
                tenant,
                (StatusCode::CREATED, location, Json(v)),
            )
        }
    }
}

fn key_view(state: &AppState, k: &keyledger_core::KeyRecord) -> KeyView {
    KeyView::new(k, k.status(state.ledger().now()))
}

/// Create a key, owned by the presented key's owner.
///
/// The secret is in this response and nowhere else, ever. The new key's
/// scopes default to every scope but `users:remove`, narrowed to the
/// presented key's; asking for a scope the presented key lacks is 403.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is the secret, shown once", body = CreatedKey,
            headers(("location" = String, description = "The key's URL"))),
        responses::KeyAuth, responses::Body, responses::Conflict, responses::Common,
    ),
    security(("bearer" = ["keys:write"]), ("api_key" = ["keys:write"])),
)]
async fn create_key(
    State(state): State<AppState>,
    auth: Authed<KeysWrite>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> ApiResult<Response> {
    let policy = NewPolicy::read(body.meta, body.credits, body.limits)?;
    let new = NewKey {
        owner: None,
        name: body.name,
        description: body.description,
        expires_at: body.expires_at.map(|t| t.0),
        scopes: scopes(body.scopes),
        meta: policy.meta,
        credits: policy.credits,
        limits: policy.limits,
    };
    let created = state.ledger().create_key(auth.principal(), new).await?;
    Ok(created_response(&state, auth.tenant(), created))
}

/// List the tenant's keys, masked, with the tenant's active count.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(ListKeysQuery),
    responses((status = 200, description = "A page of keys", body = KeyList), responses::KeyAuth, responses::Common),
    security(("bearer" = ["keys:read"]), ("api_key" = ["keys:read"])),
)]
async fn list_keys(
    State(state): State<AppState>,
    auth: Authed<KeysRead>,
    ApiQuery(q): ApiQuery<ListKeysQuery>,
) -> ApiResult<Json<KeyList>> {
    let tenant = auth.tenant().clone();
    let query = ListQuery {
        status: q.status.map(Into::into),
        created_by: q.created_by,
        q: q.q,
        sort: q.sort.map(Into::into).unwrap_or_default(),
        order: q.order.map(Into::into).unwrap_or_default(),
        cursor: q.cursor,
        limit: q.limit,
    };
    let list = blocking(move || {
        let page = state.ledger().list_keys(&tenant, &query)?;
        Ok(KeyList::from(&page))
    })
    .await?;
    Ok(Json(list))
}

/// One key: never its secret or the secret's hash.
#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "`key_<ulid>`", pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")),
    responses((status = 200, description = "The key", body = KeyView), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["keys:read"]), ("api_key" = ["keys:read"])),
)]
async fn get_key(
    State(state): State<AppState>,
    auth: Authed<KeysRead>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    let key = state.ledger().key(auth.tenant(), key_id(&id)?)?;
    Ok(Json(key_view(&state, &key)))
}

/// Change a key: any of its name, description, metadata, expiry, scopes,
/// credits and rate limits, as a JSON merge patch (a field left out is
/// unchanged, `null` clears it). Scopes only narrow and the expiry only
/// comes sooner unless the caller could grant the wider value (403). One
/// `KeyUpdated` in the trail, with each field before and after.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "`key_<ulid>`", pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")),
    request_body = crate::policy::UpdateKeyRequest,
    responses(
        (status = 200, description = "The key as changed, as `GET` shows it", body = KeyView),
        responses::KeyAuth, responses::NotFound, responses::Conflict, responses::Body, responses::Common,
    ),
    security(("bearer" = ["keys:write"]), ("api_key" = ["keys:write"])),
)]
async fn update_key(
    State(state): State<AppState>,
    auth: Authed<KeysWrite>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<crate::policy::UpdateKeyRequest>,
) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let update = body.read()?.into_update(auth.principal(), id);
    let key = state.ledger().update_key(update).await?;
    let view = Json(key_view(&state, &key));
    Ok(position::answer(state.ledger(), auth.tenant(), view))
}

/// Revoke a key, for good. It is refused from the moment this answers (on
/// every node sharing the log, with `wait=all-nodes`).
#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "`key_<ulid>`", pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), RevokeQuery),
    request_body(content = Option<RevokeRequest>, description = "Optional; the reason defaults to `manual`"),
    responses(
        (status = 200, description = "The key, revoked", body = KeyView),
        (status = 504, description = "With `wait=all-nodes`: revoked and refused by this node, but not every live node confirmed it within `wait_ms`", body = crate::error::ErrorBody),
        responses::KeyAuth, responses::NotFound, responses::Conflict, responses::Body, responses::Common,
    ),
    security(("bearer" = ["keys:write"]), ("api_key" = ["keys:write"])),
)]
async fn revoke_key(
    State(state): State<AppState>,
    auth: Authed<KeysWrite>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RevokeQuery>,
    OptionalJson(body): OptionalJson<RevokeRequest>,
) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let reason = body.reason.unwrap_or_default().into();
    if q.receipt == Some(true) {
        return crate::witnessing::revoke_with_receipt(&state, &auth, id, reason, &q).await;
    }
    let key = match q.wait.unwrap_or_default() {
        WaitFor::ThisNode if q.wait_ms.is_some() => {
            return Err(ApiError::query("wait_ms applies only with wait=all-nodes"));
        }
        WaitFor::ThisNode => {
            state
                .ledger()
                .revoke_key(auth.principal(), id, reason)
                .await?
        }
        WaitFor::AllNodes => {
            let wait_ms = q.wait_ms.unwrap_or(REVOKE_WAIT_MS_DEFAULT);
            if !(1..=REVOKE_WAIT_MS_MAX).contains(&wait_ms) {
                return Err(ApiError::query(format!(
                    "wait_ms must be 1 to {REVOKE_WAIT_MS_MAX}"
                )));
            }
            state
                .ledger()
                .revoke_key_everywhere(
                    auth.principal(),
                    id,
                    reason,
                    std::time::Duration::from_millis(wait_ms),
                )
                .await?
        }
    };
    let view = Json(key_view(&state, &key));
    Ok(position::answer(state.ledger(), auth.tenant(), view))
}

/// How long a revoke with `wait=all-nodes` waits for the other nodes by default.
pub(crate) const REVOKE_WAIT_MS_DEFAULT: u64 = 10_000;
/// The longest wait a revoke may ask for (under the request timeout).
pub(crate) const REVOKE_WAIT_MS_MAX: u64 = 20_000;
const _: () = assert!(REVOKE_WAIT_MS_MAX < crate::limits::REQUEST_TIMEOUT.as_millis() as u64);

/// Replace a key with a new one with the same owner, name, description and
/// scopes. The old key is revoked now (`grace_seconds` 0, the default) or
/// expires after the grace period.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "`key_<ulid>`", pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), crate::wire::RotateQuery),
    request_body(content = Option<RotateRequest>, description = "Optional; no grace by default"),
    responses(
        (status = 201, description = "The new key; `key` is its secret, shown once", body = CreatedKey,
            headers(("location" = String, description = "The new key's URL"))),
        responses::KeyAuth, responses::NotFound, responses::Conflict, responses::Body, responses::Common,
    ),
    security(("bearer" = ["keys:write"]), ("api_key" = ["keys:write"])),
)]
async fn rotate_key(
    State(state): State<AppState>,
    auth: Authed<KeysWrite>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<crate::wire::RotateQuery>,
    OptionalJson(body): OptionalJson<RotateRequest>,
) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let created = state
        .ledger()
        .rotate_key(
            auth.principal(),
            id,
            body.grace_seconds.unwrap_or(0),
            body.expires_at.map(|t| t.0),
        )
        .await?;
    if q.receipt == Some(true) {
        let receipt = crate::witnessing::receipt_object(&state, &auth, created.seq).await?;
        return Ok(created_response_with(
            &state,
            auth.tenant(),
            created,
            Some(receipt),
        ));
    }
    Ok(created_response(&state, auth.tenant(), created))
}

/// Every event of one key, usage included, in log order.
#[utoipa::path(
    get, path = "/v1/keys/{id}/history", tag = "audit",
    params(("id" = String, Path, description = "`key_<ulid>`", pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), PageQuery),
    responses((status = 200, description = "A page of the key's events", body = AuditPageBody), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn key_history(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<AuditPageBody>> {
    let id = key_id(&id)?;
    let tenant = auth.tenant().clone();
    let ledger = state.ledger().clone();
    let page =
        blocking(move || Ok(ledger.key_history(&tenant, id, q.cursor.as_deref(), q.limit)?))
            .await?;
    // Every read of the trail is itself recorded before it is handed out.
    state
        .ledger()
        .record_page_read(auth.principal(), &page, keyledger_core::AuditReadKind::List)
        .await?;
    Ok(Json(AuditPageBody::from(&page)))
}

fn remove(
    state: AppState,
    principal: Principal,
    user: &str,
) -> impl Future<Output = ApiResult<Response>> {
    let user: Result<UserId, _> = user.parse();
    async move {
        let user = user.map_err(|e: keyledger_core::IdError| ApiError::path(e.to_string()))?;
        let tenant = principal.tenant.clone();
        let revoked = state.ledger().remove_user(principal, user.clone()).await?;
        let body = Json(RemovedUser::new(&user, &revoked));
        Ok(position::answer(state.ledger(), &tenant, body))
    }
}

/// Remove a user from the tenant: every active key they own is revoked in
/// the same atomic append, and listed.
#[utoipa::path(
    delete, path = "/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The user, as the product's identity system names them", min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")),
    responses(
        (status = 200, description = "Removed; the keys revoked with them", body = RemovedUser),
        responses::KeyAuth, responses::Conflict, responses::Common,
    ),
    security(("bearer" = ["users:remove"]), ("api_key" = ["users:remove"])),
)]
async fn remove_user(
    State(state): State<AppState>,
    auth: Authed<UsersRemove>,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<Response> {
    remove(state, auth.principal(), &user).await
}

/// The presented key: its tenant, owner, id, name and scopes. For the
/// operator token (with `Keyledger-Tenant`): the tenant, the user it acts
/// as (`Keyledger-Act-As`), `operator: true` and every scope.
#[utoipa::path(
    get, path = "/v1/whoami", tag = "keys",
    responses((status = 200, description = "The presented key, or the operator", body = WhoAmI), responses::KeyAuth, responses::Common),
    security(("bearer" = []), ("api_key" = []), ("operator" = [])),
)]
async fn whoami(auth: Authed<AnyScope>) -> Json<WhoAmI> {
    let who = match auth.key() {
        Some(k) => WhoAmI {
            tenant_id: k.tenant.to_string(),
            owner: Some(k.owner.to_string()),
            key_id: Some(k.key_id.to_string()),
            name: Some(k.name.to_string()),
            operator: false,
            scopes: k.scopes.names(),
            expires_at: k.expires_at().map(|t| t.to_rfc3339()),
        },
        None => WhoAmI {
            tenant_id: auth.tenant().to_string(),
            owner: auth.act_as().map(ToString::to_string),
            key_id: None,
            name: None,
            operator: true,
            scopes: keyledger_core::ScopeSet::ALL.names(),
            expires_at: None,
        },
    };
    Json(who)
}

/// Verify a key, as the API layer does for every request it receives.
///
/// Always 200 for any key text: `valid: false` with the outcome for a bad
/// key. Counts one use of a known key (never waits for a disk write).
/// Needs no credential: the key in the body is the credential being
/// checked, as with token introspection; keep the service on a private
/// network (see docs/api.md).
#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequest,
    responses((status = 200, description = "The verdict", body = VerifyResponse), responses::Body, responses::Common),
)]
async fn verify(State(state): State<AppState>, JsonBytes(bytes): JsonBytes) -> ApiResult<Response> {
    let body: VerifyRequest<'_> = parse_json(&bytes)?;
    let cost = body.cost.unwrap_or(1);
    if cost > keyledger_core::policy::CREDITS_MAX {
        return Err(ApiError::field(
            "cost",
            format_args!("must be 0 to {}", keyledger_core::policy::CREDITS_MAX),
        ));
    }
    // The answer is written while the key is lent: no reference to it kept.
    // A key another node created a moment ago is found too (the miss path);
    // a key with credits may wait for a reservation (docs/policy.md).
    let answer = state
        .ledger()
        .verify_cost_with(
            &body.key,
            body.scope.map(Into::into),
            cost,
            |outcome, key, policy| VerifyResponse::with_policy(outcome, key, policy).to_json(),
        )
        .await;
    Ok((
        [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response())
}

/// The audit filter of a query, parsed by the runtime; its errors worded
/// as the API's.
fn audit_filter(text: AuditFilterText<'_>) -> ApiResult<AuditFilter> {
    text.parse().map_err(|e| match e {
        AuditFilterError::KeyId(e) => ApiError::query(format!("key_id: {e}")),
        AuditFilterError::UnknownType(t) => ApiError::query(format!(
            "type: unknown event type `{}`; types are {}",
            t.escape_debug(),
            EventType::ALL.map(EventType::as_str).join(", ")
        )),
    })
}

/// A page of the tenant's audit trail: management events with actor,
/// target, time, reason and position (the tenant's own sequence number);
/// `KeyUsed` on request.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "A page of the trail", body = AuditPageBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn audit(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPageBody>> {
    let filter = audit_filter(AuditFilterText {
        key_id: q.key_id.as_deref(),
        actor: q.actor,
        types: AuditFilterText::comma_list(q.types.as_deref().unwrap_or("")),
        from: q.from.map(|t| t.0),
        to: q.to.map(|t| t.0),
        include_usage: q.include_usage.unwrap_or(false),
    })?;
    let tenant = auth.tenant().clone();
    let ledger = state.ledger().clone();
    let page =
        blocking(move || Ok(ledger.audit(&tenant, &filter, q.cursor.as_deref(), q.limit)?)).await?;
    // Every read of the trail is itself recorded before it is handed out.
    state
        .ledger()
        .record_page_read(auth.principal(), &page, keyledger_core::AuditReadKind::List)
        .await?;
    Ok(Json(AuditPageBody::from(&page)))
}

/// The whole (filtered) trail, streamed as JSON Lines or CSV.
#[utoipa::path(
    get, path = "/v1/audit/export", tag = "audit",
    params(AuditExportQuery),
    responses(
        (status = 200, description = "The trail: one `AuditEntry` per line (jsonl), or CSV with a header row",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        responses::KeyAuth, responses::Common,
    ),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn audit_export(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<AuditExportQuery>,
) -> ApiResult<Response> {
    let filter = audit_filter(AuditFilterText {
        key_id: q.key_id.as_deref(),
        actor: q.actor,
        types: AuditFilterText::comma_list(q.types.as_deref().unwrap_or("")),
        from: q.from.map(|t| t.0),
        to: q.to.map(|t| t.0),
        include_usage: q.include_usage.unwrap_or(false),
    })?;
    let format = q.format.unwrap_or(ExportFormat::Jsonl);
    // Recorded before the first byte is sent.
    state.ledger().record_trail_export(auth.principal()).await?;
    Ok(crate::export::trail(
        state.ledger().clone(),
        auth.tenant().clone(),
        filter,
        format,
    ))
}

/// Recompute the tenant's hash chain from the stored bytes; name the first
/// event that does not match.
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "The chain check", body = ChainBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn audit_verify(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
) -> ApiResult<Json<ChainBody>> {
    let tenant = auth.tenant().clone();
    let body = blocking(move || {
        let r = state.ledger().verify_chain(&tenant, &mut |_| {})?;
        Ok(ChainBody::new(tenant.as_str(), &r))
    })
    .await?;
    Ok(Json(body))
}

/// The tenant's keys as of a past instant (or position in the tenant's
/// trail), in key-id order: every one, or with `limit` a page of them
/// (`next_cursor` continues). A page folds each key from its own events up
/// to that point, read through the per-key index; without `limit` the
/// tenant's trail is replayed up to it.
#[utoipa::path(
    get, path = "/v1/state", tag = "audit",
    params(StateQuery),
    responses((status = 200, description = "The keys as they were", body = StateBody), responses::KeyAuth, responses::Common),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"])),
)]
async fn state_at(
    State(state): State<AppState>,
    auth: Authed<AuditRead>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> ApiResult<Json<StateBody>> {
    let point = match q.at.trim().parse::<u64>() {
        Ok(seq) => PointInTime::Seq(seq),
        Err(_) => PointInTime::Instant(keyledger_core::Timestamp::parse_rfc3339(&q.at).map_err(
            |e| {
                ApiError::query(format!(
                    "at: {e}; give an RFC 3339 time or a position in the tenant's trail (a whole number)"
                ))
            },
        )?),
    };
    let tenant = auth.tenant().clone();
    let body = blocking(move || {
        let s = state
            .ledger()
            .state_at_page(&tenant, point, q.cursor.as_deref(), q.limit)?;
        Ok(StateBody::from(&s))
    })
    .await?;
    Ok(Json(body))
}

fn daily(
    state: &AppState,
    tenant: &TenantId,
    key: Option<KeyId>,
    from: keyledger_core::Day,
    to: keyledger_core::Day,
) -> ApiResult<UsageDays> {
    let rows = state.ledger().usage_daily(tenant, key, from, to)?;
    Ok(UsageDays::new(&rows, key))
}

/// Per-day (UTC) usage of the tenant, or of one of its keys.
#[utoipa::path(
    get, path = "/v1/usage", tag = "usage",
    params(UsageQuery),
    responses((status = 200, description = "Days with uses", body = UsageDays), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["usage:read"]), ("api_key" = ["usage:read"])),
)]
async fn usage(
    State(state): State<AppState>,
    auth: Authed<UsageRead>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<UsageDays>> {
    let today = state.ledger().now().day();
    let key = query_key_id(q.key_id.as_deref())?;
    let from = q.from.map_or(today.minus(29), |d| d.0);
    let to = q.to.map_or(today, |d| d.0);
    Ok(Json(daily(&state, auth.tenant(), key, from, to)?))
}

/// The tenant's last `days` days: totals, success rate and a per-day series.
#[utoipa::path(
    get, path = "/v1/usage/summary", tag = "usage",
    params(SummaryQuery),
    responses((status = 200, description = "The summary", body = SummaryView), responses::KeyAuth, responses::Common),
    security(("bearer" = ["usage:read"]), ("api_key" = ["usage:read"])),
)]
async fn usage_summary(
    State(state): State<AppState>,
    auth: Authed<UsageRead>,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<SummaryView>> {
    let s = state
        .ledger()
        .usage_summary(auth.tenant(), q.days.unwrap_or(30))?;
    Ok(Json(SummaryView::from(&s)))
}

/// Per-day usage rows as CSV or JSON Lines.
#[utoipa::path(
    get, path = "/v1/usage/export", tag = "usage",
    params(UsageExportQuery),
    responses(
        (status = 200, description = "Rows: CSV with a header row, or one `DailyView` per line (jsonl)",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        responses::KeyAuth, responses::NotFound, responses::Common,
    ),
    security(("bearer" = ["usage:read"]), ("api_key" = ["usage:read"])),
)]
async fn usage_export(
    State(state): State<AppState>,
    auth: Authed<UsageRead>,
    ApiQuery(q): ApiQuery<UsageExportQuery>,
) -> ApiResult<Response> {
    let today = state.ledger().now().day();
    let key = query_key_id(q.key_id.as_deref())?;
    let from = q.from.map_or(keyledger_core::Day::from_days(0), |d| d.0);
    let to = q.to.map_or(today, |d| d.0);
    let rows = daily(&state, auth.tenant(), key, from, to)?;
    crate::export::rows(
        &rows.days,
        key.is_some(),
        q.format.unwrap_or(ExportFormat::Csv),
    )
}

fn tenant(text: &str) -> ApiResult<TenantId> {
    text.parse()
        .map_err(|e: keyledger_core::IdError| ApiError::path(e.to_string()))
}

/// Operator: mint a key for a user of any tenant (bootstrap, like a CLI
/// login). Recorded with the operator as the actor and `user` as the owner.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin",
    params(("tenant" = String, Path, description = "1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = r"^[A-Za-z0-9._-]{1,64}$")),
    request_body = AdminCreateKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is the secret, shown once", body = CreatedKey,
            headers(("location" = String, description = "The key's URL"))),
        responses::OperatorAuth, responses::Body, responses::Conflict, responses::Common,
    ),
    security(("operator" = [])),
)]
async fn admin_create_key(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<AdminCreateKeyRequest>,
) -> ApiResult<Response> {
    let tenant = tenant(&t)?;
    let owner: UserId = body.user.parse().map_err(|e| ApiError::field("user", e))?;
    let policy = NewPolicy::read(body.meta, body.credits, body.limits)?;
    let new = NewKey {
        owner: Some(owner),
        name: body.name,
        description: body.description,
        expires_at: body.expires_at.map(|t| t.0),
        scopes: scopes(body.scopes),
        meta: policy.meta,
        credits: policy.credits,
        limits: policy.limits,
    };
    let created = state
        .ledger()
        .create_key(Principal::operator(tenant.clone()), new)
        .await?;
    Ok(created_response(&state, &tenant, created))
}

/// Operator: remove a user of any tenant, revoking every active key they own.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant}/users/{user}", tag = "admin",
    params(
        ("tenant" = String, Path, description = "1 to 64 of `A-Z a-z 0-9 . _ -`", pattern = r"^[A-Za-z0-9._-]{1,64}$"),
        ("user" = String, Path, description = "The user to remove", min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"),
    ),
    responses(
        (status = 200, description = "Removed; the keys revoked with them", body = RemovedUser),
        responses::OperatorAuth, responses::Conflict, responses::Common,
    ),
    security(("operator" = [])),
)]
async fn admin_remove_user(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath((t, user)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let tenant = tenant(&t)?;
    remove(state, Principal::operator(tenant), &user).await
}

/// Liveness: answers while the server runs. The last applied log position
/// (`head`) is shown only to the operator token: it counts every tenant's
/// events, so it would tell one tenant how busy the others are.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Alive; `head` only with the operator token", body = Health)),
    security((), ("operator" = [])),
)]
async fn healthz(
    State(state): State<AppState>,
    MaybeOperator(operator): MaybeOperator,
) -> Json<Health> {
    Json(Health {
        status: "ok",
        head: operator.then(|| state.ledger().head()),
    })
}

/// Prometheus text: requests by route and status with latency histograms,
/// verifications by outcome, the writer's queue, appends and commits. The
/// operator token only: every series counts all tenants together.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
        responses::OperatorAuth,
    ),
    security(("operator" = [])),
)]
async fn metrics(State(state): State<AppState>, _operator: Operator) -> Response {
    let text = crate::metrics::render(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document: OpenAPI 3.1, generated from the handlers and types.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json")),
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json(),
    )
        .into_response()
}
