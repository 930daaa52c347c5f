//! Known-answer tests: the 8-leaf test tree of the Certificate Transparency
//! reference implementations (as carried by transparency-dev/merkle,
//! `proof/verify_test.go`, and Chromium's `ct_log_verifier_unittest.cc`).

use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::merkle::{
    Hash, ProofError, Tree, empty_root, leaf_hash, verify_consistency, verify_inclusion,
};

fn h(s: &str) -> Hash {
    hex::decode(s).expect("hex").try_into().expect("32 bytes")
}

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// The roots of the trees of sizes 1 to 8.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, proof).
const INCLUSION: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old size, new size, proof).
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn tree() -> Tree {
    let mut t = Tree::new();
    for l in LEAVES {
        t.push(&hex::decode(l).expect("hex"));
    }
    t
}

#[test]
fn empty_tree_hash_is_sha256_of_nothing() {
    assert_eq!(
        empty_root(),
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(Tree::new().root(0), Ok(empty_root()));
}

#[test]
fn roots_of_every_prefix() {
    let t = tree();
    for (i, root) in ROOTS.iter().enumerate() {
        assert_eq!(t.root(i as u64 + 1), Ok(h(root)), "size {}", i + 1);
    }
    assert!(matches!(t.root(9), Err(ProofError::OutOfRange(_))));
}

#[test]
fn inclusion_proofs_are_generated_and_verified() {
    let t = tree();
    for (index, size, proof) in INCLUSION {
        let expected: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
        assert_eq!(
            t.inclusion_proof(index, size),
            Ok(expected.clone()),
            "{index} in {size}"
        );
        let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).expect("hex"));
        let root = h(ROOTS[size as usize - 1]);
        assert_eq!(
            verify_inclusion(index, size, &leaf, &expected, &root),
            Ok(())
        );
        // The corruptions of transparency-dev's verifierCheck.
        let bad_root = [0xab; 32];
        assert!(verify_inclusion(index, size, &leaf, &expected, &bad_root).is_err());
        assert!(verify_inclusion(index, size * 2, &leaf, &expected, &root).is_err());
        assert!(verify_inclusion(index + 1, size, &leaf, &expected, &root).is_err());
        assert!(verify_inclusion(index, size, &leaf_hash(b"WrongLeaf"), &expected, &root).is_err());
        let mut longer = expected.clone();
        longer.push(root);
        assert!(verify_inclusion(index, size, &leaf, &longer, &root).is_err());
        let mut front = vec![root];
        front.extend(&expected);
        assert!(verify_inclusion(index, size, &leaf, &front, &root).is_err());
        for i in 0..expected.len() {
            let mut flipped = expected.clone();
            flipped[i][0] ^= 8;
            assert!(verify_inclusion(index, size, &leaf, &flipped, &root).is_err());
        }
        if !expected.is_empty() {
            let shorter = &expected[..expected.len() - 1];
            assert!(verify_inclusion(index, size, &leaf, shorter, &root).is_err());
        }
    }
}

#[test]
fn consistency_proofs_are_generated_and_verified() {
    let t = tree();
    for (old, new, proof) in CONSISTENCY {
        let expected: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
        assert_eq!(
            t.consistency_proof(old, new),
            Ok(expected.clone()),
            "{old} to {new}"
        );
        let r1 = h(ROOTS[old as usize - 1]);
        let r2 = h(ROOTS[new as usize - 1]);
        assert_eq!(verify_consistency(old, new, &r1, &r2, &expected), Ok(()));
        if expected.is_empty() {
            continue;
        }
        // The corruptions of transparency-dev's verifierConsistencyCheck.
        assert!(verify_consistency(old - 1, new, &r1, &r2, &expected).is_err());
        assert!(verify_consistency(old + 1, new, &r1, &r2, &expected).is_err());
        assert!(verify_consistency(old ^ 2, new, &r1, &r2, &expected).is_err());
        assert!(verify_consistency(old, new * 2, &r1, &r2, &expected).is_err());
        assert!(verify_consistency(old, new / 2, &r1, &r2, &expected).is_err());
        assert!(verify_consistency(old, new, &r2, &r1, &expected).is_err());
        assert!(verify_consistency(old, new, &r1, &r2, &[]).is_err());
        let mut longer = expected.clone();
        longer.push(r1);
        assert!(verify_consistency(old, new, &r1, &r2, &longer).is_err());
        let mut front = vec![expected[0]];
        front.extend(&expected);
        assert!(verify_consistency(old, new, &r1, &r2, &front).is_err());
        assert!(verify_consistency(old, new, &r1, &r2, &expected[..expected.len() - 1]).is_err());
        for i in 0..expected.len() {
            let mut flipped = expected.clone();
            flipped[i][0] ^= 16;
            assert!(verify_consistency(old, new, &r1, &r2, &flipped).is_err());
        }
    }
}

#[test]
fn trivial_consistency_cases() {
    let (a, b) = ([1; 32], [2; 32]);
    assert_eq!(verify_consistency(0, 0, &a, &a, &[]), Ok(()));
    assert_eq!(verify_consistency(1, 1, &b, &b, &[]), Ok(()));
    assert!(verify_consistency(1, 1, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 0, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 2, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 1, &a, &a, &[a]).is_err());
    assert_eq!(verify_consistency(0, 5, &empty_root(), &b, &[]), Ok(()));
    assert!(verify_consistency(0, 5, &a, &b, &[]).is_err());
}

/// A checkpoint signs, opens, and follows the signed-note key-ID rule;
/// unknown keys are ignored and a changed text fails.
#[test]
fn checkpoint_round_trip_and_key_id_rule() {
    let key = keyledger_audit::SigningKey::from_bytes(&[7; 32]);
    let cp = Checkpoint {
        origin: "keyledger/acme".into(),
        size: 8,
        root: h(ROOTS[7]),
        extensions: vec!["time 2026-11-23T09:00:00.000000Z".into()],
    };
    let note = cp.sign(&key);
    assert!(note.starts_with(
        "keyledger/acme\n8\nXcnaeacGWamtVZy3Ad7Zoqudgjqt\
L0lgz+Nw7/RgQyg=\ntime 2026-11-23T09:00:00.000000Z\n\n\u{2014} keyledger/acme "
    ));
    assert_eq!(
        checkpoint::open(&note, &key.verifying_key()),
        Ok(cp.clone())
    );
    // The key ID is SHA-256(name || 0x0A || 0x01 || key)[:4].
    let mut input = b"keyledger/acme\n\x01".to_vec();
    input.extend_from_slice(key.verifying_key().as_bytes());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&input);
    assert_eq!(
        checkpoint::key_id("keyledger/acme", &key.verifying_key()),
        [digest[0], digest[1], digest[2], digest[3]]
    );
    // Another key: its signature is ignored, so nothing known verifies.
    let other = keyledger_audit::SigningKey::from_bytes(&[9; 32]);
    assert!(matches!(
        checkpoint::open(&cp.sign(&other), &key.verifying_key()),
        Err(keyledger_audit::NoteError::NoKnownSignature(_))
    ));
    // The text changed under a valid signature line.
    let forged = note.replacen("\n8\n", "\n9\n", 1);
    assert!(matches!(
        checkpoint::open(&forged, &key.verifying_key()),
        Err(keyledger_audit::NoteError::BadSignature(_))
    ));
    // The public key forms all read back.
    let vk = key.verifying_key();
    let vkey = checkpoint::verifier_key("keyledger/acme", &vk);
    assert_eq!(checkpoint::parse_public_key(&vkey), Ok(vk));
    assert_eq!(
        checkpoint::parse_public_key(&hex::encode(vk.as_bytes())),
        Ok(vk)
    );
}

/// Two of transparency-dev/merkle's published JSON vectors, verbatim
/// (`testdata/inclusion/4/happy-path.json`,
/// `testdata/consistency/1/happy-path.json`): base64 hashes, checked
/// against the tree built here and by the verifiers.
#[test]
fn transparency_dev_json_vectors() {
    use base64::Engine as _;
    let b64 = |s: &str| -> Hash {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64")
            .try_into()
            .expect("32 bytes")
    };
    // {"leafIdx":1,"treeSize":5,"root":…,"leafHash":…,"proof":[…]}
    let root = b64("Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=");
    let leaf = b64("lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=");
    let proof = [
        b64("bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="),
        b64("Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4="),
        b64("vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms="),
    ];
    let t = tree();
    assert_eq!(t.root(5), Ok(root));
    assert_eq!(t.leaf(1), Some(leaf));
    assert_eq!(t.inclusion_proof(1, 5), Ok(proof.to_vec()));
    assert_eq!(verify_inclusion(1, 5, &leaf, &proof, &root), Ok(()));
    // {"size1":1,"size2":8,"root1":…,"root2":…,"proof":[…]}
    let root1 = b64("bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=");
    let root2 = b64("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=");
    let proof = [
        b64("lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c="),
        b64("Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4="),
        b64("a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ="),
    ];
    assert_eq!(t.root(1), Ok(root1));
    assert_eq!(t.root(8), Ok(root2));
    assert_eq!(t.consistency_proof(1, 8), Ok(proof.to_vec()));
    assert_eq!(verify_consistency(1, 8, &root1, &root2, &proof), Ok(()));
}
