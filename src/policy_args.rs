//! Key policy on the command line: `--meta`, `--credits`, `--refill` and
//! `--limit` of `keys create` and `keys update`, and the other fields of
//! `keys update`.
//!
//! The flags are turned into the API's JSON body, which goes to a server
//! as it is (`--url`) or, on a data directory, is read by the same code
//! that reads it in the server (`keyledger_server::policy`), so both check
//! it alike and word a refusal alike.

use clap::Args as ClapArgs;
use keyledger_server::policy::{CreditsBody, KeyPatch, LimitBody, NewPolicy, UpdateKeyRequest};
use serde_json::{Map, Value, json};

use crate::cli::{ActingArg, TenantArg, parse_duration, split_list};
use crate::error::{Failure, Result};

/// The policy flags of `keys create` (and, with their `--clear-…`/`--no-…`
/// partners, of `keys update`).
#[derive(ClapArgs, Debug, Default)]
pub struct PolicyArgs {
    /// Metadata: a JSON object, e.g. '{"plan":"pro"}' (at most 4096 bytes).
    #[arg(long, value_name = "JSON")]
    pub meta: Option<String>,
    /// Credits: how many valid verifications the key has (none: unlimited).
    #[arg(long, value_name = "N")]
    pub credits: Option<u64>,
    /// Refill the credits: AMOUNT/daily, AMOUNT/monthly or
    /// AMOUNT/monthly@DAY (00:00 UTC; the credits are set to AMOUNT).
    #[arg(long, value_name = "AMOUNT/INTERVAL[@DAY]", requires = "credits")]
    pub refill: Option<String>,
    /// A rate limit, NAME=LIMIT/DURATION, e.g. burst=10/1s or
    /// hourly=1000/1h (DURATION in ms, s, m, h or d); repeat for several.
    #[arg(long = "limit", value_name = "NAME=LIMIT/DURATION")]
    pub limits: Vec<String>,
}

impl PolicyArgs {
    /// The flags' fields of the API's body, added to `body`.
    pub fn add_to(&self, body: &mut Map<String, Value>) -> Result<()> {
        if let Some(m) = &self.meta {
            let v: Value = serde_json::from_str(m)
                .map_err(|e| Failure::msg(format!("--meta: not JSON: {e}")))?;
            if !v.is_object() {
                return Err(Failure::msg(
                    "--meta: must be a JSON object, e.g. '{\"plan\":\"pro\"}'",
                ));
            }
            body.insert("meta".into(), v);
        }
        if let Some(remaining) = self.credits {
            let mut credits = json!({ "remaining": remaining });
            if let Some(r) = &self.refill {
                credits["refill"] = refill(r)?;
            }
            body.insert("credits".into(), credits);
        }
        if !self.limits.is_empty() {
            let limits = self
                .limits
                .iter()
                .map(|l| limit(l))
                .collect::<Result<Vec<_>>>()?;
            body.insert("limits".into(), Value::Array(limits));
        }
        Ok(())
    }

    /// On a data directory: the flags read and checked as the server reads
    /// a create body.
    pub fn read(&self) -> Result<NewPolicy> {
        let mut body = Map::new();
        self.add_to(&mut body)?;
        let field = |name: &str| body.get(name).cloned();
        let meta = field("meta")
            .map(serde_json::from_value::<Map<String, Value>>)
            .transpose()?;
        let credits = field("credits")
            .map(serde_json::from_value::<CreditsBody>)
            .transpose()?;
        let limits = field("limits")
            .map(serde_json::from_value::<Vec<LimitBody>>)
            .transpose()?;
        NewPolicy::read(meta, credits, limits).map_err(refused)
    }
}

/// The server's refusal as the command line's: its message, with the
/// field named.
pub fn refused(e: keyledger_server::ApiError) -> Failure {
    Failure::msg(e.message().to_owned())
}

/// `AMOUNT/daily`, `AMOUNT/monthly`, `AMOUNT/monthly@DAY`.
fn refill(text: &str) -> Result<Value> {
    let bad = || {
        Failure::msg(format!(
            "--refill `{text}`: give AMOUNT/daily, AMOUNT/monthly or AMOUNT/monthly@DAY, \
             e.g. 1000/monthly@15"
        ))
    };
    let (amount, rest) = text.split_once('/').ok_or_else(bad)?;
    let amount: u64 = amount.trim().parse().map_err(|_| bad())?;
    let (interval, day) = match rest.split_once('@') {
        Some((i, d)) => (i, Some(d.trim().parse::<u8>().map_err(|_| bad())?)),
        None => (rest, None),
    };
    let interval = interval.trim();
    if !matches!(interval, "daily" | "monthly") {
        return Err(bad());
    }
    let mut v = json!({ "amount": amount, "interval": interval });
    if let Some(d) = day {
        v["day"] = json!(d);
    }
    Ok(v)
}

/// `NAME=LIMIT/DURATION`, the duration as `parse_duration` reads it.
fn limit(text: &str) -> Result<Value> {
    let bad = |why: &str| {
        Failure::msg(format!(
            "--limit `{text}`: {why}; give NAME=LIMIT/DURATION, e.g. burst=10/1s"
        ))
    };
    let (name, rest) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let (n, duration) = rest.split_once('/').ok_or_else(|| bad("no `/`"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| bad("LIMIT is not a whole number"))?;
    let duration = parse_duration(duration).map_err(|e| bad(&e))?;
    let ms = u64::try_from(duration.as_millis()).map_err(|_| bad("the duration is too long"))?;
    Ok(json!({ "name": name.trim(), "limit": n, "duration": ms }))
}

/// `keys update`: a key's changes, as flags.
#[derive(ClapArgs, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    #[command(flatten)]
    pub acting: ActingArg,
    /// `key_<ulid>`.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A new description.
    #[arg(long, conflicts_with = "clear_description")]
    pub description: Option<String>,
    /// Remove the description.
    #[arg(long)]
    pub clear_description: bool,
    /// A new expiry (RFC 3339, in the future).
    #[arg(long, conflicts_with = "no_expiry")]
    pub expires_at: Option<String>,
    /// Never expire (only if you could create a key that never expires).
    #[arg(long)]
    pub no_expiry: bool,
    /// The new scopes, replacing the old (repeat for several; only scopes
    /// you could grant).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Remove the metadata.
    #[arg(long, conflicts_with = "meta")]
    pub clear_meta: bool,
    /// Remove the credits (unlimited uses).
    #[arg(long, conflicts_with_all = ["credits", "refill"])]
    pub no_credits: bool,
    /// Remove every rate limit.
    #[arg(long, conflicts_with = "limits")]
    pub no_limits: bool,
}

impl UpdateArgs {
    /// The `PATCH /v1/keys/{id}` body (JSON merge patch): the fields named.
    pub fn body(&self) -> Result<Value> {
        let mut body = Map::new();
        if let Some(n) = &self.name {
            body.insert("name".into(), json!(n));
        }
        if let Some(d) = &self.description {
            body.insert("description".into(), json!(d));
        } else if self.clear_description {
            body.insert("description".into(), Value::Null);
        }
        if let Some(t) = &self.expires_at {
            keyledger_core::Timestamp::parse_rfc3339(t)
                .map_err(|e| Failure::msg(format!("--expires-at: {e}")))?;
            body.insert("expires_at".into(), json!(t));
        } else if self.no_expiry {
            body.insert("expires_at".into(), Value::Null);
        }
        let scopes = split_list(&self.scopes);
        for s in &scopes {
            s.parse::<keyledger_core::Scope>()
                .map_err(|e| Failure::msg(format!("--scope: {e}")))?;
        }
        if !scopes.is_empty() {
            body.insert("scopes".into(), json!(scopes));
        }
        self.policy.add_to(&mut body)?;
        for (cleared, field) in [
            (self.clear_meta, "meta"),
            (self.no_credits, "credits"),
            (self.no_limits, "limits"),
        ] {
            if cleared {
                body.insert(field.into(), Value::Null);
            }
        }
        if body.is_empty() {
            return Err(Failure::msg(
                "name something to change: --name, --description, --clear-description, \
                 --expires-at, --no-expiry, --scope, --meta, --clear-meta, --credits, \
                 --refill, --no-credits, --limit or --no-limits",
            ));
        }
        Ok(Value::Object(body))
    }

    /// On a data directory: the change read and checked as the server reads
    /// a `PATCH` body.
    pub fn read(&self) -> Result<KeyPatch> {
        let body = self.body()?;
        // The times and scopes were checked as flags: what is left to fail
        // here is a value the flags' own parsers let through.
        let request: UpdateKeyRequest =
            serde_json::from_value(body).map_err(|e| Failure::msg(e.to_string()))?;
        request.read().map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_apis_body() {
        let p = PolicyArgs {
            meta: Some(r#"{"plan": "pro"}"#.into()),
            credits: Some(100),
            refill: Some("1000/monthly@15".into()),
            limits: vec!["burst=10/1s".into(), "hourly=1000/1h".into()],
        };
        let mut body = Map::new();
        p.add_to(&mut body).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({
                "meta": {"plan": "pro"},
                "credits": {"remaining": 100, "refill": {"amount": 1000, "interval": "monthly", "day": 15}},
                "limits": [
                    {"name": "burst", "limit": 10, "duration": 1000},
                    {"name": "hourly", "limit": 1000, "duration": 3_600_000},
                ],
            })
        );
        let read = p.read().unwrap();
        assert_eq!(read.limits.len(), 2);
        assert_eq!(read.meta.unwrap().as_str(), r#"{"plan":"pro"}"#);
    }

    #[test]
    fn bad_flags_say_what_they_take() {
        for (refill_text, ok) in [
            ("10/daily", true),
            ("10/monthly", true),
            ("10/monthly@31", true),
            ("10/weekly", false),
            ("ten/daily", false),
            ("10", false),
            ("10/monthly@x", false),
        ] {
            assert_eq!(refill(refill_text).is_ok(), ok, "{refill_text}");
        }
        for (limit_text, ok) in [
            ("a=1/1s", true),
            ("a=1/100ms", true),
            ("a=1", false),
            ("a1/1s", false),
            ("a=x/1s", false),
            ("a=1/1w", false),
        ] {
            assert_eq!(limit(limit_text).is_ok(), ok, "{limit_text}");
        }
        // Read as the server reads it: the field named.
        let p = PolicyArgs {
            limits: vec!["a=1/1s".into(), "a=2/1m".into()],
            ..PolicyArgs::default()
        };
        assert!(p.read().unwrap_err().to_string().contains("limits[1].name"));
    }
}
