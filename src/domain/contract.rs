//! Contracts ("Contratos"): the renewal terms of a customer's licenses.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Cnpj, ContractDeactivated, ContractEvent, ContractId, ContractReactivated, ContractSigned,
    Event, Note,
};

use ledger_projections::rows::ContractRow;

use super::{Aggregate, DomainError};

/// Longest renewal interval accepted, in days.
pub const INTERVAL_DAYS_MAX: u16 = 3660;

/// What support does to a contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContractCommand {
    /// Sign a contract.
    Sign {
        /// The new contract's id.
        contract_id: ContractId,
        /// Its customer (must exist; checked by the caller against the customer stream).
        cnpj: Cnpj,
        /// "Inicia em".
        starts_on: NaiveDate,
        /// "Expira em"; open-ended when absent.
        ends_on: Option<NaiveDate>,
        /// "Intervalo em dias".
        interval_days: u16,
        /// "Renovar antes de".
        renew_before_days: u16,
    },
    /// Stop renewals.
    Deactivate {
        /// The contract.
        contract_id: ContractId,
        /// Reason.
        note: Option<Note>,
    },
    /// Resume renewals.
    Reactivate {
        /// The contract.
        contract_id: ContractId,
        /// Reason.
        note: Option<Note>,
    },
}

impl ContractCommand {
    /// The contract the command is about.
    pub fn contract_id(&self) -> ContractId {
        match self {
            ContractCommand::Sign { contract_id, .. }
            | ContractCommand::Deactivate { contract_id, .. }
            | ContractCommand::Reactivate { contract_id, .. } => *contract_id,
        }
    }
}

/// A contract's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contract {
    /// The terms, once signed.
    pub signed: Option<ContractSigned>,
    /// Whether renewals run.
    pub active: bool,
}

impl Contract {
    /// Whether the contract renews licenses on `day`: active and within its term.
    pub fn renews_on(&self, day: NaiveDate) -> bool {
        match &self.signed {
            Some(s) => self.active && day >= s.starts_on && s.ends_on.is_none_or(|end| day <= end),
            None => false,
        }
    }
}

impl From<&ContractRow> for Contract {
    /// The contract's state as the read model shows it (for decisions that read the view).
    fn from(row: &ContractRow) -> Self {
        Contract {
            signed: Some(ContractSigned {
                contract_id: row.contract_id,
                cnpj: row.cnpj,
                starts_on: row.starts_on,
                ends_on: row.ends_on,
                interval_days: row.interval_days,
                renew_before_days: row.renew_before_days,
            }),
            active: row.active,
        }
    }
}

impl Aggregate for Contract {
    type Command = ContractCommand;

    fn apply(&mut self, event: &Event) {
        let Event::Contract(e) = event else { return };
        match e {
            ContractEvent::Signed(s) => {
                self.signed = Some(s.clone());
                self.active = true;
            }
            ContractEvent::Deactivated(_) => self.active = false,
            ContractEvent::Reactivated(_) => self.active = true,
        }
    }

    fn decide(
        &self,
        command: &ContractCommand,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        let id = command.contract_id();
        if !matches!(command, ContractCommand::Sign { .. }) && self.signed.is_none() {
            return Err(DomainError::NotFound {
                what: "contract",
                id: id.to_string(),
            });
        }
        let event: Event = match command {
            ContractCommand::Sign {
                cnpj,
                starts_on,
                ends_on,
                interval_days,
                renew_before_days,
                ..
            } => {
                if self.signed.is_some() {
                    return Err(DomainError::AlreadyExists {
                        what: "contract",
                        id: id.to_string(),
                    });
                }
                if *interval_days == 0 || *interval_days > INTERVAL_DAYS_MAX {
                    return Err(DomainError::InvalidField {
                        field: "interval_days",
                        problem: format!("must be between 1 and {INTERVAL_DAYS_MAX}"),
                    });
                }
                if renew_before_days > interval_days {
                    return Err(DomainError::InvalidField {
                        field: "renew_before_days",
                        problem: "must not exceed interval_days".into(),
                    });
                }
                if ends_on.is_some_and(|end| end < *starts_on) {
                    return Err(DomainError::InvalidField {
                        field: "ends_on",
                        problem: "must not be before starts_on".into(),
                    });
                }
                ContractSigned {
                    contract_id: id,
                    cnpj: *cnpj,
                    starts_on: *starts_on,
                    ends_on: *ends_on,
                    interval_days: *interval_days,
                    renew_before_days: *renew_before_days,
                }
                .into()
            }
            ContractCommand::Deactivate { note, .. } => {
                if !self.active {
                    return Err(DomainError::rejected(format!(
                        "contract {id} is already inactive"
                    )));
                }
                ContractDeactivated {
                    contract_id: id,
                    note: note.clone(),
                }
                .into()
            }
            ContractCommand::Reactivate { note, .. } => {
                if self.active {
                    return Err(DomainError::rejected(format!(
                        "contract {id} is already active"
                    )));
                }
                ContractReactivated {
                    contract_id: id,
                    note: note.clone(),
                }
                .into()
            }
        };
        Ok(vec![event])
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::given;

    fn id() -> ContractId {
        ContractId::new(731).unwrap()
    }
    fn day(d: &str) -> NaiveDate {
        d.parse().unwrap()
    }
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 3, 1, 9, 0, 0).unwrap()
    }
    fn sign() -> ContractCommand {
        ContractCommand::Sign {
            contract_id: id(),
            cnpj: Cnpj::parse("11222333000181").unwrap(),
            starts_on: day("2023-03-01"),
            ends_on: Some(day("2023-03-28")),
            interval_days: 30,
            renew_before_days: 3,
        }
    }

    #[test]
    fn cliente_com_contrato_desativado_a_deactivated_contract_stops_renewing() {
        let signed = given::<Contract>(&[]).state.decide(&sign(), now()).unwrap();
        let loaded = given::<Contract>(&signed);
        assert!(loaded.state.renews_on(day("2023-03-20")));
        let off = loaded
            .state
            .decide(
                &ContractCommand::Deactivate {
                    contract_id: id(),
                    note: None,
                },
                now(),
            )
            .unwrap();
        let mut all = signed.clone();
        all.extend(off);
        let after = given::<Contract>(&all);
        assert!(!after.state.renews_on(day("2023-03-20")));
        assert!(matches!(
            after.state.decide(
                &ContractCommand::Deactivate {
                    contract_id: id(),
                    note: None
                },
                now()
            ),
            Err(DomainError::Rejected(_))
        ));
    }

    #[test]
    fn contratos_a_contract_renews_only_within_its_term() {
        let loaded =
            given::<Contract>(&given::<Contract>(&[]).state.decide(&sign(), now()).unwrap());
        assert!(!loaded.state.renews_on(day("2023-02-28")));
        assert!(loaded.state.renews_on(day("2023-03-28")));
        assert!(!loaded.state.renews_on(day("2023-03-29")));
    }

    #[test]
    fn contratos_terms_are_validated() {
        let mut bad = sign();
        if let ContractCommand::Sign {
            renew_before_days, ..
        } = &mut bad
        {
            *renew_before_days = 31;
        }
        assert!(matches!(
            given::<Contract>(&[]).state.decide(&bad, now()),
            Err(DomainError::InvalidField {
                field: "renew_before_days",
                ..
            })
        ));
        let mut bad = sign();
        if let ContractCommand::Sign { interval_days, .. } = &mut bad {
            *interval_days = 0;
        }
        assert!(matches!(
            given::<Contract>(&[]).state.decide(&bad, now()),
            Err(DomainError::InvalidField {
                field: "interval_days",
                ..
            })
        ));
        let signed = given::<Contract>(&[]).state.decide(&sign(), now()).unwrap();
        assert!(matches!(
            given::<Contract>(&signed).state.decide(&sign(), now()),
            Err(DomainError::AlreadyExists { .. })
        ));
    }
}
