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

#[path = "support/frames.rs"]
mod frames;
#[path = "../events/tests/support/fuzz.rs"]
mod fuzz;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fuzz::{files_in, mutate, mutations, Mutation};
use license_ledger::clock::ManualClock;
use license_ledger::store::conformance::{new_event, start_time, stream};
use license_ledger::store::file::durable::{read_mark, MARKER_FILE};
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
        append_mixed(&store, i).await;
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

/// Append number `i` of a test log: every third carries three events (end-of-append marks
/// inside a segment), over four streams. Returns its last position.
async fn append_mixed(store: &FileStore, i: u32) -> u64 {
    let events = if i.is_multiple_of(3) {
        vec![new_event(i), new_event(i + 1000), new_event(i + 2000)]
    } else {
        vec![new_event(i)]
    };
    let appended = store
        .append(
            &stream(&format!("s{}", i % 4)),
            ExpectedVersion::Any,
            events,
        )
        .await
        .expect("append");
    *appended.positions.end()
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

/// Every record an opened store serves, encoded.
async fn stored_records(store: &FileStore) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    loop {
        let batch = store
            .read_all(kept.len() as u64 + 1, 1000)
            .await
            .expect("read an opened store");
        if batch.is_empty() {
            return kept;
        }
        kept.extend(batch.into_iter().map(|r| r.encode().expect("encode")));
    }
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
                let kept = stored_records(&store).await;
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

// ---------------------------------------------------------------------------------------------
// The exhaustive sweep: every byte flipped, every length cut, on a log with a marker.
// ---------------------------------------------------------------------------------------------

/// A log as the store leaves it after a crash mid-write: a few hundred acknowledged records
/// over two segments, then one append of three records written but not acknowledged (the
/// durable-head marker names the last acknowledged position). `files` are every file of the
/// directory that recovery reads (segments, then `durable.head`).
struct SweepLog {
    files: Vec<(String, Vec<u8>)>,
    /// The acknowledged records, encoded.
    acked: Vec<Vec<u8>>,
    /// Where the last acknowledged append ends: (file index, length).
    acked_end: (usize, usize),
}

/// A scratch directory on tmpfs where there is one: the sweep opens the log some 150,000
/// times, and each open syncs the marker.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn sweep_log() -> &'static SweepLog {
    static LOG: OnceLock<SweepLog> = OnceLock::new();
    LOG.get_or_init(|| {
        runtime().block_on(async {
            let dir = scratch_dir();
            let mut config = FileStoreConfig::new(dir.path());
            config.segment_bytes_max = 24 * 1024;
            let open = |config: FileStoreConfig| {
                FileStore::open(config, Arc::new(ManualClock::new(start_time())))
            };
            let store = open(config.clone()).await.expect("open");
            let mut acked_position = 0;
            for i in 0..130u32 {
                acked_position = append_mixed(&store, i).await;
            }
            // The last append: on disk, never acknowledged.
            store
                .append(
                    &stream("s9"),
                    ExpectedVersion::Any,
                    vec![new_event(7001), new_event(7002), new_event(7003)],
                )
                .await
                .expect("append");
            store.close().await.expect("close");
            drop(store);
            frames::acknowledged_only_up_to(dir.path(), acked_position);
            let (_, records) = scan_dir(dir.path());
            let segments = list_segments(dir.path()).expect("list");
            assert_eq!(segments.len(), 2, "the sweep wants two segments");
            let mark = read_mark(dir.path()).expect("marker").expect("a marker");
            let mut files = Vec::new();
            let mut acked_end = (0, 0);
            for (i, s) in segments.iter().enumerate() {
                if s.first_position == mark.segment_first {
                    acked_end = (i, mark.segment_len as usize);
                }
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((name, std::fs::read(&s.path).expect("read")));
            }
            files.push((
                MARKER_FILE.to_owned(),
                std::fs::read(dir.path().join(MARKER_FILE)).expect("read marker"),
            ));
            let acked = records[..acked_position as usize].to_vec();
            assert!(acked.len() >= 200, "{} records", acked.len());
            assert_eq!(records.len(), acked.len() + 3);
            SweepLog {
                files,
                acked,
                acked_end,
            }
        })
    })
}

/// Whether the sweep covers `name` (`LEDGER_SWEEP_FILE=<part of a file name>` narrows a
/// sweep to one file while debugging; CI sweeps them all).
fn swept(name: &str) -> bool {
    std::env::var("LEDGER_SWEEP_FILE").map_or(true, |only| name.contains(&only))
}

/// What one damaged copy of the sweep log did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `verify` failed and `open` refused, changing nothing.
    Refused,
    /// Both went on, and `open` kept every acknowledged record (and this many in all).
    Kept(usize),
}

/// Writes `files` into `dir` (emptied first), then runs `verify` and `FileStore::open` on
/// it and checks they agree: a refusal by both (nothing changed on disk), or a clean
/// verify and an open that keeps every acknowledged record, setting aside in `cut/` exactly
/// the bytes it cut.
fn damage_case(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    files: &[(String, Vec<u8>)],
    acked: &[Vec<u8>],
    what: &str,
) -> Outcome {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("clear");
        } else {
            std::fs::remove_file(&path).expect("clear");
        }
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    let verified = license_ledger::cli::verify::verify(dir);
    rt.block_on(async {
        let opened = FileStore::open(
            FileStoreConfig::new(dir),
            Arc::new(ManualClock::new(start_time())),
        )
        .await;
        match (verified, opened) {
            (Err(v), Err(e)) => {
                assert!(
                    matches!(e, StoreError::Corrupt { .. }),
                    "{what}: refused with {e}"
                );
                assert!(
                    v.to_string().contains("damaged") || v.to_string().contains("torn"),
                    "{what}: verify said {v}"
                );
                for (name, bytes) in files {
                    let now = std::fs::read(dir.join(name)).unwrap_or_default();
                    assert!(now == *bytes, "{what}: a refused open changed {name}");
                }
                assert!(!dir.join("cut").exists(), "{what}: a refused open cut");
                Outcome::Refused
            }
            (Ok(report), Ok(store)) => {
                let kept = stored_records(&store).await;
                store.close().await.expect("close");
                assert!(
                    kept.len() >= acked.len(),
                    "{what}: lost acknowledged records"
                );
                assert!(kept[..acked.len()] == *acked, "{what}: changed a record");
                assert_eq!(
                    report.count as usize,
                    kept.len(),
                    "{what}: verify and open differ"
                );
                // Nothing deleted: the files as they are now plus cut/ hold every byte.
                let before: usize = files
                    .iter()
                    .filter(|(n, _)| n != MARKER_FILE)
                    .map(|(_, b)| b.len())
                    .sum();
                let segments_now: usize = list_segments(dir)
                    .expect("list")
                    .iter()
                    .map(|s| std::fs::metadata(&s.path).expect("stat").len() as usize)
                    .sum();
                let aside: usize = std::fs::read_dir(dir.join("cut"))
                    .map(|d| {
                        d.map(|e| std::fs::metadata(e.expect("entry").path()).expect("stat"))
                            .map(|m| m.len() as usize)
                            .sum()
                    })
                    .unwrap_or(0);
                assert_eq!(segments_now + aside, before, "{what}: bytes went missing");
                Outcome::Kept(kept.len())
            }
            (v, o) => panic!(
                "{what}: verify and open disagree: verify {:?}, open {:?}",
                v.map(|r| r.count).map_err(|e| e.to_string()),
                o.map(|_| ()).map_err(|e| e.to_string())
            ),
        }
    })
}

/// The rule each damaged byte must meet: inside acknowledged records (or a segment header)
/// the log is refused; in the unacknowledged append or the marker, every acknowledged record
/// is kept.
fn expect_for(log: &SweepLog, file: usize, offset: usize) -> Option<Outcome> {
    let (acked_file, acked_len) = log.acked_end;
    let is_marker = log.files[file].0 == MARKER_FILE;
    let in_acked = !is_marker && (file < acked_file || (file == acked_file && offset < acked_len));
    if in_acked {
        Some(Outcome::Refused)
    } else {
        None // Kept(n) with n ≥ acknowledged, checked by damage_case itself
    }
}

fn check_outcome(expected: Option<Outcome>, got: &Outcome, what: &str) {
    match expected {
        Some(e) => assert_eq!(*got, e, "{what}"),
        None => assert!(matches!(got, Outcome::Kept(_)), "{what}: {got:?}"),
    }
}

/// The offsets of every frame word (length and end-of-append mark) in a segment's bytes.
fn frame_words(bytes: &[u8]) -> Vec<usize> {
    let mut at = 32;
    let mut out = Vec::new();
    while at + 8 <= bytes.len() {
        out.push(at);
        let word = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        at += 8 + (word & 0x7fff_ffff) as usize;
    }
    out
}

/// Flips one bit of every byte of every file of the log (bit `offset % 8`, so every bit
/// position is hit along the file), and every bit of every frame's length word: damage to
/// anything acknowledged is refused by both `verify` and the server's open, and nothing else
/// loses a record. One flipped length bit used to make the whole log look like a torn tail.
#[test]
fn every_flipped_byte_is_refused_or_loses_nothing_acknowledged() {
    let log = sweep_log();
    let rt = runtime();
    let dir = scratch_dir();
    let mut flips = 0usize;
    let mut refused = 0usize;
    for (f, (name, bytes)) in log.files.iter().enumerate().filter(|(_, (n, _))| swept(n)) {
        let mut cases: Vec<(usize, u8)> = (0..bytes.len()).map(|o| (o, 1u8 << (o % 8))).collect();
        if name != MARKER_FILE {
            for word in frame_words(bytes) {
                for o in word..word + 4 {
                    cases.extend(
                        (0..8)
                            .map(|bit| (o, 1u8 << bit))
                            .filter(|c| c.1 != 1 << (o % 8)),
                    );
                }
            }
        }
        for (offset, mask) in cases {
            let mut files = log.files.clone();
            files[f].1[offset] ^= mask;
            let what = format!("{name} byte {offset} ^ {mask:#04x}");
            let got = damage_case(&rt, dir.path(), &files, &log.acked, &what);
            check_outcome(expect_for(log, f, offset), &got, &what);
            flips += 1;
            refused += usize::from(got == Outcome::Refused);
        }
    }
    eprintln!("flipped {flips} bytes: {refused} refused, none lost an acknowledged record");
    assert!(refused > 0 && flips > refused);
}

/// Cuts every file of the log at every length (and removes each): a log missing any
/// acknowledged byte is refused; cutting only into the unacknowledged append keeps every
/// acknowledged record.
#[test]
fn every_truncation_is_refused_or_loses_nothing_acknowledged() {
    let log = sweep_log();
    let rt = runtime();
    let dir = scratch_dir();
    let mut cuts = 0usize;
    for (f, (name, bytes)) in log.files.iter().enumerate().filter(|(_, (n, _))| swept(n)) {
        for len in 0..=bytes.len() {
            let mut files = log.files.clone();
            files[f].1.truncate(len);
            let what = format!("{name} cut to {len} bytes");
            let got = damage_case(&rt, dir.path(), &files, &log.acked, &what);
            let expected = if name == MARKER_FILE {
                // A marker with no intact slot cannot vouch for anything: refused. One slot
                // is enough.
                (len < 76).then_some(Outcome::Refused)
            } else if len == bytes.len() {
                None
            } else {
                expect_for(log, f, len)
            };
            check_outcome(expected, &got, &what);
            cuts += 1;
        }
        let mut files = log.files.clone();
        files.remove(f);
        let what = format!("{name} removed");
        let got = damage_case(&rt, dir.path(), &files, &log.acked, &what);
        // Without the marker the unacknowledged append, complete on disk, is simply kept.
        let expected = if name == MARKER_FILE {
            None
        } else {
            Some(Outcome::Refused)
        };
        check_outcome(expected, &got, &what);
    }
    eprintln!("cut {cuts} times: no acknowledged record lost");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// Several bytes changed at once, anywhere in the log's files: refused by verify and
    /// open alike, or every acknowledged record kept.
    #[test]
    fn random_damage_in_several_places_never_loses_an_acknowledged_record(
        hits in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255), 1..8)
    ) {
        let log = sweep_log();
        let mut files = log.files.clone();
        let mut expect_refusal = false;
        for (file, offset, mask) in &hits {
            let f = file.index(files.len());
            let at = offset.index(files[f].1.len());
            files[f].1[at] ^= mask;
            expect_refusal |= expect_for(log, f, at).is_some();
        }
        let rt = runtime();
        let dir = scratch_dir();
        let got = damage_case(&rt, dir.path(), &files, &log.acked, &format!("{hits:?}"));
        if expect_refusal {
            prop_assert_eq!(got, Outcome::Refused);
        }
    }
}
