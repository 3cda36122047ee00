//! PostgreSQL restarted under load: a server process on PostgreSQL takes commands from
//! several clients while the database is restarted (`pg_ctlcluster ... restart`). Every
//! acknowledged command must be in the log afterwards, the chain must verify, and the server
//! must take commands again by itself.
//!
//! Needs `DATABASE_URL` pointing at the machine's own cluster and `pg_ctlcluster` (Debian);
//! otherwise it prints that it skipped. It lives alone in its test binary, so no other test
//! of the run uses the database while it restarts.

#[path = "support/process.rs"]
mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use process::{call, Process};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn restart_command() -> Option<(String, String)> {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()?;
    std::path::Path::new("/usr/bin/pg_ctlcluster")
        .exists()
        .then(|| (version, "main".to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_command_is_lost_when_postgresql_restarts_under_load() {
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("SKIPPED pg_restart: DATABASE_URL is not set (.ci/run sets it)");
        return;
    };
    let local = url.contains("127.0.0.1") || url.contains("localhost");
    let Some((version, cluster)) = restart_command().filter(|_| local) else {
        eprintln!("SKIPPED pg_restart: no local Debian cluster to restart (pg_ctlcluster)");
        return;
    };
    let schema = format!("ledger_restart_{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = Process::start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--store",
            "postgres",
            "--database-url",
            &url,
            "--database-schema",
            &schema,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        "node",
    );
    let admin = node.admin.clone().expect("admin token");
    let http = Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let base = node.url.clone();

    // Four clients registering customers until told to stop; every acknowledged answer kept.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let cnpj = cnpj(c * 100_000 + n);
                let command_id = uuid::Uuid::now_v7().to_string();
                let body = json!({"cnpj": cnpj, "trade_name": format!("Loja {c}-{n}"),
                                  "command_id": command_id});
                match call(&http, &base, &admin, "POST", "/v1/customers", Some(&body)).await {
                    Some((StatusCode::OK, v)) => {
                        let p = v["position"].as_u64().unwrap_or(0);
                        acked.lock().push((command_id, p));
                    }
                    Some((StatusCode::SERVICE_UNAVAILABLE, _)) | None => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some((status, v)) => panic!("unexpected {status}: {v}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().len();
    assert!(before > 0, "commands were acknowledged before the restart");
    let out = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, &cluster, "restart"])
        .output()
        .expect("run pg_ctlcluster");
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server recovers by itself: acknowledgements resume.
    let resumed_at = Instant::now();
    let after_restart = acked.lock().len();
    loop {
        if acked.lock().len() > after_restart + 20 {
            break;
        }
        assert!(
            resumed_at.elapsed() < Duration::from_secs(60),
            "the server never took commands again after the restart:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    // Every acknowledged command is in the log at the position it was acknowledged with.
    let acked = acked.lock().clone();
    let (_, head) = call(&http, &base, &admin, "GET", "/v1/audit/head", None)
        .await
        .unwrap();
    let head = head["head_position"].as_u64().unwrap();
    let mut by_position = std::collections::HashMap::new();
    let mut from = 1;
    while from <= head {
        let (_, page) = call(
            &http,
            &base,
            &admin,
            "GET",
            &format!("/v1/events?from={from}&limit=1000"),
            None,
        )
        .await
        .unwrap();
        for r in page["items"].as_array().unwrap() {
            by_position.insert(r["position"].as_u64().unwrap(), r["event_id"].clone());
        }
        from = page["next"].as_u64().unwrap();
    }
    for (command_id, position) in &acked {
        // A command's first record has the event id derived from its command id.
        let command: uuid::Uuid = command_id.parse().unwrap();
        let first = license_ledger::app::event_id_for(command, 0).to_string();
        assert_eq!(
            by_position.get(position),
            Some(&Value::String(first)),
            "acknowledged command {command_id} at position {position}"
        );
    }
    let (code, out, err) = process::run(&[
        "--store",
        "postgres",
        "--database-url",
        &url,
        "--database-schema",
        &schema,
        "verify",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    println!(
        "pg_restart: {} acknowledged ({} before the restart), {} refused or failed during it, \
         head {head}; {}",
        acked.len(),
        before,
        refused.load(std::sync::atomic::Ordering::SeqCst),
        out.lines().last().unwrap_or_default()
    );
    drop(node);
    // Drop the schema.
    if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

/// A valid CNPJ for `n` (8-digit root, branch 0001, check digits computed).
fn cnpj(n: u32) -> String {
    ledger_events::Cnpj::with_check_digits(&format!("{:08}0001", 40_000_000 + n))
        .unwrap()
        .to_string()
}
