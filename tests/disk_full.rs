//! A full disk, end to end: the real binary with its data directory on a 4 MiB tmpfs that a
//! filler file fills up. Proves that commands then answer 503 with the "disk full" message,
//! queries and check-ins that need no new record are still answered, nothing acknowledged
//! before is damaged (`verify` passes, same head), and commands succeed again, without a
//! restart, once the filler is deleted.
//!
//! It needs to mount a tmpfs (root, or CAP_SYS_ADMIN); where it cannot, it prints why and
//! checks nothing. On tmpfs a full disk shows as `ENOSPC` from `write`, never from
//! `fdatasync`: this covers the store's "write failed: cut back and keep going" path, not
//! the "fsync failed: refuse appends until reopened" one.

#[path = "support/fs.rs"]
mod fs;
#[path = "support/process.rs"]
mod process;

use std::path::Path;

use fs::{fill, Tmpfs};
use process::{call, run, Process};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";
const HW_ID: &str = "50026B77825EECA5";
const HW_KEY: &str = "88A7B56C2B3F326F91362A182483F63E";

fn verify(data: &Path) -> (u64, String) {
    let (code, out, err) = run(&["--data-dir", data.to_str().unwrap(), "verify", "--json"]);
    assert_eq!(code, 0, "verify failed: {out}\n{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("verify --json prints JSON");
    (
        report["head_position"].as_u64().expect("head_position"),
        report["head_hash"].as_str().expect("head_hash").to_owned(),
    )
}

fn checkin(hw_id: &str, hw_key: &str, nonce: Option<&str>) -> Value {
    json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": hw_id, "hardware_key": hw_key,
           "nonce": nonce})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_commands_with_503_keeps_answering_and_recovers_when_space_returns() {
    // Arrange: a server on a 4 MiB tmpfs with a customer, two licenses and a bound terminal.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let tmpfs = match Tmpfs::mount(&mnt, "4m") {
        Ok(t) => t,
        Err(why) => {
            println!("disk_full: SKIPPED, cannot mount a tmpfs here ({why}); nothing checked");
            return;
        }
    };
    let data = tmpfs.at.join("data");
    let server = Process::serve(&data, dir.path(), "server");
    let admin = server.admin.clone().expect("admin token");
    let http = Client::new();
    let url = server.url.clone();
    let post = |path: &'static str, body: Value| {
        let (http, url, admin) = (http.clone(), url.clone(), admin.clone());
        async move {
            call(&http, &url, &admin, "POST", path, Some(&body))
                .await
                .expect("server answers")
        }
    };
    let (s, b) = post(
        "/v1/customers",
        json!({"cnpj": CNPJ, "trade_name": "Mercado"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let grant = json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31"});
    let (s, b) = post("/v1/licenses", grant.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let license = b["license_id"].as_str().unwrap().to_owned();
    let (s, b) = post("/v1/licenses", grant.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = post("/v1/checkin", checkin(HW_ID, HW_KEY, Some("n-1"))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["outcome"], json!("VALID"), "{b}");

    // Act: fill the file system. A command may still fit in the last allocated page: send
    // them until one is refused; those answered 200 are acknowledged like any other.
    let (before_full, _) = verify(&data);
    let filler = tmpfs.at.join("filler");
    let filled = fill(&filler);
    let mut acknowledged = 0;
    let mut refused = None;
    for i in 0..200 {
        let body = json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2099-12-31",
                          "resources": {"habilita_dav": i % 2 == 0}});
        let (s, b) = post("/v1/licenses", body).await;
        if s == StatusCode::OK {
            acknowledged += 1;
        } else {
            refused = Some((s, b));
            break;
        }
    }
    let (status, body) = refused.expect("a full disk refuses commands");
    println!(
        "disk_full: filler took {filled} bytes; {acknowledged} commands fitted before the first \
         refusal: {status} {body}"
    );

    // Assert: commands answer 503 with the clear message, again and again.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("disk full"), "{body}");
    let (full_position, full_hash) = verify(&data);
    assert_eq!(
        full_position,
        before_full + acknowledged,
        "every acknowledged grant is stored, the refused one is not"
    );
    for _ in 0..3 {
        let (s, b) = post(
            "/v1/customers",
            json!({"cnpj": "11444777000161", "trade_name": "Outro"}),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("disk full"));
    }
    // ...queries are answered...
    let (s, b) = call(
        &http,
        &url,
        &admin,
        "GET",
        &format!("/v1/licenses/{license}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["binding"]["hardware_key"], json!(HW_KEY), "{b}");
    let (s, b) = call(
        &http,
        &url,
        &admin,
        "GET",
        "/v1/events?from=1&limit=1000",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["items"].as_array().map(Vec::len),
        Some(full_position as usize)
    );
    // ...and so are check-ins of the bound terminal (nothing new to record), with or without
    // a nonce.
    for nonce in [None, Some("n-2"), Some("n-3")] {
        let (s, b) = post("/v1/checkin", checkin(HW_ID, HW_KEY, nonce)).await;
        assert_eq!(s, StatusCode::OK, "check-in {nonce:?}: {b}");
        assert_eq!(b["outcome"], json!("VALID"), "{b}");
    }
    // A new terminal needs a bind, which is a record: it cannot be answered as licensed.
    let (s, b) = post(
        "/v1/checkin",
        checkin(
            "50026B77825EECB6",
            "88A7B56C2B3F326F91362A182483F6B6",
            Some("n-4"),
        ),
    )
    .await;
    println!("disk_full: a new terminal's check-in while full: {s} {b}");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    // Nothing acknowledged is damaged and nothing was added.
    let (s, head) = call(&http, &url, &admin, "GET", "/v1/audit/head", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(head["head_position"], json!(full_position), "{head}");
    assert_eq!(head["head_hash"], json!(full_hash), "{head}");
    assert_eq!(verify(&data), (full_position, full_hash.clone()));

    // Act: free the space.
    std::fs::remove_file(&filler).unwrap();

    // Assert: commands work again, on the same process, and the log verifies.
    let (s, b) = post(
        "/v1/customers",
        json!({"cnpj": "11444777000161", "trade_name": "Outro"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "after freeing space: {b}");
    assert_eq!(b["position"], json!(full_position + 1), "{b}");
    let (s, b) = post(
        "/v1/checkin",
        checkin(
            "50026B77825EECB6",
            "88A7B56C2B3F326F91362A182483F6B6",
            Some("n-5"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["outcome"], json!("VALID"), "{b}");
    let (position, _) = verify(&data);
    assert!(position > full_position + 1, "the bind was recorded");
    drop(server);
    drop(tmpfs);
}
