//! The audit verifiers (keyledger-audit), on untrusted input: signed
//! checkpoint notes, Merkle inclusion and consistency proofs, and range
//! proofs (a bundle's leaves against a root, and the root of a smaller
//! tree from them). No input panics; a note opens only if signed by the
//! key; a proof is accepted only for the true leaf, the true old root or
//! the true leaves.
#![no_main]

use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::merkle::{self, Hash, Tree};
use libfuzzer_sys::fuzz_target;

fn hashes(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(note) = std::str::from_utf8(rest) else {
                return;
            };
            let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            if let Ok(c) = checkpoint::open(note, &key.verifying_key()) {
                assert!(
                    note.starts_with(&c.text()),
                    "opened a note whose text differs"
                );
                let signed = c.sign(&key);
                let line = signed[c.text().len()..].trim();
                assert!(
                    note.contains(line),
                    "opened a note without the key's signature"
                );
            }
            if let Ok(c) = Checkpoint::parse_text(note) {
                assert_eq!(Checkpoint::parse_text(&c.text()), Ok(c));
            }
        }
        1 => {
            // size (1..=64), index, leaf, proof.
            let [size, index, tail @ ..] = rest else {
                return;
            };
            let size = u64::from(*size % 64) + 1;
            let index = u64::from(*index);
            let mut tree = Tree::new();
            for i in 0..size {
                tree.push(&i.to_be_bytes());
            }
            let Ok(root) = tree.root(size) else { return };
            let (leaf, proof) = tail.split_at(tail.len().min(32));
            let mut l = [0u8; 32];
            l[..leaf.len()].copy_from_slice(leaf);
            if merkle::verify_inclusion(index, size, &l, &hashes(proof), &root).is_ok() {
                assert_eq!(
                    tree.leaf(index),
                    Some(l),
                    "a proof for a leaf not in the tree"
                );
            }
        }
        3 => {
            // size (1..=64), begin, count, which leaves to replace, proof.
            let [size, begin, count, mask, tail @ ..] = rest else {
                return;
            };
            let size = u64::from(*size % 64) + 1;
            let begin = u64::from(*begin) % size;
            let count = 1 + u64::from(*count) % (size - begin);
            let mut tree = Tree::new();
            for i in 0..size {
                tree.push(&i.to_be_bytes());
            }
            let (Ok(root), Ok(true_proof)) = (
                tree.root(size),
                tree.range_proof(begin, begin + count, size),
            ) else {
                return;
            };
            let truth: Vec<Hash> = (begin..begin + count)
                .filter_map(|i| tree.leaf(i))
                .collect();
            let mut leaves = truth.clone();
            let (fake, proof) = tail.split_at(tail.len().min(32));
            if *mask != 0 && !fake.is_empty() {
                let i = usize::from(*mask) % leaves.len();
                leaves[i][..fake.len()].copy_from_slice(fake);
            }
            // The fuzzer's proof, or the true one when it gives none.
            let proof = if proof.is_empty() {
                true_proof
            } else {
                hashes(proof)
            };
            if merkle::root_from_range(begin, size, &leaves, &proof) == Ok(root) {
                assert_eq!(leaves, truth, "a range proof for leaves not in the tree");
            }
            for m in begin + 1..=begin + count {
                if let (Ok(got), Ok(want)) = (
                    merkle::prefix_root_from_range(begin, m, &leaves, &proof),
                    tree.root(m),
                ) && got == want
                {
                    assert_eq!(
                        leaves[..(m - begin) as usize],
                        truth[..(m - begin) as usize],
                        "a smaller tree's root from leaves not in it"
                    );
                }
            }
        }
        _ => {
            let [old, new, tail @ ..] = rest else { return };
            let new = u64::from(*new % 64) + 1;
            let old = u64::from(*old) % (new + 1);
            let mut tree = Tree::new();
            for i in 0..new {
                tree.push(&i.to_be_bytes());
            }
            let (Ok(old_true), Ok(new_root)) = (tree.root(old), tree.root(new)) else {
                return;
            };
            let (claimed, proof) = tail.split_at(tail.len().min(32));
            let mut c = [0u8; 32];
            c[..claimed.len()].copy_from_slice(claimed);
            if merkle::verify_consistency(old, new, &c, &new_root, &hashes(proof)).is_ok() {
                assert_eq!(c, old_true, "a consistency proof for a false old root");
            }
        }
    }
});
