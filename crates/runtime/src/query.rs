//! Queries: answered from the read model (keys, usage) or from the log
//! itself (audit trail, history, point-in-time state).

use keyledger_core::{
    AuditFilter, DailyRow, Day, KeyId, KeyRecord, KeyStatus, Ledger, TenantId, Timestamp,
    UsageSummary, limits::SUMMARY_DAYS_MAX,
};
use keyledger_store::{ChainReport, Record, chain};

use crate::{BadRequest, Error, Keyledger, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};

/// Records read from the log per page while filtering the trail.
const AUDIT_PAGE_RECORDS: usize = 4096;
/// Most records one audit request reads before it answers with a cursor,
/// so a narrow filter over a long trail costs bounded work per request.
const AUDIT_SCAN_RECORDS_MAX: usize = 200_000;

/// What a key list is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortField {
    /// Name, case-insensitively.
    Name,
    /// Creation time (the default).
    #[default]
    CreatedAt,
    /// Last valid use; never-used keys sort as oldest.
    LastUsedAt,
}

impl SortField {
    /// Reads `name`, `created_at` or `last_used_at`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "name" => Some(SortField::Name),
            "created_at" => Some(SortField::CreatedAt),
            "last_used_at" => Some(SortField::LastUsedAt),
            _ => None,
        }
    }

    fn code(self) -> char {
        match self {
            SortField::Name => 'n',
            SortField::CreatedAt => 'c',
            SortField::LastUsedAt => 'u',
        }
    }
}

/// Sort order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Smallest first.
    Asc,
    /// Largest first (the default: newest keys first).
    #[default]
    Desc,
}

impl Order {
    /// Reads `asc` or `desc`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "asc" => Some(Order::Asc),
            "desc" => Some(Order::Desc),
            _ => None,
        }
    }
}

/// A key list request.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only keys with this status now.
    pub status: Option<KeyStatus>,
    /// Only keys owned or created by this user (or created by this key id / `operator`).
    pub created_by: Option<String>,
    /// Only keys whose name contains this, case-insensitively.
    pub q: Option<String>,
    /// Sort field.
    pub sort: SortField,
    /// Sort order.
    pub order: Order,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// A page of keys.
#[derive(Clone, Debug)]
pub struct KeyPage {
    /// The keys, with their status now.
    pub keys: Vec<(KeyRecord, KeyStatus)>,
    /// Active keys of the tenant (whatever the filter).
    pub active_count: usize,
    /// Pass back to get the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A page of the audit trail.
#[derive(Clone, Debug)]
pub struct AuditPage {
    /// Matching records, in log order.
    pub records: Vec<Record>,
    /// Pass back to continue; `None` when the trail is exhausted.
    pub next_cursor: Option<String>,
}

/// An instant or a position in the tenant's trail to rebuild state at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointInTime {
    /// Every event at or before this instant.
    Instant(Timestamp),
    /// The tenant's events `1..=seq` (its own sequence numbers, never the
    /// global log position: see [`crate::views::AuditEntry`]).
    Seq(u64),
}

/// A tenant's keys as of a point in time.
#[derive(Clone, Debug)]
pub struct StateAt {
    /// The instant the statuses are judged at.
    pub at: Timestamp,
    /// The sequence number of the tenant's last event folded (0: none).
    pub seq: u64,
    /// Every key that existed then, with its status then.
    pub keys: Vec<(KeyRecord, KeyStatus)>,
}

fn check_limit(limit: Option<usize>) -> Result<usize, Error> {
    match limit.unwrap_or(PAGE_LIMIT_DEFAULT) {
        0 => Err(BadRequest::LimitZero.into()),
        n if n > PAGE_LIMIT_MAX => Err(BadRequest::LimitOver {
            max: PAGE_LIMIT_MAX,
        }
        .into()),
        n => Ok(n),
    }
}

/// A key's place in a sorted list: what the cursor records.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Text(String),
    Time(i64),
}

fn sort_value(k: &KeyRecord, field: SortField) -> SortValue {
    match field {
        SortField::Name => SortValue::Text(k.name.to_lowercase()),
        SortField::CreatedAt => SortValue::Time(k.created_at.as_micros()),
        SortField::LastUsedAt => SortValue::Time(k.last_used_at.map_or(-1, Timestamp::as_micros)),
    }
}

fn encode_cursor(field: SortField, order: Order, value: &SortValue, id: KeyId) -> String {
    let o = if order == Order::Asc { 'a' } else { 'd' };
    let v = match value {
        SortValue::Text(t) => format!("t{t}"),
        SortValue::Time(t) => format!("i{t}"),
    };
    hex::encode(format!("k1\u{1f}{}{o}\u{1f}{id}\u{1f}{v}", field.code()))
}

fn decode_cursor(
    cursor: &str,
    field: SortField,
    order: Order,
) -> Result<(SortValue, KeyId), Error> {
    let bad = || Error::BadRequest(BadRequest::ListCursor);
    let text = String::from_utf8(hex::decode(cursor).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '\u{1f}');
    let (Some("k1"), Some(mode), Some(id), Some(v)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let o = if order == Order::Asc { 'a' } else { 'd' };
    if mode != format!("{}{o}", field.code()) {
        return Err(BadRequest::ListCursorOfOtherOrder.into());
    }
    let id: KeyId = id.parse().map_err(|_| bad())?;
    let value = match v.split_at_checked(1) {
        Some(("t", t)) => SortValue::Text(t.to_owned()),
        Some(("i", n)) => SortValue::Time(n.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok((value, id))
}

fn audit_cursor(seq: u64) -> String {
    format!("s{seq}")
}

fn parse_audit_cursor(cursor: Option<&str>) -> Result<u64, Error> {
    match cursor {
        None => Ok(0),
        Some(c) => c
            .strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .ok_or(Error::BadRequest(BadRequest::TrailCursor)),
    }
}

impl Keyledger {
    /// One key of a tenant; a key of another tenant is not found, like an unknown one.
    pub fn key(&self, tenant: &TenantId, id: KeyId) -> Result<KeyRecord, Error> {
        self.shared
            .read_model()
            .ledger
            .key(tenant, id)
            .cloned()
            .ok_or(Error::NotFound(crate::Missing::Key(id)))
    }

    /// Every tenant with events.
    pub fn tenants(&self) -> Vec<TenantId> {
        let read = self.shared.read_model();
        let mut t: Vec<_> = read.ledger.tenants().map(|(t, _)| t.clone()).collect();
        t.sort();
        t
    }

    /// A tenant's keys: `(all, active now)`.
    pub fn key_counts(&self, tenant: &TenantId) -> (usize, usize) {
        let read = self.shared.read_model();
        read.ledger
            .tenant(tenant)
            .map_or((0, 0), |s| (s.keys.len(), s.active_count(self.now())))
    }

    /// A page of a tenant's keys.
    pub fn list_keys(&self, tenant: &TenantId, q: &ListQuery) -> Result<KeyPage, Error> {
        let limit = check_limit(q.limit)?;
        let after = q
            .cursor
            .as_deref()
            .map(|c| decode_cursor(c, q.sort, q.order))
            .transpose()?;
        let now = self.now();
        let read = self.shared.read_model();
        let Some(state) = read.ledger.tenant(tenant) else {
            return Ok(KeyPage {
                keys: Vec::new(),
                active_count: 0,
                next_cursor: None,
            });
        };
        let needle = q.q.as_deref().map(str::to_lowercase);
        let mut matching: Vec<(SortValue, &KeyRecord)> = state
            .keys
            .values()
            .filter(|k| q.status.is_none_or(|s| k.status(now) == s))
            .filter(|k| {
                q.created_by
                    .as_deref()
                    .is_none_or(|c| k.owner.as_str() == c || k.created_by.matches(c))
            })
            .filter(|k| {
                needle
                    .as_deref()
                    .is_none_or(|n| k.name.to_lowercase().contains(n))
            })
            .map(|k| (sort_value(k, q.sort), k))
            .collect();
        matching.sort_by(|(va, a), (vb, b)| (va, a.id).cmp(&(vb, b.id)));
        if q.order == Order::Desc {
            matching.reverse();
        }
        let start = match &after {
            None => 0,
            Some((v, id)) => matching.partition_point(|(mv, k)| match q.order {
                Order::Asc => (mv, k.id) <= (v, *id),
                Order::Desc => (mv, k.id) >= (v, *id),
            }),
        };
        let page: Vec<_> = matching[start..].iter().take(limit).collect();
        let next_cursor = (start + page.len() < matching.len())
            .then(|| {
                page.last()
                    .map(|(v, k)| encode_cursor(q.sort, q.order, v, k.id))
            })
            .flatten();
        Ok(KeyPage {
            keys: page
                .iter()
                .map(|(_, k)| ((*k).clone(), k.status(now)))
                .collect(),
            active_count: state.active_count(now),
            next_cursor,
        })
    }

    /// A page of a tenant's audit trail, read from the log.
    pub fn audit(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AuditPage, Error> {
        let limit = check_limit(limit)?;
        let mut after = parse_audit_cursor(cursor)?;
        let mut records = Vec::new();
        let mut scanned = 0;
        loop {
            let page = self
                .shared
                .log
                .read_tenant(tenant, after, AUDIT_PAGE_RECORDS)?;
            let exhausted = page.len() < AUDIT_PAGE_RECORDS;
            for r in page {
                after = r.seq;
                scanned += 1;
                if filter.matches(&r.event) {
                    records.push(r);
                    if records.len() == limit {
                        let more = !self.shared.log.read_tenant(tenant, after, 1)?.is_empty();
                        return Ok(AuditPage {
                            records,
                            next_cursor: more.then(|| audit_cursor(after)),
                        });
                    }
                }
            }
            if exhausted {
                return Ok(AuditPage {
                    records,
                    next_cursor: None,
                });
            }
            if scanned >= AUDIT_SCAN_RECORDS_MAX {
                return Ok(AuditPage {
                    records,
                    next_cursor: Some(audit_cursor(after)),
                });
            }
        }
    }

    /// Every matching record of a tenant's trail, in order, streamed to `f`
    /// (for exports of any size). `f` may stop the walk by returning an error.
    pub fn for_each_audit<E: From<Error>>(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        mut f: impl FnMut(&Record) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self
                .shared
                .log
                .read_tenant(tenant, after, AUDIT_PAGE_RECORDS)
                .map_err(Error::from)?;
            let exhausted = page.len() < AUDIT_PAGE_RECORDS;
            for r in &page {
                after = r.seq;
                if filter.matches(&r.event) {
                    f(r)?;
                    n += 1;
                }
            }
            if exhausted {
                return Ok(n);
            }
        }
    }

    /// Every event of one key, usage included.
    pub fn key_history(
        &self,
        tenant: &TenantId,
        id: KeyId,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AuditPage, Error> {
        self.key(tenant, id)?;
        let filter = AuditFilter {
            key_id: Some(id),
            include_usage: true,
            ..AuditFilter::default()
        };
        self.audit(tenant, &filter, cursor, limit)
    }

    /// A tenant's keys as of an instant or one of its sequence numbers, by
    /// replaying the tenant's events up to it.
    pub fn state_at(&self, tenant: &TenantId, at: PointInTime) -> Result<StateAt, Error> {
        let mut ledger = Ledger::new();
        let mut after = 0;
        let mut last_at = Timestamp::EPOCH;
        'walk: loop {
            let page = self
                .shared
                .log
                .read_tenant(tenant, after, AUDIT_PAGE_RECORDS)?;
            let exhausted = page.len() < AUDIT_PAGE_RECORDS;
            for r in &page {
                let past = match at {
                    PointInTime::Instant(t) => r.event.at > t,
                    PointInTime::Seq(s) => r.seq > s,
                };
                if past {
                    break 'walk;
                }
                ledger.apply(r.seq, &r.event).map_err(Error::from)?;
                after = r.seq;
                last_at = r.event.at;
            }
            if exhausted {
                break;
            }
        }
        let judged_at = match at {
            PointInTime::Instant(t) => t,
            PointInTime::Seq(_) => last_at,
        };
        let keys = ledger
            .tenant(tenant)
            .map(|s| {
                s.keys
                    .values()
                    .map(|k| (k.clone(), k.status(judged_at)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(StateAt {
            at: judged_at,
            seq: after,
            keys,
        })
    }

    /// Per-day usage of a tenant, or of one of its keys, for `from..=to`.
    pub fn usage_daily(
        &self,
        tenant: &TenantId,
        key: Option<KeyId>,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailyRow>, Error> {
        if from > to {
            return Err(BadRequest::DaysReversed.into());
        }
        if let Some(k) = key {
            self.key(tenant, k)?;
        }
        // The per-key rows are on disk (`usagestore.rs`), written in the
        // apply step before the read model's head moves: every use applied
        // is there.
        match key {
            Some(k) => self.shared.usage_rows.daily_key(k, from, to),
            None => Ok(self
                .shared
                .read_model()
                .usage
                .daily_tenant(tenant, from, to)),
        }
    }

    /// A tenant's last `days` days of usage, ending today (UTC).
    pub fn usage_summary(&self, tenant: &TenantId, days: u32) -> Result<UsageSummary, Error> {
        if days == 0 || days > SUMMARY_DAYS_MAX {
            return Err(BadRequest::SummaryDays {
                max: SUMMARY_DAYS_MAX,
            }
            .into());
        }
        Ok(self
            .shared
            .read_model()
            .usage
            .summary(tenant, self.now().day(), days))
    }

    /// Recomputes a tenant's hash chain from the stored bytes.
    pub fn verify_chain(
        &self,
        tenant: &TenantId,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ChainReport, Error> {
        Ok(chain::verify_tenant_with_progress(
            self.shared.log.as_ref(),
            tenant,
            progress,
        )?)
    }
}
