//! # ledger-events
//!
//! The vocabulary of license-ledger, and nothing else: the event catalogue, validated value
//! types, the envelope every record carries, the binary record format and the hash chain;
//! and what the server shares with terminals: the exact pt-BR texts ([`texts`]), signed
//! check-in answers ([`answer`]) and offline counter-keys ([`offline`]), so that a terminal
//! vendor can embed this crate to check them.
//!
//! This crate is pure: no I/O, no clock, no async runtime. An auditor's tool can depend on it
//! alone to decode and verify a log. Invariants it guarantees:
//! - a value type you hold is valid (every constructor and decoder goes through `parse`);
//! - `Record::decode(bytes)` succeeds only if the record's hash matches its bytes;
//! - every `(event type, schema version)` ever written keeps decoding (golden files in
//!   `events/tests/golden/` enforce it);
//! - `Record::from_json(&record.to_json()?)` gives back the same bytes.

pub mod answer;
pub mod catalogue;
pub mod chain;
pub mod codec;
pub mod envelope;
pub mod json;
pub mod offline;
#[cfg(feature = "openapi")]
mod openapi;
pub mod texts;
mod upcast;
pub mod values;

pub use answer::{AnswerError, CheckInAnswer, OutcomeCode, SignedAnswer, Subject};
pub use catalogue::*;
pub use chain::{verify_chain, ChainError, ChainFault, ChainHead, ChainVerifier};
pub use codec::{
    encode_header_into, encode_record_into, CodecError, Record, RecordHeader, RecordJson,
    RecordView, MAX_PAYLOAD_BYTES, MAX_RECORD_BYTES, MIN_RECORD_BYTES,
};
pub use envelope::{
    truncate_to_micros, Actor, ActorKind, Envelope, Hash, Position, StreamId, StreamVersion,
};
pub use offline::OfflineError;
pub use values::*;
