//! The check-in rules of shared/DOMAIN.md ("Check-in rules", "Renewal", "Contingency",
//! "Offline activation") end to end: the real server (harness: tests/common/mod.rs) on a
//! [`ManualClock`], a terminal token, `POST /v1/checkin`. Every answer is checked whole: HTTP
//! status, outcome code, the exact pt-BR texts, the date shown, the days left, the resources,
//! and the Ed25519 signature under the key `GET /v1/keys` publishes. Time only moves when a
//! test moves the clock; nothing sleeps.
//!
//! The texts below are copied from DOMAIN.md on purpose, not taken from
//! `ledger_events::texts`: a changed text must fail here. Tests named `rule_N_...` cover the
//! rule of that number.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ledger_events::answer::{SignedAnswer, Subject, VerifyingKey};
use ledger_events::{Cnpj, HardwareId, Product};
use license_ledger::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::{fresh_hardware_id, fresh_hardware_key, fresh_serial, next, TestApp};

/// The customer every test checks in for.
const CNPJ: &str = "11222333000181";
/// A valid CNPJ nobody registered (until a test does).
const OTHER_CNPJ: &str = "11444777000161";
/// The day every test starts on; the clock stands at noon UTC.
const START: &str = "2030-03-10";

// ---- the texts, copied from DOMAIN.md ----

/// Rule 1.
const USUARIO_INVALIDO: &str = "Usuário inválido.";
/// Rule 2 (no final period, as in the manual).
const ASSINATURA_INVALIDA: &str = "Assinatura do token inválida";
/// The AVISO of a 401 (manual, "Cliente Inativado" and "Token inválido"), line by line.
fn aviso_401(message: &str) -> serde_json::Value {
    json!([
        "Problema encontrado na liberação!",
        "Retorno do servidor:",
        "CÓDIGO: 401",
        format!("MENSAGEM: {message}")
    ])
}
/// Rule 4.
const NAO_EFETIVADO: &str =
    "Liberação do sistema não efetivado! Por favor, entre em contato com o suporte técnico...";
/// Rule 3: DOMAIN.md leaves the wording to the design ("with a message saying so"); this is
/// the design's text, pinned so that a change is deliberate.
const NENHUMA_LICENCA: &str = "Nenhuma licença disponível para este terminal. Por favor, entre em contato com o suporte técnico...";
/// Contingency type 01.
const CONTINGENCIA_INTELLIWEB: &str = "Sistema de licenciamento em modo de contingência do IntelliWeb! Por favor, confira a conexão no servidor do IntelliWeb.";

/// Outcome codes under which a terminal may sell.
const SELLING: [&str; 4] = [
    "VALID",
    "EXPIRING",
    "CONTINGENCY_UPSTREAM",
    "CONTINGENCY_MANUAL",
];

// ---- the world ----

fn noon(date: &str) -> DateTime<Utc> {
    at(date, 12, 0, 0)
}

/// `h:m:s` on `date` on the shop's clock (Brasília, the server's default time zone): the
/// rules count the shop's days.
fn at(date: &str, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    let d: NaiveDate = date.parse().unwrap();
    chrono_tz::America::Sao_Paulo
        .from_local_datetime(&d.and_hms_opt(h, m, s).unwrap())
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// A point-of-sale terminal: hardware id and license key.
struct Terminal {
    id: String,
    key: String,
}

impl Terminal {
    fn new() -> Terminal {
        Terminal {
            id: fresh_hardware_id(),
            key: fresh_hardware_key(),
        }
    }
}

/// A check-in's answer.
struct CheckIn {
    status: StatusCode,
    body: Value,
}

impl CheckIn {
    /// What the terminal is told, in one value so that one assertion shows every difference.
    fn summary(&self) -> Value {
        json!({
            "status": self.status.as_u16(),
            "outcome": self.body["outcome"],
            "messages": self.body["messages"],
            "expires_on": self.body["expires_on"],
            "days_left": self.body["days_left"],
            "resources": self.body["resources"],
            "license_id": self.body["answer"]["license_id"],
        })
    }

    fn outcome(&self) -> &str {
        self.body["outcome"].as_str().unwrap_or("")
    }
}

/// A server on a manual clock at noon of [`START`], customer [`CNPJ`] registered, a support
/// token, a terminal token of [`CNPJ`], and the published answer key.
struct World {
    app: TestApp,
    clock: ManualClock,
    support: String,
    terminal: String,
    key: VerifyingKey,
    key_id: String,
}

impl World {
    async fn new() -> World {
        let clock = ManualClock::new(noon(START));
        let app = TestApp::spawn_with_clock(clock.clone()).await;
        app.customer(CNPJ, "Padaria Pão Quente").await;
        let support = app.named_token("suporte", "support", None).await;
        let terminal = app.named_token("caixa", "terminal", Some(CNPJ)).await;
        let (status, keys) = app.call("GET", "/v1/keys", None, None).await;
        assert_eq!(status, StatusCode::OK, "{keys}");
        let mut pk = [0u8; 32];
        hex::decode_to_slice(keys["public_key"].as_str().unwrap(), &mut pk).unwrap();
        World {
            app,
            clock,
            support,
            terminal,
            key: VerifyingKey::from_bytes(&pk).unwrap(),
            key_id: keys["key_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Moves the clock to noon of `date` (`YYYY-MM-DD`).
    fn travel_to(&self, date: &str) {
        self.clock.set(noon(date));
    }

    /// A command through the support API ("suporte" token) that must answer 200.
    async fn support(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, b) = self
            .app
            .call(method, path, Some(&self.support), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {b}");
        b
    }

    /// A new EasyCash license of [`CNPJ`].
    async fn license(&self, expires_on: &str, contract_id: Option<&str>) -> String {
        self.app
            .license(CNPJ, "easycash", expires_on, contract_id)
            .await
    }

    /// A contract of [`CNPJ`] from 2030-01-01: interval 30 days, renew 3 days before.
    async fn contract(&self) -> String {
        self.app.contract(CNPJ, "2030-01-01", 30, 3).await
    }

    /// The license's row in the table.
    async fn row(&self, license_id: &str) -> Value {
        self.app
            .get(&format!("/v1/licenses/{license_id}"), &self.support)
            .await
    }

    /// The license's "Histórico", newest first: (event type, description).
    async fn history(&self, license_id: &str) -> Vec<(String, String)> {
        let h = self
            .app
            .get(
                &format!("/v1/licenses/{license_id}/history?limit=500"),
                &self.support,
            )
            .await;
        h["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["event_type"].as_str().unwrap().to_owned(),
                    i["description"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The customer's contingency entries, newest first.
    async fn contingencies(&self) -> Vec<Value> {
        let page = self
            .app
            .get(&format!("/v1/contingencies?cnpj={CNPJ}"), &self.support)
            .await;
        page["items"].as_array().unwrap().clone()
    }

    /// `t` checks in for EasyCash with the terminal token of [`CNPJ`].
    async fn check_in(&self, t: &Terminal) -> CheckIn {
        self.check_in_with(Some(&self.terminal), CNPJ, "easycash", t)
            .await
    }

    /// A check-in. Whenever the answer is a signed answer, checks that it verifies with the
    /// published key and the nonce sent, and that the readable fields are the signed ones.
    async fn check_in_with(
        &self,
        token: Option<&str>,
        cnpj: &str,
        product: &str,
        t: &Terminal,
    ) -> CheckIn {
        let nonce = format!("n-{}", next());
        let body = json!({"cnpj": cnpj, "product": product, "hardware_id": t.id,
                          "hardware_key": t.key, "ip": "192.168.0.191",
                          "program_version": "2.0.12.1", "caixa": "03", "equipamento": "03",
                          "nonce": nonce});
        let (status, body) = self
            .app
            .call("POST", "/v1/checkin", token, Some(body))
            .await;
        if body.get("signature").is_some() {
            assert_eq!(body["key_id"], json!(self.key_id), "{body}");
            let signed: SignedAnswer = serde_json::from_value(body.clone()).unwrap();
            let subject = Subject {
                cnpj: Cnpj::parse(cnpj).unwrap(),
                product: Product::parse(product).unwrap(),
                hardware_id: HardwareId::parse(&t.id).unwrap(),
            };
            signed
                .verify_with_nonce(&self.key, &subject, &nonce)
                .unwrap_or_else(|e| panic!("the answer does not verify ({e}): {body}"));
            for field in [
                "outcome",
                "messages",
                "expires_on",
                "days_left",
                "resources",
            ] {
                assert_eq!(body[field], body["answer"][field], "{field}: {body}");
            }
            assert_eq!(body["answer"]["hardware_id"], json!(t.id), "{body}");
            assert_eq!(body["answer"]["hardware_key"], json!(t.key), "{body}");
            assert_eq!(body["answer"]["product"], json!(product), "{body}");
            assert_eq!(body["answer"]["version"], json!(2), "{body}");
            assert_eq!(
                body["answer"]["cnpj"],
                json!(subject.cnpj.as_str()),
                "{body}"
            );
        }
        CheckIn { status, body }
    }
}

/// A selling answer of `license_id` with the plain expiry text.
fn valid(
    license_id: &str,
    shown: &str,
    expires_on: &str,
    days_left: i64,
    resources: Value,
) -> Value {
    json!({"status": 200, "outcome": "VALID",
           "messages": [format!("Licença do sistema expira no dia: {shown}")],
           "expires_on": expires_on, "days_left": days_left, "resources": resources,
           "license_id": license_id})
}

/// An answer that says rule 3's refusal.
fn no_license() -> Value {
    json!({"status": 200, "outcome": "NO_LICENSE", "messages": [NENHUMA_LICENCA],
           "expires_on": null, "days_left": null, "resources": {}, "license_id": null})
}

// ---- rule 1 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_1_an_inactive_customer_is_refused_with_401_usuario_invalido() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "31/12/2030", "2030-12-31", 296, json!({}))
    );

    w.support(
        "POST",
        &format!("/v1/customers/{CNPJ}/deactivate"),
        json!({"note": "cliente inativado"}),
    )
    .await;
    let refused = json!({"status": 401, "outcome": "CUSTOMER_INACTIVE",
                         "messages": aviso_401(USUARIO_INVALIDO), "expires_on": null,
                         "days_left": null, "resources": {}, "license_id": null});
    assert_eq!(w.check_in(&t).await.summary(), refused);
    // A terminal that never checked in is refused the same way, and binds nothing.
    let other = Terminal::new();
    assert_eq!(w.check_in(&other).await.summary(), refused);
    assert_eq!(w.row(&license).await["binding"]["hardware_id"], json!(t.id));

    // Ativo again: the terminal sells again.
    w.support("POST", &format!("/v1/customers/{CNPJ}/activate"), json!({}))
        .await;
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "31/12/2030", "2030-12-31", 296, json!({}))
    );

    // A customer nobody registered is no active customer either.
    let stranger = w
        .app
        .named_token("caixa-outro", "terminal", Some(OTHER_CNPJ))
        .await;
    let c = w
        .check_in_with(Some(&stranger), OTHER_CNPJ, "easycash", &Terminal::new())
        .await;
    assert_eq!(c.summary(), refused);
}

/// Sales are blocked for a blocked or blacklisted customer: 200 `CUSTOMER_BLOCKED` with the
/// "não efetivado" text (rule 4's), since such a customer is still active; only an inactive
/// (or unknown) customer gets rule 1's 401 `Usuário inválido.`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_1_a_blocked_or_blacklisted_customer_cannot_sell() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    w.support(
        "PUT",
        &format!("/v1/licenses/{license}/resources"),
        json!({"resources": {"habilita_dav": true}}),
    )
    .await;
    let t = Terminal::new();
    let sells = valid(
        &license,
        "31/12/2030",
        "2030-12-31",
        296,
        json!({"habilita_dav": true}),
    );
    assert_eq!(w.check_in(&t).await.summary(), sells);

    for (on, off) in [("block", "unblock"), ("blacklist", "unblacklist")] {
        w.support("POST", &format!("/v1/customers/{CNPJ}/{on}"), json!({}))
            .await;
        let c = w.check_in(&t).await;
        assert!(!SELLING.contains(&c.outcome()), "{on}: {}", c.body);
        assert_eq!(c.body["resources"], json!({}), "{on}: {}", c.body);
        assert_eq!(
            c.body["answer"]["license_id"],
            json!(null),
            "{on}: {}",
            c.body
        );
        assert_eq!(c.status, StatusCode::OK, "{on}: {}", c.body);
        assert_eq!(c.outcome(), "CUSTOMER_BLOCKED", "{on}: {}", c.body);
        assert_eq!(
            c.body["messages"],
            json!([NAO_EFETIVADO]),
            "{on}: {}",
            c.body
        );
        w.support("POST", &format!("/v1/customers/{CNPJ}/{off}"), json!({}))
            .await;
        assert_eq!(w.check_in(&t).await.summary(), sells, "after {off}");
    }
}

// ---- rule 2 ----

/// Credentials this server never issued: (what, the bearer token sent, if any).
fn forged_tokens(genuine: &str) -> Vec<(&'static str, Option<String>)> {
    let mut tampered = genuine.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    vec![
        ("no token", None),
        (
            "a token of no one",
            Some("llt_not-a-token-of-this-server".into()),
        ),
        ("the terminal's token, last digit changed", Some(tampered)),
        (
            "the terminal's token, cut short",
            Some(genuine[..genuine.len() - 1].to_owned()),
        ),
        (
            "the terminal's token, one digit added",
            Some(format!("{genuine}0")),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_2_a_wrong_or_tampered_token_is_refused_with_401_and_changes_nothing() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let t = Terminal::new();
    let head = w.app.head().await;

    for (what, token) in forged_tokens(&w.terminal) {
        let c = w
            .check_in_with(token.as_deref(), CNPJ, "easycash", &t)
            .await;
        assert_eq!(c.status, StatusCode::UNAUTHORIZED, "{what}: {}", c.body);
        assert_eq!(
            c.body["error"],
            json!("unauthenticated"),
            "{what}: {}",
            c.body
        );
        assert!(c.body.get("answer").is_none(), "{what}: {}", c.body);
    }
    assert_eq!(w.app.head().await, head, "refused check-ins write nothing");
    assert_eq!(w.row(&license).await["binding"], json!(null));

    // The genuine token is answered (the refusals were about the token alone).
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "31/12/2030", "2030-12-31", 296, json!({}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_2_a_wrong_or_tampered_token_is_told_assinatura_do_token_invalida() {
    let w = World::new().await;
    w.license("2030-12-31", None).await;
    let t = Terminal::new();
    for (what, token) in forged_tokens(&w.terminal) {
        let c = w
            .check_in_with(token.as_deref(), CNPJ, "easycash", &t)
            .await;
        assert_eq!(c.status, StatusCode::UNAUTHORIZED, "{what}: {}", c.body);
        // The error shape's `message`, or the answer shape's first message.
        let text = c
            .body
            .get("message")
            .or_else(|| c.body["messages"].get(0))
            .and_then(Value::as_str);
        assert_eq!(text, Some(ASSINATURA_INVALIDA), "{what}: {}", c.body);
        assert_eq!(
            c.body["messages"],
            aviso_401(ASSINATURA_INVALIDA),
            "{what}: the AVISO the terminal shows"
        );
    }
}

/// A genuine terminal token used for another customer's CNPJ. DOMAIN rule 2 would call it a
/// bad credential (401 `Assinatura do token inválida`); ARCHITECTURE.md ("A terminal token
/// acts only for its CNPJ; another customer's data answers 404") and tests/api_roles.rs pin
/// 404, indistinguishable from a CNPJ nobody registered. This test keeps the part both agree
/// on: no answer for that customer, nothing written, nothing bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_2_a_terminal_token_of_another_cnpj_gets_no_answer_for_that_customer() {
    let w = World::new().await;
    w.app.customer(OTHER_CNPJ, "Mercado Vizinho").await;
    let theirs = w
        .app
        .license(OTHER_CNPJ, "easycash", "2030-12-31", None)
        .await;
    let t = Terminal::new();
    let head = w.app.head().await;

    let c = w
        .check_in_with(Some(&w.terminal), OTHER_CNPJ, "easycash", &t)
        .await;
    assert_eq!(c.status, StatusCode::NOT_FOUND, "{}", c.body);
    assert_eq!(c.body["error"], json!("not_found"), "{}", c.body);
    assert!(c.body.get("answer").is_none(), "{}", c.body);
    let nobody = w
        .check_in_with(Some(&w.terminal), "45723174000110", "easycash", &t)
        .await;
    assert_eq!(
        (c.status, &c.body),
        (nobody.status, &nobody.body),
        "the other customer's existence must not show"
    );
    assert_eq!(w.app.head().await, head);
    assert_eq!(w.row(&theirs).await["binding"], json!(null));
}

// ---- rule 3 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_3_first_check_ins_bind_free_licenses_in_order_and_a_terminal_with_none_is_told_so() {
    let w = World::new().await;
    let first = w.license("2030-12-31", None).await;
    let second = w.license("2030-12-31", None).await;
    let notify = w.app.license(CNPJ, "notify", "2030-12-31", None).await;
    let (t1, t2, t3) = (Terminal::new(), Terminal::new(), Terminal::new());

    // The first terminal binds the first free license, the second the next one.
    assert_eq!(
        w.check_in(&t1).await.summary(),
        valid(&first, "31/12/2030", "2030-12-31", 296, json!({}))
    );
    assert_eq!(
        w.check_in(&t2).await.summary(),
        valid(&second, "31/12/2030", "2030-12-31", 296, json!({}))
    );
    for (license, t) in [(&first, &t1), (&second, &t2)] {
        let row = w.row(license).await;
        assert_eq!(row["binding"]["hardware_id"], json!(t.id), "{row}");
        assert_eq!(row["binding"]["hardware_key"], json!(t.key), "{row}");
        assert_eq!(row["binding"]["ip"], json!("192.168.0.191"), "{row}");
    }
    // The third finds none free.
    assert_eq!(w.check_in(&t3).await.summary(), no_license());
    // Bound terminals keep theirs.
    assert_eq!(
        w.check_in(&t1).await.body["answer"]["license_id"],
        json!(first)
    );
    assert_eq!(
        w.check_in(&t2).await.body["answer"]["license_id"],
        json!(second)
    );
    // A product the customer has no license of, for a bound terminal too.
    let c = w
        .check_in_with(Some(&w.terminal), CNPJ, "intellistock", &t1)
        .await;
    assert_eq!(c.summary(), no_license());
    // Another product's license was never taken.
    assert_eq!(w.row(&notify).await["binding"], json!(null));
    // The Histórico tells the bind.
    let bound = format!(
        "Associada ao terminal {} (IP 192.168.0.191, caixa 03, equipamento 03)",
        t1.id
    );
    let history = w.history(&first).await;
    assert!(history.iter().any(|(_, d)| *d == bound), "{history:?}");
}

/// The terminal's key is part of its identity: another key presented with a bound terminal's
/// hardware id does not get that terminal's license (nor a free one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_3_another_key_for_a_bound_hardware_id_gets_no_license() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    w.license("2030-12-31", None).await;
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "31/12/2030", "2030-12-31", 296, json!({}))
    );
    let impostor = Terminal {
        id: t.id.clone(),
        key: fresh_hardware_key(),
    };
    assert_eq!(w.check_in(&impostor).await.summary(), no_license());
    assert_eq!(
        w.row(&license).await["binding"]["hardware_key"],
        json!(t.key)
    );
}

// ---- rule 4 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_4_a_blocked_license_is_not_released_and_sales_are_blocked() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    w.support(
        "PUT",
        &format!("/v1/licenses/{license}/resources"),
        json!({"resources": {"habilita_dav": true}}),
    )
    .await;
    let t = Terminal::new();
    let sells = valid(
        &license,
        "31/12/2030",
        "2030-12-31",
        296,
        json!({"habilita_dav": true}),
    );
    assert_eq!(w.check_in(&t).await.summary(), sells);

    w.support(
        "POST",
        &format!("/v1/licenses/{license}/block"),
        json!({"note": "inadimplente"}),
    )
    .await;
    assert_eq!(
        w.check_in(&t).await.summary(),
        json!({"status": 200, "outcome": "BLOCKED", "messages": [NAO_EFETIVADO],
               "expires_on": "2030-12-31", "days_left": 296, "resources": {},
               "license_id": license})
    );

    w.support(
        "POST",
        &format!("/v1/licenses/{license}/unblock"),
        json!({}),
    )
    .await;
    assert_eq!(w.check_in(&t).await.summary(), sells);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_4_a_deactivated_license_is_not_released_and_sales_are_blocked() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let t = Terminal::new();
    let sells = valid(&license, "31/12/2030", "2030-12-31", 296, json!({}));
    assert_eq!(w.check_in(&t).await.summary(), sells);

    w.support(
        "POST",
        &format!("/v1/licenses/{license}/deactivate"),
        json!({}),
    )
    .await;
    assert_eq!(
        w.check_in(&t).await.summary(),
        json!({"status": 200, "outcome": "DEACTIVATED", "messages": [NAO_EFETIVADO],
               "expires_on": "2030-12-31", "days_left": 296, "resources": {},
               "license_id": license})
    );

    w.support(
        "POST",
        &format!("/v1/licenses/{license}/reactivate"),
        json!({}),
    )
    .await;
    assert_eq!(w.check_in(&t).await.summary(), sells);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_4_an_expired_license_is_not_released_and_sales_are_blocked() {
    let w = World::new().await;
    let contract = w.contract().await;
    let license = w.license("2030-03-20", Some(&contract)).await;
    w.support(
        "PUT",
        &format!("/v1/licenses/{license}/resources"),
        json!({"resources": {"habilita_dav": true}}),
    )
    .await;
    // The contract is inactive, so nothing renews the license.
    w.support(
        "POST",
        &format!("/v1/contracts/{contract}/deactivate"),
        json!({}),
    )
    .await;
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(
            &license,
            "20/03/2030",
            "2030-03-20",
            10,
            json!({"habilita_dav": true})
        )
    );

    w.travel_to("2030-03-21");
    let expired = json!({"status": 200, "outcome": "EXPIRED", "messages": [NAO_EFETIVADO, "Licença do sistema expira no dia: 20/03/2030"],
                         "expires_on": "2030-03-20", "days_left": -1, "resources": {},
                         "license_id": license});
    assert_eq!(w.check_in(&t).await.summary(), expired);
    w.travel_to("2030-06-01");
    let c = w.check_in(&t).await;
    assert_eq!(c.outcome(), "EXPIRED", "{}", c.body);
    assert_eq!(c.body["messages"], expired["messages"]);
    assert_eq!(c.body["days_left"], json!(-73));
    assert_eq!(w.row(&license).await["expires_on"], json!("2030-03-20"));
}

// ---- rule 5 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_5_a_valid_license_answers_its_expiry_and_its_resources() {
    let w = World::new().await;
    let b = w
        .app
        .admin(
            "POST",
            "/v1/licenses",
            json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2030-12-31",
                   "resources": {"habilita_dav": true}}),
        )
        .await;
    let license = b["license_id"].as_str().unwrap().to_owned();
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(
            &license,
            "31/12/2030",
            "2030-12-31",
            296,
            json!({"habilita_dav": true})
        )
    );

    // Support changes "Recursos": the next answer carries the new set.
    w.support(
        "PUT",
        &format!("/v1/licenses/{license}/resources"),
        json!({"resources": {"habilita_dav": false, "habilita_preventa": true}}),
    )
    .await;
    w.travel_to("2030-03-11");
    let c = w.check_in(&t).await;
    assert_eq!(
        c.summary(),
        valid(
            &license,
            "31/12/2030",
            "2030-12-31",
            295,
            json!({"habilita_dav": false, "habilita_preventa": true})
        )
    );

    // The signature covers what the terminal acts on.
    let signed: SignedAnswer = serde_json::from_value(c.body.clone()).unwrap();
    let mut later = signed.clone();
    later.answer.expires_on = Some("2031-12-31".parse().unwrap());
    assert!(later.verify_signature(&w.key).is_err());
    let mut reworded = signed.clone();
    reworded.answer.messages[0] = "Licença do sistema expira no dia: 31/12/2031".into();
    assert!(reworded.verify_signature(&w.key).is_err());
    let mut more = c.body.clone();
    more["answer"]["resources"]["habilita_dav"] = json!(true);
    let more: SignedAnswer = serde_json::from_value(more).unwrap();
    assert!(more.verify_signature(&w.key).is_err());
    signed.verify_signature(&w.key).unwrap();
}

// ---- rule 6 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_6_three_days_or_fewer_left_adds_the_faltam_nn_dias_warning_and_the_license_date() {
    let w = World::new().await;
    let contract = w.contract().await;
    let license = w.license("2030-03-20", Some(&contract)).await;
    w.support(
        "PUT",
        &format!("/v1/licenses/{license}/resources"),
        json!({"resources": {"habilita_dav": true}}),
    )
    .await;
    w.support(
        "POST",
        &format!("/v1/contracts/{contract}/deactivate"),
        json!({}),
    )
    .await;
    let t = Terminal::new();
    let resources = json!({"habilita_dav": true});

    // 4 days left, to the last second of the day: no warning.
    for now in [at("2030-03-16", 0, 0, 0), at("2030-03-16", 23, 59, 59)] {
        w.clock.set(now);
        assert_eq!(
            w.check_in(&t).await.summary(),
            valid(&license, "20/03/2030", "2030-03-20", 4, resources.clone()),
            "at {now}"
        );
    }
    // 3, 2, 1, 0 days left: the warning, with two digits, and the license's date.
    for (now, nn) in [
        (at("2030-03-17", 0, 0, 0), 3),
        (noon("2030-03-18"), 2),
        (noon("2030-03-19"), 1),
        (at("2030-03-20", 23, 59, 59), 0),
    ] {
        w.clock.set(now);
        assert_eq!(
            w.check_in(&t).await.summary(),
            json!({"status": 200, "outcome": "EXPIRING",
                   "messages": ["Licença do sistema expira no dia: 20/03/2030",
                                format!("Faltam [0{nn}] dias para expirar a licença!"),
                                "DATA DA LICENÇA: 20/03/2030"],
                   "expires_on": "2030-03-20", "days_left": nn, "resources": resources,
                   "license_id": license}),
            "at {now}"
        );
    }
    assert_eq!(w.row(&license).await["expires_on"], json!("2030-03-20"));
}

// ---- rule 7 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_7_an_inactive_contract_does_not_renew_and_the_license_runs_out_at_its_expiry() {
    let w = World::new().await;
    let contract = w.contract().await;
    let license = w.license("2030-03-20", Some(&contract)).await;
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "20/03/2030", "2030-03-20", 10, json!({}))
    );
    w.support(
        "POST",
        &format!("/v1/contracts/{contract}/deactivate"),
        json!({"note": "contrato suspenso"}),
    )
    .await;

    // Inside the renew-before window: still valid until its own expiry, not renewed.
    w.travel_to("2030-03-17");
    let c = w.check_in(&t).await;
    assert_eq!(c.outcome(), "EXPIRING", "{}", c.body);
    assert_eq!(c.body["expires_on"], json!("2030-03-20"), "{}", c.body);
    assert_eq!(c.body["days_left"], json!(3), "{}", c.body);
    w.travel_to("2030-03-20");
    let c = w.check_in(&t).await;
    assert_eq!(c.outcome(), "EXPIRING", "{}", c.body);
    assert_eq!(c.body["days_left"], json!(0), "{}", c.body);
    assert_eq!(
        c.body["messages"][1],
        json!("Faltam [00] dias para expirar a licença!")
    );
    // Then rule 4.
    w.travel_to("2030-03-21");
    assert_eq!(
        w.check_in(&t).await.summary(),
        json!({"status": 200, "outcome": "EXPIRED", "messages": [NAO_EFETIVADO, "Licença do sistema expira no dia: 20/03/2030"],
               "expires_on": "2030-03-20", "days_left": -1, "resources": {},
               "license_id": license})
    );
    assert_eq!(w.row(&license).await["expires_on"], json!("2030-03-20"));
    let history = w.history(&license).await;
    assert!(
        !history
            .iter()
            .any(|(_, d)| d.starts_with("Licença renovada")),
        "{history:?}"
    );
}

// ---- renewal ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_an_active_contract_moves_expiry_forward_by_its_interval_within_the_window() {
    let mut w = World::new().await;
    let contract = w.contract().await;
    let license = w.license("2030-03-20", Some(&contract)).await;
    let t = Terminal::new();

    // 4 days left: outside the 3-day window, nothing renews.
    w.travel_to("2030-03-16");
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "20/03/2030", "2030-03-20", 4, json!({}))
    );
    assert_eq!(w.row(&license).await["expires_on"], json!("2030-03-20"));

    // 3 days left: the check-in renews by 30 days and answers the new expiry.
    w.travel_to("2030-03-17");
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "19/04/2030", "2030-04-19", 33, json!({}))
    );
    assert_eq!(w.row(&license).await["expires_on"], json!("2030-04-19"));
    let renewed = format!("Licença renovada até 19/04/2030 (contrato {contract})");
    let history = w.history(&license).await;
    assert_eq!(
        history
            .iter()
            .filter(|(_, d)| d.starts_with("Licença renovada"))
            .count(),
        1,
        "{history:?}"
    );
    assert!(history.iter().any(|(_, d)| *d == renewed), "{history:?}");

    // Again the same day: already past the window, no second renewal.
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "19/04/2030", "2030-04-19", 33, json!({}))
    );
    // The next window renews again, from the current expiry.
    w.travel_to("2030-04-16");
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "19/05/2030", "2030-05-19", 33, json!({}))
    );
    let history = w.history(&license).await;
    let renewals: Vec<&String> = history
        .iter()
        .filter(|(_, d)| d.starts_with("Licença renovada"))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        renewals,
        [
            &format!("Licença renovada até 19/05/2030 (contrato {contract})"),
            &renewed
        ],
        "newest first"
    );

    // A restart (same data, same clock) keeps the renewed expiry.
    w.app.restart().await;
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "19/05/2030", "2030-05-19", 33, json!({}))
    );
}

/// The license's newest Histórico entry that renews it: (actor kind, actor name, description).
async fn last_renewal(w: &World, license: &str) -> (String, String, String) {
    let h = w
        .app
        .get(
            &format!("/v1/licenses/{license}/history?limit=500"),
            &w.support,
        )
        .await;
    let entry = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["event_type"] == json!("LicenseRenewed"))
        .unwrap_or_else(|| panic!("no renewal in {h}"));
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    (
        text(&entry["actor"]["kind"]),
        text(&entry["actor"]["name"]),
        text(&entry["description"]),
    )
}

/// How many times the license was renewed.
async fn renewals(w: &World, license: &str) -> usize {
    w.history(license)
        .await
        .iter()
        .filter(|(t, _)| t == "LicenseRenewed")
        .count()
}

/// Manual, "Contrato": every product of the contract carries the renewed date, also the ones
/// no terminal checks in for. The server's automatic pass renews them as `renovação
/// automática`, once, however often it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrato_every_product_of_the_contract_renews_without_a_check_in() {
    let mut w = World::new().await;
    let contract = w.contract().await;
    let pos = w.license("2030-03-20", Some(&contract)).await;
    let nfe = w
        .app
        .license(CNPJ, "nfe", "2030-03-20", Some(&contract))
        .await;
    let tef = w
        .app
        .license(CNPJ, "tef_iws", "2030-03-20", Some(&contract))
        .await;
    let loose = w.license("2030-03-20", None).await;
    w.support(
        "POST",
        &format!("/v1/licenses/{tef}/deactivate"),
        json!({"note": "cancelado"}),
    )
    .await;

    // Outside the window (4 days left), a pass renews nothing.
    w.travel_to("2030-03-16");
    w.app
        .restart_with(|s| s.renewal_every = Some(std::time::Duration::from_millis(50)))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for id in [&pos, &nfe, &tef, &loose] {
        assert_eq!(renewals(&w, id).await, 0, "{id}");
    }

    // In the window, with no terminal checking in: both products of the contract renew.
    w.travel_to("2030-03-17");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.row(&nfe).await["expires_on"] != json!("2030-04-19") {
        assert!(std::time::Instant::now() < deadline, "the pass never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Several more passes: still once each.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for id in [&pos, &nfe] {
        assert_eq!(w.row(id).await["expires_on"], json!("2030-04-19"), "{id}");
        assert_eq!(renewals(&w, id).await, 1, "{id}");
        assert_eq!(
            last_renewal(&w, id).await,
            (
                "system".to_owned(),
                "renovação automática".to_owned(),
                format!("Licença renovada até 19/04/2030 (contrato {contract})")
            )
        );
    }
    // A deactivated license and one without a contract do not renew.
    assert_eq!(w.row(&tef).await["expires_on"], json!("2030-03-20"));
    assert_eq!(w.row(&loose).await["expires_on"], json!("2030-03-20"));
    // A terminal checking in now finds the renewed date and renews nothing more.
    let t = Terminal::new();
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&pos, "19/04/2030", "2030-04-19", 33, json!({}))
    );
    assert_eq!(renewals(&w, &pos).await, 1);
}

/// `POST /v1/contracts/{id}/renew`: the same rule, now, for one contract; a retry answers the
/// same renewals and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrato_renew_now_renews_the_due_licenses_of_that_contract_once() {
    let w = World::new().await;
    let contract = w.contract().await;
    let other = w.contract().await;
    let due = w.license("2030-03-20", Some(&contract)).await;
    let later = w.license("2030-05-20", Some(&contract)).await;
    let elsewhere = w.license("2030-03-20", Some(&other)).await;

    w.travel_to("2030-03-18");
    let path = format!("/v1/contracts/{contract}/renew");
    let command_id = uuid::Uuid::now_v7();
    let first = w
        .support("POST", &path, json!({"command_id": command_id}))
        .await;
    assert_eq!(first["contract_id"], json!(contract), "{first}");
    let renewed = first["renewed"].as_array().unwrap();
    assert_eq!(renewed.len(), 1, "{first}");
    assert_eq!(renewed[0]["license_id"], json!(due));
    assert_eq!(renewed[0]["previous_expiry"], json!("2030-03-20"));
    assert_eq!(renewed[0]["expires_on"], json!("2030-04-19"));
    assert_eq!(first["position"], renewed[0]["position"]);
    assert_eq!(first["was_retry"], json!(false));
    assert_eq!(w.row(&due).await["expires_on"], json!("2030-04-19"));
    assert_eq!(w.row(&later).await["expires_on"], json!("2030-05-20"));
    assert_eq!(w.row(&elsewhere).await["expires_on"], json!("2030-03-20"));
    let (kind, name, _) = last_renewal(&w, &due).await;
    assert_eq!(kind, "operator");
    assert!(
        name.starts_with("suporte #"),
        "the token that acted: {name}"
    );

    // The retry answers the same renewal; nothing new is recorded.
    let again = w
        .support("POST", &path, json!({"command_id": command_id}))
        .await;
    assert_eq!(again["renewed"], first["renewed"]);
    assert_eq!(again["was_retry"], json!(true));
    assert_eq!(renewals(&w, &due).await, 1);
    // A new call: nothing is due any more.
    let none = w.support("POST", &path, json!({})).await;
    assert_eq!(none["renewed"], json!([]), "{none}");
    assert_eq!(none["position"], json!(0), "{none}");

    // Bad input names the problem and records nothing.
    let (status, body) = w
        .app
        .call(
            "POST",
            "/v1/contracts/999999/renew",
            Some(&w.support),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = w
        .app
        .call("POST", &path, Some(&w.support), Some(json!({"note": "x"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("note"), "{body}");
}

// ---- contingency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contingency_02_the_next_check_in_after_an_offline_activation_closes_the_manual_contingency(
) {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let t = Terminal::new();
    assert_eq!(w.check_in(&t).await.status, StatusCode::OK);

    // 1. Support unlinks the license; 3. "Ativar Offline" for the terminal's serial.
    w.support(
        "POST",
        &format!("/v1/licenses/{license}/unlink"),
        json!({"note": "terminal sem conexão"}),
    )
    .await;
    let issued = w
        .support(
            "POST",
            "/v1/offline-activations",
            json!({"serial": fresh_serial(), "product": "easycash", "cnpj": CNPJ,
                   "license_id": license, "caixa": "03", "equipamento": "03"}),
        )
        .await;
    let grouped = issued["counter_key"].as_str().unwrap();
    assert_eq!(grouped.len(), 19, "{issued}");
    assert_eq!(grouped.split(' ').count(), 4, "{issued}");
    assert_eq!(
        issued["valid_until"],
        json!("2030-03-11"),
        "one day: {issued}"
    );
    let open = w.contingencies().await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["kind"], json!("manual"));
    assert_eq!(open[0]["hardware_id"], json!(t.id));
    assert_eq!(open[0]["license_id"], json!(license));
    assert_eq!(open[0]["cleared_at"], json!(null));

    // 5. The link is fixed: the next check-in sells and replaces the manual contingency.
    w.clock.advance(chrono::Duration::hours(3));
    assert_eq!(
        w.check_in(&t).await.summary(),
        valid(&license, "31/12/2030", "2030-12-31", 296, json!({}))
    );
    let after = w.contingencies().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["entered_position"], open[0]["entered_position"]);
    assert_eq!(
        after[0]["cleared_at"],
        // Noon in Brasília plus the three hours above.
        json!("2030-03-10T18:00:00Z"),
        "{after:?}"
    );
    let open_now = w
        .app
        .get(
            &format!("/v1/contingencies?cnpj={CNPJ}&open_only=true"),
            &w.support,
        )
        .await;
    assert_eq!(open_now["total"], json!(0), "{open_now}");
    let history = w.history(&license).await;
    let ended = format!("Contingência manual encerrada no terminal {}", t.id);
    assert!(history.iter().any(|(_, d)| *d == ended), "{history:?}");
    assert!(
        history
            .iter()
            .any(|(_, d)| d.starts_with("Contingência manual iniciada")),
        "{history:?}"
    );

    // Once closed, it stays closed: a further check-in changes nothing there.
    w.check_in(&t).await;
    assert_eq!(w.contingencies().await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contingency_01_sells_until_expiry_plus_7_days_then_sales_are_blocked() {
    let w = World::new().await;
    let license = w.license("2030-03-20", None).await;
    let t = Terminal::new();
    assert_eq!(w.check_in(&t).await.status, StatusCode::OK);
    w.support(
        "POST",
        "/v1/contingencies",
        json!({"cnpj": CNPJ, "kind": "intelliweb", "note": "servidor sem acesso à plataforma"}),
    )
    .await;

    let grace = |days_left: i64| {
        json!({"status": 200, "outcome": "CONTINGENCY_UPSTREAM",
               "messages": [CONTINGENCIA_INTELLIWEB,
                            "Licença do sistema expira no dia: 27/03/2030(CONTINGÊNCIA DO INTELLIWEB)",
                            "DATA DA LICENÇA: 27/03/2030"],
               "expires_on": "2030-03-27", "days_left": days_left, "resources": {},
               "license_id": license})
    };
    w.travel_to("2030-03-22");
    assert_eq!(w.check_in(&t).await.summary(), grace(5));
    w.travel_to("2030-03-27");
    assert_eq!(w.check_in(&t).await.summary(), grace(0));
    w.travel_to("2030-03-28");
    let c = w.check_in(&t).await;
    assert_eq!(c.outcome(), "GRACE_EXPIRED", "{}", c.body);
    assert_eq!(c.body["messages"], json!([NAO_EFETIVADO]), "{}", c.body);
    assert_eq!(c.body["resources"], json!({}), "{}", c.body);
}

// ---- a customer's own time zone ----

/// Manual, "licença expirada", for a shop in Manaus served by a server in Brasília: its
/// profile's zone decides its days. At 00:30 on 21/03 in Brasília it is 23:30 on 20/03 in
/// Manaus: the Manaus shop still sells on its last day, the Brasília one is expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clientes_a_customer_in_manaus_counts_its_own_days_on_a_brasilia_server() {
    let w = World::new().await;
    w.app.customer(OTHER_CNPJ, "Loja Manaus").await;
    let profile = format!("/v1/customers/{OTHER_CNPJ}/profile");
    let put_profile = async |body: Value| {
        w.app
            .call("PUT", &profile, Some(&w.support), Some(body))
            .await
    };
    let customer_row = async || {
        w.app
            .get(&format!("/v1/customers?text={OTHER_CNPJ}"), &w.support)
            .await["items"][0]
            .clone()
    };
    let (status, body) =
        put_profile(json!({"partner": "IWS", "time_zone": "America/Manaus"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let customer = customer_row().await;
    assert_eq!(customer["partner"], json!("IWS"), "{customer}");
    assert_eq!(customer["time_zone"], json!("America/Manaus"), "{customer}");

    w.license("2030-03-20", None).await;
    w.app
        .license(OTHER_CNPJ, "easycash", "2030-03-20", None)
        .await;
    w.clock.set(at("2030-03-21", 0, 30, 0));
    let brasilia = w.check_in(&Terminal::new()).await;
    assert_eq!(brasilia.outcome(), "EXPIRED", "{}", brasilia.body);
    let shop = Terminal::new();
    let manaus = w
        .check_in_with(Some(&w.app.admin), OTHER_CNPJ, "easycash", &shop)
        .await;
    assert_eq!(manaus.outcome(), "EXPIRING", "{}", manaus.body);
    assert_eq!(manaus.body["days_left"], json!(0), "{}", manaus.body);

    // An hour later it is 00:30 in Manaus too.
    w.clock.set(at("2030-03-21", 1, 30, 0));
    let manaus = w
        .check_in_with(Some(&w.app.admin), OTHER_CNPJ, "easycash", &shop)
        .await;
    assert_eq!(manaus.outcome(), "EXPIRED", "{}", manaus.body);

    // A zone the database does not know is refused naming the field; nothing changes.
    let (status, body) =
        put_profile(json!({"partner": "IWS", "time_zone": "America/Brasilia"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("time_zone"), "{body}");
    // A missing body or key never clears the profile: both keys are required (null clears).
    for (sent, field) in [
        (json!({}), "partner"),
        (json!({"partner": null}), "time_zone"),
    ] {
        let (status, body) = put_profile(sent).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], json!(field), "{body}");
    }
    let customer = customer_row().await;
    assert_eq!(customer["time_zone"], json!("America/Manaus"), "{customer}");
}

// ---- "Última Comunicação" ----

/// Manual, "Dados da Licença": `Última Comunicação IntelliWeb` is the terminal's last
/// check-in, also one that records nothing (an unchanged check-in is recorded once a day);
/// it survives a restart, and the IP column is the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ultima_comunicacao_is_the_last_check_in_even_when_nothing_is_recorded() {
    let mut w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let t = Terminal::new();
    w.clock.set(at("2030-03-10", 12, 0, 0));
    w.check_in(&t).await;
    let row = w.row(&license).await;
    assert_eq!(row["last_seen_at"], json!("2030-03-10T15:00:00Z"), "{row}");
    assert_eq!(row["last_check_in"]["at"], row["last_seen_at"]);

    w.clock.set(at("2030-03-10", 14, 30, 0));
    w.check_in(&t).await;
    let row = w.row(&license).await;
    assert_eq!(
        row["last_check_in"]["at"],
        json!("2030-03-10T15:00:00Z"),
        "an unchanged check-in is not recorded: {row}"
    );
    assert_eq!(row["last_seen_at"], json!("2030-03-10T17:30:00Z"), "{row}");
    // The table says the same.
    let table = w
        .app
        .get(&format!("/v1/license-table?text={license}"), &w.support)
        .await;
    assert_eq!(
        table["items"][0]["last_seen_at"], row["last_seen_at"],
        "{table}"
    );

    // A restart keeps it (written at shutdown).
    w.app.restart().await;
    let row = w.row(&license).await;
    assert_eq!(row["last_seen_at"], json!("2030-03-10T17:30:00Z"), "{row}");
    // As of a past moment, only the recorded check-ins are known.
    let past = w
        .app
        .get(
            &format!("/v1/licenses/{license}?as_of=2030-03-10T16:00:00Z"),
            &w.support,
        )
        .await;
    assert_eq!(
        past["last_seen_at"],
        json!("2030-03-10T15:00:00Z"),
        "{past}"
    );
    // After Desassociar there is no terminal to have communicated.
    w.support(
        "POST",
        &format!("/v1/licenses/{license}/unlink"),
        json!({"note": "troca"}),
    )
    .await;
    assert_eq!(w.row(&license).await["last_seen_at"], json!(null));
}

// ---- "Desassociar" ----

/// Manual, the case of license #1680: after Desassociar and an offline release, the terminal's
/// next check-in comes back to the same ID, although a lower one is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desassociar_the_terminal_comes_back_to_the_license_it_held() {
    let w = World::new().await;
    let low = w.license("2030-12-31", None).await;
    let high = w.license("2030-12-31", None).await;
    let (t1, t2) = (Terminal::new(), Terminal::new());
    assert_eq!(w.check_in(&t2).await.summary()["license_id"], json!(low));
    assert_eq!(w.check_in(&t1).await.summary()["license_id"], json!(high));
    for license in [&low, &high] {
        w.support(
            "POST",
            &format!("/v1/licenses/{license}/unlink"),
            json!({"note": "troca de máquina"}),
        )
        .await;
    }
    assert_eq!(w.check_in(&t1).await.summary()["license_id"], json!(high));
    assert_eq!(w.check_in(&t2).await.summary()["license_id"], json!(low));
    // A new terminal takes the lowest free one when none was its own.
    w.support(
        "POST",
        &format!("/v1/licenses/{low}/unlink"),
        json!({"note": "troca de máquina"}),
    )
    .await;
    let t3 = Terminal::new();
    assert_eq!(w.check_in(&t3).await.summary()["license_id"], json!(low));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_desassociar_frees_the_license_for_another_terminal_at_its_next_check_in() {
    let w = World::new().await;
    let license = w.license("2030-12-31", None).await;
    let (t1, t2) = (Terminal::new(), Terminal::new());
    let sells = valid(&license, "31/12/2030", "2030-12-31", 296, json!({}));
    assert_eq!(w.check_in(&t1).await.summary(), sells);
    assert_eq!(w.check_in(&t2).await.summary(), no_license());

    w.support(
        "POST",
        &format!("/v1/licenses/{license}/unlink"),
        json!({"note": "troca de máquina"}),
    )
    .await;
    assert_eq!(w.row(&license).await["binding"], json!(null));
    let history = w.history(&license).await;
    assert_eq!(
        history[0].1,
        format!("Desassociada do terminal {}: troca de máquina", t1.id),
        "{history:?}"
    );

    // The other terminal's next check-in binds it; the first one now finds none.
    assert_eq!(w.check_in(&t2).await.summary(), sells);
    let row = w.row(&license).await;
    assert_eq!(row["binding"]["hardware_id"], json!(t2.id), "{row}");
    assert_eq!(row["binding"]["hardware_key"], json!(t2.key), "{row}");
    assert_eq!(w.check_in(&t1).await.summary(), no_license());
}
