//! Customers ("Clientes"): one tenant per CNPJ, with the manual's Ativo / Bloqueado /
//! Blacklist flags.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Cnpj, CustomerActivated, CustomerBlacklisted, CustomerBlocked, CustomerDeactivated,
    CustomerEvent, CustomerProfileChanged, CustomerRegistered, CustomerUnblacklisted,
    CustomerUnblocked, Event, Note, Partner, TimeZoneName, TradeName,
};

use super::{Aggregate, DomainError};

/// What support does to a customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Register a new customer (active from the start).
    Register {
        /// CNPJ.
        cnpj: Cnpj,
        /// "Fantasia".
        trade_name: TradeName,
        /// "Início"; today when absent.
        since: Option<NaiveDate>,
    },
    /// Tick "Ativo".
    Activate {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Untick "Ativo": terminals are told `Usuário inválido.`.
    Deactivate {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Tick "Bloqueado".
    Block {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Untick "Bloqueado".
    Unblock {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Tick "Blacklist".
    Blacklist {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Untick "Blacklist".
    Unblacklist {
        /// The customer.
        cnpj: Cnpj,
        /// Reason.
        note: Option<Note>,
    },
    /// Set the whole profile: "Parceiro" and the time zone its days count in (none: the
    /// deployment's). The same profile again records nothing.
    SetProfile {
        /// The customer.
        cnpj: Cnpj,
        /// "Parceiro".
        partner: Option<Partner>,
        /// An IANA zone name the server's time-zone database knows.
        time_zone: Option<TimeZoneName>,
    },
}

impl CustomerCommand {
    /// The customer the command is about.
    pub fn cnpj(&self) -> &Cnpj {
        match self {
            CustomerCommand::Register { cnpj, .. }
            | CustomerCommand::Activate { cnpj, .. }
            | CustomerCommand::Deactivate { cnpj, .. }
            | CustomerCommand::Block { cnpj, .. }
            | CustomerCommand::Unblock { cnpj, .. }
            | CustomerCommand::Blacklist { cnpj, .. }
            | CustomerCommand::Unblacklist { cnpj, .. }
            | CustomerCommand::SetProfile { cnpj, .. } => cnpj,
        }
    }
}

/// A customer's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customer {
    /// Set once registered.
    pub cnpj: Option<Cnpj>,
    /// "Ativo".
    pub active: bool,
    /// "Bloqueado".
    pub blocked: bool,
    /// "Blacklist".
    pub blacklisted: bool,
    /// "Parceiro".
    pub partner: Option<Partner>,
    /// Its own time zone, if any.
    pub time_zone: Option<TimeZoneName>,
}

impl Customer {
    /// Whether its terminals may be answered at all.
    pub fn may_operate(&self) -> bool {
        self.cnpj.is_some() && self.active && !self.blocked && !self.blacklisted
    }

    fn registered(&self, cnpj: &Cnpj) -> Result<(), DomainError> {
        match self.cnpj {
            Some(_) => Ok(()),
            None => Err(DomainError::NotFound {
                what: "customer",
                id: cnpj.to_string(),
            }),
        }
    }
}

impl Aggregate for Customer {
    type Command = CustomerCommand;

    fn apply(&mut self, event: &Event) {
        let Event::Customer(e) = event else { return };
        match e {
            CustomerEvent::Registered(r) => {
                self.cnpj = Some(r.cnpj);
                self.active = true;
            }
            CustomerEvent::Activated(_) => self.active = true,
            CustomerEvent::Deactivated(_) => self.active = false,
            CustomerEvent::Blocked(_) => self.blocked = true,
            CustomerEvent::Unblocked(_) => self.blocked = false,
            CustomerEvent::Blacklisted(_) => self.blacklisted = true,
            CustomerEvent::Unblacklisted(_) => self.blacklisted = false,
            CustomerEvent::ProfileChanged(p) => {
                self.partner = p.partner.clone();
                self.time_zone = p.time_zone.clone();
            }
        }
    }

    fn decide(
        &self,
        command: &CustomerCommand,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        let cnpj = *command.cnpj();
        let flag = |current: bool, wanted: bool, what: &str| -> Result<(), DomainError> {
            self.registered(&cnpj)?;
            if current == wanted {
                return Err(DomainError::rejected(format!(
                    "customer {cnpj} is already {what}"
                )));
            }
            Ok(())
        };
        let event: Event = match command {
            CustomerCommand::Register {
                trade_name, since, ..
            } => {
                if self.cnpj.is_some() {
                    return Err(DomainError::AlreadyExists {
                        what: "customer",
                        id: cnpj.to_string(),
                    });
                }
                CustomerRegistered {
                    cnpj,
                    trade_name: trade_name.clone(),
                    // The app fills it in from its calendar; this default only serves
                    // callers of the domain alone.
                    since: since.unwrap_or_else(|| super::Calendar::default().day(now)),
                }
                .into()
            }
            CustomerCommand::Activate { note, .. } => {
                flag(self.active, true, "active")?;
                CustomerActivated {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::Deactivate { note, .. } => {
                flag(self.active, false, "inactive")?;
                CustomerDeactivated {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::Block { note, .. } => {
                flag(self.blocked, true, "blocked")?;
                CustomerBlocked {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::Unblock { note, .. } => {
                flag(self.blocked, false, "unblocked")?;
                CustomerUnblocked {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::Blacklist { note, .. } => {
                flag(self.blacklisted, true, "blacklisted")?;
                CustomerBlacklisted {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::Unblacklist { note, .. } => {
                flag(self.blacklisted, false, "off the blacklist")?;
                CustomerUnblacklisted {
                    cnpj,
                    note: note.clone(),
                }
                .into()
            }
            CustomerCommand::SetProfile {
                partner, time_zone, ..
            } => {
                self.registered(&cnpj)?;
                if let Some(zone) = time_zone {
                    zone.as_str().parse::<super::Calendar>().map_err(|e| {
                        DomainError::InvalidField {
                            field: "time_zone",
                            problem: e.to_string(),
                        }
                    })?;
                }
                if self.partner == *partner && self.time_zone == *time_zone {
                    return Ok(Vec::new());
                }
                CustomerProfileChanged {
                    cnpj,
                    partner: partner.clone(),
                    time_zone: time_zone.clone(),
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

    fn cnpj() -> Cnpj {
        Cnpj::parse("11222333000181").unwrap()
    }
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 3, 13, 16, 6, 30).unwrap()
    }
    fn registered() -> Event {
        CustomerRegistered {
            cnpj: cnpj(),
            trade_name: TradeName::parse("Mercado Bom").unwrap(),
            since: NaiveDate::from_ymd_opt(2023, 3, 13).unwrap(),
        }
        .into()
    }

    #[test]
    fn clientes_registering_a_customer_starts_it_active_on_today() {
        let loaded = given::<Customer>(&[]);
        let events = loaded
            .state
            .decide(
                &CustomerCommand::Register {
                    cnpj: cnpj(),
                    trade_name: TradeName::parse("Mercado Bom").unwrap(),
                    since: None,
                },
                now(),
            )
            .unwrap();
        assert_eq!(events, vec![registered()]);
        let after = Loaded::<Customer>::from_events(events.iter());
        assert!(after.state.may_operate());
    }

    #[test]
    fn clientes_a_cnpj_is_registered_once() {
        let loaded = given::<Customer>(&[registered()]);
        let err = loaded
            .state
            .decide(
                &CustomerCommand::Register {
                    cnpj: cnpj(),
                    trade_name: TradeName::parse("Outro").unwrap(),
                    since: None,
                },
                now(),
            )
            .unwrap_err();
        assert!(matches!(err, DomainError::AlreadyExists { .. }));
    }

    #[test]
    fn cliente_inativado_deactivating_stops_operation_and_twice_is_refused() {
        let loaded = given::<Customer>(&[registered()]);
        let cmd = CustomerCommand::Deactivate {
            cnpj: cnpj(),
            note: None,
        };
        let events = loaded.state.decide(&cmd, now()).unwrap();
        assert_eq!(
            events,
            vec![CustomerDeactivated {
                cnpj: cnpj(),
                note: None
            }
            .into()]
        );
        let after = given::<Customer>(&[registered(), events[0].clone()]);
        assert!(!after.state.may_operate());
        assert!(matches!(
            after.state.decide(&cmd, now()),
            Err(DomainError::Rejected(_))
        ));
    }

    #[test]
    fn clientes_blocked_or_blacklisted_customers_may_not_operate() {
        let blocked = given::<Customer>(&[
            registered(),
            CustomerBlocked {
                cnpj: cnpj(),
                note: None,
            }
            .into(),
        ]);
        assert!(!blocked.state.may_operate());
        let listed = given::<Customer>(&[
            registered(),
            CustomerBlacklisted {
                cnpj: cnpj(),
                note: None,
            }
            .into(),
        ]);
        assert!(!listed.state.may_operate());
        let events = listed
            .state
            .decide(
                &CustomerCommand::Unblacklist {
                    cnpj: cnpj(),
                    note: None,
                },
                now(),
            )
            .unwrap();
        let back = given::<Customer>(&[
            registered(),
            CustomerBlacklisted {
                cnpj: cnpj(),
                note: None,
            }
            .into(),
            events[0].clone(),
        ]);
        assert!(back.state.may_operate());
    }

    #[test]
    fn clientes_commands_on_an_unknown_customer_are_not_found() {
        let loaded = given::<Customer>(&[]);
        let err = loaded
            .state
            .decide(
                &CustomerCommand::Block {
                    cnpj: cnpj(),
                    note: None,
                },
                now(),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            DomainError::NotFound {
                what: "customer",
                ..
            }
        ));
    }

    use crate::domain::Loaded;
}
