//! One-line pt-BR descriptions of events for a license's timeline ("Histórico"), in the
//! manual's words: dates `dd/mm/yyyy`, times `HH:MM:SS`, and what a terminal was told quoted
//! from [`ledger_events::texts`], as the terminal shows it
//! (`Licença do sistema expira no dia: 01/05/2023`).
//!
//! The lines are product text, not translations: tests pin each one.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::texts;
use ledger_events::{
    CheckInOutcome, ContingencyEvent, ContingencyKind, ContractEvent, CustomerEvent,
    EmergencyReleaseEvent, Envelope, Event, LicenseEvent, Note, OfflineActivationEvent,
    RefusalReason, RenewalCause, ResourceValue, TerminalEvent,
};

/// One-line pt-BR description of an event for the license timeline ("Histórico"), e.g.
/// `Licença 002438 concedida: EasyCash, expira em 01/05/2023`. Who did it and when are in the
/// envelope, which the timeline shows beside this text; the description is the same for
/// every envelope.
pub fn describe(_envelope: &Envelope, event: &Event) -> String {
    match event {
        Event::Customer(e) => customer(e),
        Event::Contract(e) => contract(e),
        Event::License(e) => license(e),
        Event::Terminal(TerminalEvent::CheckedIn(e)) => match e.outcome {
            CheckInOutcome::Refused { reason } => {
                format!(
                    "Check-in de {} recusado: {}",
                    e.hardware_id,
                    refusal(reason)
                )
            }
            _ => format!("Check-in de {}: {}", e.hardware_id, outcome(&e.outcome)),
        },
        Event::Contingency(e) => contingency(e),
        // The code itself is never shown (newer records do not even hold it: issue 15,
        // finding 3): only that one was issued, under which key, and until when.
        Event::OfflineActivation(OfflineActivationEvent::Issued(e)) => format!(
            "Liberação off-line do serial {} ({}): contra-chave emitida ({}), válida até {}",
            e.serial,
            e.product,
            match e.terminal {
                Some(hardware_id) => format!("chave do terminal {hardware_id}"),
                None => "chave do produto".to_owned(),
            },
            date_time(e.valid_until)
        ),
        Event::EmergencyRelease(EmergencyReleaseEvent::Issued(e)) => format!(
            "Liberação emergencial do terminal {} ({}): licenciado para {}",
            e.hardware_id, e.product, e.licensed_to
        ),
    }
}

fn customer(e: &CustomerEvent) -> String {
    let (what, note) = match e {
        CustomerEvent::Registered(e) => {
            return format!(
                "Cliente {} cadastrado: {}, início em {}",
                e.cnpj.formatted(),
                e.trade_name,
                day(e.since)
            )
        }
        CustomerEvent::Activated(e) => ("Cliente ativado", &e.note),
        CustomerEvent::Deactivated(e) => ("Cliente desativado", &e.note),
        CustomerEvent::Blocked(e) => ("Cliente bloqueado", &e.note),
        CustomerEvent::Unblocked(e) => ("Cliente desbloqueado", &e.note),
        CustomerEvent::Blacklisted(e) => ("Cliente incluído na blacklist", &e.note),
        CustomerEvent::Unblacklisted(e) => ("Cliente retirado da blacklist", &e.note),
        CustomerEvent::ProfileChanged(e) => {
            return format!(
                "Cadastro do cliente alterado: parceiro {}, fuso horário {}",
                e.partner.as_ref().map_or("(nenhum)", |p| p.as_str()),
                e.time_zone
                    .as_ref()
                    .map_or("(o do servidor)", |z| z.as_str())
            )
        }
    };
    with_note(what.to_owned(), note)
}

fn contract(e: &ContractEvent) -> String {
    match e {
        ContractEvent::Signed(e) => {
            let ends = match e.ends_on {
                Some(d) => format!("expira em {}", day(d)),
                None => "sem data de término".to_owned(),
            };
            format!(
                "Contrato {} assinado: inicia em {}, {ends}, intervalo de {} dias, renovar {} dias antes",
                e.contract_id,
                day(e.starts_on),
                e.interval_days,
                e.renew_before_days
            )
        }
        ContractEvent::Deactivated(e) => {
            with_note(format!("Contrato {} desativado", e.contract_id), &e.note)
        }
        ContractEvent::Reactivated(e) => {
            with_note(format!("Contrato {} reativado", e.contract_id), &e.note)
        }
    }
}

fn license(e: &LicenseEvent) -> String {
    match e {
        LicenseEvent::Granted(e) => {
            let mut s = format!(
                "Licença {} concedida: {}, expira em {}",
                e.license_id,
                e.product,
                day(e.expires_on)
            );
            if let Some(contract_id) = e.contract_id {
                let _ = write!(s, " (contrato {contract_id})");
            }
            s
        }
        LicenseEvent::Renewed(e) => {
            let cause = match e.cause {
                RenewalCause::Contract { contract_id } => format!("contrato {contract_id}"),
                RenewalCause::Manual => "renovação manual".to_owned(),
            };
            format!("Licença renovada até {} ({cause})", day(e.expires_on))
        }
        LicenseEvent::Bound(e) => {
            let mut details = Vec::new();
            if let Some(ip) = e.ip {
                details.push(format!("IP {ip}"));
            }
            if let Some(caixa) = e.caixa {
                details.push(format!("caixa {caixa}"));
            }
            if let Some(equipamento) = e.equipamento {
                details.push(format!("equipamento {equipamento}"));
            }
            let mut s = format!("Associada ao terminal {}", e.hardware_id);
            if !details.is_empty() {
                let _ = write!(s, " ({})", details.join(", "));
            }
            s
        }
        LicenseEvent::Unlinked(e) => with_note(
            format!("Desassociada do terminal {}", e.hardware_id),
            &e.note,
        ),
        LicenseEvent::Blocked(e) => with_note("Bloqueada".to_owned(), &e.note),
        LicenseEvent::Unblocked(e) => with_note("Desbloqueada".to_owned(), &e.note),
        LicenseEvent::Deactivated(e) => with_note("Desativada".to_owned(), &e.note),
        LicenseEvent::Reactivated(e) => with_note("Reativada".to_owned(), &e.note),
        LicenseEvent::ResourcesChanged(e) => {
            if e.resources.is_empty() {
                return "Recursos alterados: nenhum".to_owned();
            }
            let entries: Vec<String> = e
                .resources
                .iter()
                .map(|(k, v)| match v {
                    ResourceValue::Bool(b) => format!("{k}={b}"),
                    ResourceValue::Int(i) => format!("{k}={i}"),
                    ResourceValue::Text(t) => format!("{k}={t}"),
                })
                .collect();
            format!("Recursos alterados: {}", entries.join(", "))
        }
    }
}

/// What the terminal was told, in the terminal's words (from [`ledger_events::texts`]).
fn outcome(outcome: &CheckInOutcome) -> String {
    match *outcome {
        CheckInOutcome::Valid { expires_on } => texts::expires_on(expires_on),
        CheckInOutcome::ExpiringSoon {
            expires_on,
            days_left,
        } => format!(
            "{}. {}",
            texts::expires_on(expires_on),
            texts::days_left_warning(i64::from(days_left))
        ),
        CheckInOutcome::Contingency {
            kind: ContingencyKind::Intelliweb,
            expires_on,
        } => texts::expires_on_contingency_upstream(expires_on),
        CheckInOutcome::Contingency {
            kind: ContingencyKind::Manual,
            expires_on,
        } => texts::expires_on_contingency_manual(expires_on),
        CheckInOutcome::Refused { reason } => refusal(reason).to_owned(),
    }
}

/// Why a check-in was refused, for support (the terminal itself is shown
/// [`texts::NOT_RELEASED`] for most of these).
fn refusal(reason: RefusalReason) -> &'static str {
    match reason {
        RefusalReason::CustomerInactive => texts::CUSTOMER_INACTIVE,
        RefusalReason::CustomerBlocked => "cliente bloqueado",
        RefusalReason::NoLicenseAvailable => "nenhuma licença livre para o terminal",
        RefusalReason::LicenseBlocked => "licença bloqueada",
        RefusalReason::LicenseDeactivated => "licença desativada",
        RefusalReason::LicenseExpired => "licença expirada",
        RefusalReason::GraceExpired => "prazo de contingência esgotado",
    }
}

fn contingency(e: &ContingencyEvent) -> String {
    fn name(kind: ContingencyKind) -> &'static str {
        match kind {
            ContingencyKind::Intelliweb => "Contingência do IntelliWeb",
            ContingencyKind::Manual => "Contingência manual",
        }
    }
    match e {
        ContingencyEvent::Entered(e) => {
            let mut s = format!("{} iniciada", name(e.kind));
            if let Some(hardware_id) = e.hardware_id {
                let _ = write!(s, " no terminal {hardware_id}");
            }
            if let Some(license_id) = e.license_id {
                let _ = write!(s, " (licença {license_id})");
            }
            if let Some(grace) = e.grace_until {
                let _ = write!(s, ", carência até {}", day(grace));
            }
            with_note(s, &e.note)
        }
        ContingencyEvent::Cleared(e) => {
            let mut s = format!("{} encerrada", name(e.kind));
            if let Some(hardware_id) = e.hardware_id {
                let _ = write!(s, " no terminal {hardware_id}");
            }
            with_note(s, &e.note)
        }
    }
}

fn with_note(mut s: String, note: &Option<Note>) -> String {
    if let Some(note) = note {
        s.push_str(": ");
        s.push_str(note.as_str());
    }
    s
}

fn day(d: NaiveDate) -> String {
    texts::format_date(d)
}

fn date_time(t: DateTime<Utc>) -> String {
    t.format("%d/%m/%Y %H:%M:%S UTC").to_string()
}
