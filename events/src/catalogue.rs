//! The event catalogue: one enum per aggregate, one struct per event type.
//!
//! Every event type has a stable name (`LicenseGranted`) and a schema version. The binary
//! payload is the postcard encoding of the struct for that version; postcard is not
//! self-describing, so a struct's fields are frozen once its version has been written: to
//! change one, keep the old struct in [`crate::upcast`], bump the version here, add an upcaster
//! and a golden file (see `events/tests/golden/README.md`). Variants of enums inside payloads
//! are only ever appended.

use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::CodecError;
use crate::envelope::StreamId;
use crate::values::{
    ActivationCode, Cnpj, CodeMac, ContractId, CounterKey, HardwareId, HardwareKey, LicenseId,
    Note, Partner, Product, ProgramVersion, Resources, Serial, TerminalNumber, TimeZoneName,
    TradeName,
};

/// Implemented by every event struct: its catalogue name and current schema version.
pub trait EventPayload: Serialize + for<'de> Deserialize<'de> + Into<Event> {
    /// Catalogue name, stored in the envelope.
    const TYPE: &'static str;
    /// Current schema version.
    const VERSION: u16;
}

// ---------------------------------------------------------------------------------------------
// Customer
// ---------------------------------------------------------------------------------------------

/// A customer (tenant, one per CNPJ) was registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// The customer's CNPJ.
    pub cnpj: Cnpj,
    /// "Fantasia".
    pub trade_name: TradeName,
    /// "Início": when the customer relationship starts.
    #[serde(with = "crate::values::day")]
    pub since: NaiveDate,
}

/// A customer's profile was set: its partner ("Parceiro") and the time zone its days are
/// counted in (none: the deployment's). Each event states the whole profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerProfileChanged {
    /// The customer.
    pub cnpj: Cnpj,
    /// "Parceiro".
    pub partner: Option<Partner>,
    /// The IANA zone of the customer's shops, when not the deployment's.
    pub time_zone: Option<TimeZoneName>,
}

/// A customer was activated ("Ativo" checked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerActivated {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A customer was deactivated: its terminals are told `Usuário inválido.`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerDeactivated {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A customer was blocked ("Bloqueado").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerBlocked {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A customer's block was lifted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUnblocked {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A customer was put on the blacklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerBlacklisted {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A customer was taken off the blacklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUnblacklisted {
    /// The customer.
    pub cnpj: Cnpj,
    /// Operator's reason.
    pub note: Option<Note>,
}

// ---------------------------------------------------------------------------------------------
// Contract
// ---------------------------------------------------------------------------------------------

/// A contract was signed: it renews the customer's licenses by `interval_days` once they are
/// within `renew_before_days` of expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractSigned {
    /// The contract.
    pub contract_id: ContractId,
    /// Its customer.
    pub cnpj: Cnpj,
    /// "Inicia em".
    #[serde(with = "crate::values::day")]
    pub starts_on: NaiveDate,
    /// "Expira em"; none for an open-ended contract.
    #[serde(with = "crate::values::day::option")]
    pub ends_on: Option<NaiveDate>,
    /// "Intervalo em dias" (e.g. 30).
    pub interval_days: u16,
    /// "Renovar antes de" (e.g. 3).
    pub renew_before_days: u16,
}

/// A contract was deactivated: renewals stop, licenses run out at their current expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractDeactivated {
    /// The contract.
    pub contract_id: ContractId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A contract was reactivated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractReactivated {
    /// The contract.
    pub contract_id: ContractId,
    /// Operator's reason.
    pub note: Option<Note>,
}

// ---------------------------------------------------------------------------------------------
// License
// ---------------------------------------------------------------------------------------------

/// A license was granted to a customer for a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseGranted {
    /// The new license.
    pub license_id: LicenseId,
    /// Its customer.
    pub cnpj: Cnpj,
    /// The product it licenses.
    pub product: Product,
    /// The contract that renews it, if any.
    pub contract_id: Option<ContractId>,
    /// "Expira".
    #[serde(with = "crate::values::day")]
    pub expires_on: NaiveDate,
    /// "Recursos" sent with every successful check-in.
    pub resources: Resources,
}

/// Why a license's expiry moved.
///
/// JSON: `{"by": "contract", "contract_id": "000731"}` or `{"by": "manual"}`. Binary: the
/// variant's index, then its fields (see the `tagged` module at the end of this file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewalCause {
    /// The contract's interval, within its renew-before window.
    Contract {
        /// The renewing contract.
        contract_id: ContractId,
    },
    /// An operator's explicit renewal.
    Manual,
}

/// A license's expiry was extended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseRenewed {
    /// The license.
    pub license_id: LicenseId,
    /// Expiry before the renewal.
    #[serde(with = "crate::values::day")]
    pub previous_expiry: NaiveDate,
    /// Expiry after the renewal.
    #[serde(with = "crate::values::day")]
    pub expires_on: NaiveDate,
    /// Contract or operator.
    pub cause: RenewalCause,
}

/// A free license was bound to a terminal at its first check-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseBound {
    /// The license.
    pub license_id: LicenseId,
    /// The terminal's hardware id.
    pub hardware_id: HardwareId,
    /// The key the terminal presents ("Hardware Key" column).
    pub hardware_key: HardwareKey,
    /// The terminal's address at binding time.
    pub ip: Option<IpAddr>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
}

/// "Desassociar": a license was freed from its terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseUnlinked {
    /// The license.
    pub license_id: LicenseId,
    /// The terminal it was bound to.
    pub hardware_id: HardwareId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A license was blocked ("Bloqueado").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseBlocked {
    /// The license.
    pub license_id: LicenseId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A license's block was lifted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseUnblocked {
    /// The license.
    pub license_id: LicenseId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A license was deactivated ("Licença" unchecked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseDeactivated {
    /// The license.
    pub license_id: LicenseId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A license was reactivated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseReactivated {
    /// The license.
    pub license_id: LicenseId,
    /// Operator's reason.
    pub note: Option<Note>,
}

/// A license's resources were replaced by a new set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseResourcesChanged {
    /// The license.
    pub license_id: LicenseId,
    /// The complete new set.
    pub resources: Resources,
}

// ---------------------------------------------------------------------------------------------
// Terminal check-in
// ---------------------------------------------------------------------------------------------

/// The two contingency modes of the manual.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContingencyKind {
    /// Type 01, "contingência do IntelliWeb": the customer's server cannot reach the platform.
    Intelliweb,
    /// Type 02, "contingência manual": the terminal was released by a counter-key.
    Manual,
}

impl ContingencyKind {
    /// The manual's type number (`01`, `02`).
    pub fn code(self) -> &'static str {
        match self {
            ContingencyKind::Intelliweb => "01",
            ContingencyKind::Manual => "02",
        }
    }
}

/// Why a check-in was refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Customer inactive (401 `Usuário inválido.`).
    CustomerInactive,
    /// Customer blocked or blacklisted.
    CustomerBlocked,
    /// No license of the product for this terminal and none free to bind.
    NoLicenseAvailable,
    /// The license is blocked.
    LicenseBlocked,
    /// The license is deactivated.
    LicenseDeactivated,
    /// The license is past its expiry.
    LicenseExpired,
    /// Contingency past its grace period (expiry + 7 days).
    GraceExpired,
}

/// What a terminal was told.
///
/// JSON: `{"result": "expiring_soon", "expires_on": "2023-05-31", "days_left": 3}`. Binary:
/// the variant's index, then its fields (see the `tagged` module at the end of this file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckInOutcome {
    /// Valid: `Licença do sistema expira no dia: DD/MM/YYYY`.
    Valid {
        /// The license's expiry.
        expires_on: NaiveDate,
    },
    /// Valid with the warning `Faltam [NN] dias para expirar a licença!`.
    ExpiringSoon {
        /// The license's expiry.
        expires_on: NaiveDate,
        /// Days left (3 or fewer).
        days_left: u16,
    },
    /// Selling under contingency, until `expires_on`.
    Contingency {
        /// Which contingency.
        kind: ContingencyKind,
        /// The contingency's own expiry.
        expires_on: NaiveDate,
    },
    /// Sales blocked.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
}

/// A terminal checked in. Recorded when something changed or the last recorded check-in is
/// older than the check-in interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalCheckedIn {
    /// The customer.
    pub cnpj: Cnpj,
    /// The product checking in.
    pub product: Product,
    /// The terminal.
    pub hardware_id: HardwareId,
    /// The key the terminal presented.
    pub hardware_key: HardwareKey,
    /// The license that answered, if any.
    pub license_id: Option<LicenseId>,
    /// The terminal's address.
    pub ip: Option<IpAddr>,
    /// The program version it reported.
    pub program_version: Option<ProgramVersion>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
    /// What it was told.
    pub outcome: CheckInOutcome,
}

// ---------------------------------------------------------------------------------------------
// Contingency
// ---------------------------------------------------------------------------------------------

/// A customer (type 01) or one of its terminals (type 02) entered contingency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContingencyEntered {
    /// The customer.
    pub cnpj: Cnpj,
    /// Type 01 or 02.
    pub kind: ContingencyKind,
    /// The terminal, for type 02.
    pub hardware_id: Option<HardwareId>,
    /// The license released, for type 02.
    pub license_id: Option<LicenseId>,
    /// Last day of grace, when one date applies to the whole entry (type 02: the
    /// counter-key's validity). Type 01's grace is per license: its expiry plus 7 days.
    #[serde(with = "crate::values::day::option")]
    pub grace_until: Option<NaiveDate>,
    /// Why (e.g. the upstream error).
    pub note: Option<Note>,
}

/// A contingency ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContingencyCleared {
    /// The customer.
    pub cnpj: Cnpj,
    /// Type 01 or 02.
    pub kind: ContingencyKind,
    /// The terminal, for type 02.
    pub hardware_id: Option<HardwareId>,
    /// Why.
    pub note: Option<Note>,
}

// ---------------------------------------------------------------------------------------------
// Offline activation and emergency release
// ---------------------------------------------------------------------------------------------

/// "Ativar Offline": support issued a counter-key for a terminal's serial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineActivationIssued {
    /// The 16-hex serial the terminal showed.
    pub serial: Serial,
    /// The customer, when known.
    pub cnpj: Option<Cnpj>,
    /// "Problema": the product.
    pub product: Product,
    /// The license being released, when known.
    pub license_id: Option<LicenseId>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
    /// The terminal whose own key made the counter-key (offline algorithm version 2: the
    /// center had seen it online under `cnpj`); `None`: the product's key (version 1).
    pub terminal: Option<HardwareId>,
    /// The counter-key itself: only in records written before schema version 2 (upcast).
    /// Newer records keep `code_mac` instead, so a reader of the log cannot use the code.
    pub counter_key: Option<CounterKey>,
    /// MAC of the counter-key under the center's audit key
    /// ([`crate::offline::code_mac`]): shows that a code was issued, never the code.
    pub code_mac: Option<CodeMac>,
    /// Until when the terminal may sell on it (one day).
    #[serde(with = "crate::values::micros")]
    pub valid_until: DateTime<Utc>,
}

/// "Liberação emergencial" (restricted): an activation code and counter-key for a
/// development or QA machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyReleaseIssued {
    /// The product.
    pub product: Product,
    /// The machine's hardware id.
    pub hardware_id: HardwareId,
    /// The product key entered.
    pub hardware_key: HardwareKey,
    /// "Código de ativação": only in records written before schema version 2 (upcast).
    pub activation_code: Option<ActivationCode>,
    /// "Contra-Chave": only in records written before schema version 2 (upcast).
    pub counter_key: Option<CounterKey>,
    /// MAC of both codes under the center's audit key: newer records keep this instead of
    /// the codes, so a reader of the log sees that a release was issued, never its codes.
    pub code_mac: Option<CodeMac>,
    /// "Licenciado para" (e.g. QUALIDADE).
    pub licensed_to: TradeName,
}

// ---------------------------------------------------------------------------------------------
// The catalogue table
// ---------------------------------------------------------------------------------------------

macro_rules! catalogue {
    ($(
        $(#[$adoc:meta])*
        $agg:ident($agg_enum:ident) {
            $( $variant:ident($ty:ident) = $version:literal ),+ $(,)?
        }
    )+) => {
        $(
            $(#[$adoc])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub enum $agg_enum {
                $(
                    #[doc = concat!("See [`", stringify!($ty), "`].")]
                    $variant($ty),
                )+
            }

            $(
                impl EventPayload for $ty {
                    const TYPE: &'static str = stringify!($ty);
                    const VERSION: u16 = $version;
                }
                impl From<$ty> for Event {
                    fn from(e: $ty) -> Event {
                        Event::$agg($agg_enum::$variant(e))
                    }
                }
            )+
        )+

        /// Any event of the ledger.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Event {
            $(
                #[doc = concat!("See [`", stringify!($agg_enum), "`].")]
                $agg($agg_enum),
            )+
        }

        /// Every event type with its current schema version, in catalogue order.
        pub const EVENT_TYPES: &[(&str, u16)] = &[
            $( $( (stringify!($ty), $version), )+ )+
        ];

        impl Event {
            /// Catalogue name of this event's type.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $( $( Event::$agg($agg_enum::$variant(_)) => <$ty as EventPayload>::TYPE, )+ )+
                }
            }

            /// Current schema version of this event's type (the version it encodes at).
            pub fn schema_version(&self) -> u16 {
                match self {
                    $( $( Event::$agg($agg_enum::$variant(_)) => <$ty as EventPayload>::VERSION, )+ )+
                }
            }

            /// The postcard payload at the current schema version.
            pub fn encode_payload(&self) -> Result<Vec<u8>, CodecError> {
                let bytes = match self {
                    $( $( Event::$agg($agg_enum::$variant(e)) => postcard::to_stdvec(e), )+ )+
                };
                bytes.map_err(|e| CodecError::Payload {
                    event_type: self.event_type().to_owned(),
                    problem: e.to_string(),
                })
            }

            /// Decodes a payload written at the current schema version of `event_type`.
            /// `None` when `event_type` is unknown or `version` is not the current one.
            pub(crate) fn decode_current(
                event_type: &str,
                version: u16,
                bytes: &[u8],
            ) -> Option<Result<Event, CodecError>> {
                match (event_type, version) {
                    $( $( (stringify!($ty), $version) => Some(decode_exact::<$ty>(event_type, bytes).map(Event::from)), )+ )+
                    _ => None,
                }
            }

            /// Serializes the event's fields (what [`Event::data_json`] holds) with `s`,
            /// without building a JSON value: the export's writer.
            pub fn serialize_data<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( $( Event::$agg($agg_enum::$variant(e)) => serde::Serialize::serialize(e, s), )+ )+
                }
            }

            /// The event's fields as JSON (without type or version).
            pub fn data_json(&self) -> serde_json::Value {
                let v = match self {
                    $( $( Event::$agg($agg_enum::$variant(e)) => serde_json::to_value(e), )+ )+
                };
                // Serializing these plain structs to a JSON value cannot fail: no maps with
                // non-string keys and no custom errors on the way out.
                v.unwrap_or(serde_json::Value::Null)
            }

            /// Builds an event of type `event_type` (current version) from its JSON fields.
            pub fn from_data_json(event_type: &str, data: serde_json::Value) -> Result<Event, CodecError> {
                let bad = |e: serde_json::Error| CodecError::Payload {
                    event_type: event_type.to_owned(),
                    problem: e.to_string(),
                };
                match event_type {
                    $( $( stringify!($ty) => serde_json::from_value::<$ty>(data).map(Event::from).map_err(bad), )+ )+
                    other => Err(CodecError::UnknownEventType(other.to_owned())),
                }
            }
        }
    };
}

/// Decodes a postcard payload, refusing trailing bytes.
pub(crate) fn decode_exact<T: for<'de> Deserialize<'de>>(
    event_type: &str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(CodecError::Payload {
            event_type: event_type.to_owned(),
            problem: format!("{} trailing bytes after the payload", rest.len()),
        }),
        Err(e) => Err(CodecError::Payload {
            event_type: event_type.to_owned(),
            problem: e.to_string(),
        }),
    }
}

catalogue! {
    /// Events of a customer stream (`customer-{cnpj}`).
    Customer(CustomerEvent) {
        Registered(CustomerRegistered) = 1,
        Activated(CustomerActivated) = 1,
        Deactivated(CustomerDeactivated) = 1,
        Blocked(CustomerBlocked) = 1,
        Unblocked(CustomerUnblocked) = 1,
        Blacklisted(CustomerBlacklisted) = 1,
        Unblacklisted(CustomerUnblacklisted) = 1,
        ProfileChanged(CustomerProfileChanged) = 1,
    }
    /// Events of a contract stream (`contract-{id}`).
    Contract(ContractEvent) {
        Signed(ContractSigned) = 1,
        Deactivated(ContractDeactivated) = 1,
        Reactivated(ContractReactivated) = 1,
    }
    /// Events of a license stream (`license-{id}`).
    License(LicenseEvent) {
        Granted(LicenseGranted) = 1,
        Renewed(LicenseRenewed) = 1,
        Bound(LicenseBound) = 1,
        Unlinked(LicenseUnlinked) = 1,
        Blocked(LicenseBlocked) = 1,
        Unblocked(LicenseUnblocked) = 1,
        Deactivated(LicenseDeactivated) = 1,
        Reactivated(LicenseReactivated) = 1,
        ResourcesChanged(LicenseResourcesChanged) = 1,
    }
    /// Events of a terminal stream (`terminal-{cnpj}-{hardware id}`).
    Terminal(TerminalEvent) {
        CheckedIn(TerminalCheckedIn) = 1,
    }
    /// Events of a customer's contingency stream (`contingency-{cnpj}`).
    Contingency(ContingencyEvent) {
        Entered(ContingencyEntered) = 1,
        Cleared(ContingencyCleared) = 1,
    }
    /// Events of an offline-activation stream (`offline-{serial}`).
    OfflineActivation(OfflineActivationEvent) {
        Issued(OfflineActivationIssued) = 2,
    }
    /// Events of an emergency-release stream (`emergency-{hardware id}`).
    EmergencyRelease(EmergencyReleaseEvent) {
        Issued(EmergencyReleaseIssued) = 2,
    }
}

impl CustomerEvent {
    /// The customer.
    pub fn cnpj(&self) -> &Cnpj {
        match self {
            CustomerEvent::Registered(x) => &x.cnpj,
            CustomerEvent::Activated(x) => &x.cnpj,
            CustomerEvent::Deactivated(x) => &x.cnpj,
            CustomerEvent::Blocked(x) => &x.cnpj,
            CustomerEvent::Unblocked(x) => &x.cnpj,
            CustomerEvent::Blacklisted(x) => &x.cnpj,
            CustomerEvent::Unblacklisted(x) => &x.cnpj,
            CustomerEvent::ProfileChanged(x) => &x.cnpj,
        }
    }
}

impl ContractEvent {
    /// The contract.
    pub fn contract_id(&self) -> ContractId {
        match self {
            ContractEvent::Signed(x) => x.contract_id,
            ContractEvent::Deactivated(x) => x.contract_id,
            ContractEvent::Reactivated(x) => x.contract_id,
        }
    }
}

impl LicenseEvent {
    /// The license.
    pub fn license_id(&self) -> LicenseId {
        match self {
            LicenseEvent::Granted(x) => x.license_id,
            LicenseEvent::Renewed(x) => x.license_id,
            LicenseEvent::Bound(x) => x.license_id,
            LicenseEvent::Unlinked(x) => x.license_id,
            LicenseEvent::Blocked(x) => x.license_id,
            LicenseEvent::Unblocked(x) => x.license_id,
            LicenseEvent::Deactivated(x) => x.license_id,
            LicenseEvent::Reactivated(x) => x.license_id,
            LicenseEvent::ResourcesChanged(x) => x.license_id,
        }
    }
}

impl ContingencyEvent {
    /// The customer.
    pub fn cnpj(&self) -> &Cnpj {
        match self {
            ContingencyEvent::Entered(x) => &x.cnpj,
            ContingencyEvent::Cleared(x) => &x.cnpj,
        }
    }

    /// The kind of contingency entered or cleared.
    pub fn kind(&self) -> ContingencyKind {
        match self {
            ContingencyEvent::Entered(x) => x.kind,
            ContingencyEvent::Cleared(x) => x.kind,
        }
    }
}

impl Event {
    /// The stream this event belongs to, derived from the ids it carries.
    pub fn stream_id(&self) -> StreamId {
        match self {
            Event::Customer(e) => StreamId::customer(e.cnpj()),
            Event::Contract(e) => StreamId::contract(e.contract_id()),
            Event::License(e) => StreamId::license(e.license_id()),
            Event::Terminal(TerminalEvent::CheckedIn(x)) => {
                StreamId::terminal(&x.cnpj, &x.hardware_id)
            }
            Event::Contingency(e) => StreamId::contingency(e.cnpj()),
            Event::OfflineActivation(OfflineActivationEvent::Issued(x)) => {
                StreamId::offline_activation(&x.serial)
            }
            Event::EmergencyRelease(EmergencyReleaseEvent::Issued(x)) => {
                StreamId::emergency_release(&x.hardware_id)
            }
        }
    }

    /// Decodes a stored payload of any known (type, version), upcasting old versions.
    pub fn decode_payload(
        event_type: &str,
        schema_version: u16,
        bytes: &[u8],
    ) -> Result<Event, CodecError> {
        if let Some(result) = Event::decode_current(event_type, schema_version, bytes) {
            return result;
        }
        crate::upcast::decode_legacy(event_type, schema_version, bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Payload enums with a named tag
// ---------------------------------------------------------------------------------------------

/// Serde for [`RenewalCause`] and [`CheckInOutcome`].
///
/// Their JSON form is internally tagged (`{"result": "valid", "expires_on": ..}`), which serde
/// decodes through `deserialize_any`, which postcard does not implement. So each has two
/// private mirrors: an internally tagged one for JSON and an externally tagged one (variant
/// index, then fields) for the binary form. Binary variants are only ever appended.
mod tagged {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{CheckInOutcome, ContingencyKind, RefusalReason, RenewalCause};
    use crate::values::ContractId;

    macro_rules! mirrored {
        ($public:ident, $json:ident, $bin:ident, $tag:tt,
         { $( $variant:ident { $( $(#[$fattr:meta])* $field:ident : $ty:ty ),* } ),+ $(,)? }) => {
            #[derive(Serialize, Deserialize)]
            #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
            #[serde(rename_all = "snake_case", tag = $tag)]
            enum $json {
                $( $variant { $( $(#[$fattr])* $field: $ty ),* }, )+
            }

            #[derive(Serialize, Deserialize)]
            enum $bin {
                $( $variant { $( $(#[$fattr])* $field: $ty ),* }, )+
            }

            impl Serialize for $public {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    let value = *self;
                    if s.is_human_readable() {
                        match value { $( $public::$variant { $($field),* } => $json::$variant { $($field),* }, )+ }.serialize(s)
                    } else {
                        match value { $( $public::$variant { $($field),* } => $bin::$variant { $($field),* }, )+ }.serialize(s)
                    }
                }
            }

            #[cfg(feature = "openapi")]
            impl utoipa::PartialSchema for $public {
                fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                    <$json as utoipa::PartialSchema>::schema()
                }
            }
            #[cfg(feature = "openapi")]
            impl utoipa::ToSchema for $public {
                fn name() -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Borrowed(stringify!($public))
                }
                fn schemas(
                    schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
                ) {
                    <$json as utoipa::ToSchema>::schemas(schemas)
                }
            }

            impl<'de> Deserialize<'de> for $public {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        Ok(match $json::deserialize(d)? { $( $json::$variant { $($field),* } => $public::$variant { $($field),* }, )+ })
                    } else {
                        Ok(match $bin::deserialize(d)? { $( $bin::$variant { $($field),* } => $public::$variant { $($field),* }, )+ })
                    }
                }
            }
        };
    }

    mirrored!(RenewalCause, RenewalCauseJson, RenewalCauseBin, "by", {
        Contract { contract_id: ContractId },
        Manual {},
    });

    mirrored!(CheckInOutcome, CheckInOutcomeJson, CheckInOutcomeBin, "result", {
        Valid { #[serde(with = "crate::values::day")] expires_on: NaiveDate },
        ExpiringSoon { #[serde(with = "crate::values::day")] expires_on: NaiveDate, days_left: u16 },
        Contingency { kind: ContingencyKind, #[serde(with = "crate::values::day")] expires_on: NaiveDate },
        Refused { reason: RefusalReason },
    });
}
