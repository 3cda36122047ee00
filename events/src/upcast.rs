//! Decoding payloads written at older schema versions.
//!
//! Every event type is at schema version 1 today, so no upcaster exists yet and this module
//! only tells old from unknown. When a type's fields change:
//! 1. copy its current struct here as `mod vN { pub struct TypeName {..} }`, frozen;
//! 2. change the struct in [`crate::catalogue`] and bump its version in the `catalogue!` table;
//! 3. add an arm `("TypeName", N) => decode_exact::<vN::TypeName>(..).map(upcast_fn)` below,
//!    where `upcast_fn` builds the current struct from the old one (a pure function);
//! 4. add the current version's golden file; the old one stays and must keep decoding.

use crate::catalogue::EVENT_TYPES;
use crate::codec::CodecError;
use crate::Event;

/// Decodes a payload whose version is not the current one of its type.
pub(crate) fn decode_legacy(
    event_type: &str,
    schema_version: u16,
    _bytes: &[u8],
) -> Result<Event, CodecError> {
    match EVENT_TYPES.iter().find(|(name, _)| *name == event_type) {
        Some(&(_, current)) => Err(CodecError::UnsupportedSchemaVersion {
            event_type: event_type.to_owned(),
            found: schema_version,
            current,
        }),
        None => Err(CodecError::UnknownEventType(event_type.to_owned())),
    }
}
