//! Leak response: reported secrets are checked (shape and checksum, no
//! lookup), hashed, and every known, active key among them is revoked in
//! one append (`keyledger_core::leak`). The caller learns how many were
//! reported and how many are keys of this deployment, never which keys
//! or whose.

use std::collections::HashSet;

use keyledger_core::{Command, Leak, ReportLeaked, Reporter, SecretHash, secret};

use crate::{Error, Keyledger};

/// One secret reported leaked, with where it was found.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportedSecret {
    /// The text reported: anything; what is not a well-formed key is
    /// counted as not found.
    pub secret: String,
    /// Where it was found, in the reporter's words.
    pub source: Option<String>,
    /// The address where it was found.
    pub url: Option<String>,
}

impl std::fmt::Debug for ReportedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportedSecret")
            .field("secret", &secret::mask(&self.secret))
            .field("source", &self.source)
            .field("url", &self.url)
            .finish()
    }
}

/// The answer to a leak report, the same shape whatever was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakReport {
    /// How many secrets the report listed.
    pub reported: usize,
    /// How many distinct ones are keys of this deployment, in any tenant
    /// and any state (each such key active when reported is now revoked).
    pub found: usize,
}

impl Keyledger {
    /// Revokes every known, active key among `secrets`, in whichever
    /// tenants, in one append, recording a `KeyLeaked` for each; answers
    /// once that is durable and enforced. Malformed strings, bad checksums
    /// and unknown keys are counted as not found, never refused.
    pub async fn report_leaked(
        &self,
        reporter: Reporter,
        secrets: Vec<ReportedSecret>,
    ) -> Result<LeakReport, Error> {
        let reported = secrets.len();
        let mut hashes: HashSet<SecretHash> = HashSet::new();
        let mut leaks = Vec::with_capacity(secrets.len());
        for s in secrets {
            let text = s.secret.trim();
            // Shape and checksum only: no lookup here, so nothing in the
            // answer depends on a key's state but `found`.
            let secret_hash = secret::check(text).ok().map(|()| SecretHash::of(text));
            hashes.extend(secret_hash);
            leaks.push(Leak {
                secret_hash,
                source: s.source,
                url: s.url,
            });
        }
        // On a shared log, a key another node created a moment ago is
        // found too: a well-formed secret unknown here waits for one
        // catch-up round first, as a verification's miss does.
        if let Some(catch_up) = &self.shared.catch_up {
            let unknown = {
                let read = self.shared.read_model();
                hashes.iter().any(|h| read.ledger.key_by_hash(h).is_none())
            };
            if unknown {
                catch_up.round(crate::catchup::MISS_WAIT_MAX).await;
            }
        }
        self.execute(Command::ReportLeaked(ReportLeaked { reporter, leaks }))
            .await?;
        let read = self.shared.read_model();
        let found = hashes
            .iter()
            .filter(|h| read.ledger.key_by_hash(h).is_some())
            .count();
        Ok(LeakReport { reported, found })
    }
}
