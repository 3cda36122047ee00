//! libFuzzer over event payloads: the first byte picks a `(type, version)` of the catalogue,
//! the rest is the payload, through `Event::decode_payload`. A record's hash seals its
//! payload, so mutating whole records (the `record` target) rarely gets past the hash check;
//! this target starts behind it, where postcard and the value types' checks are. Whatever
//! decodes re-encodes and decodes to itself.
//!
//!     cargo fuzz run payload -- -max_total_time=300 -malloc_limit_mb=64
#![no_main]

use ledger_events::{Event, EVENT_TYPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, payload)) = bytes.split_first() else {
        return;
    };
    let (event_type, version) = EVENT_TYPES[usize::from(pick) % EVENT_TYPES.len()];
    if let Ok(event) = Event::decode_payload(event_type, version, payload) {
        if version == event.schema_version() {
            let again = event.encode_payload().expect("re-encode payload");
            assert_eq!(
                Event::decode_payload(event_type, version, &again).expect("decode again"),
                event
            );
        }
    }
});
