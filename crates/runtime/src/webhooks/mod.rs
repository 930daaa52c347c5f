//! Webhooks: subscriptions (events in the log) and their delivery, which
//! follows the log on threads of its own.
//!
//! * A subscription is decided like any command (`WebhookSubscribed`,
//!   `WebhookDeleted`); where its URL may point is judged here first
//!   (`target.rs`), as it needs name resolution.
//! * Its signing secret is derived from a root key in the data directory
//!   and the subscription's id (`secret.rs`, docs/adr/0007-webhook-secrets.md),
//!   shown once when it is made, and never stored or logged.
//! * The dispatcher thread reads the log after its cursor (only what the
//!   read model has applied, so it sees every subscription in force at
//!   each event), makes one delivery per matching subscription in the same
//!   durable transaction that moves its cursor (`store.rs`), and wakes a
//!   worker thread per subscription with deliveries to send (`deliver.rs`).
//!   Nothing here runs on the writer or on a request: a slow or dead
//!   receiver holds only its own worker.

mod deliver;
pub use deliver::OUTCOMES;
mod payload;
mod secret;
mod store;
mod target;
pub mod views;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keyledger_core::{
    Command, DeleteWebhook, Principal, SubscribeWebhook, TenantId, Webhook, WebhookId,
};
use ulid::Ulid;

pub use secret::ROOT_KEY_FILE;
pub use store::{DeliveryStatus, STORE_FILE};
pub use views::{
    AttemptView, CreatedWebhook, DeliveryList, DeliveryView, WebhookList, WebhookView,
};

use crate::{Error, Keyledger, Missing, Shared};

/// The default time before a key's expiry at which `key.expiring` is sent.
pub const EXPIRING_BEFORE_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default time a delivery is retried before it is marked failed.
pub const RETRY_FOR_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Webhook settings ([`crate::Config::webhooks`]).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The data directory: the root key and the delivery store live here.
    pub dir: PathBuf,
    /// Send deliveries from this process (`serve`); `false` for the
    /// offline CLI, which only manages subscriptions.
    pub deliver: bool,
    /// Allow targets at private, loopback (over HTTPS), link-local and
    /// other special addresses (`--webhook-allow-private`).
    pub allow_private: bool,
    /// How long a delivery is retried, from its first attempt, before it is
    /// marked failed.
    pub retry_for: Duration,
    /// The wait after the first failed attempt; each further one doubles it
    /// (up to [`WebhookConfig::backoff_max`]), less a random jitter of up
    /// to half.
    pub backoff_first: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How long one attempt may take (connect, send, answer).
    pub attempt_timeout: Duration,
    /// `key.expiring` is sent this long before a key expires.
    pub expiring_before: Duration,
    /// How often keys are scanned for `key.expiring` (only in tenants with
    /// a subscription to it).
    pub expiring_scan: Duration,
}

impl WebhookConfig {
    /// The defaults, with the root key and store in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        WebhookConfig {
            dir: dir.into(),
            deliver: true,
            allow_private: false,
            retry_for: RETRY_FOR_DEFAULT,
            backoff_first: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            attempt_timeout: Duration::from_secs(10),
            expiring_before: EXPIRING_BEFORE_DEFAULT,
            expiring_scan: Duration::from_secs(30),
        }
    }
}

/// What to subscribe.
#[derive(Clone, Debug, Default)]
pub struct NewWebhook {
    /// The URL (`https://…`, or `http://` to loopback).
    pub url: String,
    /// The notice types ([`keyledger_core::WEBHOOK_EVENT_TYPES`]).
    pub event_types: Vec<String>,
    /// An optional description.
    pub description: Option<String>,
}

/// A subscription was made: its secret, shown once, and the subscription.
pub struct Subscribed {
    /// `whsec_…`: hand it to the receiver once; it is stored nowhere.
    pub secret: String,
    /// The subscription.
    pub webhook: Webhook,
    /// The `WebhookSubscribed` event's log position.
    pub position: u64,
}

impl std::fmt::Debug for Subscribed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscribed")
            .field("webhook", &self.webhook)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// The webhook machinery of one open ledger.
pub(crate) struct Service {
    pub(crate) config: WebhookConfig,
    root: secret::RootKey,
    store: store::Store,
    /// Subscriptions whose worker thread is running.
    active: Mutex<HashSet<WebhookId>>,
    stop: AtomicBool,
    /// Wakes sleeping threads at shutdown.
    bell: (Mutex<()>, Condvar),
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Service {
    /// Opens the root key and the delivery store in `config.dir` (checked
    /// by [`crate::datadir::prepare`] first).
    pub(crate) fn open(
        mut config: WebhookConfig,
        entropy: &dyn crate::Entropy,
    ) -> Result<Self, Error> {
        config.dir = crate::datadir::prepare(&config.dir)?;
        let root = secret::RootKey::load_or_create(&config.dir, entropy)?;
        let store = store::Store::open(&config.dir)?;
        Ok(Service {
            config,
            root,
            store,
            active: Mutex::new(HashSet::new()),
            stop: AtomicBool::new(false),
            bell: (Mutex::new(()), Condvar::new()),
            threads: Mutex::new(Vec::new()),
        })
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`, or until shutdown.
    fn nap(&self, d: Duration) {
        let guard = self.bell.0.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopping() {
            return;
        }
        let _ = self.bell.1.wait_timeout(guard, d);
    }

    /// Stops every thread and waits for them (an attempt in flight ends
    /// within [`WebhookConfig::attempt_timeout`]).
    pub(crate) fn shutdown(&self) {
        {
            let _g = self.bell.0.lock().unwrap_or_else(|e| e.into_inner());
            self.stop.store(true, Ordering::Release);
            self.bell.1.notify_all();
        }
        loop {
            let handles: Vec<_> =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

/// Starts the dispatcher (and the workers of deliveries left pending by
/// the last run).
pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    let Some(service) = shared.webhooks.as_ref() else {
        return Ok(());
    };
    if !service.config.deliver {
        return Ok(());
    }
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name("keyledger-webhooks".into())
        .spawn(move || deliver::dispatch(&s))
        .map_err(|e| Error::io("cannot start the webhook dispatcher", e))?;
    service
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(handle);
    Ok(())
}

fn not_found(id: WebhookId) -> Error {
    Error::NotFound(Missing::Webhook(id))
}

impl Keyledger {
    fn webhook_service(&self) -> Result<&Service, Error> {
        self.shared.webhooks.as_deref().ok_or_else(|| {
            Error::unavailable("webhooks are not configured on this ledger (no data directory)")
        })
    }

    /// Subscribes an endpoint: the URL is judged (scheme, and every address
    /// its host resolves to), then the subscription is decided and
    /// appended. The secret is in the result, once.
    pub async fn subscribe_webhook(
        &self,
        principal: Principal,
        new: NewWebhook,
    ) -> Result<Subscribed, Error> {
        let service = self.webhook_service()?;
        let allow_private = service.config.allow_private;
        let url = new.url.trim().to_owned();
        let checked = url.clone();
        tokio::task::spawn_blocking(move || {
            target::parse(&checked).and_then(|t| target::resolve(&t, allow_private))
        })
        .await
        .map_err(|e| Error::unavailable(format!("the URL check failed: {e}")))?
        .map_err(Error::WebhookTarget)?;
        let webhook_id = self.shared.mint_webhook_id()?;
        let tenant = principal.tenant.clone();
        let records = self
            .execute(Command::SubscribeWebhook(SubscribeWebhook {
                principal,
                webhook_id,
                url,
                event_types: new.event_types,
                description: new.description,
            }))
            .await?;
        let position = records.first().map_or(0, |r| r.position);
        Ok(Subscribed {
            secret: service.root.secret_text(webhook_id),
            webhook: self.webhook(&tenant, webhook_id)?,
            position,
        })
    }

    /// The tenant's live subscriptions, oldest first.
    pub fn webhooks(&self, tenant: &TenantId) -> Vec<Webhook> {
        let read = self.shared.read_model();
        read.ledger
            .tenant(tenant)
            .map(|t| {
                t.webhooks
                    .values()
                    .filter(|w| w.deleted_at.is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One live subscription of the tenant.
    pub fn webhook(&self, tenant: &TenantId, id: WebhookId) -> Result<Webhook, Error> {
        let read = self.shared.read_model();
        read.ledger
            .tenant(tenant)
            .and_then(|t| t.webhooks.get(&id))
            .filter(|w| w.deleted_at.is_none())
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Deletes a subscription: nothing after it is delivered to it, and its
    /// deliveries still pending are cancelled.
    pub async fn delete_webhook(
        &self,
        principal: Principal,
        webhook_id: WebhookId,
    ) -> Result<Webhook, Error> {
        let tenant = principal.tenant.clone();
        let before = self.webhook(&tenant, webhook_id)?;
        self.execute(Command::DeleteWebhook(DeleteWebhook {
            principal,
            webhook_id,
        }))
        .await?;
        if let Some(s) = self.shared.webhooks.as_ref() {
            // Its worker sees the deletion and cancels what is pending.
            deliver::kick(&self.shared, s, &tenant, webhook_id);
        }
        let read = self.shared.read_model();
        Ok(read
            .ledger
            .tenant(&tenant)
            .and_then(|t| t.webhooks.get(&webhook_id))
            .cloned()
            .unwrap_or(before))
    }

    /// A subscription's deliveries, newest first (at most `limit`), with
    /// every attempt.
    pub fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        id: WebhookId,
        limit: usize,
    ) -> Result<DeliveryList, Error> {
        let service = self.webhook_service()?;
        self.webhook(tenant, id)?;
        let rows = service.store.list(id, None, limit)?;
        Ok(DeliveryList {
            webhook_id: id.to_string(),
            deliveries: rows
                .into_iter()
                .map(|(_, d, tries)| DeliveryView::new(&d, &tries))
                .collect(),
        })
    }

    /// Sends a delivery again, by hand: it is pending again, with a new
    /// round of attempts starting now. A delivery still pending is tried
    /// at once.
    pub fn retry_delivery(
        &self,
        tenant: &TenantId,
        id: WebhookId,
        msg_id: &str,
    ) -> Result<DeliveryView, Error> {
        let service = self.webhook_service()?;
        self.webhook(tenant, id)?;
        let missing = || Error::NotFound(Missing::Delivery(msg_id.to_owned()));
        // Deliveries are found by their message id, which holds the
        // subscription's id: a foreign one is not found.
        let n = deliver::find(service, id, msg_id)?.ok_or_else(missing)?;
        let mut d = service.store.get(id, n)?.ok_or_else(missing)?;
        d.status = DeliveryStatus::Pending;
        d.first_attempt_at = None;
        d.next_attempt_at = self.now().as_micros();
        service.store.record(id, n, &d, None)?;
        deliver::kick(&self.shared, service, tenant, id);
        let tries = service
            .store
            .list(id, Some(n + 1), 1)?
            .into_iter()
            .next()
            .map(|(_, _, t)| t)
            .unwrap_or_default();
        Ok(DeliveryView::new(&d, &tries))
    }
}

impl Shared {
    fn mint_webhook_id(&self) -> Result<WebhookId, Error> {
        let mut random = [0u8; 16];
        self.entropy.fill(&mut random).map_err(Error::unavailable)?;
        let ms = (self.clock.now().as_micros() / 1000).max(0) as u64;
        Ok(WebhookId::from_ulid(Ulid::from_parts(
            ms,
            u128::from_be_bytes(random),
        )))
    }
}
