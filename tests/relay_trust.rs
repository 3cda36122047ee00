//! The relay mirrors only what the center's key vouches for (issue 15, "the relay trusts
//! mirrored records that are only hash-checked"): every record of the feed comes with the
//! center's signed head at its position, checked against the key the relay pinned at first
//! contact.
//!
//! - `CenterKey::verify_page` on records from a real log, signed here;
//! - end to end: a real center's feed captured, then served by a fake center (a network
//!   attacker, or a center impostor) as is, with a signature moved to another record, and
//!   under another key id; the relay process mirrors only the genuine page.

#[path = "support/process.rs"]
mod process;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_events::answer::{sign_head, SigningKey};
use ledger_events::Record;
use license_ledger::relay::trust::{CenterKey, CENTER_KEY_FILE};
use license_ledger::store::conformance::file_log;
use parking_lot::Mutex;
use process::Process;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CNPJ: &str = "11222333000181";

async fn records(count: u32) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    file_log(dir.path(), count, &["a"]).await
}

#[tokio::test]
async fn a_page_verifies_only_with_each_records_signed_head_under_the_pinned_key() {
    let center = SigningKey::from_bytes(&[7; 32]);
    let impostor = SigningKey::from_bytes(&[8; 32]);
    let pinned = CenterKey::from_hex(&hex::encode(center.verifying_key().as_bytes())).unwrap();
    let all = records(6).await;
    // One customer's part: positions 2, 4, 6 (gaps between them).
    let page: Vec<Record> = all.into_iter().skip(1).step_by(2).collect();
    let signed =
        |key: &SigningKey, r: &Record| sign_head(key, r.envelope.position, &r.envelope.hash);
    let good: Vec<String> = page.iter().map(|r| signed(&center, r)).collect();
    let id = pinned.key_id().to_owned();
    pinned.verify_page(&page, &good, &id).unwrap();

    // Signed by another key (claiming the pinned key's id).
    let forged: Vec<String> = page.iter().map(|r| signed(&impostor, r)).collect();
    let err = pinned.verify_page(&page, &forged, &id).unwrap_err();
    assert!(err.contains("position 2"), "{err}");
    // One signature moved to another record.
    let mut moved = good.clone();
    moved[2] = good[1].clone();
    let err = pinned.verify_page(&page, &moved, &id).unwrap_err();
    assert!(err.contains("position 6"), "{err}");
    // A record whose hash is not the one signed (its contents changed and re-hashed).
    let mut altered = page.clone();
    altered[1].envelope.hash = altered[0].envelope.hash;
    let err = pinned.verify_page(&altered, &good, &id).unwrap_err();
    assert!(err.contains("position 4"), "{err}");
    // A record without a signature.
    let err = pinned.verify_page(&page, &good[..2], &id).unwrap_err();
    assert!(err.contains("3 records came with 2"), "{err}");
    // Another key id than the pinned one.
    let err = pinned
        .verify_page(&page, &good, "0123456789abcdef")
        .unwrap_err();
    assert!(err.contains(CENTER_KEY_FILE), "{err}");
}

/// A fake center on loopback: `/v1/keys` and `/v1/relay/feed` answer what the test set,
/// everything else 503 (the relay retries).
struct FakeCenter {
    url: String,
    keys: Arc<Mutex<Value>>,
    feed: Arc<Mutex<Value>>,
}

impl FakeCenter {
    async fn start(keys: Value, feed: Value) -> FakeCenter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (keys, feed) = (Arc::new(Mutex::new(keys)), Arc::new(Mutex::new(feed)));
        let (k, f) = (keys.clone(), feed.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (k, f) = (k.clone(), f.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (status, body) = if path.starts_with("/v1/keys") {
                        ("200 OK", k.lock().to_string())
                    } else if path.starts_with("/v1/relay/feed") {
                        ("200 OK", f.lock().to_string())
                    } else {
                        (
                            "503 Service Unavailable",
                            json!({"error": "unavailable", "message": "fake"}).to_string(),
                        )
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        FakeCenter { url, keys, feed }
    }
}

fn relay_args<'a>(data: &'a str, upstream: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--data-dir",
        data,
        "relay",
        "--upstream",
        upstream,
        "--allow-insecure-upstream",
        "--cnpj",
        CNPJ,
        "--token",
        "llt_fake",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

fn start_relay(dir: &Path, name: &str, upstream: &str) -> Process {
    start_relay_with(dir, name, upstream, &[])
}

fn start_relay_with(dir: &Path, name: &str, upstream: &str, extra: &[&str]) -> Process {
    let data = dir.join(name);
    Process::start(
        &relay_args(data.to_str().unwrap(), upstream, extra),
        dir,
        name,
    )
}

/// The relay's status, polled until `ok` or 30 s; `token` is the relay's admin token (the
/// one printed at its first start).
async fn wait_status(
    http: &Client,
    relay: &Process,
    token: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = process::call(http, &relay.url, token, "GET", "/v1/relay/status", None).await;
        if let Some((StatusCode::OK, s)) = &answer {
            if ok(s) {
                return s.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("relay never {what}: {answer:?}\nlog:\n{}", relay.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_mirrors_nothing_that_the_pinned_center_key_does_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // A real center's keys and feed page for a customer with two licenses.
    let center = Process::serve(&dir.path().join("central"), dir.path(), "central");
    let admin = center.admin.clone().expect("admin token");
    let call = |token: String, method: &'static str, path: String, body: Option<Value>| {
        let (http, url) = (http.clone(), center.url.clone());
        async move {
            let (status, v) = process::call(&http, &url, &token, method, &path, body.as_ref())
                .await
                .expect("an answer");
            assert!(status.is_success(), "{method} {path}: {status} {v}");
            v
        }
    };
    call(
        admin.clone(),
        "POST",
        "/v1/customers".into(),
        Some(json!({"cnpj": CNPJ, "trade_name": "Mercado Bom"})),
    )
    .await;
    for _ in 0..2 {
        call(
            admin.clone(),
            "POST",
            "/v1/licenses".into(),
            Some(json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2031-01-31"})),
        )
        .await;
    }
    let relay_token = call(
        admin.clone(),
        "POST",
        "/v1/tokens".into(),
        Some(json!({"name": "relay-loja", "role": "relay", "cnpj": CNPJ})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys = call(admin.clone(), "GET", "/v1/keys".into(), None).await;
    // Wait for the read model: the feed filters by customer through it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = call(
            relay_token.clone(),
            "GET",
            format!("/v1/relay/feed?cnpj={CNPJ}&from=1"),
            None,
        )
        .await;
        if page["items"].as_array().map_or(0, Vec::len) == 3 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let signatures = page["signatures"].as_array().expect("signatures").clone();
    assert_eq!(signatures.len(), 3, "one signed head per item: {page}");
    assert_eq!(page["key_id"], keys["key_id"], "{page}");

    // Served as is: mirrored (the fake center is a faithful one), the key pinned.
    let fake = FakeCenter::start(keys.clone(), page.clone()).await;
    let genuine = start_relay(dir.path(), "relay-genuine", &fake.url);
    let genuine_admin = genuine.admin.clone().expect("relay admin token");
    wait_status(
        &http,
        &genuine,
        &genuine_admin,
        "mirrored the genuine page",
        |s| s["mirror_records"] == json!(3),
    )
    .await;
    let pinned: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("relay-genuine").join(CENTER_KEY_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(pinned["public_key"], keys["public_key"], "{pinned}");
    drop(genuine);

    // A signature moved to another record: nothing of the page is mirrored, and the status
    // and the log say why.
    let mut tampered = page.clone();
    tampered["signatures"][2] = signatures[1].clone();
    *fake.feed.lock() = tampered;
    let relay = start_relay(dir.path(), "relay-tampered", &fake.url);
    let token = relay.admin.clone().expect("relay admin token");
    let s = wait_status(&http, &relay, &token, "refused the tampered page", |s| {
        s["mirror_error"]
            .as_str()
            .is_some_and(|e| e.contains("do not verify"))
    })
    .await;
    assert_eq!(s["mirror_records"], json!(0), "{s}");
    let position = page["items"][2]["position"].to_string();
    assert!(
        s["mirror_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("position {position}"))),
        "names the position: {s}"
    );
    assert!(
        relay.log_text().contains("ERROR"),
        "logged as an error:\n{}",
        relay.log_text()
    );
    drop(relay);

    // No signatures at all (a center, or an impostor, that does not sign): nothing mirrored.
    let mut unsigned = page.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    *fake.feed.lock() = unsigned;
    let relay = start_relay(dir.path(), "relay-unsigned", &fake.url);
    let token = relay.admin.clone().expect("relay admin token");
    let s = wait_status(&http, &relay, &token, "refused the unsigned page", |s| {
        s["mirror_error"]
            .as_str()
            .is_some_and(|e| e.contains("3 records came with 0 signed heads"))
    })
    .await;
    assert_eq!(s["mirror_records"], json!(0), "{s}");
    drop(relay);

    // A relay given another key with --center-key refuses the genuine center's pages.
    *fake.feed.lock() = page.clone();
    let other_key = hex::encode(SigningKey::from_bytes(&[9; 32]).verifying_key().as_bytes());
    let relay = start_relay_with(
        dir.path(),
        "relay-other-key",
        &fake.url,
        &["--center-key", &other_key],
    );
    let token = relay.admin.clone().expect("relay admin token");
    let s = wait_status(
        &http,
        &relay,
        &token,
        "refused a page of another key",
        |s| {
            s["mirror_error"]
                .as_str()
                .is_some_and(|e| e.contains(CENTER_KEY_FILE))
        },
    )
    .await;
    assert_eq!(s["mirror_records"], json!(0), "{s}");
    drop(relay);
    // Given the genuine key, a new relay mirrors the page.
    let genuine_key = keys["public_key"].as_str().unwrap();
    let relay = start_relay_with(
        dir.path(),
        "relay-given-key",
        &fake.url,
        &["--center-key", genuine_key],
    );
    let token = relay.admin.clone().expect("relay admin token");
    wait_status(&http, &relay, &token, "mirrored with --center-key", |s| {
        s["mirror_records"] == json!(3)
    })
    .await;
    drop(relay);
    // A relay that pinned one key does not start with another given, nor with a key that is
    // no key.
    let data = dir.path().join("relay-genuine");
    let (code, _, err) = process::run(&relay_args(
        data.to_str().unwrap(),
        &fake.url,
        &["--center-key", &other_key],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--center-key is key"), "{err}");
    let (code, _, err) = process::run(&relay_args(
        data.to_str().unwrap(),
        &fake.url,
        &["--center-key", "abc"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--center-key: "), "{err}");

    // The relay that pinned the genuine key meets a center presenting another key: its
    // pages are refused, whatever `/v1/keys` now says.
    *fake.keys.lock() = json!({
        "key_id": "0123456789abcdef",
        "public_key": other_key,
    });
    let mut rekeyed = page.clone();
    rekeyed["key_id"] = json!("0123456789abcdef");
    *fake.feed.lock() = rekeyed;
    let relay = start_relay(dir.path(), "relay-genuine", &fake.url);
    let s = wait_status(&http, &relay, &genuine_admin, "refused another key", |s| {
        s["mirror_error"]
            .as_str()
            .is_some_and(|e| e.contains(CENTER_KEY_FILE))
    })
    .await;
    assert_eq!(s["mirror_records"], json!(3), "what it had stays: {s}");
}
