//! Secrets stay secret: the real binary runs with `LEDGER_LOG=debug` and its stderr captured;
//! tokens are created, check-ins, offline activations and an emergency release made, the
//! feed and its stream read, `/metrics` scraped and the log exported as JSON lines. No API
//! token, no offline or emergency key from `secrets.toml` and not the answer-signing seed may
//! appear in any of it. And a check-in answer with any byte changed fails the terminal's
//! `SignedAnswer::verify`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ledger_events::answer::{SignedAnswer, VerifyingKey};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";
const HW_ID: &str = "50026B77825EEC01";
const HW_KEY: &str = "88A7B56C2B3F326F91362A182483F601";

struct Server {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_license-ledger")
}

/// Starts `serve` on port 0 with debug logs to `log`; reads its URL and admin token.
fn start(data: &Path, log: &Path) -> Server {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(binary())
        .args(["--data-dir", data.to_str().expect("utf-8 path")])
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .env("LEDGER_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn license-ledger");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut url, mut admin) = (None, None);
    while url.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints its URL and admin token");
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_owned());
        }
        if line.starts_with("llt_") {
            admin = Some(line.trim().to_owned());
        }
    }
    Server {
        child,
        url: url.unwrap_or_default(),
        admin: admin.unwrap_or_default(),
    }
}

async fn call(c: &Client, s: &Server, method: &str, path: &str, token: &str, body: Value) -> Value {
    let url = format!("{}{path}", s.url);
    let req = match method {
        "GET" => c.get(url),
        _ => c.post(url).json(&body),
    };
    let res = req.bearer_auth(token).send().await.expect("send");
    let status = res.status();
    let json: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{method} {path}: {json}");
    json
}

/// Every secret value of `secrets.toml` (offline keys, emergency key, audit key) in the forms it could
/// leak: as stored (hex), upper-case hex.
fn stored_secrets(data: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data.join("secrets.toml")).expect("secrets.toml");
    let value: toml::Value = toml::from_str(&text).expect("secrets.toml parses");
    let mut out = Vec::new();
    if let Some(offline) = value.get("offline").and_then(toml::Value::as_table) {
        for (product, key) in offline {
            let key = key.as_str().expect("hex key").to_owned();
            out.push((format!("offline key of {product}"), key));
        }
    }
    let emergency = value
        .get("emergency")
        .and_then(toml::Value::as_str)
        .expect("an emergency key");
    out.push(("emergency key".into(), emergency.to_owned()));
    let audit = value
        .get("audit")
        .and_then(toml::Value::as_str)
        .expect("an audit key");
    out.push(("audit key".into(), audit.to_owned()));
    let seed = std::fs::read_to_string(data.join("answer-signing.key")).expect("signing key");
    out.push(("answer-signing seed".into(), seed.trim().to_owned()));
    for (_, s) in &out {
        assert!(s.len() >= 32, "a secret shorter than expected: {s}");
    }
    let upper: Vec<_> = out
        .iter()
        .map(|(n, s)| (format!("{n} (upper case)"), s.to_uppercase()))
        .collect();
    out.extend(upper);
    out
}

/// The customer [`CNPJ`] with one EasyCash license.
async fn open_shop(c: &Client, server: &Server, admin: &str) {
    call(
        c,
        server,
        "POST",
        "/v1/customers",
        admin,
        json!({"cnpj": CNPJ, "trade_name": "Padaria"}),
    )
    .await;
    call(
        c,
        server,
        "POST",
        "/v1/licenses",
        admin,
        json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_key_or_seed_appears_in_logs_exports_or_the_event_feed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = start(&data, &log);
    let c = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let admin = server.admin.clone();
    let mut tokens = vec![("admin".to_owned(), admin.clone())];

    // Tokens of every role.
    let mut made = Vec::new();
    for (role, cnpj) in [
        ("support", None),
        ("auditor", None),
        ("terminal", Some(CNPJ)),
    ] {
        let b = call(
            &c,
            &server,
            "POST",
            "/v1/tokens",
            &admin,
            json!({"name": format!("leak-{role}"), "role": role, "cnpj": cnpj}),
        )
        .await;
        let t = b["token"].as_str().expect("token").to_owned();
        tokens.push((role.to_owned(), t.clone()));
        made.push((role, t));
    }
    let support = made[0].1.clone();
    let auditor = made[1].1.clone();
    let terminal = made[2].1.clone();

    // A customer with a license, check-ins (with and without nonce, and a bad token).
    open_shop(&c, &server, &admin).await;
    let checkin = json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": HW_ID,
        "hardware_key": HW_KEY, "nonce": "n-1"});
    call(
        &c,
        &server,
        "POST",
        "/v1/checkin",
        &terminal,
        checkin.clone(),
    )
    .await;
    let mut no_nonce = checkin.clone();
    no_nonce.as_object_mut().expect("object").remove("nonce");
    call(&c, &server, "POST", "/v1/checkin", &terminal, no_nonce).await;
    // A wrong token is logged as a failure: its value must not be.
    // (Its last digit changed: to 1 when it is 0, else the "wrong" token is the token.)
    let flip = if terminal.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{flip}", &terminal[..terminal.len() - 1]);
    let res = c
        .post(format!("{}/v1/checkin", server.url))
        .bearer_auth(&wrong)
        .json(&checkin)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    tokens.push(("a wrong token".into(), wrong));

    // Offline activations and an emergency release (codes derived from the keys).
    for serial in ["50026B7760000001", "50026B7760000002"] {
        call(
            &c,
            &server,
            "POST",
            "/v1/offline-activations",
            &support,
            json!({"serial": serial, "product": "easycash"}),
        )
        .await;
    }
    call(
        &c,
        &server,
        "POST",
        "/v1/emergency-releases",
        &admin,
        json!({"product": "easycash", "hardware_id": HW_ID, "hardware_key": HW_KEY,
               "licensed_to": "Padaria"}),
    )
    .await;

    // Everything the outside can read.
    let mut captured = String::new();
    let feed = call(
        &c,
        &server,
        "GET",
        "/v1/events?from=1&limit=1000",
        &auditor,
        json!({}),
    )
    .await;
    assert!(
        feed.to_string().contains("OfflineActivationIssued") || feed.to_string().len() > 1000,
        "{feed}"
    );
    captured.push_str(&feed.to_string());
    let mut stream = c
        .get(format!("{}/v1/events/stream?from=1", server.url))
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            captured.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    drop(stream);
    assert!(
        captured.contains("event: record"),
        "the stream sent no record"
    );
    let metrics = c
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    captured.push_str(&metrics);
    drop(server);

    let export = Command::new(binary())
        .args(["--data-dir", data.to_str().expect("utf-8 path")])
        .args(["export", "--format", "jsonl"])
        .env("LEDGER_LOG", "debug")
        .output()
        .expect("export");
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let export_text = String::from_utf8_lossy(&export.stdout).into_owned();
    assert!(
        export_text.lines().count() >= 7,
        "export too short: {export_text}"
    );
    captured.push_str(&export_text);
    captured.push_str(&String::from_utf8_lossy(&export.stderr));
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("request"), "no request was logged");
    captured.push_str(&logs);

    let mut secrets = stored_secrets(&data);
    secrets.extend(tokens);
    // The token's secret part too, without its prefix.
    let parts: Vec<_> = secrets
        .iter()
        .filter_map(|(n, s)| {
            s.strip_prefix("llt_")
                .map(|p| (format!("{n} (no prefix)"), p.to_owned()))
        })
        .collect();
    secrets.extend(parts);
    for (name, secret) in &secrets {
        assert!(
            !captured.contains(secret.as_str()),
            "the {name} appears in logs, exports or the feed"
        );
    }
    // The check can fail: a planted secret is found.
    let planted = format!("{captured} {}", secrets[0].1);
    assert!(planted.contains(secrets[0].1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_answer_with_any_byte_changed_fails_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = start(&data, &dir.path().join("server.log"));
    let c = Client::new();
    let admin = server.admin.clone();
    open_shop(&c, &server, &admin).await;
    let body = call(
        &c,
        &server,
        "POST",
        "/v1/checkin",
        &admin,
        json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": HW_ID,
               "hardware_key": HW_KEY, "nonce": "n-1"}),
    )
    .await;
    let keys = call(&c, &server, "GET", "/v1/keys", &admin, json!({})).await;
    let mut pk = [0u8; 32];
    hex::decode_to_slice(keys["public_key"].as_str().expect("key"), &mut pk).expect("hex");
    let key = VerifyingKey::from_bytes(&pk).expect("key");
    let signed: SignedAnswer = serde_json::from_value(body).expect("signed answer");
    signed
        .verify_signature(&key)
        .expect("the genuine answer verifies");

    // Every byte of the answer's JSON text, changed to a few other values: whatever still
    // parses as a different answer must fail verification.
    let text = serde_json::to_vec(&signed).expect("json");
    let (mut parsed, mut refused) = (0, 0);
    for i in 0..text.len() {
        for replacement in [b'0', b'1', b'a', b'F', b'"', b' ', text[i] ^ 1] {
            if replacement == text[i] {
                continue;
            }
            let mut forged = text.clone();
            forged[i] = replacement;
            let Ok(candidate) = serde_json::from_slice::<SignedAnswer>(&forged) else {
                continue;
            };
            // Same values (whitespace), or the same signature bytes in upper-case hex (the
            // decoder ignores case: no signed byte changed, see RELIABILITY.md).
            if candidate.answer == signed.answer
                && candidate.key_id == signed.key_id
                && candidate.signature.to_ascii_lowercase() == signed.signature
            {
                continue;
            }
            parsed += 1;
            assert!(
                candidate.verify_signature(&key).is_err(),
                "byte {i} changed to {replacement:?} still verifies: {}",
                String::from_utf8_lossy(&forged)
            );
            refused += 1;
        }
    }
    assert!(parsed > 100, "only {parsed} forgeries parsed");
    eprintln!("{refused} forged answers refused");
}
