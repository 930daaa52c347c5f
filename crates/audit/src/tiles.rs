//! The C2SP [tlog-tiles] read API of a Merkle tree: the paths
//! (`tile/<L>/<N>[.p/<W>]`, `tile/entries/<N>[.p/<W>]`) and the bytes of
//! hash tiles and entry bundles, built from any [`Nodes`] (the in-memory
//! [`Tree`] here; a store of tree nodes on disk would be another).
//!
//! The tile at level `l`, index `n`, holds for `i` in `0..W` the hash
//! `MTH(D[(n·256 + i)·256^l : (n·256 + i + 1)·256^l])`, i.e. the complete
//! subtree hashes of tree level `8·l` from index `n·256`. A full tile is 256
//! hashes (8,192 bytes); a partial one `W < 256`. An entry bundle holds the
//! entries as big-endian `u16` length-prefixed byte strings.
//!
//! [tlog-tiles]: https://c2sp.org/tlog-tiles

use crate::merkle::{Hash, Tree};

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels a tile spans.
pub const TILE_HEIGHT: u32 = 8;
/// The highest tile level a path may name.
pub const TILE_LEVEL_MAX: u32 = 63;

/// What a tile path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilePath {
    /// A tile of Merkle tree hashes.
    Hashes {
        /// The tile level `L`.
        level: u32,
        /// The tile index `N`.
        index: u64,
        /// `W`: 256 for a full tile, 1..=255 for a partial one.
        width: u64,
    },
    /// An entry bundle.
    Entries {
        /// The bundle index `N`.
        index: u64,
        /// `W`: 256 for a full bundle, 1..=255 for a partial one.
        width: u64,
    },
}

impl TilePath {
    /// Reads a path after the log's prefix, e.g. `tile/0/x001/234.p/17` or
    /// `tile/entries/000`. `None` unless it is exactly a C2SP tile path (no
    /// extra leading zeroes, every index element three digits).
    pub fn parse(path: &str) -> Option<TilePath> {
        let rest = path.strip_prefix("tile/")?;
        let (kind, rest) = rest.split_once('/')?;
        let (index_part, width) = match rest.split_once(".p/") {
            Some((i, w)) => (i, Some(w)),
            None => (rest, None),
        };
        let width = match width {
            None => TILE_WIDTH,
            Some(w) => {
                let n = decimal(w)?;
                if n == 0 || n >= TILE_WIDTH {
                    return None;
                }
                n
            }
        };
        let index = parse_index(index_part)?;
        if kind == "entries" {
            return Some(TilePath::Entries { index, width });
        }
        let level = u32::try_from(decimal(kind)?).ok()?;
        (level <= TILE_LEVEL_MAX).then_some(TilePath::Hashes {
            level,
            index,
            width,
        })
    }

    /// The path, as [`TilePath::parse`] reads it.
    pub fn path(&self) -> String {
        let (kind, index, width) = match *self {
            TilePath::Hashes {
                level,
                index,
                width,
            } => (level.to_string(), index, width),
            TilePath::Entries { index, width } => ("entries".to_owned(), index, width),
        };
        let mut s = format!("tile/{kind}/{}", encode_index(index));
        if width < TILE_WIDTH {
            s.push_str(&format!(".p/{width}"));
        }
        s
    }

    /// Whether it is a full tile (or bundle), whose bytes never change.
    pub fn is_full(&self) -> bool {
        match *self {
            TilePath::Hashes { width, .. } | TilePath::Entries { width, .. } => width == TILE_WIDTH,
        }
    }
}

/// A decimal number without extra leading zeroes.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// `N` as zero-padded three-digit path elements, all but the last with an
/// `x` prefix: 1234067 is `x001/x234/067`.
pub fn encode_index(n: u64) -> String {
    let mut groups = vec![n % 1000];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i < last {
                format!("x{g:03}")
            } else {
                format!("{g:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_index(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split('/').collect();
    // u64::MAX has 20 digits: seven groups.
    if parts.is_empty() || parts.len() > 7 {
        return None;
    }
    let last = parts.len() - 1;
    let mut n: u64 = 0;
    for (i, p) in parts.iter().enumerate() {
        let digits = if i < last { p.strip_prefix('x')? } else { p };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let g: u64 = digits.parse().ok()?;
        n = n.checked_mul(1000)?.checked_add(g)?;
    }
    // Exactly one encoding per number: no leading `x000`.
    (encode_index(n) == s).then_some(n)
}

/// Where tiles are read from: a tree's complete subtree hashes and its
/// entries.
pub trait Nodes {
    /// Leaves in the tree.
    fn size(&self) -> u64;
    /// The complete subtree hash at tree `level`, `index` (see [`Tree::node`]).
    fn node(&self, level: u32, index: u64) -> Option<Hash>;
    /// The entry of leaf `index` (what its leaf hash hashes).
    fn entry(&self, index: u64) -> Option<Vec<u8>>;
}

/// A tree and its entries, as tiles read them.
pub struct TreeNodes<'a, E> {
    /// The tree.
    pub tree: &'a Tree,
    /// The entry of each leaf, by index.
    pub entries: E,
}

impl<E: Fn(u64) -> Option<Vec<u8>>> Nodes for TreeNodes<'_, E> {
    fn size(&self) -> u64 {
        self.tree.len()
    }

    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.tree.node(level, index)
    }

    fn entry(&self, index: u64) -> Option<Vec<u8>> {
        (self.entries)(index)
    }
}

/// The first leaf after the tile's `width` hashes (or entries), if it fits
/// in a `u64`: the tile exists when the tree has at least that many leaves.
fn end_leaf(level: u32, index: u64, width: u64) -> Option<u64> {
    let span = 1u64.checked_shl(TILE_HEIGHT.checked_mul(level)?)?;
    index
        .checked_mul(TILE_WIDTH)?
        .checked_add(width)?
        .checked_mul(span)
}

/// The bytes of the tile `path` names, if the tree holds all of it
/// (`None`: not there yet, or never). Any width the tree covers is served:
/// a partial tile is a prefix of its full tile, so it never changes.
pub fn tile_bytes(nodes: &dyn Nodes, path: &TilePath) -> Option<Vec<u8>> {
    match *path {
        TilePath::Hashes {
            level,
            index,
            width,
        } => {
            if end_leaf(level, index, width)? > nodes.size() {
                return None;
            }
            let first = index * TILE_WIDTH;
            let mut out = Vec::with_capacity(32 * width as usize);
            for i in first..first + width {
                out.extend_from_slice(&nodes.node(TILE_HEIGHT * level, i)?);
            }
            Some(out)
        }
        TilePath::Entries { index, width } => {
            if end_leaf(0, index, width)? > nodes.size() {
                return None;
            }
            let first = index * TILE_WIDTH;
            let mut out = Vec::new();
            for i in first..first + width {
                let e = nodes.entry(i)?;
                let len = u16::try_from(e.len()).ok()?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&e);
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, root_of_leaves};

    #[test]
    fn paths_read_and_write_as_the_spec_spells_them() {
        for (path, want) in [
            (
                "tile/0/000",
                TilePath::Hashes {
                    level: 0,
                    index: 0,
                    width: 256,
                },
            ),
            (
                "tile/3/x001/x234/067.p/8",
                TilePath::Hashes {
                    level: 3,
                    index: 1_234_067,
                    width: 8,
                },
            ),
            (
                "tile/entries/x001/000",
                TilePath::Entries {
                    index: 1000,
                    width: 256,
                },
            ),
            (
                "tile/entries/255.p/255",
                TilePath::Entries {
                    index: 255,
                    width: 255,
                },
            ),
        ] {
            assert_eq!(TilePath::parse(path), Some(want), "{path}");
            assert_eq!(want.path(), path);
        }
        for bad in [
            "tile/0/0",
            "tile/00/000",
            "tile/64/000",
            "tile/0/x000/001",
            "tile/0/001/002",
            "tile/0/x1/002",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/08",
            "tile/0/000/",
            "tile/data/000",
            "tile/entries/000.p/",
            "tile/-1/000",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "checkpoint",
            "",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
        assert_eq!(encode_index(u64::MAX), "x018/x446/x744/x073/x709/x551/615");
        assert_eq!(
            TilePath::parse("tile/0/x018/x446/x744/x073/x709/x551/615"),
            Some(TilePath::Hashes {
                level: 0,
                index: u64::MAX,
                width: 256
            })
        );
    }

    /// Each hash of a level-1 tile is the root of a full level-0 tile, and
    /// tiles exist exactly as far as the tree does.
    #[test]
    fn tiles_hold_the_subtree_hashes_the_spec_defines() {
        let entries: Vec<[u8; 32]> = (0..70_000u32)
            .map(|i| {
                let mut e = [0u8; 32];
                e[..4].copy_from_slice(&i.to_be_bytes());
                e
            })
            .collect();
        let mut tree = Tree::new();
        for e in &entries {
            tree.push(e);
        }
        let nodes = TreeNodes {
            tree: &tree,
            entries: |i: u64| entries.get(i as usize).map(|e| e.to_vec()),
        };
        let tile = |level, index, width| {
            tile_bytes(
                &nodes,
                &TilePath::Hashes {
                    level,
                    index,
                    width,
                },
            )
        };
        // 70,000 leaves: 273 full level-0 tiles, a partial of 112, a full
        // level-1 tile, a partial of 17, a partial level-2 tile of 1.
        assert!(tile(0, 272, 256).is_some());
        assert!(tile(0, 273, 256).is_none());
        assert!(tile(0, 273, 112).is_some());
        assert!(tile(0, 273, 113).is_none());
        assert!(tile(1, 0, 256).is_some());
        assert!(tile(1, 1, 17).is_some());
        assert!(tile(1, 1, 18).is_none());
        assert!(tile(2, 0, 1).is_some());
        assert!(tile(2, 0, 2).is_none());
        assert!(tile(63, u64::MAX, 256).is_none());
        let level1 = tile(1, 0, 256).unwrap_or_default();
        for n in [0usize, 5, 255] {
            let leaves: Vec<_> = entries[n * 256..(n + 1) * 256]
                .iter()
                .map(|e| leaf_hash(e))
                .collect();
            assert_eq!(&level1[32 * n..32 * (n + 1)], root_of_leaves(&leaves));
            let level0 = tile(0, n as u64, 256).unwrap_or_default();
            assert_eq!(level0, leaves.concat());
        }
        let bundle = tile_bytes(
            &nodes,
            &TilePath::Entries {
                index: 273,
                width: 3,
            },
        )
        .unwrap_or_default();
        assert_eq!(bundle.len(), 3 * 34);
        assert_eq!(&bundle[..2], &[0, 32]);
        assert_eq!(&bundle[2..34], &entries[273 * 256]);
    }
}
