//! Durable append throughput and latency with 1, 16 and 256 concurrent writers.
//!
//! Each writer task appends single-event appends to its own stream and waits for each to be
//! acknowledged (written and `fdatasync`ed) before sending the next, as a command handler
//! does. Criterion measures throughput; a second fixed-length pass per writer count records
//! every append's latency for p50/p99. The machine's raw `fdatasync` rate is printed first so
//! the group-commit ratio is visible.
//!
//! Run: `cargo bench --bench append` (add `LEDGER_BENCH_RECORD=1` to append the figures to
//! `benches/results/append.jsonl`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use license_ledger::clock::SystemClock;
use license_ledger::store::conformance::{new_event, stream};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, NewEvent};
use uuid::Uuid;

mod common;

const WRITER_COUNTS: [usize; 3] = [1, 16, 256];
const LATENCY_PASS: Duration = Duration::from_secs(3);

async fn open(dir: &std::path::Path) -> FileStore {
    FileStore::open(FileStoreConfig::new(dir), Arc::new(SystemClock))
        .await
        .expect("open store")
}

/// Runs `writers` tasks appending `total` events between them; returns the elapsed time and,
/// if asked, every append's latency in nanoseconds.
async fn run(
    store: &FileStore,
    writers: usize,
    total: u64,
    keep_latencies: bool,
) -> (Duration, Vec<u64>) {
    let per_writer = total.div_ceil(writers as u64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("bench{w}"));
            // One event value per writer, cloned: the bench measures the store, not parsing.
            let template = new_event(w as u32);
            let mut latencies = Vec::with_capacity(if keep_latencies {
                per_writer as usize
            } else {
                0
            });
            for _ in 0..per_writer {
                let t = Instant::now();
                store
                    .append(
                        &s,
                        ExpectedVersion::Any,
                        vec![NewEvent {
                            event_id: Uuid::now_v7(),
                            ..template.clone()
                        }],
                    )
                    .await
                    .expect("append");
                if keep_latencies {
                    latencies.push(t.elapsed().as_nanos() as u64);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    (start.elapsed(), all)
}

fn bench_append(c: &mut Criterion) {
    let rt = common::runtime();
    let scratch = tempfile::tempdir().expect("tempdir");
    let fsync_rate = common::fdatasync_rate(scratch.path(), Duration::from_secs(2));
    common::record(
        "fdatasync",
        &serde_json::json!({ "fdatasync_per_s": fsync_rate.round() }),
    );

    let mut group = c.benchmark_group("durable_append");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for writers in WRITER_COUNTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = rt.block_on(open(dir.path()));
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter_custom(|iters| {
                    let store = store.clone();
                    async move {
                        run(&store, writers, iters.max(writers as u64), false)
                            .await
                            .0
                    }
                });
            },
        );

        // Latency pass: as many events as the writers manage in about LATENCY_PASS.
        let probe = rt
            .block_on(run(&store, writers, (writers as u64) * 50, false))
            .0;
        let per_s = (writers as f64 * 50.0) / probe.as_secs_f64();
        let total = ((per_s * LATENCY_PASS.as_secs_f64()) as u64).max(writers as u64 * 10);
        let stats_before = store.stats();
        let (elapsed, mut latencies) = rt.block_on(run(&store, writers, total, true));
        let stats = store.stats();
        let syncs = (stats.syncs - stats_before.syncs).max(1);
        latencies.sort_unstable();
        let events = latencies.len() as f64;
        common::record(
            "append",
            &serde_json::json!({
                "writers": writers,
                "events": latencies.len(),
                "events_per_s": (events / elapsed.as_secs_f64()).round(),
                "p50_us": common::percentile_us(&latencies, 50.0),
                "p99_us": common::percentile_us(&latencies, 99.0),
                "fdatasync_per_s": fsync_rate.round(),
                "events_per_sync": (latencies.len() as f64 / syncs as f64).round(),
                "mean_sync_us": ((stats.sync_seconds - stats_before.sync_seconds) * 1e6 / syncs as f64).round(),
            }),
        );
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
