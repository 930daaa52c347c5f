//! `/v1/webhooks`: a tenant's webhook subscriptions and their deliveries
//! (scope `webhooks:manage`, never granted by default).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use keyledger_core::WebhookId;
use keyledger_runtime::webhooks::{
    CreatedWebhook, DeliveryList, DeliveryView, NewWebhook, WebhookList, WebhookView,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{Authed, WebhooksManage};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, responses};
use crate::handlers::blocking;
use crate::position;

/// The webhook routes.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries go: `https://…` to a public address, or `http://`
    /// to a loopback address. At most 2048 bytes.
    #[schema(
        example = "https://hooks.example.com/keyledger",
        min_length = 1,
        max_length = 2048
    )]
    pub url: String,
    /// The notices to send: `key.created`, `key.revoked`, `key.rotated`,
    /// `key.expiring`, `key.leaked`, `user.removed`.
    #[schema(min_items = 1, max_items = 16, example = json!(["key.revoked", "user.removed"]))]
    pub event_types: Vec<String>,
    /// What it is for: at most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// How many, newest first: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

fn webhook_id(text: &str) -> Result<WebhookId, ApiError> {
    text.parse()
        .map_err(|e: keyledger_core::IdError| ApiError::path(e.to_string()))
}

/// Subscribe an endpoint to notices. The signing secret (`whsec_…`, per
/// the Standard Webhooks specification) is in this response and nowhere
/// else, ever.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Subscribed; `secret` is shown once", body = CreatedWebhook,
            headers(("location" = String, description = "The subscription's URL"))),
        responses::KeyAuth, responses::Body, responses::Conflict, responses::Common,
    ),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn create_webhook(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    let new = NewWebhook {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
    };
    let made = state
        .ledger()
        .subscribe_webhook(auth.principal(), new)
        .await?;
    let view = WebhookView::from(&made.webhook);
    let location = format!("/v1/webhooks/{}", view.id);
    let body = CreatedWebhook {
        secret: made.secret,
        webhook: view,
    };
    Ok(position::answer(
        state.ledger(),
        auth.tenant(),
        (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(body),
        ),
    ))
}

/// The tenant's live subscriptions, oldest first (never their secrets).
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The subscriptions", body = WebhookList), responses::KeyAuth, responses::Common),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn list_webhooks(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
) -> Json<WebhookList> {
    let data = state
        .ledger()
        .webhooks(auth.tenant())
        .iter()
        .map(WebhookView::from)
        .collect();
    Json(WebhookList { data })
}

/// One subscription.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_<ulid>`", pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")),
    responses((status = 200, description = "The subscription", body = WebhookView), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn get_webhook(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state.ledger().webhook(auth.tenant(), webhook_id(&id)?)?;
    Ok(Json(WebhookView::from(&w)))
}

/// Delete a subscription: nothing after it is delivered to it, and its
/// deliveries still pending are cancelled.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_<ulid>`", pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")),
    responses((status = 200, description = "The subscription, deleted", body = WebhookView), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn delete_webhook(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = webhook_id(&id)?;
    let w = state.ledger().delete_webhook(auth.principal(), id).await?;
    Ok(position::answer(
        state.ledger(),
        auth.tenant(),
        Json(WebhookView::from(&w)),
    ))
}

/// A subscription's deliveries, newest first, each with every attempt
/// (time, outcome, status code, latency, error).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_<ulid>`", pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), DeliveriesQuery),
    responses((status = 200, description = "The deliveries", body = DeliveryList), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn list_deliveries(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let id = webhook_id(&id)?;
    let limit = q.limit.unwrap_or(keyledger_runtime::PAGE_LIMIT_DEFAULT);
    if !(1..=keyledger_runtime::PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::query(format!(
            "limit must be 1 to {}",
            keyledger_runtime::PAGE_LIMIT_MAX
        )));
    }
    let tenant = auth.tenant().clone();
    let ledger = state.ledger().clone();
    let list = blocking(move || Ok(ledger.webhook_deliveries(&tenant, id, limit)?)).await?;
    Ok(Json(list))
}

/// Send a delivery again, by hand: it is pending again and is tried at
/// once, with a new round of retries.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery}/retry", tag = "webhooks",
    params(
        ("id" = String, Path, description = "`wh_<ulid>`", pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"),
        ("delivery" = String, Path, description = "The delivery's id (its `webhook-id` header)", max_length = 128),
    ),
    responses((status = 200, description = "The delivery, pending again", body = DeliveryView), responses::KeyAuth, responses::NotFound, responses::Common),
    security(("bearer" = ["webhooks:manage"]), ("api_key" = ["webhooks:manage"])),
)]
async fn retry_delivery(
    State(state): State<AppState>,
    auth: Authed<WebhooksManage>,
    ApiPath((id, delivery)): ApiPath<(String, String)>,
) -> Result<Json<DeliveryView>, ApiError> {
    let id = webhook_id(&id)?;
    let tenant = auth.tenant().clone();
    let ledger = state.ledger().clone();
    let view = blocking(move || Ok(ledger.retry_delivery(&tenant, id, &delivery)?)).await?;
    Ok(Json(view))
}
