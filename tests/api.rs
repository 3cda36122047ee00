//! The HTTP API end to end: the real server on 127.0.0.1 port 0 over a fresh data directory,
//! driven with an HTTP client (harness: tests/common/mod.rs). Arrange / act / assert; each
//! test is named after the rule.

use std::time::Duration;

use ledger_events::answer::{verify_head, SignedAnswer, VerifyingKey};
use ledger_events::Hash;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

mod common;
use common::TestApp;

const CNPJ: &str = "11222333000181";
const OTHER_CNPJ: &str = "11444777000161";
const HW_ID: &str = "50026B77825EEC01";
const HW_KEY: &str = "88A7B56C2B3F326F91362A182483F601";

impl TestApp {
    /// A customer with one EasyCash license; returns the license id.
    async fn seed(&self) -> String {
        self.post(
            "/v1/customers",
            &self.admin,
            json!({"cnpj": CNPJ, "trade_name": "Padaria Pão Quente"}),
        )
        .await;
        let body = self
            .post(
                "/v1/licenses",
                &self.admin,
                json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31"}),
            )
            .await;
        body["license_id"].as_str().unwrap().to_owned()
    }
}

/// One server-sent event: its id, type and data (JSON).
#[derive(Debug)]
struct SseEvent {
    id: u64,
    event: String,
    data: Value,
}

/// A `GET /v1/events/stream` response read incrementally; comments are skipped.
struct SseReader {
    res: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(app: &TestApp, query: &str, token: &str, last_event_id: Option<u64>) -> Self {
        // No total timeout: the body never ends on its own.
        let mut req = Client::new()
            .get(format!("{}/v1/events/stream{query}", app.base))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = tokio::time::timeout(Duration::from_secs(10), req.send())
            .await
            .expect("stream opens within 10 s")
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            res,
            buf: String::new(),
        }
    }

    /// The next event, failing after 10 s.
    async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) = (None, String::new(), None);
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = Some(v.parse().unwrap());
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            event = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(v).unwrap());
                        } else {
                            assert!(
                                line.is_empty() || line.starts_with(':'),
                                "unexpected line {line:?}"
                            );
                        }
                    }
                    if let (Some(id), Some(data)) = (id, data) {
                        return SseEvent { id, event, data };
                    }
                }
                let chunk = self.res.chunk().await.unwrap().expect("stream ended");
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within 10 s")
    }
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn checkin_body(cnpj: &str) -> Value {
    json!({"cnpj": cnpj, "product": "easycash", "hardware_id": HW_ID, "hardware_key": HW_KEY,
           "ip": "192.168.0.191", "program_version": "2.0.12.1", "nonce": "n-123"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_binds_a_license_and_its_signed_answer_verifies_with_the_published_key() {
    let app = TestApp::spawn().await;
    let license = app.seed().await;
    let terminal = app.token("terminal", Some(CNPJ)).await;

    let (status, body) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(&terminal),
            Some(checkin_body(CNPJ)),
        )
        .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["answer"]["license_id"], json!(license));
    assert_eq!(body["expires_on"], json!("2099-12-31"));
    assert!(
        body["messages"][0].as_str().unwrap().contains("31/12/2099"),
        "{body}"
    );
    // The server names its version, as the terminal logs it (manual: "EasyCash utilizando a
    // versão 2.0.12.1 do servidor...").
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(body["server_version"], json!(version));
    assert_eq!(
        body["version_line"],
        json!(format!(
            "EasyCash utilizando a versão {version} do servidor..."
        ))
    );
    let keys = app.call("GET", "/v1/keys", None, None).await.1;
    assert_eq!(keys["key_id"], body["key_id"]);
    let mut pk = [0u8; 32];
    hex::decode_to_slice(keys["public_key"].as_str().unwrap(), &mut pk).unwrap();
    let key = VerifyingKey::from_bytes(&pk).unwrap();
    let signed: SignedAnswer = serde_json::from_value(body.clone()).unwrap();
    let subject = ledger_events::answer::Subject {
        cnpj: ledger_events::Cnpj::parse(CNPJ).unwrap(),
        product: ledger_events::Product::EasyCash,
        hardware_id: ledger_events::HardwareId::parse(HW_ID).unwrap(),
    };
    signed.verify_with_nonce(&key, &subject, "n-123").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_inactive_customer_answers_401_usuario_invalido() {
    // The manual's AVISO ("Cliente Inativado"), line by line.
    let aviso = json!([
        "Problema encontrado na liberação!",
        "Retorno do servidor:",
        "CÓDIGO: 401",
        "MENSAGEM: Usuário inválido."
    ]);
    let app = TestApp::spawn().await;
    app.seed().await;
    let (status, body) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(&app.admin),
            Some(checkin_body(OTHER_CNPJ)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["messages"], aviso, "{body}");

    app.post(
        &format!("/v1/customers/{CNPJ}/deactivate"),
        &app.admin,
        json!({}),
    )
    .await;
    let (status, body) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(&app.admin),
            Some(checkin_body(CNPJ)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["messages"], aviso, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tenants_are_enforced() {
    let app = TestApp::spawn().await;
    let license = app.seed().await;
    let terminal = app.token("terminal", Some(CNPJ)).await;
    let auditor = app.token("auditor", None).await;
    let support = app.token("support", None).await;

    // A terminal checking in for another customer sees nothing there.
    let (s, b) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(&terminal),
            Some(checkin_body(OTHER_CNPJ)),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(b["error"], "not_found");
    // A terminal may not read the table.
    let (s, b) = app.call("GET", "/v1/licenses", Some(&terminal), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // An auditor reads but may not command.
    app.get("/v1/licenses", &auditor).await;
    let (s, b) = app
        .call(
            "POST",
            &format!("/v1/licenses/{license}/block"),
            Some(&auditor),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"], "forbidden");
    // Support may not issue emergency releases.
    let release = json!({"product": "easycash", "hardware_id": HW_ID, "hardware_key": HW_KEY, "licensed_to": "Padaria"});
    let (s, _) = app
        .call(
            "POST",
            "/v1/emergency-releases",
            Some(&support),
            Some(release.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let b = app
        .post("/v1/emergency-releases", &app.admin, release)
        .await;
    assert_eq!(b["counter_key"].as_str().unwrap().len(), 19, "{b}");
    // No token, or a wrong one.
    let (s, b) = app.call("GET", "/v1/licenses", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["error"], "unauthenticated");
    let (s, _) = app
        .call("GET", "/v1/licenses", Some("llt_wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_shape_and_the_right_status() {
    let app = TestApp::spawn().await;
    let license = app.seed().await;

    let res = app
        .client
        .post(format!("{}/v1/customers", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{\"cnpj\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "malformed");

    let (s, b) = app
        .call(
            "POST",
            "/v1/customers",
            Some(&app.admin),
            Some(json!({"cnpj": "11222333000182", "trade_name": "X"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["field"], "cnpj", "{b}");
    let (s, b) = app
        .call(
            "POST",
            "/v1/customers",
            Some(&app.admin),
            Some(json!({"trade_name": "X"})),
        )
        .await;
    assert_eq!(
        (s, &b["field"]),
        (StatusCode::BAD_REQUEST, &json!("cnpj")),
        "{b}"
    );

    let big = json!({"cnpj": CNPJ, "trade_name": "x".repeat(70 * 1024)});
    let (s, b) = app
        .call("POST", "/v1/customers", Some(&app.admin), Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_eq!(b["error"], "body_too_large");

    let (s, b) = app
        .call(
            "POST",
            &format!("/v1/licenses/{license}/renew"),
            Some(&app.admin),
            Some(json!({"expires_on": "2000-01-01"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"], "rejected");

    let (s, b) = app
        .call(
            "POST",
            "/v1/customers",
            Some(&app.admin),
            Some(json!({"cnpj": CNPJ, "trade_name": "Again"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, _) = app
        .call("GET", "/v1/licenses/999999", Some(&app.admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_in_pt_br_and_queries_read_their_writes_and_the_past() {
    let app = TestApp::spawn().await;
    let license = app.seed().await;
    let before = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let blocked = app
        .post(
            &format!("/v1/licenses/{license}/block"),
            &app.admin,
            json!({"note": "inadimplente"}),
        )
        .await;
    let p = blocked["position"].as_u64().unwrap();

    let row = app
        .get(
            &format!("/v1/licenses/{license}?min_position={p}"),
            &app.admin,
        )
        .await;
    assert_eq!(row["blocked"], json!(true));
    let old = app
        .get(
            &format!(
                "/v1/licenses/{license}?as_of={}",
                before
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .replace('+', "%2B")
            ),
            &app.admin,
        )
        .await;
    assert_eq!(old["blocked"], json!(false), "{old}");
    let page = app
        .get(
            &format!("/v1/licenses?cnpj={CNPJ}&status=blocked"),
            &app.admin,
        )
        .await;
    assert_eq!(page["total"], json!(1));

    let history = app
        .get(&format!("/v1/licenses/{license}/history"), &app.admin)
        .await;
    let items = history["items"].as_array().unwrap();
    assert!(items.len() >= 2, "{history}");
    assert_eq!(items[0]["position"].as_u64(), Some(p));
    assert!(items[0]["position"].as_u64() > items[1]["position"].as_u64());
    assert!(
        items[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Bloqueada: inadimplente"),
        "{history}"
    );
    assert!(
        items[1]["description"]
            .as_str()
            .unwrap()
            .contains("concedida"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_read_the_log_with_hashes_and_a_signed_head() {
    let app = TestApp::spawn().await;
    app.seed().await;
    let auditor = app.token("auditor", None).await;

    let feed = app.get("/v1/events?from=1&limit=10", &auditor).await;
    let items = feed["items"].as_array().unwrap();
    assert_eq!(items[0]["position"], json!(1));
    let head = app.get("/v1/audit/head", &auditor).await;
    let last = items.last().unwrap();
    assert_eq!(head["head_position"], last["position"]);
    assert_eq!(head["head_hash"], last["hash"], "{last}");

    let keys = app.call("GET", "/v1/keys", None, None).await.1;
    let mut pk = [0u8; 32];
    hex::decode_to_slice(keys["public_key"].as_str().unwrap(), &mut pk).unwrap();
    let key = VerifyingKey::from_bytes(&pk).unwrap();
    let hash = Hash::parse(head["head_hash"].as_str().unwrap()).unwrap();
    let position = head["head_position"].as_u64().unwrap();
    verify_head(&key, position, &hash, head["signature"].as_str().unwrap()).unwrap();
    assert!(verify_head(
        &key,
        position + 1,
        &hash,
        head["signature"].as_str().unwrap()
    )
    .is_err());
    let (s, _) = app
        .call("GET", "/v1/events?limit=1001", Some(&auditor), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_data_tokens_and_keys() {
    let mut app = TestApp::spawn().await;
    let license = app.seed().await;
    let auditor = app.token("auditor", None).await;
    let key_before = app.call("GET", "/v1/keys", None, None).await.1;

    app.restart().await;

    let row = app.get(&format!("/v1/licenses/{license}"), &auditor).await;
    assert_eq!(row["cnpj"], json!(CNPJ));
    assert_eq!(app.call("GET", "/v1/keys", None, None).await.1, key_before);
    app.running.take().unwrap().stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_stored_records_then_live_ones_and_resumes_after_last_event_id() {
    let mut app = TestApp::spawn().await;
    let license = app.seed().await;
    let auditor = app.token("auditor", None).await;
    let head = app.get("/v1/audit/head", &auditor).await["head_position"]
        .as_u64()
        .unwrap();
    assert!(head >= 2);

    let mut stream = SseReader::open(&app, "?from=1", &auditor, None).await;
    for expected in 1..=head {
        let e = stream.next().await;
        assert_eq!(e.id, expected);
        assert_eq!(e.event, "record");
        assert_eq!(e.data["position"], json!(expected));
    }
    app.post(
        &format!("/v1/licenses/{license}/block"),
        &app.admin,
        json!({}),
    )
    .await;
    let live = stream.next().await;
    assert_eq!(live.id, head + 1);
    assert!(
        live.data["stream_id"].to_string().contains(&license),
        "{}",
        live.data
    );
    let live_hash = live.data["hash"].clone();
    drop(stream);

    // A client reconnecting with Last-Event-ID resumes right after it (the header wins over
    // `from`).
    let mut resumed = SseReader::open(&app, "?from=1", &auditor, Some(head)).await;
    let e = resumed.next().await;
    assert_eq!(e.id, head + 1);
    assert_eq!(e.data["hash"], live_hash);
    drop(resumed);

    let mut from = SseReader::open(&app, &format!("?from={head}"), &auditor, None).await;
    assert_eq!(from.next().await.id, head);
    drop(from);

    // Closed streams end on the server too: the graceful stop does not wait for them (it
    // would wait its 10 s drain timeout for a connection still streaming).
    let stopping = std::time::Instant::now();
    app.running.take().unwrap().stop().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_for_readers_only() {
    let app = TestApp::spawn().await;
    app.seed().await;
    let terminal = app.token("terminal", Some(CNPJ)).await;
    let (s, body) = app
        .call("GET", "/v1/events/stream", Some(&terminal), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], json!("forbidden"));
    let (s, _) = app.call("GET", "/v1/events/stream", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let auditor = app.token("auditor", None).await;
    let res = Client::new()
        .get(format!("{}/v1/events/stream", app.base))
        .bearer_auth(&auditor)
        .header("Last-Event-ID", "not-a-position")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_pattern_and_report_the_log_head() {
    let app = TestApp::spawn().await;
    let license = app.seed().await;
    let auditor = app.token("auditor", None).await;
    let scrape = || async {
        let res = Client::new()
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        res.text().await.unwrap()
    };
    let series =
        "ledger_http_requests_total{route=\"/v1/licenses/{id}\",method=\"GET\",status=\"200\"}";

    let before = scrape().await;
    let count_before = metric(&before, series).unwrap_or(0.0);
    app.get(&format!("/v1/licenses/{license}"), &auditor).await;
    let after = scrape().await;
    assert_eq!(metric(&after, series), Some(count_before + 1.0), "{after}");
    assert!(
        !after.contains(&format!("route=\"/v1/licenses/{license}\"")),
        "raw paths must not become labels"
    );
    assert!(after.contains(
        "ledger_http_request_duration_seconds_bucket{route=\"/v1/licenses/{id}\",le=\"+Inf\"}"
    ));

    let head = app.get("/v1/audit/head", &auditor).await;
    let text = scrape().await;
    assert_eq!(
        metric(&text, "ledger_log_head_position"),
        head["head_position"].as_f64(),
        "{text}"
    );
    assert!(metric(&text, "ledger_projection_position").is_some());
    assert!(metric(&text, "ledger_projection_lag").is_some());
    assert!(metric(&text, "ledger_appends_total").unwrap() >= 2.0);
    assert!(metric(&text, "ledger_records_written_total").unwrap() >= 2.0);
    assert!(metric(&text, "ledger_fsyncs_total").unwrap() >= 1.0);
    assert!(metric(&text, "ledger_fsync_seconds_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_and_offline_activations_are_rate_limited() {
    use license_ledger::http::limits::{AUTH_FAILURES_PER_MINUTE, OFFLINE_ACTIVATIONS_PER_MINUTE};
    let app = TestApp::spawn().await;
    // Guessing tokens: past the limit, the address's guesses get 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..AUTH_FAILURES_PER_MINUTE {
        let (status, _) = app
            .call("GET", "/v1/licenses", Some("llt_guess"), None)
            .await;
        statuses.push(status.as_u16());
    }
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    let guess = app
        .send("GET", "/v1/licenses", Some("llt_guess"), None)
        .await;
    assert_eq!(
        guess.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        guess.text
    );
    assert_eq!(guess.json["error"], "rate_limited");
    assert!(guess.json["message"].as_str().unwrap().contains("retry"));
    let res = app
        .client
        .get(format!("{}/v1/licenses", app.base))
        .bearer_auth("llt_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "60");

    // Counter-key requests per token.
    let app = TestApp::spawn().await;
    let support = app.token("support", None).await;
    let mut last = StatusCode::OK;
    for i in 0..=OFFLINE_ACTIVATIONS_PER_MINUTE {
        let serial = format!("50026B77605F{i:04X}");
        let (status, body) = app
            .call(
                "POST",
                "/v1/offline-activations",
                Some(&support),
                Some(json!({"serial": serial, "product": "easycash"})),
            )
            .await;
        if i < OFFLINE_ACTIVATIONS_PER_MINUTE {
            assert_eq!(status, StatusCode::OK, "activation {i}: {body}");
        }
        last = status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_failure_limiter_locks_out_valid_tokens() {
    // Finding 6 of issue 15: after 61 bad tokens from one address, the admin token and the
    // terminals behind the same address got 429 for a minute.
    use license_ledger::http::limits::AUTH_FAILURES_PER_MINUTE;
    let app = TestApp::spawn().await;
    let support = app.token("support", None).await;
    for _ in 0..=AUTH_FAILURES_PER_MINUTE + 5 {
        app.call("GET", "/v1/licenses", Some("llt_guess"), None)
            .await;
    }
    let (status, _) = app
        .call("GET", "/v1/licenses", Some("llt_guess"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesses are limited"
    );
    for token in [&app.admin, &support] {
        let (status, body) = app.call("GET", "/v1/licenses", Some(token), None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a valid token is never refused: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    use license_ledger::http::limits::AUTH_FAILURES_PER_MINUTE;
    let guess = |app: &TestApp, client: &'static str| {
        app.client
            .get(format!("{}/v1/licenses", app.base))
            .bearer_auth("llt_guess")
            .header("X-Forwarded-For", format!("203.0.113.9, {client}"))
            .send()
    };
    // No trusted proxy: the header is a client's claim; all guesses count for 127.0.0.1.
    let app = TestApp::spawn().await;
    for i in 0..AUTH_FAILURES_PER_MINUTE {
        let client = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" };
        assert_eq!(guess(&app, client).await.unwrap().status(), 401);
    }
    assert_eq!(guess(&app, "10.0.0.3").await.unwrap().status(), 429);

    // Behind a trusted proxy (the loopback): each client address counts apart, and the
    // address left of the nearest untrusted hop is never believed.
    let mut app = TestApp::spawn().await;
    app.restart_with(|s| s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    for _ in 0..AUTH_FAILURES_PER_MINUTE {
        assert_eq!(guess(&app, "10.0.0.1").await.unwrap().status(), 401);
    }
    assert_eq!(guess(&app, "10.0.0.1").await.unwrap().status(), 429);
    assert_eq!(
        guess(&app, "10.0.0.2").await.unwrap().status(),
        401,
        "another client behind the same proxy is not limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_listing_sorts_on_request_and_refuses_a_page_over_the_limit() {
    let app = TestApp::spawn().await;
    let cnpj = common::fresh_cnpj();
    app.admin(
        "POST",
        "/v1/customers",
        json!({"cnpj": cnpj, "trade_name": "Loja"}),
    )
    .await;
    for expires_on in ["2031-05-01", "2030-01-31", "2032-12-31"] {
        app.admin(
            "POST",
            "/v1/licenses",
            json!({"cnpj": cnpj, "product": "easycash", "expires_on": expires_on}),
        )
        .await;
    }
    let expiries = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["expires_on"].as_str().unwrap().to_owned())
            .collect()
    };
    // No sort: license id order, i.e. the order granted.
    let page = app
        .get(&format!("/v1/licenses?cnpj={cnpj}"), &app.admin)
        .await;
    assert_eq!(expiries(&page), ["2031-05-01", "2030-01-31", "2032-12-31"]);
    let page = app
        .get(
            &format!("/v1/customers/{cnpj}/licenses?sort=expires_on&order=desc"),
            &app.admin,
        )
        .await;
    assert_eq!(expiries(&page), ["2032-12-31", "2031-05-01", "2030-01-31"]);
    let page = app
        .get(
            &format!("/v1/licenses?cnpj={cnpj}&sort=expires_on"),
            &app.admin,
        )
        .await;
    assert_eq!(expiries(&page), ["2030-01-31", "2031-05-01", "2032-12-31"]);

    for query in ["limit=501", "sort=colour", "order=up"] {
        let (status, body) = app
            .call(
                "GET",
                &format!("/v1/licenses?{query}"),
                Some(&app.admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["field"], query.split('=').next().unwrap(), "{body}");
    }
}

/// `POST /v1/tokens` as the admin for a support token named `name`.
async fn create_support_token(app: &TestApp, name: &str) -> common::Answer {
    app.send(
        "POST",
        "/v1/tokens",
        Some(app.admin.as_str()),
        Some(&json!({"name": name, "role": "support"})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_token_names_are_refused_naming_the_field() {
    // Finding 9 of issue 15: a support token named `admin` looked like the admin in the log.
    let app = TestApp::spawn().await;
    app.named_token("caixa-loja-1", "support", None).await;
    for name in ["caixa-loja-1", "admin"] {
        let a = create_support_token(&app, name).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}: {}", a.text);
        assert_eq!(a.json["field"], "name", "{}", a.text);
        assert!(a.text.contains("exists already"), "{}", a.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_the_log_records_which_token_acted_not_only_its_name() {
    // Finding 9 of issue 15 asks for the token id recorded with the actor: names are unique
    // only among the tokens that exist now, so a revoked token's name can be given again.
    use sha2::{Digest, Sha256};
    let app = TestApp::spawn().await;
    let id_of = |token: &str| hex::encode(Sha256::digest(token.as_bytes()))[..12].to_owned();
    let mut actors = Vec::new();
    for (round, cnpj) in ["11222333000181", "11444777000161"].into_iter().enumerate() {
        let token = app.named_token("caixa-loja-1", "support", None).await;
        let a = app
            .send(
                "POST",
                "/v1/customers",
                Some(token.as_str()),
                Some(&json!({"cnpj": cnpj, "trade_name": format!("Loja {round}")})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let found = app
            .send(
                "GET",
                &format!("/v1/events/search?type=CustomerRegistered&cnpj={cnpj}"),
                Some(app.admin.as_str()),
                None,
            )
            .await;
        let actor = found.json["items"][0]["actor"].clone();
        assert_eq!(
            actor["name"],
            json!(format!("caixa-loja-1 #{}", id_of(&token))),
            "{}",
            found.text
        );
        actors.push(actor);
        let (mut secrets, _) =
            license_ledger::config::SecretsFile::load_or_create(app.dir.path()).unwrap();
        secrets.remove_token("caixa-loja-1").unwrap();
    }
    assert_ne!(actors[0], actors[1], "two tokens, one name: two actors");
    // A name must leave room for the id in the actor (128 bytes in all).
    let long = "x".repeat(license_ledger::config::MAX_TOKEN_NAME_LEN + 1);
    let a = create_support_token(&app, &long).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json["field"], "name", "{}", a.text);
}

/// Opens `GET /v1/events/stream` with `token` and returns the response (body unread).
async fn open_stream(app: &TestApp, token: &str) -> reqwest::Response {
    Client::new()
        .get(format!("{}/v1/events/stream", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_its_revoked_token() {
    // Finding 8 of issue 15: streams kept delivering after the token was revoked.
    let app = TestApp::spawn().await;
    app.seed().await;
    let auditor = app.named_token("auditor-stream", "auditor", None).await;
    let mut res = open_stream(&app, &auditor).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut text = String::new();
    // The stored records arrive; then the token is revoked as `token revoke` does.
    while !text.contains("event: record") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("records within 10 s")
            .unwrap()
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (mut secrets, _) =
        license_ledger::config::SecretsFile::load_or_create(app.dir.path()).unwrap();
    secrets.remove_token("auditor-stream").unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream still runs 10 s after the revocation"
    );
    assert!(
        text.ends_with(": revoked\n\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_token_and_a_closed_one_frees_its_place() {
    // Finding 8 of issue 15: 400 concurrent streams were accepted from one token.
    use license_ledger::http::sse::STREAMS_PER_TOKEN_MAX;
    let app = TestApp::spawn().await;
    let auditor = app.token("auditor", None).await;
    let other = app.token("auditor", None).await;
    let mut open = Vec::new();
    for i in 0..STREAMS_PER_TOKEN_MAX {
        let res = open_stream(&app, &auditor).await;
        assert_eq!(res.status(), StatusCode::OK, "stream {i}");
        open.push(res);
    }
    let over = open_stream(&app, &auditor).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.headers()["retry-after"], "60");
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        open_stream(&app, &other).await.status(),
        StatusCode::OK,
        "another token has its own share"
    );
    // The server learns of the close at its next write at the latest (a keep-alive, 15 s).
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = open_stream(&app, &auditor).await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream's place was not freed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 4 of issue 15: idempotency matched only the `command_id`: a reused id with another
/// body or by another caller answered 200 `was_retry` and did nothing; an offline activation
/// retried returned a newly computed counter-key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_reused_command_id_answers_409_command_id_reused_and_a_retry_the_first_answer()
{
    let app = TestApp::spawn().await;
    let license = app.seed().await;
    let support = app.token("support", None).await;
    let other = app.token("support", None).await;
    let x = uuid::Uuid::now_v7();
    let block = format!("/v1/licenses/{license}/block");
    let first = app
        .post(&block, &support, json!({"note": "atraso", "command_id": x}))
        .await;
    assert_eq!(first["was_retry"], json!(false), "{first}");
    let head = app.head().await;
    // A true retry, even written differently (key order, spacing): the first answer.
    let raw = format!("{{ \"command_id\" : \"{x}\", \"note\":\"atraso\" }}");
    let res = app
        .client
        .post(format!("{}{block}", app.base))
        .bearer_auth(&support)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["was_retry"], json!(true), "{again}");
    assert_eq!(again["position"], first["position"], "{again}");
    // Another body, another caller, another route or aggregate: 409, nothing recorded.
    let reused: [(&str, String, &str, Value); 5] = [
        (
            "another body",
            block.clone(),
            support.as_str(),
            json!({"note": "outro", "command_id": x}),
        ),
        (
            "another caller",
            block.clone(),
            other.as_str(),
            json!({"note": "atraso", "command_id": x}),
        ),
        (
            "another route",
            format!("/v1/licenses/{license}/deactivate"),
            support.as_str(),
            json!({"note": "atraso", "command_id": x}),
        ),
        (
            "another aggregate",
            format!("/v1/customers/{CNPJ}/block"),
            support.as_str(),
            json!({"note": "atraso", "command_id": x}),
        ),
        (
            "a creating command",
            "/v1/licenses".into(),
            support.as_str(),
            json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31", "command_id": x}),
        ),
    ];
    for (what, path, token, body) in &reused {
        let a = app.send("POST", path, Some(token), Some(body)).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{what}: {}", a.text);
        assert_eq!(a.json["error"], "command_id_reused", "{what}: {}", a.text);
        assert_eq!(a.json["field"], "command_id", "{what}: {}", a.text);
        assert!(
            a.json["message"].as_str().unwrap().contains(&x.to_string()),
            "{what}: {}",
            a.text
        );
    }
    assert_eq!(
        app.head().await,
        head,
        "a reused command id recorded nothing"
    );

    // Offline activations: a retry answers the stored counter-key; the id reused for
    // another serial issues none.
    let y = uuid::Uuid::now_v7();
    let serial = common::fresh_serial();
    let other_serial = common::fresh_serial();
    let body = json!({"serial": serial, "product": "easycash", "command_id": y});
    let issued = app
        .post("/v1/offline-activations", &support, body.clone())
        .await;
    let head = app.head().await;
    let retried = app.post("/v1/offline-activations", &support, body).await;
    assert_eq!(retried["was_retry"], json!(true), "{retried}");
    assert_eq!(retried["counter_key"], issued["counter_key"], "{retried}");
    assert_eq!(retried["valid_until"], issued["valid_until"], "{retried}");
    assert_eq!(retried["position"], issued["position"], "{retried}");
    for (what, body) in [
        (
            "another serial",
            json!({"serial": other_serial, "product": "easycash", "command_id": y}),
        ),
        (
            "another caixa",
            json!({"serial": serial, "product": "easycash", "caixa": "02", "command_id": y}),
        ),
    ] {
        let a = app
            .send(
                "POST",
                "/v1/offline-activations",
                Some(&support),
                Some(&body),
            )
            .await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{what}: {}", a.text);
        assert_eq!(a.json["error"], "command_id_reused", "{what}: {}", a.text);
        assert!(a.json.get("counter_key").is_none(), "{what}: {}", a.text);
    }
    assert_eq!(app.head().await, head, "no second counter-key was recorded");
    // The other serial was not used: a new command id activates it.
    app.post(
        "/v1/offline-activations",
        &support,
        json!({"serial": other_serial, "product": "easycash"}),
    )
    .await;
}

/// Findings 3 and 9 of issue 15 over HTTP: an offline activation for a terminal the center
/// has seen names that terminal and answers a code under its own key; a retry answers the same
/// code; auditors reading `/v1/events` see that a code was issued (its `code_mac`), never the
/// code (the export writes the same record JSON: `tests/domain.rs`,
/// `finding_9_the_log_keeps_a_mac_of_an_issued_counter_key_never_the_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_auditors_see_that_a_counter_key_or_emergency_release_was_issued_never_the_codes()
{
    let app = TestApp::spawn().await;
    let cnpj = common::fresh_cnpj();
    app.customer(&cnpj, "Mercado Contra-Chave").await;
    let license = app.license(&cnpj, "easycash", "2099-12-31", None).await;
    let terminal = app.token("terminal", Some(&cnpj)).await;
    let hardware_id = format!("50026B77{:08X}", common::next());
    let checked = app
        .post(
            "/v1/checkin",
            &terminal,
            json!({"cnpj": cnpj, "product": "easycash", "hardware_id": hardware_id,
                   "hardware_key": common::fresh_hardware_key()}),
        )
        .await;
    assert!(checked.to_string().contains("VALID"), "{checked}");
    let support = app.token("support", None).await;
    let x = uuid::Uuid::now_v7();
    let body = json!({"serial": "50026B77605FA3F8", "product": "easycash", "cnpj": cnpj,
                      "license_id": license, "command_id": x});
    let issued = app
        .post("/v1/offline-activations", &support, body.clone())
        .await;
    assert_eq!(issued["terminal"], json!(hardware_id), "{issued}");
    let code = issued["counter_key"].as_str().unwrap().to_owned();
    let again = app.post("/v1/offline-activations", &support, body).await;
    assert_eq!(again["was_retry"], json!(true), "{again}");
    assert_eq!(again["counter_key"], json!(code));
    assert_eq!(again["valid_until"], issued["valid_until"]);

    // An emergency release too (finding 9): its codes are answered, not kept.
    let emergency = app
        .post(
            "/v1/emergency-releases",
            &app.admin,
            json!({"product": "easycash", "hardware_id": common::fresh_hardware_id(),
                   "hardware_key": common::fresh_hardware_key(), "licensed_to": "QUALIDADE"}),
        )
        .await;
    let emergency_codes = [
        emergency["activation_code"].as_str().unwrap().to_owned(),
        emergency["counter_key"].as_str().unwrap().replace(' ', ""),
    ];

    let auditor = app.token("auditor", None).await;
    let (status, text) = {
        let res = app
            .client
            .get(format!("{}/v1/events?from=1&limit=1000", app.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        (res.status(), res.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "{text}");
    let plain = code.replace(' ', "");
    for form in [code.clone(), plain.clone(), plain.to_lowercase()] {
        assert!(
            !text.contains(&form),
            "the feed shows the counter-key {form}"
        );
    }
    for code in &emergency_codes {
        assert_eq!(code.len(), 16, "{emergency}");
        for form in [code.clone(), code.to_lowercase()] {
            assert!(
                !text.contains(&form),
                "the feed shows the emergency code {form}"
            );
        }
    }
    let feed: Value = serde_json::from_str(&text).unwrap();
    let item = feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["event_type"] == json!("OfflineActivationIssued"))
        .unwrap_or_else(|| panic!("no offline activation in {text}"))
        .clone();
    assert_eq!(item["schema_version"], json!(2), "{item}");
    assert_eq!(item["data"]["counter_key"], Value::Null, "{item}");
    assert_eq!(item["data"]["terminal"], json!(hardware_id), "{item}");
    assert_eq!(
        item["data"]["code_mac"].as_str().map(str::len),
        Some(64),
        "{item}"
    );
}

/// Finding 3 of issue 15 over HTTP: a bound terminal fetches its own offline key
/// (`POST /v1/offline-key`) and verifies the counter-keys support issues for it with that key
/// alone; another terminal of the same customer gets another key, which does not verify them;
/// a terminal not bound with that hardware key gets 404 and no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_terminal_fetches_its_own_offline_key_and_it_verifies_only_its_codes() {
    use ledger_events::{offline, CounterKey, Product, Serial};
    let app = TestApp::spawn().await;
    let cnpj = common::fresh_cnpj();
    app.customer(&cnpj, "Mercado Chave Própria").await;
    let terminal = app.token("terminal", Some(&cnpj)).await;
    let mut fetched = Vec::new();
    let mut licenses = Vec::new();
    for _ in 0..2 {
        let license = app.license(&cnpj, "easycash", "2099-12-31", None).await;
        let hardware_id = format!("50026B77{:08X}", common::next());
        let hardware_key = common::fresh_hardware_key();
        let body = json!({"cnpj": cnpj, "product": "easycash", "hardware_id": hardware_id,
                          "hardware_key": hardware_key});
        let checked = app.post("/v1/checkin", &terminal, body.clone()).await;
        assert!(checked.to_string().contains("VALID"), "{checked}");
        let key = app.post("/v1/offline-key", &terminal, body).await;
        assert_eq!(
            key["algorithm"],
            json!("license-ledger/offline/terminal/v1")
        );
        assert_eq!(key["hardware_id"], json!(hardware_id));
        let key = offline::TerminalKey::parse_hex(key["terminal_key"].as_str().unwrap()).unwrap();
        fetched.push((hardware_id, hardware_key, key));
        licenses.push(license);
    }
    assert_ne!(fetched[0].2, fetched[1].2);
    let support = app.token("support", None).await;
    let issued = app
        .post(
            "/v1/offline-activations",
            &support,
            json!({"serial": "50026B77605FA3F8", "product": "easycash", "cnpj": cnpj,
                   "license_id": licenses[0]}),
        )
        .await;
    assert_eq!(issued["terminal"], json!(fetched[0].0), "{issued}");
    let code = CounterKey::parse_grouped(issued["counter_key"].as_str().unwrap()).unwrap();
    let today: chrono::NaiveDate = issued["valid_until"].as_str().unwrap().parse().unwrap();
    let serial = Serial::parse("50026B77605FA3F8").unwrap();
    assert!(offline::verify_terminal_counter_key(
        &fetched[0].2,
        &serial,
        Product::EasyCash,
        &code,
        today
    )
    .is_ok());
    assert!(
        offline::verify_terminal_counter_key(
            &fetched[1].2,
            &serial,
            Product::EasyCash,
            &code,
            today
        )
        .is_err(),
        "the other terminal's key must not verify this terminal's code"
    );
    // Not bound with that key, or never seen: no key.
    for (what, hardware_id, hardware_key) in [
        (
            "another hardware key",
            fetched[0].0.clone(),
            common::fresh_hardware_key(),
        ),
        (
            "a terminal never seen",
            common::fresh_hardware_id(),
            common::fresh_hardware_key(),
        ),
    ] {
        let (status, body) = app
            .call(
                "POST",
                "/v1/offline-key",
                Some(&terminal),
                Some(
                    json!({"cnpj": cnpj, "product": "easycash", "hardware_id": hardware_id,
                            "hardware_key": hardware_key}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
        assert!(body.get("terminal_key").is_none(), "{what}: {body}");
    }
}

/// Finding 5 of issue 15 (unbounded writes): a server over a fresh data directory on a
/// manual clock, restarted with the `[quotas]` of `toml` read from a configuration file
/// (so the file's keys are what the server applies).
async fn app_with_quotas(toml: &str) -> (TestApp, license_ledger::clock::ManualClock) {
    use chrono::TimeZone;
    let clock = license_ledger::clock::ManualClock::new(
        chrono::Utc.with_ymd_and_hms(2031, 5, 6, 10, 0, 5).unwrap(),
    );
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let path = app.dir.path().join("ledger.toml");
    std::fs::write(&path, toml).unwrap();
    let file = license_ledger::config::FileConfig::load(&path).unwrap();
    let quotas = file.quotas().unwrap();
    app.restart_with(|s| s.quotas = quotas).await;
    // Ready: the read model caught up.
    for _ in 0..2000 {
        if app.call("GET", "/healthz", None, None).await.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (app, clock)
}

/// The published answer key.
async fn answer_key(app: &TestApp) -> VerifyingKey {
    let keys = app.call("GET", "/v1/keys", None, None).await.1;
    let mut pk = [0u8; 32];
    hex::decode_to_slice(keys["public_key"].as_str().unwrap(), &mut pk).unwrap();
    VerifyingKey::from_bytes(&pk).unwrap()
}

/// A check-in of terminal `hw` from `ip` with a nonce; a 200 answer must verify for its
/// subject and nonce. Returns the raw answer.
async fn quota_check_in(
    app: &TestApp,
    key: &VerifyingKey,
    token: &str,
    hw: &str,
    ip: &str,
) -> common::Answer {
    let nonce = format!("n{}", uuid::Uuid::now_v7().simple());
    let body = json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": hw,
        "hardware_key": HW_KEY, "ip": ip, "program_version": "2.0.12.1", "nonce": nonce});
    let a = app
        .send("POST", "/v1/checkin", Some(token), Some(&body))
        .await;
    if a.status == StatusCode::OK {
        let signed: SignedAnswer = serde_json::from_value(a.json.clone()).unwrap();
        let subject = ledger_events::answer::Subject {
            cnpj: ledger_events::Cnpj::parse(CNPJ).unwrap(),
            product: ledger_events::Product::EasyCash,
            hardware_id: ledger_events::HardwareId::parse(hw).unwrap(),
        };
        signed
            .verify_with_nonce(key, &subject, &nonce)
            .unwrap_or_else(|e| panic!("a valid signed answer: {e}: {}", a.text));
    }
    a
}

fn retry_after(a: &common::Answer) -> u64 {
    a.retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", a.text))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_one_terminal_token_flipping_hardware_ids_and_ips_writes_no_more_than_its_quota()
{
    // Finding 5 of issue 15: one terminal token added 1,501 records in 1.1 s, every new
    // hardware id or IP recorded.
    let (app, clock) = app_with_quotas(
        "[quotas]\nterminal_records_per_minute = 5\nterminal_changes_per_hour = 3\n\
         unknown_terminals_per_day = 1000\n",
    )
    .await;
    app.seed().await;
    let terminal = app.token("terminal", Some(CNPJ)).await;
    let key = answer_key(&app).await;
    let hw = |i: u32| format!("50026B7782{i:06X}");

    // A burst of new hardware ids: the first binds the license, the others are refused
    // (no license left) and recorded as first sightings, up to 5 appending check-ins a
    // minute; every one is answered 200, signed.
    let before = app.head().await;
    for i in 0..60 {
        let a = quota_check_in(&app, &key, &terminal, &hw(i), "10.0.0.1").await;
        assert_eq!(a.status, StatusCode::OK, "check-in {i}: {}", a.text);
    }
    let added = app.head().await - before;
    // The bind's check-in appends the bind and its record; the 4 others one record each.
    assert_eq!(added, 6, "records added by 60 check-ins under a quota of 5");

    // One terminal flipping its IP (A, B, A, B, ...): 3 change records an hour, however
    // many check-ins, in fresh minutes (the token's quota does not hide it).
    clock.advance(chrono::Duration::seconds(60));
    let bound = hw(0);
    let before = app.head().await;
    for i in 0..40 {
        if i % 4 == 0 {
            clock.advance(chrono::Duration::seconds(60));
        }
        let ip = if i % 2 == 0 { "10.0.0.2" } else { "10.0.0.1" };
        let a = quota_check_in(&app, &key, &terminal, &bound, ip).await;
        assert_eq!(a.status, StatusCode::OK, "flip {i}: {}", a.text);
        assert_eq!(a.json["outcome"], "VALID", "{}", a.text);
    }
    assert_eq!(
        app.head().await - before,
        3,
        "IP changes recorded this hour"
    );

    // Past the token's quota a bind is a write that is refused, 429 with Retry-After, and
    // nothing is written; after the wait it binds.
    clock.advance(chrono::Duration::seconds(60));
    for i in 100..105 {
        let a = quota_check_in(&app, &key, &terminal, &hw(i), "10.0.0.1").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    app.admin(
        "POST",
        "/v1/licenses",
        json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31"}),
    )
    .await;
    let before = app.head().await;
    let refused = quota_check_in(&app, &key, &terminal, &hw(200), "10.0.0.1").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text
    );
    assert_eq!(refused.json["error"], "rate_limited", "{}", refused.text);
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(app.head().await, before, "a refused bind writes nothing");
    clock.advance(chrono::Duration::seconds(wait as i64));
    let bound = quota_check_in(&app, &key, &terminal, &hw(200), "10.0.0.1").await;
    assert_eq!(bound.status, StatusCode::OK, "{}", bound.text);
    assert_eq!(bound.json["outcome"], "VALID", "{}", bound.text);

    // Logged in /metrics.
    let metrics = app.send("GET", "/metrics", None, None).await.text;
    let value = |line: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{line} in\n{metrics}"))
    };
    assert_eq!(value("ledger_quota_refused_total{quota=\"binds\"}"), 1);
    assert!(value("ledger_quota_records_skipped_total{quota=\"token\"}") >= 55);
    // Half the flips after the third change differ from the last recorded address.
    assert!(value("ledger_quota_records_skipped_total{quota=\"changes\"}") >= 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_unknown_terminals_past_the_customers_daily_cap_answer_429() {
    let (app, clock) = app_with_quotas("[quotas]\nunknown_terminals_per_day = 3\n").await;
    app.seed().await;
    let terminal = app.token("terminal", Some(CNPJ)).await;
    let key = answer_key(&app).await;
    let hw = |i: u32| format!("50026B7782{i:06X}");
    for i in 0..3 {
        let a = quota_check_in(&app, &key, &terminal, &hw(i), "10.0.0.1").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let before = app.head().await;
    let refused = quota_check_in(&app, &key, &terminal, &hw(3), "10.0.0.1").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text
    );
    assert_eq!(refused.json["error"], "rate_limited");
    assert!(
        refused.json["message"]
            .as_str()
            .unwrap()
            .contains("unknown_terminals_per_day"),
        "{}",
        refused.text
    );
    // 10:00:05 UTC is 07:00:05 in Brasília: until the next local day, 17 hours later.
    assert_eq!(retry_after(&refused), 17 * 3600 - 5);
    assert_eq!(app.head().await, before, "nothing written");
    // Terminals already seen keep checking in.
    let again = quota_check_in(&app, &key, &terminal, &hw(1), "10.0.0.9").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    // The next day the new terminal is taken.
    clock.advance(chrono::Duration::hours(17));
    let next_day = quota_check_in(&app, &key, &terminal, &hw(3), "10.0.0.1").await;
    assert_eq!(next_day.status, StatusCode::OK, "{}", next_day.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_a_relay_token_forwarding_past_its_rate_gets_429_and_nothing_is_lost() {
    // Finding 5 of issue 15: one relay token added 60,000 records in 36 s.
    use ledger_events::{
        Actor, CheckInOutcome, Event, HardwareId, HardwareKey, Product, TerminalCheckedIn,
    };
    let (app, clock) = app_with_quotas("[quotas]\nrelay_events_per_minute = 3\n").await;
    app.seed().await;
    let relay = app.token("relay", Some(CNPJ)).await;
    let hw = HardwareId::parse(HW_ID).unwrap();
    let event = |n: u8| {
        let e: Event = TerminalCheckedIn {
            cnpj: ledger_events::Cnpj::parse(CNPJ).unwrap(),
            product: Product::EasyCash,
            hardware_id: hw,
            hardware_key: HardwareKey::parse(HW_KEY).unwrap(),
            license_id: None,
            ip: Some(format!("10.0.0.{n}").parse().unwrap()),
            program_version: None,
            caixa: None,
            equipamento: None,
            outcome: CheckInOutcome::Valid {
                expires_on: "2099-12-31".parse().unwrap(),
            },
        }
        .into();
        json!({
            "event_id": uuid::Uuid::now_v7(),
            "stream_id": e.stream_id().to_string(),
            "expected_version": null,
            "event_type": e.event_type(),
            "data": e.data_json(),
            "actor": Actor::terminal(&hw),
            "correlation_id": uuid::Uuid::now_v7(),
            "recorded_at": "2031-05-06T10:00:00Z",
        })
    };
    let forward = |events: Vec<Value>| {
        let app = &app;
        let relay = relay.clone();
        async move {
            app.send(
                "POST",
                "/v1/relay/events",
                Some(&relay),
                Some(&json!({"cnpj": CNPJ, "events": events})),
            )
            .await
        }
    };
    let first: Vec<Value> = (1..=3).map(event).collect();
    let a = forward(first).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    let later: Vec<Value> = (4..=6).map(event).collect();
    let before = app.head().await;
    let refused = forward(later.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text
    );
    assert_eq!(refused.json["error"], "rate_limited");
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        app.head().await,
        before,
        "nothing of the refused request is decided"
    );

    // After the wait the same events are forwarded again: each stored once.
    clock.advance(chrono::Duration::seconds(wait as i64));
    let a = forward(later.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for r in a.json["results"].as_array().unwrap() {
        assert_eq!(r["resolution"]["status"], "accepted", "{}", a.text);
    }
    assert_eq!(app.head().await, before + 3);
    clock.advance(chrono::Duration::seconds(60));
    let again = forward(later).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(app.head().await, before + 3, "a retry stores nothing more");
    let metrics = app.send("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("ledger_quota_refused_total{quota=\"relay_events\"} 1"),
        "{metrics}"
    );
    // Documented where it can occur.
    let doc = app.send("GET", "/openapi.json", None, None).await.json;
    for (path, quota) in [
        ("/v1/relay/events", "relay_events_per_minute"),
        ("/v1/checkin", "unknown_terminals_per_day"),
    ] {
        let r = &doc["paths"][path]["post"]["responses"]["429"];
        assert!(
            r["description"]
                .as_str()
                .unwrap_or_default()
                .contains(quota),
            "{path}: {r}"
        );
        assert!(r["headers"]["Retry-After"].is_object(), "{path}: {r}");
    }
}

#[test]
fn finding_5_quotas_are_read_from_the_config_file_and_a_zero_is_refused() {
    use license_ledger::config::FileConfig;
    use license_ledger::http::quotas::QuotaSettings;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n").unwrap();
    assert_eq!(
        FileConfig::load(&path).unwrap().quotas().unwrap(),
        QuotaSettings::default()
    );
    std::fs::write(&path, "[quotas]\nrelay_events_per_minute = 7\n").unwrap();
    let q = FileConfig::load(&path).unwrap().quotas().unwrap();
    assert_eq!(q.relay_events_per_minute, 7);
    assert_eq!(
        q.terminal_records_per_minute,
        QuotaSettings::default().terminal_records_per_minute
    );
    std::fs::write(&path, "[quotas]\nterminal_changes_per_hour = 0\n").unwrap();
    let e = FileConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("quotas.terminal_changes_per_hour"), "{e}");
    std::fs::write(&path, "[quotas]\nrecords = 3\n").unwrap();
    assert!(FileConfig::load(&path).is_err(), "unknown keys are refused");
}
