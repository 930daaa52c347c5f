//! Tables for people, JSON for scripts, progress bars only on a terminal.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{HumanCount, ProgressBar, ProgressState, ProgressStyle};
use keyledger_core::{AuditFilter, EventType, TenantId};
use keyledger_runtime::Keyledger;
use keyledger_runtime::views::{
    AuditEntry, AuditPageBody, ChainBody, CreatedKey, DailyView, KeyList, KeyView, RemovedUser,
    StateBody, SummaryView,
};
use keyledger_store::ChainReport;
use serde::Serialize;

use crate::cli::{Format, Result};

/// Where results go: a table or text, or JSON with `--json`.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json }
    }

    /// Prints `value` as JSON, or `text()` for people.
    pub fn value<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            writeln!(stdout, "{}", text())?;
        }
        Ok(())
    }
}

/// A progress bar drawn on standard error only when it is a terminal.
pub fn progress(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {count}{rate}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            // `5,144/5,158 events`; nothing while the total is unknown
            // (never `0/0`).
            .with_key("count", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                if let Some(len) = s.len().filter(|l| *l > 0) {
                    let _ = write!(w, "{}/{} events", HumanCount(s.pos()), HumanCount(len));
                }
            })
            // A whole number of events a second, and the time left.
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                if s.len().is_some_and(|l| l > 0) && s.pos() > 0 {
                    let _ = write!(
                        w,
                        " ({}/s, {}s left)",
                        HumanCount(s.per_sec().round() as u64),
                        s.eta().as_secs()
                    );
                }
            })
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// A bar whose work is done shows its total (filtered-out events at the
/// end of the log are gone through too), never a count short of it.
pub fn finish(bar: &ProgressBar) {
    if let Some(len) = bar.length() {
        bar.set_position(len);
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn short_time(t: &Option<String>) -> String {
    t.as_deref().map_or_else(
        || "never".into(),
        |t| t.get(..19).unwrap_or(t).replace('T', " "),
    )
}

/// A column of a table that fits the terminal: its header, its rank
/// (the widest columns ranked last go first when the table is too wide)
/// and, for free text, the narrowest it may be cut to (with `…`).
struct Col {
    header: &'static str,
    rank: u8,
    cut_to: Option<usize>,
}

const fn col(header: &'static str, rank: u8, cut_to: Option<usize>) -> Col {
    Col {
        header,
        rank,
        cut_to,
    }
}

/// The width to fit: `COLUMNS` when set, else the terminal's; none when
/// standard output is not a terminal (a pipe gets whole rows).
fn fit_width() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(c);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return None;
    }
    Table::new().width().map(usize::from)
}

/// `text` cut to `max` characters, the last one `…`.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A table of `rows` that fits [`fit_width`]: free text cut with `…`
/// first, then whole columns left out, lowest rank first. Cells are never
/// wrapped, so an id is always whole (and can be double-clicked).
fn fitted(cols: &[Col], rows: Vec<Vec<String>>) -> String {
    let chars = |s: &str| s.chars().count();
    let full = |i: usize| {
        rows.iter()
            .map(|r| chars(&r[i]))
            .chain([chars(cols[i].header)])
            .max()
            .unwrap_or(0)
    };
    let mut widths: Vec<usize> = (0..cols.len()).map(full).collect();
    let mut shown: Vec<bool> = vec![true; cols.len()];
    if let Some(width) = fit_width() {
        // `│ a ┆ b │`: three characters a column, and the left border.
        let total = |widths: &[usize], shown: &[bool]| -> usize {
            1 + widths
                .iter()
                .zip(shown)
                .filter(|(_, s)| **s)
                .map(|(w, _)| w + 3)
                .sum::<usize>()
        };
        loop {
            let over = total(&widths, &shown).saturating_sub(width);
            if over == 0 {
                break;
            }
            // Cut free text, down to its narrowest.
            let mut left = over;
            for (i, c) in cols.iter().enumerate() {
                if let (true, Some(min)) = (shown[i], c.cut_to) {
                    let give = widths[i].saturating_sub(min.max(chars(c.header))).min(left);
                    widths[i] -= give;
                    left -= give;
                }
            }
            if left == 0 {
                break;
            }
            // Then leave out the lowest-ranked column still shown.
            let Some(drop) = (0..cols.len())
                .filter(|i| shown[*i] && shown.iter().filter(|s| **s).count() > 1)
                .max_by_key(|i| cols[*i].rank)
            else {
                break;
            };
            shown[drop] = false;
            // Its width goes back to the text columns.
            for (i, c) in cols.iter().enumerate() {
                if c.cut_to.is_some() {
                    widths[i] = full(i);
                }
            }
        }
        // A text column left out comes back, cut, where room is left.
        for (i, c) in cols.iter().enumerate() {
            let room = width.saturating_sub(total(&widths, &shown));
            if let (false, Some(min)) = (shown[i], c.cut_to)
                && room >= min.max(chars(c.header)) + 3
            {
                shown[i] = true;
                widths[i] = full(i).min(room - 3);
            }
        }
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(
            cols.iter()
                .zip(&shown)
                .filter(|(_, s)| **s)
                .map(|(c, _)| c.header)
                .collect::<Vec<_>>(),
        );
    for row in rows {
        t.add_row(
            row.into_iter()
                .enumerate()
                .filter(|(i, _)| shown[*i])
                .map(|(i, cell)| cut(&cell, widths[i]))
                .collect::<Vec<_>>(),
        );
    }
    t.to_string()
}

/// Keys, one a row: as many columns as fit, the id always whole.
pub fn key_table(keys: &[KeyView]) -> String {
    const COLS: [Col; 8] = [
        col("ID", 0, None),
        col("Name", 1, Some(10)),
        col("Key", 3, None),
        col("Created by", 5, Some(10)),
        col("Created", 7, None),
        col("Last used", 4, None),
        col("Uses", 6, None),
        col("Status", 2, None),
    ];
    let rows = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.name.clone(),
                k.masked.clone(),
                k.created_by.clone(),
                short_time(&Some(k.created_at.clone())),
                short_time(&k.last_used_at),
                k.uses.total.to_string(),
                k.status.to_owned(),
            ]
        })
        .collect();
    fitted(&COLS, rows)
}

pub fn key_detail(k: &KeyView) -> String {
    let mut t = table(&["Field", "Value"]);
    let rows: Vec<(&str, String)> = vec![
        ("ID", k.id.clone()),
        ("Name", k.name.clone()),
        ("Description", k.description.clone().unwrap_or_default()),
        ("Key", k.masked.clone()),
        ("Status", k.status.to_owned()),
        ("Scopes", k.scopes.join(" ")),
        (
            "Created by",
            format!("{} (via {})", k.created_by, k.created_via.display),
        ),
        ("Created", k.created_at.clone()),
        (
            "Expires",
            k.expires_at.clone().unwrap_or_else(|| "never".into()),
        ),
        (
            "Last used",
            k.last_used_at.clone().unwrap_or_else(|| "never".into()),
        ),
        (
            "Uses",
            format!(
                "{} ({} valid, {} rejected)",
                k.uses.total, k.uses.valid, k.uses.rejected
            ),
        ),
    ];
    for (f, v) in rows {
        t.add_row(vec![f.to_owned(), v]);
    }
    if let (Some(at), Some(by), Some(reason)) = (&k.revoked_at, &k.revoked_by, k.revoke_reason) {
        t.add_row(vec![
            "Revoked".to_owned(),
            format!("{at} by {} ({reason})", by.display),
        ]);
    }
    for (f, v) in [
        ("Rotated from", &k.rotated_from),
        ("Rotated to", &k.rotated_to),
    ] {
        if let Some(v) = v {
            t.add_row(vec![f.to_owned(), v.clone()]);
        }
    }
    for (f, v) in policy_rows(k) {
        t.add_row(vec![f.to_owned(), v]);
    }
    t.to_string()
}

/// A key's policy as detail rows (none for a key without one): credits,
/// rate limits, metadata.
fn policy_rows(k: &KeyView) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    if let Some(c) = &k.credits {
        rows.push((
            "Credits",
            match &c.refill {
                None => format!("{} left", c.remaining),
                Some(r) => format!(
                    "{} left; set to {} {}{}, next at {}",
                    c.remaining,
                    r.amount,
                    r.interval,
                    r.day.map_or(String::new(), |d| format!(" on day {d}")),
                    r.next_at
                ),
            },
        ));
    }
    if !k.limits.is_empty() {
        let limits = k
            .limits
            .iter()
            .map(|l| format!("{} {}/{}", l.name, l.limit, duration_text(l.duration)))
            .collect::<Vec<_>>();
        rows.push(("Rate limits", limits.join(", ")));
    }
    if let Some(m) = &k.meta {
        rows.push(("Meta", m.to_string()));
    }
    rows
}

/// A duration in milliseconds as the `--limit` flag takes it: `1s`, `15m`, `250ms`.
pub fn duration_text(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The create result: the only place a secret is ever printed.
pub fn created(out: &Out, body: &CreatedKey) -> Result<()> {
    out.value(body, || {
        format!(
            "{}\n\nYour new key (shown once; it cannot be recovered):\n\n    {}\n",
            key_detail(&body.view),
            body.key
        )
    })
}

/// A page of keys and the active count.
pub fn key_list(out: &Out, body: &KeyList) -> Result<()> {
    out.value(body, || {
        let mut s = format!(
            "{}\nActive keys: {}",
            key_table(&body.keys),
            body.active_count
        );
        if let Some(c) = &body.next_cursor {
            s.push_str(&format!("\nmore: --cursor {c}"));
        }
        s
    })
}

/// A page of the trail.
pub fn audit_page(out: &Out, body: &AuditPageBody) -> Result<()> {
    out.value(body, || {
        let mut s = audit_table(&body.events);
        if let Some(c) = &body.next_cursor {
            s.push_str(&format!("\nmore: --cursor {c}"));
        }
        s
    })
}

/// A removed user and the keys revoked with them.
pub fn removed_user(out: &Out, body: &RemovedUser) -> Result<()> {
    out.value(body, || {
        let list = if body.revoked.is_empty() {
            String::new()
        } else {
            format!(": {}", body.revoked.join(", "))
        };
        format!(
            "removed {}; revoked {} key(s){list}",
            body.user_id,
            body.revoked.len()
        )
    })
}

/// Every key of a tenant as of a point in its trail.
pub fn state(out: &Out, body: &StateBody) -> Result<()> {
    out.value(body, || {
        let mut s = format!(
            "as of {} (event {} of the tenant):\n{}",
            body.at,
            body.position,
            key_table(&body.keys)
        );
        if let Some(c) = &body.next_cursor {
            s.push_str(&format!("\nmore: --cursor {c}"));
        }
        s
    })
}

/// A written evidence bundle.
pub fn bundle_written(
    out: &Out,
    path: &std::path::Path,
    events: usize,
    from_seq: u64,
    to_seq: u64,
) -> Result<()> {
    out.value(
        &serde_json::json!({
            "output": path.display().to_string(),
            "events": events,
            "from_seq": from_seq,
            "to_seq": to_seq,
        }),
        || {
            format!(
                "wrote {events} events ({from_seq}..={to_seq}) with a signed checkpoint and proofs to {}",
                path.display()
            )
        },
    )
}

/// The checkpoint signing key, a tenant's note verifier key, and the
/// global tree's.
pub fn public_key(out: &Out, raw: &str, verifier: Option<&str>, global: &str) -> Result<()> {
    out.value(
        &serde_json::json!({
            "public_key": raw,
            "verifier_key": verifier,
            "global_verifier_key": global,
        }),
        || match verifier {
            Some(v) => format!("{raw}\n{v}\n{global}"),
            None => format!("{raw}\n{global}"),
        },
    )
}

/// Chain checks as the server answers them (`audit verify` with `--url`):
/// the same rows as on a data directory, without the stored checkpoints'
/// check, which only the server's data directory can make.
pub fn chain_bodies(out: &Out, bodies: Vec<ChainBody>) -> Result<()> {
    let text: Vec<String> = bodies.iter().map(chain_line).collect();
    let rows: Vec<ChainRow> = bodies
        .into_iter()
        .map(|chain| ChainRow::Chain {
            chain,
            checkpoint: serde_json::Value::Null,
        })
        .collect();
    out.value(&rows, || text.join("\n"))
}

/// A chain check's line, from its body.
fn chain_line(c: &ChainBody) -> String {
    match (c.ok, c.first_bad_seq, &c.problem) {
        (true, _, _) | (false, None, None) => {
            format!(
                "{}: ok, {} events, head {}",
                c.tenant, c.events, c.head_hash
            )
        }
        (false, seq, problem) => format!(
            "{}: BROKEN at event {} of the tenant: {}",
            c.tenant,
            seq.unwrap_or(0),
            problem.as_deref().unwrap_or("")
        ),
    }
}

/// Trail entries, one a row: as many columns as fit, key ids whole.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    const COLS: [Col; 6] = [
        col("Pos", 0, None),
        col("Time", 4, None),
        col("Event", 1, None),
        col("Actor", 3, Some(12)),
        col("Key", 2, None),
        col("Details", 5, Some(12)),
    ];
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.position.to_string(),
                short_time(&Some(e.at.clone())),
                e.kind.to_owned(),
                e.actor.display.clone(),
                e.key_id.clone().unwrap_or_default(),
                details_text(e),
            ]
        })
        .collect();
    fitted(&COLS, rows)
}

fn details_text(e: &AuditEntry) -> String {
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    // Every type is named: a new one is a decision here, not a default.
    match EventType::parse(e.kind) {
        Some(EventType::KeyCreated) => format!("\"{}\" for {}", s("name"), s("owner")),
        Some(EventType::KeyRevoked) => match d
            .get("cause")
            .and_then(|c| c.get("user_removed"))
            .and_then(|u| u.as_str())
        {
            Some(u) => format!("{} (user {u} removed)", s("reason")),
            None => s("reason"),
        },
        Some(EventType::KeyRotated) => format!(
            "replaced by {}, expires {}",
            s("new_key_id"),
            s("expires_at")
        ),
        Some(EventType::UserRemoved) => format!("user {}", s("user_id")),
        Some(EventType::KeyUsed) => format!(
            "{} valid, {} revoked, {} expired, {} out of scope",
            d["valid"], d["revoked"], d["expired"], d["insufficient_scope"]
        ),
        Some(EventType::KeyLeaked) => {
            let mut text = format!("reported by {}", s("reported_by"));
            for (field, label) in [("source", "in"), ("url", "at")] {
                if let Some(v) = d.get(field).and_then(|v| v.as_str()) {
                    text.push_str(&format!(" {label} {v}"));
                }
            }
            text
        }
        Some(EventType::WebhookSubscribed) => format!("{} to {}", s("webhook_id"), s("url")),
        Some(EventType::WebhookDeleted) => s("webhook_id"),
        Some(EventType::KeyUpdated) => {
            let changes: Vec<String> = d
                .get("changes")
                .and_then(|c| c.as_object())
                .map(|c| {
                    c.iter()
                        .map(|(field, v)| {
                            let (before, after) = (&v["before"], &v["after"]);
                            format!("{field} {} → {}", change_text(before), change_text(after))
                        })
                        .collect()
                })
                .unwrap_or_default();
            changes.join("; ")
        }
        Some(EventType::CreditsReserved) => {
            format!("{} credits reserved (epoch {})", d["amount"], d["epoch"])
        }
        Some(EventType::CreditsReleased) => {
            format!("{} credits released (epoch {})", d["amount"], d["epoch"])
        }
        Some(EventType::CreditsRefilled) => {
            format!("refilled to {} (due {})", d["remaining"], s("due_at"))
        }
        Some(EventType::AuditRead | EventType::LogRecovered) | None => d.to_string(),
    }
}

/// A changed field's value, before or after, as the trail table shows it:
/// `none` for null or an empty list, a scope list joined, rate limits as
/// `--limit` takes them, credits with their refill, text quoted.
fn change_text(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "none".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) => a
            .iter()
            .map(
                |x| match (x.as_str(), x["name"].as_str(), x["duration"].as_u64()) {
                    (Some(s), _, _) => s.to_owned(),
                    (None, Some(name), Some(ms)) => {
                        format!("{name}={}/{}", x["limit"], duration_text(ms))
                    }
                    _ => x.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(o) if o.contains_key("remaining") => {
            let refill = match &v["refill"] {
                Value::Null => String::new(),
                r => format!(
                    ", refilled to {} {}{}",
                    r["amount"],
                    r["interval"].as_str().unwrap_or(""),
                    r["day"]
                        .as_u64()
                        .map_or(String::new(), |d| format!(" on day {d}"))
                ),
            };
            format!("{}{refill}", v["remaining"])
        }
        other => other.to_string(),
    }
}

pub fn daily_table(rows: &[DailyView]) -> String {
    let mut t = table(&[
        "Day",
        "Total",
        "Valid",
        "Rejected",
        "Revoked",
        "Expired",
        "Out of scope",
    ]);
    for r in rows {
        let u = &r.uses;
        t.add_row(vec![
            r.day.clone(),
            u.total.to_string(),
            u.valid.to_string(),
            u.rejected.to_string(),
            u.revoked.to_string(),
            u.expired.to_string(),
            u.insufficient_scope.to_string(),
        ]);
    }
    t.to_string()
}

pub fn summary_text(s: &SummaryView) -> String {
    let rate = s
        .success_rate
        .map_or_else(|| "n/a".into(), |r| format!("{:.2}%", r * 100.0));
    let peak = s
        .series
        .iter()
        .map(|r| r.uses.total)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut text = format!(
        "{} to {} ({} days): {} uses, success rate {rate}\n\n",
        s.from, s.to, s.days, s.totals.total
    );
    for r in &s.series {
        let width = 40;
        let valid = (r.uses.valid * width / peak) as usize;
        let rejected = (r.uses.rejected * width / peak) as usize;
        text.push_str(&format!(
            "{} {:>8} {}{}\n",
            r.day,
            r.uses.total,
            "█".repeat(valid),
            "░".repeat(rejected)
        ));
    }
    text.push_str("\n█ valid  ░ rejected");
    text
}

/// One row of `audit verify --json`.
#[derive(Serialize)]
#[serde(untagged)]
enum ChainRow {
    /// A tenant's chain, as `GET /v1/audit/verify` answers it, and its
    /// signed checkpoints' check.
    Chain {
        #[serde(flatten)]
        chain: ChainBody,
        checkpoint: serde_json::Value,
    },
    /// A tenant with stored checkpoints but no events left in the log.
    Orphan {
        tenant: String,
        ok: bool,
        events: u64,
        checkpoint: serde_json::Value,
    },
}

pub fn chain_reports(
    out: &Out,
    reports: &[(TenantId, ChainReport)],
    checks: &[keyledger_runtime::integrity::TenantCheck],
) -> Result<()> {
    let check_of = |t: &str| checks.iter().find(|c| c.tenant == t);
    let checkpoint_json = |c: Option<&keyledger_runtime::integrity::TenantCheck>| match c {
        None => serde_json::Value::Null,
        Some(c) => match &c.outcome {
            Ok(signed) => serde_json::json!({
                "ok": true,
                "signed_size": signed.as_ref().map(|s| s.size),
            }),
            Err(p) => serde_json::json!({
                "ok": false,
                "signed_size": p.signed_size,
                "log_size": p.log_size,
                "first_bad_seq": p.first_bad,
                "file": p.file.display().to_string(),
                "problem": p.what,
            }),
        },
    };
    // Tenants with stored checkpoints but no events left in the log.
    let orphans: Vec<_> = checks
        .iter()
        .filter(|c| !reports.iter().any(|(t, _)| t.as_str() == c.tenant))
        .collect();
    let mut body: Vec<ChainRow> = reports
        .iter()
        .map(|(t, r)| {
            let cp = check_of(t.as_str());
            // As `GET /v1/audit/verify` answers, with the checkpoints' check.
            let mut chain = ChainBody::new(t.as_str(), r);
            chain.ok &= cp.is_none_or(|c| c.outcome.is_ok());
            ChainRow::Chain {
                chain,
                checkpoint: checkpoint_json(cp),
            }
        })
        .collect();
    body.extend(orphans.iter().map(|c| ChainRow::Orphan {
        tenant: c.tenant.clone(),
        ok: false,
        events: 0,
        checkpoint: checkpoint_json(Some(c)),
    }));
    out.value(&body, || {
        let mut lines: Vec<String> = reports
            .iter()
            .map(|(t, r)| {
                let chain = match &r.first_bad {
                    None => format!(
                        "{t}: ok, {} events, head {}",
                        r.events,
                        hex_hash(&r.head_hash)
                    ),
                    // The operator's text also names where in the whole log.
                    Some(b) => {
                        let mut text = format!("{t}: BROKEN at event {} of the tenant", b.seq);
                        if b.position != 0 {
                            text.push_str(&format!(" (log position {})", b.position));
                        }
                        text.push_str(&format!(": {}", b.problem));
                        if let Some(d) = &b.detail {
                            text.push_str(&format!(" ({d})"));
                        }
                        text
                    }
                };
                match check_of(t.as_str()).map(|c| &c.outcome) {
                    None | Some(Ok(None)) => chain,
                    Some(Ok(Some(s))) => {
                        format!("{chain}; holds its signed checkpoint of {} events", s.size)
                    }
                    Some(Err(p)) => format!("{chain}\n{t}: CHECKPOINT MISMATCH: {p}"),
                }
            })
            .collect();
        for c in &orphans {
            if let Err(p) = &c.outcome {
                lines.push(format!("{}: CHECKPOINT MISMATCH: {p}", c.tenant));
            }
        }
        if checks.iter().any(|c| c.outcome.is_err()) {
            lines.push(keyledger_runtime::integrity::RECOVERY_ADVICE.to_owned());
        }
        if lines.is_empty() {
            lines.push("no events and no signed checkpoints: nothing to verify".to_owned());
        }
        lines.join("\n")
    })
}

/// Lower-case hex of a hash.
pub fn hex_hash(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams a tenant's trail as JSON Lines or CSV.
pub fn export_trail(
    ledger: &Keyledger,
    tenant: &TenantId,
    filter: &AuditFilter,
    format: Format,
    sink: impl Write,
    bar: &ProgressBar,
) -> Result<u64> {
    match format {
        Format::Jsonl => {
            let mut sink = sink;
            // Each line rendered into one reused buffer (the bytes of
            // `AuditEntry`, without building one: `keyledger_runtime::export`).
            let mut line = Vec::with_capacity(1024);
            let n = ledger.for_each_audit(tenant, filter, |r| -> Result<()> {
                line.clear();
                keyledger_runtime::export::json_line(r, &mut line);
                sink.write_all(&line)?;
                bar.set_position(r.seq);
                Ok(())
            })?;
            sink.flush()?;
            finish(bar);
            Ok(n)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(sink);
            w.write_record(AuditEntry::CSV_HEADER)?;
            let mut fields = keyledger_runtime::export::CsvFields::new();
            let n = ledger.for_each_audit(tenant, filter, |r| -> Result<()> {
                w.write_record(fields.fill(r))?;
                bar.set_position(r.seq);
                Ok(())
            })?;
            w.flush()?;
            finish(bar);
            Ok(n)
        }
    }
}

pub fn export_rows(
    rows: &[DailyView],
    per_key: bool,
    format: Format,
    mut sink: impl Write,
) -> Result<()> {
    match format {
        Format::Jsonl => {
            for r in rows {
                serde_json::to_writer(&mut sink, r)?;
                sink.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(sink);
            w.write_record(DailyView::csv_header(per_key))?;
            for r in rows {
                w.write_record(r.csv_row())?;
            }
            w.flush()?;
        }
    }
    Ok(())
}
