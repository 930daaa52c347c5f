//! `keyledger webhooks create|list|delete|deliveries`: on a data directory
//! (the subscriptions only; `serve` delivers) or, with `--url`, against a
//! server (`remote.rs` sends the same requests the API documents).

use clap::Subcommand;
use keyledger_core::WebhookId;
use keyledger_runtime::Keyledger;
use keyledger_runtime::webhooks::{
    CreatedWebhook, DeliveryList, NewWebhook, WebhookList, WebhookView,
};

use crate::cli::{ActingArg, Result, TenantArg, principal, tenant};
use crate::output::Out;

#[derive(Subcommand, Debug)]
pub enum WebhooksCmd {
    /// Subscribe an endpoint to notices; the signing secret is printed once.
    Create {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// Where deliveries go: `https://…` (or `http://` to loopback).
        /// (An argument, not an option: `--url` names the server.)
        #[arg(value_name = "URL")]
        endpoint: String,
        /// A notice type (repeat for several): key.created, key.revoked,
        /// key.rotated, key.expiring, key.leaked, user.removed.
        #[arg(long = "event", required = true)]
        events: Vec<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List a tenant's subscriptions (never their secrets).
    List {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Delete a subscription: nothing after it is delivered to it.
    Delete {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// `wh_<ulid>`.
        id: String,
    },
    /// A subscription's deliveries, newest first, with their attempts.
    Deliveries {
        #[command(flatten)]
        tenant: TenantArg,
        /// `wh_<ulid>`.
        id: String,
        /// How many (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Runs `cmd` on an open data directory.
pub async fn offline(ledger: &Keyledger, out: &Out, cmd: WebhooksCmd) -> Result<()> {
    match cmd {
        WebhooksCmd::Create {
            tenant: t,
            acting,
            endpoint,
            events,
            description,
        } => {
            let t = tenant(&t)?;
            let made = ledger
                .subscribe_webhook(
                    principal(&t, &acting)?,
                    NewWebhook {
                        url: endpoint,
                        event_types: crate::cli::split_list(&events),
                        description,
                    },
                )
                .await?;
            created(
                out,
                &CreatedWebhook {
                    secret: made.secret,
                    webhook: WebhookView::from(&made.webhook),
                },
            )
        }
        WebhooksCmd::List { tenant: t } => {
            let t = tenant(&t)?;
            let data = ledger.webhooks(&t).iter().map(WebhookView::from).collect();
            list(out, &WebhookList { data })
        }
        WebhooksCmd::Delete {
            tenant: t,
            acting,
            id,
        } => {
            let t = tenant(&t)?;
            let id: WebhookId = id.parse()?;
            let w = ledger.delete_webhook(principal(&t, &acting)?, id).await?;
            deleted(out, &WebhookView::from(&w))
        }
        WebhooksCmd::Deliveries {
            tenant: t,
            id,
            limit,
        } => {
            let t = tenant(&t)?;
            let id: WebhookId = id.parse()?;
            let limit = limit.clamp(1, keyledger_runtime::PAGE_LIMIT_MAX);
            deliveries(out, &ledger.webhook_deliveries(&t, id, limit)?)
        }
    }
}

/// Prints a new subscription and its secret.
pub fn created(out: &Out, c: &CreatedWebhook) -> Result<()> {
    out.value(c, || {
        format!(
            "{}\n  url:    {}\n  events: {}\n  secret: {}\n(the secret is shown this once: give it to the receiver now)",
            c.webhook.id,
            c.webhook.url,
            c.webhook.event_types.join(", "),
            c.secret
        )
    })
}

/// Prints the subscriptions.
pub fn list(out: &Out, l: &WebhookList) -> Result<()> {
    out.value(l, || {
        if l.data.is_empty() {
            return "no webhook subscriptions".into();
        }
        l.data
            .iter()
            .map(|w| format!("{}  {}  {}", w.id, w.url, w.event_types.join(",")))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Prints a deleted subscription.
pub fn deleted(out: &Out, w: &WebhookView) -> Result<()> {
    out.value(w, || format!("deleted {} ({})", w.id, w.url))
}

/// Prints deliveries.
pub fn deliveries(out: &Out, d: &DeliveryList) -> Result<()> {
    out.value(d, || {
        if d.deliveries.is_empty() {
            return "no deliveries".into();
        }
        d.deliveries
            .iter()
            .map(|x| {
                let last = x.attempts.last().map_or(String::new(), |a| {
                    format!(
                        "  last: {} {} {} ms{}",
                        a.outcome,
                        a.status_code.map_or("-".into(), |c| c.to_string()),
                        a.latency_ms,
                        a.error
                            .as_deref()
                            .map_or(String::new(), |e| format!(" ({e})"))
                    )
                });
                format!(
                    "{}  {}  {:?}  {} attempt(s){last}",
                    x.id, x.r#type, x.status, x.attempt_count
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
