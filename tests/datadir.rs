//! The data directory cannot be steered by another local user: the real
//! binary refuses one that is writable by others, owned by another user or
//! holding links in place of its files, and names checkpoint files so that
//! tenants differing by case keep their own (docs/operations.md, "The data
//! directory's permissions").
#![cfg(unix)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::{Data, bin, serve_until_exit};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn create_key(d: &Data, tenant: &str) {
    d.ok(&[
        "keys", "create", "--tenant", tenant, "--user", "alice", "--name", "k",
    ]);
}

/// Exit code 2, and the message names the data directory and `what`.
#[track_caller]
fn assert_refused(out: &Output, data: &Path, what: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("refusing the data directory {}", data.display())),
        "{err}"
    );
    for w in what {
        assert!(err.contains(w), "the message says {w:?}: {err}");
    }
    err
}

#[test]
fn a_data_directory_writable_by_others_is_refused_with_how_to_fix_it() {
    let d = Data::new();
    create_key(&d, "acme");
    let data = d.path();
    assert_eq!(mode(&data), 0o700, "a new data directory is owner-only");
    chmod(&data, 0o777);
    let real = std::fs::canonicalize(&data).unwrap();
    let path = real.display().to_string();
    let fix = format!("chmod go-w {path}");
    for args in [
        &["keys", "list", "--tenant", "acme"][..],
        &["audit", "verify"][..],
        &["audit", "checkpoint", "--tenant", "acme"][..],
        &["demo"][..],
    ] {
        let out = d.run(args);
        assert_refused(&out, &data, &[&path, "mode 0777", &fix]);
    }
    assert_refused(&serve_until_exit(&data), &data, &[&path, "mode 0777", &fix]);
    assert_eq!(
        mode(&data),
        0o777,
        "never chmod'ed behind the operator's back"
    );

    // Group-writable: refused the same way. Fixed: accepted.
    chmod(&data, 0o770);
    assert_refused(
        &d.run(&["keys", "list", "--tenant", "acme"]),
        &data,
        &["mode 0770"],
    );
    chmod(&data, 0o755);
    d.ok(&["keys", "list", "--tenant", "acme"]);

    // A file in it writable by others.
    let log = data.join("ledger.redb");
    chmod(&log, 0o666);
    let out = d.run(&["keys", "list", "--tenant", "acme"]);
    let file = real.join("ledger.redb").display().to_string();
    assert_refused(
        &out,
        &data,
        &[&file, "mode 0666", &format!("chmod go-w {file}")],
    );
    chmod(&log, 0o600);

    // The signing key readable by others: it holds a secret.
    let key = data.join("audit-signing.key");
    chmod(&key, 0o644);
    let out = d.run(&["keys", "list", "--tenant", "acme"]);
    assert_refused(
        &out,
        &data,
        &["audit-signing.key", "holds a secret", "chmod 600"],
    );
    chmod(&key, 0o600);
    d.ok(&["keys", "list", "--tenant", "acme"]);
}

#[test]
fn a_data_directory_of_another_user_is_refused_and_left_as_it_is() {
    // Only root can give a directory away; the comparison itself is
    // unit-tested (`datadir::tests::ownership_is_compared_with_the_running_user`).
    let d = Data::new();
    let base = d.path().parent().unwrap().to_owned();
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&base).unwrap()) != 0 {
        eprintln!("not root: another user's directory cannot be made here");
        return;
    }
    let nobody = 65_534;
    let data = d.path();
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(nobody), Some(nobody)).unwrap();
    chmod(&data, 0o777);
    let out = d.run(&["keys", "list", "--tenant", "acme"]);
    assert_refused(&out, &data, &["owned by uid 65534", "chown"]);
    assert_refused(&serve_until_exit(&data), &data, &["owned by uid 65534"]);
    assert_eq!(mode(&data), 0o777, "not chmod'ed");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing written in it"
    );

    // Ours, with a token file of theirs in it: refused.
    std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
    chmod(&data, 0o700);
    let token = data.join("operator-token");
    std::fs::write(&token, "klop_chosen_by_the_other_user_0123456789\n").unwrap();
    chmod(&token, 0o600);
    std::os::unix::fs::chown(&token, Some(nobody), None).unwrap();
    assert_refused(
        &serve_until_exit(&data),
        &data,
        &["operator-token", "owned by uid 65534"],
    );
}

#[test]
fn a_linked_operator_token_is_refused() {
    let d = Data::new();
    create_key(&d, "acme");
    let data = d.path();
    let theirs = data.parent().unwrap().join("their-token");
    std::fs::write(&theirs, "klop_chosen_by_someone_else_0123456789\n").unwrap();
    symlink(&theirs, data.join("operator-token")).unwrap();
    let out = serve_until_exit(&data);
    assert_refused(&out, &data, &["operator-token is a symbolic link"]);
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "klop_chosen_by_someone_else_0123456789\n"
    );
}

#[test]
fn a_linked_checkpoint_file_is_refused_and_the_file_elsewhere_not_appended_to() {
    let d = Data::new();
    create_key(&d, "acme");
    let data = d.path();
    let checkpoint = data.join("checkpoints/acme.jsonl");
    assert!(
        checkpoint.exists(),
        "a checkpoint is written at the end of a command"
    );
    let elsewhere = data.parent().unwrap().join("elsewhere.jsonl");
    std::fs::write(&elsewhere, "not keyledger's\n").unwrap();
    std::fs::remove_file(&checkpoint).unwrap();
    symlink(&elsewhere, &checkpoint).unwrap();
    let out = d.run(&[
        "keys", "create", "--tenant", "acme", "--user", "bob", "--name", "k",
    ]);
    assert_refused(&out, &data, &["acme.jsonl is a symbolic link"]);
    assert_refused(
        &serve_until_exit(&data),
        &data,
        &["acme.jsonl is a symbolic link"],
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere).unwrap(),
        "not keyledger's\n"
    );
    // Nothing was written to the log either.
    std::fs::remove_file(&checkpoint).unwrap();
    let keys = d.json(&["keys", "list", "--tenant", "acme"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");
}

#[test]
fn a_linked_data_directory_is_used_by_its_real_path_and_never_chmoded_through() {
    let d = Data::new();
    let base = d.path().parent().unwrap().to_owned();
    let real = base.join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    let link = base.join("link");
    symlink(&real, &link).unwrap();
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("--data")
            .arg(&link)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "k",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        real.join("ledger.redb").exists(),
        "the log is in the real directory"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The target shared with others: refused, and left as it is.
    chmod(&real, 0o777);
    let out = run(&["keys", "list", "--tenant", "acme"]);
    let real = std::fs::canonicalize(&real).unwrap();
    assert_refused(&out, &link, &[&format!("{} is writable", real.display())]);
    assert_eq!(mode(&real), 0o777);
}

#[test]
fn tenants_differing_by_case_keep_separate_checkpoint_files() {
    let d = Data::new();
    create_key(&d, "ACME");
    create_key(&d, "acme");
    create_key(&d, "acme");
    let checkpoints = d.path().join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["%41%43%4D%45.jsonl", "acme.jsonl"]);
    let origins = |name: &str| -> Vec<String> {
        std::fs::read_to_string(checkpoints.join(name))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["note"]
                    .as_str()
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let upper = origins("%41%43%4D%45.jsonl");
    let lower = origins("acme.jsonl");
    assert!(
        !upper.is_empty() && upper.iter().all(|o| o == "keyledger/ACME"),
        "{upper:?}"
    );
    assert!(
        !lower.is_empty() && lower.iter().all(|o| o == "keyledger/acme"),
        "{lower:?}"
    );
    // Each tenant's bundle verifies with its own stored checkpoints.
    for tenant in ["ACME", "acme"] {
        let file = d.path().parent().unwrap().join(format!("{tenant}.bundle"));
        d.ok(&[
            "audit",
            "bundle",
            "--tenant",
            tenant,
            "--output",
            file.to_str().unwrap(),
        ]);
        let public = d.path().join("audit-signing.pub");
        d.ok(&[
            "audit",
            "verify-bundle",
            file.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ]);
    }
}

#[test]
fn checkpoint_files_named_by_an_earlier_version_are_carried_over() {
    let d = Data::new();
    create_key(&d, "ACME");
    create_key(&d, "a.b");
    create_key(&d, "acme");
    let checkpoints = d.path().join("checkpoints");
    // The layout an earlier version left: `<tenant>.jsonl`, raw.
    let read = |name: &str| std::fs::read_to_string(checkpoints.join(name)).unwrap();
    let upper = read("%41%43%4D%45.jsonl");
    let dotted = read("a%2Eb.jsonl");
    let lower = read("acme.jsonl");
    std::fs::rename(
        checkpoints.join("%41%43%4D%45.jsonl"),
        checkpoints.join("ACME.jsonl"),
    )
    .unwrap();
    std::fs::rename(
        checkpoints.join("a%2Eb.jsonl"),
        checkpoints.join("a.b.jsonl"),
    )
    .unwrap();

    // The first start after the upgrade renames them before reading any.
    let stored = d.json(&["audit", "checkpoint", "--tenant", "ACME"]);
    assert_eq!(stored["origin"], "keyledger/ACME", "{stored}");
    assert!(!checkpoints.join("ACME.jsonl").exists());
    assert!(!checkpoints.join("a.b.jsonl").exists());
    assert!(
        read("%41%43%4D%45.jsonl").starts_with(&upper),
        "the old lines kept, first"
    );
    assert!(read("a%2Eb.jsonl").starts_with(&dotted));
    assert!(read("acme.jsonl").starts_with(&lower));
    // The carried-over checkpoints are the tenant's: a bundle verifies
    // against them (it samples the stored checkpoints).
    let file = d.path().parent().unwrap().join("ACME.bundle");
    d.ok(&[
        "audit",
        "bundle",
        "--tenant",
        "ACME",
        "--output",
        file.to_str().unwrap(),
    ]);
    let bundle = std::fs::read_to_string(&file).unwrap();
    let header: serde_json::Value = serde_json::from_str(bundle.lines().next().unwrap()).unwrap();
    assert!(
        !header["earlier_checkpoints"].as_array().unwrap().is_empty(),
        "{header}"
    );

    // Both names present (a downgrade wrote the old one again): refused,
    // neither touched, with the command that merges them.
    std::fs::write(checkpoints.join("ACME.jsonl"), "older\n").unwrap();
    let out = d.run(&["keys", "list", "--tenant", "ACME"]);
    assert_refused(&out, &d.path(), &["ACME.jsonl", "both exist", "cat "]);
    assert_eq!(read("ACME.jsonl"), "older\n");
}
