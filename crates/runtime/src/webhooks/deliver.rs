//! The dispatcher (log → deliveries) and the workers (deliveries → HTTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keyledger_core::{KeyId, KeyStatus, TenantId, Timestamp, WebhookId};
use keyledger_store::Record;

use super::store::{Attempt, Delivery, DeliveryStatus};
use super::{Service, payload, secret, target};
use crate::{Error, Shared};

/// Log records read per round.
const PAGE: usize = 256;
/// How often the dispatcher looks for new records when idle.
const POLL: Duration = Duration::from_millis(50);
/// The longest a worker sleeps before it looks at its queue again.
const WORKER_NAP_MAX: Duration = Duration::from_millis(200);

/// The outcomes an attempt can have, as counted in the metrics.
pub const OUTCOMES: [&str; 4] = ["delivered", "http_error", "network_error", "refused"];

fn service(shared: &Shared) -> &Service {
    shared
        .webhooks
        .as_deref()
        .unwrap_or_else(|| unreachable!("the dispatcher runs only with webhooks configured"))
}

/// The dispatcher thread: follows the log, makes deliveries, wakes workers.
pub(super) fn dispatch(shared: &Arc<Shared>) {
    let s = service(shared);
    // Deliveries left pending by the last run.
    match s.store.pending_webhooks() {
        Ok(ids) => {
            for id in ids {
                if let Some(tenant) = tenant_of(shared, id) {
                    kick(shared, s, &tenant, id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the pending webhook deliveries"),
    }
    let mut cursor = match s.store.cursor() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery stopped: cannot read its cursor");
            return;
        }
    };
    let mut last_scan: Option<Instant> = None;
    while !s.stopping() {
        match round(shared, s, cursor) {
            Ok(Some(next)) => {
                cursor = next;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "webhook delivery cannot follow the log; retrying");
                s.nap(Duration::from_secs(1));
                continue;
            }
        }
        if last_scan.is_none_or(|t| t.elapsed() >= s.config.expiring_scan) {
            if let Err(e) = scan_expiring(shared, s) {
                tracing::warn!(error = %e, "cannot make key.expiring notices");
            }
            last_scan = Some(Instant::now());
        }
        s.nap(POLL);
    }
}

/// Reads the records after `cursor` that the read model has applied and
/// makes their deliveries; the new cursor, or `None` if there was nothing.
fn round(shared: &Arc<Shared>, s: &Service, cursor: u64) -> Result<Option<u64>, Error> {
    let head = shared.read_model().head;
    if head <= cursor {
        return Ok(None);
    }
    let records = shared
        .log
        .read_after(cursor, PAGE)
        .map_err(|e| Error::unavailable(format!("cannot read the log: {e}")))?;
    let records: Vec<&Record> = records.iter().filter(|r| r.position <= head).collect();
    let Some(last) = records.last().map(|r| r.position) else {
        return Ok(None);
    };
    let mut made: Vec<(WebhookId, Delivery)> = Vec::new();
    let mut woken: Vec<(TenantId, WebhookId)> = Vec::new();
    {
        let read = shared.read_model();
        for r in &records {
            let Some((ty, data)) = payload::notice(&r.event) else {
                continue;
            };
            let Some(tenant) = read.ledger.tenant(&r.event.tenant) else {
                continue;
            };
            for w in tenant.webhooks.values() {
                // In force at this event: subscribed before it, not deleted
                // before it, and asking for its type.
                let in_force = w.created_seq < r.seq && w.deleted_seq.is_none_or(|d| r.seq < d);
                if !in_force || !w.event_types.iter().any(|t| t == ty) {
                    continue;
                }
                let body = payload::body(ty, r.event.at, data.clone());
                made.push((
                    w.id,
                    Delivery {
                        msg_id: format!("msg_{}_{}", ulid_of(w.id), r.seq),
                        ty: ty.to_owned(),
                        position: Some(r.position),
                        seq: Some(r.seq),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        status: DeliveryStatus::Pending,
                        attempts: 0,
                        created_at: shared.clock.now().as_micros(),
                        first_attempt_at: None,
                        next_attempt_at: 0,
                    },
                ));
                woken.push((r.event.tenant.clone(), w.id));
            }
        }
    }
    s.store.enqueue(&made, &[], Some(last))?;
    woken.dedup();
    for (tenant, id) in woken {
        kick(shared, s, &tenant, id);
    }
    Ok(Some(last))
}

/// Makes the `key.expiring` notices due: for every active key that expires
/// within [`super::WebhookConfig::expiring_before`], once per key, to the
/// subscriptions of its tenant that ask for it.
fn scan_expiring(shared: &Arc<Shared>, s: &Service) -> Result<(), Error> {
    let now = shared.clock.now();
    let horizon = now.plus_seconds(s.config.expiring_before.as_secs());
    let mut due: Vec<(
        TenantId,
        Vec<WebhookId>,
        KeyId,
        Timestamp,
        serde_json::Value,
    )> = Vec::new();
    {
        let read = shared.read_model();
        for (tenant_id, tenant) in read.ledger.tenants() {
            let subs: Vec<WebhookId> = tenant
                .webhooks
                .values()
                .filter(|w| w.wants("key.expiring"))
                .map(|w| w.id)
                .collect();
            if subs.is_empty() {
                continue;
            }
            for k in tenant.keys.values() {
                let Some(exp) = k.expires_at else { continue };
                if exp > horizon || k.status(now) != KeyStatus::Active {
                    continue;
                }
                let data = payload::expiring(tenant_id.as_str(), k, exp);
                due.push((tenant_id.clone(), subs.clone(), k.id, exp, data));
            }
        }
    }
    for (tenant, subs, key, exp, data) in due {
        if s.store.expiring_announced(key)? {
            continue;
        }
        let body = payload::body("key.expiring", now, data);
        let made: Vec<(WebhookId, Delivery)> = subs
            .iter()
            .map(|&w| {
                (
                    w,
                    Delivery {
                        msg_id: format!("msg_{}_expiring_{}", ulid_of(w), ulid_of_key(key)),
                        ty: "key.expiring".into(),
                        position: None,
                        seq: None,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        status: DeliveryStatus::Pending,
                        attempts: 0,
                        created_at: now.as_micros(),
                        first_attempt_at: None,
                        next_attempt_at: 0,
                    },
                )
            })
            .collect();
        s.store.enqueue(&made, &[(key, exp.as_micros())], None)?;
        for w in subs {
            kick(shared, s, &tenant, w);
        }
    }
    Ok(())
}

fn ulid_of(w: WebhookId) -> String {
    w.to_string()
        .trim_start_matches(WebhookId::PREFIX)
        .to_owned()
}

fn ulid_of_key(k: KeyId) -> String {
    k.to_string().trim_start_matches(KeyId::PREFIX).to_owned()
}

/// The tenant that holds subscription `id`.
fn tenant_of(shared: &Shared, id: WebhookId) -> Option<TenantId> {
    let read = shared.read_model();
    read.ledger
        .tenants()
        .find(|(_, t)| t.webhooks.contains_key(&id))
        .map(|(t, _)| t.clone())
}

/// The delivery number of message `msg_id` of subscription `id`.
pub(super) fn find(s: &Service, id: WebhookId, msg_id: &str) -> Result<Option<u64>, Error> {
    if !msg_id.starts_with(&format!("msg_{}_", ulid_of(id))) {
        return Ok(None);
    }
    Ok(s.store
        .list(id, None, usize::MAX)?
        .into_iter()
        .find(|(_, d, _)| d.msg_id == msg_id)
        .map(|(n, _, _)| n))
}

/// Starts subscription `id`'s worker unless it is running.
pub(super) fn kick(shared: &Arc<Shared>, s: &Service, tenant: &TenantId, id: WebhookId) {
    if !s.config.deliver || s.stopping() {
        return;
    }
    let mut active = s.active.lock().unwrap_or_else(|e| e.into_inner());
    if !active.insert(id) {
        return;
    }
    let (sh, t) = (shared.clone(), tenant.clone());
    let spawned = std::thread::Builder::new()
        .name("keyledger-webhook".into())
        .spawn(move || work(&sh, &t, id));
    match spawned {
        Ok(h) => {
            let mut threads = s.threads.lock().unwrap_or_else(|e| e.into_inner());
            // Workers end when their queue is empty: keep only the live ones.
            threads.retain(|t| !t.is_finished());
            threads.push(h);
        }
        Err(e) => {
            active.remove(&id);
            tracing::warn!(error = %e, webhook = %id, "cannot start a webhook worker");
        }
    }
}

/// One subscription's worker: sends its deliveries in order, one at a
/// time, each until it is delivered or its retry time is over.
fn work(shared: &Arc<Shared>, tenant: &TenantId, id: WebhookId) {
    let s = service(shared);
    loop {
        if s.stopping() {
            break;
        }
        let next = match s.store.next_pending(id) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, webhook = %id, "cannot read a webhook delivery");
                s.nap(Duration::from_secs(1));
                continue;
            }
        };
        let Some((n, mut d)) = next else {
            // Under the lock: a delivery made since is seen here, or its
            // maker finds this worker gone and starts another.
            let mut active = s.active.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(s.store.next_pending(id), Ok(None)) {
                active.remove(&id);
                return;
            }
            continue;
        };
        let sub = {
            let read = shared.read_model();
            read.ledger
                .tenant(tenant)
                .and_then(|t| t.webhooks.get(&id))
                .map(|w| (w.url.clone(), w.deleted_at.is_some()))
        };
        let url = match sub {
            Some((url, false)) => url,
            // Deleted (or not applied here): nothing more goes to it.
            _ => {
                d.status = DeliveryStatus::Cancelled;
                if let Err(e) = s.store.record(id, n, &d, None) {
                    tracing::warn!(error = %e, webhook = %id, "cannot cancel a webhook delivery");
                    s.nap(Duration::from_secs(1));
                }
                continue;
            }
        };
        let now = shared.clock.now().as_micros();
        if d.next_attempt_at > now {
            let wait = Duration::from_micros((d.next_attempt_at - now) as u64);
            s.nap(wait.min(WORKER_NAP_MAX));
            continue;
        }
        let started = shared.clock.now();
        let first = *d.first_attempt_at.get_or_insert(started.as_micros());
        let attempt = send(s, id, &url, &d, started);
        let outcome = OUTCOMES
            .iter()
            .position(|o| *o == attempt.outcome)
            .unwrap_or(2);
        shared.metrics.webhook_attempts[outcome].fetch_add(1, Ordering::Relaxed);
        shared.metrics.webhook_latency[outcome].observe(Duration::from_millis(attempt.latency_ms));
        d.attempts += 1;
        let after = shared.clock.now().as_micros();
        if attempt.outcome == "delivered" {
            d.status = DeliveryStatus::Delivered;
        } else {
            let deadline = first.saturating_add(s.config.retry_for.as_micros() as i64);
            if after >= deadline {
                d.status = DeliveryStatus::Failed;
                shared
                    .metrics
                    .webhook_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %id, msg = %d.msg_id, attempts = d.attempts,
                    "a webhook delivery failed for good");
            } else {
                let wait = backoff(shared, &s.config, d.attempts);
                d.next_attempt_at = after.saturating_add(wait.as_micros() as i64).min(deadline);
            }
        }
        if let Err(e) = s.store.record(id, n, &d, Some(&attempt)) {
            // Sent again later: at least once.
            tracing::warn!(error = %e, webhook = %id, "cannot record a webhook attempt");
            s.nap(Duration::from_secs(1));
        }
    }
    s.active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// The wait after the `attempts`-th failed attempt: the first wait doubled
/// per attempt, at most the maximum, less a random jitter of up to half.
fn backoff(shared: &Shared, c: &super::WebhookConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = c
        .backoff_first
        .saturating_mul(1u32 << exp)
        .min(c.backoff_max);
    let mut r = [0u8; 2];
    let jitter = match shared.entropy.fill(&mut r) {
        Ok(()) => f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX),
        Err(_) => 0.0,
    };
    full.mul_f64(1.0 - jitter / 2.0)
}

/// One attempt: resolve and check the target again, sign, POST.
fn send(s: &Service, id: WebhookId, url: &str, d: &Delivery, now: Timestamp) -> Attempt {
    let started = Instant::now();
    let at = now.as_micros();
    let done = |status_code: Option<u16>, error: Option<String>, outcome: &str| Attempt {
        at,
        status_code,
        latency_ms: started.elapsed().as_millis() as u64,
        error,
        outcome: outcome.to_owned(),
    };
    let addrs = match target::parse(url).and_then(|t| target::resolve(&t, s.config.allow_private)) {
        Ok(a) => a,
        Err(e) => return done(None, Some(e), "refused"),
    };
    let timestamp = now.as_micros().div_euclid(1_000_000);
    let signature = secret::sign(
        &s.root.secret_bytes(id),
        &d.msg_id,
        timestamp,
        d.body.as_bytes(),
    );
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(s.config.attempt_timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("keyledger-webhooks/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        Checked(addrs),
    );
    let sent = agent
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .send(d.body.as_bytes());
    match sent {
        Ok(response) => {
            let code = response.status().as_u16();
            if response.status().is_success() {
                done(Some(code), None, "delivered")
            } else {
                done(
                    Some(code),
                    Some(format!("the receiver answered {code}")),
                    "http_error",
                )
            }
        }
        Err(e) => done(None, Some(e.to_string()), "network_error"),
    }
}

/// A resolver that hands ureq the addresses already resolved and checked
/// for this attempt, so the connection goes to one of them and not to
/// whatever a second lookup would answer (DNS rebinding).
#[derive(Debug)]
struct Checked(Vec<SocketAddr>);

impl ureq::unversioned::resolver::Resolver for Checked {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        for a in self.0.iter().take(16) {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}
