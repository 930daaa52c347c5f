//! The key format: `<prefix>_<body><checksum>`.
//!
//! * `prefix`: 2–16 of `a-z 0-9`, starting with a letter (default `klk`).
//! * `body`: 32 bytes (256 bits) from the OS CSPRNG, base62, always
//!   [`BODY_CHARS`] characters. The core never draws randomness: the caller
//!   passes the bytes in.
//! * `checksum`: CRC32 of `<prefix>_<body>`, base62, always
//!   [`CHECKSUM_CHARS`] characters, so typos and secret scanners can reject or
//!   find keys without a lookup (as GitHub's token format does).
//!
//! Only the SHA-256 of the whole secret is ever stored ([`SecretHash`]).

use std::fmt;

use sha2::{Digest, Sha256};

/// Bytes of CSPRNG material in a key's body.
pub const BODY_BYTES: usize = 32;
/// Base62 characters of a key's body: the fewest that hold 256 bits.
pub const BODY_CHARS: usize = 43;
/// Base62 characters of the checksum: the fewest that hold 32 bits.
pub const CHECKSUM_CHARS: usize = 6;
/// Longest prefix.
pub const PREFIX_CHARS_MAX: usize = 16;
/// Longest key in any deployment.
pub const SECRET_CHARS_MAX: usize = PREFIX_CHARS_MAX + 1 + BODY_CHARS + CHECKSUM_CHARS;

// 62^43 > 2^256 and 62^42 < 2^256; 62^6 > 2^32 and 62^5 < 2^32.
const _: () = assert!(BODY_CHARS * 5954 >= BODY_BYTES * 8 * 1000);
const _: () = assert!((BODY_CHARS - 1) * 5954 < BODY_BYTES * 8 * 1000);
const _: () = assert!(CHECKSUM_CHARS * 5954 >= 32 * 1000);

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A deployment's key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Checks a prefix: 2–16 of `a-z 0-9`, starting with a letter.
    pub fn new(s: &str) -> Result<Self, String> {
        let ok = (2..=PREFIX_CHARS_MAX).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(KeyPrefix(s.to_owned()))
        } else {
            Err(format!(
                "a key prefix is 2 to {PREFIX_CHARS_MAX} of a-z and 0-9, starting with a letter; `{}` is not",
                s.escape_debug()
            ))
        }
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix("klk".into())
    }
}

/// A whole secret key. Shown once, in the create result; never stored,
/// never logged. `Debug` prints it masked.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Makes a key from 32 bytes of CSPRNG material.
    pub fn from_material(prefix: &KeyPrefix, material: &[u8; BODY_BYTES]) -> Secret {
        let mut s = String::with_capacity(prefix.0.len() + 1 + BODY_CHARS + CHECKSUM_CHARS);
        s.push_str(&prefix.0);
        s.push('_');
        push_base62(&mut s, material, BODY_CHARS);
        let crc = crc32fast::hash(s.as_bytes());
        push_base62(&mut s, &crc.to_be_bytes(), CHECKSUM_CHARS);
        Secret(s)
    }

    /// The secret's text: hand it to the user once, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form: SHA-256 of the whole secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// The form shown in lists: first 8 characters, `…`, last 4.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

/// The first 8 characters, `…`, the last 4. Text of 12 characters or fewer
/// is masked whole.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 12 {
        return "…".into();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Why presented text is not a well-formed key. Decided without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Wrong length or no `_`.
    #[error("not shaped like a key")]
    Shape,
    /// A character outside the key alphabet.
    #[error("a character is not allowed in a key")]
    Character,
    /// The checksum does not match: a typo or a truncated copy.
    #[error("the checksum does not match")]
    Checksum,
}

/// Checks a presented key's shape and checksum, without a lookup.
///
/// Any well-formed prefix is accepted, so keys minted before a deployment
/// changed its prefix keep working: the checksum covers the prefix.
pub fn check(presented: &str) -> Result<(), Malformed> {
    let bytes = presented.as_bytes();
    let tail = BODY_CHARS + CHECKSUM_CHARS;
    if bytes.len() < 2 + 1 + tail || bytes.len() > SECRET_CHARS_MAX {
        return Err(Malformed::Shape);
    }
    let sep = bytes.len() - tail - 1;
    let (prefix, rest) = (&bytes[..sep], &bytes[sep + 1..]);
    if bytes[sep] != b'_' {
        return Err(Malformed::Shape);
    }
    // Branch-free folds: this runs on every verification.
    let prefix_ok = prefix[0].is_ascii_lowercase()
        & prefix.iter().fold(true, |ok, b| {
            ok & (b.is_ascii_lowercase() | b.is_ascii_digit())
        });
    let rest_ok = rest
        .iter()
        .fold(true, |ok, b| ok & b.is_ascii_alphanumeric());
    if !(prefix_ok & rest_ok) {
        return Err(Malformed::Character);
    }
    // Decode the presented checksum rather than encode the computed one:
    // six multiply-adds instead of 24 divisions on every verification.
    let mut presented_crc: u64 = 0;
    for &b in &bytes[bytes.len() - CHECKSUM_CHARS..] {
        presented_crc = presented_crc * 62 + u64::from(base62_digit(b));
    }
    let crc = crc32fast::hash(&bytes[..bytes.len() - CHECKSUM_CHARS]);
    if presented_crc != u64::from(crc) {
        return Err(Malformed::Checksum);
    }
    Ok(())
}

/// SHA-256 of a whole secret: the only form a key's secret is stored in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hashes presented text (checked or not).
    pub fn of(presented: &str) -> SecretHash {
        SecretHash(Sha256::digest(presented.as_bytes()).into())
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The value of an ASCII alphanumeric in [`ALPHABET`] (the caller checked it is one).
const fn base62_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'A'..=b'Z' => b - b'A' + 10,
        _ => b.wrapping_sub(b'a').wrapping_add(36),
    }
}

fn push_base62(out: &mut String, bytes: &[u8], width: usize) {
    let mut buf = [0u8; BODY_CHARS];
    base62_into(bytes, &mut buf[..width]);
    out.extend(buf[..width].iter().map(|&b| char::from(b)));
}

/// Writes `bytes` (a big-endian number) as base62 into `out`, left-padded
/// with `0` to `out.len()` digits. The caller picks a width that holds the
/// number (see the const assertions above).
///
/// Long division by 62⁵ over 32-bit limbs: five digits per pass over eight
/// limbs, instead of one digit per pass over 32 bytes (≈ 20× fewer
/// divisions; each is a multiplication by a constant).
fn base62_into(bytes: &[u8], out: &mut [u8]) {
    const LIMBS: usize = BODY_BYTES / 4;
    const CHUNK: u64 = 62u64.pow(5);
    // Right-align the bytes in the limbs (big-endian), zeros in front.
    let mut padded = [0u8; BODY_BYTES];
    padded[BODY_BYTES - bytes.len()..].copy_from_slice(bytes);
    let mut limbs = [0u32; LIMBS];
    for (limb, word) in limbs.iter_mut().zip(padded.chunks_exact(4)) {
        *limb = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    let first = LIMBS - bytes.len().div_ceil(4);
    let mut left = out.len();
    while left > 0 {
        let mut rem = 0u64;
        for limb in &mut limbs[first..] {
            let acc = (rem << 32) | u64::from(*limb);
            *limb = (acc / CHUNK) as u32;
            rem = acc % CHUNK;
        }
        for _ in 0..5 {
            if left == 0 {
                break;
            }
            left -= 1;
            out[left] = ALPHABET[(rem % 62) as usize];
            rem /= 62;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain algorithm, one digit per pass over the bytes: the
    /// reference `base62_into` must match.
    fn base62_reference(bytes: &[u8], width: usize) -> Vec<u8> {
        let mut n = bytes.to_vec();
        let mut out = vec![b'0'; width];
        for slot in out.iter_mut().rev() {
            let mut rem = 0u32;
            for b in n.iter_mut() {
                let acc = (rem << 8) | u32::from(*b);
                *b = (acc / 62) as u8;
                rem = acc % 62;
            }
            *slot = ALPHABET[rem as usize];
        }
        out
    }

    proptest! {
        #[test]
        fn base62_matches_the_reference(material in any::<[u8; 32]>(), crc in any::<u32>()) {
            let mut body = [0u8; BODY_CHARS];
            base62_into(&material, &mut body);
            prop_assert_eq!(&body[..], &base62_reference(&material, BODY_CHARS)[..]);
            let mut sum = [0u8; CHECKSUM_CHARS];
            base62_into(&crc.to_be_bytes(), &mut sum);
            prop_assert_eq!(&sum[..], &base62_reference(&crc.to_be_bytes(), CHECKSUM_CHARS)[..]);
        }
    }

    #[test]
    fn base62_edges_match_the_reference() {
        for material in [[0u8; 32], [0xff; 32], {
            let mut m = [0u8; 32];
            m[31] = 61;
            m
        }] {
            let mut body = [0u8; BODY_CHARS];
            base62_into(&material, &mut body);
            assert_eq!(&body[..], &base62_reference(&material, BODY_CHARS)[..]);
        }
        for crc in [0u32, 1, 61, 62, u32::MAX] {
            let mut sum = [0u8; CHECKSUM_CHARS];
            base62_into(&crc.to_be_bytes(), &mut sum);
            assert_eq!(
                &sum[..],
                &base62_reference(&crc.to_be_bytes(), CHECKSUM_CHARS)[..]
            );
        }
    }

    fn key(material: [u8; 32]) -> Secret {
        Secret::from_material(&KeyPrefix::default(), &material)
    }

    #[test]
    fn shape_of_a_key() {
        let s = key([7; 32]);
        assert_eq!(s.expose().len(), 3 + 1 + BODY_CHARS + CHECKSUM_CHARS);
        assert!(s.expose().starts_with("klk_"));
        assert_eq!(check(s.expose()), Ok(()));
        let masked = s.masked();
        assert!(masked.starts_with("klk_"));
        assert_eq!(masked.chars().count(), 8 + 1 + 4);
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn extremes_of_material_fit_the_width() {
        assert_eq!(check(key([0; 32]).expose()), Ok(()));
        assert_eq!(check(key([255; 32]).expose()), Ok(()));
        assert_ne!(key([255; 32]).expose().as_bytes()[4], b'0');
    }

    #[test]
    fn rejects_without_lookup() {
        let s = key([9; 32]).expose().to_owned();
        assert_eq!(check(""), Err(Malformed::Shape));
        assert_eq!(check(&s[..s.len() - 1]), Err(Malformed::Shape));
        assert_eq!(check(&s.replace('_', "-")), Err(Malformed::Shape));
        let mut typo = s.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            check(std::str::from_utf8(&typo).unwrap()),
            Err(Malformed::Checksum)
        );
        assert_eq!(
            check(&format!("{}!", &s[..s.len() - 1])),
            Err(Malformed::Character)
        );
    }

    #[test]
    fn digits_match_the_alphabet() {
        for (i, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(usize::from(base62_digit(c)), i);
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(KeyPrefix::new("sk").is_ok());
        assert!(KeyPrefix::new("k").is_err());
        assert!(KeyPrefix::new("9k").is_err());
        assert!(KeyPrefix::new("Ab").is_err());
        assert!(KeyPrefix::new("a_b").is_err());
    }

    proptest! {
        #[test]
        fn every_minted_key_checks_and_one_changed_char_does_not(
            material in any::<[u8; 32]>(), at in 4usize..53, to in 0usize..62
        ) {
            let s = key(material);
            prop_assert_eq!(check(s.expose()), Ok(()));
            let mut b = s.expose().as_bytes().to_vec();
            let replacement = ALPHABET[to];
            prop_assume!(b[at] != replacement);
            b[at] = replacement;
            prop_assert!(check(std::str::from_utf8(&b).unwrap()).is_err());
        }

        #[test]
        fn check_never_panics(s in ".{0,80}") {
            let _ = check(&s);
        }
    }
}
