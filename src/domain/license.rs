//! Licenses ("Licenças"): grant, renew, bind, unlink, block, deactivate, resources.

use std::net::IpAddr;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger_events::{
    Cnpj, ContractId, Event, HardwareId, HardwareKey, LicenseBlocked, LicenseBound,
    LicenseDeactivated, LicenseEvent, LicenseGranted, LicenseId, LicenseReactivated,
    LicenseRenewed, LicenseResourcesChanged, LicenseUnblocked, LicenseUnlinked, Note, Product,
    RenewalCause, Resources, TerminalNumber,
};

use super::contract::Contract;
use super::{Aggregate, DomainError};

/// Facts from other aggregates that a contract renewal depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalTerms {
    /// The license's contract, as folded from its stream.
    pub contract: Contract,
    /// Whether the customer is active (and not blocked).
    pub customer_active: bool,
    /// The customer's local day the renewal is decided on (see [`super::Calendar`]).
    pub today: NaiveDate,
}

/// What support (or a check-in) does to a license.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LicenseCommand {
    /// Grant a new license.
    Grant {
        /// The new id (allocated by the caller).
        license_id: LicenseId,
        /// Its customer (must exist; checked by the caller).
        cnpj: Cnpj,
        /// The product.
        product: Product,
        /// The contract that renews it.
        contract_id: Option<ContractId>,
        /// First expiry.
        expires_on: NaiveDate,
        /// Resources.
        resources: Resources,
    },
    /// Support sets a new expiry.
    Renew {
        /// The license.
        license_id: LicenseId,
        /// The new expiry (must be later than the current one).
        expires_on: NaiveDate,
    },
    /// Apply the contract's renewal rule now (explicit, or on check-in).
    RenewByContract {
        /// The license.
        license_id: LicenseId,
        /// Contract and customer state.
        terms: RenewalTerms,
    },
    /// Bind a free license to a terminal (first check-in).
    Bind {
        /// The license.
        license_id: LicenseId,
        /// The terminal.
        hardware_id: HardwareId,
        /// The key it presents.
        hardware_key: HardwareKey,
        /// Its address.
        ip: Option<IpAddr>,
        /// "Nº do Caixa".
        caixa: Option<TerminalNumber>,
        /// "Equipamento".
        equipamento: Option<TerminalNumber>,
    },
    /// "Desassociar".
    Unlink {
        /// The license.
        license_id: LicenseId,
        /// Reason.
        note: Option<Note>,
    },
    /// Tick "Bloqueado".
    Block {
        /// The license.
        license_id: LicenseId,
        /// Reason.
        note: Option<Note>,
    },
    /// Untick "Bloqueado".
    Unblock {
        /// The license.
        license_id: LicenseId,
        /// Reason.
        note: Option<Note>,
    },
    /// Untick "Licença".
    Deactivate {
        /// The license.
        license_id: LicenseId,
        /// Reason.
        note: Option<Note>,
    },
    /// Tick "Licença".
    Reactivate {
        /// The license.
        license_id: LicenseId,
        /// Reason.
        note: Option<Note>,
    },
    /// Replace the resources ("Recursos").
    ChangeResources {
        /// The license.
        license_id: LicenseId,
        /// The complete new set.
        resources: Resources,
    },
}

impl LicenseCommand {
    /// The license the command is about.
    pub fn license_id(&self) -> LicenseId {
        match self {
            LicenseCommand::Grant { license_id, .. }
            | LicenseCommand::Renew { license_id, .. }
            | LicenseCommand::RenewByContract { license_id, .. }
            | LicenseCommand::Bind { license_id, .. }
            | LicenseCommand::Unlink { license_id, .. }
            | LicenseCommand::Block { license_id, .. }
            | LicenseCommand::Unblock { license_id, .. }
            | LicenseCommand::Deactivate { license_id, .. }
            | LicenseCommand::Reactivate { license_id, .. }
            | LicenseCommand::ChangeResources { license_id, .. } => *license_id,
        }
    }
}

/// A license's binding to a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The terminal.
    pub hardware_id: HardwareId,
    /// Its key.
    pub hardware_key: HardwareKey,
}

/// A license's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct License {
    /// The grant, once granted (its `expires_on` and `resources` are the current ones).
    pub granted: Option<LicenseGranted>,
    /// "Bloqueado".
    pub blocked: bool,
    /// "Licença" (active).
    pub active: bool,
    /// The terminal it is bound to.
    pub bound: Option<Bound>,
}

/// The expiry a contract renewal gives a license expiring on `expires_on`, on `day`: none
/// when the terms do not renew or the license is not yet within the renew-before window;
/// otherwise the expiry moved by whole intervals until it is past the window again (one
/// interval when it is renewed on time, more when it lapsed while nobody checked in).
pub fn contract_renewal(
    expires_on: NaiveDate,
    terms: &RenewalTerms,
    day: NaiveDate,
) -> Option<NaiveDate> {
    let signed = terms.contract.signed.as_ref()?;
    if !terms.customer_active || !terms.contract.renews_on(day) {
        return None;
    }
    let window = i64::from(signed.renew_before_days);
    let interval = i64::from(signed.interval_days).max(1);
    let days_left = (expires_on - day).num_days();
    if days_left > window {
        return None;
    }
    let behind = window - days_left; // >= 0
    let intervals = behind / interval + 1;
    Some(expires_on + Duration::days(intervals * interval))
}

impl License {
    fn granted(&self, id: LicenseId) -> Result<&LicenseGranted, DomainError> {
        self.granted.as_ref().ok_or(DomainError::NotFound {
            what: "license",
            id: id.to_string(),
        })
    }
}

impl Aggregate for License {
    type Command = LicenseCommand;

    fn apply(&mut self, event: &Event) {
        let Event::License(e) = event else { return };
        match e {
            LicenseEvent::Granted(g) => {
                self.granted = Some(g.clone());
                self.active = true;
            }
            LicenseEvent::Renewed(r) => {
                if let Some(g) = &mut self.granted {
                    g.expires_on = r.expires_on;
                }
            }
            LicenseEvent::Bound(b) => {
                self.bound = Some(Bound {
                    hardware_id: b.hardware_id,
                    hardware_key: b.hardware_key,
                })
            }
            LicenseEvent::Unlinked(_) => self.bound = None,
            LicenseEvent::Blocked(_) => self.blocked = true,
            LicenseEvent::Unblocked(_) => self.blocked = false,
            LicenseEvent::Deactivated(_) => self.active = false,
            LicenseEvent::Reactivated(_) => self.active = true,
            LicenseEvent::ResourcesChanged(r) => {
                if let Some(g) = &mut self.granted {
                    g.resources = r.resources.clone();
                }
            }
        }
    }

    fn decide(
        &self,
        command: &LicenseCommand,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError> {
        let id = command.license_id();
        if let LicenseCommand::Grant {
            cnpj,
            product,
            contract_id,
            expires_on,
            resources,
            ..
        } = command
        {
            if self.granted.is_some() {
                return Err(DomainError::AlreadyExists {
                    what: "license",
                    id: id.to_string(),
                });
            }
            return Ok(vec![LicenseGranted {
                license_id: id,
                cnpj: *cnpj,
                product: *product,
                contract_id: *contract_id,
                expires_on: *expires_on,
                resources: resources.clone(),
            }
            .into()]);
        }
        let granted = self.granted(id)?;
        let event: Event = match command {
            // Handled above when the license does not exist; here it does.
            LicenseCommand::Grant { .. } => {
                return Err(DomainError::AlreadyExists {
                    what: "license",
                    id: id.to_string(),
                })
            }
            LicenseCommand::Renew { expires_on, .. } => {
                if *expires_on <= granted.expires_on {
                    return Err(DomainError::InvalidField {
                        field: "expires_on",
                        problem: format!(
                            "must be after the current expiry {}",
                            granted.expires_on.format("%d/%m/%Y")
                        ),
                    });
                }
                LicenseRenewed {
                    license_id: id,
                    previous_expiry: granted.expires_on,
                    expires_on: *expires_on,
                    cause: RenewalCause::Manual,
                }
                .into()
            }
            LicenseCommand::RenewByContract { terms, .. } => {
                let Some(contract_id) = granted.contract_id else {
                    return Err(DomainError::rejected(format!(
                        "license {id} has no contract"
                    )));
                };
                if terms.contract.signed.as_ref().map(|s| s.contract_id) != Some(contract_id) {
                    return Err(DomainError::rejected(format!(
                        "license {id} is renewed by contract {contract_id}, not the one given"
                    )));
                }
                if !self.active {
                    return Ok(vec![]);
                }
                match contract_renewal(granted.expires_on, terms, terms.today) {
                    Some(expires_on) => LicenseRenewed {
                        license_id: id,
                        previous_expiry: granted.expires_on,
                        expires_on,
                        cause: RenewalCause::Contract { contract_id },
                    }
                    .into(),
                    None => return Ok(vec![]),
                }
            }
            LicenseCommand::Bind {
                hardware_id,
                hardware_key,
                ip,
                caixa,
                equipamento,
                ..
            } => {
                match self.bound {
                    Some(b) if b.hardware_id == *hardware_id && b.hardware_key == *hardware_key => {
                        return Ok(vec![])
                    }
                    Some(b) => {
                        return Err(DomainError::rejected(format!(
                            "license {id} is bound to terminal {}",
                            b.hardware_id
                        )))
                    }
                    None => {}
                }
                LicenseBound {
                    license_id: id,
                    hardware_id: *hardware_id,
                    hardware_key: *hardware_key,
                    ip: *ip,
                    caixa: *caixa,
                    equipamento: *equipamento,
                }
                .into()
            }
            LicenseCommand::Unlink { note, .. } => match self.bound {
                Some(b) => LicenseUnlinked {
                    license_id: id,
                    hardware_id: b.hardware_id,
                    note: note.clone(),
                }
                .into(),
                None => {
                    return Err(DomainError::rejected(format!(
                        "license {id} is not bound to a terminal"
                    )))
                }
            },
            LicenseCommand::Block { note, .. } => {
                if self.blocked {
                    return Err(DomainError::rejected(format!(
                        "license {id} is already blocked"
                    )));
                }
                LicenseBlocked {
                    license_id: id,
                    note: note.clone(),
                }
                .into()
            }
            LicenseCommand::Unblock { note, .. } => {
                if !self.blocked {
                    return Err(DomainError::rejected(format!(
                        "license {id} is not blocked"
                    )));
                }
                LicenseUnblocked {
                    license_id: id,
                    note: note.clone(),
                }
                .into()
            }
            LicenseCommand::Deactivate { note, .. } => {
                if !self.active {
                    return Err(DomainError::rejected(format!(
                        "license {id} is already deactivated"
                    )));
                }
                LicenseDeactivated {
                    license_id: id,
                    note: note.clone(),
                }
                .into()
            }
            LicenseCommand::Reactivate { note, .. } => {
                if self.active {
                    return Err(DomainError::rejected(format!(
                        "license {id} is already active"
                    )));
                }
                LicenseReactivated {
                    license_id: id,
                    note: note.clone(),
                }
                .into()
            }
            LicenseCommand::ChangeResources { resources, .. } => {
                if *resources == granted.resources {
                    return Ok(vec![]);
                }
                LicenseResourcesChanged {
                    license_id: id,
                    resources: resources.clone(),
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
    use ledger_events::{ContractSigned, ResourceKey, ResourceValue};

    use super::*;
    use crate::domain::given;

    fn id() -> LicenseId {
        LicenseId::parse("002438").unwrap()
    }
    fn cnpj() -> Cnpj {
        Cnpj::parse("11222333000181").unwrap()
    }
    fn day(d: &str) -> NaiveDate {
        d.parse().unwrap()
    }
    fn at(d: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(&day(d).and_hms_opt(10, 0, 0).unwrap())
    }
    fn contract_id() -> ContractId {
        ContractId::new(731).unwrap()
    }
    fn granted(expires: &str) -> Event {
        LicenseGranted {
            license_id: id(),
            cnpj: cnpj(),
            product: Product::EasyCash,
            contract_id: Some(contract_id()),
            expires_on: day(expires),
            resources: Resources::default(),
        }
        .into()
    }
    fn terms(active: bool, customer_active: bool) -> RenewalTerms {
        RenewalTerms {
            contract: Contract {
                signed: Some(ContractSigned {
                    contract_id: contract_id(),
                    cnpj: cnpj(),
                    starts_on: day("2023-03-01"),
                    ends_on: None,
                    interval_days: 30,
                    renew_before_days: 3,
                }),
                active,
            },
            customer_active,
            today: day("2023-03-27"),
        }
    }
    fn hw() -> HardwareId {
        HardwareId::parse("50026B77825EECA5").unwrap()
    }
    fn key() -> HardwareKey {
        HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap()
    }
    fn bind() -> LicenseCommand {
        LicenseCommand::Bind {
            license_id: id(),
            hardware_id: hw(),
            hardware_key: key(),
            ip: "192.168.0.198".parse().ok(),
            caixa: TerminalNumber::new(3).ok(),
            equipamento: TerminalNumber::new(3).ok(),
        }
    }

    #[test]
    fn renovacao_a_license_within_three_days_of_expiry_renews_by_the_interval() {
        let l = given::<License>(&[granted("2023-03-30")]);
        let events = l
            .state
            .decide(
                &LicenseCommand::RenewByContract {
                    license_id: id(),
                    terms: terms(true, true),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert_eq!(
            events,
            vec![LicenseRenewed {
                license_id: id(),
                previous_expiry: day("2023-03-30"),
                expires_on: day("2023-04-29"),
                cause: RenewalCause::Contract {
                    contract_id: contract_id()
                },
            }
            .into()]
        );
    }

    #[test]
    fn renovacao_a_license_further_from_expiry_is_not_renewed_yet() {
        let l = given::<License>(&[granted("2023-03-31")]);
        let events = l
            .state
            .decide(
                &LicenseCommand::RenewByContract {
                    license_id: id(),
                    terms: terms(true, true),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn cliente_com_contrato_desativado_an_inactive_contract_never_renews() {
        let l = given::<License>(&[granted("2023-03-28")]);
        let events = l
            .state
            .decide(
                &LicenseCommand::RenewByContract {
                    license_id: id(),
                    terms: terms(false, true),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn cliente_inativado_an_inactive_customer_never_renews() {
        let l = given::<License>(&[granted("2023-03-28")]);
        let events = l
            .state
            .decide(
                &LicenseCommand::RenewByContract {
                    license_id: id(),
                    terms: terms(true, false),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn renovacao_a_lapsed_license_catches_up_by_whole_intervals() {
        // Expired 2023-01-01; on 2023-03-27 with a 30-day interval it needs three intervals
        // to be past the 3-day window again.
        assert_eq!(
            contract_renewal(day("2023-01-01"), &terms(true, true), day("2023-03-27")),
            Some(day("2023-04-01"))
        );
    }

    #[test]
    fn liberacao_off_line_unlinking_frees_a_bound_license() {
        let l = given::<License>(&[granted("2023-05-01")]);
        let bound = l.state.decide(&bind(), at("2023-03-27")).unwrap();
        assert!(matches!(
            &bound[..],
            [Event::License(LicenseEvent::Bound(_))]
        ));
        let l = given::<License>(&[granted("2023-05-01"), bound[0].clone()]);
        let unlinked = l
            .state
            .decide(
                &LicenseCommand::Unlink {
                    license_id: id(),
                    note: None,
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert_eq!(
            unlinked,
            vec![LicenseUnlinked {
                license_id: id(),
                hardware_id: hw(),
                note: None
            }
            .into()]
        );
        let l = given::<License>(&[granted("2023-05-01"), bound[0].clone(), unlinked[0].clone()]);
        assert!(l.state.bound.is_none());
        assert!(matches!(
            l.state.decide(
                &LicenseCommand::Unlink {
                    license_id: id(),
                    note: None
                },
                at("2023-03-27")
            ),
            Err(DomainError::Rejected(_))
        ));
    }

    #[test]
    fn vinculo_a_bound_license_refuses_another_terminal_and_repeats_nothing_for_its_own() {
        let l = given::<License>(&[granted("2023-05-01")]);
        let bound = l.state.decide(&bind(), at("2023-03-27")).unwrap();
        let l = given::<License>(&[granted("2023-05-01"), bound[0].clone()]);
        assert_eq!(l.state.decide(&bind(), at("2023-03-27")).unwrap(), vec![]);
        let other = LicenseCommand::Bind {
            license_id: id(),
            hardware_id: HardwareId::parse("44AF83C0727DD188").unwrap(),
            hardware_key: key(),
            ip: None,
            caixa: None,
            equipamento: None,
        };
        assert!(matches!(
            l.state.decide(&other, at("2023-03-27")),
            Err(DomainError::Rejected(_))
        ));
    }

    #[test]
    fn gerenciamento_block_deactivate_and_their_inverses_toggle_once() {
        let l = given::<License>(&[granted("2023-05-01")]);
        let blocked = l
            .state
            .decide(
                &LicenseCommand::Block {
                    license_id: id(),
                    note: None,
                },
                at("2023-03-27"),
            )
            .unwrap();
        let l = given::<License>(&[granted("2023-05-01"), blocked[0].clone()]);
        assert!(l.state.blocked);
        assert!(l
            .state
            .decide(
                &LicenseCommand::Block {
                    license_id: id(),
                    note: None
                },
                at("2023-03-27")
            )
            .is_err());
        let off = l
            .state
            .decide(
                &LicenseCommand::Deactivate {
                    license_id: id(),
                    note: None,
                },
                at("2023-03-27"),
            )
            .unwrap();
        let l = given::<License>(&[granted("2023-05-01"), blocked[0].clone(), off[0].clone()]);
        assert!(!l.state.active);
        assert!(l
            .state
            .decide(
                &LicenseCommand::Reactivate {
                    license_id: id(),
                    note: None
                },
                at("2023-03-27")
            )
            .is_ok());
    }

    #[test]
    fn dav_pre_venda_resources_are_replaced_and_an_unchanged_set_records_nothing() {
        let l = given::<License>(&[granted("2023-05-01")]);
        let set = Resources::new([
            (
                ResourceKey::parse("habilita_dav").unwrap(),
                ResourceValue::Bool(true),
            ),
            (
                ResourceKey::parse("habilita_preventa").unwrap(),
                ResourceValue::Bool(false),
            ),
        ])
        .unwrap();
        let changed = l
            .state
            .decide(
                &LicenseCommand::ChangeResources {
                    license_id: id(),
                    resources: set.clone(),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert_eq!(changed.len(), 1);
        let l = given::<License>(&[granted("2023-05-01"), changed[0].clone()]);
        assert_eq!(l.state.granted.as_ref().unwrap().resources, set);
        assert!(l
            .state
            .decide(
                &LicenseCommand::ChangeResources {
                    license_id: id(),
                    resources: set
                },
                at("2023-03-27")
            )
            .unwrap()
            .is_empty());
    }

    #[test]
    fn gerenciamento_manual_renewal_must_move_expiry_forward() {
        let l = given::<License>(&[granted("2023-05-01")]);
        assert!(matches!(
            l.state.decide(
                &LicenseCommand::Renew {
                    license_id: id(),
                    expires_on: day("2023-04-01")
                },
                at("2023-03-27")
            ),
            Err(DomainError::InvalidField {
                field: "expires_on",
                ..
            })
        ));
        let ok = l
            .state
            .decide(
                &LicenseCommand::Renew {
                    license_id: id(),
                    expires_on: day("2023-06-01"),
                },
                at("2023-03-27"),
            )
            .unwrap();
        assert!(
            matches!(&ok[..], [Event::License(LicenseEvent::Renewed(r))] if r.cause == RenewalCause::Manual)
        );
    }

    #[test]
    fn gerenciamento_commands_on_an_ungranted_license_are_not_found() {
        let l = given::<License>(&[]);
        assert!(matches!(
            l.state.decide(
                &LicenseCommand::Block {
                    license_id: id(),
                    note: None
                },
                at("2023-03-27")
            ),
            Err(DomainError::NotFound {
                what: "license",
                ..
            })
        ));
        assert!(matches!(
            given::<License>(&[granted("2023-05-01")]).state.decide(
                &LicenseCommand::Grant {
                    license_id: id(),
                    cnpj: cnpj(),
                    product: Product::EasyCash,
                    contract_id: None,
                    expires_on: day("2023-05-01"),
                    resources: Resources::default(),
                },
                at("2023-03-27")
            ),
            Err(DomainError::AlreadyExists { .. })
        ));
    }
}
