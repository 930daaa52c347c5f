//! The write-ahead log's scan (what opening a log reads after a crash): no
//! input panics, and the frames it accepts are exactly a prefix of the
//! input, re-encoded byte for byte.
#![no_main]

use keyledger_store::wal::{encode_frame, frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((epoch, file)) = data.split_first_chunk::<8>() else {
        return;
    };
    let epoch = u64::from_le_bytes(*epoch);
    let mut again = Vec::new();
    for records in frames(file, epoch) {
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        again.extend(encode_frame(epoch, &records));
    }
    assert!(
        file.starts_with(&again),
        "the frames read back are not the start of the file"
    );
});
