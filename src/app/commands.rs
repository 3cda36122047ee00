//! Typed entry points for support's commands: they find the stream, check cross-aggregate
//! facts through the view (the customer exists, the contract belongs to it), allocate ids,
//! and run the aggregate through [`Ledger::execute`].

use chrono::NaiveDate;
use hmac::{Hmac, Mac};
use ledger_events::offline;
use ledger_events::{
    ActivationCode, Actor, Cnpj, CodeMac, ContractId, CounterKey, EmergencyReleaseEvent, Event,
    HardwareId, HardwareKey, LicenseId, OfflineActivationEvent, Product, Resources, Serial,
    StreamId, TerminalNumber, TradeName, ValueError,
};
use ledger_projections::view::LedgerView;
use sha2::Sha256;
use uuid::Uuid;

use super::ids::IdAllocator;
use super::{AppError, CommandKey, CommandOutcome, Ledger};
use crate::domain::contract::{Contract, ContractCommand};
use crate::domain::customer::{Customer, CustomerCommand};
use crate::domain::license::{License, LicenseCommand};
use crate::domain::release::{
    Contingencies, ContingencyCommand, EmergencyRelease, IssueEmergencyRelease,
    IssueOfflineActivation, OfflineActivation,
};
use crate::domain::DomainError;

/// Secrets the command side uses and never records.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Per-product keys of offline counter-keys.
    pub offline: std::collections::BTreeMap<Product, Vec<u8>>,
    /// Key of emergency-release codes.
    pub emergency: Vec<u8>,
    /// The center's audit key: the log keeps a MAC of each issued offline counter-key under
    /// it ([`offline::code_mac`]), never the key; nothing outside the center holds it.
    pub audit: Vec<u8>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// What a new license gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantLicense {
    /// The customer.
    pub cnpj: Cnpj,
    /// The product.
    pub product: Product,
    /// The contract renewing it.
    pub contract_id: Option<ContractId>,
    /// First expiry.
    pub expires_on: NaiveDate,
    /// Resources.
    pub resources: Resources,
}

/// What a new contract gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignContract {
    /// The customer.
    pub cnpj: Cnpj,
    /// "Inicia em".
    pub starts_on: NaiveDate,
    /// "Expira em".
    pub ends_on: Option<NaiveDate>,
    /// "Intervalo em dias".
    pub interval_days: u16,
    /// "Renovar antes de".
    pub renew_before_days: u16,
}

/// An offline activation to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineRequest {
    /// The serial the terminal shows.
    pub serial: Serial,
    /// The product.
    pub product: Product,
    /// The customer, when known.
    pub cnpj: Option<Cnpj>,
    /// The license released, when known.
    pub license_id: Option<LicenseId>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
}

/// An issued offline activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineIssued {
    /// The counter-key.
    pub counter_key: CounterKey,
    /// Last day it is valid.
    pub valid_until: NaiveDate,
    /// The terminal whose own key made it (offline algorithm version 2); `None`: the
    /// product's key (version 1: a terminal the center has not seen online).
    pub terminal: Option<HardwareId>,
    /// Where it was recorded.
    pub outcome: CommandOutcome,
}

/// An issued emergency release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmergencyIssued {
    /// "Código de ativação".
    pub activation_code: ActivationCode,
    /// "Contra-Chave".
    pub counter_key: CounterKey,
    /// Where it was recorded.
    pub outcome: CommandOutcome,
}

impl Ledger {
    /// Any customer command.
    pub async fn customer(
        &self,
        command: CustomerCommand,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<CommandOutcome, AppError> {
        let key = CommandKey::new(command_id, "customer", &command, actor);
        // The digest covers the command as given; "since" defaults to the local day now.
        let command = match command {
            CustomerCommand::Register {
                cnpj,
                trade_name,
                since: None,
            } => CustomerCommand::Register {
                cnpj,
                trade_name,
                since: Some(self.today()),
            },
            other => other,
        };
        let stream = StreamId::customer(command.cnpj());
        self.execute_keyed::<Customer>(&stream, &command, actor, &key)
            .await
    }

    /// Signs a contract for an existing customer, allocating its id.
    pub async fn sign_contract(
        &self,
        c: SignContract,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<(ContractId, CommandOutcome), AppError> {
        let key = CommandKey::new(command_id, "contract.sign", &c, actor);
        self.require_customer(&c.cnpj).await?;
        self.allocate::<Contract, ContractId>(
            |contract_id| ContractCommand::Sign {
                contract_id,
                cnpj: c.cnpj,
                starts_on: c.starts_on,
                ends_on: c.ends_on,
                interval_days: c.interval_days,
                renew_before_days: c.renew_before_days,
            },
            actor,
            &key,
        )
        .await
    }

    /// Any command on an existing contract.
    pub async fn contract(
        &self,
        command: ContractCommand,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<CommandOutcome, AppError> {
        let key = CommandKey::new(command_id, "contract", &command, actor);
        let stream = StreamId::contract(command.contract_id());
        self.execute_keyed::<Contract>(&stream, &command, actor, &key)
            .await
    }

    /// Grants a license to an existing customer, allocating its id.
    pub async fn grant_license(
        &self,
        g: GrantLicense,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<(LicenseId, CommandOutcome), AppError> {
        let key = CommandKey::new(command_id, "license.grant", &g, actor);
        self.require_customer(&g.cnpj).await?;
        if let Some(contract_id) = g.contract_id {
            match self.view().contract(contract_id) {
                Some(c) if c.cnpj == g.cnpj => {}
                Some(_) => {
                    return Err(DomainError::InvalidField {
                        field: "contract_id",
                        problem: format!("contract {contract_id} belongs to another customer"),
                    }
                    .into())
                }
                None => {
                    return Err(DomainError::NotFound {
                        what: "contract",
                        id: contract_id.to_string(),
                    }
                    .into())
                }
            }
        }
        self.allocate::<License, LicenseId>(
            |license_id| LicenseCommand::Grant {
                license_id,
                cnpj: g.cnpj,
                product: g.product,
                contract_id: g.contract_id,
                expires_on: g.expires_on,
                resources: g.resources.clone(),
            },
            actor,
            &key,
        )
        .await
    }

    /// Any command on an existing license. `RenewByContract` is filled in from the view
    /// (contract and customer state); pass any terms.
    pub async fn license(
        &self,
        command: LicenseCommand,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<CommandOutcome, AppError> {
        // The digest covers the command as the caller gave it (for a renewal by contract,
        // without the terms filled in below).
        let key = match &command {
            LicenseCommand::RenewByContract { license_id, .. } => CommandKey::new(
                command_id,
                super::renewals::RENEW_BY_CONTRACT,
                license_id,
                actor,
            ),
            other => CommandKey::new(command_id, "license", other, actor),
        };
        let command = match command {
            LicenseCommand::RenewByContract { license_id, .. } => {
                self.catch_up().await?;
                let row = self
                    .view()
                    .license(license_id)
                    .ok_or(DomainError::NotFound {
                        what: "license",
                        id: license_id.to_string(),
                    })?;
                LicenseCommand::RenewByContract {
                    license_id,
                    terms: self.renewal_terms(&row),
                }
            }
            other => other,
        };
        let stream = StreamId::license(command.license_id());
        self.execute_keyed::<License>(&stream, &command, actor, &key)
            .await
    }

    /// Opens or closes a contingency entry.
    pub async fn contingency(
        &self,
        command: ContingencyCommand,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<CommandOutcome, AppError> {
        let key = CommandKey::new(command_id, "contingency", &command, actor);
        let cnpj = match &command {
            ContingencyCommand::Enter { cnpj, .. } | ContingencyCommand::Clear { cnpj, .. } => {
                *cnpj
            }
        };
        self.require_customer(&cnpj).await?;
        self.execute_keyed::<Contingencies>(&StreamId::contingency(&cnpj), &command, actor, &key)
            .await
    }

    /// "Ativar Offline": issues the counter-key for a serial (once per serial), valid for one
    /// day, and opens a manual contingency for the terminal when its license is known.
    ///
    /// The counter-key is made under the terminal's own key ([`offline::terminal_key`]) when
    /// the center has seen that terminal online ([`Ledger::offline_terminal`]), else under the
    /// product's key (version 1). The record keeps only [`offline::code_mac`] of it. A retry
    /// (same `command_id`, request and caller) answers the counter-key and day of the first
    /// time: recomputed from the stored serial, product, terminal and day, and checked against
    /// the stored MAC (a record written before MACs were kept holds the key itself).
    pub async fn issue_offline_activation(
        &self,
        secrets: &Secrets,
        r: OfflineRequest,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<OfflineIssued, AppError> {
        let key = CommandKey::new(command_id, "offline_activation", &r, actor);
        let secret = secrets
            .offline
            .get(&r.product)
            .ok_or_else(|| DomainError::InvalidField {
                field: "product",
                problem: format!("no offline activation key is configured for {}", r.product),
            })?;
        let now = self.clock().now();
        let terminal = self.offline_terminal(&r).await?;
        // The customer's days, when the customer is known.
        let calendar = match r.cnpj.or(terminal.map(|(cnpj, _)| cnpj)) {
            Some(cnpj) => self.calendar_of(&cnpj),
            None => self.calendar(),
        };
        let valid_until = offline::valid_until(calendar.day(now));
        let counter_key =
            offline_code(secret, terminal.as_ref(), &r.serial, r.product, valid_until);
        let command = IssueOfflineActivation {
            serial: r.serial,
            // The customer the terminal key is derived for is kept, so a retry recomputes it.
            cnpj: r.cnpj.or(terminal.map(|(cnpj, _)| cnpj)),
            product: r.product,
            license_id: r.license_id,
            caixa: r.caixa,
            equipamento: r.equipamento,
            terminal: terminal.map(|(_, hardware_id)| hardware_id),
            code_mac: offline::code_mac(
                &secrets.audit,
                &r.serial,
                r.product,
                valid_until,
                &counter_key,
            ),
            valid_until: calendar.end_of(valid_until),
        };
        let done = self
            .execute_recorded::<OfflineActivation>(
                &StreamId::offline_activation(&r.serial),
                &command,
                actor,
                &key,
            )
            .await?;
        let (counter_key, valid_until, terminal) = if done.outcome.was_retry {
            let issued = done.events.iter().find_map(|e| match e {
                Event::OfflineActivation(OfflineActivationEvent::Issued(i)) => Some(i),
                _ => None,
            });
            match issued {
                Some(i) => (
                    stored_offline_code(secrets, i, calendar)?,
                    calendar.day(i.valid_until),
                    i.terminal,
                ),
                // The command id's records are not an offline activation (a record written
                // before digests were kept, by another command).
                None => return Err(AppError::CommandIdReused { command_id }),
            }
        } else {
            (counter_key, valid_until, command.terminal)
        };
        if let (Some(cnpj), Some(license_id)) = (r.cnpj, r.license_id) {
            let terminal = self.view().license(license_id).and_then(|l| {
                l.binding
                    .map(|b| b.hardware_id)
                    .or(l.last_check_in.map(|c| c.hardware_id))
            });
            if let Some(hardware_id) = terminal {
                let enter = ContingencyCommand::Enter {
                    cnpj,
                    kind: ledger_events::ContingencyKind::Manual,
                    hardware_id: Some(hardware_id),
                    license_id: Some(license_id),
                    grace_until: Some(valid_until),
                    note: None,
                };
                self.execute_keyed::<Contingencies>(
                    &StreamId::contingency(&cnpj),
                    &enter,
                    actor,
                    &key.follow_up("contingency"),
                )
                .await?;
            }
        }
        Ok(OfflineIssued {
            counter_key,
            valid_until,
            terminal,
            outcome: done.outcome,
        })
    }

    /// "Liberação emergencial" (restricted): activation code and counter-key for a machine.
    /// The record keeps only [`emergency_code_mac`] of the codes. A retry answers the codes of
    /// the first time: recomputed from the stored product, hardware id and key, and checked
    /// against the stored MAC (a record written before MACs were kept holds the codes).
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_emergency_release(
        &self,
        secrets: &Secrets,
        product: Product,
        hardware_id: HardwareId,
        hardware_key: HardwareKey,
        licensed_to: TradeName,
        actor_may_release: bool,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<EmergencyIssued, AppError> {
        let key = CommandKey::new(
            command_id,
            "emergency_release",
            &(product, &hardware_id, &hardware_key, &licensed_to),
            actor,
        );
        let (activation_code, counter_key) =
            emergency_codes(&secrets.emergency, product, &hardware_id, &hardware_key);
        let command = IssueEmergencyRelease {
            product,
            hardware_id,
            hardware_key,
            code_mac: emergency_code_mac(
                &secrets.audit,
                product,
                &hardware_id,
                &hardware_key,
                &activation_code,
                &counter_key,
            ),
            licensed_to,
            actor_may_release,
        };
        let done = self
            .execute_recorded::<EmergencyRelease>(
                &StreamId::emergency_release(&hardware_id),
                &command,
                actor,
                &key,
            )
            .await?;
        let (activation_code, counter_key) = if done.outcome.was_retry {
            match done.events.iter().find_map(|e| match e {
                Event::EmergencyRelease(EmergencyReleaseEvent::Issued(i)) => Some(i),
                _ => None,
            }) {
                Some(i) => stored_emergency_codes(secrets, i)?,
                None => return Err(AppError::CommandIdReused { command_id }),
            }
        } else {
            (activation_code, counter_key)
        };
        Ok(EmergencyIssued {
            activation_code,
            counter_key,
            outcome: done.outcome,
        })
    }

    /// A terminal's own offline key ([`offline::terminal_key`]), for delivery to that
    /// terminal: only while a license of `product` of `cnpj` is bound to `hardware_id` with
    /// this `hardware_key` (the terminal checked in and holds the key it bound with). It is
    /// derived, never stored; the terminal keeps it and verifies its counter-keys with it
    /// ([`offline::verify_terminal_counter_key`]) instead of holding the product's key.
    pub async fn terminal_offline_key(
        &self,
        secrets: &Secrets,
        cnpj: &Cnpj,
        product: Product,
        hardware_id: &HardwareId,
        hardware_key: &HardwareKey,
    ) -> Result<offline::TerminalKey, AppError> {
        let secret = secrets
            .offline
            .get(&product)
            .ok_or_else(|| DomainError::InvalidField {
                field: "product",
                problem: format!("no offline activation key is configured for {product}"),
            })?;
        let bound = |ledger: &Ledger| {
            ledger
                .view()
                .bound_license(cnpj, product, hardware_id)
                .and_then(|l| l.binding)
                .is_some_and(|b| b.hardware_key == *hardware_key)
        };
        if !bound(self) {
            self.catch_up().await?;
            if !bound(self) {
                return Err(DomainError::NotFound {
                    what: "terminal",
                    id: format!(
                        "{hardware_id} bound to a {product} license of {cnpj} with this \
                         hardware_key (check in first)"
                    ),
                }
                .into());
            }
        }
        Ok(offline::terminal_key(secret, cnpj, hardware_id))
    }

    /// The terminal an offline activation is for, when the center has seen it online: the
    /// request names a license for this product (and, if it names a customer, the license's
    /// customer); the license's bound
    /// terminal (or, once unlinked, the terminal of its last check-in) has checked in for this
    /// product under this customer; and the serial starts with that terminal's hardware-id
    /// prefix (the manual's serial is "hardware id prefix + challenge"). `None` otherwise:
    /// the counter-key is then made under the product's key.
    pub async fn offline_terminal(
        &self,
        r: &OfflineRequest,
    ) -> Result<Option<(Cnpj, HardwareId)>, AppError> {
        let Some(license_id) = r.license_id else {
            return Ok(None);
        };
        self.catch_up().await?;
        let Some(license) = self.view().license(license_id) else {
            return Ok(None);
        };
        let cnpj = license.cnpj;
        if r.cnpj.is_some_and(|c| c != cnpj) || license.product != r.product {
            return Ok(None);
        }
        let Some(hardware_id) = license
            .binding
            .map(|b| b.hardware_id)
            .or(license.last_check_in.map(|c| c.hardware_id))
        else {
            return Ok(None);
        };
        if offline::serial_hardware_prefix(&r.serial) != hardware_id.as_bytes()[..4] {
            return Ok(None);
        }
        let seen = self
            .view()
            .terminal(&cnpj, &hardware_id)
            .is_some_and(|t| t.last.contains_key(&r.product));
        Ok(seen.then_some((cnpj, hardware_id)))
    }

    async fn require_customer(&self, cnpj: &Cnpj) -> Result<(), AppError> {
        if self.view().customer(cnpj).is_some() {
            return Ok(());
        }
        self.catch_up().await?;
        if self.view().customer(cnpj).is_some() {
            return Ok(());
        }
        Err(DomainError::NotFound {
            what: "customer",
            id: cnpj.to_string(),
        }
        .into())
    }

    /// Runs the creating command `command(id)` under an id from the process's allocator (see
    /// [`super::ids`]) until one is stored. An id another node took first is marked used and
    /// the next one tried, for at most [`LedgerConfig::id_allocation_timeout`]
    /// (then [`AppError::IdsBusy`]); an id whose command failed goes back to the allocator. A
    /// retry of this very command answers with the id it stored the first time.
    ///
    /// [`LedgerConfig::id_allocation_timeout`]: super::LedgerConfig::id_allocation_timeout
    async fn allocate<A: crate::domain::Aggregate, I: NewId>(
        &self,
        command: impl Fn(I) -> A::Command,
        actor: &Actor,
        key: &CommandKey,
    ) -> Result<(I, CommandOutcome), AppError> {
        let started = std::time::Instant::now();
        loop {
            let floor = I::max_in_view(self.view()).saturating_add(1);
            let reservation = I::allocator(self).reserve(floor, |n| {
                I::new(n).is_ok_and(|id| I::in_view(self.view(), id))
            });
            let id = I::new(reservation.id()).map_err(|e| DomainError::rejected(e.to_string()))?;
            match self
                .allocating::<A>(&id.stream(), &command(id), actor, key)
                .await?
            {
                Allocated::Done(outcome) => {
                    reservation.used();
                    return Ok((id, outcome));
                }
                // The reserved id stays free: the command is stored under another.
                Allocated::Retry(outcome, stored) => {
                    let stored =
                        I::parse(&stored).map_err(|e| DomainError::rejected(e.to_string()))?;
                    return Ok((stored, outcome));
                }
                Allocated::Taken => reservation.used(),
            }
            // Another node took it: once the view has its events, the floor is past them.
            self.catch_up().await?;
            if started.elapsed() >= self.config().id_allocation_timeout {
                return Err(AppError::IdsBusy {
                    what: I::WHAT,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
        }
    }

    /// Runs a creating command on a freshly allocated stream; tells a taken id apart from a
    /// retry of this very command (whose events are then stored in another stream: the one
    /// of the id it allocated the first time).
    async fn allocating<A: crate::domain::Aggregate>(
        &self,
        stream: &StreamId,
        command: &A::Command,
        actor: &Actor,
        key: &CommandKey,
    ) -> Result<Allocated, AppError> {
        match self
            .execute_recorded::<A>(stream, command, actor, key)
            .await
        {
            Ok(done) if &done.stream != stream => {
                let id = done
                    .stream
                    .as_str()
                    .split_once('-')
                    .map(|(_, id)| id.to_owned())
                    .unwrap_or_default();
                Ok(Allocated::Retry(done.outcome, id))
            }
            Ok(done) => Ok(Allocated::Done(done.outcome)),
            Err(AppError::Domain(DomainError::AlreadyExists { .. })) => Ok(Allocated::Taken),
            Err(e) => Err(e),
        }
    }
}

enum Allocated {
    Done(CommandOutcome),
    Retry(CommandOutcome, String),
    Taken,
}

/// An id the ledger allocates for a new aggregate: license and contract ids.
trait NewId: Copy {
    /// What it names, for errors.
    const WHAT: &'static str;
    /// The id numbered `n`, if in range.
    fn new(n: u32) -> Result<Self, ValueError>;
    /// The id as a stream name writes it.
    fn parse(s: &str) -> Result<Self, ValueError>;
    /// The stream of the aggregate it names.
    fn stream(self) -> StreamId;
    /// The process's allocator of these ids.
    fn allocator(ledger: &Ledger) -> &IdAllocator;
    /// The largest such id the view knows (0 for none).
    fn max_in_view(view: &LedgerView) -> u32;
    /// Whether the view knows it as used.
    fn in_view(view: &LedgerView, id: Self) -> bool;
}

impl NewId for LicenseId {
    const WHAT: &'static str = "license";
    fn new(n: u32) -> Result<Self, ValueError> {
        LicenseId::new(n)
    }
    fn parse(s: &str) -> Result<Self, ValueError> {
        LicenseId::parse(s)
    }
    fn stream(self) -> StreamId {
        StreamId::license(self)
    }
    fn allocator(ledger: &Ledger) -> &IdAllocator {
        &ledger.license_ids
    }
    fn max_in_view(view: &LedgerView) -> u32 {
        view.max_license_id().map_or(0, LicenseId::get)
    }
    fn in_view(view: &LedgerView, id: Self) -> bool {
        view.license(id).is_some()
    }
}

impl NewId for ContractId {
    const WHAT: &'static str = "contract";
    fn new(n: u32) -> Result<Self, ValueError> {
        ContractId::new(n)
    }
    fn parse(s: &str) -> Result<Self, ValueError> {
        ContractId::parse(s)
    }
    fn stream(self) -> StreamId {
        StreamId::contract(self)
    }
    fn allocator(ledger: &Ledger) -> &IdAllocator {
        &ledger.contract_ids
    }
    fn max_in_view(view: &LedgerView) -> u32 {
        view.max_contract_id().map_or(0, ContractId::get)
    }
    fn in_view(view: &LedgerView, id: Self) -> bool {
        view.contract(id).is_some()
    }
}

/// A command id derived from another (for a command's follow-up in another stream).
pub(crate) fn derive(command_id: Uuid, purpose: &str) -> Uuid {
    super::derived_v7(command_id, purpose.as_bytes())
}

/// The counter-key for `serial`: under the terminal's own key when `terminal` is known
/// (offline algorithm version 2), else under the product's key (version 1).
fn offline_code(
    product_secret: &[u8],
    terminal: Option<&(Cnpj, HardwareId)>,
    serial: &Serial,
    product: Product,
    valid_until: NaiveDate,
) -> CounterKey {
    match terminal {
        Some((cnpj, hardware_id)) => offline::terminal_counter_key(
            &offline::terminal_key(product_secret, cnpj, hardware_id),
            serial,
            product,
            valid_until,
        ),
        None => offline::counter_key(product_secret, serial, product, valid_until),
    }
}

/// The counter-key a stored offline activation issued: the key itself in a record written
/// before MACs were kept; otherwise recomputed from the record's serial, product, terminal and
/// day, and accepted only if it matches the record's MAC (the product's offline key or the
/// audit key changed since: refused, rather than answering a key that was never issued).
fn stored_offline_code(
    secrets: &Secrets,
    issued: &ledger_events::OfflineActivationIssued,
    calendar: crate::domain::Calendar,
) -> Result<CounterKey, AppError> {
    if let Some(plain) = issued.counter_key {
        return Ok(plain);
    }
    let cannot = |why: &str| {
        AppError::from(DomainError::rejected(format!(
            "the counter-key issued for serial {} cannot be given again: {why}; ask the terminal \
             for a new serial and send a new command_id",
            issued.serial
        )))
    };
    let mac = issued
        .code_mac
        .ok_or_else(|| cannot("its record holds neither the key nor its MAC"))?;
    let secret = secrets
        .offline
        .get(&issued.product)
        .ok_or_else(|| cannot("no offline activation key is configured for its product"))?;
    let terminal = match (issued.terminal, issued.cnpj) {
        (Some(hardware_id), Some(cnpj)) => Some((cnpj, hardware_id)),
        (Some(_), None) => return Err(cannot("its record names a terminal but no customer")),
        (None, _) => None,
    };
    // Its last local day (records from before local days end at 23:59:59.999999 UTC, the
    // same day on Brazil's clocks, all west of UTC).
    let valid_until = calendar.day(issued.valid_until);
    let code = offline_code(
        secret,
        terminal.as_ref(),
        &issued.serial,
        issued.product,
        valid_until,
    );
    if offline::code_mac_matches(
        &secrets.audit,
        &issued.serial,
        issued.product,
        valid_until,
        &code,
        &mac,
    ) {
        Ok(code)
    } else {
        Err(cannot(
            "the product's offline key or the audit key changed since it was issued",
        ))
    }
}

/// The MAC the log keeps of an emergency release's codes, under the audit key:
/// HMAC-SHA-256 over length-prefixed ("license-ledger/emergency/code-mac/v1", product code,
/// hardware id, hardware key, activation code, counter-key).
pub fn emergency_code_mac(
    audit_key: &[u8],
    product: Product,
    hardware_id: &HardwareId,
    hardware_key: &HardwareKey,
    activation_code: &ActivationCode,
    counter_key: &CounterKey,
) -> CodeMac {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(audit_key) {
        Ok(m) => m,
        // HMAC accepts keys of any length: unreachable.
        Err(_) => return CodeMac::from_bytes([0; 32]),
    };
    for part in [
        &b"license-ledger/emergency/code-mac/v1"[..],
        product.code().as_bytes(),
        hardware_id.as_bytes(),
        hardware_key.as_bytes(),
        activation_code.as_bytes(),
        counter_key.as_bytes(),
    ] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    CodeMac::from_bytes(mac.finalize().into_bytes().into())
}

/// The codes a stored emergency release issued: the codes themselves in a record written
/// before MACs were kept; otherwise recomputed and accepted only if they match the MAC.
fn stored_emergency_codes(
    secrets: &Secrets,
    issued: &ledger_events::EmergencyReleaseIssued,
) -> Result<(ActivationCode, CounterKey), AppError> {
    if let (Some(code), Some(key)) = (issued.activation_code, issued.counter_key) {
        return Ok((code, key));
    }
    let (code, key) = emergency_codes(
        &secrets.emergency,
        issued.product,
        &issued.hardware_id,
        &issued.hardware_key,
    );
    let expected = emergency_code_mac(
        &secrets.audit,
        issued.product,
        &issued.hardware_id,
        &issued.hardware_key,
        &code,
        &key,
    );
    // Constant time: the MAC is compared as secret material.
    let matches = issued.code_mac.is_some_and(|stored| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            &stored.as_bytes()[..],
            &expected.as_bytes()[..],
        ))
    });
    if matches {
        Ok((code, key))
    } else {
        Err(DomainError::rejected(format!(
            "the emergency release of {} cannot be given again: the emergency or audit key \
             changed since it was issued; send a new command_id for a new release",
            issued.hardware_id
        ))
        .into())
    }
}

/// Emergency release codes: the activation code is a MAC of (product, hardware id, key), the
/// counter-key a MAC of the activation code, both truncated to 64 bits.
pub fn emergency_codes(
    secret: &[u8],
    product: Product,
    hardware_id: &HardwareId,
    key: &HardwareKey,
) -> (ActivationCode, CounterKey) {
    let mac = |parts: &[&[u8]]| -> [u8; 8] {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => return [0; 8],
        };
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        let d = m.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    };
    let code = mac(&[
        b"license-ledger/emergency/activation/v1",
        product.code().as_bytes(),
        hardware_id.as_bytes(),
        key.as_bytes(),
    ]);
    let counter = mac(&[b"license-ledger/emergency/counter/v1", &code]);
    (
        ActivationCode::from_bytes(code),
        CounterKey::from_bytes(counter),
    )
}
