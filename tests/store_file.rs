//! The file store: the conformance suite, then what only a file log has to prove
//! (durability across reopen, crash recovery, damage detection, segments, locking).

#[path = "support/frames.rs"]
mod frames;
#[path = "support/import.rs"]
mod import;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use frames::acknowledged_only_up_to;
use ledger_events::{verify_chain, Record, StreamId, StreamVersion};
use license_ledger::clock::{Clock, ManualClock};
use license_ledger::store::conformance::{new_event, start_time, stream, Harness};
use license_ledger::store::file::segment::list_segments;
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{
    Appended, BatchAppend, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use proptest::prelude::*;

/// A fresh store in a temporary directory, with `configure` applied to the defaults.
async fn harness_with(clock: ManualClock, configure: fn(&mut FileStoreConfig)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = FileStoreConfig::new(dir.path());
    configure(&mut config);
    let store = FileStore::open(config, Arc::new(clock.clone()))
        .await
        .expect("open");
    Harness {
        store: Arc::new(store),
        clock,
        guard: Box::new(dir),
    }
}

async fn file_harness(clock: ManualClock) -> Harness {
    harness_with(clock, |_| {}).await
}

license_ledger::store_conformance_tests!(file_harness);

/// The conformance suite again, with the in-memory index moving every durable entry to the
/// on-disk index after each round: reads, versions and retries answered from disk.
mod index_on_disk {
    use super::*;

    async fn harness(clock: ManualClock) -> Harness {
        harness_with(clock, |c| c.index_tail_records = 1).await
    }

    license_ledger::store_conformance_tests!(harness);
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(start_time()))
}

async fn open(dir: &Path) -> Result<FileStore, StoreError> {
    FileStore::open(FileStoreConfig::new(dir), clock()).await
}

/// Opens with the on-disk index removed first (if a log this small has one): the open then
/// reads and checks every record (an open with the index reads only what follows the index's
/// position; damage before it is refused on read and by `verify`, see
/// `damage_before_the_index_is_refused_on_read`).
async fn open_rescanning(dir: &Path) -> Result<FileStore, StoreError> {
    license_ledger::store::file::diskindex::remove(dir).expect("remove the index");
    open(dir).await
}

async fn open_small_segments(dir: &Path) -> FileStore {
    let mut config = FileStoreConfig::new(dir);
    config.segment_bytes_max = FileStoreConfig::SEGMENT_BYTES_MIN;
    FileStore::open(config, clock()).await.expect("open")
}

async fn all_records(store: &FileStore) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let next = out.len() as u64 + 1;
        let batch = store.read_all(next, 10_000).await.expect("read_all");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    list_segments(dir)
        .expect("list")
        .pop()
        .expect("a segment")
        .path
}

/// Appends `n` single-event appends over a few streams and returns the records as stored.
async fn fill(store: &FileStore, n: u32) -> Vec<Record> {
    for i in 0..n {
        store
            .append(
                &stream(&format!("s{}", i % 5)),
                ExpectedVersion::Any,
                vec![new_event(i)],
            )
            .await
            .expect("append");
    }
    all_records(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let before = fill(&store, 40).await;
    let head = store.head().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path()).await.unwrap();
    assert_eq!(all_records(&store).await, before);
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(store.stream_version(&stream("s0")).await.unwrap(), 8);
    // Appends continue the chain after reopening.
    let next = store
        .append(
            &stream("s0"),
            ExpectedVersion::Exact(8),
            vec![new_event(999)],
        )
        .await
        .unwrap();
    assert_eq!(next.positions, 41..=41);
    let all = all_records(&store).await;
    let bytes: Vec<Vec<u8>> = all.iter().map(|r| r.encode().unwrap()).collect();
    verify_chain(bytes.iter().map(Vec::as_slice)).expect("chain verifies across reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    match open(dir.path()).await {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got an open store"),
    }
    store.close().await.unwrap();
    open(dir.path())
        .await
        .expect("reopens once the first is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_over_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small_segments(dir.path()).await;
    let before = fill(&store, 200).await;
    let segments = list_segments(dir.path()).unwrap();
    assert!(
        segments.len() > 3,
        "expected several segments, got {}",
        segments.len()
    );
    for seg in &segments {
        let len = fs::metadata(&seg.path).unwrap().len();
        assert!(
            len <= FileStoreConfig::SEGMENT_BYTES_MIN,
            "{} is {len} bytes",
            seg.path.display()
        );
    }
    // A multi-event append is never split across segments.
    let batch: Vec<NewEvent> = (0..5).map(|k| new_event(5000 + k)).collect();
    let appended = store
        .append(&stream("batch"), ExpectedVersion::Any, batch)
        .await
        .unwrap();
    let first = *appended.positions.start();
    let segments = list_segments(dir.path()).unwrap();
    let holding: Vec<_> = segments
        .iter()
        .filter(|s| s.first_position <= first + 4)
        .filter(|s| {
            segments
                .iter()
                .find(|t| t.first_position > s.first_position)
                .is_none_or(|t| t.first_position > first)
        })
        .collect();
    assert_eq!(holding.len(), 1, "append split across segments");
    store.close().await.unwrap();
    let store = open_small_segments(dir.path()).await;
    let after = all_records(&store).await;
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(after.len(), before.len() + 5);
}

/// Cuts the last segment at every byte offset inside its last record: on reopen the
/// acknowledged records are intact and the torn one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_off_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let records = fill(&store, 6).await;
    store.close().await.unwrap();
    drop(store);
    // The sixth append was written but not yet acknowledged when the process stopped.
    acknowledged_only_up_to(dir.path(), 5);
    let seg = last_segment(dir.path());
    let original = fs::read(&seg).unwrap();
    let last_len = records.last().unwrap().encode().unwrap().len() + 8;
    let last_start = original.len() - last_len;
    for cut in last_start..original.len() {
        fs::write(&seg, &original[..cut]).unwrap();
        let store = open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("cut at {cut}: reopen refused: {e}"));
        let now = all_records(&store).await;
        assert_eq!(now, records[..5], "cut at {cut}");
        store.close().await.unwrap();
        assert_eq!(
            fs::metadata(&seg).unwrap().len() as usize,
            last_start,
            "tail truncated"
        );
    }
    // Nothing was deleted: every cut tail is in cut/, byte for byte.
    let mut aside: Vec<Vec<u8>> = fs::read_dir(dir.path().join("cut"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    aside.sort_by_key(|b| b.len());
    let expected: Vec<Vec<u8>> = (last_start + 1..original.len())
        .map(|cut| original[last_start..cut].to_vec())
        .collect();
    assert_eq!(aside, expected);
}

/// A crash in the middle of a multi-event append leaves no part of it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_cut_between_its_records_disappears_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    store
        .append(&stream("a"), ExpectedVersion::Any, vec![new_event(1)])
        .await
        .unwrap();
    let batch: Vec<NewEvent> = (0..3).map(|k| new_event(10 + k)).collect();
    store
        .append(&stream("b"), ExpectedVersion::Any, batch)
        .await
        .unwrap();
    let records = all_records(&store).await;
    store.close().await.unwrap();
    drop(store);
    let seg = last_segment(dir.path());
    let original = fs::read(&seg).unwrap();
    // Keep the first record of the batch complete and drop the rest.
    let frame = |r: &Record| r.encode().unwrap().len() + 8;
    let cut = original.len() - frame(&records[3]) - frame(&records[2]);
    fs::write(&seg, &original[..cut]).unwrap();
    acknowledged_only_up_to(dir.path(), 1);
    let store = open(dir.path()).await.unwrap();
    assert_eq!(all_records(&store).await, records[..1]);
    assert_eq!(store.stream_version(&stream("b")).await.unwrap(), 0);
}

/// A flipped byte anywhere but the torn tail makes open refuse, naming segment, offset and
/// position, and leaves the file untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let records = fill(&store, 10).await;
    store.close().await.unwrap();
    drop(store);
    let seg = last_segment(dir.path());
    let original = fs::read(&seg).unwrap();
    // Offset of record 5's frame: header + frames of records 1..=4.
    let frame = |r: &Record| r.encode().unwrap().len() + 8;
    let start5 = 32 + records[..4].iter().map(frame).sum::<usize>();
    for delta in [0usize, 4, 8, 40, 60, frame(&records[4]) - 1] {
        let mut damaged = original.clone();
        damaged[start5 + delta] ^= 0x01;
        fs::write(&seg, &damaged).unwrap();
        match open_rescanning(dir.path()).await {
            Err(StoreError::Corrupt {
                segment,
                offset,
                position,
                ..
            }) => {
                assert_eq!(position, 5, "delta {delta}");
                assert_eq!(offset as usize, start5, "delta {delta}");
                assert!(segment.ends_with(".seg"));
            }
            Err(e) => panic!("delta {delta}: expected Corrupt, got {e}"),
            Ok(_) => panic!("delta {delta}: a damaged log opened"),
        }
        assert_eq!(
            fs::read(&seg).unwrap(),
            damaged,
            "refusing must not modify the file"
        );
    }
    fs::write(&seg, &original).unwrap();
    open(dir.path()).await.expect("the undamaged log opens");
}

/// A record re-sealed with a valid CRC but a broken chain, followed by valid data, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_with_valid_crcs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let records = fill(&store, 6).await;
    store.close().await.unwrap();
    drop(store);
    let seg = last_segment(dir.path());
    let original = fs::read(&seg).unwrap();
    let frame = |r: &Record| r.encode().unwrap().len() + 8;
    let start3 = 32 + records[..2].iter().map(frame).sum::<usize>();
    let len3 = frame(&records[2]);
    let mut damaged = original.clone();
    // Change a payload byte of record 3, then fix the frame CRC so only the chain can tell.
    let payload_byte = start3 + len3 - 32 - 1;
    damaged[payload_byte] ^= 0x01;
    let word = &damaged[start3..start3 + 4].to_vec();
    let crc = crc32c::crc32c_append(crc32c::crc32c(word), &damaged[start3 + 8..start3 + len3]);
    damaged[start3 + 4..start3 + 8].copy_from_slice(&crc.to_be_bytes());
    fs::write(&seg, &damaged).unwrap();
    match open_rescanning(dir.path()).await {
        Err(StoreError::Corrupt {
            position, problem, ..
        }) => {
            assert_eq!(position, 3);
            assert!(problem.contains("hash"), "{problem}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a log with a broken chain opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_sealed_segment_is_refused_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small_segments(dir.path()).await;
    fill(&store, 80).await;
    store.close().await.unwrap();
    drop(store);
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 2);
    let first = &segments[0].path;
    let bytes = fs::read(first).unwrap();
    fs::write(first, &bytes[..bytes.len() - 3]).unwrap();
    match open_rescanning(dir.path()).await {
        Err(StoreError::Corrupt { segment, .. }) => {
            assert!(segment.contains("00000000000000000001"))
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a truncated sealed segment opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_new_segment_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let records = fill(&store, 3).await;
    store.close().await.unwrap();
    drop(store);
    // A crash right after creating the next segment file, before its header was complete.
    let next = dir.path().join(format!("{:020}.seg", 4));
    fs::write(&next, b"LLED").unwrap();
    let store = open(dir.path()).await.unwrap();
    assert_eq!(all_records(&store).await, records);
    assert!(!next.exists());
    store
        .append(&stream("n"), ExpectedVersion::Any, vec![new_event(7)])
        .await
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any sequence of appends (streams, batch sizes, expected versions) reads back
    /// identically after reopening, including across segment boundaries.
    #[test]
    fn any_sequence_of_appends_reads_back_identically_after_reopen(
        ops in prop::collection::vec((0u8..6, 1usize..5, any::<bool>()), 1..60),
        small_segments in any::<bool>(),
        small_tail in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = |dir: &Path| {
                let mut c = FileStoreConfig::new(dir);
                if small_segments {
                    c.segment_bytes_max = FileStoreConfig::SEGMENT_BYTES_MIN;
                }
                if small_tail {
                    // Index entries move to disk after (nearly) every append.
                    c.index_tail_records = 3;
                }
                c
            };
            let store = FileStore::open(config(dir.path()), clock()).await.unwrap();
            let mut n = 0u32;
            for (s, size, exact) in &ops {
                let s = stream(&format!("p{s}"));
                let expected = if *exact {
                    ExpectedVersion::Exact(store.stream_version(&s).await.unwrap())
                } else {
                    ExpectedVersion::Any
                };
                let batch: Vec<NewEvent> = (0..*size).map(|_| { n += 1; new_event(n) }).collect();
                store.append(&s, expected, batch).await.unwrap();
            }
            let before = all_records(&store).await;
            prop_assert_eq!(before.len() as u32, n);
            store.close().await.unwrap();
            drop(store);
            let store = FileStore::open(config(dir.path()), clock()).await.unwrap();
            let after = all_records(&store).await;
            prop_assert_eq!(&after, &before);
            for s in 0u8..6 {
                let s = stream(&format!("p{s}"));
                let from_stream = store.read_stream(&s, 1, 10_000).await.unwrap();
                let from_all: Vec<&Record> = after.iter().filter(|r| r.envelope.stream_id == s).collect();
                prop_assert_eq!(from_stream.iter().collect::<Vec<_>>(), from_all);
            }
            Ok(())
        })?;
    }
}

/// A fresh file store in a directory of its own (kept with it).
async fn fresh(segment_bytes_max: Option<u64>) -> (FileStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = FileStoreConfig::new(dir.path());
    if let Some(max) = segment_bytes_max {
        config.segment_bytes_max = max;
    }
    let store = FileStore::open(config, clock()).await.expect("open");
    (store, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_import_stores_what_a_record_by_record_import_stores() {
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let (one, _a) = fresh(None).await;
    // Small segments: batches span several of them.
    let (batched, b) = fresh(Some(FileStoreConfig::SEGMENT_BYTES_MIN)).await;
    import::batches_store_what_one_by_one_stores(&source, &one, &batched).await;
    batched.close().await.expect("close");
    assert!(list_segments(b.path()).expect("segments").len() > 3);
    let reopened = open(b.path()).await.expect("reopen");
    assert_eq!(import::every_record(&reopened).await, source);
    one.close().await.expect("close");
    reopened.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_refuses_its_import_batch_and_only_it() {
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let mut dirs = Vec::new();
    import::a_tampered_record_refuses_its_batch_only(&source, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        dirs.push(dir);
        async move { open(&path).await.expect("open") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_batch_starts_right_after_the_head_and_is_synced_once() {
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let (store, dir) = fresh(None).await;
    import::a_batch_must_start_after_the_head(&source[..100], &store).await;
    let (in_order, _c) = fresh(None).await;
    import::batches_handed_over_at_once_land_in_order(&source, &in_order).await;
    let before = store.stats();
    store.import_records(&source[100..]).await.expect("import");
    let after = store.stats();
    assert_eq!(after.syncs - before.syncs, 1, "one sync for the batch");
    assert_eq!(after.batches_written - before.batches_written, 1);
    store.close().await.expect("close");
    let reopened = open(dir.path()).await.expect("reopen");
    assert_eq!(import::every_record(&reopened).await, source);
    reopened.close().await.expect("close");
}

// The on-disk index (`<dir>/index/`): open reads it instead of every segment, and anything
// wrong with it makes the open rebuild it from the log, never serve from it.

fn tail_config(dir: &Path, tail: usize) -> FileStoreConfig {
    let mut c = FileStoreConfig::new(dir);
    c.index_tail_records = tail;
    // Many segments: the index's position falls inside one and the scan after it crosses
    // into later ones.
    c.segment_bytes_max = 256 * 1024;
    c
}

async fn open_tail(dir: &Path, tail: usize) -> FileStore {
    FileStore::open(tail_config(dir, tail), clock())
        .await
        .expect("open")
}

/// Appends `records` events over 7 streams in appends of 1 to 19 events; returns the appends.
async fn fill_appends(
    store: &FileStore,
    records: u32,
    first: u32,
) -> Vec<(StreamId, Vec<NewEvent>)> {
    let mut appends = Vec::new();
    let mut n = first;
    let mut i = 0u32;
    while n < first + records {
        let size = (i * 7 % 19 + 1).min(first + records - n);
        let s = stream(&format!("x{}", i % 7));
        let events: Vec<NewEvent> = (0..size).map(|k| new_event(n + k)).collect();
        store
            .append(&s, ExpectedVersion::Any, events.clone())
            .await
            .expect("append");
        appends.push((s, events));
        n += size;
        i += 1;
    }
    appends
}

/// Everything readers and retrying writers can be told, to compare a store with itself
/// before and after its index changed.
#[derive(Debug, PartialEq)]
struct Answers {
    records: Vec<Record>,
    /// Per stream: version, every record, a page from the middle.
    streams: Vec<(StreamVersion, Vec<Record>, Vec<Record>)>,
    /// The answer to retrying every append, and to storing its first event id elsewhere.
    retries: Vec<(Result<Appended, String>, Result<Appended, String>)>,
}

async fn answers(store: &FileStore, appends: &[(StreamId, Vec<NewEvent>)]) -> Answers {
    let records = all_records(store).await;
    let mut streams = Vec::new();
    for i in 0..8 {
        let s = stream(&format!("x{i}"));
        let version = store.stream_version(&s).await.expect("version");
        let all = store.read_stream(&s, 1, 100_000).await.expect("read");
        let page = store
            .read_stream(&s, version / 2 + 1, 7)
            .await
            .expect("read");
        streams.push((version, all, page));
    }
    let mut retries = Vec::new();
    for (s, events) in appends {
        let again = store
            .append(s, ExpectedVersion::Any, events.clone())
            .await
            .map_err(|e| e.to_string());
        let mut elsewhere = new_event(0);
        elsewhere.event_id = events[0].event_id;
        let other = store
            .append(&stream("elsewhere"), ExpectedVersion::Any, vec![elsewhere])
            .await
            .map_err(|e| e.to_string());
        retries.push((again, other));
    }
    Answers {
        records,
        streams,
        retries,
    }
}

/// Copies a directory tree (the index, to put an older or foreign one in place).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn index_dir(dir: &Path) -> PathBuf {
    dir.join(license_ledger::store::file::diskindex::INDEX_DIR)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_reads_the_index_and_only_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tail(dir.path(), 100).await;
    let mut appends = fill_appends(&store, 5_000, 1).await;
    store.close().await.unwrap();
    // Durable entries leave memory once they are on disk.
    let stats = store.stats();
    assert_eq!(stats.index_tail_records, 0, "{stats:?}");
    assert_eq!(stats.index_on_disk, 5_000, "{stats:?}");
    drop(store);
    let earlier_index = dir.path().join("index-at-5000");
    copy_dir(&index_dir(dir.path()), &earlier_index);

    let store = open_tail(dir.path(), 100).await;
    let stats = store.stats();
    assert_eq!(stats.open_records_scanned, 0, "{stats:?}");
    assert!(!stats.index_rebuilt, "{stats:?}");
    appends.extend(fill_appends(&store, 5_000, 5_001).await);
    let before = answers(&store, &appends).await;
    assert_eq!(before.records.len(), 10_000);
    store.close().await.unwrap();
    drop(store);

    let store = open_tail(dir.path(), 100).await;
    let stats = store.stats();
    assert_eq!(stats.open_records_scanned, 0, "{stats:?}");
    assert!(!stats.index_rebuilt, "{stats:?}");
    assert_eq!(answers(&store, &appends).await, before);
    store.close().await.unwrap();
    drop(store);

    // An index that is behind the log (as after a crash) is used, and only the records
    // after it are read.
    fs::remove_dir_all(index_dir(dir.path())).unwrap();
    copy_dir(&earlier_index, &index_dir(dir.path()));
    let store = open_tail(dir.path(), 100).await;
    let stats = store.stats();
    assert_eq!(stats.open_records_scanned, 5_000, "{stats:?}");
    assert!(!stats.index_rebuilt, "{stats:?}");
    assert!(list_segments(dir.path()).unwrap().len() > 4);
    assert_eq!(answers(&store, &appends).await, before);
    store.close().await.unwrap();
    drop(store);

    // Entries past `meta/head` (a crash after the entries were written, before the head
    // moved): the open scans from the head and finds the same records again.
    let behind = *before.retries[300].0.as_ref().unwrap().positions.end();
    let hash = before.records[behind as usize - 1].envelope.hash;
    set_index_head(dir.path(), behind, hash.0);
    // `ver` moves with the head (one batch): as of `behind`.
    let db = fjall::Database::builder(index_dir(dir.path()))
        .open()
        .unwrap();
    let ver = db
        .keyspace("ver", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    for r in &before.records[..behind as usize] {
        let e = &r.envelope;
        ver.insert(
            e.stream_id.as_str().as_bytes(),
            e.stream_version.to_be_bytes(),
        )
        .unwrap();
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop(ver);
    drop(db);
    let store = open_tail(dir.path(), 100).await;
    let stats = store.stats();
    assert!(!stats.index_rebuilt, "{stats:?}");
    assert_eq!(stats.open_records_scanned, 10_000 - behind, "{stats:?}");
    assert_eq!(answers(&store, &appends).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_is_rebuilt_with_identical_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tail(dir.path(), 64).await;
    let appends = fill_appends(&store, 3_000, 1).await;
    let before = answers(&store, &appends).await;
    store.close().await.unwrap();
    drop(store);
    license_ledger::store::file::diskindex::remove(dir.path()).unwrap();

    let store = open_tail(dir.path(), 64).await;
    let stats = store.stats();
    assert!(stats.index_rebuilt, "{stats:?}");
    assert_eq!(stats.open_records_scanned, 3_000, "{stats:?}");
    assert_eq!(answers(&store, &appends).await, before);
    store.close().await.unwrap();
    drop(store);

    let store = open_tail(dir.path(), 64).await;
    let stats = store.stats();
    assert!(!stats.index_rebuilt, "{stats:?}");
    assert_eq!(stats.open_records_scanned, 0, "{stats:?}");
    assert_eq!(answers(&store, &appends).await, before);
}

/// Writes the index's `meta/head` (position, hash) as damage or a stale copy would leave it.
fn set_index_head(dir: &Path, position: u64, hash: [u8; 32]) {
    let db = fjall::Database::builder(index_dir(dir)).open().unwrap();
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut v = position.to_be_bytes().to_vec();
    v.extend_from_slice(&hash);
    meta.insert(b"head", v).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stale_or_foreign_index_is_rebuilt_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tail(dir.path(), 64).await;
    let appends = fill_appends(&store, 1_000, 1).await;
    let before = answers(&store, &appends).await;
    let head = store.head().await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let good_index = dir.path().join("good-index");
    copy_dir(&index_dir(dir.path()), &good_index);
    let restore = || {
        fs::remove_dir_all(index_dir(dir.path())).unwrap();
        copy_dir(&good_index, &index_dir(dir.path()));
    };
    let rebuilt = |what: &'static str| {
        let dir = dir.path().to_path_buf();
        let appends = appends.clone();
        let before = &before;
        async move {
            let store = open_tail(&dir, 64).await;
            let stats = store.stats();
            assert!(stats.index_rebuilt, "{what}: {stats:?}");
            assert_eq!(stats.open_records_scanned, 1_000, "{what}");
            assert_eq!(&answers(&store, &appends).await, before, "{what}");
            store.close().await.unwrap();
        }
    };

    // Every file of the index overwritten.
    let mut files = vec![index_dir(dir.path())];
    let mut garbled = 0;
    while let Some(d) = files.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.push(path);
            } else {
                let len = fs::metadata(&path).unwrap().len() as usize;
                fs::write(&path, vec![0xA5; len.max(1)]).unwrap();
                garbled += 1;
            }
        }
    }
    assert!(garbled > 0);
    rebuilt("garbled files").await;

    // The hash of its position is wrong.
    restore();
    let mut wrong = head.hash.0;
    wrong[0] ^= 1;
    set_index_head(dir.path(), head.position, wrong);
    rebuilt("wrong hash").await;

    // Its position is past the log's end.
    restore();
    set_index_head(dir.path(), head.position + 50, head.hash.0);
    rebuilt("position past the end").await;

    // An index of another log.
    let other = tempfile::tempdir().unwrap();
    let store = open_tail(other.path(), 64).await;
    fill_appends(&store, 1_000, 1).await;
    store.close().await.unwrap();
    drop(store);
    fs::remove_dir_all(index_dir(dir.path())).unwrap();
    copy_dir(&index_dir(other.path()), &index_dir(dir.path()));
    rebuilt("foreign index").await;

    // Left behind by a repair cut: it names positions the log no longer has.
    let cut_at = *before.retries[40].0.as_ref().unwrap().positions.end();
    restore();
    let saved = dir.path().join("index-before-cut");
    copy_dir(&index_dir(dir.path()), &saved);
    license_ledger::store::file::repair::cut_after(dir.path(), cut_at, true).unwrap();
    assert!(!index_dir(dir.path()).exists(), "the cut removes the index");
    copy_dir(&saved, &index_dir(dir.path()));
    let store = open_tail(dir.path(), 64).await;
    let stats = store.stats();
    assert!(stats.index_rebuilt, "{stats:?}");
    assert_eq!(all_records(&store).await, before.records[..cut_at as usize]);
}

/// Damage before the index's position is not read by the open (that is the point of the
/// index); it is refused when read, naming segment, offset and position, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_index_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tail(dir.path(), 4).await;
    let records = fill(&store, 10).await;
    store.close().await.unwrap();
    drop(store);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let frame = |r: &Record| r.encode().unwrap().len() + 8;
    let start5 = 32 + records[..4].iter().map(frame).sum::<usize>();
    bytes[start5 + 60] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    let store = open_tail(dir.path(), 4).await;
    assert_eq!(store.stats().open_records_scanned, 0);
    for read in [
        store.read_all(1, 100).await,
        store
            .read_stream(&records[4].envelope.stream_id, 1, 100)
            .await,
    ] {
        match read {
            Err(StoreError::Corrupt {
                segment,
                offset,
                position,
                ..
            }) => {
                assert_eq!(position, 5);
                assert_eq!(offset as usize, start5);
                assert!(segment.ends_with(".seg"));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(store.read_all(6, 100).await.unwrap(), records[5..]);
    store.close().await.unwrap();
    assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing changed");
}

// `FileStore::append_batch`: many independent appends in one hand-over, each checked and
// answered as if appended alone.

fn batch_append(name: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> BatchAppend {
    BatchAppend {
        stream: stream(name),
        expected,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_appends_checks_each_version_and_refuses_only_the_wrong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    store
        .append(&stream("a"), ExpectedVersion::Any, vec![new_event(0)])
        .await
        .unwrap();
    let retried = new_event(1);
    store
        .append(&stream("r"), ExpectedVersion::Any, vec![retried.clone()])
        .await
        .unwrap();
    let stored_elsewhere = new_event(2);
    store
        .append(
            &stream("d"),
            ExpectedVersion::Any,
            vec![stored_elsewhere.clone()],
        )
        .await
        .unwrap();
    let answers = store
        .append_batch(vec![
            // Right version: accepted.
            batch_append("a", ExpectedVersion::Exact(1), vec![new_event(10)]),
            // Stale version: refused, with the actual one.
            batch_append("a", ExpectedVersion::Exact(1), vec![new_event(11)]),
            // The version an earlier append of the same batch made.
            batch_append(
                "a",
                ExpectedVersion::Exact(2),
                vec![new_event(12), new_event(13)],
            ),
            batch_append("b", ExpectedVersion::NoStream, vec![new_event(14)]),
            batch_append("b", ExpectedVersion::NoStream, vec![new_event(15)]),
            // Empty: refused before the writer.
            batch_append("c", ExpectedVersion::Any, Vec::new()),
            // A retry of a stored append: its original positions.
            batch_append("r", ExpectedVersion::Any, vec![retried]),
            // An id stored in another append: refused.
            batch_append("c", ExpectedVersion::Any, vec![stored_elsewhere]),
        ])
        .await
        .unwrap();
    assert_eq!(answers.len(), 8);
    let ok = |i: usize| answers[i].as_ref().expect("accepted").clone();
    assert_eq!(ok(0).positions, 4..=4);
    assert_eq!(ok(0).stream_version, 2);
    assert!(matches!(
        answers[1],
        Err(StoreError::WrongExpectedVersion { actual: 2, .. })
    ));
    assert_eq!(ok(2).positions, 5..=6);
    assert_eq!(ok(2).stream_version, 4);
    assert_eq!(ok(3).positions, 7..=7);
    assert!(matches!(
        answers[4],
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert!(matches!(answers[5], Err(StoreError::InvalidAppend(_))));
    assert_eq!(ok(6).positions, 2..=2);
    assert!(ok(6).was_retry);
    assert!(matches!(
        answers[7],
        Err(StoreError::DuplicateEventId { position: 3, .. })
    ));
    assert_eq!(store.head().await.unwrap().position, 7);

    // Durable and intact after a reopen: the chain verifies, versions are as answered.
    let before = all_records(&store).await;
    store.close().await.unwrap();
    drop(store);
    let store = open_rescanning(dir.path()).await.unwrap();
    let after = all_records(&store).await;
    assert_eq!(after, before);
    assert_eq!(after.len(), 7);
    let bytes: Vec<Vec<u8>> = after.iter().map(|r| r.encode().unwrap()).collect();
    verify_chain(bytes.iter().map(Vec::as_slice)).expect("chain verifies");
    assert_eq!(store.stream_version(&stream("a")).await.unwrap(), 4);
    assert_eq!(store.stream_version(&stream("b")).await.unwrap(), 1);
    assert_eq!(store.stream_version(&stream("c")).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_appends_past_the_index_tail_are_all_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tail(dir.path(), 100).await;
    // 3 concurrent callers, 10 batches each of 50 appends over 20 streams.
    let mut calls = Vec::new();
    for caller in 0..3u32 {
        let store = store.clone();
        calls.push(tokio::spawn(async move {
            for b in 0..10u32 {
                let appends = (0..50u32)
                    .map(|i| {
                        let n = (caller * 10 + b) * 50 + i;
                        batch_append(
                            &format!("m{}", n % 20),
                            ExpectedVersion::Any,
                            vec![new_event(n)],
                        )
                    })
                    .collect();
                for answer in store.append_batch(appends).await.unwrap() {
                    answer.unwrap();
                }
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let before = all_records(&store).await;
    assert_eq!(before.len(), 1500);
    store.close().await.unwrap();
    drop(store);
    let store = open_tail(dir.path(), 100).await;
    assert_eq!(all_records(&store).await, before);
    let mut total = 0;
    for s in 0..20 {
        let records = store
            .read_stream(&stream(&format!("m{s}")), 1, 10_000)
            .await
            .unwrap();
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.envelope.stream_version == i as u64 + 1));
        total += records.len();
    }
    assert_eq!(total, 1500);
    let bytes: Vec<Vec<u8>> = before.iter().map(|r| r.encode().unwrap()).collect();
    verify_chain(bytes.iter().map(Vec::as_slice)).expect("chain verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_appends_over_the_limit_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.unwrap();
    let appends = (0..=license_ledger::store::APPEND_BATCH_MAX as u32)
        .map(|n| batch_append("big", ExpectedVersion::Any, vec![new_event(n)]))
        .collect();
    assert!(matches!(
        store.append_batch(appends).await,
        Err(StoreError::InvalidAppend(_))
    ));
    assert_eq!(store.head().await.unwrap().position, 0);
}
