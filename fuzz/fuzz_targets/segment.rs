//! libFuzzer over one segment file, placed as `00000000000000000001.seg` of an otherwise
//! empty log directory and read by `segment::scan` (what `FileStore::open` and `verify`
//! run): no panic; a refusal is `Corrupt`, naming that segment and an offset inside it; an
//! accepted file yields a chain whose records all lie inside it. Seeds:
//! `fuzz/corpus/segment/`. `tests/fuzz_segments.rs` runs the same with proptest in CI.
//!
//!     cargo fuzz run segment -- -max_total_time=300 -malloc_limit_mb=256
#![no_main]

use libfuzzer_sys::fuzz_target;
use license_ledger::store::file::segment::{list_segments, scan};
use license_ledger::store::StoreError;

fuzz_target!(|bytes: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("00000000000000000001.seg");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let Ok(segments) = list_segments(dir.path()) else {
        panic!("a well-named segment is listed");
    };
    let mut visited = 0u64;
    match scan(
        &segments,
        |_, loc| {
            assert!(loc.offset + u64::from(loc.len) <= bytes.len() as u64);
            visited += 1;
            Ok(())
        },
        |_| {},
    ) {
        Ok(report) => {
            assert_eq!(report.count, visited);
            if let Some(torn) = &report.torn {
                assert!(torn.valid_len <= torn.file_len);
                assert_eq!(torn.file_len, bytes.len() as u64);
            }
        }
        Err(StoreError::Corrupt {
            segment, offset, ..
        }) => {
            assert!(segment.ends_with("00000000000000000001.seg"), "{segment}");
            assert!(
                offset <= bytes.len() as u64,
                "offset {offset} past {}",
                bytes.len()
            );
        }
        Err(other) => panic!("a segment refused with {other}"),
    }
});
