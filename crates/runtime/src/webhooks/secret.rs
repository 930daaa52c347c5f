//! Signing secrets: derived, never stored (docs/adr/0007-webhook-secrets.md).
//!
//! One root key, 32 bytes from the OS CSPRNG, lives in the data directory
//! ([`ROOT_KEY_FILE`], mode 0600, like the audit signing key). A
//! subscription's secret is HMAC-SHA256(root, label ‖ subscription id):
//! the log holds only the id, so nothing secret is in it, encrypted or not.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use hmac::{KeyInit, Mac};
use keyledger_core::WebhookId;

use crate::Error;

/// The root key's file in the data directory (64 hex digits).
pub const ROOT_KEY_FILE: &str = "webhook-root.key";

/// Domain separation: a derived secret is never another HMAC's output.
const LABEL: &[u8] = b"keyledger webhook signing secret v1\n";

/// The root key every subscription's secret is derived from.
#[derive(Clone)]
pub(crate) struct RootKey([u8; 32]);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(…)")
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl RootKey {
    /// Reads the root key from `dir`, creating it on first use.
    pub(crate) fn load_or_create(dir: &Path, entropy: &dyn crate::Entropy) -> Result<Self, Error> {
        let path = dir.join(ROOT_KEY_FILE);
        let fail =
            |what: &str, e: std::io::Error| Error::io(format!("{what} {}", path.display()), e);
        match crate::datadir::open_no_follow(OpenOptions::new().read(true), &path)
            .and_then(std::io::read_to_string)
        {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "not 64 hex digits",
                        );
                        fail("cannot read", e)
                    })?;
                return Ok(RootKey(bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("cannot read", e)),
        }
        let mut key = [0u8; 32];
        entropy.fill(&mut key).map_err(Error::unavailable)?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = crate::datadir::open_no_follow(&mut options, &path)
            .map_err(|e| fail("cannot create", e))?;
        file.write_all(format!("{}\n", hex::encode(key)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("cannot write", e))?;
        Ok(RootKey(key))
    }

    /// A root key from bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        RootKey(bytes)
    }

    /// The subscription's 32 secret bytes.
    pub(crate) fn secret_bytes(&self, id: WebhookId) -> [u8; 32] {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(LABEL);
        mac.update(id.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The subscription's secret as the receiver is given it: `whsec_` and
    /// the base64 of its bytes (Standard Webhooks).
    pub(crate) fn secret_text(&self, id: WebhookId) -> String {
        format!("whsec_{}", crate::signing_key::b64(&self.secret_bytes(id)))
    }
}

/// The `webhook-signature` header's value for one message:
/// `v1,<base64 of HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
pub(crate) fn sign(secret: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        crate::signing_key::b64(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_differ_per_subscription_and_root() {
        let a = RootKey::from_bytes([1; 32]);
        let b = RootKey::from_bytes([2; 32]);
        let (w1, w2) = (WebhookId::from_u128(1), WebhookId::from_u128(2));
        assert_ne!(a.secret_bytes(w1), a.secret_bytes(w2));
        assert_ne!(a.secret_bytes(w1), b.secret_bytes(w1));
        assert_eq!(a.secret_text(w1), a.secret_text(w1));
        assert!(a.secret_text(w1).starts_with("whsec_"));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks Python library's tests
        // (libraries/python/tests/test_webhooks.py, `test_sign_function`).
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_else(|e| panic!("{e}"));
        let got = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
