//! Every backend passes the one conformance suite.

use std::path::PathBuf;

use keyledger_store::conformance::{Harness, run_all};
use keyledger_store::{EventLog, MemoryLog, RedbLog};

/// In memory: reopening is taking another handle on the same log.
#[derive(Default)]
struct Memory {
    current: MemoryLog,
}

impl Harness for Memory {
    fn fresh(&mut self) -> Box<dyn EventLog> {
        self.current = MemoryLog::new();
        Box::new(self.current.clone())
    }

    fn reopen(&mut self, log: Box<dyn EventLog>) -> Box<dyn EventLog> {
        drop(log);
        Box::new(self.current.clone())
    }
}

/// A redb file per test in a temporary directory; reopening closes the
/// file and opens it again.
struct Redb {
    dir: tempfile::TempDir,
    files: usize,
    current: PathBuf,
}

impl Harness for Redb {
    fn fresh(&mut self) -> Box<dyn EventLog> {
        self.files += 1;
        self.current = self.dir.path().join(format!("log-{}.redb", self.files));
        Box::new(RedbLog::open(&self.current).unwrap_or_else(|e| panic!("open: {e}")))
    }

    fn reopen(&mut self, log: Box<dyn EventLog>) -> Box<dyn EventLog> {
        drop(log);
        Box::new(RedbLog::open(&self.current).unwrap_or_else(|e| panic!("reopen: {e}")))
    }
}

#[test]
fn memory_log_passes_the_suite() {
    run_all(&mut Memory::default());
}

#[test]
fn redb_log_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    run_all(&mut Redb {
        dir,
        files: 0,
        current: PathBuf::new(),
    });
}

/// redb on the fault-injecting backend with no fault armed: reopening takes
/// another handle on the same in-memory "disk".
#[derive(Default)]
struct Faulty {
    current: keyledger_store::faults::FaultBackend,
}

impl Harness for Faulty {
    fn fresh(&mut self) -> Box<dyn EventLog> {
        self.current = keyledger_store::faults::FaultBackend::new().without_journal();
        Box::new(
            RedbLog::open_with_backend(self.current.clone())
                .unwrap_or_else(|e| panic!("open: {e}")),
        )
    }

    fn reopen(&mut self, log: Box<dyn EventLog>) -> Box<dyn EventLog> {
        drop(log);
        Box::new(
            RedbLog::open_with_backend(self.current.clone())
                .unwrap_or_else(|e| panic!("reopen: {e}")),
        )
    }
}

#[test]
fn redb_log_on_the_fault_backend_passes_the_suite() {
    run_all(&mut Faulty::default());
}
