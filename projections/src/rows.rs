//! The rows the read models hand out: plain owned values, copied out of the view so that a
//! reader never holds a lock. They serialize to JSON with the same value forms as the event
//! payloads (`"002438"`, `"2023-05-01"`, `"50026B77825EECA5"`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    CheckInOutcome, Cnpj, ContingencyKind, ContractId, HardwareId, HardwareKey, LicenseId, Note,
    Partner, Position, Product, ProgramVersion, Resources, StreamVersion, TerminalNumber,
    TimeZoneName, TradeName,
};
use serde::Serialize;

/// A customer ("Cliente"), one per CNPJ.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CustomerRow {
    /// The tenant's CNPJ.
    pub cnpj: Cnpj,
    /// "Fantasia".
    pub trade_name: TradeName,
    /// "Início".
    pub since: NaiveDate,
    /// "Ativo": true from registration (design) until deactivated.
    pub active: bool,
    /// "Bloqueado".
    pub blocked: bool,
    /// On the blacklist.
    pub blacklisted: bool,
    /// "Parceiro".
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub partner: Option<Partner>,
    /// The IANA zone its days are counted in; none: the deployment's.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "America/Manaus"))]
    pub time_zone: Option<TimeZoneName>,
    /// "Criado em": when it was registered.
    pub created_at: DateTime<Utc>,
    /// "Atualizado em": its latest change.
    pub updated_at: DateTime<Utc>,
    /// Version of the stream `customer-{cnpj}`.
    pub version: StreamVersion,
}

/// A contract ("Contrato").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContractRow {
    /// The contract.
    pub contract_id: ContractId,
    /// Its customer.
    pub cnpj: Cnpj,
    /// "Inicia em".
    pub starts_on: NaiveDate,
    /// "Expira em"; none for an open-ended contract.
    pub ends_on: Option<NaiveDate>,
    /// "Intervalo em dias".
    pub interval_days: u16,
    /// "Renovar antes de".
    pub renew_before_days: u16,
    /// Signed and not deactivated.
    pub active: bool,
    /// Version of the stream `contract-{id}`.
    pub version: StreamVersion,
}

/// The terminal a license is bound to, as the `LicenseBound` event recorded it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// The terminal.
    pub hardware_id: HardwareId,
    /// The key it presents ("Hardware Key" column).
    pub hardware_key: HardwareKey,
    /// Its address when it was bound.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ip: Option<IpAddr>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
    /// When the binding was recorded.
    pub bound_at: DateTime<Utc>,
}

/// A recorded check-in, as the `TerminalCheckedIn` event says it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastCheckIn {
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// The terminal.
    pub hardware_id: HardwareId,
    /// The terminal's address.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ip: Option<IpAddr>,
    /// The program version it reported.
    pub program_version: Option<ProgramVersion>,
    /// What it was told.
    pub outcome: CheckInOutcome,
    /// The check-in's position in the log.
    pub position: Position,
}

/// A row of the license table ("GERENCIAMENTO DE LICENÇAS").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseRow {
    /// "ID".
    pub license_id: LicenseId,
    /// Its customer.
    pub cnpj: Cnpj,
    /// "Produto".
    pub product: Product,
    /// The contract that renews it, if any.
    pub contract_id: Option<ContractId>,
    /// "Expira".
    pub expires_on: NaiveDate,
    /// "Recursos".
    pub resources: Resources,
    /// "Bloqueado".
    pub blocked: bool,
    /// "Licença": not deactivated.
    pub active: bool,
    /// The terminal it is bound to; none when free.
    pub binding: Option<Binding>,
    /// "IP": the terminal's latest, from the bind or the latest recorded check-in this
    /// license answered that carried one (a changed IP is always recorded).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub last_ip: Option<IpAddr>,
    /// The latest recorded check-in this license answered.
    pub last_check_in: Option<LastCheckIn>,
    /// "Última Comunicação": the bound terminal's last check-in. The read model knows the
    /// recorded ones only (`last_check_in`); the server fills in the later ones it answered
    /// (an unchanged check-in is recorded once a day).
    pub last_seen_at: Option<DateTime<Utc>>,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// Version of the stream `license-{id}`: the expected version for the next append to it.
    pub version: StreamVersion,
    /// Position of the latest event that changed this row (its own stream's events and the
    /// check-ins it answered).
    pub updated_position: Position,
}

impl LicenseRow {
    /// The "IP" column: the bound terminal's latest address (`last_ip`, set by the bind and
    /// by every recorded check-in that carried one; a changed IP is always recorded), or the
    /// bind's; none while the license is free, as in the manual's table.
    pub fn ip(&self) -> Option<IpAddr> {
        let binding = self.binding.as_ref()?;
        self.last_ip.or(binding.ip)
    }
}

/// One terminal of one customer (stream `terminal-{cnpj}-{hardware id}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TerminalRow {
    /// The customer.
    pub cnpj: Cnpj,
    /// The terminal.
    pub hardware_id: HardwareId,
    /// Version of the terminal's stream.
    pub version: StreamVersion,
    /// The latest recorded check-in per product.
    pub last: BTreeMap<Product, LastCheckIn>,
}

/// One contingency entry (tab "Contingências"): opened by `ContingencyEntered`, closed by the
/// next `ContingencyCleared` of the same customer, kind and terminal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContingencyRow {
    /// The customer.
    pub cnpj: Cnpj,
    /// Type 01 or 02.
    pub kind: ContingencyKind,
    /// The terminal, for type 02.
    pub hardware_id: Option<HardwareId>,
    /// The license released, for type 02.
    pub license_id: Option<LicenseId>,
    /// Last day of grace, when one date applies to the whole entry.
    pub grace_until: Option<NaiveDate>,
    /// When it was entered.
    pub entered_at: DateTime<Utc>,
    /// Position of the `ContingencyEntered` event.
    pub entered_position: Position,
    /// Why it was entered.
    pub note: Option<Note>,
    /// When it was cleared; none while open.
    pub cleared_at: Option<DateTime<Utc>>,
    /// Why it was cleared.
    pub cleared_note: Option<Note>,
}

impl ContingencyRow {
    /// Whether the entry is still open.
    pub fn is_open(&self) -> bool {
        self.cleared_at.is_none()
    }
}
