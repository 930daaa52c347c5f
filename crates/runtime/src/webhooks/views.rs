//! Webhook subscriptions and deliveries as the API and the CLI show them.

use keyledger_core::{Timestamp, Webhook};
use serde::{Deserialize, Serialize};

use super::store::{Attempt, Delivery, DeliveryStatus};

fn time_of(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

/// A subscription (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookView {
    /// `wh_<ulid>`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The notice types it asked for.
    pub event_types: Vec<String>,
    /// An optional description.
    pub description: Option<String>,
    /// When it was made.
    pub created_at: String,
    /// `active`, or `deleted`.
    pub status: String,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        WebhookView {
            id: w.id.to_string(),
            url: w.url.clone(),
            event_types: w.event_types.clone(),
            description: w.description.clone(),
            created_at: w.created_at.to_rfc3339(),
            status: if w.deleted_at.is_some() {
                "deleted"
            } else {
                "active"
            }
            .into(),
        }
    }
}

/// A new subscription: its signing secret, shown this once, and the subscription.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    /// `whsec_<base64>`: the Standard Webhooks signing secret. Shown only here.
    pub secret: String,
    /// The subscription.
    #[serde(flatten)]
    pub webhook: WebhookView,
}

/// The tenant's live subscriptions.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookList {
    /// Oldest first.
    pub data: Vec<WebhookView>,
}

/// One attempt to deliver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// When it started.
    pub at: String,
    /// `delivered`, `http_error`, `network_error` or `refused` (the target
    /// resolved to an address it may not go to).
    pub outcome: String,
    /// The receiver's status code, if it answered.
    pub status_code: Option<u16>,
    /// How long it took, in milliseconds.
    pub latency_ms: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One message to a subscription, and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    /// The message id (the `webhook-id` header), which also names the
    /// delivery in `POST /v1/webhooks/{id}/deliveries/{msg_id}/retry`.
    pub id: String,
    /// The notice type.
    pub r#type: String,
    /// `pending`, `delivered`, `failed` (retried for the configured time,
    /// then given up) or `cancelled` (the subscription was deleted).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: DeliveryStatus,
    /// The tenant sequence number of the event announced (none for a
    /// derived notice such as `key.expiring`).
    pub position: Option<u64>,
    /// When it was made.
    pub created_at: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    /// Attempts so far.
    pub attempt_count: u32,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    pub(crate) fn new(d: &Delivery, tries: &[Attempt]) -> Self {
        DeliveryView {
            id: d.msg_id.clone(),
            r#type: d.ty.clone(),
            status: d.status,
            position: d.seq,
            created_at: time_of(d.created_at),
            next_attempt_at: (d.status == DeliveryStatus::Pending)
                .then(|| time_of(d.next_attempt_at.max(d.created_at))),
            attempt_count: d.attempts,
            attempts: tries
                .iter()
                .map(|a| AttemptView {
                    at: time_of(a.at),
                    outcome: a.outcome.clone(),
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error.clone(),
                })
                .collect(),
        }
    }
}

/// A subscription's deliveries, newest first.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryList {
    /// The subscription.
    pub webhook_id: String,
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}
