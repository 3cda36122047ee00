//! Sequential read of the whole log, two ways:
//! - `scan`: the open/verify path (read segments, CRC, parse, verify the hash chain);
//! - `read_all+decode`: what a projection rebuild does (the store's `read_all` in batches,
//!   which checks CRC and hash per record, then decode every payload to a typed event, and
//!   check the chain links).
//!
//! The log has `LEDGER_BENCH_EVENTS` events (default 1,000,000) over 1,000 streams.
//! Run: `cargo bench --bench read`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger_events::{ChainHead, Hash};
use license_ledger::clock::SystemClock;
use license_ledger::store::conformance::{new_event, stream};
use license_ledger::store::file::segment::{list_segments, scan};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, NewEvent};

mod common;

fn events_in_log() -> u64 {
    std::env::var("LEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

async fn fill(store: &FileStore, total: u64) {
    // 1,000 streams, batches of 100 events per append to keep set-up short.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while n < total {
                let s = stream(&format!("r{}", n % 1000));
                let batch: Vec<NewEvent> =
                    (0..100).map(|k| new_event((n * 100 + k) as u32)).collect();
                store
                    .append(&s, ExpectedVersion::Any, batch)
                    .await
                    .expect("append");
                n += 8 * 100;
            }
        }));
    }
    for t in tasks {
        t.await.expect("filler");
    }
}

async fn read_and_decode(store: &FileStore) -> u64 {
    let mut head = ChainHead {
        position: 0,
        hash: Hash::ZERO,
    };
    loop {
        let batch = store
            .read_all(head.position + 1, 10_000)
            .await
            .expect("read");
        if batch.is_empty() {
            return head.position;
        }
        for r in &batch {
            assert_eq!(r.envelope.position, head.position + 1, "gap");
            assert_eq!(r.envelope.prev_hash, head.hash, "broken link");
            std::hint::black_box(r.event().expect("decode"));
            head = ChainHead {
                position: r.envelope.position,
                hash: r.envelope.hash,
            };
        }
    }
}

fn bench_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let total = events_in_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt.block_on(async {
        let store = FileStore::open(FileStoreConfig::new(dir.path()), Arc::new(SystemClock))
            .await
            .expect("open");
        fill(&store, total).await;
        store
    });
    let stored = rt.block_on(store.head()).expect("head").position;

    let mut group = c.benchmark_group("sequential_read");
    group.throughput(Throughput::Elements(stored));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("scan", |b| {
        b.iter(|| {
            let segments = list_segments(dir.path()).expect("list");
            let report = scan(&segments, None, |_, _| Ok(()), |_| {}).expect("scan");
            assert_eq!(report.head.position, stored);
        })
    });
    group.bench_function("read_all+decode", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(read_and_decode(&store).await, stored);
        })
    });
    group.finish();

    for (name, f) in [("scan", 0), ("read_all+decode", 1)] {
        let t = Instant::now();
        if f == 0 {
            let segments = list_segments(dir.path()).expect("list");
            scan(&segments, None, |_, _| Ok(()), |_| {}).expect("scan");
        } else {
            rt.block_on(read_and_decode(&store));
        }
        let secs = t.elapsed().as_secs_f64();
        common::record(
            "read",
            &serde_json::json!({ "path": name, "events": stored, "events_per_s": (stored as f64 / secs).round() }),
        );
    }
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
