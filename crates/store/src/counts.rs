//! Use counts on disk: the seven [`UseCounts`] fields
//! ([`UseCounts::to_fields`] order) as canonical unsigned LEB128 numbers,
//! most of them one byte. The per-key use index (`key_uses`) and the
//! runtime's per-day usage rows (`usage.redb`) both store them so.

use keyledger_core::UseCounts;

/// Appends the counts to `out`.
pub fn encode(counts: &UseCounts, out: &mut Vec<u8>) {
    for mut n in counts.to_fields() {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
}

/// The counts at the start of `bytes` and what follows them; `None`
/// (damage) unless they are seven canonical LEB128 numbers of at most 64
/// bits: a byte cut short, a number past 64 bits or one written longer
/// than it needs (a trailing zero byte) does not decode.
pub fn decode(bytes: &[u8]) -> Option<(UseCounts, &[u8])> {
    let mut fields = [0u64; 7];
    let mut rest = bytes;
    for field in &mut fields {
        let mut shift = 0u32;
        loop {
            let (&byte, tail) = rest.split_first()?;
            rest = tail;
            let part = u64::from(byte & 0x7f);
            if shift == 63 && part > 1 {
                return None;
            }
            *field |= part << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return None;
                }
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }
    Some((UseCounts::from_fields(fields), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_damage_does_not_decode() {
        let samples = [
            UseCounts::default(),
            UseCounts {
                valid: 1,
                revoked: 127,
                expired: 128,
                insufficient_scope: 300,
                usage_exceeded: u64::MAX,
                rate_limited: 1 << 35,
                credits_spent: 99,
            },
        ];
        for c in samples {
            let mut bytes = Vec::new();
            encode(&c, &mut bytes);
            assert_eq!(decode(&bytes), Some((c, &[][..])));
            bytes.push(9);
            assert_eq!(
                decode(&bytes),
                Some((c, &[9u8][..])),
                "what follows is left"
            );
            bytes.pop();
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
            }
        }
        let mut zero = Vec::new();
        encode(&UseCounts::default(), &mut zero);
        assert_eq!(zero.len(), 7);
        // Past 64 bits, or not canonical.
        assert_eq!(decode(&[0xff; 17]), None);
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        assert_eq!(decode(&over), None);
        assert_eq!(decode(&[0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
