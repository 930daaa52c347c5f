//! The origins keyledger signs checkpoints under (`docs/audit.md`).
//!
//! A node has a base origin, a schema-less URL naming its logs
//! (`ledger.example.com/log`; `keyledger` before it was configurable):
//!
//! * a tenant's log is `<base>/<tenant>` in its first checkpoint epoch and
//!   `<base>/<tenant>/epoch-<n>` after each `keyledger recover` (a tenant id
//!   holds no `/`);
//! * the global log over every tenant's chain hashes is `<base>` itself,
//!   and `<base>/~epoch-<n>` after recoveries (`~` is in no tenant id).
//!
//! Data directories written before the origin was configurable signed
//! under the base `keyledger`; those checkpoints still verify, as a
//! tenant's checkpoints are recognised under any base.

/// The base origin of data directories from before `--audit-origin`, and
/// the library's default.
pub const LEGACY_BASE: &str = "keyledger";

/// Longest base origin accepted, in bytes.
pub const BASE_BYTES_MAX: usize = 200;

/// The checkpoint origin (and key name) of a tenant in its first
/// checkpoint epoch under the legacy base: `keyledger/<tenant>`.
pub fn origin(tenant: &str) -> String {
    tenant_origin(LEGACY_BASE, tenant, 1)
}

/// The checkpoint origin of a tenant in checkpoint epoch `epoch` under the
/// legacy base `keyledger`.
pub fn origin_in(tenant: &str, epoch: u64) -> String {
    tenant_origin(LEGACY_BASE, tenant, epoch)
}

/// The checkpoint origin of a tenant under `base`: `<base>/<tenant>` for
/// the first epoch, `<base>/<tenant>/epoch-<n>` after.
pub fn tenant_origin(base: &str, tenant: &str, epoch: u64) -> String {
    if epoch <= 1 {
        format!("{base}/{tenant}")
    } else {
        format!("{base}/{tenant}/epoch-{epoch}")
    }
}

/// The origin of the global tree under `base`: `<base>` for the first
/// epoch, `<base>/~epoch-<n>` after.
pub fn global_origin(base: &str, epoch: u64) -> String {
    if epoch <= 1 {
        base.to_owned()
    } else {
        format!("{base}/~epoch-{epoch}")
    }
}

/// The checkpoint epoch `origin` names for `tenant`, if it is one of the
/// tenant's origins under some base (any: a node's base may have changed).
pub fn epoch_of_origin(tenant: &str, origin: &str) -> Option<u64> {
    let named = |rest: &str| {
        rest.strip_suffix(tenant)
            .and_then(|b| b.strip_suffix('/'))
            .is_some_and(|base| check_base(base).is_ok())
    };
    if named(origin) {
        return Some(1);
    }
    let (rest, n) = origin.rsplit_once("/epoch-")?;
    let n: u64 = n.parse().ok()?;
    (n >= 2 && named(rest) && format!("{rest}/epoch-{n}") == origin).then_some(n)
}

/// The epoch of a global origin under `base`, if it is one.
pub fn epoch_of_global_origin(base: &str, origin: &str) -> Option<u64> {
    if origin == base {
        return Some(1);
    }
    let n: u64 = origin
        .strip_prefix(base)?
        .strip_prefix("/~epoch-")?
        .parse()
        .ok()?;
    (n >= 2 && global_origin(base, n) == origin).then_some(n)
}

/// Checks a base origin: a schema-less URL (`host[/path]`), as C2SP
/// tlog-checkpoint asks, usable as a signed-note key name.
pub fn check_base(base: &str) -> Result<(), String> {
    if base.is_empty() || base.len() > BASE_BYTES_MAX {
        return Err(format!("an audit origin is 1 to {BASE_BYTES_MAX} bytes"));
    }
    if base.contains("://") {
        return Err(
            "an audit origin is a URL without its scheme (`ledger.example.com/log`)".into(),
        );
    }
    if base.starts_with('/') || base.ends_with('/') || base.contains("//") {
        return Err("an audit origin neither starts nor ends with `/`".into());
    }
    if base.contains('~') {
        return Err("an audit origin holds no `~` (it marks the global log's epochs)".into());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':');
    if !base.chars().all(ok) {
        return Err(
            "an audit origin holds only letters, digits, `.`, `-`, `_`, `:` and `/`".into(),
        );
    }
    Ok(())
}

/// The default base origin: `<host name>/log`, the schema-less URL of the
/// tiles a node serves at `/log/` (C2SP tlog-tiles: the origin names the
/// prefix). A host name that is not usable gives `localhost/log`.
pub fn default_base(host: Option<&str>) -> String {
    let host = host.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    let base = format!("{host}/log");
    if !host.is_empty() && !host.contains('/') && check_base(&base).is_ok() {
        base
    } else {
        "localhost/log".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_name_their_tenant_and_epoch_under_any_base() {
        for base in ["keyledger", "ledger.example.com/log", "h:8080/a/b"] {
            for epoch in [1, 2, 17] {
                let o = tenant_origin(base, "acme", epoch);
                assert_eq!(epoch_of_origin("acme", &o), Some(epoch), "{o}");
                assert_eq!(epoch_of_origin("acm", &o), None, "{o}");
                assert_eq!(epoch_of_origin("cme", &o), None, "{o}");
                let g = global_origin(base, epoch);
                assert_eq!(epoch_of_global_origin(base, &g), Some(epoch), "{g}");
                assert_eq!(epoch_of_origin("acme", &g), None, "{g}");
            }
        }
        assert_eq!(origin("acme"), "keyledger/acme");
        assert_eq!(origin_in("acme", 2), "keyledger/acme/epoch-2");
        // A tenant named like an epoch is still its own log.
        assert_eq!(epoch_of_origin("epoch-2", "x/epoch-2"), Some(1));
        assert_eq!(epoch_of_origin("acme", "acme"), None);
        assert_eq!(epoch_of_origin("acme", "/acme"), None);
        assert_eq!(epoch_of_origin("acme", "x/acme/epoch-1"), None);
        assert_eq!(epoch_of_origin("acme", "x/acme/epoch-02"), None);
        assert_eq!(epoch_of_global_origin("x", "x/~epoch-1"), None);
        assert_eq!(epoch_of_global_origin("x", "x/acme"), None);
    }

    #[test]
    fn bases_are_schema_less_urls() {
        assert!(check_base("ledger.example.com/log").is_ok());
        for bad in [
            "",
            "https://x/log",
            "x/",
            "/x",
            "a//b",
            "a b",
            "a+b",
            "x/~y",
            "a\nb",
        ] {
            assert!(check_base(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_base(Some("Box-1\n")), "box-1/log");
        assert_eq!(default_base(Some("")), "localhost/log");
        assert_eq!(default_base(Some("a b")), "localhost/log");
        assert_eq!(default_base(None), "localhost/log");
    }
}
