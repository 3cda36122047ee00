//! The on-premises relay end to end: a central server and a relay as separate processes of
//! the real binary on loopback, the relay reaching the center through a proxy the test can
//! cut (the link failing) and restore, and both reading the time from a clock file the test
//! moves (days of contingency in seconds).

#[path = "support/process.rs"]
mod process;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/relay_v1.rs"]
mod relay_v1;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ledger_events::answer::{RelayCertificate, SignedAnswer, Subject, VerifyingKey};
use ledger_events::{Cnpj, HardwareId, Product};
use process::{run, Process};
use proxy::Proxy;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";
const OTHER_CNPJ: &str = "11444777000161";
const EXPIRES: &str = "2031-01-31";
const START: &str = "2031-01-01T10:00:00Z";
const VALID_TEXT: &str = "Licença do sistema expira no dia: 31/01/2031";
const CONTINGENCY_TEXT: &str = "Sistema de licenciamento em modo de contingência do IntelliWeb! Por favor, confira a conexão no servidor do IntelliWeb.";
const CONTINGENCY_EXPIRY: &str =
    "Licença do sistema expira no dia: 07/02/2031(CONTINGÊNCIA DO INTELLIWEB)";
const REFRESH_FAILED: &str = "Falha ao atualizar as licenças! O sistema irá retentar em 1 hora.";
const NOT_RELEASED: &str =
    "Liberação do sistema não efetivado! Por favor, entre em contato com o suporte técnico...";

fn hw(n: u8) -> (String, String) {
    (
        format!("50026B77825EEC{n:02X}"),
        format!("88A7B56C2B3F326F91362A182483F6{n:02X}"),
    )
}

struct World {
    dir: tempfile::TempDir,
    clock_file: PathBuf,
    central: Process,
    central_admin: String,
    proxy: Proxy,
    relay: Option<Process>,
    relay_admin: String,
    relay_terminal: String,
    relay_token: String,
    http: Client,
}

impl World {
    /// A center with a customer and three licenses, a relay token, and a relay following it
    /// through a proxy, caught up and certified.
    async fn new() -> World {
        World::in_dir(tempfile::tempdir().unwrap()).await
    }

    /// The same, with both processes' data in `dir`.
    async fn in_dir(dir: tempfile::TempDir) -> World {
        let clock_file = dir.path().join("clock");
        std::fs::write(&clock_file, START).unwrap();
        let central_dir = dir.path().join("central");
        let central = Process::start(
            &[
                "--data-dir",
                central_dir.to_str().unwrap(),
                "--clock-file",
                clock_file.to_str().unwrap(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
            ],
            dir.path(),
            "central",
        );
        let central_admin = central.admin.clone().expect("central admin token");
        let target = central
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("central address");
        let proxy = Proxy::start(target).await;
        let http = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut w = World {
            dir,
            clock_file,
            central,
            central_admin,
            proxy,
            relay: None,
            relay_admin: String::new(),
            relay_terminal: String::new(),
            relay_token: String::new(),
            http,
        };
        for (cnpj, name) in [(CNPJ, "Mercado Bom"), (OTHER_CNPJ, "Padaria Sol")] {
            w.center(
                "POST",
                "/v1/customers",
                json!({"cnpj": cnpj, "trade_name": name}),
            )
            .await;
        }
        for _ in 0..3 {
            w.center(
                "POST",
                "/v1/licenses",
                json!({"cnpj": CNPJ, "product": "easycash", "expires_on": EXPIRES}),
            )
            .await;
        }
        // Another customer's license: never seen by this relay.
        w.center(
            "POST",
            "/v1/licenses",
            json!({"cnpj": OTHER_CNPJ, "product": "easycash", "expires_on": EXPIRES}),
        )
        .await;
        w.relay_token = w
            .center(
                "POST",
                "/v1/tokens",
                json!({"name": "relay-loja", "role": "relay", "cnpj": CNPJ}),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let relay_dir = w.relay_dir();
        let (code, out, err) = run(&[
            "--data-dir",
            relay_dir.to_str().unwrap(),
            "token",
            "create",
            "--role",
            "terminal",
            "--cnpj",
            CNPJ,
        ]);
        assert_eq!(code, 0, "{out} {err}");
        w.relay_terminal = out.lines().last().unwrap().trim().to_owned();
        let (code, out, err) = run(&[
            "--data-dir",
            relay_dir.to_str().unwrap(),
            "token",
            "create",
            "--role",
            "support",
        ]);
        assert_eq!(code, 0, "{out} {err}");
        w.relay_admin = out.lines().last().unwrap().trim().to_owned();
        let token = w.relay_token.clone();
        w.start_relay(CNPJ, &token);
        // Caught up: the customer and its three licenses, nothing of the other customer.
        w.wait_status("caught up and certified", |s| {
            s["mirror_records"] == json!(4) && !s["certified_until"].is_null()
        })
        .await;
        w
    }

    fn relay_dir(&self) -> PathBuf {
        self.dir.path().join("relay")
    }

    /// The relay's operator log (`iwb.log`): each line's local time, then its text.
    fn iwb_log(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.relay_dir().join("iwb.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                assert!(l.len() > 20 && l.is_char_boundary(19), "{l:?}");
                let (stamp, rest) = l.split_at(19);
                chrono::NaiveDateTime::parse_from_str(stamp, "%d/%m/%Y %H:%M:%S")
                    .unwrap_or_else(|e| panic!("{l:?}: {e}"));
                (stamp.to_owned(), rest[1..].to_owned())
            })
            .collect()
    }

    fn start_relay(&mut self, cnpj: &str, token: &str) {
        let upstream = format!("http://{}", self.proxy.addr);
        let relay = Process::start(
            &[
                "--data-dir",
                self.relay_dir().to_str().unwrap(),
                "--clock-file",
                self.clock_file.to_str().unwrap(),
                "relay",
                "--upstream",
                &upstream,
                "--allow-insecure-upstream",
                "--cnpj",
                cnpj,
                "--token",
                token,
                "--listen",
                "127.0.0.1:0",
            ],
            self.dir.path(),
            "relay",
        );
        if let Some(admin) = &relay.admin {
            self.relay_admin = admin.clone();
        }
        self.relay = Some(relay);
    }

    fn relay_url(&self) -> &str {
        &self.relay.as_ref().expect("relay").url
    }

    /// Sets both processes' clock (they re-read the file within 20 ms).
    async fn set_clock(&self, at: &str) {
        std::fs::write(&self.clock_file, at).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn call(
        &self,
        base: &str,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        process::call(&self.http, base, token, method, path, body.as_ref())
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    /// An admin call to the center that must succeed.
    /// Forwards `events` (already stored) to the center again, as a relay that lost the
    /// answers would: it answers 200 and the center's head does not move. Returns the answer.
    async fn forward_again_stores_nothing<T: serde::Serialize>(&self, events: &[T]) -> Value {
        let head = self.center("GET", "/v1/audit/head", json!({})).await;
        let (code, again) = self
            .call(
                &self.central.url,
                &self.relay_token,
                "POST",
                "/v1/relay/events",
                Some(json!({"cnpj": CNPJ, "events": events})),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{again}");
        let after = self.center("GET", "/v1/audit/head", json!({})).await;
        assert_eq!(
            after["head_hash"], head["head_hash"],
            "a forward of events already stored stored nothing"
        );
        again
    }

    async fn center(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (method != "GET").then_some(body);
        let (status, v) = self
            .call(&self.central.url, &self.central_admin, method, path, body)
            .await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn license_at_center(&self, id: &str) -> Value {
        let head = self.center("GET", "/v1/audit/head", json!({})).await["head_position"].clone();
        self.center(
            "GET",
            &format!("/v1/licenses/{id}?min_position={head}"),
            json!({}),
        )
        .await
    }

    /// A terminal's check-in at the relay.
    async fn check_in(&self, n: u8, nonce: &str) -> (StatusCode, Value) {
        let (id, key) = hw(n);
        self.call(
            self.relay_url(),
            &self.relay_terminal,
            "POST",
            "/v1/checkin",
            Some(
                json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": id,
                        "hardware_key": key, "ip": "192.168.0.10", "nonce": nonce}),
            ),
        )
        .await
    }

    /// A terminal's check-in at the center itself (admin token), as a terminal elsewhere.
    async fn check_in_at_center(&self, n: u8) -> Value {
        let (id, key) = hw(n);
        self.center(
            "POST",
            "/v1/checkin",
            json!({"cnpj": CNPJ, "product": "easycash", "hardware_id": id, "hardware_key": key}),
        )
        .await
    }

    async fn status(&self) -> Value {
        let (code, v) = self
            .call(
                self.relay_url(),
                &self.relay_admin,
                "GET",
                "/v1/relay/status",
                None,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v
    }

    async fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "relay never {what}: {s}\nrelay log:\n{}",
                    self.relay
                        .as_ref()
                        .map(|r| r.log_text())
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_check_in(&self, n: u8, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0;
        loop {
            i += 1;
            let (_, v) = self.check_in(n, &format!("w{i}")).await;
            if ok(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("terminal {n} never {what}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn central_key(&self) -> VerifyingKey {
        let keys = self.center("GET", "/v1/keys", json!({})).await;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(keys["public_key"].as_str().unwrap(), &mut bytes).unwrap();
        VerifyingKey::from_bytes(&bytes).unwrap()
    }
}

fn outcome(v: &Value) -> &str {
    v["outcome"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_its_customers_terminals_with_answers_the_central_key_vouches_for() {
    let w = World::new().await;

    let (code, v) = w.check_in(1, "n-1").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(outcome(&v), "VALID", "{v}");
    assert_eq!(v["messages"], json!([VALID_TEXT]));
    let license = v["answer"]["license_id"].as_str().unwrap().to_owned();

    // The answer is signed by the relay's key, certified by the center for this customer.
    let signed: SignedAnswer = serde_json::from_value(v.clone()).unwrap();
    let cert: RelayCertificate = serde_json::from_value(v["certificate"].clone()).unwrap();
    let central = w.central_key().await;
    let subject = Subject {
        cnpj: Cnpj::parse(CNPJ).unwrap(),
        product: Product::EasyCash,
        hardware_id: HardwareId::parse(&hw(1).0).unwrap(),
    };
    assert_eq!(cert.cnpj, subject.cnpj);
    assert_eq!(v["answer"]["cnpj"], json!(CNPJ), "{v}");
    let relay_key = cert
        .verify_answer(&central, &signed, &subject, Some("n-1"))
        .expect("certified answer");
    signed
        .verify_with_nonce(&relay_key, &subject, "n-1")
        .unwrap();
    let mut forged = signed.clone();
    forged.answer.days_left = Some(9999);
    assert!(cert
        .verify_answer(&central, &forged, &subject, Some("n-1"))
        .is_err());
    // Not for another terminal, nor for another customer's terminal.
    let elsewhere = Subject {
        hardware_id: HardwareId::parse(&hw(2).0).unwrap(),
        ..subject
    };
    assert!(cert
        .verify_answer(&central, &signed, &elsewhere, Some("n-1"))
        .is_err());
    let other_customer = Subject {
        cnpj: Cnpj::parse("11444777000161").unwrap(),
        ..subject
    };
    assert!(cert
        .verify_answer(&central, &signed, &other_customer, Some("n-1"))
        .is_err());

    // The operator log of the first refresh, as the manual's IntelliWeb Server prints it, on
    // the shop's clock (10:00 UTC is 07:00 in Brasília).
    let log = w.iwb_log();
    let texts: Vec<&str> = log.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts[0], "Requisição enviada para a API..", "{log:?}");
    assert!(log[0].0.starts_with("01/01/2031 07:0"), "{log:?}");
    let licenses: Vec<&str> = texts[1..4].to_vec();
    for line in &licenses {
        let rest = line
            .strip_prefix("<- LICENÇA: ")
            .unwrap_or_else(|| panic!("{log:?}"));
        let (id, rest) = rest.split_at(6);
        assert!(id.chars().all(|c| c.is_ascii_digit()), "{line}");
        let (middle, signature) = rest.rsplit_once(" | SIGNATURE: ").unwrap();
        assert_eq!(
            middle, " Mercado Bom SERIAL: (Não Informado) | IP: (Não Informado)",
            "{line}"
        );
        assert!(
            signature.len() == 64
                && signature
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
            "{line}"
        );
    }
    assert_eq!(
        &texts[4..6],
        ["Processo finalizado...", "Aguardando novas requisições..."],
        "{log:?}"
    );

    // The bind reaches the center.
    w.wait_status("forwarded the bind", |s| s["outbox_depth"] == json!(0))
        .await;
    let row = w.license_at_center(&license).await;
    assert_eq!(row["binding"]["hardware_id"], json!(hw(1).0), "{row}");

    // Support blocks the license at the center: the relay follows live.
    w.center("POST", &format!("/v1/licenses/{license}/block"), json!({}))
        .await;
    let blocked = w
        .wait_check_in(1, "saw the block", |v| outcome(v) == "BLOCKED")
        .await;
    assert_eq!(blocked["messages"], json!([NOT_RELEASED]));
    let s = w.status().await;
    assert_eq!(s["link"], json!("up"), "{s}");
    assert_eq!(s["contingency_since"], json!(null), "{s}");

    // The operator's view of the same status (once the last check-in is forwarded).
    w.wait_status("forwarded", |s| s["outbox_depth"] == json!(0))
        .await;
    let url = w.relay_url().to_owned();
    let admin = w.relay_admin.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(&["relay-status", "--url", &url, "--token", &admin])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out} {err}");
    for line in [
        "link: up",
        "outbox depth: 0",
        "contingency since: -",
        "customer: 11222333000181",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(
        out.contains("last successful refresh: 2031-01-01T10:"),
        "{out}"
    );
    let (code, _, err) = tokio::task::spawn_blocking(|| {
        run(&[
            "relay-status",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "an unreachable relay is reported: {err}");
    assert!(err.contains("cannot reach the relay"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_link_cut_past_a_refresh_terminals_sell_in_contingency_until_expiry_plus_seven_days(
) {
    let w = World::new().await;
    assert_eq!(outcome(&w.check_in(1, "a").await.1), "VALID");

    w.proxy.cut();
    // The next daily refresh fails: contingency, and the manual's retry text.
    w.set_clock("2031-01-02T10:30:00Z").await;
    let s = w
        .wait_status("entered contingency", |s| !s["contingency_since"].is_null())
        .await;
    assert_eq!(s["link"], json!("down"), "{s}");
    assert_eq!(s["last_error"], json!(REFRESH_FAILED), "{s}");
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(s["next_refresh"].clone()).unwrap();
    let retry_in = next
        - "2031-01-02T10:30:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap();
    assert!(
        retry_in > chrono::Duration::minutes(55) && retry_in <= chrono::Duration::minutes(61),
        "retries in an hour: {s}"
    );
    let relay_log = w.relay.as_ref().unwrap().log_text();
    assert!(relay_log.contains(REFRESH_FAILED), "{relay_log}");

    let (code, v) = w.check_in(1, "b").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(outcome(&v), "CONTINGENCY_UPSTREAM", "{v}");
    assert_eq!(
        v["messages"],
        json!([
            CONTINGENCY_TEXT,
            CONTINGENCY_EXPIRY,
            "DATA DA LICENÇA: 07/02/2031"
        ])
    );

    // Still selling on the last day of grace (expiry 31/01 + 7 days)...
    w.set_clock("2031-02-07T20:00:00Z").await;
    let (_, v) = w.check_in(1, "c").await;
    assert_eq!(outcome(&v), "CONTINGENCY_UPSTREAM", "{v}");
    // ...blocked the day after.
    w.set_clock("2031-02-08T08:00:00Z").await;
    let (_, v) = w.check_in(1, "d").await;
    assert_eq!(outcome(&v), "GRACE_EXPIRED", "{v}");
    assert_eq!(v["messages"], json!([NOT_RELEASED]));
    assert_eq!(v["resources"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_during_an_outage_reach_the_center_once_and_the_centers_decisions_win() {
    let w = World::new().await;
    let (_, v) = w.check_in(1, "a").await;
    let l1 = v["answer"]["license_id"].as_str().unwrap().to_owned();
    w.wait_status("forwarded", |s| s["outbox_depth"] == json!(0))
        .await;

    w.proxy.cut();
    w.set_clock("2031-01-02T10:30:00Z").await;
    w.wait_status("entered contingency", |s| !s["contingency_since"].is_null())
        .await;

    // At the center meanwhile: support unlinks terminal 1's license, and terminals checking
    // in elsewhere take it and the next free one.
    w.center("POST", &format!("/v1/licenses/{l1}/unlink"), json!({}))
        .await;
    let t9 = w.check_in_at_center(9).await;
    let t8 = w.check_in_at_center(8).await;
    assert_eq!(t9["answer"]["license_id"], json!(l1), "{t9}");
    let l2 = t8["answer"]["license_id"].as_str().unwrap().to_owned();

    // At the relay meanwhile: terminal 2 binds what the relay believes is free (the same
    // license terminal 8 took), terminal 1 still sells on its license.
    let (_, v2) = w.check_in(2, "b").await;
    assert_eq!(outcome(&v2), "CONTINGENCY_UPSTREAM", "{v2}");
    assert_eq!(v2["answer"]["license_id"], json!(l2), "{v2}");
    let (_, v1) = w.check_in(1, "c").await;
    assert_eq!(v1["answer"]["license_id"], json!(l1), "{v1}");
    let depth = w.status().await["outbox_depth"].as_u64().unwrap();
    assert!(
        depth >= 3,
        "binds, records and the contingency wait: {depth}"
    );

    // The link returns.
    w.proxy.restore();
    let s = w
        .wait_status("forwarded everything and left contingency", |s| {
            s["outbox_depth"] == json!(0) && s["contingency_since"].is_null()
        })
        .await;
    assert_eq!(
        s["rejected"],
        json!(1),
        "terminal 2's bind was rejected: {s}"
    );
    assert_eq!(s["link"], json!("up"), "{s}");

    // The center's state won: license 2 is terminal 8's, license 1 terminal 9's.
    let row2 = w.license_at_center(&l2).await;
    assert_eq!(row2["binding"]["hardware_id"], json!(hw(8).0), "{row2}");
    let row1 = w.license_at_center(&l1).await;
    assert_eq!(row1["binding"]["hardware_id"], json!(hw(9).0), "{row1}");
    // At the relay, terminal 2 now takes the last free license; terminal 1 has none left.
    let v2 = w
        .wait_check_in(2, "bound the last free license", |v| {
            outcome(v) == "VALID" && v["answer"]["license_id"] != json!(l2)
        })
        .await;
    let l3 = v2["answer"]["license_id"].as_str().unwrap().to_owned();
    let (_, v1) = w.check_in(1, "e").await;
    assert_eq!(outcome(&v1), "NO_LICENSE", "{v1}");
    w.wait_status("forwarded", |s| s["outbox_depth"] == json!(0))
        .await;
    let row3 = w.license_at_center(&l3).await;
    assert_eq!(row3["binding"]["hardware_id"], json!(hw(2).0), "{row3}");

    // Forwarding everything again (a relay that lost the answers) changes nothing.
    let outbox = std::fs::read_to_string(w.relay_dir().join("outbox.jsonl")).unwrap();
    // Each line: `LLLLLLLL CCCCCCCC HHHHHHHH <JSON>` (length, CRC-32C, header CRC-32C).
    let events: Vec<Value> = outbox
        .lines()
        .map(|l| serde_json::from_str(l.splitn(4, ' ').nth(3).unwrap()).unwrap())
        .collect();
    assert!(events.len() >= 6, "{}", events.len());
    let again = w.forward_again_stores_nothing(&events).await;
    let results = again["results"].as_array().unwrap();
    let rejected = results
        .iter()
        .filter(|r| r["resolution"]["status"] == json!("rejected"))
        .count();
    assert_eq!(rejected, 1, "the same decisions: {again}");
    // Each of the relay's events is in the center's log once.
    let log = w
        .center("GET", "/v1/events?from=1&limit=1000", json!({}))
        .await;
    for e in &events {
        let n = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event_id"] == e["event_id"])
            .count();
        assert!(n <= 1, "event {} stored {n} times", e["event_id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_token_is_refused_for_another_customer_and_its_refusal_is_shown() {
    let mut w = World::new().await;
    // Straight to the center: the token is bound to CNPJ.
    for path in [
        format!("/v1/relay/feed?cnpj={OTHER_CNPJ}&from=1"),
        format!("/v1/relay/stream?cnpj={OTHER_CNPJ}&from=1"),
    ] {
        let (code, v) = w
            .call(&w.central.url, &w.relay_token, "GET", &path, None)
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let (code, _) = w
        .call(
            &w.central.url,
            &w.relay_token,
            "POST",
            "/v1/relay/events",
            Some(json!({"cnpj": OTHER_CNPJ, "events": []})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // Another role's token cannot use the relay routes at all.
    let (code, _) = w
        .call(
            &w.central.url,
            &w.central_admin,
            "GET",
            &format!("/v1/relay/feed?cnpj={CNPJ}&from=1"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // A revoked (unknown) token: the manual's 401 text.
    let (code, v) = w
        .call(
            &w.central.url,
            "llt_not-a-relay-token",
            "GET",
            &format!("/v1/relay/feed?cnpj={CNPJ}&from=1"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(v["message"], json!("Assinatura do token inválida"));

    // The customer deactivated at the center: the next refresh is refused with the manual's
    // `Usuário inválido.`, shown in the status; a refusal is no outage (no contingency).
    w.center(
        "POST",
        &format!("/v1/customers/{CNPJ}/deactivate"),
        json!({}),
    )
    .await;
    w.set_clock("2031-01-02T10:30:00Z").await;
    let s = w
        .wait_status("surfaced the refusal", |s| {
            s["last_error"] == json!("Usuário inválido.")
        })
        .await;
    assert_eq!(s["link"], json!("refused"), "{s}");
    assert_eq!(s["contingency_since"], json!(null), "{s}");
    let log = w.relay.as_ref().unwrap().log_text();
    assert!(log.contains("Usuário inválido."), "{log}");
    let iwb = w.iwb_log();
    let at = iwb
        .iter()
        .position(|(_, t)| t == "ERRO(#01): [401] - Usuário inválido.")
        .unwrap_or_else(|| panic!("{iwb:?}"));
    assert_eq!(iwb[at - 1].1, "Requisição enviada para a API..", "{iwb:?}");
    assert_eq!(iwb[at + 1].1, "Aguardando novas requisições...", "{iwb:?}");
    w.relay.take();

    // Relays started with this token for the other customer, or with a token the center
    // never issued, see nothing and say why.
    let upstream = format!("http://{}", w.proxy.addr);
    let cases = [
        (OTHER_CNPJ, w.relay_token.clone(), "another customer"),
        (
            CNPJ,
            "llt_never-issued".to_owned(),
            "Assinatura do token inválida",
        ),
    ];
    for (i, (cnpj, token, says)) in cases.iter().enumerate() {
        let dir = w.dir.path().join(format!("relay-refused-{i}"));
        let relay = Process::start(
            &[
                "--data-dir",
                dir.to_str().unwrap(),
                "relay",
                "--upstream",
                &upstream,
                "--allow-insecure-upstream",
                "--cnpj",
                cnpj,
                "--token",
                token,
                "--listen",
                "127.0.0.1:0",
            ],
            w.dir.path(),
            &format!("relay-refused-{i}"),
        );
        let admin = relay.admin.clone().expect("relay admin");
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            let (_, s) = w
                .call(&relay.url, &admin, "GET", "/v1/relay/status", None)
                .await;
            if s["link"] == json!("refused") || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(s["link"], json!("refused"), "{s}");
        assert_eq!(s["mirror_records"], json!(0), "{s}");
        assert_eq!(s["contingency_since"], json!(null), "{s}");
        assert!(
            s["last_error"].as_str().is_some_and(|e| e.contains(says)),
            "{says}: {s}"
        );
        if token.starts_with("llt_never") {
            // The manual's "Token inválido" screen.
            let iwb = std::fs::read_to_string(dir.join("iwb.log")).unwrap_or_default();
            assert!(
                iwb.lines().any(|l| l
                    .ends_with(" [UPDATEALLLICENCES]ERRO(#01): [401]Assinatura do token inválida")),
                "{iwb}"
            );
        }
    }
}

fn issued_at(v: &Value) -> chrono::DateTime<chrono::Utc> {
    serde_json::from_value(v["answer"]["issued_at"].clone())
        .unwrap_or_else(|e| panic!("no issued_at ({e}) in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_clock_stepped_back_after_grace_expired_keeps_refusing_across_a_restart_too() {
    let mut w = World::new().await;
    assert_eq!(outcome(&w.check_in(1, "a").await.1), "VALID");
    w.proxy.cut();
    w.set_clock("2031-01-02T10:30:00Z").await;
    w.wait_status("entered contingency", |s| !s["contingency_since"].is_null())
        .await;

    w.set_clock("2031-02-08T08:00:00Z").await;
    let (_, v) = w.check_in(1, "b").await;
    assert_eq!(outcome(&v), "GRACE_EXPIRED", "{v}");
    // Later the same day: an answer that records nothing (only the clock mark covers it).
    w.set_clock("2031-02-08T20:00:00Z").await;
    let depth = w.status().await["outbox_depth"].clone();
    let (_, v) = w.check_in(1, "c").await;
    assert_eq!(outcome(&v), "GRACE_EXPIRED", "{v}");
    assert_eq!(w.status().await["outbox_depth"], depth, "nothing recorded");
    let refused_at = issued_at(&v);

    // The clock stepped back into the grace period: still refused, time does not go back.
    w.set_clock("2031-02-06T08:00:00Z").await;
    let (_, v) = w.check_in(1, "d").await;
    assert_eq!(outcome(&v), "GRACE_EXPIRED", "{v}");
    assert_eq!(v["messages"], json!([NOT_RELEASED]));
    assert!(issued_at(&v) >= refused_at, "{v}");

    // Killed and restarted with the clock still back: the same.
    w.relay.take();
    let token = w.relay_token.clone();
    w.start_relay(CNPJ, &token);
    let (_, v) = w.check_in(1, "e").await;
    assert_eq!(outcome(&v), "GRACE_EXPIRED", "{v}");
    assert!(issued_at(&v) >= refused_at, "{v}");
    let s = w.status().await;
    assert!(
        !s["contingency_since"].is_null(),
        "still in contingency: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_upgraded_with_files_in_the_old_format_converts_them_and_forwards_what_was_pending()
{
    let mut w = World::new().await;
    assert_eq!(outcome(&w.check_in(1, "a").await.1), "VALID");
    w.wait_status("forwarded", |s| s["outbox_depth"] == json!(0))
        .await;
    // The link cut: terminal 2 binds at the relay, and that waits in the outbox.
    w.proxy.cut();
    let (_, v2) = w.check_in(2, "b").await;
    let l2 = v2["answer"]["license_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no license: {v2}"))
        .to_owned();
    let depth = w.status().await["outbox_depth"].as_u64().unwrap();
    assert!(depth >= 1, "the bind waits: {depth}");

    // Stopped, its files as the relay before checksummed headers left them; then upgraded.
    w.relay.take();
    let old = relay_v1::downgrade(&w.relay_dir());
    let token = w.relay_token.clone();
    w.start_relay(CNPJ, &token);
    for (name, bytes) in &old {
        let kept = std::fs::read(w.relay_dir().join("cut").join(format!("{name}.v1")))
            .unwrap_or_else(|e| panic!("{name}.v1: {e}"));
        assert_eq!(&kept, bytes, "{name}: the old file is kept whole");
    }
    // Every old line is in the converted files, in order (a restart with the link down may
    // add a contingency entry after them).
    for (name, bytes) in &old[1..] {
        let new = std::fs::read_to_string(w.relay_dir().join(name)).unwrap();
        let json: Vec<&str> = new
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap())
            .collect();
        let before: Vec<&str> = std::str::from_utf8(bytes).unwrap().lines().collect();
        assert_eq!(json[..before.len()], before[..], "{name}");
    }
    let after = w.status().await["outbox_depth"].as_u64().unwrap();
    assert!(
        after >= depth,
        "nothing pending was lost: {after} < {depth}"
    );
    // Terminal 2 keeps its license at the relay.
    let (_, v) = w.check_in(2, "c").await;
    assert_eq!(v["answer"]["license_id"], json!(l2), "{v}");

    // The link returns: the bind made before the upgrade reaches the center.
    w.proxy.restore();
    w.wait_status("forwarded after the upgrade", |s| {
        s["outbox_depth"] == json!(0)
    })
    .await;
    let row2 = w.license_at_center(&l2).await;
    assert_eq!(row2["binding"]["hardware_id"], json!(hw(2).0), "{row2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_ten_thousand_events_drains_to_the_center_once_each_and_in_order() {
    use license_ledger::app::relay::ForwardedEvent;
    use license_ledger::relay::outbox::Outbox;

    // On this test's disk (a shared virtual disk: ~20 ms a `fdatasync`) the center's one
    // durable append per forwarded event, not the forwarding, would set the pace: the data
    // goes to memory when the machine has it, so what is measured is the relay's batching.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let mut w = World::in_dir(dir).await;
    assert_eq!(outcome(&w.check_in(1, "a").await.1), "VALID");
    w.wait_status("forwarded", |s| s["outbox_depth"] == json!(0))
        .await;

    // The link cut and the relay stopped; 10,000 check-in records accumulated meanwhile are
    // written with the relay's own outbox, copies of terminal 1's record with their own ids.
    w.proxy.cut();
    w.relay.take();
    let (ids, first): (Vec<uuid::Uuid>, Vec<ForwardedEvent>) = {
        let mut outbox = Outbox::open(&w.relay_dir()).unwrap();
        let template = outbox
            .events()
            .iter()
            .rev()
            .find(|e| e.event_type == "TerminalCheckedIn")
            .unwrap_or_else(|| panic!("no check-in record in {:?}", outbox.events()))
            .clone();
        let events: Vec<ForwardedEvent> = (0..10_000)
            .map(|_| ForwardedEvent {
                event_id: uuid::Uuid::now_v7(),
                correlation_id: uuid::Uuid::now_v7(),
                ..template.clone()
            })
            .collect();
        let ids = events.iter().map(|e| e.event_id).collect();
        let first = events[..50].to_vec();
        outbox.append_all(events).unwrap();
        (ids, first)
    };
    let before = w.center("GET", "/v1/audit/head", json!({})).await["head_position"]
        .as_u64()
        .unwrap();

    // 200 such events are ~130 KB, twice the center's body limit: forwarded by count they
    // were all refused (413) and the outbox never drained.
    let token = w.relay_token.clone();
    w.start_relay(CNPJ, &token);
    let depth = w.status().await["outbox_depth"].as_u64().unwrap();
    assert!(depth >= 10_000, "{depth}");
    let started = Instant::now();
    w.proxy.restore();
    w.wait_status("drained its outbox", |s| s["outbox_depth"] == json!(0))
        .await;
    let took = started.elapsed();

    // At the center: each of them stored once, in the order they happened.
    let wanted: std::collections::HashSet<_> = ids.iter().map(|id| id.to_string()).collect();
    let mut stored = Vec::new();
    let mut from = before + 1;
    loop {
        let page = w
            .center(
                "GET",
                &format!("/v1/events?from={from}&limit=1000"),
                json!({}),
            )
            .await;
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        stored.extend(
            items
                .iter()
                .filter_map(|r| r["event_id"].as_str())
                .filter(|id| wanted.contains(*id))
                .map(str::to_owned),
        );
        from = page["next"].as_u64().unwrap();
    }
    let sent: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    assert_eq!(stored.len(), sent.len(), "each stored once");
    assert!(stored == sent, "stored in the order they happened");
    let s = w.status().await;
    assert_eq!(s["rejected"], json!(0), "{s}");
    // Forwarded again (a relay that lost the answers): the center stores nothing more.
    w.forward_again_stores_nothing(&first).await;
    let log = w.relay.as_ref().map(|r| r.log_text()).unwrap_or_default();
    let requests: usize = log
        .lines()
        .filter(|l| l.contains("outbox forwarded"))
        .filter_map(|l| l.split("\"requests\":").nth(1))
        .filter_map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .sum();
    eprintln!(
        "drained 10,000 events in {:.2} s ({:.0} events/s), {requests} forward requests",
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64()
    );
    assert!(requests >= 10_000 / 200, "{requests} requests:\n{log}");
    assert!(
        !log.contains("too large"),
        "no request was refused as too large:\n{log}"
    );

    // An event no request can carry (70 KB of data; the relay never makes one) is reported,
    // and forwarding stops before it: the one before it reaches the center, the one after it
    // waits behind it.
    w.relay.take();
    let (before_it, huge, after_it) = {
        let mut outbox = Outbox::open(&w.relay_dir()).unwrap();
        let template = first[0].clone();
        let mut huge = ForwardedEvent {
            event_id: uuid::Uuid::now_v7(),
            ..template.clone()
        };
        huge.data["caixa"] = json!("x".repeat(70_000));
        let events = vec![
            ForwardedEvent {
                event_id: uuid::Uuid::now_v7(),
                ..template.clone()
            },
            huge,
            ForwardedEvent {
                event_id: uuid::Uuid::now_v7(),
                ..template
            },
        ];
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        outbox.append_all(events).unwrap();
        (ids[0].clone(), ids[1].clone(), ids[2].clone())
    };
    w.start_relay(CNPJ, &token);
    let s = w
        .wait_status("reported the event too large", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(huge.as_str()))
        })
        .await;
    assert_eq!(s["outbox_depth"], json!(2), "{s}");
    let head = w.center("GET", "/v1/audit/head", json!({})).await["head_position"]
        .as_u64()
        .unwrap();
    let tail = w
        .center(
            "GET",
            &format!("/v1/events?from={}&limit=1000", head.saturating_sub(5)),
            json!({}),
        )
        .await;
    let tail: Vec<&str> = tail["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    assert!(tail.contains(&before_it.as_str()), "{tail:?}");
    assert!(!tail.contains(&after_it.as_str()), "{tail:?}");
}
