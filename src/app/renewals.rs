//! Renewal by contract as a process, not only a side effect of a check-in.
//!
//! The manual's table shows every product of a contract carrying the renewed date, also the
//! ones no terminal checks in for (NF-e, TEF IWS, EFD...). So besides the renewal a check-in
//! makes on its own license, two things renew by contract:
//! - **the automatic pass** ([`Ledger::renew_due`]), which `serve` runs at start and then on
//!   a fixed period: every license of an active contract that has entered its renew-before
//!   window on the customer's local day is renewed, as actor [`AUTOMATIC_RENEWAL`]. Its
//!   command ids are derived from (license, expiry being renewed), so several nodes running
//!   the pass at once record each renewal once (the second finds the first's events, or
//!   meets a version conflict and then nothing left to renew);
//! - **support, now** ([`Ledger::renew_contract`]: `POST /v1/contracts/{id}/renew`, CLI
//!   `renew --contract ID`): the same rule for one contract's licenses; a retry with the same
//!   command id answers the same renewals.
//!
//! A pass reads the view's contracts and their licenses (bounded by the number of licenses,
//! never the log) and only loads the streams of the licenses that are due.

use std::sync::Weak;
use std::time::Duration as StdDuration;

use chrono::NaiveDate;
use ledger_events::{
    Actor, ContractId, Event, LicenseEvent, LicenseId, LicenseRenewed, Position, StreamId,
};
use ledger_projections::rows::LicenseRow;
use serde::Serialize;
use uuid::Uuid;

use super::{derived_v7, AppError, CommandKey, Ledger};
use crate::domain::contract::Contract;
use crate::domain::license::{contract_renewal, License, LicenseCommand, RenewalTerms};
use crate::domain::DomainError;

/// The command kind of a renewal by contract, whichever entry point runs it (so that a
/// command id is recognised across them).
pub(crate) const RENEW_BY_CONTRACT: &str = "license.renew_by_contract";

/// The actor of the automatic renewals, as the Histórico shows it.
pub const AUTOMATIC_RENEWAL: &str = "renovação automática";

/// Default period of the automatic pass (configuration `renewal_interval_minutes`).
pub const DEFAULT_RENEWAL_INTERVAL: StdDuration = StdDuration::from_secs(15 * 60);

/// The namespace of the automatic pass's command ids.
const AUTOMATIC_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6365_6e73_652d_7265_6e65_7761_6c73);

/// One license renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Renewal {
    /// The license.
    #[schema(value_type = String, example = "001680")]
    pub license_id: LicenseId,
    /// Its expiry before.
    pub previous_expiry: NaiveDate,
    /// Its expiry now.
    pub expires_on: NaiveDate,
    /// Where the renewal is in the log.
    pub position: Position,
    /// Whether this answers a retry: the renewal was recorded by an earlier call with the
    /// same command id.
    #[serde(skip)]
    pub was_retry: bool,
}

/// What an automatic pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenewalPass {
    /// Licenses with a contract that were looked at.
    pub examined: usize,
    /// The ones renewed (by this node; a renewal another node recorded first is not here).
    pub renewed: Vec<Renewal>,
}

impl Ledger {
    /// Renews now every license of the contract that its terms renew today (the same rule as
    /// a check-in's). Answers the renewals made, in license order; a retry with the same
    /// `command_id` and caller answers the same ones and records nothing new.
    pub async fn renew_contract(
        &self,
        contract_id: ContractId,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<Vec<Renewal>, AppError> {
        self.catch_up().await?;
        if self.view().contract(contract_id).is_none() {
            return Err(DomainError::NotFound {
                what: "contract",
                id: contract_id.to_string(),
            }
            .into());
        }
        let mut renewed = Vec::new();
        for row in self.view().licenses_of_contract(contract_id) {
            // One command per license, its id derived from the caller's: a retry finds each
            // license's events, also of the licenses it no longer finds due.
            let id = derived_v7(command_id, &row.license_id.get().to_be_bytes());
            let terms = self.renewal_terms(&row);
            if let Some(r) = self.renew_one(&row, terms, actor, id).await? {
                renewed.push(r);
            }
        }
        Ok(renewed)
    }

    /// The automatic pass: renews every license of every contract that is due on its
    /// customer's local day today.
    pub async fn renew_due(&self) -> Result<RenewalPass, AppError> {
        self.catch_up().await?;
        let actor = automatic_actor()?;
        let now = self.clock().now();
        let mut pass = RenewalPass::default();
        for contract in self.view().contracts() {
            let today = self.calendar_of(&contract.cnpj).day(now);
            if !Contract::from(&contract).renews_on(today) {
                continue;
            }
            for row in self.view().licenses_of_contract(contract.contract_id) {
                pass.examined += 1;
                let terms = self.renewal_terms(&row);
                if !row.active || contract_renewal(row.expires_on, &terms, terms.today).is_none() {
                    continue;
                }
                let id = automatic_command_id(row.license_id, row.expires_on);
                if let Some(r) = self.renew_one(&row, terms, &actor, id).await? {
                    pass.renewed.push(r);
                }
            }
        }
        Ok(pass)
    }

    /// The terms a renewal of `row` by its contract is decided on today, as the view says
    /// (no contract: terms that never renew): the contract, whether the customer may
    /// operate, and the customer's local day.
    pub(crate) fn renewal_terms(&self, row: &LicenseRow) -> RenewalTerms {
        let contract = row.contract_id.and_then(|id| self.view().contract(id));
        let customer_active = self
            .view()
            .customer(&row.cnpj)
            .is_some_and(|c| c.active && !c.blocked && !c.blacklisted);
        RenewalTerms {
            contract: contract.as_ref().map(Contract::from).unwrap_or_default(),
            customer_active,
            today: self.calendar_of(&row.cnpj).day(self.clock().now()),
        }
    }

    /// Runs the renewal command for one license; answers what it recorded (or had recorded,
    /// on a retry).
    async fn renew_one(
        &self,
        row: &LicenseRow,
        terms: RenewalTerms,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<Option<Renewal>, AppError> {
        let key = CommandKey::new(command_id, RENEW_BY_CONTRACT, &row.license_id, actor);
        let command = LicenseCommand::RenewByContract {
            license_id: row.license_id,
            terms,
        };
        let executed = self
            .execute_recorded::<License>(&StreamId::license(row.license_id), &command, actor, &key)
            .await?;
        let position = executed.outcome.position();
        let was_retry = executed.outcome.was_retry;
        Ok(executed.events.iter().find_map(|e| match e {
            Event::License(LicenseEvent::Renewed(LicenseRenewed {
                license_id,
                previous_expiry,
                expires_on,
                ..
            })) => Some(Renewal {
                license_id: *license_id,
                previous_expiry: *previous_expiry,
                expires_on: *expires_on,
                position,
                was_retry,
            }),
            _ => None,
        }))
    }
}

fn automatic_actor() -> Result<Actor, AppError> {
    Actor::system(AUTOMATIC_RENEWAL).map_err(|e| {
        AppError::Domain(DomainError::InvalidField {
            field: "actor",
            problem: e.to_string(),
        })
    })
}

/// The automatic pass's command id for renewing `license` from `expiry`: the same on every
/// node and every pass, so that the renewal is recorded once.
pub fn automatic_command_id(license: LicenseId, expiry: NaiveDate) -> Uuid {
    derived_v7(
        AUTOMATIC_NAMESPACE,
        format!("renew/{license}/{expiry}").as_bytes(),
    )
}

/// Runs [`Ledger::renew_due`] now and then every `every`, until the ledger is dropped. A
/// failed pass is logged and tried again at the next period.
pub async fn run(ledger: Weak<Ledger>, every: StdDuration) {
    super::every(ledger, every, async |ledger| {
        match ledger.renew_due().await {
            Ok(pass) if !pass.renewed.is_empty() => {
                tracing::info!(
                    examined = pass.examined,
                    renewed = pass.renewed.len(),
                    "automatic renewal by contract"
                );
            }
            Ok(pass) => {
                tracing::debug!(examined = pass.examined, "automatic renewal: none due");
            }
            Err(e) => tracing::warn!(error = %e, "automatic renewal failed; trying again later"),
        }
    })
    .await;
}
