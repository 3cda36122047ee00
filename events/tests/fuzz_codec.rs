//! CI-sized fuzzing of the record codec: arbitrary bytes, mutated valid records and mutated
//! JSON forms through `RecordView::parse`, `Record::decode`, `Event::decode_payload` and
//! `Record::from_json`. Properties: nothing panics; structural refusals name an offset inside
//! the input; a length field claiming a huge size is refused without allocating it (a
//! counting allocator measures the largest single allocation of each decode); a mutated
//! record that still decodes re-encodes to exactly its bytes. The seed corpus in
//! `fuzz/corpus/record/` and the files in `fuzz/regressions/record/` are replayed first.
//!
//! Cases per property: `PROPTEST_CASES` (default 256 here; CI may raise it).

mod common;
#[path = "support/fuzz.rs"]
mod fuzz;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::{all_samples, build_chain, golden_record};
use fuzz::{files_in, mutate, mutations, Mutation};
use ledger_events::{CodecError, Event, Record, RecordJson, RecordView, EVENT_TYPES};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// A counting allocator: the largest single allocation made by this thread since `reset`.
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; only the size is noted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it made.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// The most one decode of `input_len` bytes may allocate at once. Copies are bounded by the
/// input; serde preallocates at most 1 MiB for a sequence whatever its length prefix claims
/// (`serde::__private::size_hint::cautious`), so that is the fixed allowance.
fn allocation_bound(input_len: usize) -> usize {
    4 * input_len + (1 << 20) + 4096
}

#[test]
fn the_counting_allocator_sees_an_allocation_past_the_bound() {
    // The allocation checks below can fail: a decoder that trusted a length would do this.
    let (v, largest) = measured(|| Vec::<u8>::with_capacity(allocation_bound(100) + 1));
    assert!(v.capacity() > allocation_bound(100));
    assert!(largest > allocation_bound(100), "saw {largest}");
}

// ---------------------------------------------------------------------------------------------
// The properties, shared by proptest and the corpus replay.
// ---------------------------------------------------------------------------------------------

/// Checks that a structural refusal names a place inside the input.
fn assert_names_offset(e: &CodecError, len: usize) {
    match e {
        CodecError::Truncated { offset, needed } => {
            assert!(*offset <= len, "truncated offset {offset} past {len}");
            assert!(*needed > 0, "truncated needing 0 bytes");
        }
        CodecError::BadField { offset, .. } => {
            assert!(*offset < len, "bad field offset {offset} past {len}: {e}")
        }
        CodecError::TrailingBytes { extra } => {
            assert!(*extra > 0 && *extra <= len, "trailing {extra} of {len}")
        }
        other => panic!("parse refused with an error that names no offset: {other}"),
    }
}

/// One input through every decoder of the record format.
fn check_record_bytes(bytes: &[u8]) {
    let (parsed, largest) = measured(|| RecordView::parse(bytes).map(|_| ()));
    assert!(
        largest <= allocation_bound(bytes.len()),
        "parse allocated {largest}"
    );
    if let Err(e) = &parsed {
        assert_names_offset(e, bytes.len());
        assert!(!e.to_string().is_empty());
    }
    let (decoded, largest) = measured(|| Record::decode(bytes));
    assert!(
        largest <= allocation_bound(bytes.len()),
        "decode of {} bytes allocated {largest}",
        bytes.len()
    );
    match decoded {
        Ok(record) => {
            assert!(parsed.is_ok());
            // Whatever decodes is a record whose encoding is exactly these bytes.
            assert_eq!(record.encode().expect("re-encode"), bytes);
            let (event, largest) = measured(|| record.event());
            assert!(
                largest <= allocation_bound(bytes.len()),
                "event allocated {largest}"
            );
            if let Ok(event) = event {
                assert_eq!(event.event_type(), record.envelope.event_type);
                // A decoded record whose payload decodes round-trips through JSON.
                let json = record.to_json().expect("to_json of a decodable record");
                assert_eq!(Record::from_json(&json).expect("from_json"), record);
            }
        }
        Err(e) => {
            // A structural refusal is the same whichever entry point saw it.
            if let Err(p) = &parsed {
                assert_eq!(&e, p);
            }
        }
    }
}

/// A payload through the decoder of one `(type, version)`.
fn check_payload(event_type: &str, version: u16, payload: &[u8]) {
    let (result, largest) = measured(|| Event::decode_payload(event_type, version, payload));
    assert!(
        largest <= allocation_bound(payload.len()),
        "{event_type} v{version}: payload of {} bytes allocated {largest}",
        payload.len()
    );
    if let Ok(event) = result {
        // The decoded value is valid: it re-encodes and decodes to itself.
        if version == event.schema_version() {
            let again = event.encode_payload().expect("re-encode payload");
            assert_eq!(
                Event::decode_payload(event_type, version, &again).expect("decode again"),
                event
            );
        }
    }
}

fn check_json_text(text: &[u8]) {
    let Ok(json) = serde_json::from_slice::<RecordJson>(text) else {
        return;
    };
    let (result, largest) = measured(|| Record::from_json(&json));
    assert!(
        largest <= allocation_bound(text.len()),
        "from_json allocated {largest}"
    );
    if let Ok(record) = result {
        // Accepted JSON describes a record that encodes and decodes to itself.
        let bytes = record.encode().expect("encode accepted JSON");
        assert_eq!(
            Record::decode(&bytes).expect("decode accepted JSON"),
            record
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid records, chains and JSON forms. Also what `fuzz/corpus/record/` holds.
// ---------------------------------------------------------------------------------------------

fn seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = all_samples().iter().map(|s| golden_record(s).0).collect();
    v.extend(build_chain(3));
    v
}

fn json_seeds() -> Vec<String> {
    all_samples()
        .iter()
        .map(|s| {
            let (_, record) = golden_record(s);
            serde_json::to_string(&record.to_json().expect("to_json")).expect("json text")
        })
        .collect()
}

fn fuzz_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(rel)
}

/// Regenerates `fuzz/corpus/record/` when `LEDGER_FUZZ_WRITE_CORPUS=1`; otherwise replays
/// it and the regression folder (files ending `.json` go to `from_json`, others to the binary
/// decoders). The corpus must hold the seeds: an empty folder would replay nothing.
#[test]
fn the_record_corpus_and_regressions_replay_without_panic() {
    let corpus = fuzz_dir("corpus/record");
    if std::env::var_os("LEDGER_FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&corpus).expect("corpus dir");
        for (i, s) in seeds().iter().enumerate() {
            std::fs::write(corpus.join(format!("seed-{i:03}.bin")), s).expect("write seed");
        }
        for (i, s) in json_seeds().iter().take(4).enumerate() {
            std::fs::write(corpus.join(format!("seed-{i:03}.json")), s).expect("write seed");
        }
    }
    let files = files_in(&corpus);
    assert!(
        files.len() >= 4,
        "{} holds {} seeds; run with LEDGER_FUZZ_WRITE_CORPUS=1 to write them",
        corpus.display(),
        files.len()
    );
    let mut replayed = 0;
    for (path, bytes) in files
        .into_iter()
        .chain(files_in(&fuzz_dir("regressions/record")))
    {
        if path.extension().is_some_and(|x| x == "json") {
            check_json_text(&bytes);
        } else {
            check_record_bytes(&bytes);
        }
        replayed += 1;
    }
    assert!(replayed >= 4);
}

// ---------------------------------------------------------------------------------------------
// Targeted length-field attacks.
// ---------------------------------------------------------------------------------------------

/// Offset of the payload length field of a record with these header strings.
fn payload_len_offset(bytes: &[u8]) -> usize {
    let mut at = 32 + 60; // prev hash, fixed header up to and including actor_kind
    for _ in 0..3 {
        at += 1 + bytes[at] as usize;
    }
    at
}

#[test]
fn a_payload_length_claiming_gigabytes_is_refused_at_its_offset_without_allocating() {
    for s in all_samples() {
        let (mut bytes, _) = golden_record(&s);
        let at = payload_len_offset(&bytes);
        for claim in [u32::MAX, 1 << 31, 64 * 1024 + 1] {
            bytes[at..at + 4].copy_from_slice(&claim.to_be_bytes());
            let (err, largest) = measured(|| RecordView::parse(&bytes).map(|_| ()));
            assert!(largest < 1024, "{}: allocated {largest}", s.label);
            match err {
                Err(CodecError::BadField { field, offset, .. }) => {
                    assert_eq!((field, offset), ("payload_len", at), "{}", s.label)
                }
                other => panic!("{}: claim {claim}: {other:?}", s.label),
            }
        }
        // A claim within the limit but past the end: truncated, naming where the data stops.
        bytes[at..at + 4].copy_from_slice(&(64u32 * 1024).to_be_bytes());
        let (err, largest) = measured(|| RecordView::parse(&bytes).map(|_| ()));
        assert!(largest < 1024, "{}: allocated {largest}", s.label);
        match err {
            Err(CodecError::Truncated { offset, .. }) => assert_eq!(offset, at + 4),
            other => panic!("{}: {other:?}", s.label),
        }
    }
}

#[test]
fn a_sequence_length_prefix_claiming_huge_counts_allocates_at_most_the_fixed_allowance() {
    // Postcard varints of 2^32 and 2^62 - 1 followed by a few bytes, as every payload of
    // every (type, version): a sequence field trusting its prefix would ask for exabytes.
    let huge: [&[u8]; 3] = [
        &[0x80, 0x80, 0x80, 0x80, 0x10, 1, 2, 3],
        &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 1, 2, 3,
        ],
        &[0xff; 40],
    ];
    for &(event_type, version) in EVENT_TYPES {
        for payload in huge {
            check_payload(event_type, version, payload);
        }
        // And the prefix placed after each byte of a valid payload.
        if let Some(s) = all_samples()
            .iter()
            .find(|s| s.event.event_type() == event_type && s.event.schema_version() == version)
        {
            let valid = s.event.encode_payload().expect("payload");
            for cut in 0..valid.len() {
                let mut p = valid[..cut].to_vec();
                p.extend_from_slice(huge[1]);
                check_payload(event_type, version, &p);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Proptest.
// ---------------------------------------------------------------------------------------------

/// Removals of 1 to 15 bytes; length words of 0, 64 KiB, 64 KiB + 1 and 4 GiB - 1 (the
/// record format's limits), or any; random bytes appended.
fn mutation() -> impl Strategy<Value = Mutation> {
    mutations(16, &[u32::MAX, 0, 65_536, 65_537], true)
}

/// A JSON value to put in place of a field.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        "[0-9a-f]{0,200}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| json!(v)),
        Just(json!({})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_name_an_offset(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        check_record_bytes(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_prefix_never_panic(
        seed in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let seeds = seeds();
        let s = seed.get(&seeds);
        let mut bytes = s[..cut.index(s.len())].to_vec();
        bytes.extend_from_slice(&tail);
        check_record_bytes(&bytes);
    }

    #[test]
    fn mutated_valid_records_never_panic_and_decode_only_if_unchanged(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let seeds = seeds();
        let original = seed.get(&seeds).clone();
        let mut bytes = original.clone();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        check_record_bytes(&bytes);
        // A record is sealed by its hash: any change is refused.
        if bytes != original {
            prop_assert!(Record::decode(&bytes).is_err());
        }
    }

    #[test]
    fn mutated_valid_records_with_a_fixed_hash_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        // Re-sealing after the mutation gets past the hash check into the envelope and
        // payload decoders, which a random change otherwise never reaches.
        use sha2::{Digest, Sha256};
        let seeds = seeds();
        let mut bytes = seed.get(&seeds).clone();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        if bytes.len() >= 32 {
            let body = bytes.len() - 32;
            let hash: [u8; 32] = Sha256::digest(&bytes[..body]).into();
            bytes[body..].copy_from_slice(&hash);
        }
        check_record_bytes(&bytes);
    }

    #[test]
    fn arbitrary_payloads_never_panic_for_any_type_and_version(
        ty in any::<prop::sample::Index>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let (event_type, version) = *ty.get(EVENT_TYPES);
        check_payload(event_type, version, &payload);
    }

    #[test]
    fn mutated_json_records_never_panic_and_accepted_ones_are_exact(
        seed in any::<prop::sample::Index>(),
        field in any::<prop::sample::Index>(),
        value in json_value(),
        text_mutation in proptest::option::of(mutation()),
    ) {
        let seeds = json_seeds();
        let text = seed.get(&seeds);
        let mut json: serde_json::Value = serde_json::from_str(text).expect("seed json");
        if let Some(obj) = json.as_object_mut() {
            let keys: Vec<String> = obj.keys().cloned().collect();
            let key = field.get(&keys).clone();
            obj.insert(key, value);
        }
        let mut bytes = serde_json::to_vec(&json).expect("json");
        if let Some(m) = text_mutation {
            mutate(&mut bytes, &m);
        }
        check_json_text(&bytes);
    }
}

/// Regenerates `fuzz/corpus/payload/` (the cargo-fuzz `payload` target's seeds: one byte
/// picking the `(type, version)` in `EVENT_TYPES`, then that event's payload) when
/// `LEDGER_FUZZ_WRITE_CORPUS=1`; otherwise replays it through the payload decoders.
#[test]
fn the_payload_corpus_replays_without_panic() {
    let corpus = fuzz_dir("corpus/payload");
    if std::env::var_os("LEDGER_FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&corpus).expect("corpus dir");
        for s in all_samples() {
            let (_, record) = golden_record(&s);
            let e = &record.envelope;
            let pick = EVENT_TYPES
                .iter()
                .position(|&(t, v)| t == e.event_type && v == e.schema_version)
                .expect("a catalogue type");
            let mut seed = vec![u8::try_from(pick).expect("under 256 types")];
            seed.extend_from_slice(&record.payload);
            let name = format!("{}-v{}.bin", e.event_type, e.schema_version);
            std::fs::write(corpus.join(name), seed).expect("write seed");
        }
    }
    let files = files_in(&corpus);
    assert!(
        files.len() >= EVENT_TYPES.len(),
        "{} holds {} seeds for {} types; run with LEDGER_FUZZ_WRITE_CORPUS=1 to write them",
        corpus.display(),
        files.len(),
        EVENT_TYPES.len()
    );
    for (path, bytes) in files {
        let (&pick, payload) = bytes.split_first().expect("a seed has a type byte");
        let (event_type, version) = EVENT_TYPES[usize::from(pick) % EVENT_TYPES.len()];
        check_payload(event_type, version, payload);
        assert!(
            Event::decode_payload(event_type, version, payload).is_ok(),
            "seed {} does not decode",
            path.display()
        );
    }
}
