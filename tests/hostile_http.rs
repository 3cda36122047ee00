//! Hostile requests against the real server in-process (port 0): oversized and deeply nested
//! bodies, invalid UTF-8, wrong content types, header floods, slow clients, path traversal on
//! the console's assets, and malformed CNPJs and hardware ids/keys in a check-in. Each case
//! asserts a clear 4xx (in the one JSON error shape where the request reached a handler) and
//! that the server still answers `/healthz` afterwards. Raw TCP is used where reqwest would
//! normalise or refuse the request.

mod common;

use std::time::{Duration, Instant};

use common::{fresh_cnpj, fresh_hardware_id, fresh_hardware_key, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's limit on request bodies (`http::extract::BODY_BYTES_MAX`).
const BODY_BYTES_MAX: usize = license_ledger::http::extract::BODY_BYTES_MAX;

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// The server still serves.
async fn assert_alive(app: &TestApp, after: &str) {
    let (status, body) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "/healthz after {after}: {body}");
}

/// Asserts the one error shape: `{"error": code, "message": text, "field"?}`.
fn assert_error_shape(body: &Value, code: &str, context: &str) {
    assert_eq!(body["error"], code, "{context}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{context}: no message in {body}"
    );
}

/// A POST of raw bytes with an optional content type.
async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(&app.admin)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.expect("send");
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// Writes `request` on a fresh connection and reads until the server closes it (or 15 s).
/// Returns the status code of the first answer (0 when none) and the whole text.
async fn raw(app: &TestApp, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr(app)).await.expect("connect");
    // The server may answer and close before it has read everything: a failed write is
    // part of the test, the answer (if any) is what counts.
    let _ = s.write_all(request).await;
    read_answer(&mut s, Duration::from_secs(15)).await
}

async fn read_answer(s: &mut TcpStream, limit: Duration) -> (u16, String) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn body_json(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))
}

fn checkin_body() -> Value {
    json!({"cnpj": fresh_cnpj(), "product": "easycash", "hardware_id": fresh_hardware_id(),
           "hardware_key": fresh_hardware_key(), "nonce": "n-1"})
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_refused_with_413_in_the_error_shape() {
    let app = TestApp::spawn().await;
    // Declared by Content-Length.
    let big = format!("{{\"nonce\":\"{}\"}}", "a".repeat(BODY_BYTES_MAX));
    let (status, body) = post_raw(
        &app,
        "/v1/checkin",
        Some("application/json"),
        big.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error_shape(&body, "body_too_large", "declared length");
    assert_alive(&app, "a declared oversized body").await;

    // Chunked, no declared length: counted while read.
    let chunk = "a".repeat(16 * 1024);
    let mut req = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.admin
    );
    for _ in 0..6 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let (status, text) = raw(&app, req.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert_error_shape(&body_json(&text), "body_too_large", "chunked");
    assert_alive(&app, "a chunked oversized body").await;

    // Exactly at the limit is not refused for its size.
    let mut at_limit = b"{\"nonce\":\"".to_vec();
    at_limit.resize(BODY_BYTES_MAX - 2, b'a');
    at_limit.extend_from_slice(b"\"}");
    assert_eq!(at_limit.len(), BODY_BYTES_MAX);
    let (status, body) = post_raw(&app, "/v1/checkin", Some("application/json"), at_limit).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error_shape(&body, "invalid_field", "at the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_a_400_not_a_stack_overflow() {
    let app = TestApp::spawn().await;
    // Under the size limit, so the parser sees it: 60k levels of arrays, then of objects.
    let arrays = "[".repeat(60_000).into_bytes();
    let objects = "{\"a\":".repeat(12_000).into_bytes();
    let in_a_field = format!("{{\"cnpj\":{}}}", "[".repeat(60_000)).into_bytes();
    for (name, body) in [
        ("arrays", arrays),
        ("objects", objects),
        ("in a field", in_a_field),
    ] {
        for path in ["/v1/checkin", "/v1/customers", "/v1/tokens"] {
            let (status, json) = post_raw(&app, path, Some("application/json"), body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name} to {path}: {json}");
            // Refused where the parser stops: the nesting (malformed) or the first value
            // of the wrong type (invalid_field), never after recursing 60k levels.
            assert!(
                json["error"] == "malformed" || json["error"] == "invalid_field",
                "{name} to {path}: {json}"
            );
        }
        assert_alive(&app, name).await;
    }
    // 100k levels is also over the size limit: refused for that first.
    let (status, json) = post_raw(
        &app,
        "/v1/checkin",
        Some("application/json"),
        "[".repeat(100_000).into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert_alive(&app, "100k brackets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_bodies_are_a_400() {
    let app = TestApp::spawn().await;
    let cases: [&[u8]; 4] = [
        b"{\"cnpj\": \"\xff\xfe\"}",
        b"\xc3\x28",
        b"{\"trade_name\": \"Padaria \xed\xa0\x80\"}",
        b"\x00\x00\x00\x00",
    ];
    for body in cases {
        for path in ["/v1/checkin", "/v1/customers"] {
            let (status, json) =
                post_raw(&app, path, Some("application/json"), body.to_vec()).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{body:?} to {path}: {json}"
            );
            assert!(
                json["error"] == "malformed" || json["error"] == "invalid_field",
                "{json}"
            );
        }
        assert_alive(&app, "invalid UTF-8").await;
    }
}

/// The README documents JSON bodies and no content-type rule: the body is parsed as JSON
/// whatever the header says (tokens travel in `Authorization`, so a cross-site "simple"
/// request cannot carry one). What is not JSON is a 400 whatever the header claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_content_type_is_not_trusted_the_body_must_be_json_whatever_it_says() {
    let app = TestApp::spawn().await;
    let body = json!({"cnpj": fresh_cnpj(), "trade_name": "Padaria", "since": "2024-01-01"});
    let bytes = serde_json::to_vec(&body).expect("json");
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut b = body.clone();
        b["cnpj"] = json!(fresh_cnpj());
        let (status, json) = post_raw(
            &app,
            "/v1/customers",
            ct,
            serde_json::to_vec(&b).expect("json"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ct:?}: {json}");
    }
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let (status, json) = post_raw(&app, "/v1/customers", ct, b"cnpj=1&x=2".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ct:?}: {json}");
        assert_error_shape(&json, "malformed", "form body");
    }
    // A multipart body is not JSON either.
    let (status, json) = post_raw(
        &app,
        "/v1/customers",
        Some("multipart/form-data; boundary=x"),
        b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    drop(bytes);
    assert_alive(&app, "content types").await;
}

// ---------------------------------------------------------------------------------------------
// Headers and slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_headers_or_one_huge_header_is_a_4xx_and_the_server_lives() {
    let app = TestApp::spawn().await;
    let mut flood = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..1000 {
        flood.push_str(&format!("X-Flood-{i}: {i}\r\n"));
    }
    flood.push_str("Connection: close\r\n\r\n");
    let (status, text) = raw(&app, flood.as_bytes()).await;
    assert!(
        status == 431 || status == 400,
        "1000 headers: {status} {}",
        text.lines().next().unwrap_or("")
    );
    assert_alive(&app, "1000 headers").await;

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(1024 * 1024)
    );
    let (status, text) = raw(&app, huge.as_bytes()).await;
    assert!(
        status == 431 || status == 400,
        "1 MiB header: {status} {}",
        text.lines().next().unwrap_or("")
    );
    assert_alive(&app, "a 1 MiB header").await;

    // A huge bearer token reaches no handler either.
    let token = format!(
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        "t".repeat(200 * 1024)
    );
    let (status, _) = raw(&app, token.as_bytes()).await;
    assert!(status == 431 || status == 400, "huge token: {status}");
    assert_alive(&app, "a huge token").await;
}

/// `http::CLIENT_REQUEST_TIMEOUT` plus slack for a loaded 2-core machine.
fn close_deadline() -> Duration {
    license_ledger::http::CLIENT_REQUEST_TIMEOUT + Duration::from_secs(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_slowly_is_cut_off_within_the_request_timeout() {
    let app = TestApp::spawn().await;
    let mut s = TcpStream::connect(addr(&app)).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // One header byte every 250 ms, never finishing the head.
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if s.write_all(b"X").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            // An answer (408) or EOF: the server gave up on us.
            let _ = n;
            break true;
        }
        if started.elapsed() > close_deadline() {
            break false;
        }
    };
    assert!(
        closed,
        "a slow head still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() <= close_deadline());
    assert_alive(&app, "a slow head").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_body_is_cut_off_within_the_body_timeout() {
    let app = TestApp::spawn().await;
    let mut s = TcpStream::connect(addr(&app)).await.expect("connect");
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"cnpj\":",
        app.admin
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let deadline = license_ledger::http::CLIENT_BODY_TIMEOUT + Duration::from_secs(4);
    let (status, text) = read_answer(&mut s, deadline).await;
    let waited = started.elapsed();
    assert!(
        waited < deadline,
        "connection with an unfinished body still open after {waited:?} ({status} {text})"
    );
    // The body read fails (408, naming the time-out) and the connection is closed: the read
    // above only returns early on EOF.
    assert_eq!(status, 408, "{text}");
    let json = body_json(&text);
    assert_error_shape(&json, "body_timeout", "unfinished body");
    assert!(
        waited >= license_ledger::http::CLIENT_BODY_TIMEOUT - Duration::from_millis(500),
        "cut off after only {waited:?}"
    );
    assert_alive(&app, "an unfinished body").await;

    // Many such clients at once do not stop others from being served.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr(&app)).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        idle.push(s);
    }
    assert_alive(&app, "50 idle bodies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_one_byte_at_a_time_is_cut_off_at_the_total_deadline() {
    // Finding 9 of issue 15: a byte every 8 s kept a body open for ever.
    use license_ledger::http::{CLIENT_BODY_DEADLINE, CLIENT_BODY_TIMEOUT};
    let app = TestApp::spawn().await;
    let mut s = TcpStream::connect(addr(&app)).await.expect("connect");
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.admin
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let every = CLIENT_BODY_TIMEOUT / 4;
    let limit = CLIENT_BODY_DEADLINE + Duration::from_secs(4);
    let mut buf = vec![0u8; 4096];
    let mut text = String::new();
    while started.elapsed() < limit {
        // One byte well inside the idle time-out, then look for an answer.
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        if text.contains("\r\n\r\n{") && text.ends_with('}') {
            break;
        }
    }
    let waited = started.elapsed();
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "after {waited:?}: {text:?}"
    );
    assert!(text.contains("body_timeout"), "{text}");
    assert!(
        waited >= CLIENT_BODY_DEADLINE - Duration::from_millis(500) && waited < limit,
        "cut off after {waited:?}"
    );
    assert_alive(&app, "a trickled body").await;
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_on_console_assets_is_a_404_in_the_error_shape() {
    let app = TestApp::spawn().await;
    for name in [
        "..%2f..%2fCargo.toml",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fCargo.toml",
        "%2e%2e",
        "..",
        "%2fetc%2fpasswd",
        "%2Fwork%2Fmain%2FCargo.toml",
        "..%5c..%5cCargo.toml",
        "app.js%00.png",
        "....%2f%2f....%2f%2fCargo.toml",
        "%252e%252e%252fCargo.toml",
        "secrets.toml",
        "..%2fsecrets.toml",
    ] {
        let req =
            format!("GET /console/assets/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(&app, req.as_bytes()).await;
        assert_eq!(status, 404, "{name}: {text}");
        assert_error_shape(&body_json(&text), "not_found", name);
        assert!(
            !text.contains("[workspace]") && !text.contains("root:"),
            "{name} leaked a file"
        );
    }
    // Raw `..` segments never reach a file either (the router sees them literally).
    for path in [
        "/console/assets/../../Cargo.toml",
        "/console/../Cargo.toml",
        "/../../../etc/passwd",
        "//etc/passwd",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(&app, req.as_bytes()).await;
        assert!((400..500).contains(&status), "{path}: {text}");
        assert!(
            !text.contains("[workspace]") && !text.contains("root:"),
            "{path} leaked a file"
        );
    }
    assert_alive(&app, "traversal").await;
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cnpjs_and_hardware_values_in_a_check_in_are_a_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let valid = fresh_cnpj();
    let mut wrong_digit = valid.clone();
    let last = wrong_digit
        .pop()
        .and_then(|c| c.to_digit(10))
        .expect("digit");
    wrong_digit.push(char::from_digit((last + 1) % 10, 10).expect("digit"));
    let cases: Vec<(&str, Value)> = vec![
        ("cnpj", json!(&valid[..13])),
        ("cnpj", json!(format!("{valid}0"))),
        ("cnpj", json!(wrong_digit)),
        ("cnpj", json!("00000000000000")),
        ("cnpj", json!("")),
        ("cnpj", json!("1122233300018X")),
        ("cnpj", json!(11222333000181u64)),
        ("cnpj", json!(null)),
        ("cnpj", json!("١١٢٢٢٣٣٣٠٠٠١٨١")),
        ("hardware_id", json!("50026B77825EEC0")),
        ("hardware_id", json!("50026B77825EEC011")),
        ("hardware_id", json!("50026B77825EEC0G")),
        ("hardware_id", json!("")),
        ("hardware_id", json!("x".repeat(10_000))),
        ("hardware_key", json!("88A7B56C2B3F326F91362A182483F60")),
        ("hardware_key", json!("88A7B56C2B3F326F91362A182483F6011")),
        ("hardware_key", json!("88A7B56C2B3F326F91362A182483F6ZZ")),
        ("hardware_key", json!("../../../../etc/passwd")),
        ("hardware_key", json!([1, 2, 3])),
        ("product", json!("nonexistent")),
    ];
    for (field, value) in cases {
        let mut body = checkin_body();
        body[field] = value.clone();
        let (status, json) = app
            .call("POST", "/v1/checkin", Some(&app.admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field} = {value}: {json}");
        assert_error_shape(&json, "invalid_field", field);
        assert_eq!(json["field"], field, "{field} = {value}: {json}");
    }
    // A missing field is named too.
    for field in ["cnpj", "hardware_id", "hardware_key"] {
        let mut body = checkin_body();
        body.as_object_mut().expect("object").remove(field);
        let (status, json) = app
            .call("POST", "/v1/checkin", Some(&app.admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "without {field}: {json}");
        assert_eq!(json["field"], field, "without {field}: {json}");
    }
    assert_alive(&app, "malformed check-ins").await;
}
