//! Witness cosignatures (C2SP tlog-cosignature, Ed25519 `cosignature/v1`),
//! the "k of n" policy, and receipts (C2SP tlog-proof).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, SigningKey, Verifier as _};
use keyledger_audit::checkpoint::{self, Checkpoint};
use keyledger_audit::cosignature::{self, Cosigner, Policy, PolicyError, check_line, cosign};
use keyledger_audit::merkle::Tree;
use keyledger_audit::receipt::{Receipt, ReceiptError, verify_receipt};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "example.com/behind-the-sofa";

fn log_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn witness(n: u8) -> (SigningKey, Cosigner) {
    let key = SigningKey::from_bytes(&[10 + n; 32]);
    let c = Cosigner {
        name: format!("witness.example/w{n}"),
        key: key.verifying_key(),
    };
    (key, c)
}

fn tree(n: u8) -> Tree {
    let mut t = Tree::new();
    for i in 0..n {
        t.push(&[i; 32]);
    }
    t
}

fn checkpoint_of(t: &Tree) -> Checkpoint {
    Checkpoint {
        origin: ORIGIN.into(),
        size: t.len(),
        root: t.root(t.len()).unwrap(),
        extensions: vec![],
    }
}

/// The bytes, built here by hand from the spec: the key ID, the signed
/// message, the big-endian timestamp after the key ID.
#[test]
fn a_cosignature_is_the_spec_s_bytes() {
    let (key, c) = witness(1);
    let text =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    let line = cosign(text, &c.name, &key, 1_679_315_147);
    let b64 = line
        .strip_prefix("\u{2014} witness.example/w1 ")
        .and_then(|l| l.strip_suffix('\n'))
        .unwrap();
    let blob = B64.decode(b64).unwrap();
    assert_eq!(blob.len(), 4 + 8 + 64);
    let mut h = Sha256::new();
    h.update(b"witness.example/w1\n\x04");
    h.update(key.verifying_key().as_bytes());
    assert_eq!(blob[..4], h.finalize()[..4]);
    assert_eq!(blob[4..12], 1_679_315_147u64.to_be_bytes());
    let message = format!("cosignature/v1\ntime 1679315147\n{text}");
    let sig = Signature::from_slice(&blob[12..]).unwrap();
    key.verifying_key()
        .verify(message.as_bytes(), &sig)
        .expect("the signature is over the spec's message");
    assert_eq!(check_line(text, &line, &c), Ok(Some(1_679_315_147)));
    // The verifier key round-trips, and names type 0x04.
    let vkey = c.verifier_key();
    assert_eq!(Cosigner::parse(&vkey).unwrap(), c);
    let raw = B64.decode(vkey.splitn(3, '+').nth(2).unwrap()).unwrap();
    assert_eq!(raw[0], 0x04);
}

#[test]
fn a_cosignature_fails_on_any_other_text_key_or_time() {
    let (key, c) = witness(1);
    let (_, other) = witness(2);
    let t = tree(5);
    let text = checkpoint_of(&t).text();
    let line = cosign(&text, &c.name, &key, 1000);
    // Another checkpoint: refused.
    let text6 = checkpoint_of(&tree(6)).text();
    assert!(check_line(&text6, &line, &c).is_err());
    // Another witness's line is not this one's: ignored.
    assert_eq!(check_line(&text, &line, &other), Ok(None));
    // The same name with another key: another key ID, ignored.
    let impostor = Cosigner {
        name: c.name.clone(),
        key: other.key,
    };
    assert_eq!(check_line(&text, &line, &impostor), Ok(None));
    // A changed timestamp breaks the signature.
    let b64 = line.trim_end().rsplit(' ').next().unwrap();
    let mut blob = B64.decode(b64).unwrap();
    blob[11] ^= 1;
    let changed = format!("\u{2014} {} {}\n", c.name, B64.encode(&blob));
    assert!(check_line(&text, &changed, &c).is_err());
    // A timestamp of 2^63 or more is refused even when signed.
    let huge = cosign(&text, &c.name, &key, 1 << 63);
    assert!(check_line(&text, &huge, &c).is_err());
    // Flipped bits of the blob (every fifth: Ed25519 checks are slow
    // unoptimised) are refused or ignored, never accepted.
    for i in (0..blob.len() * 8).step_by(5) {
        let mut b = B64.decode(b64).unwrap();
        b[i / 8] ^= 1 << (i % 8);
        let l = format!("\u{2014} {} {}\n", c.name, B64.encode(&b));
        assert!(!matches!(check_line(&text, &l, &c), Ok(Some(_))), "bit {i}");
    }
}

#[test]
fn verifier_keys_that_are_not_witness_keys_are_refused() {
    let (_, c) = witness(1);
    let vkey = c.verifier_key();
    // The log's own (0x01) key, a wrong key ID, garbage.
    let log_vkey = checkpoint::verifier_key(ORIGIN, &log_key().verifying_key());
    for bad in [
        log_vkey.as_str(),
        &vkey.replacen('+', "+00", 1),
        "witness.example/w1",
        "a+b+c",
        "",
    ] {
        assert!(Cosigner::parse(bad).is_err(), "{bad}");
    }
    let mut id = vkey.split('+').nth(1).unwrap().to_owned();
    id.replace_range(0..1, if id.starts_with('0') { "1" } else { "0" });
    let parts: Vec<&str> = vkey.splitn(3, '+').collect();
    assert!(Cosigner::parse(&format!("{}+{id}+{}", parts[0], parts[2])).is_err());
}

/// k of n: passes with k cosignatures, fails with k - 1, whatever other
/// (unknown) signatures the note carries; a bad cosignature by a listed
/// witness is an error.
#[test]
fn a_policy_of_two_of_three() {
    let t = tree(9);
    let c = checkpoint_of(&t);
    let note = c.sign(&log_key());
    let text = c.text();
    let ws: Vec<(SigningKey, Cosigner)> = (1..=3).map(witness).collect();
    let policy = Policy::new(ws.iter().map(|w| w.1.clone()).collect(), 2).unwrap();
    let stranger = SigningKey::from_bytes(&[99; 32]);
    let one = format!(
        "{note}{}{}",
        cosign(&text, &ws[0].1.name, &ws[0].0, 5),
        cosign(&text, "stranger.example", &stranger, 5)
    );
    match policy.check(&one) {
        Err(PolicyError::TooFew {
            got: 1, needed: 2, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let two = format!("{one}{}", cosign(&text, &ws[2].1.name, &ws[2].0, 6));
    let who = policy.check(&two).unwrap();
    let names: Vec<&str> = who.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["witness.example/w1", "witness.example/w3"]);
    // The log's signature still opens the cosigned note.
    assert_eq!(
        checkpoint::open(&two, &log_key().verifying_key()).unwrap(),
        c
    );
    // The same witness twice counts once.
    let twice = format!("{one}{}", cosign(&text, &ws[0].1.name, &ws[0].0, 7));
    assert!(policy.check(&twice).is_err());
    // A listed witness's line by another key is ignored; a broken one is an error.
    let bad = format!(
        "{one}{}",
        cosign(&checkpoint_of(&tree(8)).text(), &ws[1].1.name, &ws[1].0, 6)
    );
    assert!(matches!(policy.check(&bad), Err(PolicyError::Note(_))));
    // Policies that cannot be met, or name a witness twice, are refused.
    assert!(Policy::new(vec![ws[0].1.clone()], 2).is_err());
    assert!(Policy::new(vec![ws[0].1.clone()], 0).is_err());
    assert!(Policy::new(vec![ws[0].1.clone(), ws[0].1.clone()], 1).is_err());
    assert_eq!(cosignature::signature_lines(&two).len(), 4);
}

fn receipt_of(t: &Tree, seq: u64, cosigners: &[(SigningKey, Cosigner)]) -> String {
    let c = checkpoint_of(t);
    let mut note = c.sign(&log_key());
    for (k, w) in cosigners {
        note.push_str(&cosign(&c.text(), &w.name, k, 42));
    }
    Receipt {
        chain_hash: [seq as u8 - 1; 32],
        index: seq - 1,
        proof: t.inclusion_proof(seq - 1, t.len()).unwrap(),
        note,
    }
    .to_text()
}

#[test]
fn a_receipt_verifies_and_every_alteration_fails() {
    let t = tree(13);
    let ws: Vec<(SigningKey, Cosigner)> = (1..=3).map(witness).collect();
    let text = receipt_of(&t, 6, &ws[..2]);
    assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra "));
    assert!(text.contains("\nindex 5\n"));
    let policy = Policy::new(ws.iter().map(|w| w.1.clone()).collect(), 2).unwrap();
    let key = log_key().verifying_key();
    let ok = verify_receipt(&text, &key, Some(&policy)).unwrap();
    assert_eq!((ok.position, ok.checkpoint.size), (6, 13));
    assert_eq!(ok.chain_hash, [5; 32]);
    assert_eq!(ok.cosigned.len(), 2);
    assert_eq!(Receipt::parse(&text).unwrap().to_text(), text);
    // Three of three: refused.
    let all = Policy::new(ws.iter().map(|w| w.1.clone()).collect(), 3).unwrap();
    assert!(matches!(
        verify_receipt(&text, &key, Some(&all)),
        Err(ReceiptError::Policy(_))
    ));
    // Another key: refused.
    let other = SigningKey::from_bytes(&[3; 32]).verifying_key();
    assert!(matches!(
        verify_receipt(&text, &other, None),
        Err(ReceiptError::Checkpoint(_))
    ));
    // Another event (extra), another index, a changed proof line.
    let receipt = Receipt::parse(&text).unwrap();
    let mut changed = Vec::new();
    let mut r = receipt.clone();
    r.chain_hash[0] ^= 1;
    changed.push(r.to_text());
    let mut r = receipt.clone();
    r.index = 6;
    changed.push(r.to_text());
    let mut r = receipt.clone();
    r.proof[1][3] ^= 0x40;
    changed.push(r.to_text());
    let mut r = receipt.clone();
    r.proof.pop();
    changed.push(r.to_text());
    for c in changed {
        assert!(matches!(
            verify_receipt(&c, &key, Some(&policy)),
            Err(ReceiptError::Proof { .. })
        ));
    }
    // Malformed texts: never a panic, always an error.
    for bad in [
        "",
        "c2sp.org/tlog-proof@v1\n",
        "c2sp.org/tlog-proof@v1\nindex 1\n\n",
        "c2sp.org/tlog-proof@v1\nextra AAAA\nindex 1\n\n",
        "c2sp.org/tlog-proof@v2\nextra AAAA\nindex 1\n\n",
    ] {
        assert!(verify_receipt(bad, &key, None).is_err(), "{bad:?}");
    }
    for cut in 0..text.len() {
        if text.is_char_boundary(cut) {
            let _ = verify_receipt(&text[..cut], &key, Some(&policy));
        }
    }
}
