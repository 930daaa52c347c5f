//! A tenant's key names, lower-cased, in one buffer in the key list's
//! creation order ([`crate::state::Listing`]): a name search is one scan
//! of that buffer (`memchr::memmem`), with no visit to a key that does not
//! match, and a sort by name reads the names without visiting the keys
//! (issue 13: a tenant of a million keys).
//!
//! Each name is followed by `END` (0xFF), a byte no UTF-8 text holds, so no
//! needle (a string) matches across two names. What it costs: the names'
//! bytes lower-cased, one byte each more, and a mark every `BLOCK` (64) names
//! (no pointer or offset per key).

use std::ops::Range;

use memchr::memmem;

/// Ends each name in the buffer: never a byte of UTF-8 text.
const END: u8 = 0xFF;
/// Names between two marks.
const BLOCK: usize = 64;

/// The lower-cased names, in order; see the module's documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Every name lower-cased (`str::to_lowercase`), each followed by [`END`].
    text: Vec<u8>,
    /// Where names `0`, `BLOCK`, `2 * BLOCK`, … start in `text`.
    marks: Vec<usize>,
    /// Names held.
    len: usize,
}

/// One name found: its place in the order and its text, lower-cased.
pub type Found<'a> = (usize, &'a str);

impl Names {
    /// Every name of `names`, in order.
    pub fn build<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut n = Names::default();
        for name in names {
            if n.len.is_multiple_of(BLOCK) {
                n.marks.push(n.text.len());
            }
            n.push_text(name);
            n.len += 1;
        }
        n.text.shrink_to_fit();
        n
    }

    /// Names held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_text(&mut self, name: &str) {
        if name.is_ascii() {
            self.text
                .extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            self.text.extend_from_slice(name.to_lowercase().as_bytes());
        }
        self.text.push(END);
    }

    /// Where name `i` starts in the buffer (the buffer's end for `len`
    /// and past it).
    fn start(&self, i: usize) -> usize {
        if i >= self.len {
            return self.text.len();
        }
        let mut at = self.marks.get(i / BLOCK).copied().unwrap_or(0);
        for _ in 0..i % BLOCK {
            at = self.end_from(at) + 1;
        }
        at
    }

    /// Where the name holding byte `at` ends (its [`END`]).
    fn end_from(&self, at: usize) -> usize {
        let rest = self.text.get(at..).unwrap_or_default();
        memchr::memchr(END, rest).map_or(self.text.len(), |p| at + p)
    }

    /// The name starting at `start`, without its [`END`].
    fn text_at(&self, start: usize, end: usize) -> &str {
        // Built from whole strings, each cut at an `END` (never part of a
        // character): always UTF-8.
        std::str::from_utf8(self.text.get(start..end).unwrap_or_default()).unwrap_or_default()
    }

    /// Marks again every block from `block` on (after a name was put in
    /// before their start).
    fn remark_from(&mut self, block: usize) {
        self.marks.truncate(block + 1);
        let Some(&from) = self.marks.last() else {
            return;
        };
        let first = (self.marks.len() - 1) * BLOCK;
        let rest = self.text.get(from..).unwrap_or_default();
        for (n, end) in memchr::memchr_iter(END, rest).enumerate() {
            let next = first + n + 1;
            if next.is_multiple_of(BLOCK) && next < self.len {
                self.marks.push(from + end + 1);
            }
        }
    }

    /// Puts `name` in at place `i` (at most `len`), those from `i` on
    /// moving one place up.
    pub fn insert(&mut self, i: usize, name: &str) {
        let i = i.min(self.len);
        if i == self.len {
            if i.is_multiple_of(BLOCK) {
                self.marks.push(self.text.len());
            }
            self.push_text(name);
            self.len += 1;
            return;
        }
        let at = self.start(i);
        let mut one = Names::default();
        one.push_text(name);
        self.text.splice(at..at, one.text);
        self.len += 1;
        self.remark_from(i / BLOCK);
    }

    /// Name `i` is now `name`.
    pub fn rename(&mut self, i: usize, name: &str) {
        if i >= self.len {
            return;
        }
        let at = self.start(i);
        let end = self.end_from(at);
        let mut one = Names::default();
        one.push_text(name);
        one.text.pop();
        let grown = one.text.len().wrapping_sub(end - at);
        self.text.splice(at..end, one.text);
        for m in self.marks.iter_mut().skip(i / BLOCK + 1) {
            *m = m.wrapping_add(grown);
        }
    }

    /// Every name of `range` (places), in order, or from the last when
    /// `rev`.
    pub fn all(&self, range: Range<usize>, rev: bool) -> Box<dyn Iterator<Item = Found<'_>> + '_> {
        self.matching("", range, rev)
    }

    /// The names of `range` (places) that contain `needle` (lower-case
    /// already), in order, or from the last when `rev`: one scan of their
    /// part of the buffer.
    pub fn matching<'a>(
        &'a self,
        needle: &str,
        range: Range<usize>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = Found<'a>> + 'a> {
        let hi_i = range.end.min(self.len);
        let lo_i = range.start.min(hi_i);
        let (mut lo, mut hi) = (self.start(lo_i), self.start(hi_i));
        let (mut lo_i, mut hi_i) = (lo_i, hi_i);
        if needle.is_empty() {
            // Every name: the buffer read name by name.
            if rev {
                return Box::new(std::iter::from_fn(move || {
                    if lo >= hi {
                        return None;
                    }
                    let body = self.text.get(lo..hi - 1).unwrap_or_default();
                    let start = memchr::memrchr(END, body).map_or(lo, |p| lo + p + 1);
                    let found = (hi_i - 1, self.text_at(start, hi - 1));
                    (hi, hi_i) = (start, hi_i - 1);
                    Some(found)
                }));
            }
            return Box::new(std::iter::from_fn(move || {
                if lo >= hi {
                    return None;
                }
                let end = self.end_from(lo);
                let found = (lo_i, self.text_at(lo, end));
                (lo, lo_i) = (end + 1, lo_i + 1);
                Some(found)
            }));
        }
        // Each match's place is counted from the last one's: the names
        // passed over are the ends between them, so the counting is one
        // more scan of the same bytes, not a lookup per match.
        if rev {
            let finder = memmem::FinderRev::new(needle.as_bytes()).into_owned();
            return Box::new(std::iter::from_fn(move || {
                if lo >= hi {
                    return None;
                }
                let p = lo + finder.rfind(self.text.get(lo..hi)?)?;
                let end = self.end_from(p);
                let after = self.text.get(end..hi).unwrap_or_default();
                let i = hi_i - memchr::memchr_iter(END, after).count();
                let start = memchr::memrchr(END, self.text.get(lo..p).unwrap_or_default())
                    .map_or(lo, |q| lo + q + 1);
                (hi, hi_i) = (start, i);
                Some((i, self.text_at(start, end)))
            }));
        }
        let finder = memmem::Finder::new(needle.as_bytes()).into_owned();
        Box::new(std::iter::from_fn(move || {
            if lo >= hi {
                return None;
            }
            let p = lo + finder.find(self.text.get(lo..hi)?)?;
            let before = self.text.get(lo..p).unwrap_or_default();
            let i = lo_i + memchr::memchr_iter(END, before).count();
            let start = memchr::memrchr(END, before).map_or(lo, |q| lo + q + 1);
            let end = self.end_from(p);
            (lo, lo_i) = (end + 1, i + 1);
            Some((i, self.text_at(start, end)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match i % 4 {
                0 => format!("Key {i}"),
                1 => format!("\u{212a}ey {i}"),
                2 => "ΟΔΟΣ".to_owned(),
                _ => String::new(),
            })
            .collect()
    }

    /// What a scan must give: each name lower-cased, searched on its own.
    fn reference(
        all: &[String],
        needle: &str,
        range: Range<usize>,
        rev: bool,
    ) -> Vec<(usize, String)> {
        let mut v: Vec<(usize, String)> = all[range.clone()]
            .iter()
            .enumerate()
            .map(|(i, n)| (range.start + i, n.to_lowercase()))
            .filter(|(_, n)| n.contains(needle))
            .collect();
        if rev {
            v.reverse();
        }
        v
    }

    fn check(n: &Names, all: &[String]) {
        assert_eq!(n, &Names::build(all.iter().map(String::as_str)));
        let len = all.len();
        for needle in ["", "key", "k", "1", "ος", "ey 1", "zz"] {
            for range in [0..len, 0..0, 1..len, len / 3..len / 2 + 1, 0..len + 5] {
                let clipped = range.start.min(len)..range.end.min(len);
                for rev in [false, true] {
                    let got: Vec<(usize, String)> = n
                        .matching(needle, range.clone(), rev)
                        .map(|(i, s)| (i, s.to_owned()))
                        .collect();
                    assert_eq!(
                        got,
                        reference(all, needle, clipped.clone(), rev),
                        "{needle:?} {range:?} {rev}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_scan_finds_what_each_name_lower_cased_contains() {
        let mut all = names(300);
        let mut n = Names::build(all.iter().map(String::as_str));
        check(&n, &all);
        // Put in at the end, the start, inside a block and at a block's start.
        for (i, name) in [
            (300, "Last"),
            (0, "FIRST"),
            (70, "Mid Key"),
            (128, "ΣΑΣ"),
            (5, ""),
        ] {
            n.insert(i, name);
            all.insert(i, name.to_owned());
            check(&n, &all);
        }
        // Renamed longer, shorter, to nothing, non-ASCII.
        for (i, name) in [
            (3, "a much longer name than before"),
            (64, "x"),
            (200, ""),
            (301, "Ωmega KEY"),
        ] {
            n.rename(i, name);
            all[i] = name.to_owned();
            check(&n, &all);
        }
        // Out of range: nothing changes, nothing panics.
        n.rename(10_000, "none");
        check(&n, &all);
    }
}
