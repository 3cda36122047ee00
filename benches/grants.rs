//! License grants per second through the `Ledger` on the file store, with 1, 16 and 64
//! concurrent writers granting licenses to one customer.
//!
//! Each writer task calls `Ledger::grant_license` (id allocation, decide, durable append,
//! read-your-writes wait) and waits for it before sending the next, as an HTTP handler does.
//! Criterion measures throughput; a second fixed-length pass per writer count records every
//! grant's latency for p50/p99 and checks that the ids handed out are exactly 1..=N (no
//! grant refused, none lost).
//!
//! Run: `cargo bench --bench grants` (add `LEDGER_BENCH_RECORD=1` to append the figures to
//! `benches/results/grants.jsonl`; `BENCH_SECONDS` sets criterion's measurement time, 5 s by
//! default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ledger_events::{Actor, Cnpj, Product, Resources, TradeName};
use license_ledger::app::commands::GrantLicense;
use license_ledger::app::{Ledger, LedgerConfig};
use license_ledger::clock::{Clock, SystemClock};
use license_ledger::domain::customer::CustomerCommand;
use license_ledger::store::file::{FileStore, FileStoreConfig};
use uuid::Uuid;

mod common;

const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
const LATENCY_PASS: Duration = Duration::from_secs(3);

fn cnpj() -> Cnpj {
    Cnpj::parse("11222333000181").expect("a valid CNPJ")
}

/// A ledger on a fresh file store in `dir`, with the one customer registered.
async fn open(dir: &std::path::Path) -> (FileStore, Arc<Ledger>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = FileStore::open(FileStoreConfig::new(dir), clock.clone())
        .await
        .expect("open store");
    let ledger = Ledger::start(Arc::new(store.clone()), clock, LedgerConfig::default())
        .await
        .expect("start ledger");
    ledger
        .customer(
            CustomerCommand::Register {
                cnpj: cnpj(),
                trade_name: TradeName::parse("Atacado").expect("a trade name"),
                since: None,
            },
            &actor(),
            Uuid::now_v7(),
        )
        .await
        .expect("register");
    (store, Arc::new(ledger))
}

fn actor() -> Actor {
    Actor::operator("bench").expect("an actor")
}

/// Runs `writers` tasks granting `total` licenses between them; returns the elapsed time,
/// each grant's latency in nanoseconds if asked, and the ids granted.
async fn run(
    ledger: &Arc<Ledger>,
    writers: usize,
    total: u64,
    keep_latencies: bool,
) -> (Duration, Vec<u64>, Vec<u32>) {
    let per_writer = total.div_ceil(writers as u64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let grant = GrantLicense {
                cnpj: cnpj(),
                product: Product::EasyCash,
                contract_id: None,
                expires_on: NaiveDate::from_ymd_opt(2031, 1, 31).expect("a date"),
                resources: Resources::default(),
            };
            let actor = actor();
            let mut latencies = Vec::new();
            let mut ids = Vec::with_capacity(per_writer as usize);
            for _ in 0..per_writer {
                let t = Instant::now();
                let (id, _) = ledger
                    .grant_license(grant.clone(), &actor, Uuid::now_v7())
                    .await
                    .expect("grant");
                if keep_latencies {
                    latencies.push(t.elapsed().as_nanos() as u64);
                }
                ids.push(id.get());
            }
            (latencies, ids)
        }));
    }
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    for t in tasks {
        let (l, i) = t.await.expect("writer");
        latencies.extend(l);
        ids.extend(i);
    }
    (start.elapsed(), latencies, ids)
}

fn bench_grants(c: &mut Criterion) {
    let rt = common::runtime();
    let seconds = common::env_or("BENCH_SECONDS", 5);

    let mut group = c.benchmark_group("grant_license");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(seconds));
    for writers in WRITER_COUNTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ledger) = rt.block_on(open(dir.path()));
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter_custom(|iters| {
                    let ledger = ledger.clone();
                    async move {
                        run(&ledger, writers, iters.max(writers as u64), false)
                            .await
                            .0
                    }
                });
            },
        );

        // Latency pass, on a fresh ledger so that its ids can be checked: as many grants as
        // the writers manage in about LATENCY_PASS.
        let probe = rt
            .block_on(run(&ledger, writers, (writers as u64) * 20, false))
            .0;
        rt.block_on(store.close()).expect("close");
        drop(ledger);
        let per_s = (writers as f64 * 20.0) / probe.as_secs_f64();
        let total = ((per_s * LATENCY_PASS.as_secs_f64()) as u64).max(writers as u64 * 10);
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ledger) = rt.block_on(open(dir.path()));
        let (elapsed, mut latencies, mut ids) = rt.block_on(run(&ledger, writers, total, true));
        ids.sort_unstable();
        let expected: Vec<u32> = (1..=ids.len() as u32).collect();
        assert!(
            ids == expected,
            "license ids are not exactly 1..={}",
            ids.len()
        );
        latencies.sort_unstable();
        common::record(
            "grants",
            &serde_json::json!({
                "writers": writers,
                "grants": latencies.len(),
                "grants_per_s": (latencies.len() as f64 / elapsed.as_secs_f64()).round(),
                "p50_us": common::percentile_us(&latencies, 50.0),
                "p99_us": common::percentile_us(&latencies, 99.0),
                "ids_dense": true,
            }),
        );
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

criterion_group!(benches, bench_grants);
criterion_main!(benches);
