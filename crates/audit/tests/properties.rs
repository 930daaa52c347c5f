//! Properties over random trees: every proof verifies; any flipped bit in
//! an entry, a proof or a root makes verification fail. proptest prints the
//! failing case and its seed, and `PROPTEST_RNG_SEED` replays one.

use keyledger_audit::merkle::{
    Hash, Tree, leaf_hash, root_from_range, root_of_leaves, verify_consistency, verify_inclusion,
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
        // A flipped bit in the entry.
        let mut entry = entries[index as usize].clone();
        if entry.is_empty() { entry.push(0) } else { let i = pick.2 % entry.len(); entry[i] ^= 1 << (pick.2 % 8) }
        prop_assert!(verify_inclusion(index, size, &leaf_hash(&entry), &proof, &root).is_err());
        // A flipped bit in the root.
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &flip(&root, pick.2)).is_err());
        // A flipped bit in each proof hash.
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i], pick.2);
            prop_assert!(verify_inclusion(index, size, &leaf, &p, &root).is_err());
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
        prop_assert!(verify_consistency(old, new, &flip(&r1, pick.2), &r2, &proof).is_err());
        prop_assert!(verify_consistency(old, new, &r1, &flip(&r2, pick.2), &proof).is_err());
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i], pick.2);
            prop_assert!(verify_consistency(old, new, &r1, &r2, &p).is_err());
        }
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
    }
}
