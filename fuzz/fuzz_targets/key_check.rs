//! The key parser (`secret::check`, run on every verification) against a
//! slow reference written from the format's description: prefix of 2–16
//! `a-z0-9` starting with a letter, `_`, 43 base62 characters, then the
//! CRC32 of everything before it as 6 base62 digits. They must agree on
//! every input, and nothing may panic.
#![no_main]

use keyledger_core::secret;
use libfuzzer_sys::fuzz_target;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn reference(s: &str) -> bool {
    let Some((prefix, rest)) = s.rsplit_once('_') else {
        return false;
    };
    let prefix_ok = (2..=16).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !prefix_ok || rest.len() != 43 + 6 || !rest.bytes().all(|b| ALPHABET.contains(&b)) {
        return false;
    }
    let (signed, checksum) = s.split_at(s.len() - 6);
    let mut crc = u64::from(crc32fast::hash(signed.as_bytes()));
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    crc == 0 && digits == checksum.as_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ours = secret::check(s).is_ok();
    assert_eq!(
        ours,
        reference(s),
        "check and the reference disagree on {s:?}"
    );
    let masked = secret::mask(s);
    assert!(!s.is_empty() || masked == "…");
});
