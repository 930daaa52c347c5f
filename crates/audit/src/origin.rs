//! The origins keyledger signs a tenant's checkpoints under: `keyledger/<tenant>`
//! in the first checkpoint epoch, `keyledger/<tenant>/epoch-<n>` after each
//! `keyledger recover` (`docs/audit.md`).

/// The checkpoint origin (and key name) of a tenant in its first
/// checkpoint epoch: `keyledger/<tenant>`.
pub fn origin(tenant: &str) -> String {
    format!("keyledger/{tenant}")
}

/// The checkpoint origin of a tenant in checkpoint epoch `epoch`:
/// `keyledger/<tenant>` for the first, `keyledger/<tenant>/epoch-<n>` after
/// each `keyledger recover` (a tenant id holds no `/`).
pub fn origin_in(tenant: &str, epoch: u64) -> String {
    if epoch <= 1 {
        origin(tenant)
    } else {
        format!("keyledger/{tenant}/epoch-{epoch}")
    }
}

/// The checkpoint epoch `origin` names for `tenant`, if it is one of the
/// tenant's origins.
pub fn epoch_of_origin(tenant: &str, origin: &str) -> Option<u64> {
    let rest = origin.strip_prefix("keyledger/")?.strip_prefix(tenant)?;
    if rest.is_empty() {
        return Some(1);
    }
    let n: u64 = rest.strip_prefix("/epoch-")?.parse().ok()?;
    (n >= 2 && origin_in(tenant, n) == origin).then_some(n)
}
