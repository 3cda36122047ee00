//! Samples shared by the integration tests: one hand-written value of every event type, a few
//! extra values for the variants one sample cannot show, fixed envelopes, and a chain builder.
//!
//! Values come from the domain (the manual's screens): CNPJ 11.222.333/0001-81 and the
//! alphanumeric 12.ABC.345/01DE-35, license 002438, the terminal 50026B77825EECA5 and so on.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use ledger_events::{
    encode_record_into, ActivationCode, Actor, CheckInOutcome, Cnpj, CodeMac, ContingencyCleared,
    ContingencyEntered, ContingencyKind, ContractDeactivated, ContractId, ContractReactivated,
    ContractSigned, CounterKey, CustomerActivated, CustomerBlacklisted, CustomerBlocked,
    CustomerDeactivated, CustomerProfileChanged, CustomerRegistered, CustomerUnblacklisted,
    CustomerUnblocked, EmergencyReleaseIssued, Envelope, Event, HardwareId, HardwareKey, Hash,
    LicenseBlocked, LicenseBound, LicenseDeactivated, LicenseGranted, LicenseId,
    LicenseReactivated, LicenseRenewed, LicenseResourcesChanged, LicenseUnblocked, LicenseUnlinked,
    Note, OfflineActivationIssued, Position, Product, ProgramVersion, Record, RefusalReason,
    RenewalCause, ResourceKey, ResourceValue, Resources, Serial, StreamVersion, TerminalCheckedIn,
    TerminalNumber, TradeName,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// Mercado Bom Preço, classic numeric CNPJ.
pub fn cnpj() -> Cnpj {
    Cnpj::parse("11222333000181").unwrap()
}
/// A customer with an alphanumeric CNPJ (the form in force since July 2026).
pub fn cnpj_alnum() -> Cnpj {
    Cnpj::parse("12ABC34501DE35").unwrap()
}
pub fn license_id() -> LicenseId {
    LicenseId::parse("002438").unwrap()
}
pub fn contract_id() -> ContractId {
    ContractId::parse("000731").unwrap()
}
pub fn hardware_id() -> HardwareId {
    HardwareId::parse("50026B77825EECA5").unwrap()
}
pub fn hardware_key() -> HardwareKey {
    HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap()
}
pub fn serial() -> Serial {
    Serial::parse("50026B77605FA3F8").unwrap()
}
pub fn counter_key() -> CounterKey {
    CounterKey::parse_grouped("AF67 142D 1048 F615").unwrap()
}
pub fn code_mac() -> CodeMac {
    CodeMac::parse("D3400A1FC163E78AE884FAD1A0F9E05374502B191C6F25A7859403E673A6C4DB").unwrap()
}
/// The offline activation sample as schema version 1 wrote it, upcast: the plain counter-key
/// under the product's key.
pub fn offline_activation_issued_v1_upcast() -> OfflineActivationIssued {
    OfflineActivationIssued {
        serial: serial(),
        cnpj: Some(cnpj()),
        product: Product::EasyCash,
        license_id: Some(license_id()),
        caixa: Some(terminal("03")),
        equipamento: None,
        terminal: None,
        counter_key: Some(counter_key()),
        code_mac: None,
        valid_until: Utc.with_ymd_and_hms(2023, 5, 2, 14, 32, 7).unwrap(),
    }
}
/// The emergency release sample as schema version 1 wrote it, upcast: the plain codes.
pub fn emergency_release_issued_v1_upcast() -> EmergencyReleaseIssued {
    EmergencyReleaseIssued {
        product: Product::Intellicash,
        hardware_id: hardware_id(),
        hardware_key: hardware_key(),
        activation_code: Some(activation_code()),
        counter_key: Some(counter_key()),
        code_mac: None,
        licensed_to: TradeName::parse("QUALIDADE").unwrap(),
    }
}
pub fn activation_code() -> ActivationCode {
    ActivationCode::parse("50026B7793D68451").unwrap()
}
pub fn program_version() -> ProgramVersion {
    ProgramVersion::parse("2.0.12.1").unwrap()
}
pub fn terminal(n: &str) -> TerminalNumber {
    TerminalNumber::parse(n).unwrap()
}
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
pub fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}
pub fn note(s: &str) -> Option<Note> {
    Some(Note::parse(s).unwrap())
}
pub fn resources(entries: &[(&str, ResourceValue)]) -> Resources {
    Resources::new(
        entries
            .iter()
            .map(|(k, v)| (ResourceKey::parse(k).unwrap(), v.clone())),
    )
    .unwrap()
}

pub fn operator() -> Actor {
    Actor::operator("suporte.ana").unwrap()
}
pub fn renewal_job() -> Actor {
    Actor::system("renewal-scheduler").unwrap()
}
pub fn contingency_monitor() -> Actor {
    Actor::system("contingency-monitor").unwrap()
}
pub fn terminal_actor() -> Actor {
    Actor::terminal(&hardware_id())
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

/// One event and the actor that would cause it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// A short label for messages; for golden samples, the event type.
    pub label: String,
    pub event: Event,
    pub actor: Actor,
}

fn sample(event: impl Into<Event>, actor: Actor) -> Sample {
    let event = event.into();
    Sample {
        label: event.event_type().to_owned(),
        event,
        actor,
    }
}

/// Exactly one sample per entry of `EVENT_TYPES`, at its current version: the values the golden
/// files hold. Changing one changes a golden file, which the golden test refuses: once a
/// version has a golden file, its sample is frozen (see `tests/golden/README.md`).
pub fn golden_samples() -> Vec<Sample> {
    vec![
        // Customer
        sample(
            CustomerRegistered {
                cnpj: cnpj(),
                trade_name: TradeName::parse("Mercado Bom Preço").unwrap(),
                since: date("2023-05-01"),
            },
            operator(),
        ),
        sample(
            CustomerActivated {
                cnpj: cnpj(),
                note: note("Contrato assinado em 01/05/2023"),
            },
            operator(),
        ),
        sample(
            CustomerDeactivated {
                cnpj: cnpj_alnum(),
                note: None,
            },
            operator(),
        ),
        sample(
            CustomerBlocked {
                cnpj: cnpj(),
                note: note("Inadimplência: 2 boletos em aberto"),
            },
            operator(),
        ),
        sample(
            CustomerUnblocked {
                cnpj: cnpj(),
                note: None,
            },
            operator(),
        ),
        sample(
            CustomerBlacklisted {
                cnpj: cnpj_alnum(),
                note: note("Chargeback contestado pela operadora"),
            },
            operator(),
        ),
        sample(
            CustomerUnblacklisted {
                cnpj: cnpj_alnum(),
                note: None,
            },
            operator(),
        ),
        sample(
            CustomerProfileChanged {
                cnpj: cnpj(),
                partner: Some(ledger_events::Partner::parse("IWS").unwrap()),
                time_zone: Some(ledger_events::TimeZoneName::parse("America/Manaus").unwrap()),
            },
            operator(),
        ),
        // Contract
        sample(
            ContractSigned {
                contract_id: contract_id(),
                cnpj: cnpj(),
                starts_on: date("2023-05-01"),
                ends_on: Some(date("2024-04-30")),
                interval_days: 30,
                renew_before_days: 3,
            },
            operator(),
        ),
        sample(
            ContractDeactivated {
                contract_id: contract_id(),
                note: note("Cliente pediu cancelamento"),
            },
            operator(),
        ),
        sample(
            ContractReactivated {
                contract_id: contract_id(),
                note: None,
            },
            operator(),
        ),
        // License
        sample(
            LicenseGranted {
                license_id: license_id(),
                cnpj: cnpj(),
                product: Product::EasyCash,
                contract_id: Some(contract_id()),
                expires_on: date("2023-05-31"),
                resources: resources(&[
                    ("habilita_dav", ResourceValue::Bool(true)),
                    ("habilita_preventa", ResourceValue::Bool(false)),
                ]),
            },
            operator(),
        ),
        sample(
            LicenseRenewed {
                license_id: license_id(),
                previous_expiry: date("2023-05-31"),
                expires_on: date("2023-06-30"),
                cause: RenewalCause::Contract {
                    contract_id: contract_id(),
                },
            },
            renewal_job(),
        ),
        sample(
            LicenseBound {
                license_id: license_id(),
                hardware_id: hardware_id(),
                hardware_key: hardware_key(),
                ip: Some(ip("192.168.0.198")),
                caixa: Some(terminal("03")),
                equipamento: Some(terminal("01")),
            },
            terminal_actor(),
        ),
        sample(
            LicenseUnlinked {
                license_id: license_id(),
                hardware_id: hardware_id(),
                note: note("Troca de equipamento no caixa 03"),
            },
            operator(),
        ),
        sample(
            LicenseBlocked {
                license_id: license_id(),
                note: note("Uso em CNPJ diferente do contratado"),
            },
            operator(),
        ),
        sample(
            LicenseUnblocked {
                license_id: license_id(),
                note: None,
            },
            operator(),
        ),
        sample(
            LicenseDeactivated {
                license_id: license_id(),
                note: note("Caixa desativado pela loja"),
            },
            operator(),
        ),
        sample(
            LicenseReactivated {
                license_id: license_id(),
                note: None,
            },
            operator(),
        ),
        sample(
            LicenseResourcesChanged {
                license_id: license_id(),
                resources: resources(&[
                    ("habilita_dav", ResourceValue::Bool(true)),
                    ("habilita_preventa", ResourceValue::Bool(true)),
                    ("caixas", ResourceValue::Int(3)),
                    ("serie_nfce", ResourceValue::Text("001".into())),
                ]),
            },
            operator(),
        ),
        // Terminal
        sample(
            TerminalCheckedIn {
                cnpj: cnpj(),
                product: Product::EasyCash,
                hardware_id: hardware_id(),
                hardware_key: hardware_key(),
                license_id: Some(license_id()),
                ip: Some(ip("192.168.0.198")),
                program_version: Some(program_version()),
                caixa: Some(terminal("03")),
                equipamento: Some(terminal("01")),
                outcome: CheckInOutcome::Valid {
                    expires_on: date("2023-05-31"),
                },
            },
            terminal_actor(),
        ),
        // Contingency
        sample(
            ContingencyEntered {
                cnpj: cnpj(),
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                license_id: None,
                grace_until: None,
                note: note("IntelliWeb inacessível: tempo esgotado após 30 s"),
            },
            contingency_monitor(),
        ),
        sample(
            ContingencyCleared {
                cnpj: cnpj(),
                kind: ContingencyKind::Manual,
                hardware_id: Some(hardware_id()),
                note: None,
            },
            contingency_monitor(),
        ),
        // Offline activation and emergency release
        sample(
            OfflineActivationIssued {
                serial: serial(),
                cnpj: Some(cnpj()),
                product: Product::EasyCash,
                license_id: Some(license_id()),
                caixa: Some(terminal("03")),
                equipamento: None,
                terminal: Some(hardware_id()),
                counter_key: None,
                code_mac: Some(code_mac()),
                valid_until: Utc.with_ymd_and_hms(2023, 5, 2, 14, 32, 7).unwrap(),
            },
            operator(),
        ),
        sample(
            EmergencyReleaseIssued {
                product: Product::Intellicash,
                hardware_id: hardware_id(),
                hardware_key: hardware_key(),
                activation_code: None,
                counter_key: None,
                code_mac: Some(code_mac()),
                licensed_to: TradeName::parse("QUALIDADE").unwrap(),
            },
            operator(),
        ),
    ]
}

/// A check-in with every optional field empty and the given outcome.
fn bare_check_in(cnpj: Cnpj, outcome: CheckInOutcome) -> TerminalCheckedIn {
    TerminalCheckedIn {
        cnpj,
        product: Product::EasyCash,
        hardware_id: hardware_id(),
        hardware_key: hardware_key(),
        license_id: None,
        ip: None,
        program_version: None,
        caixa: None,
        equipamento: None,
        outcome,
    }
}

/// Values the golden samples cannot all show: every `CheckInOutcome` and `RefusalReason`,
/// `RenewalCause::Manual`, IPv6, empty options and resources, other products, sub-second
/// times. Not golden: checked by round trips only.
pub fn extra_samples() -> Vec<Sample> {
    let with_label = |label: &str, event: Event, actor: Actor| Sample {
        label: label.to_owned(),
        event,
        actor,
    };
    let mut out = vec![
        with_label(
            "TerminalCheckedIn/expiring_soon",
            TerminalCheckedIn {
                license_id: Some(license_id()),
                ip: Some(ip("192.168.0.198")),
                program_version: Some(ProgramVersion::parse("1.4.019.003").unwrap()),
                caixa: Some(terminal("03")),
                equipamento: Some(terminal("01")),
                ..bare_check_in(
                    cnpj(),
                    CheckInOutcome::ExpiringSoon {
                        expires_on: date("2023-05-31"),
                        days_left: 3,
                    },
                )
            }
            .into(),
            terminal_actor(),
        ),
        with_label(
            "TerminalCheckedIn/contingency_intelliweb",
            TerminalCheckedIn {
                ip: Some(ip("fe80::1ff:fe23:4567:890a")),
                ..bare_check_in(
                    cnpj(),
                    CheckInOutcome::Contingency {
                        kind: ContingencyKind::Intelliweb,
                        expires_on: date("2023-06-07"),
                    },
                )
            }
            .into(),
            terminal_actor(),
        ),
        with_label(
            "TerminalCheckedIn/contingency_manual",
            bare_check_in(
                cnpj_alnum(),
                CheckInOutcome::Contingency {
                    kind: ContingencyKind::Manual,
                    expires_on: date("2023-05-02"),
                },
            )
            .into(),
            terminal_actor(),
        ),
        with_label(
            "LicenseRenewed/manual",
            LicenseRenewed {
                license_id: license_id(),
                previous_expiry: date("2023-06-30"),
                expires_on: date("2023-07-30"),
                cause: RenewalCause::Manual,
            }
            .into(),
            operator(),
        ),
        with_label(
            "LicenseGranted/no_contract_no_resources",
            LicenseGranted {
                license_id: LicenseId::new(999_999).unwrap(),
                cnpj: cnpj_alnum(),
                product: Product::MatrizFilial,
                contract_id: None,
                expires_on: date("2026-07-31"),
                resources: Resources::default(),
            }
            .into(),
            operator(),
        ),
        with_label(
            "LicenseBound/ipv6_no_terminal_numbers",
            LicenseBound {
                license_id: LicenseId::new(1).unwrap(),
                hardware_id: hardware_id(),
                hardware_key: hardware_key(),
                ip: Some(ip("2001:db8::c0a8:c6")),
                caixa: None,
                equipamento: None,
            }
            .into(),
            terminal_actor(),
        ),
        with_label(
            "ContractSigned/open_ended",
            ContractSigned {
                contract_id: ContractId::new(1).unwrap(),
                cnpj: cnpj_alnum(),
                starts_on: date("2026-07-01"),
                ends_on: None,
                interval_days: 365,
                renew_before_days: 0,
            }
            .into(),
            operator(),
        ),
        with_label(
            "ContingencyEntered/manual_terminal",
            ContingencyEntered {
                cnpj: cnpj(),
                kind: ContingencyKind::Manual,
                hardware_id: Some(hardware_id()),
                license_id: Some(license_id()),
                grace_until: Some(date("2023-03-28")),
                note: None,
            }
            .into(),
            operator(),
        ),
        with_label(
            "OfflineActivationIssued/unknown_customer",
            OfflineActivationIssued {
                serial: serial(),
                cnpj: None,
                product: Product::Nfe,
                license_id: None,
                caixa: None,
                equipamento: Some(terminal("12")),
                terminal: None,
                counter_key: Some(counter_key()),
                code_mac: None,
                valid_until: Utc.timestamp_micros(1_683_037_927_654_321).unwrap(),
            }
            .into(),
            operator(),
        ),
    ];
    let reasons = [
        RefusalReason::CustomerInactive,
        RefusalReason::CustomerBlocked,
        RefusalReason::NoLicenseAvailable,
        RefusalReason::LicenseBlocked,
        RefusalReason::LicenseDeactivated,
        RefusalReason::LicenseExpired,
        RefusalReason::GraceExpired,
    ];
    for reason in reasons {
        out.push(with_label(
            &format!("TerminalCheckedIn/refused_{reason:?}"),
            TerminalCheckedIn {
                program_version: Some(program_version()),
                ..bare_check_in(cnpj(), CheckInOutcome::Refused { reason })
            }
            .into(),
            terminal_actor(),
        ));
    }
    out
}

/// Golden samples then extra samples.
pub fn all_samples() -> Vec<Sample> {
    let mut v = golden_samples();
    v.extend(extra_samples());
    v
}

// ---------------------------------------------------------------------------------------------
// Envelopes and records
// ---------------------------------------------------------------------------------------------

/// 2023-05-01T14:32:07.123456Z: a fixed time with microseconds.
pub fn recorded_at() -> DateTime<Utc> {
    Utc.timestamp_micros(1_682_951_527_123_456).unwrap()
}

/// A fixed, non-zero previous hash: bytes 0x01..=0x20.
pub fn golden_prev_hash() -> Hash {
    Hash(std::array::from_fn(|i| i as u8 + 1))
}

/// The envelope every golden record carries: fixed fields, with the stream, type and version
/// taken from the event type and version of the file. `hash` is left zero (encoders ignore it).
pub fn golden_envelope(
    event: &Event,
    event_type: &str,
    schema_version: u16,
    actor: &Actor,
) -> Envelope {
    Envelope {
        position: 4242,
        stream_id: event.stream_id(),
        stream_version: 7,
        event_id: Uuid::from_u128(0x0187_d7a3_9b53_7c1e_8a4f_2b6d_9e10_c3f5),
        event_type: event_type.to_owned(),
        schema_version,
        recorded_at: recorded_at(),
        actor: actor.clone(),
        correlation_id: Uuid::from_u128(0x0187_d7a3_9b40_7000_b1c2_d3e4_f506_1728),
        prev_hash: golden_prev_hash(),
        hash: Hash::ZERO,
    }
}

/// Encodes `payload` under `envelope`; returns the bytes and the record with its hash set.
pub fn seal(envelope: &Envelope, payload: &[u8]) -> (Vec<u8>, Record) {
    let mut bytes = Vec::new();
    let hash = encode_record_into(&mut bytes, envelope, payload).unwrap();
    let record = Record {
        envelope: Envelope {
            hash,
            ..envelope.clone()
        },
        payload: payload.to_vec(),
    };
    (bytes, record)
}

/// The golden record of a sample at its current version.
pub fn golden_record(s: &Sample) -> (Vec<u8>, Record) {
    let env = golden_envelope(
        &s.event,
        s.event.event_type(),
        s.event.schema_version(),
        &s.actor,
    );
    seal(&env, &s.event.encode_payload().unwrap())
}

/// A well-formed chain of `n` records at positions 1..=n, cycling through all samples, with
/// per-stream versions, increasing times and each `prev_hash` the previous `hash`.
pub fn build_chain(n: usize) -> Vec<Vec<u8>> {
    let samples = all_samples();
    let mut versions: HashMap<String, StreamVersion> = HashMap::new();
    let mut prev = Hash::ZERO;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = &samples[i % samples.len()];
        let position = i as Position + 1;
        let stream_id = s.event.stream_id();
        let version = versions.entry(stream_id.as_str().to_owned()).or_default();
        *version += 1;
        let env = Envelope {
            position,
            stream_id,
            stream_version: *version,
            event_id: Uuid::from_u128(0x0187_d7a3_0000_7000_8000_0000_0000_0000 + position as u128),
            event_type: s.event.event_type().to_owned(),
            schema_version: s.event.schema_version(),
            recorded_at: recorded_at() + Duration::milliseconds(1500 * i as i64),
            actor: s.actor.clone(),
            correlation_id: Uuid::from_u128(
                0x0187_d7a3_ffff_7000_9000_0000_0000_0000 + position as u128,
            ),
            prev_hash: prev,
            hash: Hash::ZERO,
        };
        let (bytes, record) = seal(&env, &s.event.encode_payload().unwrap());
        prev = record.envelope.hash;
        out.push(bytes);
    }
    out
}
