//! Helpers shared by the benches: the machine's raw fdatasync rate, percentiles, and where
//! results go.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes 200 bytes and `fdatasync`s them in a loop for `for_how_long`, in `dir` (the same
/// filesystem the store writes to), and returns syncs per second.
pub fn fdatasync_rate(dir: &Path, for_how_long: Duration) -> f64 {
    let path = dir.join("fdatasync-probe");
    let Ok(mut f) = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
    else {
        return 0.0;
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_how_long {
        if f.write_all(&[0x5a; 200]).is_err() || f.sync_data().is_err() {
            return 0.0;
        }
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

/// The `p`-th percentile (0..=100) of sorted nanosecond samples, in microseconds.
pub fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ns.len() - 1) as f64).round() as usize;
    sorted_ns[rank.min(sorted_ns.len() - 1)] as f64 / 1000.0
}

/// Appends one line of JSON to `benches/results/<name>.jsonl` when `LEDGER_BENCH_RECORD` is
/// set, so that a run meant to be published leaves its numbers behind.
pub fn record(name: &str, line: &serde_json::Value) {
    println!("{name}: {line}");
    if std::env::var_os("LEDGER_BENCH_RECORD").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.jsonl")))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A benchmark setting from the environment (`BENCH_SECONDS`, `BENCH_WORKERS`...), or
/// `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The multi-threaded runtime the benches drive the store with: `BENCH_WORKERS` threads
/// (default 2, the machine's cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("BENCH_WORKERS", 2))
        .enable_all()
        .build()
        .expect("runtime")
}
