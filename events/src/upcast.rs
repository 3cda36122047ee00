//! Decoding payloads written at older schema versions.
//!
//! When a type's fields change:
//! 1. copy its current struct here as `mod vN { pub struct TypeName {..} }`, frozen;
//! 2. change the struct in [`crate::catalogue`] and bump its version in the `catalogue!` table;
//! 3. add an arm `("TypeName", N) => decode_exact::<vN::TypeName>(..).map(upcast_fn)` below,
//!    where `upcast_fn` builds the current struct from the old one (a pure function);
//! 4. add the current version's golden file; the old one stays and must keep decoding.
//!
//! Upcasters today:
//! - `OfflineActivationIssued` v1 → v2: v1 kept the counter-key itself (issued under the
//!   product's key); v2 names the terminal whose key made it and keeps only a MAC of the code.
//!   A v1 record becomes `terminal: None, counter_key: Some(its key), code_mac: None`.
//! - `EmergencyReleaseIssued` v1 → v2: v1 kept the activation code and counter-key; v2 keeps
//!   only a MAC of them. A v1 record becomes `Some(code), Some(key), code_mac: None`.

use crate::catalogue::{
    decode_exact, EmergencyReleaseIssued, OfflineActivationIssued, EVENT_TYPES,
};
use crate::codec::CodecError;
use crate::Event;

/// Frozen schema version 1 structs.
mod v1 {
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    use crate::values::{
        ActivationCode, Cnpj, CounterKey, HardwareId, HardwareKey, LicenseId, Product, Serial,
        TerminalNumber, TradeName,
    };

    /// `EmergencyReleaseIssued` as written at schema version 1.
    #[derive(Deserialize)]
    pub struct EmergencyReleaseIssued {
        pub product: Product,
        pub hardware_id: HardwareId,
        pub hardware_key: HardwareKey,
        pub activation_code: ActivationCode,
        pub counter_key: CounterKey,
        pub licensed_to: TradeName,
    }

    /// `OfflineActivationIssued` as written at schema version 1.
    #[derive(Deserialize)]
    pub struct OfflineActivationIssued {
        pub serial: Serial,
        pub cnpj: Option<Cnpj>,
        pub product: Product,
        pub license_id: Option<LicenseId>,
        pub caixa: Option<TerminalNumber>,
        pub equipamento: Option<TerminalNumber>,
        pub counter_key: CounterKey,
        #[serde(with = "crate::values::micros")]
        pub valid_until: DateTime<Utc>,
    }
}

/// `OfflineActivationIssued` v1 → current: the plain counter-key a v1 record kept, issued
/// under the product's key.
fn offline_activation_issued_v1(old: v1::OfflineActivationIssued) -> OfflineActivationIssued {
    OfflineActivationIssued {
        serial: old.serial,
        cnpj: old.cnpj,
        product: old.product,
        license_id: old.license_id,
        caixa: old.caixa,
        equipamento: old.equipamento,
        terminal: None,
        counter_key: Some(old.counter_key),
        code_mac: None,
        valid_until: old.valid_until,
    }
}

/// `EmergencyReleaseIssued` v1 → current: the plain codes a v1 record kept.
fn emergency_release_issued_v1(old: v1::EmergencyReleaseIssued) -> EmergencyReleaseIssued {
    EmergencyReleaseIssued {
        product: old.product,
        hardware_id: old.hardware_id,
        hardware_key: old.hardware_key,
        activation_code: Some(old.activation_code),
        counter_key: Some(old.counter_key),
        code_mac: None,
        licensed_to: old.licensed_to,
    }
}

/// Decodes a payload whose version is not the current one of its type.
pub(crate) fn decode_legacy(
    event_type: &str,
    schema_version: u16,
    bytes: &[u8],
) -> Result<Event, CodecError> {
    match (event_type, schema_version) {
        ("OfflineActivationIssued", 1) => {
            decode_exact::<v1::OfflineActivationIssued>(event_type, bytes)
                .map(offline_activation_issued_v1)
                .map(Event::from)
        }
        ("EmergencyReleaseIssued", 1) => {
            decode_exact::<v1::EmergencyReleaseIssued>(event_type, bytes)
                .map(emergency_release_issued_v1)
                .map(Event::from)
        }
        _ => match EVENT_TYPES.iter().find(|(name, _)| *name == event_type) {
            Some(&(_, current)) => Err(CodecError::UnsupportedSchemaVersion {
                event_type: event_type.to_owned(),
                found: schema_version,
                current,
            }),
            None => Err(CodecError::UnknownEventType(event_type.to_owned())),
        },
    }
}
