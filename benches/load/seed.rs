//! Seeds a data directory for the HTTP load benchmark: `customers` customers with
//! `per_customer` EasyCash licenses each, every license bound to its own terminal by a
//! first check-in, and one terminal token per customer (role `terminal`, bound to its CNPJ,
//! added to `secrets.toml` as `token create` would); writes the terminals (CNPJ, hardware
//! id, key, license id, the customer's terminal token) to a CSV file that the wrk scripts
//! read.
//!
//! With `DAYS`, the same licenses are seeded `DAYS` days ago and every day since is written
//! through the store's append: daily check-in records, contract renewals, a few unlinks,
//! blocks, contingencies and offline activations (see `seeder.rs`). At the end the licenses
//! are the same, each valid and bound to the same terminal.
//!
//! `cargo run --release --example load_seed -- DATA_DIR TERMINALS_CSV [CUSTOMERS] [PER_CUSTOMER] [DAYS]`
//! (`LOAD_SEED_WORKERS` sets how many tasks append the history concurrently; default 2048.)

use std::error::Error;

use license_ledger::clock::{Clock, SystemClock};

#[path = "seeder.rs"]
mod seeder;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: load_seed DATA_DIR TERMINALS_CSV [CUSTOMERS=1000] [PER_CUSTOMER=100] [DAYS]";
    let data_dir = args.get(1).ok_or(usage)?.clone();
    let out_path = args.get(2).ok_or(usage)?.clone();
    let customers: u32 = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let per_customer: u32 = args.get(4).map_or(Ok(100), |s| s.parse())?;
    let days: Option<u32> = args.get(5).map(|s| s.parse()).transpose()?;
    let params = seeder::SeedParams {
        customers,
        per_customer,
        history: days.filter(|&d| d > 0).map(seeder::History::new),
    };
    let report = seeder::seed(&data_dir, &out_path, &params, SystemClock.now()).await?;
    println!(
        "seeded {} licenses for {customers} customers in {:.1} s; head position {}",
        report.licenses, report.setup_seconds, report.setup_records
    );
    if let Some(days) = days {
        let written = report.history.total();
        println!(
            "history: {days} days, {written} records in {:.1} s ({:.0} records/s); head position {}",
            report.history_seconds,
            written as f64 / report.history_seconds.max(1e-9),
            report.head
        );
        if let Some(cpu) = report.history_cpu_seconds {
            println!(
                "history CPU: {cpu:.1} s ({:.1} µs per record, {:.0} records per CPU-second)",
                cpu * 1e6 / written.max(1) as f64,
                written as f64 / cpu.max(1e-9)
            );
        }
        println!("history by kind: {:?}", report.history);
        println!("store: {:?}", report.store_stats);
    }
    // The first start's admin token, for the mixed run's support commands.
    println!("admin_token={}", report.admin_token);
    Ok(())
}
