//! Helpers: a temporary data directory and running the real binary on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `keyledger` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyledger")
}

/// A temporary data directory, removed on drop.
pub struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    pub fn new() -> Self {
        Data {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `keyledger --data <dir> <args…>` with logs at `trace`, so tests
    /// that search the output for secrets search the logs too.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--data")
            .arg(self.path())
            .args(args)
            .env("KEYLEDGER_LOG", "trace")
            .env_remove("KEYLEDGER_TENANT")
            .output()
            .expect("the binary runs")
    }

    /// Runs and expects success; returns standard output.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "keyledger {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs with `--json` and parses standard output.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut with = args.to_vec();
        with.push("--json");
        let text = self.ok(&with);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }
}

/// Every file below `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}
