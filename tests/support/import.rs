//! What both stores' batch import must do (`import_records`), written once: a test binary
//! implements [`Importer`] for its store and calls each scenario with a way to open a fresh,
//! empty one. Included with `#[path]` by `store_file.rs` and `store_postgres.rs`.

use std::future::Future;
use std::sync::Arc;

use ledger_events::{encode_record_into, ChainHead, Record};
use license_ledger::clock::ManualClock;
use license_ledger::store::conformance::{new_event, start_time, stream};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{
    Appended, EventStore, ExpectedVersion, NewEvent, PendingImport, StoreError,
};

/// A store that imports.
pub trait Importer: EventStore {
    fn import_one(&self, record: &Record) -> impl Future<Output = Result<Appended, StoreError>>;
    fn import_batch(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<ChainHead, StoreError>>;
    fn submit_batch(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<PendingImport, StoreError>>;
}

impl Importer for FileStore {
    fn import_one(&self, record: &Record) -> impl Future<Output = Result<Appended, StoreError>> {
        self.import_record(record)
    }
    fn import_batch(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<ChainHead, StoreError>> {
        self.import_records(records)
    }
    fn submit_batch(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<PendingImport, StoreError>> {
        self.submit_import(records)
    }
}

/// Every record of `store`, in order.
pub async fn every_record(store: &dyn EventStore) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = store
            .read_all(out.len() as u64 + 1, 10_000)
            .await
            .expect("read_all");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// A log of a few hundred records over several streams (appends of one to three events,
/// some at the same instant), written by a file store in `dir`: the export to import.
pub async fn source_log(dir: &std::path::Path) -> Vec<Record> {
    let clock = ManualClock::new(start_time());
    let file = FileStore::open(FileStoreConfig::new(dir), Arc::new(clock.clone()))
        .await
        .expect("open the source store");
    for n in 0..120u32 {
        let batch: Vec<NewEvent> = (0..(n % 3 + 1)).map(|k| new_event(n * 10 + k)).collect();
        file.append(&stream(&format!("s{}", n % 7)), ExpectedVersion::Any, batch)
            .await
            .expect("append to the source store");
        if n % 4 != 0 {
            clock.advance(chrono::Duration::milliseconds(1500));
        }
    }
    let records = every_record(&file).await;
    file.close().await.expect("close the source store");
    records
}

/// `record` with its envelope changed by `change` and its hash recomputed, so that it
/// verifies on its own: only the chain can tell it is wrong.
pub fn forged(record: &Record, change: impl FnOnce(&mut Record)) -> Record {
    let mut r = record.clone();
    change(&mut r);
    let mut bytes = Vec::new();
    r.envelope.hash = encode_record_into(&mut bytes, &r.envelope, &r.payload).expect("encode");
    r
}

/// Importing in batches (of uneven sizes, one of a single record) stores exactly what
/// importing record by record stores: the source, byte for byte, with the same head.
pub async fn batches_store_what_one_by_one_stores<S: Importer>(
    source: &[Record],
    one_by_one: &S,
    batched: &S,
) {
    for r in source {
        one_by_one.import_one(r).await.expect("import one record");
    }
    let mut at = 0;
    for size in [1usize, 7, 64, 1000].into_iter().cycle() {
        if at == source.len() {
            break;
        }
        let end = (at + size).min(source.len());
        let head = batched
            .import_batch(&source[at..end])
            .await
            .expect("import a batch");
        assert_eq!(head.position, source[end - 1].envelope.position);
        assert_eq!(head.hash, source[end - 1].envelope.hash);
        at = end;
    }
    let a = every_record(one_by_one).await;
    let b = every_record(batched).await;
    assert_eq!(a, source, "one by one: the source, byte for byte");
    assert_eq!(b, source, "in batches: the source, byte for byte");
    for r in &b {
        assert_eq!(r.encode().expect("encode"), {
            let s = &source[(r.envelope.position - 1) as usize];
            s.encode().expect("encode")
        });
    }
    assert_eq!(
        batched.head().await.expect("head"),
        one_by_one.head().await.expect("head")
    );
}

/// Batches handed over one after the other before any answer (smaller ones after larger
/// ones, which take longer to check) are written in the order handed over.
pub async fn batches_handed_over_at_once_land_in_order<S: Importer>(source: &[Record], store: &S) {
    let mut pending = Vec::new();
    let mut at = 0;
    for size in [200usize, 3, 100, 1, 50].into_iter().cycle() {
        if at == source.len() {
            break;
        }
        let end = (at + size).min(source.len());
        pending.push(
            store
                .submit_batch(&source[at..end])
                .await
                .expect("hand over"),
        );
        at = end;
    }
    for p in pending {
        p.wait().await.expect("import");
    }
    assert_eq!(every_record(store).await, source);
}

/// The ways a record in the middle of a batch can be wrong, each refused: name and forgery
/// of record `i` of `source` (0-based).
#[allow(clippy::type_complexity)]
pub fn tamperings(source: &[Record], i: usize) -> Vec<(&'static str, Record)> {
    let r = &source[i];
    let mut bad_hash = r.clone();
    bad_hash.envelope.hash.0[0] ^= 1;
    vec![
        ("a wrong hash", bad_hash),
        (
            "a wrong previous hash",
            forged(r, |r| r.envelope.prev_hash.0[5] ^= 1),
        ),
        ("a position gap", forged(r, |r| r.envelope.position += 1)),
        (
            "the event id of a record of an earlier batch",
            forged(r, |r| r.envelope.event_id = source[2].envelope.event_id),
        ),
        (
            "the event id of an earlier record of the same batch",
            forged(r, |r| r.envelope.event_id = source[i - 2].envelope.event_id),
        ),
        (
            "a time before the previous record's",
            forged(r, |r| {
                r.envelope.recorded_at =
                    source[i - 1].envelope.recorded_at - chrono::Duration::seconds(1)
            }),
        ),
        (
            "a stream version gap",
            forged(r, |r| r.envelope.stream_version += 1),
        ),
    ]
}

/// A batch with a tampered record in its middle is refused naming the record's position;
/// nothing of it is stored, the batches before it stay, and the genuine batch then imports.
pub async fn a_tampered_record_refuses_its_batch_only<S, F, Fut>(source: &[Record], mut open: F)
where
    S: Importer,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let first = &source[..20];
    let second = &source[20..40];
    for (what, bad) in tamperings(source, 30) {
        let store = open().await;
        store.import_batch(first).await.expect("first batch");
        let mut batch = second.to_vec();
        batch[10] = bad.clone();
        let refused = store.import_batch(&batch).await;
        let message = match refused {
            Err(e) => e.to_string(),
            Ok(head) => panic!("{what}: the batch was stored, head {head:?}"),
        };
        assert!(
            message.contains(&format!("position {}", bad.envelope.position)),
            "{what}: the refusal names the position: {message}"
        );
        assert_eq!(
            every_record(&store).await,
            first,
            "{what}: the first batch stays, nothing of the second is stored"
        );
        assert_eq!(store.head().await.expect("head").position, 20, "{what}");
        store
            .import_batch(second)
            .await
            .unwrap_or_else(|e| panic!("{what}: the genuine batch after the refusal: {e}"));
        store
            .import_batch(&source[40..])
            .await
            .unwrap_or_else(|e| panic!("{what}: the rest: {e}"));
        assert_eq!(every_record(&store).await, source, "{what}");
    }
}

/// A batch that does not start right after the head (a gap, or records already there) is
/// refused and stores nothing.
pub async fn a_batch_must_start_after_the_head<S: Importer>(source: &[Record], store: &S) {
    store.import_batch(&source[..10]).await.expect("import");
    for (what, batch) in [
        ("records already stored", &source[5..15]),
        ("a gap after the head", &source[11..20]),
    ] {
        let refused = store.import_batch(batch).await;
        assert!(refused.is_err(), "{what}: {refused:?}");
        assert_eq!(every_record(store).await, &source[..10], "{what}");
    }
    assert!(store.import_batch(&[]).await.is_err(), "an empty batch");
    store.import_batch(&source[10..]).await.expect("the rest");
    assert_eq!(every_record(store).await, source);
}
