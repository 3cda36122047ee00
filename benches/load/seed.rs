//! Seeds a data directory for the HTTP load benchmark: `customers` customers with
//! `per_customer` EasyCash licenses each, every license bound to its own terminal by a
//! first check-in, and one terminal token per customer (role `terminal`, bound to its CNPJ,
//! added to `secrets.toml` as `token create` would); writes the terminals (CNPJ, hardware
//! id, key, license id, the customer's terminal token) to a CSV file that the wrk scripts
//! read.
//!
//! `cargo run --release --example load_seed -- DATA_DIR TERMINALS_CSV [CUSTOMERS] [PER_CUSTOMER]`

use std::error::Error;
use std::io::Write;
use std::sync::Arc;

use chrono::Duration;
use ledger_events::{
    Actor, Cnpj, HardwareId, HardwareKey, LicenseId, Product, Resources, StreamId, TradeName,
};
use license_ledger::app::{Ledger, LedgerConfig};
use license_ledger::clock::{Clock, SystemClock};
use license_ledger::config::{new_token, token_digest, Role, SecretsFile, TokenEntry};
use license_ledger::domain::checkin::CheckInRequest;
use license_ledger::domain::customer::{Customer, CustomerCommand};
use license_ledger::domain::license::{License, LicenseCommand};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use tokio::task::JoinSet;
use uuid::Uuid;

/// A valid CNPJ for customer `n`.
fn cnpj(n: u32) -> Result<Cnpj, Box<dyn Error>> {
    Ok(Cnpj::with_check_digits(&format!(
        "{:08}0001",
        20_000_000 + n
    ))?)
}

fn terminal(n: u64) -> (HardwareId, HardwareKey) {
    (
        HardwareId::from_bytes((0x5002_0000_0000_0000 | n).to_be_bytes()),
        HardwareKey::from_bytes(
            (0x88A7_0000_0000_0000_0000_0000_0000_0000u128 | u128::from(n)).to_be_bytes(),
        ),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: load_seed DATA_DIR TERMINALS_CSV [CUSTOMERS=1000] [PER_CUSTOMER=100]";
    let data_dir = args.get(1).ok_or(usage)?.clone();
    let out_path = args.get(2).ok_or(usage)?.clone();
    let customers: u32 = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let per_customer: u32 = args.get(4).map_or(Ok(100), |s| s.parse())?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = FileStore::open(FileStoreConfig::new(&data_dir), clock.clone()).await?;
    let ledger = Arc::new(
        Ledger::start(
            Arc::new(store.clone()),
            clock.clone(),
            LedgerConfig::default(),
        )
        .await?,
    );
    if ledger.view().license_count() > 0 {
        return Err(format!("{data_dir} already holds licenses; seed an empty directory").into());
    }
    let started = std::time::Instant::now();
    let expires = clock.now().date_naive() + Duration::days(365);
    let operator = Actor::operator("load-seed")?;
    let (mut secrets, admin) = SecretsFile::load_or_create(std::path::Path::new(&data_dir))?;
    let admin =
        admin.ok_or("the data directory already has a secrets file; seed an empty directory")?;
    let mut tokens = Vec::new();
    let mut entries = Vec::new();
    for c in 0..customers {
        let token = new_token()?;
        entries.push(TokenEntry {
            name: format!("load-terminal-{c:04}"),
            sha256: hex::encode(token_digest(&token)),
            role: Role::Terminal,
            cnpj: Some(cnpj(c)?),
        });
        tokens.push(Arc::new(token));
    }
    secrets.add_tokens(entries)?;
    let mut tasks = JoinSet::new();
    for c in 0..customers {
        let token = tokens[c as usize].clone();
        let ledger = ledger.clone();
        let operator = operator.clone();
        tasks.spawn(async move {
            let cnpj = cnpj(c).map_err(|e| e.to_string())?;
            let register = CustomerCommand::Register {
                cnpj,
                trade_name: TradeName::parse(&format!("Loja {c:04}")).map_err(|e| e.to_string())?,
                since: None,
            };
            ledger
                .execute::<Customer>(
                    &StreamId::customer(&cnpj),
                    &register,
                    &operator,
                    Uuid::now_v7(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut rows = Vec::new();
            for l in 0..per_customer {
                let n = u64::from(c) * u64::from(per_customer) + u64::from(l);
                let license_id = LicenseId::new(n as u32 + 1).map_err(|e| e.to_string())?;
                let grant = LicenseCommand::Grant {
                    license_id,
                    cnpj,
                    product: Product::EasyCash,
                    contract_id: None,
                    expires_on: expires,
                    resources: Resources::default(),
                };
                ledger
                    .execute::<License>(
                        &StreamId::license(license_id),
                        &grant,
                        &operator,
                        Uuid::now_v7(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let (hardware_id, hardware_key) = terminal(n);
                let req = CheckInRequest {
                    cnpj,
                    product: Product::EasyCash,
                    hardware_id,
                    hardware_key,
                    ip: "192.168.0.10".parse().ok(),
                    program_version: None,
                    caixa: None,
                    equipamento: None,
                };
                let plan = ledger.check_in(&req).await.map_err(|e| e.to_string())?;
                if plan.license_id.is_none() {
                    return Err(format!("terminal {hardware_id} was not bound"));
                }
                rows.push(format!(
                    "{cnpj},{hardware_id},{hardware_key},{license_id},{token}"
                ));
            }
            Ok::<_, String>(rows)
        });
        // At most 64 customers in flight: enough to batch appends, bounded memory.
        while tasks.len() >= 64 {
            if let Some(r) = tasks.join_next().await {
                write_rows(&out_path, r??)?;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        write_rows(&out_path, r??)?;
    }
    let head = ledger.store().head().await?;
    println!(
        "seeded {} licenses for {customers} customers in {:.1} s; head position {}",
        u64::from(customers) * u64::from(per_customer),
        started.elapsed().as_secs_f64(),
        head.position
    );
    // The first start's admin token, for the mixed run's support commands.
    println!("admin_token={admin}");
    drop(ledger);
    store.close().await?;
    Ok(())
}

fn write_rows(path: &str, rows: Vec<String>) -> Result<(), Box<dyn Error>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for r in rows {
        writeln!(f, "{r}")?;
    }
    Ok(())
}
