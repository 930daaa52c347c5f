//! `POST /v1/keys/leaked`: leak response.
//!
//! Three kinds of caller may report secrets found where they do not
//! belong:
//!
//! * any valid API key, whatever its scopes and tenant (holding a secret
//!   is enough to have it revoked, so a key may report another tenant's);
//! * the operator token (no `Keyledger-Tenant` needed: a report acts in
//!   whichever tenants the keys are in);
//! * a secret-scanning partner configured with `--leak-partner
//!   NAME=PATH.pem`, whose request carries no credential but is signed as
//!   GitHub's secret-scanning partner programme signs it: ECDSA P-256 with
//!   SHA-256 over the raw body, the DER signature base64 in
//!   `Github-Public-Key-Signature`, and `Github-Public-Key-Identifier`
//!   naming the key. The signature is checked against every configured
//!   partner key (a handful), so the identifier's form does not matter.
//!
//! The body is `{"secrets": [..], "source"?, "url"?}`, or GitHub's partner
//! body, a JSON array of `{"token", "type", "url", "source"}`. The answer
//! is always `200 {"reported", "found"}`: how many were listed, and how
//! many distinct ones are keys of this deployment. It never says which,
//! nor whose; malformed strings, bad checksums and unknown keys are
//! counted as not found, never refused.

use std::path::Path;

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use keyledger_core::Reporter;
use keyledger_core::limits::{LEAK_PARTNER_CHARS_MAX, LEAK_SECRETS_MAX};
use keyledger_runtime::ReportedSecret;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AnyScope, Authed};
use crate::error::{ApiError, JsonBytes, parse_json, responses};

/// Largest leak report body, in bytes (a larger one is answered 413): a
/// thousand secrets with their addresses fit.
pub const LEAK_BODY_BYTES_MAX: usize = 1024 * 1024;

/// The header carrying a partner's signature (GitHub's name).
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// The header naming a partner's key (GitHub's name).
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";

/// The leak route, with its own body limit.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report_leaked))
        .layer(DefaultBodyLimit::max(LEAK_BODY_BYTES_MAX))
}

/// The secret-scanning partners a server accepts signed reports from.
#[derive(Clone, Debug, Default)]
pub struct LeakPartners {
    partners: Vec<(String, Vec<VerifyingKey>)>,
}

impl LeakPartners {
    /// No partner: signed reports are refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `NAME=PATH.pem` (a file of one or more PEM `PUBLIC KEY`
    /// blocks, P-256, as GitHub publishes them) and adds the partner.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let (name, path) = spec
            .split_once('=')
            .ok_or_else(|| format!("--leak-partner takes NAME=PATH.pem, not `{spec}`"))?;
        let name = name.trim();
        let name_ok = !name.is_empty()
            && name.chars().count() <= LEAK_PARTNER_CHARS_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!(
                "a partner's name is 1 to {LEAK_PARTNER_CHARS_MAX} of a-z, 0-9 and `-`; `{}` is not",
                name.escape_debug()
            ));
        }
        if self.partners.iter().any(|(n, _)| n == name) {
            return Err(format!("the partner `{name}` is named twice"));
        }
        let keys = read_keys(Path::new(path))?;
        self.partners.push((name.to_owned(), keys));
        Ok(())
    }

    /// The partners' names, in the order given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.partners.iter().map(|(n, _)| n.as_str())
    }

    /// The partner whose key signed `body` with `signature` (DER), if any.
    fn signer(&self, body: &[u8], signature: &DerSignature) -> Option<&str> {
        self.partners
            .iter()
            .find(|(_, keys)| keys.iter().any(|k| k.verify(body, signature).is_ok()))
            .map(|(name, _)| name.as_str())
    }
}

/// Every `PUBLIC KEY` block of a PEM file, each a P-256 key.
fn read_keys(path: &Path) -> Result<Vec<VerifyingKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end = block
            .find(END)
            .ok_or_else(|| format!("{}: a PUBLIC KEY block does not end", path.display()))?
            + END.len();
        let key = VerifyingKey::from_public_key_pem(&block[..end]).map_err(|e| {
            format!(
                "{}: key {} is not a P-256 public key: {e}",
                path.display(),
                keys.len() + 1
            )
        })?;
        keys.push(key);
        rest = &block[end..];
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no `{BEGIN}` block (a partner's keys are PEM public keys)",
            path.display()
        ));
    }
    Ok(keys)
}

/// Body of `POST /v1/keys/leaked` (or GitHub's partner body, a JSON array
/// of [`PartnerMatch`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReportRequest {
    /// The secrets found: any text; what is not a well-formed key of this
    /// deployment is counted as not found. At most 1000.
    #[schema(max_items = 1000)]
    pub secrets: Vec<String>,
    /// Where they were found, in your words (`content`, `commit`, `paste`,
    /// …): at most 100 characters.
    #[serde(default)]
    #[schema(max_length = 100)]
    pub source: Option<String>,
    /// The address where they were found: at most 2048 characters.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
}

/// One match of GitHub's secret-scanning partner body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PartnerMatch {
    /// The secret found.
    pub token: String,
    /// The partner's name for the pattern that matched (not recorded).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Where it was found (may be empty).
    #[serde(default)]
    pub url: Option<String>,
    /// What it was found in (`content`, `commit`, `pull_request_title`, …).
    #[serde(default)]
    pub source: Option<String>,
}

/// Either body.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AnyReport {
    Partner(Vec<PartnerMatch>),
    Ours(LeakReportRequest),
}

/// The answer to a leak report: the same shape whatever was found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeakReportBody {
    /// How many secrets the report listed.
    pub reported: usize,
    /// How many distinct ones are keys of this deployment (in any tenant,
    /// in any state). Each one that was active is now revoked with reason
    /// `compromised`. Which ones, and whose, is never said.
    pub found: usize,
}

/// Who is reporting.
async fn reporter(state: &AppState, request: Request) -> Result<(Reporter, Request), ApiError> {
    let (mut parts, body) = request.into_parts();
    if parts.headers.contains_key(SIGNATURE_HEADER) {
        // Checked once the body is read.
        return Ok((
            Reporter::Partner(String::new()),
            Request::from_parts(parts, body),
        ));
    }
    let credential = crate::auth::presented(&parts.headers)?;
    let reporter = if state.operator().matches(credential) {
        Reporter::Operator
    } else {
        let authed = Authed::<AnyScope>::from_request_parts(&mut parts, state).await?;
        Reporter::Key(authed.principal())
    };
    Ok((reporter, Request::from_parts(parts, body)))
}

/// The partner that signed `body`, from the signature header.
fn partner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let refused = |why: &str| ApiError::unauthorized("invalid_signature", why.to_owned());
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused("the `Github-Public-Key-Signature` header is not readable"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| refused("the signature is not base64"))?;
    let signature =
        DerSignature::from_bytes(&der).map_err(|_| refused("the signature is not DER ECDSA"))?;
    state
        .leak_partners()
        .signer(body, &signature)
        .map(str::to_owned)
        .ok_or_else(|| {
            refused(
                "the signature does not verify with any configured partner's key \
                 (`--leak-partner NAME=PATH.pem`)",
            )
        })
}

/// Report leaked secrets: each known, active key among them is revoked.
///
/// Any valid API key may report (holding a secret is enough to have it
/// revoked, so a key may report another tenant's keys), the operator token
/// too (no `Keyledger-Tenant` needed), and a secret-scanning partner
/// configured with `--leak-partner`, with no credential but a request
/// signed as GitHub signs it (`Github-Public-Key-Signature`: base64 DER
/// ECDSA P-256/SHA-256 over the raw body; `Github-Public-Key-Identifier`).
/// The body is `{secrets, source?, url?}` or GitHub's partner body (an
/// array of `{token, type, url, source}`). Every key found active is
/// revoked with reason `compromised` in one atomic append, with a
/// `KeyLeaked` event recording the source and URL. The answer is always
/// `{reported, found}`: never which keys, nor whose.
#[utoipa::path(
    post, path = "/v1/keys/leaked", tag = "keys",
    request_body = LeakReportRequest,
    responses(
        (status = 200, description = "How many were reported and how many are keys here", body = LeakReportBody),
        (status = 400, description = "More than 1000 secrets, or a body of neither shape", body = crate::error::ErrorBody),
        (status = 401, description = "No valid key, operator token or partner signature", body = crate::error::ErrorBody),
        responses::Body, responses::Common,
    ),
    security(("bearer" = []), ("api_key" = []), ("operator" = []), ("partner_signature" = [])),
)]
async fn report_leaked(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<LeakReportBody>, ApiError> {
    let (reporter, request) = reporter(&state, request).await?;
    let headers = request.headers().clone();
    let JsonBytes(body) = JsonBytes::from_request(request, &state).await?;
    let reporter = match reporter {
        Reporter::Partner(_) => Reporter::Partner(partner(&state, &headers, &body)?),
        other => other,
    };
    let secrets: Vec<ReportedSecret> = match parse_json::<AnyReport>(&body)? {
        AnyReport::Partner(matches) => matches
            .into_iter()
            .map(|m| ReportedSecret {
                secret: m.token,
                source: m.source,
                url: m.url,
            })
            .collect(),
        AnyReport::Ours(r) => r
            .secrets
            .into_iter()
            .map(|secret| ReportedSecret {
                secret,
                source: r.source.clone(),
                url: r.url.clone(),
            })
            .collect(),
    };
    if secrets.len() > LEAK_SECRETS_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_secrets",
            format!(
                "a report lists at most {LEAK_SECRETS_MAX} secrets, not {}; send several",
                secrets.len()
            ),
        ));
    }
    // The texts that are stored must not hold a key (the secrets are
    // hashed, never stored).
    let holds_key = |t: &Option<String>| t.as_deref().is_some_and(crate::redact::holds_key);
    if secrets
        .iter()
        .any(|s| holds_key(&s.source) || holds_key(&s.url))
    {
        return Err(ApiError::key_in_body());
    }
    let report = state.ledger().report_leaked(reporter, secrets).await?;
    Ok(Json(LeakReportBody {
        reported: report.reported,
        found: report.found,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published sample: its secret-scanning key
    /// `bcb53661…7518c`, and a request signed with it, from its partner
    /// programme's documentation.
    const GITHUB_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\n\
        AjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n\
        -----END PUBLIC KEY-----\n";
    const GITHUB_OLD_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\n\
        kCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n\
        -----END PUBLIC KEY-----\n";
    const PAYLOAD: &str = r#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;
    const SIGNATURE: &str = "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";

    fn signature() -> DerSignature {
        let der = base64::engine::general_purpose::STANDARD
            .decode(SIGNATURE)
            .unwrap();
        DerSignature::from_bytes(&der).unwrap()
    }

    #[test]
    fn githubs_signed_sample_verifies_and_a_changed_body_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("github.pem");
        // Both of GitHub's keys in one file, the signing one second.
        std::fs::write(&pem, format!("{GITHUB_OLD_KEY}{GITHUB_KEY}")).unwrap();
        let mut partners = LeakPartners::none();
        partners
            .add_spec(&format!("github={}", pem.display()))
            .unwrap();
        assert_eq!(
            partners.signer(PAYLOAD.as_bytes(), &signature()),
            Some("github")
        );
        let changed = PAYLOAD.replace("commit", "content");
        assert_eq!(partners.signer(changed.as_bytes(), &signature()), None);
        assert_eq!(
            LeakPartners::none().signer(PAYLOAD.as_bytes(), &signature()),
            None
        );
        // The partner body parses as a report.
        let report: AnyReport = parse_json(PAYLOAD.as_bytes()).unwrap();
        assert!(matches!(report, AnyReport::Partner(m) if m[0].token == "some_token"));
    }

    #[test]
    fn partner_specs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("k.pem");
        std::fs::write(&pem, GITHUB_KEY).unwrap();
        let mut p = LeakPartners::none();
        for bad in [
            "no-equals-sign".to_owned(),
            format!("Git Hub={}", pem.display()),
            format!("github={}", dir.path().join("missing.pem").display()),
        ] {
            assert!(p.add_spec(&bad).is_err(), "{bad}");
        }
        std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
        let e = p
            .add_spec(&format!("x={}", dir.path().join("empty.pem").display()))
            .unwrap_err();
        assert!(e.contains("no `-----BEGIN PUBLIC KEY-----` block"), "{e}");
        p.add_spec(&format!("github={}", pem.display())).unwrap();
        let e = p
            .add_spec(&format!("github={}", pem.display()))
            .unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        assert_eq!(p.names().collect::<Vec<_>>(), ["github"]);
    }
}
