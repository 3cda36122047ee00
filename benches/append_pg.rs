//! Durable append throughput and latency on PostgreSQL with 1, 16 and 64 concurrent writers,
//! beside a plain-insert baseline in the same run.
//!
//! Store pass: one `PgStore` (one node), `writers` tasks each appending single-event appends
//! to its own stream and waiting for each to be acknowledged (committed) before sending the
//! next, as terminals do. Baseline pass: `writers` connections of their own, each running one
//! autocommit `INSERT` per event into a simple table (no chain, no head, no version check).
//! Each pass runs for a fixed time and records every append's latency for p50/p99; the
//! store's counters give events per transaction and where the time of a transaction goes
//! (waiting for the head lock and the lookups, planning, insert + commit). Read pass: the log
//! the store pass wrote, read back with `read_all` for the same time (records per second).
//!
//! Needs `DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/test`); without it the
//! bench says so and exits. Works in a schema of its own, dropped at the end.
//!
//! Run: `DATABASE_URL=... cargo bench --bench append_pg` (add `LEDGER_BENCH_RECORD=1` to append
//! the figures to `benches/results/append_pg.jsonl`; `BENCH_SECONDS` sets the length of each
//! pass, default 5; `BENCH_WRITERS=64` runs one writer count only;
//! `BENCH_WRITER_CONNECTIONS` sets the store's `writer_connections`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use license_ledger::clock::SystemClock;
use license_ledger::store::conformance::{new_event, stream};
use license_ledger::store::postgres::{PgStore, PgStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, NewEvent, READ_BATCH_MAX};
use tokio_postgres::NoTls;
use uuid::Uuid;

mod common;

const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
const WARM_UP: Duration = Duration::from_millis(500);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run then too,
    // shortly, as a smoke test.
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "append_pg: skipped: DATABASE_URL is not set \
             (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)"
        );
        return;
    };
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds = common::env_or("BENCH_SECONDS", if benching { 5.0 } else { 0.5 });
    let pass = Duration::from_secs_f64(seconds);
    let rt = common::runtime();
    rt.block_on(run_all(&url, pass));
}

async fn run_all(url: &str, pass: Duration) {
    let schema = format!("ledger_bench_{:08x}", rand::random::<u32>());
    let admin = connect(url).await;
    let server_version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .expect("version")
        .get(0);
    println!("PostgreSQL {server_version}, schema {schema}, {pass:?} per pass");
    let counts: Vec<usize> = match std::env::var("BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => WRITER_COUNTS.to_vec(),
    };
    for writers in counts {
        // A fresh schema per writer count, so that every pass starts from an empty log.
        let store_schema = format!("{schema}_{writers}");
        let store = open_store(url, &store_schema).await;
        let store_pass = run_store(&store, writers, pass).await;
        let read_pass = run_read(&store, pass).await;
        store.close().await.expect("close");
        drop(store);
        let baseline = run_baseline(url, &store_schema, writers, pass).await;
        common::record(
            "append_pg",
            &serde_json::json!({
                "writers": writers,
                "store": store_pass,
                "read": read_pass,
                "baseline": baseline,
                "postgres": server_version,
            }),
        );
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {store_schema} CASCADE"))
            .await
            .expect("drop schema");
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to DATABASE_URL");
    tokio::spawn(connection);
    client
}

async fn open_store(url: &str, schema: &str) -> PgStore {
    let mut config = PgStoreConfig::new(url);
    config.schema = Some(schema.to_owned());
    if let Some(lanes) = std::env::var("BENCH_WRITER_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.writer_connections = lanes;
    }
    PgStore::open(config, Arc::new(SystemClock))
        .await
        .expect("open PgStore")
}

fn summary(mut latencies: Vec<u64>, elapsed: Duration) -> serde_json::Value {
    latencies.sort_unstable();
    serde_json::json!({
        "events": latencies.len(),
        "events_per_s": (latencies.len() as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": common::percentile_us(&latencies, 50.0),
        "p99_us": common::percentile_us(&latencies, 99.0),
    })
}

/// `writers` tasks appending to the store until `pass` is over (after a warm-up); every
/// acknowledged append's latency.
async fn run_store(store: &PgStore, writers: usize, pass: Duration) -> serde_json::Value {
    let run = |until: Instant, keep: bool| {
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let s = stream(&format!("bench{w}"));
                let template = new_event(w as u32);
                let mut latencies = Vec::new();
                while Instant::now() < until {
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
                    if keep {
                        latencies.push(t.elapsed().as_nanos() as u64);
                    }
                }
                latencies
            }));
        }
        tasks
    };
    for t in run(Instant::now() + WARM_UP, false) {
        t.await.expect("writer");
    }
    let before = store.pg_stats();
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in run(start + pass, true) {
        latencies.extend(t.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    let after = store.pg_stats();
    let transactions = (after.transactions - before.transactions).max(1) as f64;
    let mut out = summary(latencies, elapsed);
    out["events_per_transaction"] =
        (((after.records_written - before.records_written) as f64 / transactions * 10.0).round()
            / 10.0)
            .into();
    let per_tx_us = |a: f64, b: f64| ((a - b) * 1e6 / transactions).round();
    out["lock_and_lookup_us_per_tx"] = per_tx_us(after.lock_seconds, before.lock_seconds).into();
    out["plan_us_per_tx"] = per_tx_us(after.plan_seconds, before.plan_seconds).into();
    out["insert_and_commit_us_per_tx"] =
        per_tx_us(after.commit_seconds, before.commit_seconds).into();
    out["speculative_batches"] = (after.speculative_batches - before.speculative_batches).into();
    out["locked_fallbacks"] = (after.fallbacks - before.fallbacks).into();
    out["plans_without_read"] = (after.plans_without_read - before.plans_without_read).into();
    println!("store    writers={writers:>2} {out}");
    out
}

/// Reads the whole log the store pass wrote, front to back in batches of
/// [`READ_BATCH_MAX`], over and over until `pass` is over: records read per second, each row
/// rebuilt into its record and checked on the way (see `store::postgres` § Reads).
async fn run_read(store: &PgStore, pass: Duration) -> serde_json::Value {
    let start = Instant::now();
    let mut records = 0u64;
    let mut batches = 0u64;
    let mut next = 1;
    while start.elapsed() < pass {
        let batch = store
            .read_all(next, READ_BATCH_MAX)
            .await
            .expect("read_all");
        next = match batch.last() {
            Some(last) => last.envelope.position + 1,
            None => 1,
        };
        records += batch.len() as u64;
        batches += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "records": records,
        "records_per_s": (records as f64 / elapsed).round(),
        "us_per_batch": (elapsed * 1e6 / batches.max(1) as f64).round(),
    });
    println!("read     {out}");
    out
}

/// `writers` connections each inserting one row per statement (autocommit) into a plain
/// table until `pass` is over.
async fn run_baseline(
    url: &str,
    schema: &str,
    writers: usize,
    pass: Duration,
) -> serde_json::Value {
    let admin = connect(url).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.baseline (
                 id         bigserial   PRIMARY KEY,
                 stream_id  text        NOT NULL,
                 event_id   uuid        NOT NULL,
                 payload    bytea       NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .expect("create baseline table");
    let payload = new_event(0).event.encode_payload().expect("encode payload");
    let insert =
        format!("INSERT INTO {schema}.baseline (stream_id, event_id, payload) VALUES ($1, $2, $3)");
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        let client = connect(url).await;
        let statement = client.prepare(&insert).await.expect("prepare");
        clients.push((Arc::new(client), statement));
    }
    let run = |until: Instant, keep: bool| {
        let mut tasks = Vec::with_capacity(writers);
        for (w, (client, statement)) in clients.iter().enumerate() {
            let client = client.clone();
            let statement = statement.clone();
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let s = format!("bench{w}");
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    client
                        .execute(&statement, &[&s, &Uuid::now_v7(), &payload])
                        .await
                        .expect("insert");
                    if keep {
                        latencies.push(t.elapsed().as_nanos() as u64);
                    }
                }
                latencies
            }));
        }
        tasks
    };
    for t in run(Instant::now() + WARM_UP, false) {
        t.await.expect("writer");
    }
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in run(start + pass, true) {
        latencies.extend(t.await.expect("writer"));
    }
    let out = summary(latencies, start.elapsed());
    println!("baseline writers={writers:>2} {out}");
    out
}
