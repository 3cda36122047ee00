//! The license domain end to end, over a real file store: given commands, when a check-in or
//! a command at time T, then the outcome, the texts and the events. Each test is named after
//! the manual's section it covers ("Casos Tratados", "Contingência", "Liberação off-line"...).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ledger_events::answer::OutcomeCode;
use ledger_events::{
    offline, texts, Actor, Cnpj, ContingencyKind, Event, HardwareId, HardwareKey, LicenseEvent,
    LicenseId, Product, Resources, Serial, StreamId, TerminalEvent, TradeName,
};
use license_ledger::app::commands::{GrantLicense, OfflineRequest, Secrets, SignContract};
use license_ledger::app::{AppError, Ledger, LedgerConfig};
use license_ledger::clock::ManualClock;
use license_ledger::domain::checkin::{CheckInPlan, CheckInRequest};
use license_ledger::domain::contract::ContractCommand;
use license_ledger::domain::customer::CustomerCommand;
use license_ledger::domain::license::LicenseCommand;
use license_ledger::domain::release::ContingencyCommand;
use license_ledger::domain::{Calendar, DomainError};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use uuid::Uuid;

struct World {
    ledger: Arc<Ledger>,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

fn at(day: &str, hms: (u32, u32, u32)) -> DateTime<Utc> {
    let d: NaiveDate = day.parse().unwrap();
    Utc.from_utc_datetime(&d.and_hms_opt(hms.0, hms.1, hms.2).unwrap())
}
fn day(d: &str) -> NaiveDate {
    d.parse().unwrap()
}
fn cnpj() -> Cnpj {
    Cnpj::parse("11222333000181").unwrap()
}
/// The audit key of the tests' secrets (the log keeps MACs of counter-keys under it).
const AUDIT_KEY: &[u8] = b"audit-key-audit-key-audit-key-32";

fn support() -> Actor {
    Actor::operator("suporte").unwrap()
}
fn terminal(n: u8) -> (HardwareId, HardwareKey) {
    (
        HardwareId::parse(&format!("50026B77825EEC{n:02X}")).unwrap(),
        HardwareKey::parse(&format!("88A7B56C2B3F326F91362A182483F6{n:02X}")).unwrap(),
    )
}
fn request(n: u8) -> CheckInRequest {
    let (hardware_id, hardware_key) = terminal(n);
    CheckInRequest {
        cnpj: cnpj(),
        product: Product::EasyCash,
        hardware_id,
        hardware_key,
        ip: format!("192.168.0.{}", 190 + n).parse().ok(),
        program_version: ledger_events::ProgramVersion::parse("2.0.12.1").ok(),
        caixa: ledger_events::TerminalNumber::new(u16::from(n)).ok(),
        equipamento: ledger_events::TerminalNumber::new(u16::from(n)).ok(),
    }
}

impl World {
    async fn new(now: DateTime<Utc>) -> World {
        Self::in_zone(now, Calendar::default()).await
    }

    /// A ledger whose days are those of `calendar`.
    async fn in_zone(now: DateTime<Utc>, calendar: Calendar) -> World {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(now);
        let store = FileStore::open(FileStoreConfig::new(dir.path()), Arc::new(clock.clone()))
            .await
            .unwrap();
        let ledger = Ledger::start(
            Arc::new(store),
            Arc::new(clock.clone()),
            LedgerConfig {
                calendar,
                ..LedgerConfig::default()
            },
        )
        .await
        .unwrap();
        World {
            ledger: Arc::new(ledger),
            clock,
            _dir: dir,
        }
    }

    async fn customer(&self) {
        self.ledger
            .customer(
                CustomerCommand::Register {
                    cnpj: cnpj(),
                    trade_name: TradeName::parse("Mercado Bom").unwrap(),
                    since: None,
                },
                &support(),
                Uuid::now_v7(),
            )
            .await
            .unwrap();
    }

    async fn contract(&self, interval: u16, before: u16) -> ledger_events::ContractId {
        self.ledger
            .sign_contract(
                SignContract {
                    cnpj: cnpj(),
                    starts_on: day("2023-03-01"),
                    ends_on: None,
                    interval_days: interval,
                    renew_before_days: before,
                },
                &support(),
                Uuid::now_v7(),
            )
            .await
            .unwrap()
            .0
    }

    async fn license(
        &self,
        expires: &str,
        contract: Option<ledger_events::ContractId>,
    ) -> LicenseId {
        self.ledger
            .grant_license(
                GrantLicense {
                    cnpj: cnpj(),
                    product: Product::EasyCash,
                    contract_id: contract,
                    expires_on: day(expires),
                    resources: Resources::default(),
                },
                &support(),
                Uuid::now_v7(),
            )
            .await
            .unwrap()
            .0
    }

    async fn license_cmd(&self, c: LicenseCommand) -> Result<(), AppError> {
        self.ledger
            .license(c, &support(), Uuid::now_v7())
            .await
            .map(|_| ())
    }

    async fn check_in(&self, n: u8) -> CheckInPlan {
        self.ledger.check_in(&request(n)).await.unwrap()
    }

    async fn events(&self, stream: &StreamId) -> Vec<Event> {
        self.ledger
            .store()
            .read_stream(stream, 1, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.event().unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_valid_license_answers_its_expiry() {
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Valid);
    assert_eq!(plan.license_id, Some(id));
    assert_eq!(
        plan.messages,
        vec!["Licença do sistema expira no dia: 01/05/2023".to_owned()]
    );
    assert_eq!(plan.days_left, Some(35));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_perto_do_vencimento_warns_from_three_days() {
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    w.license("2023-03-30", None).await;
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Expiring);
    assert_eq!(
        plan.messages,
        vec![
            "Licença do sistema expira no dia: 30/03/2023".to_owned(),
            "Faltam [03] dias para expirar a licença!".to_owned(),
            "DATA DA LICENÇA: 30/03/2023".to_owned(),
        ]
    );
    w.clock
        .set(at("2023-03-26", (9, 0, 0)) + chrono::Duration::days(0));
    // Four days before: no warning.
    let w2 = World::new(at("2023-03-26", (9, 0, 0))).await;
    w2.customer().await;
    w2.license("2023-03-30", None).await;
    assert_eq!(w2.check_in(1).await.code, OutcomeCode::Valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_licenca_expirada_blocks_sales() {
    let w = World::new(at("2023-03-27", (17, 2, 17))).await;
    w.customer().await;
    w.license("2023-03-26", None).await;
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Expired);
    // The manual's "licença expirada": the refusal, then the day it expired.
    assert_eq!(
        plan.messages,
        [
            texts::NOT_RELEASED,
            "Licença do sistema expira no dia: 26/03/2023"
        ]
    );
    assert!(plan.resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_licenca_desativada_and_bloqueada_block_sales() {
    let w = World::new(at("2023-03-27", (17, 17, 1))).await;
    w.customer().await;
    let a = w.license("2023-05-01", None).await;
    w.license_cmd(LicenseCommand::Deactivate {
        license_id: a,
        note: None,
    })
    .await
    .unwrap();
    assert_eq!(w.check_in(1).await.code, OutcomeCode::Deactivated);
    w.license_cmd(LicenseCommand::Reactivate {
        license_id: a,
        note: None,
    })
    .await
    .unwrap();
    w.license_cmd(LicenseCommand::Block {
        license_id: a,
        note: None,
    })
    .await
    .unwrap();
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Blocked);
    assert_eq!(plan.messages, vec![texts::NOT_RELEASED.to_owned()]);
    w.license_cmd(LicenseCommand::Unblock {
        license_id: a,
        note: None,
    })
    .await
    .unwrap();
    assert_eq!(w.check_in(1).await.code, OutcomeCode::Valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_cliente_inativado_is_told_usuario_invalido() {
    let w = World::new(at("2023-03-27", (17, 55, 47))).await;
    // Unknown customer.
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::CustomerInactive);
    assert_eq!(
        plan.messages,
        [
            "Problema encontrado na liberação!",
            "Retorno do servidor:",
            "CÓDIGO: 401",
            "MENSAGEM: Usuário inválido."
        ]
    );
    w.customer().await;
    w.license("2023-05-01", None).await;
    w.ledger
        .customer(
            CustomerCommand::Deactivate {
                cnpj: cnpj(),
                note: None,
            },
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::CustomerInactive);
    assert_eq!(
        plan.license_id, None,
        "an inactive customer's terminal binds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renovacao_an_active_contract_renews_within_the_window() {
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    let contract = w.contract(30, 3).await;
    let id = w.license("2023-03-28", Some(contract)).await;
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Valid);
    assert_eq!(
        plan.messages,
        vec!["Licença do sistema expira no dia: 27/04/2023".to_owned()]
    );
    let events = w.events(&StreamId::license(id)).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::License(LicenseEvent::Renewed(r)) if r.expires_on == day("2023-04-27"))),
        "{events:?}"
    );
    // Renewed once: the next check-in the same day renews nothing more.
    w.check_in(1).await;
    let renewals = w
        .events(&StreamId::license(id))
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::License(LicenseEvent::Renewed(_))))
        .count();
    assert_eq!(renewals, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cliente_com_contrato_desativado_runs_out_at_its_current_expiry() {
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    let contract = w.contract(30, 3).await;
    w.license("2023-03-28", Some(contract)).await;
    w.ledger
        .contract(
            ContractCommand::Deactivate {
                contract_id: contract,
                note: None,
            },
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::Expiring);
    assert_eq!(
        plan.messages[0],
        "Licença do sistema expira no dia: 28/03/2023"
    );
    assert_eq!(plan.messages[1], "Faltam [01] dias para expirar a licença!");
    w.clock.set(at("2023-03-29", (8, 0, 0)));
    assert_eq!(w.check_in(1).await.code, OutcomeCode::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vinculo_first_check_ins_bind_free_licenses_lowest_first_until_none_is_left() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let a = w.license("2023-05-01", None).await;
    let b = w.license("2023-05-01", None).await;
    assert_eq!(w.check_in(1).await.license_id, Some(a));
    assert_eq!(w.check_in(2).await.license_id, Some(b));
    let third = w.check_in(3).await;
    assert_eq!(third.code, OutcomeCode::NoLicense);
    assert_eq!(third.messages, vec![texts::NO_LICENSE.to_owned()]);
    // A bound license keeps answering its own terminal only.
    assert_eq!(w.check_in(1).await.license_id, Some(a));
    assert_eq!(w.check_in(2).await.license_id, Some(b));
    // Desassociar frees it for another terminal.
    w.license_cmd(LicenseCommand::Unlink {
        license_id: a,
        note: None,
    })
    .await
    .unwrap();
    assert_eq!(w.check_in(3).await.license_id, Some(a));
    assert_eq!(w.check_in(1).await.code, OutcomeCode::NoLicense);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vinculo_another_key_on_the_same_hardware_id_is_not_answered() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    w.license("2023-05-01", None).await;
    assert_eq!(w.check_in(1).await.code, OutcomeCode::Valid);
    let mut impostor = request(1);
    impostor.hardware_key = HardwareKey::parse("00000000000000000000000000000001").unwrap();
    assert_eq!(
        w.ledger.check_in(&impostor).await.unwrap().code,
        OutcomeCode::NoLicense
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ins_are_recorded_only_when_something_changed_or_a_day_passed() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    w.license("2023-05-01", None).await;
    let stream = StreamId::terminal(&cnpj(), &terminal(1).0);
    w.check_in(1).await;
    assert_eq!(
        w.events(&stream).await.len(),
        1,
        "first check-in is recorded"
    );
    w.clock.set(at("2023-03-27", (12, 0, 0)));
    w.check_in(1).await;
    assert_eq!(
        w.events(&stream).await.len(),
        1,
        "unchanged: answered from the projection"
    );
    let mut moved = request(1);
    moved.ip = "192.168.0.250".parse().ok();
    w.ledger.check_in(&moved).await.unwrap();
    assert_eq!(w.events(&stream).await.len(), 2, "new IP is recorded");
    w.clock.set(at("2023-03-28", (12, 0, 1)));
    w.ledger.check_in(&moved).await.unwrap();
    let events = w.events(&stream).await;
    assert_eq!(events.len(), 3, "older than 24 h is recorded again");
    assert!(matches!(
        events[2],
        Event::Terminal(TerminalEvent::CheckedIn(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contingencia_tipo_01_grants_seven_days_past_expiry_then_blocks() {
    let w = World::new(at("2023-03-29", (10, 53, 1))).await;
    w.customer().await;
    w.license("2023-03-28", None).await;
    w.ledger
        .contingency(
            ContingencyCommand::Enter {
                cnpj: cnpj(),
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                license_id: None,
                grace_until: None,
                note: None,
            },
            &Actor::system("relay").unwrap(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::ContingencyUpstream);
    assert_eq!(
        plan.messages,
        vec![
            texts::CONTINGENCY_UPSTREAM.to_owned(),
            "Licença do sistema expira no dia: 04/04/2023(CONTINGÊNCIA DO INTELLIWEB)".to_owned(),
            // As the manual's screen for type 01: the day selling ends.
            "DATA DA LICENÇA: 04/04/2023".to_owned(),
        ]
    );
    w.clock.set(at("2023-04-04", (23, 0, 0)));
    assert_eq!(w.check_in(1).await.code, OutcomeCode::ContingencyUpstream);
    w.clock.set(at("2023-04-05", (8, 0, 0)));
    let plan = w.check_in(1).await;
    assert_eq!(plan.code, OutcomeCode::GraceExpired);
    assert_eq!(plan.messages, vec![texts::NOT_RELEASED.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liberacao_off_line_counter_key_verifies_once_per_serial_and_the_next_check_in_ends_the_contingency(
) {
    let w = World::new(at("2023-03-27", (11, 36, 7))).await;
    w.customer().await;
    let id = w.license("2023-03-26", None).await;
    w.check_in(3).await; // bound to terminal 3, expired
    w.license_cmd(LicenseCommand::Unlink {
        license_id: id,
        note: None,
    })
    .await
    .unwrap();
    let secrets = Secrets {
        offline: [(
            Product::EasyCash,
            b"0123456789abcdef0123456789abcdef".to_vec(),
        )]
        .into(),
        emergency: b"emergency-secret-emergency-secret".to_vec(),
        audit: AUDIT_KEY.to_vec(),
    };
    let serial = Serial::parse("50026B77605FA3F8").unwrap();
    let offline_request = OfflineRequest {
        serial,
        product: Product::EasyCash,
        cnpj: Some(cnpj()),
        license_id: Some(id),
        caixa: ledger_events::TerminalNumber::new(3).ok(),
        equipamento: ledger_events::TerminalNumber::new(3).ok(),
    };
    let issued = w
        .ledger
        .issue_offline_activation(
            &secrets,
            offline_request.clone(),
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    assert_eq!(issued.valid_until, day("2023-03-28"));
    // Terminal 3 checked in before: the key is made under its own key (issue 15, finding 3).
    assert_eq!(issued.terminal, Some(terminal(3).0));
    let secret = &offline::terminal_key(
        &secrets.offline[&Product::EasyCash],
        &cnpj(),
        &terminal(3).0,
    );
    // The terminal accepts it today and tomorrow, and not for another product or serial.
    assert_eq!(
        offline::verify_terminal_counter_key(
            secret,
            &serial,
            Product::EasyCash,
            &issued.counter_key,
            day("2023-03-27")
        )
        .unwrap(),
        day("2023-03-28")
    );
    assert!(offline::verify_terminal_counter_key(
        secret,
        &serial,
        Product::EasyCash,
        &issued.counter_key,
        day("2023-03-28")
    )
    .is_ok());
    assert!(offline::verify_terminal_counter_key(
        secret,
        &serial,
        Product::EasyCash,
        &issued.counter_key,
        day("2023-03-29")
    )
    .is_err());
    assert!(offline::verify_terminal_counter_key(
        secret,
        &serial,
        Product::Notify,
        &issued.counter_key,
        day("2023-03-27")
    )
    .is_err());
    let other = Serial::parse("50026B77605FA3F9").unwrap();
    assert!(offline::verify_terminal_counter_key(
        secret,
        &other,
        Product::EasyCash,
        &issued.counter_key,
        day("2023-03-27")
    )
    .is_err());
    // A serial is single-use.
    match w
        .ledger
        .issue_offline_activation(&secrets, offline_request, &support(), Uuid::now_v7())
        .await
    {
        Err(AppError::Domain(DomainError::Rejected(m))) => {
            assert!(m.contains("already used"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The terminal is in manual contingency until it reaches the server again.
    w.ledger.catch_up().await.unwrap();
    let open = w.ledger.view().open_contingencies(&cnpj());
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].kind, ContingencyKind::Manual);
    assert_eq!(open[0].hardware_id, Some(terminal(3).0));
    w.license_cmd(LicenseCommand::Renew {
        license_id: id,
        expires_on: day("2023-05-01"),
    })
    .await
    .unwrap();
    assert_eq!(w.check_in(3).await.code, OutcomeCode::Valid);
    assert!(
        w.ledger.view().open_contingencies(&cnpj()).is_empty(),
        "the check-in replaced the manual contingency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liberacao_emergencial_is_restricted_and_recorded() {
    let w = World::new(at("2023-03-27", (14, 17, 48))).await;
    let secrets = Secrets {
        offline: Default::default(),
        emergency: b"emergency-secret-emergency-secret".to_vec(),
        audit: AUDIT_KEY.to_vec(),
    };
    let (hw, key) = terminal(9);
    let name = TradeName::parse("QUALIDADE").unwrap();
    let refused = w
        .ledger
        .issue_emergency_release(
            &secrets,
            Product::EasyCash,
            hw,
            key,
            name.clone(),
            false,
            &support(),
            Uuid::now_v7(),
        )
        .await;
    assert!(matches!(
        refused,
        Err(AppError::Domain(DomainError::Forbidden(_)))
    ));
    let ok = w
        .ledger
        .issue_emergency_release(
            &secrets,
            Product::EasyCash,
            hw,
            key,
            name,
            true,
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    assert_ne!(ok.activation_code.as_bytes(), ok.counter_key.as_bytes());
    assert_eq!(w.events(&StreamId::emergency_release(&hw)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_with_its_id_is_applied_once() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    let command_id = Uuid::now_v7();
    let first = w
        .ledger
        .license(
            LicenseCommand::Block {
                license_id: id,
                note: None,
            },
            &support(),
            command_id,
        )
        .await
        .unwrap();
    let again = w
        .ledger
        .license(
            LicenseCommand::Block {
                license_id: id,
                note: None,
            },
            &support(),
            command_id,
        )
        .await
        .unwrap();
    assert!(again.was_retry);
    assert_eq!(again.positions, first.positions);
    // Grant retried with the same id answers the license it created, not a second one.
    let grant_id = Uuid::now_v7();
    let g = GrantLicense {
        cnpj: cnpj(),
        product: Product::EasyCash,
        contract_id: None,
        expires_on: day("2023-05-01"),
        resources: Resources::default(),
    };
    let (l1, _) = w
        .ledger
        .grant_license(g.clone(), &support(), grant_id)
        .await
        .unwrap();
    w.ledger.catch_up().await.unwrap();
    let (l2, o2) = w
        .ledger
        .grant_license(g, &support(), grant_id)
        .await
        .unwrap();
    assert_eq!(l1, l2);
    assert!(o2.was_retry);
    w.ledger.catch_up().await.unwrap();
    assert_eq!(w.ledger.view().license_count(), 2);
}

fn offline_secrets() -> Secrets {
    Secrets {
        offline: [(
            Product::EasyCash,
            b"0123456789abcdef0123456789abcdef".to_vec(),
        )]
        .into(),
        emergency: b"emergency-secret-emergency-secret".to_vec(),
        audit: AUDIT_KEY.to_vec(),
    }
}

fn offline_request(serial: &str) -> OfflineRequest {
    OfflineRequest {
        serial: Serial::parse(serial).unwrap(),
        product: Product::EasyCash,
        cnpj: None,
        license_id: None,
        caixa: ledger_events::TerminalNumber::new(3).ok(),
        equipamento: None,
    }
}

fn is_reused<T: std::fmt::Debug>(r: Result<T, AppError>, command_id: Uuid, what: &str) {
    match r {
        Err(AppError::CommandIdReused { command_id: c }) => assert_eq!(c, command_id, "{what}"),
        other => panic!("{what}: expected CommandIdReused, got {other:?}"),
    }
}

/// Finding 4 of issue 15: idempotency matched only the command id, so a reused id with another
/// body, caller or route answered `was_retry` and did nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_command_id_reused_with_another_body_caller_or_route_is_refused_and_records_nothing(
) {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    let x = Uuid::now_v7();
    let block = |note: Option<&str>| LicenseCommand::Block {
        license_id: id,
        note: note.map(|n| ledger_events::Note::parse(n).unwrap()),
    };
    let first = w
        .ledger
        .license(block(Some("atraso")), &support(), x)
        .await
        .unwrap();
    assert!(!first.was_retry);
    let head = w.ledger.head().await.unwrap();
    // The true retry: same type, body and caller.
    let again = w
        .ledger
        .license(block(Some("atraso")), &support(), x)
        .await
        .unwrap();
    assert!(again.was_retry);
    assert_eq!(again.positions, first.positions);
    // Another body, another caller, another command on the same license.
    is_reused(
        w.ledger
            .license(block(Some("outro motivo")), &support(), x)
            .await,
        x,
        "another body",
    );
    is_reused(
        w.ledger.license(block(None), &support(), x).await,
        x,
        "a body without the note",
    );
    is_reused(
        w.ledger
            .license(block(Some("atraso")), &Actor::operator("outro").unwrap(), x)
            .await,
        x,
        "another caller",
    );
    is_reused(
        w.ledger
            .license(
                LicenseCommand::Unblock {
                    license_id: id,
                    note: None,
                },
                &support(),
                x,
            )
            .await,
        x,
        "another command type",
    );
    // Other aggregates: the id is found through the store's event-id index, not the stream.
    is_reused(
        w.ledger
            .customer(
                CustomerCommand::Block {
                    cnpj: cnpj(),
                    note: None,
                },
                &support(),
                x,
            )
            .await,
        x,
        "another aggregate",
    );
    let grant = GrantLicense {
        cnpj: cnpj(),
        product: Product::EasyCash,
        contract_id: None,
        expires_on: day("2023-05-01"),
        resources: Resources::default(),
    };
    is_reused(
        w.ledger.grant_license(grant, &support(), x).await,
        x,
        "a creating command",
    );
    is_reused(
        w.ledger
            .issue_offline_activation(
                &offline_secrets(),
                offline_request("50026B77605FA3F8"),
                &support(),
                x,
            )
            .await,
        x,
        "an offline activation",
    );
    assert_eq!(w.ledger.head().await.unwrap(), head, "nothing was recorded");
    w.ledger.catch_up().await.unwrap();
    assert_eq!(w.ledger.view().license_count(), 1);
    assert!(!w.ledger.view().customer(&cnpj()).unwrap().blocked);
    // And the true retry still answers the first positions.
    let again = w
        .ledger
        .license(block(Some("atraso")), &support(), x)
        .await
        .unwrap();
    assert!(again.was_retry);
    assert_eq!(again.positions, first.positions);
}

/// Finding 4 of issue 15: a retried offline activation computed a new counter-key (valid
/// for the retry's day, or for another product) for a serial already used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_retried_offline_activation_answers_the_stored_counter_key_and_a_reused_id_issues_none(
) {
    let w = World::new(at("2023-03-27", (23, 50, 0))).await;
    let secrets = offline_secrets();
    let x = Uuid::now_v7();
    let request = offline_request("50026B77605FA3F8");
    let first = w
        .ledger
        .issue_offline_activation(&secrets, request.clone(), &support(), x)
        .await
        .unwrap();
    assert!(!first.outcome.was_retry);
    assert_eq!(first.valid_until, day("2023-03-28"));
    let head = w.ledger.head().await.unwrap();
    // Retried the next day: the stored key and day, not a key for the new day.
    w.clock.set(at("2023-03-28", (0, 10, 0)));
    let again = w
        .ledger
        .issue_offline_activation(&secrets, request.clone(), &support(), x)
        .await
        .unwrap();
    assert!(again.outcome.was_retry);
    assert_eq!(again.outcome.positions, first.outcome.positions);
    assert_eq!(again.counter_key, first.counter_key);
    assert_eq!(again.valid_until, first.valid_until);
    // The same id for another serial, product or terminal number issues nothing.
    let mut other_serial = offline_request("50026B77605FA3F9");
    other_serial.caixa = request.caixa;
    let mut other_product = request.clone();
    other_product.product = Product::Notify;
    let mut other_caixa = request.clone();
    other_caixa.caixa = ledger_events::TerminalNumber::new(4).ok();
    let mut secrets_all = secrets.clone();
    secrets_all.offline.insert(
        Product::Notify,
        b"another-product-secret-0123456789".to_vec(),
    );
    for (what, r) in [
        ("another serial", other_serial.clone()),
        ("another product", other_product),
        ("another caixa", other_caixa),
    ] {
        is_reused(
            w.ledger
                .issue_offline_activation(&secrets_all, r, &support(), x)
                .await,
            x,
            what,
        );
    }
    assert_eq!(w.ledger.head().await.unwrap(), head, "nothing was recorded");
    assert!(w
        .events(&StreamId::offline_activation(&other_serial.serial))
        .await
        .is_empty());
    // The other serial is still unused: a new command id activates it.
    let fresh = w
        .ledger
        .issue_offline_activation(&secrets, other_serial, &support(), Uuid::now_v7())
        .await
        .unwrap();
    assert!(!fresh.outcome.was_retry);
}

/// Finding 4 of issue 15: records written before digests were kept (correlation id = the
/// command id) are still answered as retries, with what they stored; in a stream of another
/// kind they are another command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_records_written_before_command_digests_are_still_recognised_as_retries() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    // As the ledger wrote commands before: event ids from the command id, correlation id =
    // the command id (`Ledger::append` still writes so, for check-ins).
    let x = Uuid::now_v7();
    let legacy = w
        .ledger
        .append(
            &StreamId::license(id),
            license_ledger::store::ExpectedVersion::Any,
            vec![ledger_events::LicenseBlocked {
                license_id: id,
                note: None,
            }
            .into()],
            &support(),
            x,
        )
        .await
        .unwrap();
    let again = w
        .ledger
        .license(
            LicenseCommand::Block {
                license_id: id,
                note: None,
            },
            &support(),
            x,
        )
        .await
        .unwrap();
    assert!(again.was_retry);
    assert_eq!(again.positions, Some(legacy.positions.clone()));
    is_reused(
        w.ledger
            .customer(
                CustomerCommand::Block {
                    cnpj: cnpj(),
                    note: None,
                },
                &support(),
                x,
            )
            .await,
        x,
        "a legacy command id on another kind of stream",
    );
    // A legacy offline activation answers the counter-key it stored (not one computed now).
    let y = Uuid::now_v7();
    let stored_key = ledger_events::CounterKey::parse_grouped("AF67 142D 1048 F615").unwrap();
    let request = offline_request("50026B77605FA3F8");
    w.ledger
        .append(
            &StreamId::offline_activation(&request.serial),
            license_ledger::store::ExpectedVersion::Any,
            vec![ledger_events::OfflineActivationIssued {
                serial: request.serial,
                cnpj: None,
                product: Product::EasyCash,
                license_id: None,
                caixa: request.caixa,
                equipamento: None,
                terminal: None,
                counter_key: Some(stored_key),
                code_mac: None,
                valid_until: at("2023-03-28", (23, 59, 59)),
            }
            .into()],
            &support(),
            y,
        )
        .await
        .unwrap();
    let head = w.ledger.head().await.unwrap();
    let retried = w
        .ledger
        .issue_offline_activation(&offline_secrets(), request, &support(), y)
        .await
        .unwrap();
    assert!(retried.outcome.was_retry);
    assert_eq!(retried.counter_key, stored_key);
    assert_eq!(retried.valid_until, day("2023-03-28"));
    assert_eq!(w.ledger.head().await.unwrap(), head);
}

/// Finding 4 of issue 15: a record that merely carries a command id as its correlation id
/// (a relay chooses the correlation ids of the events it forwards) is not that command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_record_carrying_a_command_id_as_correlation_id_does_not_make_it_a_retry() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    let x = Uuid::now_v7();
    w.ledger
        .store()
        .append(
            &StreamId::license(id),
            license_ledger::store::ExpectedVersion::Any,
            vec![license_ledger::store::NewEvent {
                event_id: Uuid::now_v7(),
                event: ledger_events::LicenseUnblocked {
                    license_id: id,
                    note: None,
                }
                .into(),
                actor: support(),
                correlation_id: x,
            }],
        )
        .await
        .unwrap();
    let done = w
        .ledger
        .license(
            LicenseCommand::Block {
                license_id: id,
                note: None,
            },
            &support(),
            x,
        )
        .await
        .unwrap();
    assert!(!done.was_retry);
    w.ledger.catch_up().await.unwrap();
    assert!(w.ledger.view().license(id).unwrap().blocked);
}

/// Finding 4 of issue 15: two requests racing with one command id and different bodies on
/// one license: one is stored, the other refused (the store's own retry recognition, by
/// event id, is checked against the correlation id too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_racing_requests_with_one_command_id_and_different_bodies_store_one() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    for round in 0..20 {
        let x = Uuid::now_v7();
        let head = w.ledger.head().await.unwrap().position;
        let note = |s: &str| Some(ledger_events::Note::parse(&format!("{s} {round}")).unwrap());
        let actor = support();
        let a = w.ledger.license(
            LicenseCommand::Block {
                license_id: id,
                note: note("a"),
            },
            &actor,
            x,
        );
        let b = w.ledger.license(
            LicenseCommand::Block {
                license_id: id,
                note: note("b"),
            },
            &actor,
            x,
        );
        let (a, b) = tokio::join!(a, b);
        let stored = [&a, &b]
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_ok_and(|o| !o.was_retry && o.positions.is_some())
            })
            .count();
        let refused = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Err(AppError::CommandIdReused { .. })))
            .count();
        let new = w.ledger.head().await.unwrap().position - head;
        assert!(
            stored + refused == 2 && new == stored as u64,
            "round {round}: {a:?} / {b:?}, {new} records"
        );
        w.license_cmd(LicenseCommand::Unblock {
            license_id: id,
            note: None,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vinculo_two_terminals_racing_for_the_last_free_license_one_wins() {
    for round in 0..10 {
        let w = World::new(at("2023-03-27", (10, 0, 0))).await;
        w.customer().await;
        let only = w.license("2023-05-01", None).await;
        let (a, b) = tokio::join!(
            {
                let l = w.ledger.clone();
                async move { l.check_in(&request(1)).await.unwrap() }
            },
            {
                let l = w.ledger.clone();
                async move { l.check_in(&request(2)).await.unwrap() }
            },
        );
        let winners: Vec<&CheckInPlan> = [&a, &b]
            .into_iter()
            .filter(|p| p.license_id == Some(only))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {a:?} / {b:?}");
        let loser = if a.license_id == Some(only) { &b } else { &a };
        assert_eq!(loser.code, OutcomeCode::NoLicense, "round {round}");
        let binds = w
            .events(&StreamId::license(only))
            .await
            .into_iter()
            .filter(|e| matches!(e, Event::License(LicenseEvent::Bound(_))))
            .count();
        assert_eq!(binds, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vinculo_one_terminal_racing_with_itself_holds_one_license() {
    for round in 0..5 {
        let w = World::new(at("2023-03-27", (10, 0, 0))).await;
        w.customer().await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(w.license("2023-05-01", None).await);
        }
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = w.ledger.clone();
            tasks.push(tokio::spawn(async move {
                l.check_in(&request(1)).await.unwrap()
            }));
        }
        let mut answered = std::collections::BTreeSet::new();
        for t in tasks {
            answered.insert(t.await.unwrap().license_id);
        }
        assert_eq!(answered.len(), 1, "round {round}: answered by {answered:?}");
        let mut bound = 0;
        for id in &ids {
            bound += w
                .events(&StreamId::license(*id))
                .await
                .iter()
                .filter(|e| matches!(e, Event::License(LicenseEvent::Bound(_))))
                .count();
        }
        assert_eq!(
            bound, 1,
            "round {round}: one terminal bound {bound} licenses"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respostas_assinadas_terminals_verify_answers_and_reject_forgeries_and_replays() {
    use license_ledger::app::answers::AnswerSigner;
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    w.license("2023-05-01", None).await;
    let signer = AnswerSigner::from_seed([42; 32]);
    let req = request(1);
    let plan = w.ledger.check_in(&req).await.unwrap();
    let signed = signer.sign(&req, &plan, Some("nonce-123".into()), w.clock_now());
    let subject = ledger_events::answer::Subject {
        cnpj: req.cnpj,
        product: req.product,
        hardware_id: req.hardware_id,
    };
    signed
        .verify_with_nonce(&signer.verifying_key(), &subject, "nonce-123")
        .unwrap();
    assert!(
        signed
            .verify_with_nonce(&signer.verifying_key(), &subject, "nonce-999")
            .is_err(),
        "a replayed answer fails"
    );
    let mut forged = signed.clone();
    forged.answer.expires_on = Some(day("2030-01-01"));
    assert!(
        forged.verify_signature(&signer.verifying_key()).is_err(),
        "a changed expiry fails"
    );
    let mut forged = signed.clone();
    forged.answer.messages[0].push('!');
    assert!(
        forged.verify_signature(&signer.verifying_key()).is_err(),
        "a changed text fails"
    );
    let other = AnswerSigner::from_seed([43; 32]);
    assert!(
        signed.verify_signature(&other.verifying_key()).is_err(),
        "a fake server's key fails"
    );
    let json = serde_json::to_string(&signed).unwrap();
    let back: ledger_events::SignedAnswer = serde_json::from_str(&json).unwrap();
    back.verify_with_nonce(&signer.verifying_key(), &subject, "nonce-123")
        .unwrap();
}

impl World {
    fn clock_now(&self) -> DateTime<Utc> {
        use license_ledger::clock::Clock;
        self.clock.now()
    }
}

mod incremental_equals_rebuild {
    use super::*;
    use ledger_projections::view::{ContingencyQuery, LedgerView, LicenseQuery};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Grant(u8),
        Block(u8),
        Unblock(u8),
        Deactivate(u8),
        Reactivate(u8),
        Unlink(u8),
        Renew(u8, u8),
        CheckIn(u8, u8),
        Advance(u8),
        Contingency(bool),
        Resources(u8, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..2).prop_map(Op::Grant),
            1 => (0u8..6).prop_map(Op::Block),
            1 => (0u8..6).prop_map(Op::Unblock),
            1 => (0u8..6).prop_map(Op::Deactivate),
            1 => (0u8..6).prop_map(Op::Reactivate),
            1 => (0u8..6).prop_map(Op::Unlink),
            1 => ((0u8..6), (1u8..60)).prop_map(|(l, d)| Op::Renew(l, d)),
            4 => ((1u8..5), (0u8..2)).prop_map(|(t, p)| Op::CheckIn(t, p)),
            1 => (1u8..48).prop_map(Op::Advance),
            1 => any::<bool>().prop_map(Op::Contingency),
            1 => ((0u8..6), any::<bool>()).prop_map(|(l, b)| Op::Resources(l, b)),
        ]
    }

    fn snapshot(view: &LedgerView) -> String {
        let licenses = view.list_licenses(&LicenseQuery {
            limit: 500,
            ..LicenseQuery::default()
        });
        let contingencies = view.contingencies(&ContingencyQuery {
            limit: 500,
            ..ContingencyQuery::default()
        });
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            view.customers(),
            licenses.items,
            contingencies.items,
            view.position()
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

        /// For random command sequences, the view fed incrementally by the applier equals the
        /// view rebuilt from the log from scratch.
        #[test]
        fn the_live_view_equals_a_rebuild_from_the_log(ops in prop::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let w = World::new(at("2023-03-27", (10, 0, 0))).await;
                w.customer().await;
                let mut licenses: Vec<LicenseId> = Vec::new();
                let pick = |ls: &Vec<LicenseId>, i: u8| ls.get(i as usize % ls.len().max(1)).copied();
                for op in &ops {
                    let actor = support();
                    let id = Uuid::now_v7();
                    // Domain refusals are part of the game; only other errors fail the test.
                    let r: Result<(), AppError> = match op {
                        Op::Grant(p) => {
                            let product = if *p == 0 { Product::EasyCash } else { Product::Notify };
                            w.ledger.grant_license(GrantLicense { cnpj: cnpj(), product, contract_id: None, expires_on: day("2023-04-15"), resources: Resources::default() }, &actor, id).await.map(|(l, _)| licenses.push(l))
                        }
                        Op::Block(i) => match pick(&licenses, *i) { Some(l) => w.ledger.license(LicenseCommand::Block { license_id: l, note: None }, &actor, id).await.map(|_| ()), None => Ok(()) },
                        Op::Unblock(i) => match pick(&licenses, *i) { Some(l) => w.ledger.license(LicenseCommand::Unblock { license_id: l, note: None }, &actor, id).await.map(|_| ()), None => Ok(()) },
                        Op::Deactivate(i) => match pick(&licenses, *i) { Some(l) => w.ledger.license(LicenseCommand::Deactivate { license_id: l, note: None }, &actor, id).await.map(|_| ()), None => Ok(()) },
                        Op::Reactivate(i) => match pick(&licenses, *i) { Some(l) => w.ledger.license(LicenseCommand::Reactivate { license_id: l, note: None }, &actor, id).await.map(|_| ()), None => Ok(()) },
                        Op::Unlink(i) => match pick(&licenses, *i) { Some(l) => w.ledger.license(LicenseCommand::Unlink { license_id: l, note: None }, &actor, id).await.map(|_| ()), None => Ok(()) },
                        Op::Renew(i, d) => match pick(&licenses, *i) {
                            Some(l) => {
                                let current = w.ledger.view().license(l).unwrap().expires_on;
                                w.ledger.license(LicenseCommand::Renew { license_id: l, expires_on: current + chrono::Duration::days(i64::from(*d)) }, &actor, id).await.map(|_| ())
                            }
                            None => Ok(()),
                        },
                        Op::CheckIn(t, p) => {
                            let mut req = request(*t);
                            req.product = if *p == 0 { Product::EasyCash } else { Product::Notify };
                            w.ledger.check_in(&req).await.map(|_| ())
                        }
                        Op::Advance(h) => { w.clock.advance(chrono::Duration::hours(i64::from(*h))); Ok(()) }
                        Op::Contingency(enter) => {
                            let c = if *enter {
                                ContingencyCommand::Enter { cnpj: cnpj(), kind: ContingencyKind::Intelliweb, hardware_id: None, license_id: None, grace_until: None, note: None }
                            } else {
                                ContingencyCommand::Clear { cnpj: cnpj(), kind: ContingencyKind::Intelliweb, hardware_id: None, note: None }
                            };
                            w.ledger.contingency(c, &Actor::system("relay").unwrap(), id).await.map(|_| ())
                        }
                        Op::Resources(i, dav) => match pick(&licenses, *i) {
                            Some(l) => {
                                let r = Resources::new([(ledger_events::ResourceKey::parse("habilita_dav").unwrap(), ledger_events::ResourceValue::Bool(*dav))]).unwrap();
                                w.ledger.license(LicenseCommand::ChangeResources { license_id: l, resources: r }, &actor, id).await.map(|_| ())
                            }
                            None => Ok(()),
                        },
                    };
                    match r {
                        Ok(()) | Err(AppError::Domain(_)) => {}
                        Err(e) => panic!("{op:?}: {e}"),
                    }
                }
                w.ledger.catch_up().await.unwrap();
                let records = w.ledger.store().read_all(1, 10_000).await.unwrap();
                let rebuilt = ledger_projections::rebuild(records.into_iter().map(Ok::<_, std::convert::Infallible>), None).unwrap();
                prop_assert_eq!(snapshot(w.ledger.view()), snapshot(&rebuilt));
                Ok(())
            })?;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditoria_the_license_table_as_of_a_past_moment_or_position() {
    use ledger_projections::asof::AsOf;
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    let granted_at = w.ledger.store().head().await.unwrap().position;
    w.clock.set(at("2023-03-28", (10, 0, 0)));
    w.license_cmd(LicenseCommand::Block {
        license_id: id,
        note: None,
    })
    .await
    .unwrap();
    w.clock.set(at("2023-03-29", (10, 0, 0)));
    w.license_cmd(LicenseCommand::Renew {
        license_id: id,
        expires_on: day("2023-06-01"),
    })
    .await
    .unwrap();

    let now = w.ledger.view().license(id).unwrap();
    assert!(now.blocked);
    assert_eq!(now.expires_on, day("2023-06-01"));
    let before_block = w
        .ledger
        .view_as_of(AsOf::Time(at("2023-03-27", (23, 59, 59))))
        .await
        .unwrap();
    let then = before_block.license(id).unwrap();
    assert!(!then.blocked);
    assert_eq!(then.expires_on, day("2023-05-01"));
    let by_position = w
        .ledger
        .view_as_of(AsOf::Position(granted_at))
        .await
        .unwrap();
    assert_eq!(by_position.position(), granted_at);
    assert!(!by_position.license(id).unwrap().blocked);
    let mid = w
        .ledger
        .view_as_of(AsOf::Time(at("2023-03-28", (12, 0, 0))))
        .await
        .unwrap();
    let mid = mid.license(id).unwrap();
    assert!(mid.blocked);
    assert_eq!(mid.expires_on, day("2023-05-01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_holds_until_the_next_day_or_until_the_check_in_is_due_again() {
    let w = World::new(at("2023-03-27", (17, 32, 28))).await;
    w.customer().await;
    w.license("2023-05-01", None).await;
    // The first check-in binds and records; its plan has steps.
    let first = w.check_in(1).await;
    assert!(!first.steps.is_empty());
    // Asked again a minute later: nothing to append, and the answer holds until the shop's
    // midnight, 03:00 UTC (the record interval, 24 h, ends later).
    w.clock.advance(chrono::Duration::minutes(1));
    let again = w.check_in(1).await;
    assert!(again.steps.is_empty(), "{:?}", again.steps);
    assert_eq!(again.holds_until, at("2023-03-28", (3, 0, 0)));
    // The next morning the check-in is due again 24 h after the last record (17:32:28), not
    // at the next midnight.
    w.clock.set(at("2023-03-28", (9, 0, 0)));
    let morning = w.check_in(1).await;
    assert!(morning.steps.is_empty(), "{:?}", morning.steps);
    assert_eq!(morning.holds_until, at("2023-03-28", (17, 32, 28)));
    // Once due, the check-in is recorded again.
    w.clock.set(at("2023-03-28", (17, 32, 28)));
    assert!(!w.check_in(1).await.steps.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_opening_every_terminal_at_once_binds_each_to_its_own_license() {
    // More terminals racing than the conflict retries allow for by themselves: each lost race
    // is another terminal's bind, so everyone gets through.
    let w = World::new(at("2023-03-27", (8, 0, 0))).await;
    w.customer().await;
    let n: u8 = 24;
    for _ in 0..n {
        w.license("2023-12-31", None).await;
    }
    let mut tasks = Vec::new();
    for t in 1..=n {
        let ledger = w.ledger.clone();
        tasks.push(tokio::spawn(
            async move { ledger.check_in(&request(t)).await },
        ));
    }
    let mut bound = std::collections::HashSet::new();
    for task in tasks {
        let plan = task.await.unwrap().expect("no terminal gives up");
        assert_eq!(plan.code, OutcomeCode::Valid);
        assert!(
            bound.insert(plan.license_id.unwrap()),
            "two terminals on one license"
        );
    }
    assert_eq!(bound.len(), usize::from(n));
}

/// Finding 4 of issue 15: a retried emergency release answers the codes it issued (the log
/// keeps only their MAC since finding 9: recomputed and checked against it; after the
/// emergency key changed it refuses rather than answer other codes), and its id reused for
/// another key releases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_retried_emergency_release_answers_the_codes_it_issued_and_finding_9_keeps_only_their_mac(
) {
    let w = World::new(at("2023-03-27", (14, 17, 48))).await;
    let (hw, key) = terminal(9);
    let (_, other_key) = terminal(8);
    let name = TradeName::parse("QUALIDADE").unwrap();
    let x = Uuid::now_v7();
    let release = |secret: &[u8], key: HardwareKey| {
        let secrets = Secrets {
            offline: Default::default(),
            emergency: secret.to_vec(),
            audit: AUDIT_KEY.to_vec(),
        };
        let name = name.clone();
        let ledger = w.ledger.clone();
        async move {
            ledger
                .issue_emergency_release(
                    &secrets,
                    Product::EasyCash,
                    hw,
                    key,
                    name,
                    true,
                    &support(),
                    x,
                )
                .await
        }
    };
    let first = release(b"emergency-secret-one", key).await.unwrap();
    let again = release(b"emergency-secret-one", key).await.unwrap();
    assert!(again.outcome.was_retry);
    assert_eq!(again.activation_code, first.activation_code);
    assert_eq!(again.counter_key, first.counter_key);
    match release(b"emergency-secret-two", key).await {
        Err(AppError::Domain(DomainError::Rejected(m))) => {
            assert!(m.contains("cannot be given again"), "{m}")
        }
        other => panic!("expected a refusal after the key changed, got {other:?}"),
    }
    // Finding 9: the record keeps the MAC of the codes, never the codes.
    match &w.events(&StreamId::emergency_release(&hw)).await[..] {
        [Event::EmergencyRelease(ledger_events::EmergencyReleaseEvent::Issued(i))] => {
            assert_eq!((i.activation_code, i.counter_key), (None, None));
            assert_eq!(
                i.code_mac,
                Some(license_ledger::app::commands::emergency_code_mac(
                    AUDIT_KEY,
                    Product::EasyCash,
                    &hw,
                    &key,
                    &first.activation_code,
                    &first.counter_key
                ))
            );
        }
        other => panic!("{other:?}"),
    }
    is_reused(
        release(b"emergency-secret-one", other_key).await,
        x,
        "another key",
    );
    assert_eq!(w.events(&StreamId::emergency_release(&hw)).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Issue 15, finding 3 (and finding 9's counter-keys): per-terminal offline keys, and the log
// keeps only a MAC of each issued counter-key.
// ---------------------------------------------------------------------------------------------

/// The product secret of [`offline_secrets`].
fn easycash_secret() -> Vec<u8> {
    offline_secrets().offline[&Product::EasyCash].clone()
}

fn offline_for_license(serial: &str, license_id: LicenseId) -> OfflineRequest {
    OfflineRequest {
        cnpj: Some(cnpj()),
        license_id: Some(license_id),
        ..offline_request(serial)
    }
}

/// Finding 3: counter-keys were HMACs under one secret per product, held by every terminal.
/// A terminal the center has seen online now gets codes under its own key: a code made for
/// terminal A does not verify with terminal B's key (same customer, same product), nor with
/// the product's key; B's codes do not verify with A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_counter_key_made_for_terminal_a_does_not_verify_for_terminal_b_of_the_same_product(
) {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let la = w.license("2023-05-01", None).await;
    assert_eq!(w.check_in(3).await.code, OutcomeCode::Valid); // terminal A binds la
    let lb = w.license("2023-05-01", None).await;
    assert_eq!(w.check_in(4).await.code, OutcomeCode::Valid); // terminal B binds lb
    w.ledger.catch_up().await.unwrap();
    let (a, b) = (terminal(3).0, terminal(4).0);
    assert_eq!(
        w.ledger
            .view()
            .license(la)
            .unwrap()
            .binding
            .unwrap()
            .hardware_id,
        a
    );
    assert_eq!(
        w.ledger
            .view()
            .license(lb)
            .unwrap()
            .binding
            .unwrap()
            .hardware_id,
        b
    );
    let secrets = offline_secrets();
    let secret = easycash_secret();
    let key_a = offline::terminal_key(&secret, &cnpj(), &a);
    let key_b = offline::terminal_key(&secret, &cnpj(), &b);
    let today = day("2023-03-27");

    let serial_a = Serial::parse("50026B77605FA3F8").unwrap();
    let for_a = w
        .ledger
        .issue_offline_activation(
            &secrets,
            offline_for_license("50026B77605FA3F8", la),
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    assert_eq!(for_a.terminal, Some(a));
    assert_eq!(
        offline::verify_terminal_counter_key(
            &key_a,
            &serial_a,
            Product::EasyCash,
            &for_a.counter_key,
            today
        ),
        Ok(day("2023-03-28"))
    );
    assert_eq!(
        offline::verify_terminal_counter_key(
            &key_b,
            &serial_a,
            Product::EasyCash,
            &for_a.counter_key,
            today
        ),
        Err(ledger_events::OfflineError::Invalid),
        "terminal B's key must not verify a code made for terminal A"
    );
    assert_eq!(
        offline::verify_counter_key(
            &secret,
            &serial_a,
            Product::EasyCash,
            &for_a.counter_key,
            today
        ),
        Err(ledger_events::OfflineError::Invalid),
        "nor the product's key"
    );

    let serial_b = Serial::parse("50026B7700001111").unwrap();
    let for_b = w
        .ledger
        .issue_offline_activation(
            &secrets,
            offline_for_license("50026B7700001111", lb),
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    assert_eq!(for_b.terminal, Some(b));
    assert!(offline::verify_terminal_counter_key(
        &key_b,
        &serial_b,
        Product::EasyCash,
        &for_b.counter_key,
        today
    )
    .is_ok());
    assert_eq!(
        offline::verify_terminal_counter_key(
            &key_a,
            &serial_b,
            Product::EasyCash,
            &for_b.counter_key,
            today
        ),
        Err(ledger_events::OfflineError::Invalid)
    );
    // The records name the terminal whose key made each code.
    for (serial, terminal) in [(serial_a, a), (serial_b, b)] {
        match &w.events(&StreamId::offline_activation(&serial)).await[..] {
            [Event::OfflineActivation(ledger_events::OfflineActivationEvent::Issued(i))] => {
                assert_eq!(i.terminal, Some(terminal));
                assert_eq!(i.cnpj, Some(cnpj()));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Finding 3's residual risk, as documented in SECURITY.md: a terminal the center has never
/// seen online (or a request that names no license of it) still gets a code under the
/// product's key, which that terminal verifies with the product secret it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_terminal_never_seen_online_still_gets_a_code_under_the_product_key() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let seen = w.license("2023-05-01", None).await;
    w.check_in(5).await; // binds `seen`, the only license
    let never_seen = w.license("2023-05-01", None).await;
    w.ledger.catch_up().await.unwrap();
    assert!(w.ledger.view().license(seen).unwrap().binding.is_some());
    assert!(w
        .ledger
        .view()
        .license(never_seen)
        .unwrap()
        .binding
        .is_none());
    let secrets = offline_secrets();
    let secret = easycash_secret();
    let today = day("2023-03-27");
    let cases = [
        (
            "a license no terminal ever checked in with",
            "50026B7710000001",
            Some(never_seen),
        ),
        ("no license named", "50026B7710000002", None),
        // The serial does not start with the seen terminal's hardware-id prefix: the code
        // is for another machine, which may never have been online.
        (
            "a serial of another machine",
            "AABBCCDD10000003",
            Some(seen),
        ),
    ];
    for (what, serial, license_id) in cases {
        let request = OfflineRequest {
            cnpj: Some(cnpj()),
            license_id,
            ..offline_request(serial)
        };
        let issued = w
            .ledger
            .issue_offline_activation(&secrets, request, &support(), Uuid::now_v7())
            .await
            .unwrap();
        assert_eq!(issued.terminal, None, "{what}");
        let serial = Serial::parse(serial).unwrap();
        assert_eq!(
            offline::verify_counter_key(
                &secret,
                &serial,
                Product::EasyCash,
                &issued.counter_key,
                today
            ),
            Ok(day("2023-03-28")),
            "{what}"
        );
    }
}

/// Finding 9 (counter-keys readable by auditors): the record keeps the MAC of the code under
/// the audit key, never the code; neither the record's bytes nor its JSON (what `/v1/events`
/// and `export` write) contain it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_the_log_keeps_a_mac_of_an_issued_counter_key_never_the_key() {
    let w = World::new(at("2023-03-27", (10, 0, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    w.check_in(3).await;
    let serial = Serial::parse("50026B77605FA3F8").unwrap();
    let issued = w
        .ledger
        .issue_offline_activation(
            &offline_secrets(),
            offline_for_license("50026B77605FA3F8", id),
            &support(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    let records = w
        .ledger
        .store()
        .read_stream(&StreamId::offline_activation(&serial), 1, 10)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    match record.event().unwrap() {
        Event::OfflineActivation(ledger_events::OfflineActivationEvent::Issued(i)) => {
            assert_eq!(i.counter_key, None);
            assert_eq!(
                i.code_mac,
                Some(offline::code_mac(
                    AUDIT_KEY,
                    &serial,
                    Product::EasyCash,
                    issued.valid_until,
                    &issued.counter_key
                ))
            );
        }
        other => panic!("{other:?}"),
    }
    let key = issued.counter_key.as_bytes();
    assert!(
        !record.payload.windows(key.len()).any(|w| w == key),
        "the stored payload holds the counter-key's bytes"
    );
    let json = serde_json::to_string(&record.to_json().unwrap()).unwrap();
    for form in [
        issued.counter_key.to_string(),
        issued.counter_key.grouped(),
        hex::encode(key),
    ] {
        assert!(!json.contains(&form), "{form} in {json}");
    }
    assert!(json.contains("\"code_mac\""), "{json}");
}

/// Finding 3 with finding 4: the record keeps only a MAC, so a retried activation recomputes
/// the code from the stored serial, product, terminal and day and checks it against the MAC:
/// the same code, the next day too. When the keys changed since, it refuses rather than
/// answer a code that was never issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_retried_offline_activation_answers_the_same_code_recomputed_and_checked_against_the_mac(
) {
    let w = World::new(at("2023-03-27", (23, 50, 0))).await;
    w.customer().await;
    let id = w.license("2023-05-01", None).await;
    w.check_in(3).await;
    let secrets = offline_secrets();
    let x = Uuid::now_v7();
    let request = offline_for_license("50026B77605FA3F8", id);
    let first = w
        .ledger
        .issue_offline_activation(&secrets, request.clone(), &support(), x)
        .await
        .unwrap();
    assert_eq!(first.terminal, Some(terminal(3).0));
    w.clock.set(at("2023-03-28", (0, 10, 0)));
    let again = w
        .ledger
        .issue_offline_activation(&secrets, request.clone(), &support(), x)
        .await
        .unwrap();
    assert!(again.outcome.was_retry);
    assert_eq!(again.counter_key, first.counter_key);
    assert_eq!(again.valid_until, first.valid_until);
    assert_eq!(again.terminal, first.terminal);
    // Keys changed since the first issue: no code is answered.
    let mut other_audit = secrets.clone();
    other_audit.audit = b"another audit key, 32 bytes long".to_vec();
    let mut other_product_key = secrets.clone();
    other_product_key.offline.insert(
        Product::EasyCash,
        b"a rotated easycash secret 32 byt".to_vec(),
    );
    for (what, s) in [
        ("audit key", other_audit),
        ("product key", other_product_key),
    ] {
        match w
            .ledger
            .issue_offline_activation(&s, request.clone(), &support(), x)
            .await
        {
            Err(AppError::Domain(DomainError::Rejected(m))) => {
                assert!(m.contains("cannot be given again"), "{what}: {m}")
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
}

/// Finding 3: records written before MACs were kept (schema version 1, the plain
/// counter-key) still decode, replay, and answer a retry with their key, which verifies under
/// the product's key as it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_an_old_format_record_with_a_plain_counter_key_still_replays_and_verifies() {
    /// `OfflineActivationIssued` as schema version 1 wrote it.
    #[derive(serde::Serialize)]
    struct V1 {
        serial: Serial,
        cnpj: Option<Cnpj>,
        product: Product,
        license_id: Option<LicenseId>,
        caixa: Option<ledger_events::TerminalNumber>,
        equipamento: Option<ledger_events::TerminalNumber>,
        counter_key: ledger_events::CounterKey,
        #[serde(with = "ledger_events::values::micros")]
        valid_until: DateTime<Utc>,
    }
    let now = at("2023-03-27", (10, 0, 0));
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(now);
    let store = FileStore::open(FileStoreConfig::new(dir.path()), Arc::new(clock.clone()))
        .await
        .unwrap();
    let request = offline_request("50026B77605FA3F8");
    let until = day("2023-03-28");
    let key = offline::counter_key(
        &easycash_secret(),
        &request.serial,
        Product::EasyCash,
        until,
    );
    let payload = postcard::to_stdvec(&V1 {
        serial: request.serial,
        cnpj: None,
        product: Product::EasyCash,
        license_id: None,
        caixa: request.caixa,
        equipamento: None,
        counter_key: key,
        valid_until: at("2023-03-28", (23, 59, 59)),
    })
    .unwrap();
    // As the ledger wrote it before command digests: event id from the command id,
    // correlation id = the command id.
    let x = Uuid::now_v7();
    let mut envelope = ledger_events::Envelope {
        position: 1,
        stream_id: StreamId::offline_activation(&request.serial),
        stream_version: 1,
        event_id: license_ledger::app::event_id_for(x, 0),
        event_type: "OfflineActivationIssued".into(),
        schema_version: 1,
        recorded_at: now,
        actor: support(),
        correlation_id: x,
        prev_hash: ledger_events::Hash::ZERO,
        hash: ledger_events::Hash::ZERO,
    };
    let mut bytes = Vec::new();
    envelope.hash = ledger_events::encode_record_into(&mut bytes, &envelope, &payload).unwrap();
    let record = ledger_events::Record::decode(&bytes).unwrap();
    store.import_record(&record).await.unwrap();
    let ledger = Ledger::start(
        Arc::new(store),
        Arc::new(clock.clone()),
        LedgerConfig::default(),
    )
    .await
    .unwrap();
    ledger.catch_up().await.unwrap();
    assert_eq!(
        ledger.view().position(),
        1,
        "the old record replays into the view"
    );
    let stored = ledger
        .store()
        .read_stream(&StreamId::offline_activation(&request.serial), 1, 10)
        .await
        .unwrap();
    assert_eq!(stored[0].envelope.schema_version, 1);
    match stored[0].event().unwrap() {
        Event::OfflineActivation(ledger_events::OfflineActivationEvent::Issued(i)) => {
            assert_eq!(i.counter_key, Some(key));
            assert_eq!((i.terminal, i.code_mac), (None, None));
        }
        other => panic!("{other:?}"),
    }
    let again = ledger
        .issue_offline_activation(&offline_secrets(), request.clone(), &support(), x)
        .await
        .unwrap();
    assert!(again.outcome.was_retry);
    assert_eq!(again.counter_key, key);
    assert_eq!(again.terminal, None);
    assert_eq!(
        offline::verify_counter_key(
            &easycash_secret(),
            &request.serial,
            Product::EasyCash,
            &again.counter_key,
            day("2023-03-27")
        ),
        Ok(until)
    );
    // The serial stays used.
    assert!(ledger
        .issue_offline_activation(&offline_secrets(), request, &support(), Uuid::now_v7())
        .await
        .is_err());
}

/// "Licença expirada" on the shop's clock: a license that "expira no dia 26/03" sells
/// through the last minute of 26/03 in Brasília (02:59 UTC on 27/03), including 21:00 local
/// (midnight UTC, where a UTC calendar turned the day), and stops at 00:00 local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_licenca_expirada_counts_the_shops_local_days() {
    let w = World::new(at("2023-03-26", (12, 0, 0))).await;
    w.customer().await;
    w.license("2023-03-26", None).await;
    for (now, local, code) in [
        (
            at("2023-03-26", (23, 59, 0)),
            "20:59",
            OutcomeCode::Expiring,
        ),
        (at("2023-03-27", (0, 0, 0)), "21:00", OutcomeCode::Expiring),
        (
            at("2023-03-27", (2, 59, 59)),
            "23:59:59",
            OutcomeCode::Expiring,
        ),
        (
            at("2023-03-27", (3, 0, 0)),
            "00:00 on 27/03",
            OutcomeCode::Expired,
        ),
    ] {
        w.clock.set(now);
        let plan = w.check_in(1).await;
        assert_eq!(plan.code, code, "at {local} local");
        if code == OutcomeCode::Expiring {
            assert_eq!(plan.days_left, Some(0), "at {local} local: the last day");
            assert!(
                plan.messages
                    .contains(&"Licença do sistema expira no dia: 26/03/2023".to_owned()),
                "at {local} local: {:?}",
                plan.messages
            );
        }
    }
}

/// The same instant is another day in Manaus (UTC−4) than in Brasília (UTC−3): at 03:30 UTC
/// on 27/03 a license expiring on 26/03 still sells in Manaus (23:30 there) and no longer in
/// Brasília (00:30). Contract renewals count the same local days: the renew-before window
/// opens at local midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casos_tratados_a_customer_in_manaus_counts_manaus_days() {
    let manaus: Calendar = "America/Manaus".parse().unwrap();
    let now = at("2023-03-27", (3, 30, 0));
    for (calendar, code) in [
        (manaus, OutcomeCode::Expiring),
        (Calendar::default(), OutcomeCode::Expired),
    ] {
        let w = World::in_zone(at("2023-03-26", (12, 0, 0)), calendar).await;
        w.customer().await;
        w.license("2023-03-26", None).await;
        w.clock.set(now);
        assert_eq!(w.check_in(1).await.code, code, "{calendar}");
    }

    // Renewal by contract (every 30 days, 3 days before): a license expiring on 30/03 enters
    // the window on 27/03, local. At 03:30 UTC on 27/03 that is 27/03 in Brasília and still
    // 26/03 in Manaus.
    for (calendar, renewed) in [(manaus, false), (Calendar::default(), true)] {
        let w = World::in_zone(at("2023-03-20", (12, 0, 0)), calendar).await;
        w.customer().await;
        let contract = w.contract(30, 3).await;
        let id = w.license("2023-03-30", Some(contract)).await;
        w.clock.set(now);
        let plan = w.check_in(1).await;
        assert_eq!(
            plan.license_expires_on,
            Some(day(if renewed { "2023-04-29" } else { "2023-03-30" })),
            "{calendar}: license {id}"
        );
    }
}
