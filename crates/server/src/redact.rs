//! Text shaped like an API key, found and masked wherever the server
//! writes text a client sent: error messages ([`crate::ApiError`]) and log
//! lines ([`MaskingWriter`], which `keyledger serve` logs through). A key
//! sent where no key belongs (a path, a query, a JSON field) is refused
//! before anything reads it (`key_in_url`, `key_in_body`), so it is neither
//! stored nor shown; masking is what remains for any other way a message
//! could quote one.
//!
//! A key is `<prefix>_<body><checksum>` (`keyledger_core::secret`): the
//! prefix differs between deployments (and old keys keep an old one), so
//! the shape is matched, not the configured prefix. Key-shaped is:
//!
//! * a run of at least [`BODY_CHARS`] + [`CHECKSUM_CHARS`] ASCII letters
//!   and digits right after `<prefix>_` (a prefix as the core allows it);
//! * or any run of at least [`BODY_CHARS`] letters and digits holding an
//!   upper-case letter: a key's body without its prefix is still the
//!   secret. (Hex digests and cursors, lower-case only, are left alone.)
//!
//! A match is shown as the core masks keys ([`keyledger_core::secret::mask`]):
//! its first 8 characters, `…`, its last 4.

use std::borrow::Cow;
use std::io::Write;

use keyledger_core::secret::{BODY_CHARS, CHECKSUM_CHARS, PREFIX_CHARS_MAX, mask};

/// The byte ranges of key-shaped text in `text`, in order, not overlapping.
fn spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let run = &b[start..i];
        let prefix = prefix_before(b, start);
        let prefixed = prefix.is_some() && run.len() >= BODY_CHARS + CHECKSUM_CHARS;
        let bare = run.len() >= BODY_CHARS && run.iter().any(u8::is_ascii_uppercase);
        if prefixed || bare {
            let from = prefix.unwrap_or(start);
            // A prefix run may itself have been taken whole by a bare match
            // just before: never overlap.
            let from = out
                .last()
                .map_or(from, |&(_, end): &(usize, usize)| from.max(end));
            out.push((from, i));
        }
    }
    out
}

/// Where the `<prefix>_` that ends at `run_start` starts, if one does: 2
/// to 16 of `a-z 0-9`, starting with a letter, before a `_`. The prefix is
/// taken as the longest such tail, so `xyzklk_` counts as a prefix too.
fn prefix_before(b: &[u8], run_start: usize) -> Option<usize> {
    if run_start < 3 || b[run_start - 1] != b'_' {
        return None;
    }
    let end = run_start - 1;
    let mut from = end;
    while from > 0
        && end - from < PREFIX_CHARS_MAX
        && (b[from - 1].is_ascii_lowercase() || b[from - 1].is_ascii_digit())
    {
        from -= 1;
    }
    // The prefix starts with a letter: drop leading digits.
    while from < end && b[from].is_ascii_digit() {
        from += 1;
    }
    (end - from >= 2).then_some(from)
}

/// Whether `text` holds anything shaped like a key.
pub fn holds_key(text: &str) -> bool {
    !spans(text).is_empty()
}

/// `text` with everything shaped like a key masked.
pub fn mask_keys(text: &str) -> Cow<'_, str> {
    let spans = spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (from, to) in spans {
        out.push_str(&text[at..from]);
        out.push_str(&mask(&text[from..to]));
        at = to;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// The path and query of a request, percent-decoded, for [`holds_key`]:
/// `%6Blk_…` is a key as much as `klk_…` is.
pub(crate) fn decoded_uri(path_and_query: &str) -> Cow<'_, str> {
    if !path_and_query.contains('%') {
        return Cow::Borrowed(path_and_query);
    }
    let b = path_and_query.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a JSON value holds a key-shaped string anywhere (a value or an
/// object's key, at any depth).
pub(crate) fn json_holds_key(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => holds_key(s),
        serde_json::Value::Array(a) => a.iter().any(json_holds_key),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| holds_key(k) || json_holds_key(v)),
        _ => false,
    }
}

/// A log writer that masks key-shaped text in what it is given, then
/// writes it to the inner writer. tracing-subscriber's `fmt` layer hands
/// a writer each whole event at once, so a key is never split across two
/// writes. `keyledger serve` logs through it (see `src/main.rs`).
#[derive(Debug)]
pub struct MaskingWriter<W: Write>(pub W);

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(mask_keys(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_core::secret::{KeyPrefix, Secret};

    fn key(prefix: &str, fill: u8) -> String {
        Secret::from_material(&KeyPrefix::new(prefix).unwrap(), &[fill; 32])
            .expose()
            .to_owned()
    }

    #[test]
    fn keys_anywhere_in_text_are_masked() {
        for prefix in ["klk", "sk", "acme2026live"] {
            for fill in [0u8, 7, 255] {
                let k = key(prefix, fill);
                let body = &k[prefix.len() + 1..];
                for text in [
                    k.clone(),
                    format!("no such key `{k}`"),
                    format!("id: invalid `{k}`, expected key_<ulid>"),
                    format!("a{k}"),
                    format!("{k}zz and again {k}"),
                    format!("unknown variant `{k}`, expected one of"),
                    format!("body only: {body}."),
                    format!("/v1/keys/{k}/revoke?sort={k}"),
                ] {
                    let masked = mask_keys(&text);
                    assert!(
                        !masked.contains(&k[prefix.len() + 1..prefix.len() + 20]),
                        "{text} -> {masked}"
                    );
                    assert!(!masked.contains(body), "{text} -> {masked}");
                    assert!(holds_key(&text));
                }
                assert_eq!(mask_keys(&format!("x {k} y")), format!("x {} y", mask(&k)));
            }
        }
    }

    #[test]
    fn other_text_is_left_alone() {
        for text in [
            "key_01J9Z3M4N5P6Q7R8S9T0V1W2X3 not found",
            "cursor 6b311f6e616d651f6b65795f30314a395a334d344e35503651375238533954305631573258331f6e616d65",
            "head_hash 3b4f0e5a9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f",
            "CI/CD Pipeline",
            "a name over the limit of 100 characters",
            "",
            "é_ü",
        ] {
            assert_eq!(mask_keys(text), text);
            assert!(!holds_key(text));
        }
    }

    #[test]
    fn percent_encoded_uris_are_decoded() {
        let k = key("klk", 3);
        let encoded: String = k.bytes().map(|c| format!("%{c:02X}")).collect();
        assert!(holds_key(&decoded_uri(&format!("/v1/users/{encoded}"))));
        assert_eq!(decoded_uri("/v1/keys?q=a%20b%zz%4"), "/v1/keys?q=a b%zz%4");
    }

    #[test]
    fn the_writer_masks_what_it_writes() {
        let k = key("klk", 9);
        let mut w = MaskingWriter(Vec::new());
        write!(w, "DEBUG refused message=\"no key {k}\"").unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert!(!out.contains(&k));
        assert!(out.contains(&mask(&k)));
    }

    #[test]
    fn json_strings_and_object_keys_are_searched() {
        let k = key("klk", 1);
        let v = serde_json::json!({"name": "x", "scopes": ["keys:read", k]});
        assert!(json_holds_key(&v));
        let v = serde_json::json!({ k.clone(): 1 });
        assert!(json_holds_key(&v));
        assert!(!json_holds_key(&serde_json::json!({"name": "CI", "n": 3})));
    }
}
