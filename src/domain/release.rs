//! Releases without a check-in: contingency entries, offline activations ("Liberação
//! off-line") and emergency releases ("Liberação emergencial", restricted).
//!
//! The counter-keys themselves are computed by the caller from secrets it holds
//! (`ledger_events::offline`): secrets never enter the domain's events.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Cnpj, CodeMac, ContingencyCleared, ContingencyEntered, ContingencyEvent, ContingencyKind,
    EmergencyReleaseIssued, Event, HardwareId, HardwareKey, LicenseId, Note,
    OfflineActivationEvent, OfflineActivationIssued, Product, Serial, TerminalNumber, TradeName,
};

use super::{Aggregate, DomainError};

// ---------------------------------------------------------------------------------------------
// Contingency (stream `contingency-{cnpj}`)
// ---------------------------------------------------------------------------------------------

/// What opens or closes a contingency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContingencyCommand {
    /// Open an entry.
    Enter {
        /// The customer.
        cnpj: Cnpj,
        /// Type 01 or 02.
        kind: ContingencyKind,
        /// The terminal (type 02).
        hardware_id: Option<HardwareId>,
        /// The license released (type 02).
        license_id: Option<LicenseId>,
        /// Last day of grace, when one date applies.
        grace_until: Option<NaiveDate>,
        /// Why.
        note: Option<Note>,
    },
    /// Close the open entry of that kind and terminal.
    Clear {
        /// The customer.
        cnpj: Cnpj,
        /// Type 01 or 02.
        kind: ContingencyKind,
        /// The terminal (type 02).
        hardware_id: Option<HardwareId>,
        /// Why.
        note: Option<Note>,
    },
}

/// A customer's open contingency entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contingencies {
    /// Open entries: kind and terminal.
    pub open: Vec<(ContingencyKind, Option<HardwareId>)>,
}

impl Contingencies {
    /// Whether an entry of `kind` for `hardware_id` is open.
    pub fn is_open(&self, kind: ContingencyKind, hardware_id: Option<HardwareId>) -> bool {
        self.open.contains(&(kind, hardware_id))
    }
}

impl Aggregate for Contingencies {
    type Command = ContingencyCommand;

    fn apply(&mut self, event: &Event) {
        let Event::Contingency(e) = event else { return };
        match e {
            ContingencyEvent::Entered(x) => self.open.push((x.kind, x.hardware_id)),
            ContingencyEvent::Cleared(x) => {
                if let Some(i) = self
                    .open
                    .iter()
                    .rposition(|o| *o == (x.kind, x.hardware_id))
                {
                    self.open.remove(i);
                }
            }
        }
    }

    fn decide(
        &self,
        command: &ContingencyCommand,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        match command {
            ContingencyCommand::Enter {
                cnpj,
                kind,
                hardware_id,
                license_id,
                grace_until,
                note,
            } => {
                if *kind == ContingencyKind::Manual && hardware_id.is_none() {
                    return Err(DomainError::InvalidField {
                        field: "hardware_id",
                        problem: "a manual contingency (type 02) is for one terminal".into(),
                    });
                }
                if self.is_open(*kind, *hardware_id) {
                    return Ok(vec![]);
                }
                Ok(vec![ContingencyEntered {
                    cnpj: *cnpj,
                    kind: *kind,
                    hardware_id: *hardware_id,
                    license_id: *license_id,
                    grace_until: *grace_until,
                    note: note.clone(),
                }
                .into()])
            }
            ContingencyCommand::Clear {
                cnpj,
                kind,
                hardware_id,
                note,
            } => {
                if !self.is_open(*kind, *hardware_id) {
                    return Err(DomainError::rejected(format!(
                        "no open type {} contingency for {cnpj}{}",
                        kind.code(),
                        hardware_id
                            .map(|h| format!(" terminal {h}"))
                            .unwrap_or_default()
                    )));
                }
                Ok(vec![ContingencyCleared {
                    cnpj: *cnpj,
                    kind: *kind,
                    hardware_id: *hardware_id,
                    note: note.clone(),
                }
                .into()])
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Offline activation (stream `offline-{serial}`)
// ---------------------------------------------------------------------------------------------

/// "Ativar Offline": support issues a counter-key for a terminal's serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueOfflineActivation {
    /// The serial the terminal shows.
    pub serial: Serial,
    /// The customer, when known.
    pub cnpj: Option<Cnpj>,
    /// The product ("Problema").
    pub product: Product,
    /// The license released, when known.
    pub license_id: Option<LicenseId>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
    /// The terminal whose own key made the counter-key (`None`: the product's key).
    pub terminal: Option<HardwareId>,
    /// MAC of the counter-key the caller computed, under the audit key: the record keeps this,
    /// never the key.
    pub code_mac: CodeMac,
    /// Until when it is valid.
    pub valid_until: DateTime<Utc>,
}

/// A serial's state: whether it has been used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflineActivation {
    /// The issue, once issued.
    pub issued: Option<OfflineActivationIssued>,
}

impl Aggregate for OfflineActivation {
    type Command = IssueOfflineActivation;

    fn apply(&mut self, event: &Event) {
        if let Event::OfflineActivation(OfflineActivationEvent::Issued(i)) = event {
            self.issued = Some(i.clone());
        }
    }

    fn decide(
        &self,
        c: &IssueOfflineActivation,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        if let Some(previous) = &self.issued {
            return Err(DomainError::rejected(format!(
                "serial {} was already used (counter-key issued for {}); ask the terminal for a new serial",
                c.serial,
                previous.product
            )));
        }
        Ok(vec![OfflineActivationIssued {
            serial: c.serial,
            cnpj: c.cnpj,
            product: c.product,
            license_id: c.license_id,
            caixa: c.caixa,
            equipamento: c.equipamento,
            terminal: c.terminal,
            counter_key: None,
            code_mac: Some(c.code_mac),
            valid_until: c.valid_until,
        }
        .into()])
    }
}

// ---------------------------------------------------------------------------------------------
// Emergency release (stream `emergency-{hardware id}`)
// ---------------------------------------------------------------------------------------------

/// "Liberação emergencial" (USO RESTRITO): for development and QA machines only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueEmergencyRelease {
    /// The product.
    pub product: Product,
    /// The machine.
    pub hardware_id: HardwareId,
    /// The product key entered.
    pub hardware_key: HardwareKey,
    /// MAC of the activation code and counter-key the caller computed, under the audit key:
    /// the record keeps this, never the codes.
    pub code_mac: CodeMac,
    /// "Licenciado para".
    pub licensed_to: TradeName,
    /// Whether the actor holds the emergency-release right.
    pub actor_may_release: bool,
}

/// A machine's emergency releases (each issue is kept; there is no limit but the right).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmergencyRelease {
    /// How many were issued.
    pub issued: u32,
}

impl Aggregate for EmergencyRelease {
    type Command = IssueEmergencyRelease;

    fn apply(&mut self, event: &Event) {
        if let Event::EmergencyRelease(_) = event {
            self.issued += 1;
        }
    }

    fn decide(
        &self,
        c: &IssueEmergencyRelease,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        if !c.actor_may_release {
            return Err(DomainError::Forbidden(
                "emergency release is restricted to development and QA (USO RESTRITO)".into(),
            ));
        }
        Ok(vec![EmergencyReleaseIssued {
            product: c.product,
            hardware_id: c.hardware_id,
            hardware_key: c.hardware_key,
            activation_code: None,
            counter_key: None,
            code_mac: Some(c.code_mac),
            licensed_to: c.licensed_to.clone(),
        }
        .into()])
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::given;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 3, 27, 11, 36, 0).unwrap()
    }
    fn cnpj() -> Cnpj {
        Cnpj::parse("11222333000181").unwrap()
    }
    fn hw() -> HardwareId {
        HardwareId::parse("50026B77825EECA5").unwrap()
    }
    fn issue() -> IssueOfflineActivation {
        IssueOfflineActivation {
            serial: Serial::parse("50026B77605FA3F8").unwrap(),
            cnpj: Some(cnpj()),
            product: Product::EasyCash,
            license_id: LicenseId::new(1680).ok(),
            caixa: TerminalNumber::new(3).ok(),
            equipamento: TerminalNumber::new(3).ok(),
            terminal: Some(hw()),
            code_mac: CodeMac::from_bytes([7; 32]),
            valid_until: Utc.with_ymd_and_hms(2023, 3, 28, 23, 59, 59).unwrap(),
        }
    }

    #[test]
    fn liberacao_off_line_a_serial_gets_one_counter_key_only() {
        let first = given::<OfflineActivation>(&[])
            .state
            .decide(&issue(), now())
            .unwrap();
        assert_eq!(first.len(), 1);
        let again = given::<OfflineActivation>(&first)
            .state
            .decide(&issue(), now());
        match again {
            Err(DomainError::Rejected(m)) => assert!(m.contains("already used"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn liberacao_emergencial_needs_the_restricted_right_and_is_recorded_each_time() {
        let mut cmd = IssueEmergencyRelease {
            product: Product::EasyCash,
            hardware_id: hw(),
            hardware_key: HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap(),
            code_mac: CodeMac::from_bytes([9; 32]),
            licensed_to: TradeName::parse("QUALIDADE").unwrap(),
            actor_may_release: false,
        };
        assert!(matches!(
            given::<EmergencyRelease>(&[]).state.decide(&cmd, now()),
            Err(DomainError::Forbidden(_))
        ));
        cmd.actor_may_release = true;
        let one = given::<EmergencyRelease>(&[])
            .state
            .decide(&cmd, now())
            .unwrap();
        let two = given::<EmergencyRelease>(&one)
            .state
            .decide(&cmd, now())
            .unwrap();
        assert_eq!(two.len(), 1);
    }

    #[test]
    fn contingencia_tipo_02_is_per_terminal_and_clears_once() {
        let enter = ContingencyCommand::Enter {
            cnpj: cnpj(),
            kind: ContingencyKind::Manual,
            hardware_id: Some(hw()),
            license_id: LicenseId::new(1680).ok(),
            grace_until: "2023-03-28".parse().ok(),
            note: None,
        };
        let entered = given::<Contingencies>(&[])
            .state
            .decide(&enter, now())
            .unwrap();
        assert_eq!(entered.len(), 1);
        let state = given::<Contingencies>(&entered);
        assert!(state.state.is_open(ContingencyKind::Manual, Some(hw())));
        assert!(
            state.state.decide(&enter, now()).unwrap().is_empty(),
            "entering twice records once"
        );
        let clear = ContingencyCommand::Clear {
            cnpj: cnpj(),
            kind: ContingencyKind::Manual,
            hardware_id: Some(hw()),
            note: None,
        };
        let cleared = state.state.decide(&clear, now()).unwrap();
        let mut all = entered.clone();
        all.extend(cleared);
        let after = given::<Contingencies>(&all);
        assert!(!after.state.is_open(ContingencyKind::Manual, Some(hw())));
        assert!(matches!(
            after.state.decide(&clear, now()),
            Err(DomainError::Rejected(_))
        ));
        let no_terminal = ContingencyCommand::Enter {
            cnpj: cnpj(),
            kind: ContingencyKind::Manual,
            hardware_id: None,
            license_id: None,
            grace_until: None,
            note: None,
        };
        assert!(matches!(
            given::<Contingencies>(&[])
                .state
                .decide(&no_terminal, now()),
            Err(DomainError::InvalidField {
                field: "hardware_id",
                ..
            })
        ));
    }
}
