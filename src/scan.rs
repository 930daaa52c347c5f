//! `keyledger scan PATH…`: finds keys of this deployment in files.
//!
//! A key is found by its shape alone, with no lookup: the deployment's
//! prefix, `_`, 49 base62 characters, standing apart from other letters,
//! digits and `_` (the regular expression of docs/security.md), whose
//! last six characters are the CRC32 of the rest
//! (`keyledger_core::secret::check`). A candidate with a bad checksum is a
//! random string that happens to look like a key, and is left out.
//!
//! Directories are walked; `.git` directories are skipped, symbolic links
//! are not followed (one named on the command line neither), and binary
//! files (a NUL byte in their first 8 KiB, as git and grep judge) are
//! skipped. Findings are printed masked, with file, line and column.
//!
//! Exit codes, as gitleaks': 0 when no key is found, 1 when one is
//! (reported or not), 2 on an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args as ClapArgs;
use keyledger_core::secret::{self, BODY_CHARS, CHECKSUM_CHARS};
use regex::bytes::Regex;
use serde::Serialize;

use crate::cli::{Failure, Result};
use crate::output::Out;

/// Options of `keyledger scan`.
#[derive(ClapArgs, Debug)]
pub struct ScanArgs {
    /// Files and directories to scan.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Report the keys found to the server (--url and a credential, or
    /// `keyledger login`) as leaked: each active one is revoked at once
    /// (POST /v1/keys/leaked). The answer says how many are keys there.
    #[arg(long)]
    pub report: bool,
}

/// Bytes read from the head of a file to tell a binary one.
const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// Files larger than this are skipped (with a note).
const FILE_BYTES_MAX: u64 = 64 << 20;

/// The regular expression that finds candidates with `prefix`: the same
/// as docs/security.md gives for secret scanners, in Rust's syntax
/// (ASCII word boundaries).
pub fn pattern(prefix: &str) -> String {
    format!(
        r"(?-u:\b){}_[0-9A-Za-z]{{{}}}(?-u:\b)",
        regex::escape(prefix),
        BODY_CHARS + CHECKSUM_CHARS
    )
}

/// One key found.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// The file, as reached from the path given.
    pub path: String,
    /// Its line, from 1.
    pub line: usize,
    /// Its column (in bytes), from 1.
    pub column: usize,
    /// The key, masked (first 8 characters, `…`, last 4).
    pub key: String,
    /// The key itself: sent by `--report`, never printed.
    #[serde(skip)]
    secret: String,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct ScanBody<'a> {
    findings: &'a [Finding],
    files_scanned: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported: Option<&'a crate::remote::LeakReportBody>,
}

/// The keys in `bytes` (a file's contents), well formed and with a
/// matching checksum, with their line and column.
pub fn find_in(pattern: &Regex, bytes: &[u8]) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    for m in pattern.find_iter(bytes) {
        let Ok(text) = std::str::from_utf8(m.as_bytes()) else {
            continue;
        };
        if secret::check(text).is_err() {
            continue;
        }
        let before = &bytes[..m.start()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        found.push((line, m.start() - line_start + 1, text.to_owned()));
    }
    found
}

/// Scans every path; notes what is skipped on standard error.
fn scan(paths: &[PathBuf], pattern: &Regex) -> Result<(Vec<Finding>, usize)> {
    let mut findings = Vec::new();
    let mut files = 0;
    for root in paths {
        if std::fs::symlink_metadata(root).is_err() {
            return Err(Failure::msg(format!(
                "{}: no such file or directory",
                root.display()
            )));
        }
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .follow_root_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git");
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("note: skipped: {e}");
                    continue;
                }
            };
            let kind = entry.file_type();
            if kind.is_symlink() {
                eprintln!(
                    "note: skipped {}: a symbolic link (not followed)",
                    entry.path().display()
                );
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if let Some(found) = scan_file(entry.path(), pattern) {
                files += 1;
                findings.extend(found);
            }
        }
    }
    Ok((findings, files))
}

/// One file's findings; `None` when it was skipped (noted).
fn scan_file(path: &Path, pattern: &Regex) -> Option<Vec<Finding>> {
    let skip = |why: String| {
        eprintln!("note: skipped {}: {why}", path.display());
        None
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > FILE_BYTES_MAX => {
            return skip(format!("larger than {} MiB", FILE_BYTES_MAX >> 20));
        }
        Ok(_) => {}
        Err(e) => return skip(e.to_string()),
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return skip(e.to_string()),
    };
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return None;
    }
    Some(
        find_in(pattern, &bytes)
            .into_iter()
            .map(|(line, column, secret)| Finding {
                path: path.display().to_string(),
                line,
                column,
                key: secret::mask(&secret),
                secret,
            })
            .collect(),
    )
}

/// Runs `keyledger scan`.
pub fn run(args: &crate::cli::Args, scan_args: &ScanArgs, out: &Out) -> Result<ExitCode> {
    let prefix = keyledger_core::KeyPrefix::new(&args.key_prefix).map_err(Failure::msg)?;
    let pattern = Regex::new(&pattern(prefix.as_str()))
        .map_err(|e| Failure::msg(format!("the key pattern does not compile: {e}")))?;
    let (findings, files) = scan(&scan_args.paths, &pattern)?;
    let reported = if scan_args.report && !findings.is_empty() {
        let remote = crate::login::remote_for(args)?.ok_or_else(|| {
            Failure::msg(
                "--report sends the keys found to a server: give --url (or KEYLEDGER_URL) with \
                 a credential, or run `keyledger login`",
            )
        })?;
        let mut secrets: Vec<&str> = findings.iter().map(|f| f.secret.as_str()).collect();
        secrets.sort_unstable();
        secrets.dedup();
        let mut answers = Vec::new();
        for chunk in secrets.chunks(keyledger_core::limits::LEAK_SECRETS_MAX) {
            answers.push(remote.report_leaked(chunk, "keyledger scan")?);
        }
        Some(crate::remote::LeakReportBody {
            reported: answers.iter().map(|a| a.reported).sum(),
            found: answers.iter().map(|a| a.found).sum(),
        })
    } else {
        None
    };
    let body = ScanBody {
        findings: &findings,
        files_scanned: files,
        reported: reported.as_ref(),
    };
    out.value(&body, || text(&body))?;
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn text(body: &ScanBody<'_>) -> String {
    let mut s = String::new();
    for f in body.findings {
        s.push_str(&format!("{}:{}:{}: {}\n", f.path, f.line, f.column, f.key));
    }
    let keys = body.findings.len();
    s.push_str(&format!(
        "{keys} key{} found in {} file{} scanned",
        if keys == 1 { "" } else { "s" },
        body.files_scanned,
        if body.files_scanned == 1 { "" } else { "s" },
    ));
    if let Some(r) = body.reported {
        s.push_str(&format!(
            "\nreported {} distinct key{}; the server found {} (each one active is now revoked)",
            r.reported,
            if r.reported == 1 { "" } else { "s" },
            r.found,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_core::{KeyPrefix, Secret};

    fn key(n: u8) -> String {
        Secret::from_material(&KeyPrefix::default(), &[n; 32])
            .expose()
            .to_owned()
    }

    #[test]
    fn finds_keys_with_line_and_column_and_leaves_bad_checksums_out() {
        let re = Regex::new(&pattern("klk")).unwrap();
        let (a, b) = (key(1), key(2));
        let mut typo = b.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        let text = format!("x = \"{a}\"\n\nKEY={b} {typo}\nnot_{a}\n{a}x\n");
        let found = find_in(&re, text.as_bytes());
        assert_eq!(found, vec![(1, 6, a.clone()), (3, 5, b.clone())]);
    }
}
