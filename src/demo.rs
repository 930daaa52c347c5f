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
        return Err(Failure(format!(
            "{place} already holds a ledger; demo fills only an empty log (use --data to pick another)"
        )));
    }
    let today = SystemClock.now_day_start();
    let start = today.minus_seconds(DAYS as u64 * 86_400);
    let clock = ManualClock::new(Timestamp::from_micros(
        start.as_micros() + 9 * MICROS_PER_HOUR,
    ));
    let config = Config {
        prefix: KeyPrefix::new(prefix).map_err(Failure)?,
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
    let (acme, globex, initech) = (t("acme"), t("globex"), t("initech"));
    let mut keys: Vec<DemoKey> = Vec::new();

    /// Creates a key and remembers its secret (in memory only) for traffic.
    async fn mint(
        ledger: &Keyledger,
        keys: &mut Vec<DemoKey>,
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
        let created = ledger.create_key(who, new).await?;
        let secret = created.secret.clone();
        keys.push(DemoKey {
            secret,
            name,
            daily,
            asks,
            retired_after: None,
        });
        Ok(created)
    }

    // Day 0: the keys of three tenants, minted by the operator (as an
    // onboarding script would) for each user.
    clock.set(at(0, 9));
    let op = |t: &TenantId| Principal::operator(t.clone());
    let all_but_remove = NewKey::default();
    let ci_scopes = scopes(&[
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::AuditRead,
        Scope::UsageRead,
    ]);
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "alice",
        ("Production Web App", 1400, None),
        NewKey {
            description: Some("Checkout and account pages".into()),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "alice",
        ("Staging Environment", 300, None),
        all_but_remove.clone(),
    )
    .await?;
    let ci = mint(
        ledger,
        &mut keys,
        op(&acme),
        "alice",
        ("CI/CD Pipeline", 120, None),
        NewKey {
            scopes: ci_scopes,
            ..all_but_remove.clone()
        },
    )
    .await?;
    let admin = mint(
        ledger,
        &mut keys,
        op(&acme),
        "alice",
        ("Admin Console", 20, None),
        NewKey {
            scopes: Some(ScopeSet::ALL),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "bob",
        ("GitHub Actions CI", 250, None),
        all_but_remove.clone(),
    )
    .await?;
    let mobile_expiry = at(75, 0);
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "bob",
        ("Mobile App v2", 900, None),
        NewKey {
            expires_at: Some(mobile_expiry),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "carol",
        ("Data Team Automation", 200, Some(Scope::KeysWrite)),
        NewKey {
            scopes: scopes(&[Scope::UsageRead, Scope::AuditRead]),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "carol",
        ("Inventory Integration", 650, None),
        all_but_remove.clone(),
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&acme),
        "carol",
        ("CRM Sync", 400, None),
        all_but_remove.clone(),
    )
    .await?;
    let testing = mint(
        ledger,
        &mut keys,
        op(&acme),
        "dave",
        ("Developer Testing", 60, None),
        all_but_remove.clone(),
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&globex),
        "erin",
        ("Production API", 1100, None),
        all_but_remove.clone(),
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&globex),
        "erin",
        ("Analytics Export", 150, Some(Scope::KeysRead)),
        NewKey {
            scopes: scopes(&[Scope::UsageRead]),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&globex),
        "frank",
        ("Partner Integration", 350, None),
        NewKey {
            description: Some("Read-only access for a reseller".into()),
            scopes: scopes(&[Scope::KeysRead]),
            ..all_but_remove.clone()
        },
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&initech),
        "peter",
        ("TPS Reports", 500, None),
        all_but_remove.clone(),
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&initech),
        "milton",
        ("Stapler Service", 80, None),
        all_but_remove.clone(),
    )
    .await?;
    mint(
        ledger,
        &mut keys,
        op(&initech),
        "samir",
        ("Legacy Batch", 220, None),
        all_but_remove.clone(),
    )
    .await?;

    let ci_key = Principal::api_key(
        acme.clone(),
        ci.key.id,
        ci.key.name.clone(),
        u("alice"),
        ci.key.scopes,
    );
    let admin_key = Principal::api_key(
        acme.clone(),
        admin.key.id,
        admin.key.name.clone(),
        u("alice"),
        admin.key.scopes,
    );

    for day in 0..DAYS {
        // Management on chosen days, as the trail should show it.
        forward(clock, at(day, 8));
        match day {
            10 => {
                mint(
                    ledger,
                    &mut keys,
                    ci_key.clone(),
                    "alice",
                    ("Deploy Bot", 90, None),
                    NewKey {
                        scopes: scopes(&[Scope::KeysRead]),
                        ..NewKey::default()
                    },
                )
                .await?;
            }
            30 => {
                let web = ledger.list_keys(
                    &acme,
                    &keyledger_runtime::ListQuery {
                        q: Some("Production Web App".into()),
                        ..Default::default()
                    },
                )?;
                if let Some((old, _)) = web.keys.first() {
                    let new = ledger
                        .rotate_key(
                            Principal::user(acme.clone(), u("alice")),
                            old.id,
                            7 * 86_400,
                            None,
                        )
                        .await?;
                    if let Some(k) = keys.iter_mut().find(|k| k.name == "Production Web App") {
                        k.retired_after = Some(38);
                    }
                    keys.push(DemoKey {
                        secret: new.secret,
                        name: "Production Web App",
                        daily: 1400,
                        asks: None,
                        retired_after: None,
                    });
                }
            }
            45 => {
                ledger
                    .revoke_key(
                        Principal::user(acme.clone(), u("alice")),
                        testing.key.id,
                        RevokeReason::Compromised,
                    )
                    .await?;
                if let Some(k) = keys.iter_mut().find(|k| k.name == "Developer Testing") {
                    k.retired_after = Some(48);
                }
            }
            60 => {
                ledger.remove_user(admin_key.clone(), u("carol")).await?;
                for k in keys.iter_mut().filter(|k| {
                    ["Data Team Automation", "Inventory Integration", "CRM Sync"].contains(&k.name)
                }) {
                    k.retired_after = Some(62);
                }
            }
            80 => {
                ledger
                    .remove_user(Principal::operator(initech.clone()), u("samir"))
                    .await?;
                if let Some(k) = keys.iter_mut().find(|k| k.name == "Legacy Batch") {
                    k.retired_after = Some(81);
                }
            }
            _ => {}
        }
        // Traffic: busier on weekdays, spread over the day.
        let weekday = (day + 3).rem_euclid(7) < 5;
        for slot in 0..SLOTS_PER_DAY {
            forward(
                clock,
                Timestamp::from_micros(
                    at(day, 7).as_micros()
                        + slot * 2 * MICROS_PER_HOUR
                        + dice.below(MICROS_PER_HOUR as u64) as i64,
                ),
            );
            for k in &keys {
                if k.retired_after.is_some_and(|last| day > last) {
                    continue;
                }
                let base = if weekday { k.daily } else { k.daily / 3 };
                let n =
                    (base / SLOTS_PER_DAY as u64) / 2 + dice.below(base / SLOTS_PER_DAY as u64 + 1);
                for i in 0..n {
                    let scope = if k.asks.is_some() && i % 17 == 0 {
                        k.asks
                    } else {
                        None
                    };
                    let _ = ledger.verify(k.secret.expose(), scope);
                }
            }
            ledger.flush_usage().await?;
        }
    }
    Ok(keys.len())
}
