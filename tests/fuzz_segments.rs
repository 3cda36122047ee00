//! CI-sized fuzzing of the segment reader: arbitrary and mutated segment files through
//! `segment::scan` and through `FileStore::open` on a temporary directory. Properties:
//! nothing panics; a refusal is `StoreError::Corrupt` naming an offset inside the file; what
//! a scan accepts is a prefix of the records that were written (damage never invents or
//! reorders records); a valid log with anything appended to its last segment keeps every
//! acknowledged record, losing at most the appended tail (or is refused naming the offset
//! where the garbage starts). The seed corpus in `fuzz/corpus/segment/` and the files in
//! `fuzz/regressions/segment/` are replayed first, each as the first segment of a log.
//!
//! Cases per property: `PROPTEST_CASES` (default 128 for scans, a quarter for opens).

#[path = "../events/tests/support/fuzz.rs"]
mod fuzz;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fuzz::{files_in, mutate, mutations, Mutation};
use license_ledger::clock::ManualClock;
use license_ledger::store::conformance::{new_event, start_time, stream};
use license_ledger::store::file::durable::read_mark;
use license_ledger::store::file::segment::{list_segments, scan, segment_path, ScanReport};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, StoreError};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A log as written by the store: its segment files' bytes in order, with the records of
/// each (as stored) for comparison.
#[derive(Clone, Debug)]
struct Log {
    segments: Vec<(u64, Vec<u8>)>,
    records: Vec<Vec<u8>>,
}

async fn write_log(segment_bytes_max: Option<u64>, appends: u32) -> Log {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = FileStoreConfig::new(dir.path());
    if let Some(max) = segment_bytes_max {
        config.segment_bytes_max = max;
    }
    let store = FileStore::open(config, Arc::new(ManualClock::new(start_time())))
        .await
        .expect("open");
    for i in 0..appends {
        // Every third append carries three events: end-of-append marks inside a segment.
        let events = if i % 3 == 0 {
            vec![new_event(i), new_event(i + 1000), new_event(i + 2000)]
        } else {
            vec![new_event(i)]
        };
        store
            .append(
                &stream(&format!("s{}", i % 4)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .expect("append");
    }
    store.close().await.expect("close");
    drop(store);
    let segments: Vec<(u64, Vec<u8>)> = list_segments(dir.path())
        .expect("list")
        .into_iter()
        .map(|s| (s.first_position, std::fs::read(&s.path).expect("read")))
        .collect();
    let (report, records) = scan_dir(dir.path());
    let report = report.expect("a fresh log scans");
    assert!(report.torn.is_none());
    Log { segments, records }
}

/// The seed logs: one segment of 20 appends, and a log of several 4 KiB segments.
fn seeds() -> &'static (Log, Log) {
    static SEEDS: OnceLock<(Log, Log)> = OnceLock::new();
    SEEDS.get_or_init(|| {
        runtime().block_on(async {
            let one = write_log(None, 20).await;
            let many = write_log(Some(FileStoreConfig::SEGMENT_BYTES_MIN), 40).await;
            assert!(many.segments.len() >= 3, "{} segments", many.segments.len());
            (one, many)
        })
    })
}

/// Scans the segments of `dir`, collecting every record visited.
fn scan_dir(dir: &Path) -> (Result<ScanReport, StoreError>, Vec<Vec<u8>>) {
    let mut seen = Vec::new();
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(e) => return (Err(e), seen),
    };
    let mark = match read_mark(dir) {
        Ok(m) => m,
        Err(e) => return (Err(e), seen),
    };
    let report = scan(
        &segments,
        mark.as_ref(),
        |view, _| {
            seen.push(view.bytes().to_vec());
            Ok(())
        },
        |_| {},
    );
    (report, seen)
}

fn write_segments(dir: &Path, segments: &[(u64, Vec<u8>)]) {
    for (first, bytes) in segments {
        std::fs::write(segment_path(dir, *first), bytes).expect("write segment");
    }
}

/// Checks a refusal: it is `Corrupt`, names a `.seg` file of the directory, and an offset
/// inside it.
fn assert_names_place(e: &StoreError, segments: &[(u64, Vec<u8>)]) {
    match e {
        StoreError::Corrupt {
            segment,
            offset,
            problem,
            ..
        } => {
            let len = segments
                .iter()
                .find(|(first, _)| segment.ends_with(&format!("{first:020}.seg")))
                .map(|(_, b)| b.len() as u64)
                .unwrap_or_else(|| panic!("refusal names no segment of the log: {segment}"));
            assert!(
                *offset <= len,
                "offset {offset} past the file ({len}): {problem}"
            );
            assert!(!problem.is_empty());
            let text = e.to_string();
            assert!(
                text.contains(&offset.to_string()),
                "message hides the offset: {text}"
            );
        }
        other => panic!("refused with something else than Corrupt: {other}"),
    }
}

/// One log through `scan`; returns the report (or the refusal) and the records visited.
fn check_scan(
    segments: &[(u64, Vec<u8>)],
    written: Option<&[Vec<u8>]>,
) -> (Result<ScanReport, StoreError>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path(), segments);
    let (report, seen) = scan_dir(dir.path());
    match &report {
        Ok(r) => {
            assert_eq!(r.count as usize, seen.len());
            if let Some(t) = &r.torn {
                assert!(t.valid_len <= t.file_len);
                let last = segments.last().expect("a torn tail has a segment");
                assert_eq!(t.file_len, last.1.len() as u64);
            }
            if let Some(written) = written {
                // Damage may only lose a tail: what survives is what was written, in order.
                assert!(seen.len() <= written.len(), "scan invented records");
                assert_eq!(seen[..], written[..seen.len()], "scan changed records");
            }
        }
        Err(e) => assert_names_place(e, segments),
    }
    (report, seen)
}

/// The same log through `FileStore::open` (which cuts a torn tail), then a reopen.
fn check_open(segments: &[(u64, Vec<u8>)], written: Option<&[Vec<u8>]>) -> Option<usize> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segments(dir.path(), segments);
    runtime().block_on(async {
        let open = || {
            FileStore::open(
                FileStoreConfig::new(dir.path()),
                Arc::new(ManualClock::new(start_time())),
            )
        };
        match open().await {
            Ok(store) => {
                let mut kept = Vec::new();
                loop {
                    let batch = store
                        .read_all(kept.len() as u64 + 1, 1000)
                        .await
                        .expect("read an opened store");
                    if batch.is_empty() {
                        break;
                    }
                    kept.extend(batch.into_iter().map(|r| r.encode().expect("encode")));
                }
                if let Some(written) = written {
                    assert!(kept.len() <= written.len());
                    assert_eq!(kept[..], written[..kept.len()]);
                }
                store.close().await.expect("close");
                drop(store);
                // Whatever open repaired opens again unchanged.
                let again = open().await.expect("a repaired log reopens");
                again.close().await.expect("close");
                Some(kept.len())
            }
            Err(e) => {
                assert_names_place(&e, segments);
                // A refused open changes nothing on disk.
                for (first, bytes) in segments {
                    let now = std::fs::read(segment_path(dir.path(), *first)).unwrap_or_default();
                    assert!(now == *bytes, "a refused open changed segment {first}");
                }
                None
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Corpus and regressions.
// ---------------------------------------------------------------------------------------------

fn fuzz_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(rel)
}

/// Regenerates `fuzz/corpus/segment/` when `LEDGER_FUZZ_WRITE_CORPUS=1`; otherwise replays it
/// and the regression folder, each file as segment 1 of a log, through scan and open.
#[test]
fn the_segment_corpus_and_regressions_replay_without_panic() {
    let corpus = fuzz_dir("corpus/segment");
    if std::env::var_os("LEDGER_FUZZ_WRITE_CORPUS").is_some() {
        let (one, many) = seeds();
        std::fs::create_dir_all(&corpus).expect("corpus dir");
        std::fs::write(
            corpus.join("one-segment-20-appends.seg"),
            &one.segments[0].1,
        )
        .expect("write seed");
        std::fs::write(corpus.join("first-of-several-4k.seg"), &many.segments[0].1)
            .expect("write seed");
        let mut torn = one.segments[0].1.clone();
        torn.truncate(torn.len() - 17);
        std::fs::write(corpus.join("torn-last-record.seg"), &torn).expect("write seed");
        std::fs::write(corpus.join("header-only.seg"), &one.segments[0].1[..32])
            .expect("write seed");
    }
    let files = files_in(&corpus);
    assert!(
        files.len() >= 3,
        "{} holds {} seeds; run with LEDGER_FUZZ_WRITE_CORPUS=1 to write them",
        corpus.display(),
        files.len()
    );
    for (path, bytes) in files
        .into_iter()
        .chain(files_in(&fuzz_dir("regressions/segment")))
    {
        let log = [(1u64, bytes)];
        let (report, _) = check_scan(&log, None);
        let opened = check_open(&log, None);
        assert_eq!(report.is_ok(), opened.is_some(), "{}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Targeted inputs.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_frame_length_claiming_two_gigabytes_is_refused_at_its_offset() {
    let (one, _) = seeds();
    let mut seg = one.segments[0].1.clone();
    // The first frame's word, right after the 32-byte header.
    seg[32..36].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let log = [(1u64, seg)];
    match check_scan(&log, None).0 {
        Err(StoreError::Corrupt {
            offset, problem, ..
        }) => {
            assert_eq!(offset, 32);
            assert!(problem.contains("impossible frame length"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(check_open(&log, None), None);
}

#[test]
fn zeros_or_a_cut_frame_appended_to_a_valid_log_are_cut_and_nothing_else_is_lost() {
    let (one, _) = seeds();
    let seg = &one.segments[0].1;
    let word = u32::from_be_bytes([seg[32], seg[33], seg[34], seg[35]]) & 0x7fff_ffff;
    let first_frame = &seg[32..32 + 8 + word as usize];
    let mut tails: Vec<Vec<u8>> = vec![vec![0; 1], vec![0; 4096]];
    for cut in [1, 7, 8, 9, 100, first_frame.len() - 1] {
        tails.push(first_frame[..cut.min(first_frame.len() - 1)].to_vec());
    }
    for tail in tails {
        let mut bytes = seg.clone();
        bytes.extend_from_slice(&tail);
        let log = [(1u64, bytes)];
        let (report, seen) = check_scan(&log, Some(&one.records));
        let report = report.unwrap_or_else(|e| panic!("tail of {}: {e}", tail.len()));
        assert_eq!(seen, one.records);
        let torn = report.torn.expect("the tail is reported torn");
        assert_eq!(torn.valid_len, seg.len() as u64);
        assert_eq!(
            check_open(&log, Some(&one.records)),
            Some(one.records.len())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Proptest.
// ---------------------------------------------------------------------------------------------

/// Removals of 1 to 63 bytes; frame words of 0, 2^31 - 1, 2^31 (the end-of-append bit
/// alone) and 4 GiB - 1, or any; nothing appended (appending is its own test below).
fn mutation() -> impl Strategy<Value = Mutation> {
    mutations(64, &[u32::MAX, 0x7fff_ffff, 0x8000_0000, 0], false)
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_as_a_segment_never_panic_and_refusals_name_an_offset(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        with_header in any::<bool>(),
    ) {
        let mut seg = Vec::new();
        if with_header {
            seg.extend_from_slice(&seeds().0.segments[0].1[..32]);
        }
        seg.extend_from_slice(&bytes);
        let _ = check_scan(&[(1, seg)], None);
    }

    #[test]
    fn mutated_single_segment_logs_lose_at_most_a_tail_or_are_refused_with_an_offset(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (one, _) = seeds();
        let mut seg = one.segments[0].1.clone();
        for m in &mutations {
            mutate(&mut seg, m);
        }
        let _ = check_scan(&[(1, seg)], Some(&one.records));
    }

    #[test]
    fn mutating_any_segment_of_a_multi_segment_log_loses_at_most_a_tail(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..3),
    ) {
        let (_, many) = seeds();
        let mut segments = many.segments.clone();
        let i = which.index(segments.len());
        for m in &mutations {
            mutate(&mut segments[i].1, m);
        }
        let (report, seen) = check_scan(&segments, Some(&many.records));
        if let Ok(r) = report {
            // Only the last segment may have a torn tail; damage earlier is refused.
            if i + 1 < segments.len() && segments[i].1 != many.segments[i].1 {
                prop_assert!(seen.len() == many.records.len() || r.torn.is_some(),
                    "damage in segment {i} of {} went unnoticed", segments.len());
            }
        }
    }

    #[test]
    fn random_bytes_appended_to_a_valid_log_never_lose_an_acknowledged_record(
        tail in proptest::collection::vec(any::<u8>(), 1..300),
    ) {
        let (one, _) = seeds();
        let mut seg = one.segments[0].1.clone();
        let valid_len = seg.len() as u64;
        seg.extend_from_slice(&tail);
        let (report, seen) = check_scan(&[(1, seg)], Some(&one.records));
        match report {
            Ok(r) => {
                prop_assert_eq!(seen.len(), one.records.len());
                prop_assert_eq!(r.torn.map(|t| t.valid_len), Some(valid_len));
            }
            // Garbage that is not a cut write is refused, blaming where it starts.
            Err(StoreError::Corrupt { offset, .. }) => prop_assert_eq!(offset, valid_len),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(128) / 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_logs_through_file_store_open_never_panic_and_keep_a_prefix(
        mutations in proptest::collection::vec(mutation(), 1..4),
        appended in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (one, _) = seeds();
        let mut seg = one.segments[0].1.clone();
        for m in &mutations {
            mutate(&mut seg, m);
        }
        seg.extend_from_slice(&appended);
        let log = [(1, seg)];
        let scanned = check_scan(&log, Some(&one.records)).0.is_ok();
        let opened = check_open(&log, Some(&one.records));
        prop_assert_eq!(scanned, opened.is_some(), "scan and open disagree");
    }
}
