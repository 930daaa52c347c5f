//! keyledger-store's integration tests, in one binary.

mod conformance;
mod damage;
mod envelope;
mod faults;
mod hostile;
mod postgres;
mod tamper;
mod wal;
