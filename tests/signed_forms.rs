//! Issue 15, finding 2: answers bound to their subject, checked as an integrator would.
//!
//! The README's verification snippet (`docs/verify_signatures.py`, included verbatim in the
//! README between the `verify_signatures.py` markers) is run with `python3` against what a
//! real server signs: a check-in answer, the audit head, a relay certificate and an answer
//! under it. It must accept each for its own subject and refuse another customer, product,
//! terminal or nonce. Needs `python3` with the `cryptography` package (`.ci/run` installs
//! it); under `CI=true` a missing one fails the test naming it.
//!
//! Also: a relay token has one key certified at a time (`token revoke-key` frees it).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fresh_hardware_id, fresh_hardware_key, TestApp};
use ledger_events::answer::{self, CheckInAnswer, SigningKey};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";
const OTHER_CNPJ: &str = "11444777000161";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `python3` with `cryptography` can run here. Under `CI=true` a missing one fails,
/// naming it; elsewhere the test says it skipped.
fn python_ready() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    let missing = match probe {
        Err(e) => Some(format!("python3 is not installed ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "the python package `cryptography` is missing (pip install cryptography): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

/// Runs the snippet on `cases` (each `{"name", "call", "args"}`): returns, per case, the
/// function's result or `refused: <why>`.
fn run_snippet(cases: &Value) -> Value {
    let driver = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("verify_signatures", sys.argv[1])
v = importlib.util.module_from_spec(spec)
spec.loader.exec_module(v)
out = {}
for case in json.load(sys.stdin):
    try:
        result = getattr(v, case["call"])(*case["args"])
        out[case["name"]] = "ok" if result is None else result
    except Exception as e:
        out[case["name"]] = "refused: %s %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", driver])
        .arg(repo().join("docs/verify_signatures.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn case(name: &str, call: &str, args: Value) -> Value {
    json!({"name": name, "call": call, "args": args})
}

/// When the README carries the snippet, it carries it verbatim (the lead pastes it between
/// `<!-- verify_signatures.py -->` and `<!-- /verify_signatures.py -->`); under `CI=true`
/// it must.
fn readme_snippet_is_the_tested_file() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let file = std::fs::read_to_string(repo().join("docs/verify_signatures.py")).unwrap();
    let (open, close) = (
        "<!-- verify_signatures.py -->",
        "<!-- /verify_signatures.py -->",
    );
    match (readme.find(open), readme.find(close)) {
        (Some(a), Some(b)) if a < b => {
            let block = &readme[a + open.len()..b];
            let code = block
                .trim()
                .strip_prefix("```python")
                .and_then(|c| c.strip_suffix("```"))
                .expect("the snippet is one ```python block between the markers");
            assert_eq!(
                code.trim(),
                file.trim(),
                "README.md's snippet differs from docs/verify_signatures.py"
            );
        }
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "README.md does not include docs/verify_signatures.py between {open} and {close}"
            )
        }
        _ => eprintln!("note: README.md does not include the snippet yet"),
    }
}

async fn check_in(app: &TestApp, token: &str, cnpj: &str, hw: &str, key: &str) -> Value {
    let (status, body) = app
        .call(
            "POST",
            "/v1/checkin",
            Some(token),
            Some(
                json!({"cnpj": cnpj, "product": "easycash", "hardware_id": hw,
                        "hardware_key": key, "nonce": "n-42"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn certify(app: &TestApp, token: &str, cnpj: &str, key: &SigningKey) -> (StatusCode, Value) {
    app.call(
        "POST",
        "/v1/relay/certificate",
        Some(token),
        Some(json!({"cnpj": cnpj, "public_key": hex::encode(key.verifying_key().as_bytes())})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_the_readme_snippet_verifies_what_the_server_signs_for_its_subject_only() {
    readme_snippet_is_the_tested_file();
    if !python_ready() {
        return;
    }
    let app = TestApp::spawn().await;
    app.customer(CNPJ, "Loja A").await;
    app.customer(OTHER_CNPJ, "Loja B").await;
    let license = app.license(CNPJ, "easycash", "2030-12-31", None).await;
    app.put(
        &format!("/v1/licenses/{license}/resources"),
        &app.admin,
        json!({"resources": {"habilita_dav": true, "caixas": 3, "plano": "básico",
                             "habilita_preventa": false}}),
    )
    .await;
    let terminal = app.token("terminal", Some(CNPJ)).await;
    let (hw, hw_key) = (fresh_hardware_id(), fresh_hardware_key());
    let body = check_in(&app, &terminal, CNPJ, &hw, &hw_key).await;
    assert_eq!(body["outcome"], "VALID", "{body}");
    assert_eq!(body["answer"]["version"], 2, "{body}");
    assert_eq!(body["answer"]["cnpj"], CNPJ, "{body}");
    let keys = app.get("/v1/keys", &app.admin).await;
    let central = keys["public_key"].clone();
    let head = app.get("/v1/audit/head", &app.admin).await;

    // A relay of customer A, certified by the center, signing an answer with its own key.
    let relay_token = app.token("relay", Some(CNPJ)).await;
    let relay_key = SigningKey::from_bytes(&[5; 32]);
    let (status, certified) = certify(&app, &relay_token, CNPJ, &relay_key).await;
    assert_eq!(status, StatusCode::OK, "{certified}");
    let center_answer: CheckInAnswer = serde_json::from_value(body["answer"].clone()).unwrap();
    let relay_id = answer::key_id_for(&relay_key.verifying_key());
    let mut relay_body =
        serde_json::to_value(answer::sign(center_answer.clone(), &relay_key, &relay_id)).unwrap();
    relay_body["certificate"] = certified["certificate"].clone();

    // A version 1 answer, as an older server signed it (no version, no cnpj in the JSON).
    let old_key = SigningKey::from_bytes(&[6; 32]);
    let v1 = CheckInAnswer {
        version: answer::ANSWER_VERSION_1,
        cnpj: None,
        ..center_answer
    };
    let mut v1_body = serde_json::to_value(answer::sign(v1, &old_key, "old")).unwrap();
    v1_body["answer"].as_object_mut().unwrap().remove("version");
    let old_public = json!(hex::encode(old_key.verifying_key().as_bytes()));

    let mut tampered = body.clone();
    tampered["answer"]["expires_on"] = json!("2099-12-31");
    let mut moved_head = head.clone();
    moved_head["head_position"] = json!(head["head_position"].as_u64().unwrap() + 1);

    let terminal_args = |b: &Value, key: &Value, cnpj: &str, product: &str, hw: &str, n: &str| {
        json!([b, key, cnpj, product, hw, n])
    };
    let cases = json!([
        case(
            "answer",
            "verify_answer",
            terminal_args(&body, &central, CNPJ, "easycash", &hw, "n-42")
        ),
        case(
            "answer, lower-case hardware id",
            "verify_answer",
            terminal_args(
                &body,
                &central,
                CNPJ,
                "easycash",
                &hw.to_lowercase(),
                "n-42"
            )
        ),
        case(
            "answer for another customer",
            "verify_answer",
            terminal_args(&body, &central, OTHER_CNPJ, "easycash", &hw, "n-42")
        ),
        case(
            "answer for another product",
            "verify_answer",
            terminal_args(&body, &central, CNPJ, "intellicash", &hw, "n-42")
        ),
        case(
            "answer for another terminal",
            "verify_answer",
            terminal_args(
                &body,
                &central,
                CNPJ,
                "easycash",
                &fresh_hardware_id(),
                "n-42"
            )
        ),
        case(
            "answer for another nonce",
            "verify_answer",
            terminal_args(&body, &central, CNPJ, "easycash", &hw, "n-43")
        ),
        case(
            "answer with another expiry",
            "verify_answer",
            terminal_args(&tampered, &central, CNPJ, "easycash", &hw, "n-42")
        ),
        case("head", "verify_head", json!([head, central])),
        case(
            "head at another position",
            "verify_head",
            json!([moved_head, central])
        ),
        case(
            "relay answer",
            "verify_relay_answer",
            terminal_args(&relay_body, &central, CNPJ, "easycash", &hw, "n-42")
        ),
        case(
            "relay answer for customer B's terminal",
            "verify_relay_answer",
            terminal_args(&relay_body, &central, OTHER_CNPJ, "easycash", &hw, "n-42")
        ),
        case(
            "version 1 answer",
            "verify_answer",
            terminal_args(&v1_body, &old_public, OTHER_CNPJ, "easycash", &hw, "n-42")
        ),
        case(
            "version 1 answer for another terminal",
            "verify_answer",
            terminal_args(
                &v1_body,
                &old_public,
                CNPJ,
                "easycash",
                &fresh_hardware_id(),
                "n-42"
            )
        ),
    ]);
    let got = run_snippet(&cases);
    let accepted = [
        ("answer", "VALID"),
        ("answer, lower-case hardware id", "VALID"),
        ("head", "ok"),
        ("relay answer", "VALID"),
        ("version 1 answer", "VALID"),
    ];
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let result = got[name].as_str().unwrap_or_default();
        match accepted.iter().find(|(n, _)| *n == name) {
            Some((_, want)) => assert_eq!(result, *want, "{name}: {got}"),
            None => assert!(
                result.starts_with("refused"),
                "{name} was not refused: {got}"
            ),
        }
    }
    // Refused for the right reason: the subject, not a broken encoding.
    for (name, why) in [
        ("answer for another customer", "another customer"),
        ("answer for another product", "another product"),
        ("answer for another terminal", "another product or terminal"),
        (
            "relay answer for customer B's terminal",
            "certified for another customer",
        ),
        (
            "version 1 answer for another terminal",
            "another product or terminal",
        ),
    ] {
        assert!(got[name].as_str().unwrap().contains(why), "{name}: {got}");
    }
}

fn ledger_cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("LEDGER_LOG", "warn")
        .output()
        .expect("run license-ledger");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_relay_token_gets_certificates_for_one_key_until_an_admin_revokes_it() {
    let app = TestApp::spawn().await;
    app.customer(CNPJ, "Loja A").await;
    let name = "relay-loja-a";
    let relay = app.named_token(name, "relay", Some(CNPJ)).await;
    let (first, second) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let first_id = answer::key_id_for(&first.verifying_key());

    // The first key is pinned; it is certified again and again, for this customer.
    for _ in 0..2 {
        let (status, body) = certify(&app, &relay, CNPJ, &first).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["certificate"]["cnpj"], CNPJ);
        assert_eq!(body["certificate"]["relay_key_id"], json!(first_id));
    }
    // A second key (a stolen token on another machine) is refused, naming the fix.
    let (status, body) = certify(&app, &relay, CNPJ, &second).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&first_id) && message.contains("token revoke-key"),
        "{body}"
    );

    // The admin sees the key and revokes it; then the next key is pinned, and the old one
    // is refused.
    let (ok, list) = ledger_cli(app.dir.path(), &["token", "list"]);
    assert!(ok, "{list}");
    let row = list
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default();
    assert!(row.contains(&first_id), "{list}");
    let (ok, out) = ledger_cli(app.dir.path(), &["token", "revoke-key", name]);
    assert!(ok && out.contains(&first_id), "{out}");
    let (ok, out) = ledger_cli(app.dir.path(), &["token", "revoke-key", name]);
    assert!(!ok && out.contains("no certified relay key"), "{out}");
    let (status, body) = certify(&app, &relay, CNPJ, &second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = certify(&app, &relay, CNPJ, &first).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Another relay token of the customer has its own key; no token certifies for another
    // customer.
    let other = app.token("relay", Some(CNPJ)).await;
    let (status, body) = certify(&app, &other, CNPJ, &first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = certify(&app, &other, OTHER_CNPJ, &first).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}
