//! The write-ahead log's scan (what opening a log reads after a crash): no
//! input panics, the frames it accepts are exactly a prefix of the input,
//! re-encoded byte for byte, and a tail called damaged really has a whole
//! frame of the epoch after the bad one.
#![no_main]

use keyledger_store::wal::{Tail, encode_frame, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((epoch, file)) = data.split_first_chunk::<8>() else {
        return;
    };
    let epoch = u64::from_le_bytes(*epoch);
    let found = scan(file, epoch);
    let mut again = Vec::new();
    for records in &found.frames {
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        again.extend(encode_frame(epoch, &records));
    }
    assert!(
        file.starts_with(&again),
        "the frames read back are not the start of the file"
    );
    match found.tail {
        Tail::End => {}
        Tail::Torn { offset } => assert_eq!(offset, again.len()),
        Tail::Damaged { offset, next_good } => {
            assert_eq!(offset, again.len());
            assert!(next_good >= offset && next_good < file.len());
            let whole = scan(&file[next_good..], epoch);
            assert!(!whole.frames.is_empty(), "no whole frame where damage said one was");
        }
    }
});
