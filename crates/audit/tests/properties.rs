//! Properties over random trees: every proof verifies; every single flipped
//! bit of an entry, a proof hash or a root makes verification fail. proptest prints the
//! failing case and its seed, and `PROPTEST_RNG_SEED` replays one.

use keyledger_audit::merkle::{
    Hash, Tree, leaf_hash, prefix_root_from_range, root_from_range, root_of_leaves,
    verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

fn build(entries: &[Vec<u8>]) -> Tree {
    let mut t = Tree::new();
    for e in entries {
        t.push(e);
    }
    t
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out[(bit / 8) % 32] ^= 1 << (bit % 8);
    out
}

fn entries() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_verify_and_flips_fail(
        entries in entries(),
        pick in any::<(u64, u64, usize)>(),
    ) {
        let t = build(&entries);
        let n = t.len();
        let size = 1 + pick.0 % n;
        let index = pick.1 % size;
        let root = t.root(size).unwrap();
        let proof = t.inclusion_proof(index, size).unwrap();
        let leaf = leaf_hash(&entries[index as usize]);
        prop_assert_eq!(verify_inclusion(index, size, &leaf, &proof, &root), Ok(()));
        // Every single flipped bit of the entry (or one byte more).
        let entry = &entries[index as usize];
        for bit in 0..entry.len() * 8 {
            let mut e = entry.clone();
            e[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(index, size, &leaf_hash(&e), &proof, &root).is_err());
        }
        let mut longer = entry.clone();
        longer.push(pick.2 as u8);
        prop_assert!(verify_inclusion(index, size, &leaf_hash(&longer), &proof, &root).is_err());
        // Every single flipped bit of the root and of each proof hash.
        for bit in 0..256 {
            prop_assert!(verify_inclusion(index, size, &leaf, &proof, &flip(&root, bit)).is_err());
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i] = flip(&p[i], bit);
                prop_assert!(verify_inclusion(index, size, &leaf, &p, &root).is_err());
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_flips_fail(
        entries in entries(),
        pick in any::<(u64, u64, usize)>(),
    ) {
        let t = build(&entries);
        let n = t.len();
        let new = 1 + pick.0 % n;
        let old = 1 + pick.1 % new;
        let (r1, r2) = (t.root(old).unwrap(), t.root(new).unwrap());
        let proof = t.consistency_proof(old, new).unwrap();
        prop_assert_eq!(verify_consistency(old, new, &r1, &r2, &proof), Ok(()));
        // Every single flipped bit of either root and of each proof hash.
        for bit in 0..256 {
            prop_assert!(verify_consistency(old, new, &flip(&r1, bit), &r2, &proof).is_err());
            prop_assert!(verify_consistency(old, new, &r1, &flip(&r2, bit), &proof).is_err());
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i] = flip(&p[i], bit);
                prop_assert!(verify_consistency(old, new, &r1, &r2, &p).is_err());
            }
        }
        // A changed entry of the old tree changes its root: the proof fails.
        let mut changed = entries[..old as usize].to_vec();
        changed[(pick.2 as u64 % old) as usize].push(1);
        let r1_changed = build(&changed).root(old).unwrap();
        prop_assert!(verify_consistency(old, new, &r1_changed, &r2, &proof).is_err());
    }

    #[test]
    fn range_proofs_recompute_the_root(
        entries in entries(),
        pick in any::<(u64, u64, u64, usize)>(),
    ) {
        let t = build(&entries);
        let size = 1 + pick.0 % t.len();
        let begin = pick.1 % size;
        let end = begin + 1 + pick.2 % (size - begin);
        let leaves: Vec<Hash> = (begin..end).map(|i| t.leaf(i).unwrap()).collect();
        let proof = t.range_proof(begin, end, size).unwrap();
        let root = t.root(size).unwrap();
        prop_assert_eq!(root_from_range(begin, size, &leaves, &proof), Ok(root));
        let all: Vec<Hash> = (0..size).map(|i| t.leaf(i).unwrap()).collect();
        prop_assert_eq!(root_of_leaves(&all), root);
        // A flipped leaf or proof hash changes the root (or breaks the proof).
        let mut bad = leaves.clone();
        let i = pick.3 % bad.len();
        bad[i] = flip(&bad[i], pick.3);
        prop_assert_ne!(root_from_range(begin, size, &bad, &proof), Ok(root));
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i], pick.3);
            prop_assert_ne!(root_from_range(begin, size, &leaves, &p), Ok(root));
        }
        // Every smaller tree that ends inside the range has its root
        // recomputed from the same leaves and proof.
        for m in begin + 1..=end {
            prop_assert_eq!(
                prefix_root_from_range(begin, m, &leaves, &proof),
                Ok(t.root(m).unwrap()),
                "prefix {} of range {}..{} in {}", m, begin, end, size
            );
        }
        if begin > 0 {
            let mut p = proof.clone();
            p[0] = flip(&p[0], pick.3);
            prop_assert_ne!(prefix_root_from_range(begin, end, &leaves, &p), Ok(t.root(end).unwrap()));
        }
    }
}

mod tiles {
    use keyledger_audit::merkle::Tree;
    use keyledger_audit::tiles::{TilePath, TreeNodes, tile_bytes};
    use proptest::prelude::*;

    fn tile_path() -> impl Strategy<Value = TilePath> {
        // Mostly tiles a small tree may hold, some anywhere.
        let level = prop_oneof![3 => 0u32..2, 1 => 0u32..64];
        let index = prop_oneof![3 => 0u64..4, 1 => any::<u64>()];
        (any::<bool>(), level, index, 1u64..=256).prop_map(|(entries, level, index, width)| {
            if entries {
                TilePath::Entries { index, width }
            } else {
                TilePath::Hashes {
                    level,
                    index,
                    width,
                }
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Every tile path reads back as itself, and any text a client sends
        /// parses without panicking, to a path that spells it exactly.
        #[test]
        fn tile_paths_round_trip_and_any_text_parses_safely(
            t in tile_path(),
            junk in "(tile/)?([0-9x/.p]|entries){0,40}",
        ) {
            prop_assert_eq!(TilePath::parse(&t.path()), Some(t));
            if let Some(p) = TilePath::parse(&junk) {
                prop_assert_eq!(p.path(), junk);
            }
        }

        /// Any tile asked of any small tree is either absent or exactly its
        /// width in hashes (or entries), never a panic.
        #[test]
        fn any_tile_of_any_tree_is_whole_or_absent(t in tile_path(), leaves in 0u64..700) {
            let mut tree = Tree::new();
            for i in 0..leaves {
                tree.push(&i.to_be_bytes());
            }
            let nodes = TreeNodes {
                tree: &tree,
                entries: |i: u64| (i < leaves).then(|| i.to_be_bytes().to_vec()),
            };
            if let Some(bytes) = tile_bytes(&nodes, &t) {
                let per = match t {
                    TilePath::Hashes { .. } => 32,
                    TilePath::Entries { .. } => 10,
                };
                let width = match t {
                    TilePath::Hashes { width, .. } | TilePath::Entries { width, .. } => width,
                };
                prop_assert_eq!(bytes.len() as u64, per * width);
            }
        }
    }
}
