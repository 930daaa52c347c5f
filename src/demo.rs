//! `keyledger demo`: fills an empty data directory with three tenants,
//! their users and keys, ninety days of usage, a rotation, revocations, an
//! expiry and removed users, so a newcomer sees every feature at once.
//!
//! Time is simulated (a manual clock walks through the ninety days); the
//! secrets still come from the OS CSPRNG and are never printed or stored.

use std::path::Path;
use std::sync::Arc;

use keyledger_core::{
    KeyPrefix, Principal, RevokeReason, Scope, ScopeSet, Secret, TenantId, Timestamp, UserId,
};
use keyledger_runtime::{
    Config, Created, Keyledger, ManualClock, NewKey, OsEntropy, SystemClock, UsageWindow,
};

use crate::cli::{Failure, Result};

const DAYS: i32 = 90;
const SLOTS_PER_DAY: i64 = 6;
const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// A small deterministic generator (xorshift64*), so every demo has the
/// same shape; the secrets do not come from here.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct DemoKey {
    secret: Secret,
    name: &'static str,
    /// Uses per day, roughly.
    daily: u64,
    /// A scope some callers ask for that the key may lack.
    asks: Option<Scope>,
    /// Day after which callers stop presenting it.
    retired_after: Option<i32>,
}

fn t(s: &str) -> TenantId {
    s.parse()
        .unwrap_or_else(|_| unreachable!("demo tenant ids are valid"))
}

fn u(s: &str) -> UserId {
    s.parse()
        .unwrap_or_else(|_| unreachable!("demo user ids are valid"))
}

fn scopes(list: &[Scope]) -> Option<ScopeSet> {
    Some(list.iter().copied().collect())
}

pub async fn run(data: &Path, prefix: &str) -> Result<()> {
    let data = &crate::cli::data_dir(data)?;
    let log = crate::cli::open_log(data)?;
    if log.head()? > 0 {
        let place = if crate::cli::postgres() {
            "the PostgreSQL log".to_owned()
        } else {
            data.display().to_string()
        };
        return Err(Failure::msg(format!(
            "{place} already holds a ledger; demo fills only an empty log (use --data to pick another)"
        )));
    }
    let today = SystemClock.now_day_start();
    let start = today.minus_seconds(DAYS as u64 * 86_400);
    let clock = ManualClock::new(Timestamp::from_micros(
        start.as_micros() + 9 * MICROS_PER_HOUR,
    ));
    let config = Config {
        prefix: KeyPrefix::new(prefix).map_err(Failure::msg)?,
        usage_window: UsageWindow::Manual,
        ..Config::default()
    };
    let ledger = Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )?;
    let result = fill(&ledger, &clock, start).await;
    clock.set(SystemClock.now_precise());
    ledger.shutdown().await?;
    let keys = result?;
    println!(
        "Filled {} with a sample ledger: 3 tenants, {} keys, {} events, {DAYS} days of usage.\n\
         \n\
         Try:\n  \
         keyledger --data {d} keys list --tenant acme\n  \
         keyledger --data {d} audit list --tenant acme\n  \
         keyledger --data {d} usage summary --tenant acme\n  \
         keyledger --data {d} audit verify",
        data.display(),
        keys,
        ledger.head(),
        d = data.display(),
    );
    Ok(())
}

trait DayStart {
    fn now_precise(&self) -> Timestamp;
    fn now_day_start(&self) -> Timestamp;
}

impl DayStart for SystemClock {
    fn now_precise(&self) -> Timestamp {
        keyledger_runtime::Clock::now(self)
    }
    fn now_day_start(&self) -> Timestamp {
        self.now_precise().day().start()
    }
}

/// Moves the simulated clock to `t`, never back: the sample's day starts
/// after the set-up of its first morning.
fn forward(clock: &ManualClock, t: Timestamp) {
    clock.set(t.max(keyledger_runtime::Clock::now(clock)));
}

async fn fill(ledger: &Keyledger, clock: &ManualClock, start: Timestamp) -> Result<usize> {
    let mut dice = Dice(0x5eed_1e55_ca5c_ade5);
    let at = |day: i32, hour: i64| {
        Timestamp::from_micros(
            start.as_micros() + i64::from(day) * 24 * MICROS_PER_HOUR + hour * MICROS_PER_HOUR,
        )
    };
    let tenants = Tenants {
        acme: t("acme"),
        globex: t("globex"),
        initech: t("initech"),
    };
    let mut m = Minter {
        ledger,
        keys: Vec::new(),
    };

    // Day 0: the keys of three tenants, minted by the operator (as an
    // onboarding script would) for each user.
    clock.set(at(0, 9));
    let acme = mint_acme(&mut m, &tenants.acme, at(75, 0)).await?;
    mint_globex(&mut m, &tenants.globex).await?;
    mint_initech(&mut m, &tenants.initech).await?;

    for day in 0..DAYS {
        // Management on chosen days, as the trail should show it.
        forward(clock, at(day, 8));
        manage(&mut m, &tenants, &acme, day).await?;
        traffic(&m, clock, &mut dice, day, at(day, 7)).await?;
    }
    Ok(m.keys.len())
}

/// The sample's tenants.
struct Tenants {
    acme: TenantId,
    globex: TenantId,
    initech: TenantId,
}

/// Acme's keys the later days act with or on.
struct AcmeKeys {
    /// Alice's "CI/CD Pipeline", acting as an API key.
    ci: Principal,
    /// Alice's "Admin Console", acting as an API key.
    admin: Principal,
    /// Dave's "Developer Testing".
    testing: Created,
}

/// Mints keys, remembering their secrets (in memory only) for traffic.
struct Minter<'a> {
    ledger: &'a Keyledger,
    keys: Vec<DemoKey>,
}

impl Minter<'_> {
    /// Creates a key for `owner` as `who`, named and used as `plan` says
    /// (name, uses per day, a scope callers ask for that it may lack).
    async fn mint(
        &mut self,
        who: Principal,
        owner: &str,
        (name, daily, asks): (&'static str, u64, Option<Scope>),
        new: NewKey,
    ) -> Result<Created> {
        let new = NewKey {
            owner: Some(u(owner)),
            name: name.into(),
            ..new
        };
        let created = self.ledger.create_key(who, new).await?;
        let secret = created.secret.clone();
        self.keys.push(DemoKey {
            secret,
            name,
            daily,
            asks,
            retired_after: None,
        });
        Ok(created)
    }

    /// The demo key named `name`, if any.
    fn named(&mut self, name: &str) -> Option<&mut DemoKey> {
        self.keys.iter_mut().find(|k| k.name == name)
    }
}

/// A key with every scope but `users:remove` (what a create grants when
/// it names no scopes).
fn all_but_remove() -> NewKey {
    NewKey::default()
}

/// Acme's ten keys of day 0: alice's four (two of which act later), then
/// bob's, carol's and dave's.
async fn mint_acme(
    m: &mut Minter<'_>,
    acme: &TenantId,
    mobile_expiry: Timestamp,
) -> Result<AcmeKeys> {
    let op = || Principal::operator(acme.clone());
    let web = NewKey {
        description: Some("Checkout and account pages".into()),
        ..all_but_remove()
    };
    m.mint(op(), "alice", ("Production Web App", 1400, None), web)
        .await?;
    let staging = ("Staging Environment", 300, None);
    m.mint(op(), "alice", staging, all_but_remove()).await?;
    let ci_new = NewKey {
        scopes: scopes(&[
            Scope::KeysRead,
            Scope::KeysWrite,
            Scope::AuditRead,
            Scope::UsageRead,
        ]),
        ..all_but_remove()
    };
    let ci = m
        .mint(op(), "alice", ("CI/CD Pipeline", 120, None), ci_new)
        .await?;
    let admin_new = NewKey {
        scopes: Some(ScopeSet::ALL),
        ..all_but_remove()
    };
    let admin = m
        .mint(op(), "alice", ("Admin Console", 20, None), admin_new)
        .await?;
    let testing = mint_acme_team(m, acme, mobile_expiry).await?;
    let as_alice = |k: &Created| {
        Principal::api_key(
            acme.clone(),
            k.key.id,
            k.key.name.to_string(),
            u("alice"),
            k.key.scopes,
        )
    };
    Ok(AcmeKeys {
        ci: as_alice(&ci),
        admin: as_alice(&admin),
        testing,
    })
}

/// Acme's keys of day 0 for bob, carol and dave; returns dave's
/// "Developer Testing", revoked later.
async fn mint_acme_team(
    m: &mut Minter<'_>,
    acme: &TenantId,
    mobile_expiry: Timestamp,
) -> Result<Created> {
    let op = || Principal::operator(acme.clone());
    let github = ("GitHub Actions CI", 250, None);
    m.mint(op(), "bob", github, all_but_remove()).await?;
    let mobile = NewKey {
        expires_at: Some(mobile_expiry),
        ..all_but_remove()
    };
    m.mint(op(), "bob", ("Mobile App v2", 900, None), mobile)
        .await?;
    let data_team = NewKey {
        scopes: scopes(&[Scope::UsageRead, Scope::AuditRead]),
        ..all_but_remove()
    };
    let asks_keys_write = ("Data Team Automation", 200, Some(Scope::KeysWrite));
    m.mint(op(), "carol", asks_keys_write, data_team).await?;
    let inventory = ("Inventory Integration", 650, None);
    m.mint(op(), "carol", inventory, all_but_remove()).await?;
    let crm = ("CRM Sync", 400, None);
    m.mint(op(), "carol", crm, all_but_remove()).await?;
    let testing = ("Developer Testing", 60, None);
    m.mint(op(), "dave", testing, all_but_remove()).await
}

/// Globex's three keys of day 0, for erin and frank.
async fn mint_globex(m: &mut Minter<'_>, globex: &TenantId) -> Result<()> {
    let op = || Principal::operator(globex.clone());
    m.mint(
        op(),
        "erin",
        ("Production API", 1100, None),
        all_but_remove(),
    )
    .await?;
    let analytics = NewKey {
        scopes: scopes(&[Scope::UsageRead]),
        ..all_but_remove()
    };
    let asks_keys_read = ("Analytics Export", 150, Some(Scope::KeysRead));
    m.mint(op(), "erin", asks_keys_read, analytics).await?;
    let partner = NewKey {
        description: Some("Read-only access for a reseller".into()),
        meta: keyledger_core::Meta::new(r#"{"reseller":"Northwind","tier":"gold"}"#.into()).ok(),
        scopes: scopes(&[Scope::KeysRead]),
        ..all_but_remove()
    };
    m.mint(op(), "frank", ("Partner Integration", 350, None), partner)
        .await?;
    Ok(())
}

/// Initech's three keys of day 0, for peter, milton and samir.
async fn mint_initech(m: &mut Minter<'_>, initech: &TenantId) -> Result<()> {
    let op = || Principal::operator(initech.clone());
    m.mint(op(), "peter", ("TPS Reports", 500, None), all_but_remove())
        .await?;
    m.mint(
        op(),
        "milton",
        ("Stapler Service", 80, None),
        all_but_remove(),
    )
    .await?;
    m.mint(op(), "samir", ("Legacy Batch", 220, None), all_but_remove())
        .await?;
    Ok(())
}

/// The management of `day`, if any: a key minted by a key, a change, a rotation, a
/// compromised key revoked, two users removed. Keys that stop working are
/// retired from traffic a few days later, as their callers notice.
async fn manage(m: &mut Minter<'_>, tenants: &Tenants, acme: &AcmeKeys, day: i32) -> Result<()> {
    match day {
        10 => {
            let deploy_bot = NewKey {
                scopes: scopes(&[Scope::KeysRead]),
                ..NewKey::default()
            };
            m.mint(
                acme.ci.clone(),
                "alice",
                ("Deploy Bot", 90, None),
                deploy_bot,
            )
            .await?;
        }
        20 => describe_deploy_bot(m, &tenants.acme).await?,
        30 => rotate_web_app(m, &tenants.acme).await?,
        45 => {
            m.ledger
                .revoke_key(
                    Principal::user(tenants.acme.clone(), u("alice")),
                    acme.testing.key.id,
                    RevokeReason::Compromised,
                )
                .await?;
            if let Some(k) = m.named("Developer Testing") {
                k.retired_after = Some(48);
            }
        }
        60 => {
            m.ledger.remove_user(acme.admin.clone(), u("carol")).await?;
            for k in m.keys.iter_mut().filter(|k| {
                ["Data Team Automation", "Inventory Integration", "CRM Sync"].contains(&k.name)
            }) {
                k.retired_after = Some(62);
            }
        }
        80 => {
            m.ledger
                .remove_user(Principal::operator(tenants.initech.clone()), u("samir"))
                .await?;
            if let Some(k) = m.named("Legacy Batch") {
                k.retired_after = Some(81);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The id of the newest key of `tenant` whose name holds `name`, if any.
fn first_named(
    ledger: &Keyledger,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<keyledger_core::KeyId>> {
    let page = ledger.list_keys(
        tenant,
        &keyledger_runtime::ListQuery {
            q: Some(name.into()),
            ..Default::default()
        },
    )?;
    Ok(page.keys.first().map(|(k, _)| k.id))
}

/// Day 20: alice gives "Deploy Bot" a description and metadata (a
/// `KeyUpdated`, each field before and after in the trail).
async fn describe_deploy_bot(m: &mut Minter<'_>, acme: &TenantId) -> Result<()> {
    if let Some(id) = first_named(m.ledger, acme, "Deploy Bot")? {
        let mut change =
            keyledger_core::UpdateKey::new(Principal::user(acme.clone(), u("alice")), id);
        change.description = Some(Some("Deploys tagged releases from CI".into()));
        change.meta = Some(Some(
            keyledger_core::Meta::new(r#"{"team":"platform"}"#.into())
                .map_err(|e| crate::error::Failure::msg(e.to_string()))?,
        ));
        m.ledger.update_key(change).await?;
    }
    Ok(())
}

/// Day 30: alice rotates "Production Web App" with a week's grace; its
/// callers move to the new secret by day 38.
async fn rotate_web_app(m: &mut Minter<'_>, acme: &TenantId) -> Result<()> {
    if let Some(old) = first_named(m.ledger, acme, "Production Web App")? {
        let new = m
            .ledger
            .rotate_key(
                Principal::user(acme.clone(), u("alice")),
                old,
                7 * 86_400,
                None,
            )
            .await?;
        if let Some(k) = m.named("Production Web App") {
            k.retired_after = Some(38);
        }
        m.keys.push(DemoKey {
            secret: new.secret,
            name: "Production Web App",
            daily: 1400,
            asks: None,
            retired_after: None,
        });
    }
    Ok(())
}

/// A day's traffic, from `morning` on: busier on weekdays, spread over
/// the day's slots, every key still in use presented by its callers; the
/// uses are written at the end of each slot.
async fn traffic(
    m: &Minter<'_>,
    clock: &ManualClock,
    dice: &mut Dice,
    day: i32,
    morning: Timestamp,
) -> Result<()> {
    let weekday = (day + 3).rem_euclid(7) < 5;
    for slot in 0..SLOTS_PER_DAY {
        forward(
            clock,
            Timestamp::from_micros(
                morning.as_micros()
                    + slot * 2 * MICROS_PER_HOUR
                    + dice.below(MICROS_PER_HOUR as u64) as i64,
            ),
        );
        for k in &m.keys {
            if k.retired_after.is_some_and(|last| day > last) {
                continue;
            }
            let base = if weekday { k.daily } else { k.daily / 3 };
            let n = (base / SLOTS_PER_DAY as u64) / 2 + dice.below(base / SLOTS_PER_DAY as u64 + 1);
            for i in 0..n {
                let scope = if k.asks.is_some() && i % 17 == 0 {
                    k.asks
                } else {
                    None
                };
                let _ = m.ledger.verify(k.secret.expose(), scope);
            }
        }
        m.ledger.flush_usage().await?;
    }
    Ok(())
}
