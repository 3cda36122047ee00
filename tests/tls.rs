//! HTTPS end to end on loopback: `serve` and `relay` with `--tls-cert`/`--tls-key` (a
//! self-signed certificate made here with rcgen), a relay reaching a TLS center it trusts
//! through `--upstream-ca`, and one that does not trust it.

#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use process::Process;
use reqwest::{Certificate, Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM) files
/// in `dir` named after `name`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// A client trusting `cert` (besides the public roots).
fn trusting(cert: &Path) -> Client {
    let pem = std::fs::read(cert).unwrap();
    Client::builder()
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `serve` with TLS on a free loopback port.
fn serve_tls(data: &Path, log_dir: &Path, cert: &Path, key: &Path, name: &str) -> Process {
    Process::start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        log_dir,
        name,
    )
}

/// Polls `GET {url}/healthz` until 200 (the read models caught up), or panics after 20 s.
async fn wait_healthy(http: &Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http.get(format!("{url}/healthz")).send().await {
            Ok(res) if res.status() == StatusCode::OK => return res.json().await.unwrap(),
            other if Instant::now() > deadline => panic!("{url}/healthz never 200: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_certificate_answers_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "center");
    let center = serve_tls(&dir.path().join("data"), dir.path(), &cert, &key, "center");
    assert!(
        center.url.starts_with("https://127.0.0.1:"),
        "serve prints its https URL: {}",
        center.url
    );
    let http = trusting(&cert);
    let health = wait_healthy(&http, &center.url).await;
    assert_eq!(health["status"], json!("ok"), "{health}");
    // An authenticated route over the same connection kind, with the first-start token.
    let admin = center.admin.clone().expect("admin token");
    let (status, body) = process::call(&http, &center.url, &admin, "GET", "/v1/licenses", None)
        .await
        .expect("an answer over https");
    assert_eq!(status, StatusCode::OK, "{body}");

    // A client that does not trust the certificate is refused by its own check.
    let untrusting = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = untrusting
        .get(format!("{}/healthz", center.url))
        .send()
        .await
        .expect_err("an unknown self-signed certificate is not trusted");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = center.url.replacen("https://", "http://", 1);
    let answer = untrusting.get(format!("{plain}/healthz")).send().await;
    match answer {
        Err(_) => {}
        Ok(res) => panic!("plain HTTP to the TLS port answered {}", res.status()),
    }
}

/// The relay's status through its own HTTPS, polled until `ok` or 30 s.
async fn wait_relay(
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
            panic!(
                "relay never {what}: {answer:?}\nrelay log:\n{}",
                relay.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_follows_a_tls_center_it_trusts_through_upstream_ca_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let (center_cert, center_key) = self_signed(dir.path(), "center");
    let (relay_cert, relay_key) = self_signed(dir.path(), "relay");
    let center = serve_tls(
        &dir.path().join("central"),
        dir.path(),
        &center_cert,
        &center_key,
        "central",
    );
    let to_center = trusting(&center_cert);
    wait_healthy(&to_center, &center.url).await;
    let admin = center.admin.clone().expect("admin token");
    let call = |method: &'static str, path: &'static str, body: Value| {
        let (http, url, admin) = (to_center.clone(), center.url.clone(), admin.clone());
        async move {
            let (status, v) = process::call(&http, &url, &admin, method, path, Some(&body))
                .await
                .expect("an answer");
            assert!(status.is_success(), "{method} {path}: {status} {v}");
            v
        }
    };
    call(
        "POST",
        "/v1/customers",
        json!({"cnpj": CNPJ, "trade_name": "Mercado Bom"}),
    )
    .await;
    call(
        "POST",
        "/v1/licenses",
        json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2031-01-31"}),
    )
    .await;
    let relay_token = call(
        "POST",
        "/v1/tokens",
        json!({"name": "relay-loja", "role": "relay", "cnpj": CNPJ}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let start_relay = |name: &str, upstream_ca: Option<&Path>| {
        let data = dir.path().join(name);
        let mut args = vec![
            "--data-dir".to_owned(),
            data.to_str().unwrap().to_owned(),
            "relay".to_owned(),
            "--upstream".to_owned(),
            center.url.clone(),
            "--cnpj".to_owned(),
            CNPJ.to_owned(),
            "--token".to_owned(),
            relay_token.clone(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--tls-cert".to_owned(),
            relay_cert.to_str().unwrap().to_owned(),
            "--tls-key".to_owned(),
            relay_key.to_str().unwrap().to_owned(),
        ];
        if let Some(ca) = upstream_ca {
            args.push("--upstream-ca".to_owned());
            args.push(ca.to_str().unwrap().to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(&args, dir.path(), name)
    };
    let to_relay = trusting(&relay_cert);

    // Trusting the center's certificate: caught up (customer and license) and certified.
    let relay = start_relay("relay", Some(&center_cert));
    assert!(relay.url.starts_with("https://"), "{}", relay.url);
    let reader = relay.admin.clone().expect("relay admin token");
    let s = wait_relay(&to_relay, &relay, &reader, "caught up", |s| {
        s["mirror_records"] == json!(2) && !s["certified_until"].is_null()
    })
    .await;
    assert_eq!(s["link"], json!("up"), "{s}");
    // `relay-status` reads it over HTTPS, trusting the relay's certificate with --ca.
    let (code, out, err) = process::run(&[
        "relay-status",
        "--url",
        &relay.url,
        "--token",
        &reader,
        "--ca",
        relay_cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("mirror records: 2"), "{out}");
    // Without --ca the relay's self-signed certificate is refused.
    let (code, _, err) = process::run(&["relay-status", "--url", &relay.url, "--token", &reader]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the relay"), "{err}");

    // Without --upstream-ca the center's self-signed certificate is not trusted: nothing is
    // mirrored, the link is down.
    let blind = start_relay("relay-blind", None);
    let reader = blind.admin.clone().expect("relay admin token");
    let s = wait_relay(&to_relay, &blind, &reader, "down", |s| {
        s["link"] == json!("down")
    })
    .await;
    assert_eq!(s["mirror_records"], json!(0), "{s}");
    assert!(s["certified_until"].is_null(), "{s}");
}
