//! Helpers: a temporary data directory and running the real binary on it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `keyledger` binary under test.
/// The audit origin the binary is started with here: the one data
/// directories used before it was configurable (`keyledger`), so that the
/// tests pin `keyledger/<tenant>` (the default, `<host name>/log`, is tested
/// in tests/transparency.rs).
pub const LEGACY_ORIGIN: &str = "keyledger";

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
            .env("KEYLEDGER_AUDIT_ORIGIN", LEGACY_ORIGIN)
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

/// Reads a started `keyledger serve`'s standard output on a thread, passing
/// every line to `tee`, and returns the address of its
/// `listening on http://` line; `None` when none comes within `within`.
pub fn listening_addr(
    child: &mut Child,
    within: Duration,
    mut tee: impl FnMut(&str) + Send + 'static,
) -> Option<String> {
    let out = child.stdout.take().expect("piped standard output");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            tee(&line);
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    rx.recv_timeout(within).ok()
}

/// Waits up to `within` for `child` to exit by itself; its status, or
/// `None` when it is still running.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Copies every file below `from` into `to`, keeping the layout.
pub fn copy_dir(from: &Path, to: &Path) {
    for file in files(from) {
        let rel = file.strip_prefix(from).unwrap_or_else(|e| panic!("{e}"));
        let dest = to.join(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::copy(&file, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
    }
}

/// Runs `keyledger --data <data> serve` on a free port, expecting it to
/// refuse the data directory and exit by itself; fails the test if it is
/// still running after a minute. Its output (logs at `warn`, so the pipes
/// cannot fill; no operator token from the environment).
pub fn serve_until_exit(data: &Path) -> Output {
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("KEYLEDGER_LOG", "warn")
        .env_remove("KEYLEDGER_OPERATOR_TOKEN")
        .env("KEYLEDGER_AUDIT_ORIGIN", LEGACY_ORIGIN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    if wait_exit(&mut child, Duration::from_secs(60)).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("its output");
        panic!(
            "serve kept running on {}:\n{}{}",
            data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("its output")
}
