//! The server's clock jumping backwards, end to end: the real binary reading its time from a
//! clock file (the hidden `--clock-file` flag) that the test moves back and forth.
//! Proves that whatever the clock does the log stays in order (`recorded_at` never
//! decreases, positions are dense, `verify` passes), and states what a jump back must not do
//! to an expired license.

#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use process::{call, run, Process};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";
const HW_ID: &str = "50026B77825EECA5";
const HW_KEY: &str = "88A7B56C2B3F326F91362A182483F63E";
/// The license's last valid day.
const EXPIRES: &str = "2031-01-12";

struct World {
    _dir: tempfile::TempDir,
    data: PathBuf,
    clock_file: PathBuf,
    server: Process,
    admin: String,
    http: Client,
}

impl World {
    /// A server at `start` with a customer and a license expiring on [`EXPIRES`].
    async fn new(start: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let clock_file = dir.path().join("clock");
        std::fs::write(&clock_file, start).unwrap();
        let server = Process::start(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--clock-file",
                clock_file.to_str().unwrap(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
            ],
            dir.path(),
            "server",
        );
        let admin = server.admin.clone().expect("admin token");
        let w = World {
            _dir: dir,
            data,
            clock_file,
            server,
            admin,
            http: Client::new(),
        };
        let b = w
            .ok(
                "POST",
                "/v1/customers",
                json!({"cnpj": CNPJ, "trade_name": "Mercado"}),
            )
            .await;
        assert!(b["position"].is_u64());
        w.ok(
            "POST",
            "/v1/licenses",
            json!({"cnpj": CNPJ, "product": "easycash", "expires_on": EXPIRES}),
        )
        .await;
        w
    }

    /// Sets the server's clock and waits until it has read it.
    async fn set_clock(&self, at: &str) {
        std::fs::write(&self.clock_file, at).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let body = (method != "GET").then_some(body);
        call(
            &self.http,
            &self.server.url,
            &self.admin,
            method,
            path,
            body.as_ref(),
        )
        .await
        .expect("server answers")
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, b) = self.send(method, path, body).await;
        assert_eq!(s, StatusCode::OK, "{method} {path}: {b}");
        b
    }

    /// A fresh check-in decision (a new nonce) of the terminal; its outcome code.
    async fn check_in(&self, nonce: &str) -> String {
        let b = self
            .ok(
                "POST",
                "/v1/checkin",
                json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": HW_ID,
                       "hardware_key": HW_KEY, "nonce": nonce}),
            )
            .await;
        b["outcome"].as_str().unwrap_or_default().to_owned()
    }

    /// The whole log: checks positions are dense and `recorded_at` never decreases.
    async fn log_in_order(&self) -> Vec<Value> {
        let b = self
            .ok("GET", "/v1/events?from=1&limit=1000", json!(null))
            .await;
        let items = b["items"].as_array().cloned().unwrap_or_default();
        let mut last = DateTime::<Utc>::MIN_UTC;
        for (i, r) in items.iter().enumerate() {
            assert_eq!(r["position"], json!(i + 1), "positions are dense: {r}");
            let t: DateTime<Utc> = serde_json::from_value(r["recorded_at"].clone()).unwrap();
            assert!(
                t >= last,
                "recorded_at went back at {}: {last} then {t}",
                i + 1
            );
            last = t;
        }
        items
    }
}

fn verify(data: &Path) -> u64 {
    let (code, out, err) = run(&["--data-dir", data.to_str().unwrap(), "verify", "--json"]);
    assert_eq!(code, 0, "verify failed: {out}\n{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    report["head_position"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_in_order_when_the_clock_jumps_back_and_forth() {
    // Arrange
    let w = World::new("2031-01-10T10:00:00Z").await;
    assert_eq!(w.check_in("n-1").await, "EXPIRING");

    // Act: commands and check-ins at every stop of a clock going back and forth, by days
    // and by milliseconds.
    let stops = [
        "2031-01-20T10:00:00Z",
        "2031-01-05T08:00:00Z",
        "2031-01-20T10:00:00.500Z",
        "2031-01-20T10:00:00.499Z",
        "2030-06-01T00:00:00Z",
        "2031-02-01T00:00:00Z",
    ];
    for (i, at) in stops.iter().enumerate() {
        w.set_clock(at).await;
        w.ok(
            "PUT",
            "/v1/licenses/000001/resources",
            json!({"resources": {"habilita_dav": i % 2 == 0}}),
        )
        .await;
        w.check_in(&format!("s-{i}")).await;
        w.ok("POST", "/v1/licenses/000001/block", json!({})).await;
        w.ok("POST", "/v1/licenses/000001/unblock", json!({})).await;
    }

    // Assert: dense positions, `recorded_at` never decreasing, nothing recorded before the
    // latest time already in the log, and the chain verifies.
    let log = w.log_in_order().await;
    assert!(log.len() >= 4 + 3 * stops.len(), "{} records", log.len());
    let last: DateTime<Utc> =
        serde_json::from_value(log[log.len() - 1]["recorded_at"].clone()).unwrap();
    assert!(last >= "2031-02-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
    let times: Vec<&str> = log
        .iter()
        .filter_map(|r| r["recorded_at"].as_str())
        .collect();
    println!("clock_jumps: recorded_at along the log: {times:?}");
    assert_eq!(verify(&w.data), log.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_license_is_not_reopened_when_the_clock_jumps_back() {
    // Arrange: the terminal bound while the license was valid, then refused once expired
    // (that refusal is recorded, at a time after the expiry).
    let w = World::new("2031-01-10T10:00:00Z").await;
    assert_eq!(w.check_in("n-1").await, "EXPIRING");
    w.set_clock("2031-01-14T10:00:00Z").await;
    assert_eq!(w.check_in("n-2").await, "EXPIRED");

    // Act: the clock jumps back before the expiry.
    w.set_clock("2031-01-11T10:00:00Z").await;
    let outcome = w.check_in("n-3").await;

    // Assert: the log already holds a moment after the expiry; going back does not undo it.
    w.log_in_order().await;
    assert_eq!(
        outcome, "EXPIRED",
        "the clock went back from 2031-01-14 to 2031-01-11 and the license expired on \
         {EXPIRES} answered {outcome}"
    );
}
