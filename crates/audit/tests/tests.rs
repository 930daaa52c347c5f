//! keyledger-audit's tests: known-answer vectors, properties, and the bundle verifier.

mod cosignature;
mod properties;
mod vectors;
mod verify;
