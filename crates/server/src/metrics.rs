//! `/metrics`: Prometheus text exposition (format 0.0.4).
//!
//! * `keyledger_http_requests_total{method,route,status}` and
//!   `keyledger_http_request_duration_seconds{method,route}` (histogram),
//!   labelled with the matched route (`/v1/keys/{id}`), never the raw path,
//!   so the series are bounded;
//! * `keyledger_verifications_total{outcome}`;
//! * `keyledger_usage_queue_depth`, `keyledger_events_appended_total`,
//!   `keyledger_commands_committed_total`, `keyledger_commits_total`,
//!   `keyledger_commit_failures_total`, `keyledger_commit_duration_seconds`
//!   (histogram), `keyledger_usage_events_total`, `keyledger_log_head`,
//!   `keyledger_clock_behind_decisions_total`,
//!   `keyledger_clock_behind_seconds_max` (a clock that stepped back),
//!   `keyledger_append_conflicts_total`, `keyledger_events_followed_total`,
//!   `keyledger_miss_head_queries_total` (several nodes on one log);
//! * `keyledger_start_replayed_events`, `keyledger_start_snapshot_position`,
//!   `keyledger_snapshot_position`, `keyledger_snapshots_refused`,
//!   `keyledger_snapshots_written_total`, `keyledger_snapshot_failures_total`
//!   (snapshots of the projections, docs/operations.md);
//! * `keyledger_webhook_attempts_total{outcome}`,
//!   `keyledger_webhook_attempt_duration_seconds{outcome}` (histogram),
//!   `keyledger_webhook_deliveries_failed_total` (given up after the retry time);
//! * `keyledger_http_connections_open`,
//!   `keyledger_http_connections_refused_total` (a client over its
//!   connection limit).
//!
//! Every series is preallocated from the OpenAPI document's routes: the
//! request path costs a hash lookup and atomic adds, no lock.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use keyledger_runtime::{Histogram, Metrics, VerifyOutcome};

use crate::AppState;

/// The `route` label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Statuses counted in a slot of their own; any other is counted as `other`.
const STATUSES: [u16; 16] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 503,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// The `method` label for a method the route does not document.
const OTHER_METHOD: &str = "other";

struct Series {
    method: &'static str,
    latency: Histogram,
    statuses: [AtomicU64; STATUS_SLOTS],
}

impl Series {
    fn new(method: &'static str) -> Self {
        Series {
            method,
            latency: Histogram::default(),
            statuses: Default::default(),
        }
    }
}

/// Request counters and latency histograms by route, method and status.
pub struct HttpMetrics {
    /// Route → one series per documented method, then one for other methods.
    routes: HashMap<String, Vec<Series>>,
    /// Routes in the order they are rendered.
    order: Vec<String>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("routes", &self.order.len())
            .finish()
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => OTHER_METHOD,
    }
}

impl HttpMetrics {
    /// Series for every operation of `api`, and for unmatched requests.
    pub fn new(api: &utoipa::openapi::OpenApi) -> Self {
        let mut routes = HashMap::new();
        let mut order = Vec::new();
        for (path, item) in api.paths.paths.iter() {
            let mut series: Vec<Series> = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
            ]
            .into_iter()
            .filter(|(_, documented)| *documented)
            .map(|(m, _)| Series::new(m))
            .collect();
            series.push(Series::new(OTHER_METHOD));
            routes.insert(path.clone(), series);
            order.push(path.clone());
        }
        routes.insert(UNMATCHED_ROUTE.to_owned(), vec![Series::new(OTHER_METHOD)]);
        order.push(UNMATCHED_ROUTE.to_owned());
        HttpMetrics { routes, order }
    }

    /// Counts one answered request.
    pub fn observe(
        &self,
        route: Option<&str>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let series = route
            .and_then(|r| self.routes.get(r))
            .or_else(|| self.routes.get(UNMATCHED_ROUTE));
        let Some(series) = series else { return };
        let name = method_name(method);
        let Some(s) = series
            .iter()
            .find(|s| s.method == name)
            .or_else(|| series.last())
        else {
            return;
        };
        let slot = STATUSES
            .iter()
            .position(|c| *c == status.as_u16())
            .unwrap_or(STATUSES.len());
        s.statuses[slot].fetch_add(1, Ordering::Relaxed);
        s.latency.observe(elapsed);
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (buckets, count, sum) = h.snapshot();
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition: the HTTP series, then the ledger's.
pub(crate) fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let http = state.http_metrics();
    http_requests(&mut out, http);
    http_request_durations(&mut out, http);
    connections(&mut out, state);
    let ledger = state.ledger();
    let m = ledger.metrics();
    verifications(&mut out, m);
    header(
        &mut out,
        "keyledger_usage_queue_depth",
        "gauge",
        "Commands (usage and management) waiting for the writer.",
    );
    let _ = writeln!(out, "keyledger_usage_queue_depth {}", ledger.queue_depth());
    writer_counters(&mut out, m);
    clock_and_commits(&mut out, m);
    webhooks(&mut out, m);
    header(
        &mut out,
        "keyledger_log_head",
        "gauge",
        "The last applied global log position.",
    );
    let _ = writeln!(out, "keyledger_log_head {}", ledger.head());
    snapshots(&mut out, &m.snapshots);
    out
}

/// The snapshots of the projections: what the last start replayed, and
/// what was written and refused since.
fn snapshots(out: &mut String, s: &keyledger_runtime::SnapshotMetrics) {
    for (name, kind, help, v) in [
        (
            "keyledger_start_replayed_events",
            "gauge",
            "Events replayed from the log at the last start (only the tail after a snapshot).",
            &s.start_replayed_events,
        ),
        (
            "keyledger_start_snapshot_position",
            "gauge",
            "The log position of the snapshot the last start began from (0: none).",
            &s.start_snapshot_position,
        ),
        (
            "keyledger_snapshot_position",
            "gauge",
            "The log position of the last snapshot written (0: none since the start).",
            &s.last_position,
        ),
        (
            "keyledger_snapshots_refused",
            "gauge",
            "Snapshot files refused at the last start (damaged, of another version, or not matching the log).",
            &s.refused,
        ),
        (
            "keyledger_snapshots_written_total",
            "counter",
            "Snapshots of the projections written.",
            &s.written,
        ),
        (
            "keyledger_snapshot_failures_total",
            "counter",
            "Snapshots that could not be written.",
            &s.write_failures,
        ),
    ] {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
}

/// `keyledger_http_requests_total`: only the (route, method, status)
/// slots that counted a request.
fn http_requests(out: &mut String, http: &HttpMetrics) {
    header(
        out,
        "keyledger_http_requests_total",
        "counter",
        "HTTP requests answered, by method, matched route and status.",
    );
    for route in &http.order {
        for s in &http.routes[route] {
            for (slot, n) in s.statuses.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map_or_else(|| "other".to_owned(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "keyledger_http_requests_total{{method=\"{}\",route=\"{route}\",status=\"{status}\"}} {n}",
                    s.method
                );
            }
        }
    }
}

/// `keyledger_http_request_duration_seconds`: a histogram per (route,
/// method) that answered at least once.
fn http_request_durations(out: &mut String, http: &HttpMetrics) {
    header(
        out,
        "keyledger_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response's headers, by method and matched route.",
    );
    for route in &http.order {
        for s in &http.routes[route] {
            if s.latency.snapshot().1 > 0 {
                histogram(
                    out,
                    "keyledger_http_request_duration_seconds",
                    &format!("method=\"{}\",route=\"{route}\"", s.method),
                    &s.latency,
                );
            }
        }
    }
}

/// The connections open and those refused over a client's limit.
fn connections(out: &mut String, state: &AppState) {
    header(
        out,
        "keyledger_http_connections_open",
        "gauge",
        "Connections open.",
    );
    let _ = writeln!(
        out,
        "keyledger_http_connections_open {}",
        state.connections_open()
    );
    header(
        out,
        "keyledger_http_connections_refused_total",
        "counter",
        "Connections answered 429 and closed at once: their client held its connection limit.",
    );
    let _ = writeln!(
        out,
        "keyledger_http_connections_refused_total {}",
        state.connections_refused()
    );
}

/// `keyledger_verifications_total`, one line per outcome.
fn verifications(out: &mut String, m: &Metrics) {
    header(
        out,
        "keyledger_verifications_total",
        "counter",
        "Key verifications (API authentication included), by outcome; a known key's are counted when its uses are written, every usage window.",
    );
    for outcome in VerifyOutcome::ALL {
        let n = m.verifications[outcome.index()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "keyledger_verifications_total{{outcome=\"{}\"}} {n}",
            outcome.as_str()
        );
    }
}

/// The writer's and the follower's counters, one series each.
fn writer_counters(out: &mut String, m: &Metrics) {
    for (name, help, v) in [
        (
            "keyledger_events_appended_total",
            "Events appended to the log.",
            &m.events_appended,
        ),
        (
            "keyledger_commands_committed_total",
            "Commands acknowledged after a durable commit.",
            &m.commands_committed,
        ),
        (
            "keyledger_commits_total",
            "Durable (group) commits.",
            &m.commits,
        ),
        (
            "keyledger_commit_failures_total",
            "Commits that failed (nothing acknowledged).",
            &m.commit_failures,
        ),
        (
            "keyledger_usage_events_total",
            "KeyUsed events written.",
            &m.usage_events,
        ),
        (
            "keyledger_clock_behind_decisions_total",
            "Decisions whose clock read was behind the tenant's last event (the event took that event's time).",
            &m.clock_behind_decisions,
        ),
        (
            "keyledger_append_conflicts_total",
            "Appends refused because another node wrote to a tenant first (each retried after catching up).",
            &m.append_conflicts,
        ),
        (
            "keyledger_events_followed_total",
            "Events written by other nodes sharing the log, applied here.",
            &m.events_followed,
        ),
        (
            "keyledger_miss_head_queries_total",
            "Reads of the shared log's head made to answer an unknown key or an unapplied position (at most one per miss interval).",
            &m.miss_head_queries,
        ),
    ] {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
}

/// Webhook delivery attempts and their durations by outcome, and the
/// deliveries given up.
fn webhooks(out: &mut String, m: &Metrics) {
    use keyledger_runtime::webhooks::OUTCOMES;
    header(
        out,
        "keyledger_webhook_attempts_total",
        "counter",
        "Webhook delivery attempts by outcome (delivered, http_error, network_error, refused).",
    );
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        let _ = writeln!(
            out,
            "keyledger_webhook_attempts_total{{outcome=\"{outcome}\"}} {}",
            m.webhook_attempts[i].load(Ordering::Relaxed)
        );
    }
    header(
        out,
        "keyledger_webhook_attempt_duration_seconds",
        "histogram",
        "Time of each webhook delivery attempt, by outcome.",
    );
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        histogram(
            out,
            "keyledger_webhook_attempt_duration_seconds",
            &format!("outcome=\"{outcome}\""),
            &m.webhook_latency[i],
        );
    }
    header(
        out,
        "keyledger_webhook_deliveries_failed_total",
        "counter",
        "Webhook deliveries given up after the retry time.",
    );
    let _ = writeln!(
        out,
        "keyledger_webhook_deliveries_failed_total {}",
        m.webhook_failed.load(Ordering::Relaxed)
    );
}

/// The largest clock step back, and the commits' durations.
fn clock_and_commits(out: &mut String, m: &Metrics) {
    header(
        out,
        "keyledger_clock_behind_seconds_max",
        "gauge",
        "The largest clock step back seen by a decision, in seconds.",
    );
    let _ = writeln!(
        out,
        "keyledger_clock_behind_seconds_max {}",
        m.clock_behind_micros_max.load(Ordering::Relaxed) as f64 / 1e6
    );
    header(
        out,
        "keyledger_commit_duration_seconds",
        "histogram",
        "Time of each durable commit.",
    );
    histogram(
        out,
        "keyledger_commit_duration_seconds",
        "",
        &m.commit_latency,
    );
}
