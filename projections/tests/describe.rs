//! The timeline's pt-BR line for every event type, pinned.

mod common;

use common::*;
use ledger_events::*;
use ledger_projections::describe;

/// Describes `event` inside a real envelope.
fn line(event: impl Into<Event>) -> String {
    let mut log = Log::new();
    log.push(event);
    describe(log.envelope(1), log.event(1))
}

fn c() -> Cnpj {
    Cnpj::parse("11.222.333/0001-81").expect("cnpj")
}

fn terminal() -> HardwareId {
    HardwareId::parse("50026B77825EECA5").expect("hardware id")
}

#[test]
fn customer_registered() {
    assert_eq!(
        line(CustomerRegistered {
            cnpj: c(),
            trade_name: trade_name("Mercado Bom"),
            since: day(2023, 1, 2),
        }),
        "Cliente 11.222.333/0001-81 cadastrado: Mercado Bom, início em 02/01/2023"
    );
}

#[test]
fn customer_flags_with_and_without_a_note() {
    assert_eq!(
        line(CustomerActivated {
            cnpj: c(),
            note: None
        }),
        "Cliente ativado"
    );
    assert_eq!(
        line(CustomerDeactivated {
            cnpj: c(),
            note: note("contrato encerrado")
        }),
        "Cliente desativado: contrato encerrado"
    );
    assert_eq!(
        line(CustomerBlocked {
            cnpj: c(),
            note: note("inadimplente")
        }),
        "Cliente bloqueado: inadimplente"
    );
    assert_eq!(
        line(CustomerUnblocked {
            cnpj: c(),
            note: None
        }),
        "Cliente desbloqueado"
    );
    assert_eq!(
        line(CustomerBlacklisted {
            cnpj: c(),
            note: None
        }),
        "Cliente incluído na blacklist"
    );
    assert_eq!(
        line(CustomerUnblacklisted {
            cnpj: c(),
            note: None
        }),
        "Cliente retirado da blacklist"
    );
}

#[test]
fn contract_signed_with_and_without_an_end() {
    let signed = ContractSigned {
        contract_id: contract_id(731),
        cnpj: c(),
        starts_on: day(2023, 3, 1),
        ends_on: Some(day(2024, 2, 29)),
        interval_days: 30,
        renew_before_days: 3,
    };
    assert_eq!(
        line(signed.clone()),
        "Contrato 000731 assinado: inicia em 01/03/2023, expira em 29/02/2024, intervalo de 30 dias, renovar 3 dias antes"
    );
    assert_eq!(
        line(ContractSigned {
            ends_on: None,
            ..signed
        }),
        "Contrato 000731 assinado: inicia em 01/03/2023, sem data de término, intervalo de 30 dias, renovar 3 dias antes"
    );
}

#[test]
fn contract_deactivated_and_reactivated() {
    assert_eq!(
        line(ContractDeactivated {
            contract_id: contract_id(731),
            note: note("cancelado")
        }),
        "Contrato 000731 desativado: cancelado"
    );
    assert_eq!(
        line(ContractReactivated {
            contract_id: contract_id(731),
            note: None
        }),
        "Contrato 000731 reativado"
    );
}

#[test]
fn license_granted() {
    let g = granted(2438, c(), Product::EasyCash, day(2023, 5, 1));
    assert_eq!(
        line(g.clone()),
        "Licença 002438 concedida: EasyCash, expira em 01/05/2023"
    );
    assert_eq!(
        line(LicenseGranted {
            contract_id: Some(contract_id(731)),
            product: Product::Nfe,
            ..g
        }),
        "Licença 002438 concedida: NF-e Nota Fiscal, expira em 01/05/2023 (contrato 000731)"
    );
}

#[test]
fn license_renewed_by_contract_or_by_hand() {
    let r = LicenseRenewed {
        license_id: lic(2438),
        previous_expiry: day(2023, 5, 1),
        expires_on: day(2023, 5, 31),
        cause: RenewalCause::Contract {
            contract_id: contract_id(731),
        },
    };
    assert_eq!(
        line(r.clone()),
        "Licença renovada até 31/05/2023 (contrato 000731)"
    );
    assert_eq!(
        line(LicenseRenewed {
            cause: RenewalCause::Manual,
            ..r
        }),
        "Licença renovada até 31/05/2023 (renovação manual)"
    );
}

#[test]
fn license_bound() {
    let b = LicenseBound {
        license_id: lic(2438),
        hardware_id: terminal(),
        hardware_key: key(1),
        ip: Some(ip("192.168.0.198")),
        caixa: Some(TerminalNumber::new(3).expect("caixa")),
        equipamento: None,
    };
    assert_eq!(
        line(b.clone()),
        "Associada ao terminal 50026B77825EECA5 (IP 192.168.0.198, caixa 03)"
    );
    assert_eq!(
        line(LicenseBound {
            ip: None,
            caixa: None,
            equipamento: Some(TerminalNumber::new(12).expect("equipamento")),
            ..b.clone()
        }),
        "Associada ao terminal 50026B77825EECA5 (equipamento 12)"
    );
    assert_eq!(
        line(LicenseBound {
            ip: None,
            caixa: None,
            ..b
        }),
        "Associada ao terminal 50026B77825EECA5"
    );
}

#[test]
fn license_unlinked() {
    let u = LicenseUnlinked {
        license_id: lic(2438),
        hardware_id: terminal(),
        note: None,
    };
    assert_eq!(line(u.clone()), "Desassociada do terminal 50026B77825EECA5");
    assert_eq!(
        line(LicenseUnlinked {
            note: note("troca de máquina"),
            ..u
        }),
        "Desassociada do terminal 50026B77825EECA5: troca de máquina"
    );
}

#[test]
fn license_blocked_unblocked_deactivated_reactivated() {
    let id = lic(2438);
    assert_eq!(
        line(LicenseBlocked {
            license_id: id,
            note: note("inadimplente")
        }),
        "Bloqueada: inadimplente"
    );
    assert_eq!(
        line(LicenseBlocked {
            license_id: id,
            note: None
        }),
        "Bloqueada"
    );
    assert_eq!(
        line(LicenseUnblocked {
            license_id: id,
            note: None
        }),
        "Desbloqueada"
    );
    assert_eq!(
        line(LicenseDeactivated {
            license_id: id,
            note: note("cancelada")
        }),
        "Desativada: cancelada"
    );
    assert_eq!(
        line(LicenseReactivated {
            license_id: id,
            note: None
        }),
        "Reativada"
    );
}

#[test]
fn license_resources_changed() {
    assert_eq!(
        line(LicenseResourcesChanged {
            license_id: lic(2438),
            resources: resources(&[("habilita_dav", true), ("habilita_preventa", false)]),
        }),
        "Recursos alterados: habilita_dav=true, habilita_preventa=false"
    );
    let mixed = Resources::new([
        (
            ResourceKey::parse("caixas").expect("key"),
            ResourceValue::Int(3),
        ),
        (
            ResourceKey::parse("plano").expect("key"),
            ResourceValue::Text("ouro".into()),
        ),
    ])
    .expect("resources");
    assert_eq!(
        line(LicenseResourcesChanged {
            license_id: lic(2438),
            resources: mixed,
        }),
        "Recursos alterados: caixas=3, plano=ouro"
    );
    assert_eq!(
        line(LicenseResourcesChanged {
            license_id: lic(2438),
            resources: Resources::default(),
        }),
        "Recursos alterados: nenhum"
    );
}

fn check_in(outcome: CheckInOutcome) -> String {
    line(TerminalCheckedIn {
        hardware_id: terminal(),
        ..checked_in(c(), Product::EasyCash, 1, Some(2438), None, outcome)
    })
}

#[test]
fn terminal_checked_in_with_each_outcome() {
    assert_eq!(
        check_in(valid(day(2023, 5, 1))),
        "Check-in de 50026B77825EECA5: Licença do sistema expira no dia: 01/05/2023"
    );
    assert_eq!(
        check_in(CheckInOutcome::ExpiringSoon {
            expires_on: day(2023, 3, 30),
            days_left: 1
        }),
        "Check-in de 50026B77825EECA5: Licença do sistema expira no dia: 30/03/2023. Faltam [01] dias para expirar a licença!"
    );
    assert_eq!(
        check_in(CheckInOutcome::Contingency {
            kind: ContingencyKind::Intelliweb,
            expires_on: day(2023, 4, 4)
        }),
        "Check-in de 50026B77825EECA5: Licença do sistema expira no dia: 04/04/2023(CONTINGÊNCIA DO INTELLIWEB)"
    );
    assert_eq!(
        check_in(CheckInOutcome::Contingency {
            kind: ContingencyKind::Manual,
            expires_on: day(2023, 3, 29)
        }),
        "Check-in de 50026B77825EECA5: Licença do sistema expira no dia: 29/03/2023(CONTINGÊNCIA MANUAL)"
    );
}

#[test]
fn terminal_checked_in_refused_for_each_reason() {
    let refused = |reason| check_in(CheckInOutcome::Refused { reason });
    let cases = [
        (RefusalReason::CustomerInactive, "Usuário inválido."),
        (RefusalReason::CustomerBlocked, "cliente bloqueado"),
        (
            RefusalReason::NoLicenseAvailable,
            "nenhuma licença livre para o terminal",
        ),
        (RefusalReason::LicenseBlocked, "licença bloqueada"),
        (RefusalReason::LicenseDeactivated, "licença desativada"),
        (RefusalReason::LicenseExpired, "licença expirada"),
        (
            RefusalReason::GraceExpired,
            "prazo de contingência esgotado",
        ),
    ];
    for (reason, text) in cases {
        assert_eq!(
            refused(reason),
            format!("Check-in de 50026B77825EECA5 recusado: {text}")
        );
    }
}

#[test]
fn contingency_entered() {
    assert_eq!(
        line(ContingencyEntered {
            grace_until: Some(day(2023, 3, 29)),
            note: note("contra-chave AF67 142D 1048 F615"),
            hardware_id: Some(terminal()),
            ..entered(c(), ContingencyKind::Manual, None, Some(2438))
        }),
        "Contingência manual iniciada no terminal 50026B77825EECA5 (licença 002438), carência até 29/03/2023: contra-chave AF67 142D 1048 F615"
    );
    assert_eq!(
        line(ContingencyEntered {
            note: note("[401]Assinatura do token inválida"),
            ..entered(c(), ContingencyKind::Intelliweb, None, None)
        }),
        "Contingência do IntelliWeb iniciada: [401]Assinatura do token inválida"
    );
}

#[test]
fn contingency_cleared() {
    assert_eq!(
        line(ContingencyCleared {
            hardware_id: Some(terminal()),
            ..cleared(c(), ContingencyKind::Manual, None)
        }),
        "Contingência manual encerrada no terminal 50026B77825EECA5"
    );
    assert_eq!(
        line(ContingencyCleared {
            note: note("conexão restabelecida"),
            ..cleared(c(), ContingencyKind::Intelliweb, None)
        }),
        "Contingência do IntelliWeb encerrada: conexão restabelecida"
    );
}

#[test]
fn offline_activation_issued() {
    assert_eq!(
        line(OfflineActivationIssued {
            serial: Serial::parse("50026B77605FA3F8").expect("serial"),
            cnpj: Some(c()),
            product: Product::EasyCash,
            license_id: Some(lic(2438)),
            caixa: None,
            equipamento: None,
            terminal: None,
            counter_key: Some(CounterKey::parse("AF67142D1048F615").expect("counter-key")),
            code_mac: None,
            valid_until: at("2023-03-28T14:17:59Z"),
        }),
        "Liberação off-line do serial 50026B77605FA3F8 (EasyCash): contra-chave emitida (chave do produto), válida até 28/03/2023 14:17:59 UTC"
    );
    assert_eq!(
        line(OfflineActivationIssued {
            serial: Serial::parse("50026B77605FA3F8").expect("serial"),
            cnpj: Some(c()),
            product: Product::EasyCash,
            license_id: Some(lic(2438)),
            caixa: None,
            equipamento: None,
            terminal: Some(HardwareId::parse("50026B77825EECA5").expect("hardware id")),
            counter_key: None,
            code_mac: Some(CodeMac::from_bytes([0xAB; 32])),
            valid_until: at("2023-03-28T14:17:59Z"),
        }),
        "Liberação off-line do serial 50026B77605FA3F8 (EasyCash): contra-chave emitida (chave do terminal 50026B77825EECA5), válida até 28/03/2023 14:17:59 UTC"
    );
}

#[test]
fn emergency_release_issued() {
    assert_eq!(
        line(EmergencyReleaseIssued {
            product: Product::EasyCash,
            hardware_id: terminal(),
            hardware_key: key(1),
            activation_code: None,
            counter_key: None,
            code_mac: Some(CodeMac::from_bytes([0xCD; 32])),
            licensed_to: trade_name("QUALIDADE"),
        }),
        "Liberação emergencial do terminal 50026B77825EECA5 (EasyCash): licenciado para QUALIDADE"
    );
}

#[test]
fn customer_profile_changed() {
    assert_eq!(
        line(CustomerProfileChanged {
            cnpj: Cnpj::parse("11222333000181").unwrap(),
            partner: Partner::parse("IWS").ok(),
            time_zone: TimeZoneName::parse("America/Manaus").ok(),
        }),
        "Cadastro do cliente alterado: parceiro IWS, fuso horário America/Manaus"
    );
    assert_eq!(
        line(CustomerProfileChanged {
            cnpj: Cnpj::parse("11222333000181").unwrap(),
            partner: None,
            time_zone: None,
        }),
        "Cadastro do cliente alterado: parceiro (nenhum), fuso horário (o do servidor)"
    );
}

#[test]
fn every_event_type_is_described_by_a_test_here() {
    // Guards this file against a new catalogue entry arriving without a pinned line.
    assert_eq!(EVENT_TYPES.len(), 25);
}
