//! The OpenAPI description at `GET /openapi.json` against the server that serves it: it
//! lists exactly the routes the server mounts (read from its sources), every reference
//! resolves, every error answer it documents is the one error shape, and what schemathesis
//! found while checking the server against it stays fixed (bodies that are not objects,
//! empty query values, positions past the head). The schemathesis run itself is
//! tests/schemathesis/run.sh (CI runs it after `cargo test`).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
#[path = "support/routes.rs"]
mod routes;
use common::TestApp;

async fn description(app: &TestApp) -> Value {
    let a = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["openapi"], "3.1.0");
    a.json
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every (METHOD, path) the description documents.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_lists_exactly_the_routes_the_server_mounts() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let documented = documented(&doc);
    let mounted: BTreeSet<(String, String)> = routes::mounted().into_iter().collect();
    let missing: Vec<_> = mounted.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&mounted).collect();
    assert!(
        missing.is_empty(),
        "mounted but not documented: {missing:?}"
    );
    assert!(extra.is_empty(), "documented but not mounted: {extra:?}");
    // And each documented route answers as itself, not as the server's "no such route".
    for (method, path) in &documented {
        let concrete = path
            .replace("{cnpj}", "12345678000195")
            .replace("{id}", "000001")
            .replace("{name}", "app.js")
            .replace("{action}", "block");
        let body = (method != "GET").then(|| json!({}));
        let a = app
            .send(method, &concrete, Some(&app.admin), body.as_ref())
            .await;
        assert!(
            !(a.status == StatusCode::NOT_FOUND && a.json["message"] == "no such route"),
            "{method} {path} is documented but the server does not route it"
        );
    }
}

/// Every `$ref` in `v`, as the component name it points at.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "$ref" {
                    out.push(x.as_str().expect("a $ref is a string").to_owned());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_resolves_and_every_error_answer_is_the_error_shape() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "only {} references", all.len());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} is not a schema reference"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    let error = &schemas["Error"];
    assert_eq!(
        error["required"],
        json!(["error", "message"]),
        "the error shape: {error}"
    );
    let codes = &schemas["ErrorCode"]["enum"];
    assert!(
        codes.as_array().is_some_and(
            |c| c.contains(&json!("invalid_field")) && c.contains(&json!("unauthenticated"))
        ),
        "{codes}"
    );

    let mut errors_checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let responses = op["responses"].as_object().expect("responses");
            let public = op["security"] == json!([{}]);
            if !public {
                for status in ["401", "403", "500", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{m} {path} does not document {status}"
                    );
                }
            }
            for (status, response) in responses {
                let code: u16 = status.parse().expect("a numeric status");
                if code < 400 {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Error",
                    "{m} {path} {status}: {response}"
                );
                errors_checked += 1;
            }
        }
    }
    assert!(errors_checked > 150, "only {errors_checked} error answers");
    // Commands that allocate an id say that a busy 503 comes with Retry-After.
    assert!(
        codes.as_array().is_some_and(|c| c.contains(&json!("busy"))),
        "{codes}"
    );
    for path in ["/v1/licenses", "/v1/contracts"] {
        let busy = &doc["paths"][path]["post"]["responses"]["503"];
        assert_eq!(
            busy["headers"]["Retry-After"]["schema"]["type"], "integer",
            "POST {path} 503: {busy}"
        );
    }

    // The real answers carry the documented codes.
    let no_token = app.send("GET", "/v1/licenses", None, None).await;
    let bad_field = app
        .send("GET", "/v1/licenses?limit=many", Some(&app.admin), None)
        .await;
    for a in [&no_token, &bad_field] {
        assert!(
            codes.as_array().unwrap().contains(&a.json["error"]),
            "{}",
            a.text
        );
    }
    assert_eq!(bad_field.json["field"], "limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_schemathesis_found_stays_fixed() {
    let app = TestApp::spawn().await;
    let admin = Some(app.admin.as_str());
    app.admin(
        "POST",
        "/v1/customers",
        json!({"cnpj": "12345678000195", "trade_name": "Loja Exemplo"}),
    )
    .await;

    // A derived struct would take its fields as an array: `[null, null]` was a valid
    // "no note, no command id" to serde, and blocked the customer.
    for body in [json!([null, null]), json!("x"), json!(1), json!(null)] {
        let a = app
            .send(
                "POST",
                "/v1/customers/12345678000195/block",
                admin,
                Some(&body),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert_eq!(a.json["error"], "malformed", "{}", a.text);
    }
    let row = app
        .get("/v1/customers?text=12345678000195", &app.admin)
        .await;
    assert_eq!(row["items"][0]["blocked"], false, "{row}");
    // Whitespace is not JSON either (random bytes that happened to be blanks were read as
    // `{}` and unlinked a license).
    let res = app
        .client
        .post(format!("{}/v1/customers/12345678000195/block", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(" \n\t ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let row = app
        .get("/v1/customers?text=12345678000195", &app.admin)
        .await;
    assert_eq!(row["items"][0]["blocked"], false, "{row}");
    // No body at all is an empty object: these actions take only optional fields.
    let a = app
        .send("POST", "/v1/customers/12345678000195/block", admin, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // An empty value is a value: not a time, not a number.
    for (query, field) in [
        ("/v1/events/search?until=", "until"),
        ("/v1/licenses?limit=", "limit"),
        ("/v1/licenses?cnpj=", "cnpj"),
    ] {
        let a = app.send("GET", query, admin, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.text);
        assert_eq!(a.json["field"], field, "{query}: {}", a.text);
    }

    // A position past the head cannot be waited for: 400 at once, not 503 after a wait.
    let head = app.get("/healthz", &app.admin).await["head_position"]
        .as_u64()
        .unwrap();
    let started = std::time::Instant::now();
    let a = app
        .send(
            "GET",
            &format!("/v1/licenses?min_position={}", head + 1000),
            admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json["field"], "min_position", "{}", a.text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "answered only after {:?}",
        started.elapsed()
    );
    // A position the log has is answered.
    let a = app
        .send(
            "GET",
            &format!("/v1/licenses?min_position={head}"),
            admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}
