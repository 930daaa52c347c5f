//! keyledger-store's integration tests, in one binary (docs/style.md,
//! *One integration binary*).

mod conformance;
mod damage;
mod envelope;
mod faults;
mod hostile;
mod key_index;
mod postgres;
mod tamper;
mod wal;
