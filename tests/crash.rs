//! Crash safety of the file store, end to end: the real binary as a child process over one
//! data directory, killed with SIGKILL at a random moment while several clients send
//! commands, then started again and checked. Each cycle proves that
//! - every command the server acknowledged (200 with a `position`) is in the log at that
//!   position, under its `command_id` (event ids derived from it), and retrying it stores
//!   nothing (`was_retry`);
//! - a terminal whose check-in was answered as licensed is still bound;
//! - nothing else changed: the records before the cycle keep their hashes (the first new
//!   record links to the last old one), positions are dense, `recorded_at` never decreases;
//! - `license-ledger verify` passes on the directory, finds no torn tail (the restart cut
//!   it) and reports the head the server signs at `/v1/audit/head`;
//! - the live license table equals the one rebuilt from the log (`?as_of=`).
//!
//! The default run (CI) does `CRASH_CYCLES` = 20 cycles; the long run is
//! `CRASH_CYCLES=200 cargo test --test crash -- --nocapture` (see RELIABILITY.md).
//! `CRASH_SEED=N` replays a run; the seed is printed either way.

#[path = "support/process.rs"]
mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process::{call as send, run, Process};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Concurrent clients per cycle.
const CLIENTS: usize = 4;
/// Cycles of the default (CI) run.
const CYCLES_DEFAULT: u32 = 20;
/// Acknowledged commands retried per cycle (a random sample).
const RETRIES_PER_CYCLE: usize = 25;
/// The live table is compared with a rebuild every this many cycles (and after the last).
const REBUILD_EVERY: u64 = 10;
/// Page size of the license table reads.
const TABLE_PAGE: usize = 500;

/// A command the server acknowledged.
#[derive(Clone, Debug)]
struct Acked {
    method: &'static str,
    path: String,
    body: Value,
    command_id: Uuid,
    position: u64,
    event_type: &'static str,
    license_id: Option<String>,
}

/// What the clients of one cycle saw.
#[derive(Default)]
struct Seen {
    acked: Vec<Acked>,
    /// Hardware keys of terminals answered as licensed (so bound).
    bound: Vec<String>,
    /// Answers that are neither a 200 nor a connection cut by the kill.
    unexpected: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(1);

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A valid numeric CNPJ `98nnnnnn0001dd`, new in this run.
fn fresh_cnpj() -> String {
    ledger_events::Cnpj::with_check_digits(&format!("98{:06}0001", next()))
        .unwrap()
        .to_string()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A client's way to the server.
struct Conn {
    http: Client,
    url: String,
    admin: String,
}

impl Conn {
    /// Sends a command with a new `command_id` and records it in `seen` when acknowledged;
    /// `None` once the server is gone or when it answered anything but 200.
    async fn command(
        &self,
        seen: &mut Seen,
        (method, path): (&'static str, String),
        mut body: Value,
        event_type: &'static str,
    ) -> Option<Value> {
        let command_id = Uuid::now_v7();
        body["command_id"] = json!(command_id);
        let (status, answer) = send(
            &self.http,
            &self.url,
            &self.admin,
            method,
            &path,
            Some(&body),
        )
        .await?;
        if status != StatusCode::OK {
            seen.unexpected
                .push(format!("{method} {path} {body}: {status} {answer}"));
            return None;
        }
        let Some(position) = answer["position"].as_u64() else {
            seen.unexpected
                .push(format!("{method} {path}: no position in {answer}"));
            return None;
        };
        seen.acked.push(Acked {
            method,
            path,
            body,
            command_id,
            position,
            event_type,
            license_id: answer["license_id"].as_str().map(str::to_owned),
        });
        Some(answer)
    }
}

/// One client: customer, license, resources change, check-in, again and again, until the
/// server goes away or `stop` is set.
async fn client(conn: Conn, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let s = &mut seen;
    while !stop.load(Ordering::Relaxed) {
        let cnpj = fresh_cnpj();
        let body = json!({"cnpj": cnpj, "trade_name": format!("Crash {cnpj}")});
        let to = ("POST", "/v1/customers".to_owned());
        if conn
            .command(s, to, body, "CustomerRegistered")
            .await
            .is_none()
        {
            break;
        }
        let body = json!({"cnpj": cnpj, "product": "easycash", "expires_on": "2099-12-31"});
        let to = ("POST", "/v1/licenses".to_owned());
        let Some(granted) = conn.command(s, to, body, "LicenseGranted").await else {
            break;
        };
        let license = granted["license_id"].as_str().unwrap_or_default();
        let body = json!({"resources": {"habilita_dav": true}});
        let to = ("PUT", format!("/v1/licenses/{license}/resources"));
        if conn
            .command(s, to, body, "LicenseResourcesChanged")
            .await
            .is_none()
        {
            break;
        }
        let n = next();
        let key = format!("88A7B56C2B3F326F9136{n:012X}");
        let checkin = json!({"cnpj": cnpj, "product": "easycash",
            "hardware_id": format!("5002AA{n:010X}"), "hardware_key": key, "nonce": format!("c{n}")});
        let Some((status, answer)) = send(
            &conn.http,
            &conn.url,
            &conn.admin,
            "POST",
            "/v1/checkin",
            Some(&checkin),
        )
        .await
        else {
            break;
        };
        if status == StatusCode::OK && answer["outcome"] == json!("VALID") {
            s.bound.push(key);
        } else {
            s.unexpected
                .push(format!("check-in {checkin}: {status} {answer}"));
            break;
        }
    }
    seen
}

/// Reads the log from `from` to the end through `/v1/events`.
async fn read_log(http: &Client, url: &str, token: &str, from: u64) -> Vec<Value> {
    let mut items = Vec::new();
    let mut at = from;
    loop {
        let (status, page) = send(
            http,
            url,
            token,
            "GET",
            &format!("/v1/events?from={at}&limit=1000"),
            None,
        )
        .await
        .expect("events answer");
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["items"].as_array().cloned().unwrap_or_default();
        if got.is_empty() {
            return items;
        }
        at = page["next"].as_u64().expect("next");
        items.extend(got);
    }
}

/// The whole license table, live or as of `as_of`, by id.
async fn table(
    http: &Client,
    url: &str,
    token: &str,
    as_of: Option<&str>,
) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    let mut offset = 0;
    loop {
        let mut path = format!("/v1/licenses?limit={TABLE_PAGE}&offset={offset}");
        if let Some(t) = as_of {
            path.push_str(&format!("&as_of={t}"));
        }
        let (status, page) = send(http, url, token, "GET", &path, None)
            .await
            .expect("licenses answer");
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().expect("total") as usize;
        for row in &items {
            let id = row["license_id"]
                .as_str()
                .or_else(|| row["id"].as_str())
                .expect("license id")
                .to_owned();
            rows.insert(id, row.clone());
        }
        offset += items.len();
        if items.is_empty() || offset >= total {
            return rows;
        }
    }
}

/// `license-ledger verify --json` on `data`: (head position, head hash).
fn verify(data: &Path) -> (u64, String) {
    let (code, out, err) = run(&["--data-dir", data.to_str().unwrap(), "verify", "--json"]);
    assert_eq!(code, 0, "verify failed: {out}\n{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("verify --json prints JSON");
    assert_eq!(
        report["torn_tail"],
        json!(null),
        "the restarted server left a torn tail: {report}"
    );
    (
        report["head_position"].as_u64().expect("head_position"),
        report["head_hash"].as_str().expect("head_hash").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_command_survives_sigkill_at_a_random_moment() {
    let cycles = env_u64("CRASH_CYCLES").unwrap_or(u64::from(CYCLES_DEFAULT));
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("crash: seed {seed} (CRASH_SEED={seed} replays it), {cycles} cycles");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let started = Instant::now();

    let mut server = Process::serve(&data, dir.path(), "start-0");
    let admin = server
        .admin
        .clone()
        .expect("first start prints an admin token");
    // The last record checked so far: position and hash.
    let mut checked_head = (0u64, String::new());
    // Its time: `recorded_at` never decreases along the log, across restarts too.
    let mut prev_time = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    let mut records_checked = 0u64;
    let mut acked_total = 0usize;
    let mut retried_total = 0usize;
    let mut killed_in_flight = 0usize;
    let mut tables_compared = 0usize;
    let mut licenses_compared = 0usize;

    for cycle in 1..=cycles {
        // Act: clients send commands; the server is killed at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let conn = Conn {
                    http: http.clone(),
                    url: server.url.clone(),
                    admin: admin.clone(),
                };
                tokio::spawn(client(conn, stop.clone()))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        tokio::time::sleep(kill_after).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let mut seen = Seen::default();
        for c in clients {
            let s = c.await.expect("client task");
            seen.acked.extend(s.acked);
            seen.bound.extend(s.bound);
            seen.unexpected.extend(s.unexpected);
        }
        assert!(
            seen.unexpected.is_empty(),
            "cycle {cycle} (seed {seed}): answers other than 200 while the server ran: {:?}\nlog:\n{}",
            seen.unexpected,
            server.log_text()
        );

        server = Process::serve(&data, dir.path(), &format!("start-{cycle}"));
        let url = server.url.clone();

        // The log: verified by the CLI, its head the one the server signs.
        let (verified_position, verified_hash) = verify(&data);
        let (status, head) = send(&http, &url, &admin, "GET", "/v1/audit/head", None)
            .await
            .expect("head answer");
        assert_eq!(status, StatusCode::OK, "{head}");
        assert_eq!(head["head_position"], json!(verified_position), "{head}");
        assert_eq!(head["head_hash"], json!(verified_hash), "{head}");

        // The records of this cycle: dense, chained onto the ones checked before, time
        // never going back.
        let new = read_log(&http, &url, &admin, checked_head.0 + 1).await;
        assert_eq!(
            new.len() as u64,
            verified_position - checked_head.0,
            "cycle {cycle}: the records before position {} changed",
            checked_head.0
        );
        let mut prev_hash = checked_head.1.clone();
        let mut by_position: HashMap<u64, &Value> = HashMap::new();
        for (i, r) in new.iter().enumerate() {
            let position = checked_head.0 + 1 + i as u64;
            assert_eq!(r["position"], json!(position), "positions are dense");
            if position > 1 {
                assert_eq!(
                    r["prev_hash"].as_str(),
                    Some(prev_hash.as_str()),
                    "cycle {cycle}: record {position} does not link to the one before"
                );
            }
            let t: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(r["recorded_at"].clone()).expect("recorded_at");
            assert!(
                t >= prev_time,
                "cycle {cycle}: recorded_at went back at {position}: {prev_time} then {t}"
            );
            prev_time = t;
            prev_hash = r["hash"].as_str().expect("hash").to_owned();
            by_position.insert(position, r);
        }
        records_checked += new.len() as u64;

        // Every acknowledged command is there, at its position, under its command id.
        for a in &seen.acked {
            let r = by_position.get(&a.position).unwrap_or_else(|| {
                panic!(
                    "cycle {cycle} (seed {seed}): acknowledged {} {} at position {} is not in \
                     the log after the restart (head {verified_position}, previous {})",
                    a.method, a.path, a.position, checked_head.0
                )
            });
            // Its records carry the event ids derived from the command id (the correlation
            // id is derived from the command id and the command's digest).
            assert!(
                (0..8)
                    .any(|i| r["event_id"]
                        == json!(license_ledger::app::event_id_for(a.command_id, i))),
                "{r}"
            );
            assert_eq!(r["event_type"], json!(a.event_type), "{r}");
        }
        // Every terminal answered as licensed is still bound.
        for key in &seen.bound {
            let path = format!("/v1/licenses?hardware_key={key}");
            let (status, page) = send(&http, &url, &admin, "GET", &path, None)
                .await
                .expect("licenses answer");
            assert_eq!(status, StatusCode::OK, "{page}");
            assert_eq!(
                page["total"],
                json!(1),
                "terminal {key} lost its bind: {page}"
            );
        }
        // Retrying acknowledged commands stores nothing.
        let mut sample = seen.acked.clone();
        for i in 0..sample.len().min(RETRIES_PER_CYCLE) {
            let j = rng.gen_range(i..sample.len());
            sample.swap(i, j);
        }
        sample.truncate(RETRIES_PER_CYCLE);
        for a in &sample {
            let (status, again) = send(&http, &url, &admin, a.method, &a.path, Some(&a.body))
                .await
                .expect("retry answer");
            assert_eq!(
                status,
                StatusCode::OK,
                "retry {} {}: {again}",
                a.method,
                a.path
            );
            assert_eq!(again["was_retry"], json!(true), "retry of {a:?}: {again}");
            assert_eq!(
                again["position"],
                json!(a.position),
                "retry of {a:?}: {again}"
            );
            if let Some(id) = &a.license_id {
                assert_eq!(again["license_id"], json!(id), "retry of {a:?}: {again}");
            }
        }
        let (_, after) = send(&http, &url, &admin, "GET", "/v1/audit/head", None)
            .await
            .expect("head answer");
        assert_eq!(
            after["head_position"],
            json!(verified_position),
            "cycle {cycle}: a retry stored something"
        );

        // The live view equals a rebuild from the log (every few cycles and after the last:
        // each page of the rebuild replays the whole log, and the check is cumulative).
        if cycle % REBUILD_EVERY == 0 || cycle == cycles {
            let later = (chrono::Utc::now() + chrono::Duration::days(1))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let live = table(&http, &url, &admin, None).await;
            let rebuilt = table(&http, &url, &admin, Some(&later)).await;
            assert_eq!(
                live.len(),
                rebuilt.len(),
                "cycle {cycle}: table sizes differ"
            );
            assert!(
                live == rebuilt,
                "cycle {cycle}: the live table differs from the rebuild"
            );
            tables_compared += 1;
            licenses_compared = live.len();
        }

        if seen.acked.is_empty() {
            killed_in_flight += 1;
        }
        acked_total += seen.acked.len();
        retried_total += sample.len();
        checked_head = (verified_position, prev_hash);
    }
    server.kill();

    println!(
        "crash: {cycles} kill cycles survived in {:.1} s (seed {seed}): {records_checked} records \
         verified, {acked_total} acknowledged commands found at their positions, \
         {retried_total} retries stored nothing, {killed_in_flight} cycles killed before any \
         acknowledgement; head {}; live table = rebuild {tables_compared} times (last \
         {licenses_compared} licenses)",
        started.elapsed().as_secs_f64(),
        checked_head.0
    );
}
