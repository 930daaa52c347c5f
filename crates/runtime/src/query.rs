//! Queries: answered from the read model (keys, usage) or from the log
//! itself (audit trail, history, point-in-time state).

use keyledger_core::{
    AuditFilter, DailyRow, Day, KeyFold, KeyId, KeyRecord, KeyStatus, Ledger, TenantId,
    TenantState, Timestamp, UsageSummary, limits::SUMMARY_DAYS_MAX,
};
use keyledger_store::{ChainReport, Record, chain};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

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
    /// The keys that existed then (every one, or a page of them), in key-id
    /// order, with their status then.
    pub keys: Vec<(KeyRecord, KeyStatus)>,
    /// With a page: pass back to get the next; `None` on the last (and
    /// always without a limit).
    pub next_cursor: Option<String>,
}

/// Keys folded together from their indexed events (one [`KeyFold`]).
const STATE_FOLD_KEYS: usize = 256;
/// Records read from the per-key index at a time.
const KEY_PAGE_RECORDS: usize = 1024;

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

/// The part of `state.by_created()` a page sorted by creation time reads
/// from: after the cursor (`after`) in the page's order, or all of it.
/// `None` for a cursor whose value is not a time (only the general path
/// knows how such a cursor compares).
fn created_range(
    state: &TenantState,
    after: Option<&(SortValue, KeyId)>,
    order: Order,
) -> Option<std::ops::Range<usize>> {
    let ids = state.by_created();
    let Some((value, id)) = after else {
        return Some(0..ids.len());
    };
    let SortValue::Time(t) = value else {
        return None;
    };
    // The first place not before the cursor; ascending, the page starts
    // after the cursor's own key if it is there.
    let i = state.created_place(Timestamp::from_micros(*t), *id);
    Some(match order {
        Order::Asc => {
            let at_cursor = ids.get(i) == Some(id)
                && state
                    .keys
                    .get(id)
                    .is_some_and(|k| k.created_at.as_micros() == *t);
            (i + usize::from(at_cursor))..ids.len()
        }
        Order::Desc => 0..i,
    })
}

/// A key's sort value against `value`, without making the key's own: a
/// name is compared lower-cased, as [`sort_value`] lower-cases it.
fn cmp_sort_value(k: &KeyRecord, field: SortField, value: &SortValue) -> Ordering {
    match (field, value) {
        (SortField::Name, SortValue::Text(t)) if k.name.is_ascii() => k
            .name
            .bytes()
            .map(|b| b.to_ascii_lowercase())
            .cmp(t.bytes()),
        _ => sort_value(k, field).cmp(value),
    }
}

/// Whether `name` lower-cased contains `needle` (lower-case already),
/// without lower-casing an ASCII name into a new string. A non-ASCII name
/// is lower-cased (some non-ASCII letters lower-case to ASCII ones: the
/// Kelvin sign to `k`).
fn name_contains(name: &str, needle: &str) -> bool {
    if !name.is_ascii() {
        return name.to_lowercase().contains(needle);
    }
    let needle = needle.as_bytes();
    needle.is_empty()
        || name
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A key on a list page being picked: ordered as the page is, so the
/// heap's top is the last of the page so far.
struct Listed<'a> {
    value: SortValue,
    key: &'a KeyRecord,
    status: KeyStatus,
    desc: bool,
}

impl Ord for Listed<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let asc = (&self.value, self.key.id).cmp(&(&other.value, other.key.id));
        if self.desc { asc.reverse() } else { asc }
    }
}

impl PartialOrd for Listed<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Listed<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Listed<'_> {}

/// A search finding more than one key in this many visits every key by a
/// walk of the tenant's map, not each found key by a look-up.
const SEARCH_WALK_SHARE: usize = 8;

/// A list page being picked by a pass over keys: the `limit + 1` first
/// after the cursor, in the page's order, in a bounded heap.
struct Picker<'a, 'c> {
    heap: BinaryHeap<Listed<'a>>,
    limit: usize,
    order: Order,
    after: Option<&'c (SortValue, KeyId)>,
}

impl<'a, 'c> Picker<'a, 'c> {
    fn new(limit: usize, order: Order, after: Option<&'c (SortValue, KeyId)>) -> Self {
        Picker {
            heap: BinaryHeap::with_capacity(limit + 1),
            limit,
            order,
            after,
        }
    }

    /// Whether a key goes on the page so far: past the cursor and before
    /// the page's last key (if the page is full). `place` compares the
    /// key's sort value and id with another's.
    fn wants(&self, place: impl Fn(&SortValue, KeyId) -> Ordering) -> bool {
        let before = |o: Ordering| match self.order {
            Order::Asc => o.is_lt(),
            Order::Desc => o.is_gt(),
        };
        if let Some((v, id)) = self.after
            && !before(place(v, *id).reverse())
        {
            return false;
        }
        match self.heap.peek() {
            Some(last) if self.heap.len() > self.limit => before(place(&last.value, last.key.id)),
            _ => true,
        }
    }

    /// Puts a key [`Picker::wants`] on the page (the last one goes if it is full).
    fn push(&mut self, listed: Listed<'a>) {
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
        self.heap.push(listed);
    }

    /// The page in order, and the cursor after it if more keys follow.
    fn finish(
        self,
        field: SortField,
        order: Order,
    ) -> (Vec<(KeyRecord, KeyStatus)>, Option<String>) {
        let mut page = self.heap.into_sorted_vec();
        let more = page.len() > self.limit;
        page.truncate(self.limit);
        let next_cursor = more
            .then(|| {
                page.last()
                    .map(|l| encode_cursor(field, order, &l.value, l.key.id))
            })
            .flatten();
        (
            page.iter().map(|l| (l.key.clone(), l.status)).collect(),
            next_cursor,
        )
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

/// A point-in-time page's cursor: the last key listed, as `k` and its
/// 128 bits in lower-case hex (a key id's own text form would look like a
/// secret in a URL: `key_in_url`).
fn state_cursor(key: KeyId) -> String {
    format!("k{:032x}", key.ulid().0)
}

fn parse_state_cursor(cursor: &str) -> Result<KeyId, Error> {
    cursor
        .strip_prefix('k')
        .filter(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .map(|n| KeyId::from_ulid(ulid::Ulid(n)))
        .ok_or(Error::BadRequest(BadRequest::ListCursor))
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
        // Every name contains the empty string: no search.
        let needle =
            q.q.as_deref()
                .map(str::to_lowercase)
                .filter(|n| !n.is_empty());
        // The filters other than the name's (a search finds the names in
        // the tenant's buffer of them, `TenantState::names`).
        let filtered = |k: &KeyRecord, status: KeyStatus| {
            q.status.is_none_or(|s| status == s)
                && q.created_by
                    .as_deref()
                    .is_none_or(|c| k.owner.as_str() == c || k.created_by().matches(c))
        };
        let wanted = |k: &KeyRecord, status: KeyStatus| {
            filtered(k, status) && needle.as_deref().is_none_or(|n| name_contains(&k.name, n))
        };
        let ids = state.by_created();
        let keyed = |i: usize| ids.get(i).and_then(|id| state.keys.get(id));
        // By creation time, the tenant keeps its keys in the page's order
        // (`TenantState::by_created`): the page starts at the cursor,
        // found by bisection, and ends at the `limit + 1`-th matching key.
        // A name search scans the names from there, in the same order, and
        // visits only the keys whose name matches.
        if q.sort == SortField::CreatedAt
            && let Some(range) = created_range(state, after.as_ref(), q.order)
        {
            let desc = q.order == Order::Desc;
            let candidates: Box<dyn Iterator<Item = &KeyRecord>> = match needle.as_deref() {
                Some(n) => Box::new(
                    state
                        .names()
                        .matching(n, range, desc)
                        .filter_map(|(i, _)| keyed(i)),
                ),
                None if desc => Box::new(range.rev().filter_map(keyed)),
                None => Box::new(range.filter_map(keyed)),
            };
            let mut page: Vec<(&KeyRecord, KeyStatus)> = Vec::with_capacity(limit + 1);
            for k in candidates {
                let status = k.status(now);
                if filtered(k, status) {
                    page.push((k, status));
                    if page.len() > limit {
                        break;
                    }
                }
            }
            let more = page.len() > limit;
            page.truncate(limit);
            let next_cursor = more
                .then(|| {
                    page.last()
                        .map(|(k, _)| encode_cursor(q.sort, q.order, &sort_value(k, q.sort), k.id))
                })
                .flatten();
            return Ok(KeyPage {
                keys: page.into_iter().map(|(k, s)| (k.clone(), s)).collect(),
                active_count: state.active_count(now),
                next_cursor,
            });
        }
        // Sorted otherwise, one pass: the page (the `limit + 1` first
        // matching keys after the cursor, in the page's order) picked by a
        // bounded heap, so a page costs a pass and no sort of every key.
        let mut page = Picker::new(limit, q.order, after.as_ref());
        // A key the pass reached that would be on the page so far (by the
        // sort value it read): its record looked up, the filters judged.
        let reached = |id: &KeyId, value: SortValue| {
            let k = state.keys.get(id)?;
            let status = k.status(now);
            filtered(k, status).then_some(Listed {
                value,
                key: k,
                status,
                desc: q.order == Order::Desc,
            })
        };
        if q.sort == SortField::Name {
            // By name, the pass reads the tenant's lower-cased names (the
            // sort values) from its buffer of them, or only those a search
            // finds; a key is visited only if it would be on the page so
            // far.
            let names = state.names();
            let found = names.matching(needle.as_deref().unwrap_or(""), 0..names.len(), false);
            for (i, name) in found {
                let Some(id) = ids.get(i) else { continue };
                let place = |value: &SortValue, other: KeyId| match value {
                    SortValue::Text(t) => name.cmp(t.as_str()).then(id.cmp(&other)),
                    // As `SortValue`'s order has it (a cursor's value is
                    // text for this sort unless made up).
                    SortValue::Time(_) => Ordering::Less,
                };
                if !page.wants(place) {
                    continue;
                }
                if let Some(listed) = reached(id, SortValue::Text(name.to_owned())) {
                    page.push(listed);
                }
            }
        } else if q.sort == SortField::LastUsedAt {
            // By last use, the pass reads the tenant's array of last uses
            // (the sort values, in creation order: 8 bytes a key), or only
            // the places a search finds in the names; a key is visited
            // only if it would be on the page so far.
            let uses = state.last_uses();
            let mut visit = |i: usize| {
                let (Some(&used), Some(id)) = (uses.get(i), ids.get(i)) else {
                    return;
                };
                let place = |value: &SortValue, other: KeyId| match value {
                    SortValue::Time(t) => used.cmp(t).then_with(|| id.cmp(&other)),
                    // As `SortValue`'s order has it (a cursor's value is a
                    // time for this sort unless made up).
                    SortValue::Text(_) => Ordering::Greater,
                };
                if !page.wants(place) {
                    return;
                }
                if let Some(listed) = reached(id, SortValue::Time(used)) {
                    page.push(listed);
                }
            };
            match needle.as_deref() {
                Some(n) => {
                    let names = state.names();
                    names
                        .matching(n, 0..names.len(), false)
                        .for_each(|(i, _)| visit(i));
                }
                None => (0..uses.len()).for_each(visit),
            }
        } else {
            // A search that finds few keys visits only those; one that
            // finds many, every key in turn (a walk of the map costs less
            // than a look-up per key).
            let found: Option<Vec<usize>> = needle.as_deref().map(|n| {
                let names = state.names();
                names
                    .matching(n, 0..names.len(), false)
                    .map(|(i, _)| i)
                    .collect()
            });
            let candidates: Box<dyn Iterator<Item = &KeyRecord>> = match found {
                Some(found) if found.len() <= state.keys.len() / SEARCH_WALK_SHARE => {
                    Box::new(found.into_iter().filter_map(keyed))
                }
                _ => Box::new(state.keys.values()),
            };
            for k in candidates {
                let status = k.status(now);
                if !wanted(k, status) {
                    continue;
                }
                let place = |value: &SortValue, id: KeyId| {
                    cmp_sort_value(k, q.sort, value).then(k.id.cmp(&id))
                };
                if page.wants(place) {
                    page.push(Listed {
                        value: sort_value(k, q.sort),
                        key: k,
                        status,
                        desc: q.order == Order::Desc,
                    });
                }
            }
        }
        let (keys, next_cursor) = page.finish(q.sort, q.order);
        Ok(KeyPage {
            keys,
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

    /// Every event about one key (its `key_id`), usage included: the
    /// audit trail filtered to the key, read through the store's per-key
    /// index, so it costs the key's events, not the tenant's.
    pub fn key_history(
        &self,
        tenant: &TenantId,
        id: KeyId,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AuditPage, Error> {
        self.key(tenant, id)?;
        let limit = check_limit(limit)?;
        let mut after = parse_audit_cursor(cursor)?;
        // The index also lists a rotation under its new key, and a
        // rotation's `KeyCreated` under the old one: the history is the
        // events *about* the key, as the trail's filter says.
        let filter = AuditFilter {
            key_id: Some(id),
            include_usage: true,
            ..AuditFilter::default()
        };
        let mut records = Vec::new();
        loop {
            let want = (limit - records.len() + 1).min(KEY_PAGE_RECORDS);
            let page = self.shared.log.read_key(tenant, id, after, want)?;
            let exhausted = page.len() < want;
            for r in page {
                after = r.seq;
                if filter.matches(&r.event) {
                    records.push(r);
                    if records.len() == limit {
                        // As the trail's pages: a cursor while the tenant
                        // has any event after this one.
                        let head = self.shared.log.tenant_head(tenant)?.map_or(0, |h| h.0);
                        return Ok(AuditPage {
                            records,
                            next_cursor: (head > after).then(|| audit_cursor(after)),
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
        }
    }

    /// A tenant's keys as of an instant or one of its sequence numbers:
    /// every key that existed then, by replaying the tenant's events up to
    /// it. (Every key needs every event up to the point anyway, and one
    /// walk of the trail in order reads them faster than the per-key
    /// index does: 2.5 s against 7.8 s for a tenant of 10,000 keys and
    /// 503,000 events, docs/performance.md. A page of keys is
    /// [`Keyledger::state_at_page`].)
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
            next_cursor: None,
        })
    }

    /// A tenant's keys as of an instant or one of its sequence numbers, in
    /// key-id order: up to `limit` of them after `cursor`; without a limit
    /// and a cursor, [`Keyledger::state_at`] (every key, by replay). The
    /// point in time is found in the tenant's trail
    /// by bisection (its events are in time order), and each key is folded
    /// from its own events up to it, read through the store's per-key
    /// index: the cost is the page's keys' events, not the tenant's trail.
    pub fn state_at_page(
        &self,
        tenant: &TenantId,
        at: PointInTime,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<StateAt, Error> {
        let limit = match (limit, cursor) {
            (None, None) => return self.state_at(tenant, at),
            (None, Some(_)) => usize::MAX,
            (Some(_), _) => check_limit(limit)?,
        };
        let mut after_key = cursor.map(parse_state_cursor).transpose()?;
        let (seq, judged_at) = self.point_in_time(tenant, at)?;
        let mut keys = Vec::new();
        let mut next_cursor = None;
        while keys.len() < limit {
            // No more keys listed than the page still needs, so each one
            // listed is folded, and the last one listed is where the next
            // page starts.
            let want = (limit - keys.len()).min(STATE_FOLD_KEYS);
            let listed = self.shared.log.tenant_keys(tenant, after_key, want)?;
            let Some(last) = listed.last().map(|(k, _)| *k) else {
                break;
            };
            // A key's first indexed event is its creation: one created
            // after the point in time is skipped without reading it.
            let existing: Vec<KeyId> = listed
                .iter()
                .filter(|(_, first)| *first <= seq)
                .map(|(k, _)| *k)
                .collect();
            for (_, record) in self.fold_keys(tenant, &existing, seq)? {
                let status = record.status(judged_at);
                keys.push((record, status));
            }
            after_key = Some(last);
            if listed.len() < want {
                break;
            }
            if keys.len() == limit {
                let more = !self
                    .shared
                    .log
                    .tenant_keys(tenant, Some(last), 1)?
                    .is_empty();
                next_cursor = more.then(|| state_cursor(last));
            }
        }
        Ok(StateAt {
            at: judged_at,
            seq,
            keys,
            next_cursor,
        })
    }

    /// The tenant's last sequence number at the point in time, and the
    /// instant statuses are judged at (the instant asked, or the time of
    /// the event at the sequence number asked).
    fn point_in_time(&self, tenant: &TenantId, at: PointInTime) -> Result<(u64, Timestamp), Error> {
        let head = self.shared.log.tenant_head(tenant)?.map_or(0, |h| h.0);
        let event_at = |seq: u64| -> Result<Option<Timestamp>, Error> {
            let r = self.shared.log.read_tenant(tenant, seq - 1, 1)?;
            Ok(r.first().map(|r| r.event.at))
        };
        match at {
            PointInTime::Seq(s) => {
                let seq = s.min(head);
                let at = match seq {
                    0 => Timestamp::EPOCH,
                    n => event_at(n)?.unwrap_or(Timestamp::EPOCH),
                };
                Ok((seq, at))
            }
            PointInTime::Instant(t) => {
                // The last event at or before `t`: events of a tenant never
                // go back in time (the writer stamps each at or after the
                // one before), so `at <= t` holds for a prefix.
                let (mut lo, mut hi) = (0, head);
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if event_at(mid)?.is_some_and(|a| a <= t) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                Ok((lo, t))
            }
        }
    }

    /// `keys` folded together from their own events up to `seq`, by id
    /// (a key not created by then is left out).
    fn fold_keys(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        seq: u64,
    ) -> Result<std::collections::BTreeMap<KeyId, KeyRecord>, Error> {
        // The keys' uses come summed, not event by event: the page's cost
        // is the keys' other events, however often they were used.
        let read = self.shared.log.read_keys_until_summed(tenant, keys, seq)?;
        let mut fold = KeyFold::new(keys.iter().copied());
        for r in &read.records {
            fold.apply(r.seq, &r.event).map_err(Error::from)?;
        }
        for (key, totals) in &read.uses {
            fold.add_uses(tenant, *key, totals).map_err(Error::from)?;
        }
        Ok(fold.finish())
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
