//! The console's routes end to end on the real server (127.0.0.1 port 0, fresh data
//! directory, a manual clock): the page and its embedded assets (content types, the
//! Content-Security-Policy, ETags, unknown names and traversal attempts answering 404 in the
//! error shape), and each JSON route of src/http/console_api.rs: `/v1/session`,
//! `/v1/customers`, `/v1/license-table` (sorting, marks, as of a past moment),
//! `/v1/events/search` (every filter and the paging cursor), `/v1/dashboard` and
//! `/v1/audit/verify`. Who may call them is in the role matrix (tests/api_roles.rs).

use chrono::{DateTime, Duration, Utc};
use license_ledger::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::{fresh_cnpj, TestApp};

/// 10:00 UTC on the fixture's first day.
fn t0() -> DateTime<Utc> {
    "2026-03-01T10:00:00Z".parse().unwrap()
}

fn at(offset_minutes: i64) -> String {
    (t0() + Duration::minutes(offset_minutes)).to_rfc3339()
}

/// Customer A ("Mercado Console", with a contract) and B ("Padaria Console"), four licenses:
/// - L1: A, EasyCash, expires 2026-03-03 (two days after t0), no contract; bound at t0 by a
///   check-in, unlinked at t0 + 2 h;
/// - L2: A, EasyCash, expires 2026-03-21, on A's contract; blocked at t0 + 1 h;
/// - L3: A, Notify, expired 2026-02-28;
/// - L4: B, EasyCash, expires 2026-04-10.
///
/// The clock ends at t0 + 2 h.
struct World {
    app: TestApp,
    a: String,
    b: String,
    contract: String,
    l: [String; 4],
    support: String,
    auditor: String,
    /// Positions of the check-in's records, the block and the unlink.
    blocked_at: u64,
    unlinked_at: u64,
}

impl World {
    async fn new() -> World {
        let clock = ManualClock::new(t0());
        let app = TestApp::spawn_with_clock(clock.clone()).await;
        let (a, b) = (fresh_cnpj(), fresh_cnpj());
        app.customer(&a, "Mercado Console").await;
        app.customer(&b, "Padaria Console").await;
        let contract = app.contract(&a, "2026-01-01", 30, 3).await;
        let l = [
            app.license(&a, "easycash", "2026-03-03", None).await,
            app.license(&a, "easycash", "2026-03-21", Some(&contract))
                .await,
            app.license(&a, "notify", "2026-02-28", None).await,
            app.license(&b, "easycash", "2026-04-10", None).await,
        ];
        let support = app.named_token("suporte-console", "support", None).await;
        let auditor = app.named_token("auditoria-console", "auditor", None).await;
        let checkin = app
            .admin(
                "POST",
                "/v1/checkin",
                json!({"cnpj": a, "product": "easycash", "hardware_id": "50026B77825EECA5",
                       "hardware_key": "88A7B56C2B3F326F91362A182483F63E", "ip": "192.168.0.191"}),
            )
            .await;
        assert_eq!(checkin["answer"]["license_id"], json!(l[0]), "{checkin}");
        clock.advance(Duration::hours(1));
        let blocked_at = app
            .post(
                &format!("/v1/licenses/{}/block", l[1]),
                &support,
                json!({"note": "falta de pagamento"}),
            )
            .await["position"]
            .as_u64()
            .unwrap();
        clock.advance(Duration::hours(1));
        let unlinked_at = app
            .post(
                &format!("/v1/licenses/{}/unlink", l[0]),
                &support,
                json!({"note": "troca de computador"}),
            )
            .await["position"]
            .as_u64()
            .unwrap();
        World {
            app,
            a,
            b,
            contract,
            l,
            support,
            auditor,
            blocked_at,
            unlinked_at,
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.app.get(path, &self.auditor).await
    }

    async fn bad(&self, path: &str) -> Value {
        let (status, body) = self.app.call("GET", path, Some(&self.auditor), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "GET {path}: {body}");
        assert_eq!(body["error"], json!("invalid_field"), "{body}");
        body
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["license_id"].as_str().unwrap().to_owned())
        .collect()
}

fn positions(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect()
}

// ---- the page and its assets ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_embedded_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.base)).send();

    let page = get("/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{rule} in {csp}");
    }
    assert!(
        !csp.contains("http") && !csp.contains("unsafe") && !csp.contains('*'),
        "no other origin, nothing inline: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<html lang="pt-BR">"#));
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style: the policy would block them"
    );
    assert!(!html.contains("http://") && !html.contains("https://"));

    // A browser that has the page revalidates it cheaply.
    let again = app
        .client
        .get(format!("{}/", app.base))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.text().await.unwrap().is_empty());

    // Every asset of the table, with its type; every module import names a served asset.
    let expected = [
        ("index.html", "text/html; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("i18n.js", "text/javascript; charset=utf-8"),
        ("dom.js", "text/javascript; charset=utf-8"),
        ("licenses.js", "text/javascript; charset=utf-8"),
        ("actions.js", "text/javascript; charset=utf-8"),
        ("pages.js", "text/javascript; charset=utf-8"),
        ("audit.js", "text/javascript; charset=utf-8"),
    ];
    let served: Vec<&str> = license_ledger::http::console::ASSETS
        .iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(served, expected.map(|(n, _)| n).to_vec());
    for (name, content_type) in expected {
        let res = get(&format!("/console/assets/{name}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        assert_eq!(res.headers()["content-type"], content_type, "{name}");
        assert!(res.headers().contains_key("content-security-policy"));
        let body = res.text().await.unwrap();
        // The SVG namespace is a name, not an address.
        let addresses = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !addresses.contains("https://") && !addresses.contains("http://"),
            "{name} fetches nothing from elsewhere"
        );
        for import in body.split("from './").skip(1) {
            let target = import.split('\'').next().unwrap();
            assert!(
                served.contains(&target),
                "{name} imports {target}, which is not served"
            );
        }
    }

    // Unknown names and traversal attempts: 404 in the error shape, never a file.
    for path in [
        "/console/assets/nope.js",
        "/console/assets/..%2Fconsole.rs",
        "/console/assets/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/console/assets/../../Cargo.toml",
        "/console/assets/",
        "/console/assets/APP.JS",
    ] {
        let (status, body) = app.call("GET", path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"], json!("not_found"), "{path}: {body}");
        assert!(!body.to_string().contains("[workspace]"));
    }
}

#[test]
fn every_event_type_has_a_label_in_both_languages() {
    let i18n = include_str!("../src/http/console/i18n.js");
    for (name, _) in ledger_events::EVENT_TYPES {
        let line = i18n
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}: [")))
            .unwrap_or_else(|| panic!("{name} has no label in i18n.js"));
        assert_eq!(
            line.matches('\'').count(),
            4,
            "two labels for {name}: {line}"
        );
    }
}

// ---- /v1/session ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_says_what_each_role_may_do() {
    let app = TestApp::spawn().await;
    let support = app.token("support", None).await;
    let auditor = app.token("auditor", None).await;
    let cnpj = fresh_cnpj();
    app.customer(&cnpj, "Loja do Terminal").await;
    let terminal = app.token("terminal", Some(&cnpj)).await;

    let s = app.get("/v1/session", &support).await;
    assert_eq!(s["role"], json!("support"));
    assert_eq!(
        (s["may_act"].clone(), s["may_admin"].clone()),
        (json!(true), json!(false))
    );
    assert!(s["name"].as_str().unwrap().starts_with("test-support-"));
    let a = app.get("/v1/session", &auditor).await;
    assert_eq!(
        (a["may_act"].clone(), a["may_admin"].clone()),
        (json!(false), json!(false))
    );
    let admin = app.get("/v1/session", &app.admin).await;
    assert_eq!(
        (admin["may_act"].clone(), admin["may_admin"].clone()),
        (json!(true), json!(true))
    );
    assert!(admin["products"]
        .as_array()
        .unwrap()
        .contains(&json!({"product": "nfe", "name": "NF-e Nota Fiscal"})));
    assert_eq!(
        admin["event_types"].as_array().unwrap().len(),
        ledger_events::EVENT_TYPES.len()
    );
    assert!(admin["categories"]
        .as_array()
        .unwrap()
        .contains(&json!("license")));

    let (status, body) = app.call("GET", "/v1/session", Some(&terminal), None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a terminal cannot sign in: {body}"
    );
}

// ---- /v1/customers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_come_with_their_contracts_and_license_counts() {
    let w = World::new().await;
    let page = w.get("/v1/customers").await;
    assert_eq!(page["total"], json!(2));
    let a = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cnpj"] == json!(w.a))
        .unwrap();
    assert_eq!(a["trade_name"], json!("Mercado Console"));
    assert_eq!(a["active"], json!(true));
    assert_eq!(a["contracts"].as_array().unwrap().len(), 1);
    assert_eq!(a["contracts"][0]["contract_id"], json!(w.contract));
    assert_eq!(a["contracts"][0]["interval_days"], json!(30));
    assert_eq!(
        a["licenses"],
        json!({"total": 3, "active": 1, "blocked": 1, "deactivated": 0, "expired": 1,
               "free": 3, "bound": 0})
    );

    let only_b = w.get("/v1/customers?text=padaria").await;
    assert_eq!(only_b["total"], json!(1));
    assert_eq!(only_b["items"][0]["cnpj"], json!(w.b));
    assert_eq!(only_b["items"][0]["contracts"], json!([]));
    assert_eq!(only_b["items"][0]["licenses"]["total"], json!(1));
    let by_cnpj = w.get(&format!("/v1/customers?text={}", &w.a[..8])).await;
    assert!(by_cnpj["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["cnpj"] == json!(w.a)));
    let second = w.get("/v1/customers?offset=1&limit=1").await;
    assert_eq!(
        (
            second["total"].clone(),
            second["items"].as_array().unwrap().len()
        ),
        (json!(2), 1)
    );
    w.bad("/v1/customers?limit=501").await;
}

// ---- /v1/license-table ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_license_table_sorts_every_row_and_marks_expiry() {
    let w = World::new().await;
    let [l1, l2, l3, l4] = w.l.clone();

    let page = w.get("/v1/license-table").await;
    assert_eq!(
        ids(&page),
        [l1.as_str(), l2.as_str(), l3.as_str(), l4.as_str()]
    );
    assert_eq!(page["today"], json!("2026-03-01"));
    let row = |page: &Value, id: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["license_id"] == json!(id))
            .unwrap()
            .clone()
    };
    let r1 = row(&page, &l1);
    assert_eq!(
        (
            r1["expiring"].clone(),
            r1["expired"].clone(),
            r1["days_left"].clone()
        ),
        (json!(true), json!(false), json!(2))
    );
    assert_eq!(r1["product_name"], json!("EasyCash"));
    assert_eq!(r1["trade_name"], json!("Mercado Console"));
    assert_eq!(r1["contract_active"], Value::Null);
    assert_eq!(r1["binding"], Value::Null, "unlinked");
    assert_eq!(r1["last_ip"], json!("192.168.0.191"));
    assert_eq!(row(&page, &l2)["contract_active"], json!(true));
    assert_eq!(row(&page, &l2)["blocked"], json!(true));
    assert_eq!(row(&page, &l3)["expired"], json!(true));
    assert_eq!(row(&page, &l3)["product_name"], json!("Notify"));
    assert_eq!(row(&page, &l4)["trade_name"], json!("Padaria Console"));

    let by_expiry = w.get("/v1/license-table?sort=expires_on").await;
    assert_eq!(
        ids(&by_expiry),
        [l3.as_str(), l1.as_str(), l2.as_str(), l4.as_str()]
    );
    let desc = w.get("/v1/license-table?sort=expires_on&order=desc").await;
    assert_eq!(
        ids(&desc),
        [l4.as_str(), l2.as_str(), l1.as_str(), l3.as_str()]
    );
    // Sorted over every matching row, then cut into pages.
    let second = w
        .get("/v1/license-table?sort=expires_on&offset=2&limit=1")
        .await;
    assert_eq!(
        (ids(&second), second["total"].clone()),
        (vec![l2.clone()], json!(4))
    );
    let blocked_first = w.get("/v1/license-table?sort=blocked&order=desc").await;
    assert_eq!(ids(&blocked_first)[0], l2);
    // The filters of GET /v1/licenses.
    let a_easycash = w
        .get(&format!(
            "/v1/license-table?cnpj={}&product=easycash&sort=product",
            w.a
        ))
        .await;
    assert_eq!(ids(&a_easycash), [l1.as_str(), l2.as_str()]);
    let expiring = w.get("/v1/license-table?expiring_within_days=3").await;
    assert_eq!(ids(&expiring), [l1.as_str()]);
    let expired = w.get("/v1/license-table?status=expired").await;
    assert_eq!(ids(&expired), [l3.as_str()]);

    w.bad("/v1/license-table?sort=color").await;
    w.bad("/v1/license-table?order=up").await;
    w.bad("/v1/license-table?status=sleepy").await;
    w.bad("/v1/license-table?limit=501").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_license_table_as_of_a_moment_shows_the_old_state() {
    let w = World::new().await;
    let [l1, l2, ..] = w.l.clone();
    let row = |page: &Value, id: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["license_id"] == json!(id))
            .unwrap()
            .clone()
    };
    // Half an hour after t0: L1 bound, L2 not yet blocked.
    let then = w
        .get(&format!("/v1/license-table?as_of={}", urlencode(&at(30))))
        .await;
    assert_eq!(then["total"], json!(4));
    assert_eq!(then["as_of"], json!("2026-03-01T10:30:00Z"));
    assert!(then["position"].as_u64().unwrap() < w.blocked_at);
    assert_eq!(
        row(&then, &l1)["binding"]["hardware_key"],
        json!("88A7B56C2B3F326F91362A182483F63E")
    );
    assert_eq!(row(&then, &l2)["blocked"], json!(false));
    // An hour and a half after: blocked, still bound.
    let later = w
        .get(&format!("/v1/license-table?as_of={}", urlencode(&at(90))))
        .await;
    assert_eq!(row(&later, &l2)["blocked"], json!(true));
    assert!(row(&later, &l1)["binding"].is_object());
    assert!(later["position"].as_u64().unwrap() < w.unlinked_at);
    // Filters and sorting apply to the past table too.
    let blocked_then = w
        .get(&format!(
            "/v1/license-table?as_of={}&status=blocked",
            urlencode(&at(30))
        ))
        .await;
    assert_eq!(blocked_then["total"], json!(0));
    // Before anything was recorded.
    let before = w.get("/v1/license-table?as_of=2020-01-01T00:00:00Z").await;
    assert_eq!(before["total"], json!(0));
    w.bad("/v1/license-table?as_of=yesterday").await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

// ---- /v1/events/search ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_filters_like_the_log_monitor() {
    let w = World::new().await;
    let head = w.app.head().await;

    let all = w.get("/v1/events/search?limit=500").await;
    let every = positions(&all);
    assert_eq!(every.len() as u64, head, "the whole log, newest first");
    assert!(every.windows(2).all(|p| p[0] == p[1] + 1));
    assert_eq!(all["next_before"], Value::Null);
    assert_eq!(all["head_position"], json!(head));

    let blocked = w.get("/v1/events/search?type=LicenseBlocked").await;
    assert_eq!(positions(&blocked), [w.blocked_at]);
    let item = &blocked["items"][0];
    assert_eq!(item["cnpj"], json!(w.a));
    assert_eq!(item["category"], json!("license"));
    assert_eq!(item["stream_id"], json!(format!("license-{}", w.l[1])));
    assert!(
        item["actor"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("suporte-console #")),
        "{item}"
    );
    assert_eq!(item["description"], json!("Bloqueada: falta de pagamento"));
    assert_eq!(item["recorded_at"], json!("2026-03-01T11:00:00Z"));
    assert_eq!(item["hash"].as_str().unwrap().len(), 64);

    // B's events only: its registration and its license.
    let of_b = w.get(&format!("/v1/events/search?cnpj={}", w.b)).await;
    let types: Vec<&str> = of_b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["LicenseGranted", "CustomerRegistered"]);
    let contracts = w.get("/v1/events/search?category=contract").await;
    assert_eq!(contracts["items"].as_array().unwrap().len(), 1);
    assert_eq!(contracts["items"][0]["cnpj"], json!(w.a));
    let checkins = w
        .get(&format!("/v1/events/search?category=terminal&cnpj={}", w.a))
        .await;
    assert_eq!(
        checkins["items"][0]["event_type"],
        json!("TerminalCheckedIn")
    );

    // Time range: after t0 + 30 min only the block and the unlink; until then, the rest.
    let late = w
        .get(&format!("/v1/events/search?since={}", urlencode(&at(30))))
        .await;
    assert_eq!(positions(&late), [w.unlinked_at, w.blocked_at]);
    let early = w
        .get(&format!(
            "/v1/events/search?until={}&limit=500",
            urlencode(&at(30))
        ))
        .await;
    assert_eq!(positions(&early), every[2..].to_vec());
    let window = w
        .get(&format!(
            "/v1/events/search?since={}&until={}",
            urlencode(&at(60)),
            urlencode(&at(60))
        ))
        .await;
    assert_eq!(positions(&window), [w.blocked_at], "both ends included");

    // Position range and pages: the cursor goes on where the page stopped, nothing repeats.
    let range = w
        .get("/v1/events/search?from_position=3&to_position=5")
        .await;
    assert_eq!(positions(&range), [5, 4, 3]);
    let mut seen = Vec::new();
    let mut path = "/v1/events/search?limit=4".to_owned();
    loop {
        let page = w.get(&path).await;
        seen.extend(positions(&page));
        match page["next_before"].as_u64() {
            Some(before) => path = format!("/v1/events/search?limit=4&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen, every);

    w.bad("/v1/events/search?type=LicenseStolen").await;
    w.bad("/v1/events/search?category=weather").await;
    w.bad("/v1/events/search?cnpj=123").await;
    w.bad("/v1/events/search?since=ontem").await;
    w.bad("/v1/events/search?limit=501").await;
}

// ---- /v1/dashboard ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_statuses_expiries_and_check_ins_per_hour() {
    let w = World::new().await;
    let d = w.get("/v1/dashboard").await;
    assert_eq!(d["today"], json!("2026-03-01"));
    assert_eq!(
        d["licenses"],
        json!({"total": 4, "active": 2, "blocked": 1, "deactivated": 0, "expired": 1,
               "free": 4, "bound": 0})
    );
    let expiring = d["expiring"].as_array().unwrap();
    assert_eq!(expiring.len(), 31, "today and the next 30 days");
    assert_eq!(expiring[0]["day"], json!("2026-03-01"));
    let count = |day: &str| {
        expiring
            .iter()
            .find(|e| e["day"] == json!(day))
            .map(|e| e["count"].as_u64().unwrap())
    };
    assert_eq!(count("2026-03-03"), Some(1));
    assert_eq!(count("2026-03-21"), Some(1));
    let total: u64 = expiring.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 2, "L4 expires after 30 days, L3 before today");

    // The clock is at 12:00: 24 buckets from 13:00 the day before; the check-in was at 10:00.
    let hours = d["check_ins"]["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert_eq!(d["check_ins"]["from"], json!("2026-02-28T13:00:00Z"));
    assert_eq!(
        hours[21],
        json!({"hour": "2026-03-01T10:00:00Z", "count": 1})
    );
    let sum: u64 = hours.iter().map(|h| h["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, 1);
    assert_eq!(d["check_ins"]["truncated"], json!(false));

    let week = w.get("/v1/dashboard?days=7").await;
    assert_eq!(week["expiring"].as_array().unwrap().len(), 8);
    w.bad("/v1/dashboard?days=91").await;
}

// ---- /v1/audit/verify ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_now_streams_progress_then_the_verdict_on_the_head() {
    let w = World::new().await;
    let res = w
        .app
        .client
        .get(format!("{}/v1/audit/verify", w.app.base))
        .bearer_auth(&w.support)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let head = w.get("/v1/audit/head").await;
    let (last, progress) = lines.split_last().unwrap();
    assert!(!progress.is_empty(), "progress before the verdict: {text}");
    for p in progress {
        assert_eq!(p["done"], json!(false));
        assert_eq!(p["head_position"], head["head_position"]);
    }
    assert_eq!(
        *last,
        json!({"done": true, "ok": true, "checked": head["head_position"],
               "head_position": head["head_position"], "head_hash": head["head_hash"]})
    );
}
