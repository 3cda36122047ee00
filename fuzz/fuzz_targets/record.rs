//! libFuzzer over one record's bytes, through every decoder of the record format: the same
//! properties as `events/tests/fuzz_codec.rs` (which runs them with proptest in CI), with
//! coverage guidance. Seeds: `fuzz/corpus/record/`; libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb` catch an allocation driven by a length field.
//!
//!     cargo fuzz run record -- -max_total_time=300 -malloc_limit_mb=64
#![no_main]

use ledger_events::{CodecError, Record, RecordView};
use libfuzzer_sys::fuzz_target;

/// A structural refusal names a place inside the input.
fn names_offset(e: &CodecError, len: usize) -> bool {
    match e {
        CodecError::Truncated { offset, needed } => *offset <= len && *needed > 0,
        CodecError::BadField { offset, .. } => *offset < len,
        CodecError::TrailingBytes { extra } => *extra > 0 && *extra <= len,
        _ => false,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let parsed = RecordView::parse(bytes).map(|_| ());
    if let Err(e) = &parsed {
        assert!(names_offset(e, bytes.len()), "refusal names no offset: {e}");
    }
    match Record::decode(bytes) {
        Ok(record) => {
            assert!(parsed.is_ok(), "decode accepted what parse refused");
            // Whatever decodes is a record whose encoding is exactly these bytes.
            assert_eq!(record.encode().expect("re-encode"), bytes);
            if let Ok(event) = record.event() {
                assert_eq!(event.event_type(), record.envelope.event_type);
                let json = record.to_json().expect("to_json of a decodable record");
                assert_eq!(Record::from_json(&json).expect("from_json"), record);
            }
        }
        Err(e) => {
            if let Err(p) = &parsed {
                assert_eq!(&e, p, "decode and parse refuse differently");
            }
        }
    }
});
