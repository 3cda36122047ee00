//! The shared harness of the HTTP API tests (`mod common;`): the real server on 127.0.0.1
//! port 0 over a fresh data directory, an HTTP client, the first admin token, and helpers to
//! arrange customers, contracts, licenses and tokens. A test that travels in time spawns the
//! server with a [`ManualClock`] it keeps a clone of ([`TestApp::spawn_with_clock`]).
//!
//! Logs only when `TEST_LOG` is set. Each test binary uses part of this module, hence
//! `dead_code` is allowed here.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use license_ledger::cli::serve::{start, Running, ServeSettings};
use license_ledger::clock::{Clock, ManualClock, SystemClock};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// A running server and its client.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Client with a 20 s timeout per request.
    pub client: Client,
    /// The admin token the first start printed.
    pub admin: String,
    /// The server; `None` once a test stopped it.
    pub running: Option<Running>,
    /// The data directory (removed when the app is dropped).
    pub dir: tempfile::TempDir,
    /// The server's time source, kept for restarts.
    clock: Arc<dyn Clock>,
}

/// One answer, raw: status, body text (empty for an event stream, which is not read) and
/// the body as JSON (a JSON string of the text when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub text: String,
    pub json: Value,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

fn settings(dir: &std::path::Path, clock: &Arc<dyn Clock>) -> ServeSettings {
    ServeSettings {
        clock: clock.clone(),
        ..ServeSettings::loopback(dir)
    }
}

impl TestApp {
    /// A server on the system clock.
    pub async fn spawn() -> TestApp {
        Self::spawn_on(Arc::new(SystemClock)).await
    }

    /// A server whose every decision and record reads `clock`: move it (`set`, `advance`)
    /// through the clone the test keeps to travel in time.
    pub async fn spawn_with_clock(clock: ManualClock) -> TestApp {
        Self::spawn_on(Arc::new(clock)).await
    }

    async fn spawn_on(clock: Arc<dyn Clock>) -> TestApp {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let running = start(&settings(dir.path(), &clock)).await.unwrap();
        let admin = running
            .new_admin_token
            .clone()
            .expect("first start makes a token");
        TestApp {
            base: format!("http://{}", running.addr),
            client: Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            admin,
            running: Some(running),
            dir,
            clock,
        }
    }

    /// Stops the server and starts it again over the same data directory and clock; returns
    /// once its read model has caught up (`/healthz` answers 200).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.call("GET", "/healthz", None, None).await;
            if status == StatusCode::OK {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready 20 s after a restart: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the server and starts it again over the same data directory and clock, with
    /// `adjust`ed settings; returns as soon as it listens (its read model may still be
    /// catching up).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut ServeSettings)) {
        self.running.take().unwrap().stop().await.unwrap();
        let mut settings = settings(self.dir.path(), &self.clock);
        adjust(&mut settings);
        let running = start(&settings).await.unwrap();
        assert!(running.new_admin_token.is_none());
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// One request, answered raw. An event stream's body is not read (it never ends): its
    /// headers are the answer, and dropping it closes it.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.client.get(url),
            "PUT" => self.client.put(url),
            "POST" => self.client.post(url),
            other => panic!("no method {other} in this API"),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let streaming = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text = if streaming {
            String::new()
        } else {
            res.text().await.unwrap()
        };
        let json = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Answer {
            status,
            text,
            json,
            retry_after,
        }
    }

    /// One request: status and body as JSON (a JSON string when it is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let a = self.send(method, path, token, body.as_ref()).await;
        (a.status, a.json)
    }

    /// A POST that must answer 200.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, body) = self.call("POST", path, Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
        body
    }

    /// A PUT that must answer 200.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, body) = self.call("PUT", path, Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "PUT {path}: {body}");
        body
    }

    /// A GET that must answer 200.
    pub async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// An admin command that must answer 200.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let a = self
            .send(method, path, Some(self.admin.as_str()), Some(&body))
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{method} {path} {body}: {}",
            a.text
        );
        a.json
    }

    /// A new token of `role` (terminals name their CNPJ), named `test-<role>-<n>`.
    pub async fn token(&self, role: &str, cnpj: Option<&str>) -> String {
        self.named_token(&format!("test-{role}-{}", next()), role, cnpj)
            .await
    }

    /// A new token named `name`.
    pub async fn named_token(&self, name: &str, role: &str, cnpj: Option<&str>) -> String {
        let b = self
            .admin(
                "POST",
                "/v1/tokens",
                json!({"name": name, "role": role, "cnpj": cnpj}),
            )
            .await;
        b["token"].as_str().unwrap().to_owned()
    }

    /// The log's head position.
    pub async fn head(&self) -> u64 {
        let a = self
            .send("GET", "/v1/audit/head", Some(self.admin.as_str()), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.json["head_position"].as_u64().unwrap()
    }

    /// Registers a customer.
    pub async fn customer(&self, cnpj: &str, trade_name: &str) {
        self.admin(
            "POST",
            "/v1/customers",
            json!({"cnpj": cnpj, "trade_name": trade_name}),
        )
        .await;
    }

    /// Signs a contract starting on `starts_on` (`YYYY-MM-DD`); returns its id.
    pub async fn contract(
        &self,
        cnpj: &str,
        starts_on: &str,
        interval_days: u16,
        renew_before_days: u16,
    ) -> String {
        let b = self
            .admin(
                "POST",
                "/v1/contracts",
                json!({"cnpj": cnpj, "starts_on": starts_on, "interval_days": interval_days,
                       "renew_before_days": renew_before_days}),
            )
            .await;
        b["contract_id"].as_str().unwrap().to_owned()
    }

    /// Grants a license of `product` (`"easycash"`...) expiring on `expires_on`
    /// (`YYYY-MM-DD`), renewed by `contract_id` if given; returns its id (`"000001"`).
    pub async fn license(
        &self,
        cnpj: &str,
        product: &str,
        expires_on: &str,
        contract_id: Option<&str>,
    ) -> String {
        let b = self
            .admin(
                "POST",
                "/v1/licenses",
                json!({"cnpj": cnpj, "product": product, "expires_on": expires_on,
                       "contract_id": contract_id}),
            )
            .await;
        b["license_id"].as_str().unwrap().to_owned()
    }
}

// ---- checks ----

/// Every answer is a 200; their `field`s, parsed, are exactly 1..=n.
pub fn assert_dense_ids(answers: &[(StatusCode, Value)], field: &str) {
    let refused: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .map(|(status, body)| format!("{status} {body}"))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} refused, e.g. {:?}",
        refused.len(),
        answers.len(),
        refused.first()
    );
    let mut ids: Vec<u32> = answers
        .iter()
        .map(|(_, body)| body[field].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    let expected: Vec<u32> = (1..=answers.len() as u32).collect();
    assert_eq!(ids, expected, "{field}s are distinct and dense from 1");
}

// ---- fresh values ----

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A number not handed out before in this test binary.
pub fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A valid numeric CNPJ `99nnnnnn0001dd`, new in this test binary.
pub fn fresh_cnpj() -> String {
    ledger_events::Cnpj::with_check_digits(&format!("99{:06}0001", next()))
        .unwrap()
        .to_string()
}

/// A terminal's hardware id (16 hex), new in this test binary.
pub fn fresh_hardware_id() -> String {
    format!("5002AA{:010X}", next())
}

/// A terminal's license key (32 hex), new in this test binary.
pub fn fresh_hardware_key() -> String {
    format!("88A7B56C2B3F326F9136{:012X}", next())
}

/// An offline-activation serial (16 hex), new in this test binary.
pub fn fresh_serial() -> String {
    format!("50026B7760{:06X}", next())
}
