//! The audit verifiers (keyledger-audit), on untrusted input: signed
//! checkpoint notes, and Merkle inclusion and consistency proofs. No input
//! panics; a note opens only if signed by the key; a proof is accepted only
//! for the true leaf or the true old root.
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
    match mode % 3 {
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
