//! The usage projection: per-day (UTC) rollups per key and per tenant.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Event, EventKind, UseCounts};
use crate::ids::{KeyId, TenantId};
use crate::limits::SUMMARY_DAYS_MAX;
use crate::shards::ShardedMap;
use crate::time::Day;

/// Per-day use counts per key and per tenant, folded from `KeyUsed` events.
///
/// A window's counts go to the UTC day its start falls on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sharded: no single insert rehashes every key ([`crate::shards`]).
    per_key: ShardedMap<KeyId, KeyDays>,
    tenants: TenantUsage,
}

/// The per-tenant half of [`Usage`]: one row per tenant and day (small:
/// tenants × days), what a runtime keeps in memory when the per-key rows
/// are kept on disk (issue 13).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    per_tenant: HashMap<TenantId, BTreeMap<Day, UseCounts>>,
}

/// The per-key rows a run of committed events adds: `(key, day)` → the
/// sum of its `KeyUsed` counts in the run, in key and day order (what a
/// store of per-key rows adds to its own, [`Usage::apply_all`]'s per-key
/// half).
pub fn key_day_sums<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> BTreeMap<(KeyId, Day), UseCounts> {
    let mut out: BTreeMap<(KeyId, Day), UseCounts> = BTreeMap::new();
    for event in events {
        if let EventKind::KeyUsed(u) = &event.kind {
            out.entry((u.key_id, u.window_start.day()))
                .or_default()
                .add(&u.counts);
        }
    }
    out
}

/// A run of events of one tenant and one day, not yet added.
type Run<'a> = Option<(&'a TenantId, Day, UseCounts)>;

impl TenantUsage {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds committed events in order (as [`Usage::apply_all`], tenants only).
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        let mut run = None;
        for event in events {
            self.fold(&mut run, event);
        }
        self.end(run);
    }

    /// One event into a run of one tenant and day: the tenant's rollup is
    /// looked up once per run, not once per event (counts add up the same
    /// in any grouping: they saturate, they never wrap).
    fn fold<'a>(&mut self, run: &mut Run<'a>, event: &'a Event) {
        let EventKind::KeyUsed(u) = &event.kind else {
            return;
        };
        let day = u.window_start.day();
        match run {
            Some((tenant, d, counts)) if **tenant == event.tenant && *d == day => {
                counts.add(&u.counts);
            }
            _ => {
                if let Some((tenant, d, counts)) = run.replace((&event.tenant, day, u.counts)) {
                    self.add(tenant, d, &counts);
                }
            }
        }
    }

    fn end(&mut self, run: Run<'_>) {
        if let Some((tenant, d, counts)) = run {
            self.add(tenant, d, &counts);
        }
    }

    fn add(&mut self, tenant: &TenantId, day: Day, counts: &UseCounts) {
        // Looked up first: no tenant id is cloned per event on replay.
        let days = match self.per_tenant.get_mut(tenant) {
            Some(days) => days,
            None => self.per_tenant.entry(tenant.clone()).or_default(),
        };
        days.entry(day).or_default().add(counts);
    }

    /// Every tenant's days with uses, oldest first (in no particular tenant order).
    pub fn tenant_rows(&self) -> impl Iterator<Item = (&TenantId, Vec<DailyRow>)> + '_ {
        self.per_tenant.iter().map(|(tenant, days)| {
            (
                tenant,
                rows(
                    Some(days),
                    Day::from_days(i32::MIN),
                    Day::from_days(i32::MAX),
                ),
            )
        })
    }

    /// The rollups that [`TenantUsage::tenant_rows`] lists (a day listed
    /// twice adds up).
    pub fn from_rows(tenants: impl IntoIterator<Item = (TenantId, Vec<DailyRow>)>) -> Self {
        let mut usage = TenantUsage::default();
        for (tenant, days) in tenants {
            for r in days {
                usage.add(&tenant, r.day, &r.counts);
            }
        }
        usage
    }

    /// A tenant's days with uses in `from..=to`.
    pub fn daily_tenant(&self, tenant: &TenantId, from: Day, to: Day) -> Vec<DailyRow> {
        rows(self.per_tenant.get(tenant), from, to)
    }

    /// A tenant's last `days` days, ending with `today`, every day present.
    /// `days` is clamped to `1..=`[`SUMMARY_DAYS_MAX`].
    pub fn summary(&self, tenant: &TenantId, today: Day, days: u32) -> UsageSummary {
        let days = days.clamp(1, SUMMARY_DAYS_MAX);
        let from = today.minus(days as i32 - 1);
        let mut rows = self
            .daily_tenant(tenant, from, today)
            .into_iter()
            .peekable();
        let mut series = Vec::with_capacity(days as usize);
        let mut totals = UseCounts::default();
        let mut day = from;
        while day <= today {
            let counts = match rows.peek() {
                Some(r) if r.day == day => rows.next().map(|r| r.counts).unwrap_or_default(),
                _ => UseCounts::default(),
            };
            totals.add(&counts);
            series.push(DailyRow { day, counts });
            day = day.next();
        }
        let success_rate =
            (totals.total() > 0).then(|| totals.valid as f64 / totals.total() as f64);
        UsageSummary {
            from,
            to: today,
            totals,
            success_rate,
            series,
        }
    }
}

/// One key's days. Windows arrive in time order, so nearly every event
/// adds to the key's latest day: that day lives in the map entry itself
/// (no node to chase, no allocation for a key used on one day only), and
/// only the earlier days are in a tree.
///
/// Invariant (so that derived equality compares contents): `latest` is the
/// key's latest day, and `earlier` holds every other day and nothing later.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyDays {
    latest: Day,
    latest_counts: UseCounts,
    earlier: BTreeMap<Day, UseCounts>,
}

impl KeyDays {
    fn new(day: Day, counts: UseCounts) -> Self {
        KeyDays {
            latest: day,
            latest_counts: counts,
            earlier: BTreeMap::new(),
        }
    }

    fn add(&mut self, day: Day, counts: &UseCounts) {
        if day == self.latest {
            self.latest_counts.add(counts);
        } else if day > self.latest {
            let was = std::mem::replace(&mut self.latest_counts, *counts);
            self.earlier.insert(self.latest, was);
            self.latest = day;
        } else {
            self.earlier.entry(day).or_default().add(counts);
        }
    }

    fn rows(&self, from: Day, to: Day) -> Vec<DailyRow> {
        let mut out = rows(Some(&self.earlier), from, to);
        if from <= self.latest && self.latest <= to {
            out.push(DailyRow {
                day: self.latest,
                counts: self.latest_counts,
            });
        }
        out
    }
}

/// One day's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DailyRow {
    /// The UTC day.
    pub day: Day,
    /// Uses by outcome.
    pub counts: UseCounts,
}

/// A tenant's usage over the last days.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageSummary {
    /// First day of the window.
    pub from: Day,
    /// Last day of the window (today).
    pub to: Day,
    /// Every use in the window, by outcome.
    pub totals: UseCounts,
    /// Valid uses over all uses; `None` when there were none.
    pub success_rate: Option<f64>,
    /// One row per day, days without uses included, oldest first.
    pub series: Vec<DailyRow>,
}

impl Usage {
    /// An empty projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds committed events in order, as [`Usage::apply`] on each: the
    /// tenant's rollup is looked up once per run of events of one tenant
    /// and one day, not once per event (counts add up the same in any
    /// grouping: they saturate, they never wrap).
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        let mut run = None;
        for event in events {
            if let EventKind::KeyUsed(u) = &event.kind {
                self.add_to_key(u.key_id, u.window_start.day(), &u.counts);
            }
            self.tenants.fold(&mut run, event);
        }
        self.tenants.end(run);
    }

    fn add_to_key(&mut self, key: KeyId, day: Day, counts: &UseCounts) {
        self.per_key
            .shard_mut(&key)
            .entry(key)
            .and_modify(|days| days.add(day, counts))
            .or_insert_with(|| KeyDays::new(day, *counts));
    }

    /// The per-tenant half.
    pub fn tenants(&self) -> &TenantUsage {
        &self.tenants
    }

    /// Every key's days with uses, oldest first (in no particular key order).
    pub fn key_rows(&self) -> impl Iterator<Item = (KeyId, Vec<DailyRow>)> + '_ {
        self.per_key.iter().map(|(key, days)| {
            (
                *key,
                days.rows(Day::from_days(i32::MIN), Day::from_days(i32::MAX)),
            )
        })
    }

    /// Every tenant's days with uses, oldest first (in no particular tenant order).
    pub fn tenant_rows(&self) -> impl Iterator<Item = (&TenantId, Vec<DailyRow>)> + '_ {
        self.tenants.tenant_rows()
    }

    /// The projection that [`Usage::key_rows`] and [`Usage::tenant_rows`]
    /// list (a snapshot read back). A day listed twice adds up; a key or
    /// tenant without rows is left out.
    pub fn from_rows(
        keys: impl IntoIterator<Item = (KeyId, Vec<DailyRow>)>,
        tenants: impl IntoIterator<Item = (TenantId, Vec<DailyRow>)>,
    ) -> Self {
        let mut usage = Usage::default();
        for (key, mut days) in keys {
            days.sort_by_key(|r| r.day);
            for r in days {
                usage.add_to_key(key, r.day, &r.counts);
            }
        }
        usage.tenants = TenantUsage::from_rows(tenants);
        usage
    }

    /// Folds one committed event (only `KeyUsed` changes anything).
    pub fn apply(&mut self, event: &Event) {
        self.apply_all(std::iter::once(event));
    }

    /// A tenant's days with uses in `from..=to`.
    pub fn daily_tenant(&self, tenant: &TenantId, from: Day, to: Day) -> Vec<DailyRow> {
        self.tenants.daily_tenant(tenant, from, to)
    }

    /// A key's days with uses in `from..=to`. The caller checks that the key
    /// belongs to the asking tenant.
    pub fn daily_key(&self, key: KeyId, from: Day, to: Day) -> Vec<DailyRow> {
        match self.per_key.get(&key) {
            Some(days) if from <= to => days.rows(from, to),
            _ => Vec::new(),
        }
    }

    /// A tenant's last `days` days, ending with `today`, every day present.
    /// `days` is clamped to `1..=`[`SUMMARY_DAYS_MAX`].
    pub fn summary(&self, tenant: &TenantId, today: Day, days: u32) -> UsageSummary {
        self.tenants.summary(tenant, today, days)
    }
}

fn rows(days: Option<&BTreeMap<Day, UseCounts>>, from: Day, to: Day) -> Vec<DailyRow> {
    match days {
        Some(days) if from <= to => days
            .range(from..=to)
            .map(|(day, counts)| DailyRow {
                day: *day,
                counts: *counts,
            })
            .collect(),
        _ => Vec::new(),
    }
}
