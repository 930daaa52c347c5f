//! keyledger-audit's tests: known-answer vectors and properties.

mod properties;
mod vectors;
