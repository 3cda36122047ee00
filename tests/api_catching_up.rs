//! Starting never fails because catching up takes long: the server listens at once, `/healthz`
//! answers 503 `catching_up` with how far the read model is, requests that read the view wait
//! for it (bounded, then 503 `busy` with `Retry-After`), and `/healthz` answers 200 once the
//! read model has caught up with the log as it was at start.
//!
//! The read model's progress is in the test's hands: the server is restarted on its own log
//! through a store layer whose subscription reads no record past a gate the test moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ledger_events::{ChainHead, Position, Record, StreamId, StreamVersion};
use license_ledger::cli::serve::StoreLayer;
use license_ledger::store::{
    Appended, EventStore, ExpectedVersion, HeadSource, NewEvent, StoreError, StoreStats,
    Subscription,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

mod common;
use common::{fresh_cnpj, fresh_hardware_id, fresh_hardware_key, Answer, TestApp};

/// A store whose subscriptions deliver no record past the gate's position; everything else
/// is the inner store's.
struct Gated {
    inner: Arc<dyn EventStore>,
    gate: watch::Receiver<Position>,
}

#[async_trait]
impl HeadSource for Gated {
    async fn read_from(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut gate = self.gate.clone();
        let open = *gate
            .wait_for(|g| *g >= from)
            .await
            .map_err(|_| StoreError::Closed)?;
        let allowed = usize::try_from(open - from + 1).unwrap_or(usize::MAX);
        self.inner.read_all(from, limit.min(allowed)).await
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        // The inner store's head, followed by polling (its own watch is private to it).
        let (tx, rx) = watch::channel(0);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                let Ok(head) = inner.head().await else { return };
                tx.send_if_modified(|p| std::mem::replace(p, head.position) != head.position);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        rx
    }
}

#[async_trait]
impl EventStore for Gated {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.inner.read_all(from, limit).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.head().await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        self.inner.stream_version(stream).await
    }

    fn subscribe_all(&self, from: Position) -> Subscription {
        Subscription::new(
            Arc::new(Gated {
                inner: self.inner.clone(),
                gate: self.gate.clone(),
            }),
            from,
        )
    }

    fn stats(&self) -> Option<StoreStats> {
        self.inner.stats()
    }
}

/// A customer registered first, then its licenses: a view stopped after the customer knows
/// it but none of its licenses.
struct Arranged {
    app: TestApp,
    cnpj: String,
    terminal: String,
    customer_at: Position,
    head: Position,
    licenses: Vec<String>,
}

async fn arrange() -> Arranged {
    let app = TestApp::spawn().await;
    let cnpj = fresh_cnpj();
    app.customer(&cnpj, "Padaria Pão Quente").await;
    let customer_at = app.head().await;
    let mut licenses = Vec::new();
    for _ in 0..5 {
        licenses.push(app.license(&cnpj, "easycash", "2099-12-31", None).await);
    }
    let terminal = app.token("terminal", Some(&cnpj)).await;
    let head = app.head().await;
    Arranged {
        app,
        cnpj,
        terminal,
        customer_at,
        head,
        licenses,
    }
}

/// Restarts the server with its read model held at `at` and `catch_up_timeout`; returns the
/// gate (send a position to let the read model on) once the read model stands at `at`. The
/// derived data is removed first, so that the read model replays the log rather than
/// resuming from the snapshot the stop left.
async fn restart_held_at(
    app: &mut TestApp,
    at: Position,
    catch_up_timeout: Duration,
) -> watch::Sender<Position> {
    let (gate, held) = watch::channel(at);
    let layer: StoreLayer = Arc::new(move |inner| {
        Arc::new(Gated {
            inner,
            gate: held.clone(),
        })
    });
    app.restart_with(|s| {
        std::fs::remove_dir_all(s.data_dir.join("derived")).unwrap();
        s.store_layer = Some(layer);
        s.ledger.catch_up_timeout = catch_up_timeout;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.call("GET", "/healthz", None, None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body["position"] == json!(at) {
            return gate;
        }
        assert!(
            Instant::now() < deadline,
            "the read model never stood at {at}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn checkin_body(cnpj: &str) -> Value {
    json!({"cnpj": cnpj, "product": "easycash", "hardware_id": fresh_hardware_id(),
           "hardware_key": fresh_hardware_key()})
}

fn grant_body(cnpj: &str) -> Value {
    json!({"cnpj": cnpj, "product": "easycash", "expires_on": "2099-12-31"})
}

/// The answer and when it arrived.
async fn timed(answer: impl std::future::Future<Output = Answer>) -> (Answer, Instant) {
    let a = answer.await;
    (a, Instant::now())
}

fn retry_after(a: &reqwest::header::HeaderMap) -> Option<&str> {
    a.get("retry-after").and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answers_while_its_read_model_catches_up_and_check_ins_and_commands_wait_for_it() {
    let Arranged {
        mut app,
        cnpj,
        terminal,
        customer_at,
        head,
        licenses,
    } = arrange().await;
    assert!(customer_at < head);

    let gate = restart_held_at(&mut app, customer_at, Duration::from_secs(20)).await;

    // Not ready: how far the read model is, against the log's head at start.
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(res.headers()), Some("1"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "catching_up", "{body}");
    assert_eq!(body["status"], "catching_up", "{body}");
    assert_eq!(body["position"], json!(customer_at), "{body}");
    assert_eq!(body["head"], json!(head), "{body}");
    // What reads only the log is served meanwhile.
    assert_eq!(app.head().await, head);

    // A check-in and a command issued now wait until the read model has caught up: decided on
    // the view held at the customer, the check-in would find no license to bind.
    let release = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = app.call("GET", "/healthz", None, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        gate.send_replace(Position::MAX);
        Instant::now()
    };
    let checkin_body = checkin_body(&cnpj);
    let grant_body = grant_body(&cnpj);
    let ((checkin, checked_in_at), (grant, granted_at), released_at) = tokio::join!(
        timed(app.send(
            "POST",
            "/v1/checkin",
            Some(terminal.as_str()),
            Some(&checkin_body)
        )),
        timed(app.send(
            "POST",
            "/v1/licenses",
            Some(app.admin.as_str()),
            Some(&grant_body)
        )),
        release,
    );
    assert_eq!(checkin.status, StatusCode::OK, "{}", checkin.text);
    assert!(checked_in_at >= released_at, "the check-in did not wait");
    let bound = checkin.json["answer"]["license_id"].as_str().unwrap();
    assert!(
        licenses.iter().any(|l| l == bound),
        "bound {bound}: {}",
        checkin.text
    );
    assert_eq!(grant.status, StatusCode::OK, "{}", grant.text);
    assert!(granted_at >= released_at, "the command did not wait");
    let next_id = format!("{:06}", licenses.len() + 1);
    assert_eq!(grant.json["license_id"], json!(next_id), "{}", grant.text);

    // Ready: the answer of before.
    let (status, body) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let applied = body["applied_position"].as_u64().unwrap();
    assert!(applied > head, "{body}");
    assert_eq!(body["head_position"], json!(applied), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_need_a_read_model_still_catching_up_past_the_time_limit_answer_503_busy() {
    let Arranged {
        mut app,
        cnpj,
        terminal,
        customer_at,
        head,
        licenses,
    } = arrange().await;

    let gate = restart_held_at(&mut app, customer_at, Duration::from_millis(300)).await;

    let checkin_body = checkin_body(&cnpj);
    let grant_body = grant_body(&cnpj);
    let one_license = format!("/v1/licenses/{}", licenses[0]);
    let refused = [
        (
            "POST",
            "/v1/checkin",
            terminal.as_str(),
            Some(&checkin_body),
        ),
        (
            "POST",
            "/v1/licenses",
            app.admin.as_str(),
            Some(&grant_body),
        ),
        ("GET", "/v1/licenses", app.admin.as_str(), None),
        ("GET", one_license.as_str(), app.admin.as_str(), None),
    ];
    for (method, path, token, body) in refused {
        let started = Instant::now();
        let mut req = app
            .client
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(retry_after(res.headers()), Some("1"), "{method} {path}");
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"], "busy", "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("catching up"),
            "{method} {path}: {message}"
        );
        assert!(
            waited >= Duration::from_millis(300),
            "{method} {path} answered after {waited:?}, before the time limit"
        );
    }
    // Nothing was stored meanwhile.
    assert_eq!(app.head().await, head);

    gate.send_replace(Position::MAX);
    let (status, body) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(&terminal),
            Some(checkin_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
