//! The envelope every stored record carries: where it sits in the log, who wrote it, and the
//! hashes that chain it to its predecessor.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::values::{Cnpj, ContractId, HardwareId, LicenseId, Serial, ValueError};

/// Global position in the log. The first record is position 1; an empty log's head is 0.
pub type Position = u64;

/// Version of a stream: the number of events in it. The first event of a stream has version 1.
pub type StreamVersion = u64;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The genesis `prev_hash`: 32 zero bytes.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let mut b = [0u8; 32];
        let s = s.trim().as_bytes();
        if s.len() != 64 || decode_hex(s, &mut b).is_err() {
            return Err(ValueError {
                what: "hash",
                problem: "expected 64 hex digits".into(),
            });
        }
        Ok(Hash(b))
    }
}

/// Decodes `2 * out.len()` hex digits (either case) into `out`; `Err` on any other byte or
/// length. A byte at a time through a table: the `hex` crate's iterator is a visible part of
/// an import's profile.
pub(crate) fn decode_hex(digits: &[u8], out: &mut [u8]) -> Result<(), ()> {
    const BAD: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    if digits.len() != 2 * out.len() {
        return Err(());
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        if hi == BAD || lo == BAD {
            return Err(());
        }
        *byte = hi << 4 | lo;
    }
    Ok(())
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On the stack: exports write two hashes per record.
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}
impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}
impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}
impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Hash::parse(&s).map_err(de::Error::custom)
        } else {
            Ok(Hash(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// Identifies one aggregate's stream: `category-rest`, e.g. `license-002438`.
///
/// At most [`StreamId::MAX_LEN`] bytes of `[A-Za-z0-9_.:-]`, starting with a lowercase
/// category. The constructors below are the only ids the ledger writes; `parse` accepts any
/// well-formed id so that the store stays generic.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// Longest stream id, in bytes (it is length-prefixed by one byte in the record header).
    pub const MAX_LEN: usize = 128;

    /// Parses a stream id.
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let err = |p: &str| ValueError {
            what: "stream id",
            problem: p.into(),
        };
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(err("must be 1 to 128 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err(err("may contain only letters, digits and _ . : -"));
        }
        match s.split_once('-') {
            Some((cat, rest))
                if !cat.is_empty()
                    && !rest.is_empty()
                    && cat.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(err("expected category-id, e.g. license-002438")),
        }
    }

    /// `customer-{cnpj}`.
    pub fn customer(cnpj: &Cnpj) -> Self {
        Self(format!("customer-{cnpj}"))
    }
    /// `contract-{id}`.
    pub fn contract(id: ContractId) -> Self {
        Self(format!("contract-{id}"))
    }
    /// `license-{id}`.
    pub fn license(id: LicenseId) -> Self {
        Self(format!("license-{id}"))
    }
    /// `terminal-{cnpj}-{hardware id}`: one terminal of one customer.
    pub fn terminal(cnpj: &Cnpj, hardware_id: &HardwareId) -> Self {
        Self(format!("terminal-{cnpj}-{hardware_id}"))
    }
    /// `contingency-{cnpj}`.
    pub fn contingency(cnpj: &Cnpj) -> Self {
        Self(format!("contingency-{cnpj}"))
    }
    /// `offline-{serial}`: a serial can be used once, so it is its own stream.
    pub fn offline_activation(serial: &Serial) -> Self {
        Self(format!("offline-{serial}"))
    }
    /// `emergency-{hardware id}`.
    pub fn emergency_release(hardware_id: &HardwareId) -> Self {
        Self(format!("emergency-{hardware_id}"))
    }

    /// The part before the first `-`.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or("", |(c, _)| c)
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}
impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        StreamId::parse(&s).map_err(de::Error::custom)
    }
}

/// Who caused an event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A support operator or auditor acting through the API or CLI.
    Operator,
    /// A terminal checking in.
    Terminal,
    /// The server itself (renewals, contingency detection, imports).
    System,
}

impl ActorKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            ActorKind::Operator => 1,
            ActorKind::Terminal => 2,
            ActorKind::System => 3,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(ActorKind::Operator),
            2 => Some(ActorKind::Terminal),
            3 => Some(ActorKind::System),
            _ => None,
        }
    }
}

/// The actor of an event: a kind and a name (operator login, terminal hardware id, or the
/// system component).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// Operator, terminal or system.
    pub kind: ActorKind,
    /// Who exactly, 1 to [`Actor::MAX_NAME_LEN`] bytes.
    #[serde(deserialize_with = "deserialize_actor_name")]
    pub name: String,
}

fn deserialize_actor_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Actor::check_name(&s).map_err(de::Error::custom)?;
    Ok(s)
}

impl Actor {
    /// Longest actor name, in bytes.
    pub const MAX_NAME_LEN: usize = 128;

    /// The rule decoders apply to names; encoders apply it too, so that a record that
    /// encodes also decodes (the fields are public, so a name may not have been checked).
    pub(crate) fn check_name(name: &str) -> Result<(), ValueError> {
        if name.is_empty() || name.len() > Self::MAX_NAME_LEN || name.chars().any(char::is_control)
        {
            return Err(ValueError {
                what: "actor name",
                problem: "must be 1 to 128 bytes with no control characters".into(),
            });
        }
        Ok(())
    }

    fn new(kind: ActorKind, name: &str) -> Result<Self, ValueError> {
        Self::check_name(name)?;
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }

    /// An operator, by login.
    pub fn operator(name: &str) -> Result<Self, ValueError> {
        Self::new(ActorKind::Operator, name)
    }
    /// A terminal, by hardware id.
    pub fn terminal(hardware_id: &HardwareId) -> Self {
        Self {
            kind: ActorKind::Terminal,
            name: hardware_id.to_string(),
        }
    }
    /// A system component.
    pub fn system(name: &str) -> Result<Self, ValueError> {
        Self::new(ActorKind::System, name)
    }
    /// Validates a name for `kind` (used by decoders).
    pub fn with_kind(kind: ActorKind, name: &str) -> Result<Self, ValueError> {
        Self::new(kind, name)
    }
}

/// Everything stored about a record except its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Global position, dense from 1.
    pub position: Position,
    /// The aggregate stream this event belongs to.
    pub stream_id: StreamId,
    /// Version of the stream after this event (1 for the first).
    pub stream_version: StreamVersion,
    /// Unique id (UUID v7), chosen by the writer; retries reuse it.
    pub event_id: Uuid,
    /// Catalogue name of the payload type (`LicenseGranted`).
    pub event_type: String,
    /// Version of the payload's schema, for upcasting.
    pub schema_version: u16,
    /// When the store recorded it, UTC, microsecond precision.
    pub recorded_at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// Groups the events of one command or request.
    pub correlation_id: Uuid,
    /// Hash of the previous record ([`Hash::ZERO`] for position 1).
    pub prev_hash: Hash,
    /// SHA-256 of this record, see [`crate::codec`].
    pub hash: Hash,
}

/// Truncates a timestamp to microseconds, the precision the log (and PostgreSQL) keeps.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_micros(t.timestamp_micros())
        .single()
        .unwrap_or(t)
}
