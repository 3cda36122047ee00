//! Open time and resident memory of the file store after N records.
//!
//! Two steps, each in its own process so that the second measures only what an open costs:
//!
//! ```text
//! cargo run --release --example open_bench -- write DIR 1000000   # N records into DIR
//! cargo run --release --example open_bench -- open DIR            # open, read, close
//! ```
//!
//! `write` appends N records (appends of 16 events, 64 concurrent writers, one stream per
//! 30 records as a license's history) through the real append path. `open` prints the open's
//! wall time, the process's resident memory after it (`VmRSS`) and at most (`VmHWM`), the time
//! of 1,000 stream reads and 1,000 retried appends (answered from the index), the store's
//! counters, and the close time.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ledger_events::StreamId;
use license_ledger::clock::SystemClock;
use license_ledger::store::conformance::new_event;
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, NewEvent};

const PER_APPEND: u32 = 16;
const WRITERS: u32 = 64;
const RECORDS_PER_STREAM: u64 = 30;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn stream(i: u64) -> StreamId {
    StreamId::parse(&format!("license-{i:07}")).unwrap_or_else(|e| panic!("{e}"))
}

async fn open(dir: &Path) -> FileStore {
    FileStore::open(FileStoreConfig::new(dir), Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("open: {e}"))
}

async fn write(dir: &Path, records: u64) {
    let store = open(dir).await;
    let streams = (records / RECORDS_PER_STREAM).max(1);
    let appends = records / u64::from(PER_APPEND);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..u64::from(WRITERS) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = w;
            while a < appends {
                let events: Vec<NewEvent> = (0..PER_APPEND).map(|k| new_event(k + 1)).collect();
                store
                    .append(&stream(a % streams), ExpectedVersion::Any, events)
                    .await
                    .unwrap_or_else(|e| panic!("append: {e}"));
                a += u64::from(WRITERS);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let secs = started.elapsed().as_secs_f64();
    let written = appends * u64::from(PER_APPEND);
    println!(
        "wrote {written} records in {secs:.1} s ({:.0} records/s); {:?}",
        written as f64 / secs,
        store.stats()
    );
    let started = Instant::now();
    store.close().await.unwrap_or_else(|e| panic!("close: {e}"));
    println!("close {:.2} s", started.elapsed().as_secs_f64());
}

async fn open_and_read(dir: &Path) {
    let started = Instant::now();
    let store = open(dir).await;
    let open_secs = started.elapsed().as_secs_f64();
    let head = store.head().await.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "open {open_secs:.2} s, head {}, VmRSS {} KiB, VmHWM {} KiB",
        head.position,
        status_kib("VmRSS:"),
        status_kib("VmHWM:")
    );
    let streams = (head.position / RECORDS_PER_STREAM).max(1);
    let started = Instant::now();
    let mut read = 0;
    for i in 0..1_000u64 {
        let s = stream(i * 7919 % streams);
        read += store
            .read_stream(&s, 1, 50)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len();
    }
    println!(
        "1000 stream reads ({read} records) {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    for i in 0..1_000u64 {
        let p = (i * 104_729) % head.position + 1;
        let records = store.read_all(p, 1).await.unwrap_or_else(|e| panic!("{e}"));
        let Some(r) = records.first() else { continue };
        let e = &r.envelope;
        let event = r.event().unwrap_or_else(|e| panic!("{e}"));
        let retry = NewEvent {
            event_id: e.event_id,
            event,
            actor: e.actor.clone(),
            correlation_id: e.correlation_id,
        };
        // A retry of a single event of a larger append is refused as a duplicate, which
        // takes the same index look-ups as an exact retry.
        let _ = store
            .append(&e.stream_id, ExpectedVersion::Any, vec![retry])
            .await;
    }
    println!(
        "1000 reads + retries by event id {:.3} s",
        started.elapsed().as_secs_f64()
    );
    println!("{:?}, VmRSS {} KiB", store.stats(), status_kib("VmRSS:"));
    let started = Instant::now();
    store.close().await.unwrap_or_else(|e| panic!("close: {e}"));
    println!("close {:.2} s", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..).unwrap_or_default() {
        [cmd, dir] if cmd == "open" => open_and_read(Path::new(dir)).await,
        [cmd, dir, n] if cmd == "write" => {
            let n = n.parse().unwrap_or_else(|e| panic!("records: {e}"));
            write(Path::new(dir), n).await;
        }
        _ => {
            eprintln!("usage: open_bench write DIR RECORDS | open_bench open DIR");
            std::process::exit(2);
        }
    }
}
