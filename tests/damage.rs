//! A damaged `ledger.redb`, black box: every command that opens it exits
//! non-zero with a message naming the file, and never panics.

use std::path::Path;

use crate::util::{Data, contains, copy_dir, serve_until_exit};

/// `keyledger serve` on `data`, run until it exits by itself: its exit
/// code and standard error.
fn serve(data: &Path) -> (Option<i32>, String) {
    let out = serve_until_exit(data);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One byte of a stopped data directory's `ledger.redb` flipped: in
/// redb's header (offset 0) and in tree pages (4096, 8192, 65536 and the
/// last page), where redb meets the damage by panicking (debug builds) or
/// reporting corruption (release builds). `audit verify`, `replay`,
/// `keys list` and `serve` each exit with status 2 and "error: … the
/// event log file …/ledger.redb is damaged …; restore it from a backup",
/// and print no panic.
///
/// The demo's file layout depends on timing (how its writes were batched),
/// so in some runs the last page, or the page at 64 KiB, is a free page
/// that no tree refers to. A flipped byte there damages nothing: then
/// `audit verify` must pass with exactly the undamaged copy's answer (the
/// same events, the same chain heads), never a smaller ledger. The header
/// and the first tree pages are always in use, so at least those three
/// flips must be refused.
#[test]
fn a_damaged_ledger_file_is_a_clear_error_naming_it_never_a_panic() {
    let d = Data::new();
    d.ok(&["demo"]);
    let ledger = std::fs::read(d.path().join("ledger.redb")).unwrap_or_else(|e| panic!("{e}"));
    let last_page = (ledger.len() - 1) / 4096 * 4096;
    assert!(
        ledger.len() > 65536,
        "the demo's file is {} bytes",
        ledger.len()
    );

    let mut unused = Vec::new();
    for offset in [0, 4096, 8192, 65536, last_page] {
        let copy = Data::new();
        copy_dir(&d.path(), &copy.path());
        // The copy verifies before the damage (json() insists on success).
        let undamaged = copy.json(&["audit", "verify"]);
        let mut bytes = ledger.clone();
        bytes[offset] ^= 0xff;
        std::fs::write(copy.path().join("ledger.redb"), &bytes).unwrap_or_else(|e| panic!("{e}"));
        if copy.run(&["audit", "verify"]).status.success() {
            // A free page: nothing refers to it (see above).
            assert_eq!(
                copy.json(&["audit", "verify"]),
                undamaged,
                "byte {offset} flipped: verify passes, so it must see the ledger unchanged"
            );
            unused.push(offset);
            continue;
        }

        let commands: [&[&str]; 3] = [
            &["audit", "verify"],
            &["replay"],
            &["keys", "list", "--tenant", "acme"],
        ];
        let mut results: Vec<(String, Option<i32>, String)> = commands
            .iter()
            .map(|args| {
                let out = copy.run(args);
                (
                    args.join(" "),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .collect();
        let (code, stderr) = serve(&copy.path());
        results.push(("serve".into(), code, stderr));

        for (what, code, stderr) in results {
            let context = format!("byte {offset} flipped, `{what}`: exit {code:?}\n{stderr}");
            assert_eq!(code, Some(2), "{context}");
            assert!(
                contains(stderr.as_bytes(), "ledger.redb is damaged"),
                "{context}"
            );
            assert!(
                contains(stderr.as_bytes(), "restore it from a backup"),
                "{context}"
            );
            // What the default panic hook prints.
            assert!(!contains(stderr.as_bytes(), "panicked at"), "{context}");
            assert!(!contains(stderr.as_bytes(), "backtrace"), "{context}");
        }
    }
    assert!(
        unused.iter().all(|&o| o >= 65536),
        "the header and the first tree pages are always in use, yet flips at {unused:?} passed"
    );
}
