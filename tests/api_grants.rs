//! New licenses and contracts under load, through the HTTP API on the file store: many
//! grants for one customer at once all succeed, with distinct ids that are exactly 1..=N; a
//! refused command leaves no gap; a retried command (same `command_id`) answers with the id it
//! got the first time. Several nodes on one PostgreSQL database: tests/pg_nodes.rs.

mod common;

use common::{assert_dense_ids, fresh_cnpj, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Sends `n` requests at once: `POST path` with `body(i)` for i in 0..n; returns every answer.
async fn all_at_once(
    app: &TestApp,
    path: &str,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<(StatusCode, Value)> {
    let calls = (0..n).map(|i| app.call("POST", path, Some(app.admin.as_str()), Some(body(i))));
    futures::future::join_all(calls).await
}

async fn concurrent_grants_for_one_customer_all_succeed_with_ids_1_to(n: usize) {
    let app = TestApp::spawn().await;
    let cnpj = fresh_cnpj();
    app.customer(&cnpj, "Atacado").await;
    let answers = all_at_once(
        &app,
        "/v1/licenses",
        n,
        |_| json!({"cnpj": cnpj, "product": "easycash", "expires_on": "2031-01-31"}),
    )
    .await;
    assert_dense_ids(&answers, "license_id");
    let listed = app
        .get(&format!("/v1/customers/{cnpj}/licenses"), &app.admin)
        .await;
    assert_eq!(
        listed["total"],
        json!(n),
        "the customer holds every license granted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_grants_for_one_customer_all_succeed_with_ids_1_to_64() {
    concurrent_grants_for_one_customer_all_succeed_with_ids_1_to(64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_concurrent_grants_for_one_customer_all_succeed_with_ids_1_to_256() {
    concurrent_grants_for_one_customer_all_succeed_with_ids_1_to(256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_contracts_for_one_customer_all_succeed_with_ids_1_to_64() {
    let app = TestApp::spawn().await;
    let cnpj = fresh_cnpj();
    app.customer(&cnpj, "Atacado").await;
    let answers = all_at_once(&app, "/v1/contracts", 64, |_| {
        json!({"cnpj": cnpj, "starts_on": "2026-01-01", "interval_days": 30,
               "renew_before_days": 5})
    })
    .await;
    assert_dense_ids(&answers, "contract_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_grant_answers_its_first_id_and_refused_or_retried_commands_leave_no_gap() {
    let app = TestApp::spawn().await;
    let cnpj = fresh_cnpj();
    app.customer(&cnpj, "Atacado").await;
    let command_id = uuid::Uuid::now_v7();
    let grant = json!({"cnpj": cnpj, "product": "easycash", "expires_on": "2031-01-31",
                       "command_id": command_id});

    let first = app.admin("POST", "/v1/licenses", grant.clone()).await;
    let again = app.admin("POST", "/v1/licenses", grant).await;
    assert_eq!(first["license_id"], json!("000001"), "{first}");
    assert_eq!(again["license_id"], first["license_id"], "{again}");
    assert_eq!(again["position"], first["position"], "{again}");
    // The retry stored nothing, so the next grant takes the next id.
    let next = app.license(&cnpj, "easycash", "2031-01-31", None).await;
    assert_eq!(next, "000002");

    // A contract the domain refuses (after its id was allocated) leaves no gap either.
    let (status, refused) = app
        .call(
            "POST",
            "/v1/contracts",
            Some(app.admin.as_str()),
            Some(
                json!({"cnpj": cnpj, "starts_on": "2026-01-01", "interval_days": 30,
                        "renew_before_days": 31}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["field"], json!("renew_before_days"), "{refused}");
    let contract = app.contract(&cnpj, "2026-01-01", 30, 5).await;
    assert_eq!(contract, "000001");
}
