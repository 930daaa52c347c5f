//! keyledger-audit's tests: known-answer vectors, properties, and the bundle verifier.

mod properties;
mod vectors;
mod verify;
