//! The record format: the bytes that are stored, hashed and chained.
//!
//! A record is
//!
//! ```text
//! prev_hash       32 bytes   hash of the previous record (zeros for position 1)
//! header                     the envelope without its hashes, fixed layout, big-endian:
//!   format         u8        = 1
//!   position       u64
//!   stream_version u64
//!   recorded_at    i64       microseconds since 1970-01-01T00:00:00Z
//!   event_id       16 bytes  UUID
//!   correlation_id 16 bytes  UUID
//!   schema_version u16
//!   actor_kind     u8        1 operator, 2 terminal, 3 system
//!   stream_id      u8 length + UTF-8
//!   event_type     u8 length + UTF-8
//!   actor_name     u8 length + UTF-8
//!   payload_len    u32
//! payload                    postcard encoding of the event at `schema_version`
//! hash            32 bytes   SHA-256 of everything above
//! ```
//!
//! so `hash = SHA-256(prev_hash || canonical envelope bytes || payload)`, and an auditor can
//! check a record with nothing but SHA-256: hash the record minus its last 32 bytes and
//! compare with them. The layout is independent of any serialization library on purpose.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{Actor, ActorKind, Envelope, Hash, Position, StreamId, StreamVersion};
use crate::Event;

/// Record format version written in every header.
pub const RECORD_FORMAT: u8 = 1;
/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Fixed part of the header (everything but the three strings).
const HEADER_FIXED_BYTES: usize = 1 + 8 + 8 + 8 + 16 + 16 + 2 + 1 + 3 + 4;
/// Smallest possible record.
pub const MIN_RECORD_BYTES: usize = 32 + HEADER_FIXED_BYTES + 32;
/// Largest possible record: three strings of at most 255 bytes and the largest payload.
pub const MAX_RECORD_BYTES: usize = MIN_RECORD_BYTES + 3 * 255 + MAX_PAYLOAD_BYTES;

/// Why bytes are not a valid record or payload. Offsets are within the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The record ends before its structure says it should.
    #[error("record truncated at offset {offset}: needs {needed} more bytes")]
    Truncated {
        /// Where the missing part starts.
        offset: usize,
        /// How many bytes are missing.
        needed: usize,
    },
    /// The record has bytes after its hash.
    #[error("record has {extra} bytes after its hash")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A field has an impossible value.
    #[error("bad {field} at offset {offset}: {problem}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its offset within the record.
        offset: usize,
        /// What is wrong.
        problem: String,
    },
    /// The stored hash is not the SHA-256 of the record.
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch {
        /// The hash in the record.
        stored: Hash,
        /// The hash of its bytes.
        computed: Hash,
    },
    /// A value does not fit the format (too long, too large).
    #[error("cannot encode {field}: {problem}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The event type is not in this build's catalogue.
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    /// The type is known but not at this schema version.
    #[error("{event_type} has no schema version {found} (current is {current})")]
    UnsupportedSchemaVersion {
        /// The type.
        event_type: String,
        /// The stored version.
        found: u16,
        /// The current version.
        current: u16,
    },
    /// The payload does not decode as its type.
    #[error("payload of {event_type} does not decode: {problem}")]
    Payload {
        /// The type.
        event_type: String,
        /// The decoder's message.
        problem: String,
    },
}

/// A borrowed, structurally parsed record. Parsing checks lengths and the format byte only;
/// call [`RecordView::verify_hash`] to check integrity and [`RecordView::envelope`] to
/// validate the strings.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    bytes: &'a [u8],
    position: Position,
    stream_version: StreamVersion,
    recorded_at_micros: i64,
    schema_version: u16,
    actor_kind: u8,
    stream_id: (usize, usize),
    event_type: (usize, usize),
    actor_name: (usize, usize),
    payload: (usize, usize),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(CodecError::Truncated {
                offset: self.at,
                needed: self.at + n - self.bytes.len(),
            }),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn short_str(&mut self) -> Result<(usize, usize), CodecError> {
        let len = self.array::<1>()?[0] as usize;
        let start = self.at;
        self.take(len)?;
        Ok((start, len))
    }
}

impl<'a> RecordView<'a> {
    /// Parses the structure of one record occupying all of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader { bytes, at: 32 };
        if bytes.len() < 32 {
            return Err(CodecError::Truncated {
                offset: bytes.len(),
                needed: 32 - bytes.len(),
            });
        }
        let format = r.array::<1>()?[0];
        if format != RECORD_FORMAT {
            return Err(CodecError::BadField {
                field: "format",
                offset: 32,
                problem: format!("{format}, this build reads {RECORD_FORMAT}"),
            });
        }
        let position = u64::from_be_bytes(r.array()?);
        let stream_version = u64::from_be_bytes(r.array()?);
        let recorded_at_micros = i64::from_be_bytes(r.array()?);
        r.take(32)?; // event id, correlation id
        let schema_version = u16::from_be_bytes(r.array()?);
        let actor_kind = r.array::<1>()?[0];
        let stream_id = r.short_str()?;
        let event_type = r.short_str()?;
        let actor_name = r.short_str()?;
        let payload_len_at = r.at;
        let payload_len = u32::from_be_bytes(r.array()?) as usize;
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(CodecError::BadField {
                field: "payload_len",
                offset: payload_len_at,
                problem: format!("{payload_len} exceeds {MAX_PAYLOAD_BYTES}"),
            });
        }
        let payload_start = r.at;
        r.take(payload_len)?;
        r.take(32)?;
        if r.at != bytes.len() {
            return Err(CodecError::TrailingBytes {
                extra: bytes.len() - r.at,
            });
        }
        Ok(Self {
            bytes,
            position,
            stream_version,
            recorded_at_micros,
            schema_version,
            actor_kind,
            stream_id,
            event_type,
            actor_name,
            payload: (payload_start, payload_len),
        })
    }

    fn slice(&self, (start, len): (usize, usize)) -> &'a [u8] {
        &self.bytes[start..start + len]
    }

    fn text(&self, span: (usize, usize), field: &'static str) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.slice(span)).map_err(|e| CodecError::BadField {
            field,
            offset: span.0,
            problem: e.to_string(),
        })
    }

    /// The whole record.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Global position.
    pub fn position(&self) -> Position {
        self.position
    }
    /// Stream version.
    pub fn stream_version(&self) -> StreamVersion {
        self.stream_version
    }
    /// `recorded_at` as microseconds since the Unix epoch (validated by
    /// [`RecordView::envelope`]).
    pub fn recorded_at_micros(&self) -> i64 {
        self.recorded_at_micros
    }
    /// Stream id bytes (validated by [`RecordView::envelope`]).
    pub fn stream_id_bytes(&self) -> &'a [u8] {
        self.slice(self.stream_id)
    }
    /// Stream id as text.
    pub fn stream_id(&self) -> Result<&'a str, CodecError> {
        self.text(self.stream_id, "stream_id")
    }
    /// Event type as text.
    pub fn event_type(&self) -> Result<&'a str, CodecError> {
        self.text(self.event_type, "event_type")
    }
    /// Schema version.
    pub fn schema_version(&self) -> u16 {
        self.schema_version
    }
    /// Event id.
    pub fn event_id(&self) -> Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.bytes[32 + 25..32 + 41]);
        Uuid::from_bytes(b)
    }
    /// Correlation id.
    pub fn correlation_id(&self) -> Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.bytes[32 + 41..32 + 57]);
        Uuid::from_bytes(b)
    }
    /// The postcard payload.
    pub fn payload(&self) -> &'a [u8] {
        self.slice(self.payload)
    }
    /// The stored previous hash.
    pub fn prev_hash(&self) -> Hash {
        let mut h = [0u8; 32];
        h.copy_from_slice(&self.bytes[..32]);
        Hash(h)
    }
    /// The stored hash.
    pub fn hash(&self) -> Hash {
        let mut h = [0u8; 32];
        h.copy_from_slice(&self.bytes[self.bytes.len() - 32..]);
        Hash(h)
    }
    /// SHA-256 of the record without its hash.
    pub fn computed_hash(&self) -> Hash {
        Hash(Sha256::digest(&self.bytes[..self.bytes.len() - 32]).into())
    }

    /// Checks the stored hash against the record's bytes.
    pub fn verify_hash(&self) -> Result<(), CodecError> {
        let computed = self.computed_hash();
        let stored = self.hash();
        if computed != stored {
            return Err(CodecError::HashMismatch { stored, computed });
        }
        Ok(())
    }

    /// Validates and copies out the envelope.
    pub fn envelope(&self) -> Result<Envelope, CodecError> {
        let stream_id = StreamId::parse(self.stream_id()?).map_err(|e| CodecError::BadField {
            field: "stream_id",
            offset: self.stream_id.0,
            problem: e.to_string(),
        })?;
        let kind = ActorKind::from_code(self.actor_kind).ok_or_else(|| CodecError::BadField {
            field: "actor_kind",
            offset: 32 + 59,
            problem: format!("{} is not 1, 2 or 3", self.actor_kind),
        })?;
        let actor =
            Actor::with_kind(kind, self.text(self.actor_name, "actor_name")?).map_err(|e| {
                CodecError::BadField {
                    field: "actor_name",
                    offset: self.actor_name.0,
                    problem: e.to_string(),
                }
            })?;
        let recorded_at = Utc
            .timestamp_micros(self.recorded_at_micros)
            .single()
            .ok_or_else(|| CodecError::BadField {
                field: "recorded_at",
                offset: 32 + 17,
                problem: format!("{} is out of range", self.recorded_at_micros),
            })?;
        Ok(Envelope {
            position: self.position,
            stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id(),
            event_type: self.event_type()?.to_owned(),
            schema_version: self.schema_version,
            recorded_at,
            actor,
            correlation_id: self.correlation_id(),
            prev_hash: self.prev_hash(),
            hash: self.hash(),
        })
    }

    /// Decodes the payload, upcasting old schema versions.
    pub fn event(&self) -> Result<Event, CodecError> {
        Event::decode_payload(self.event_type()?, self.schema_version, self.payload())
    }

    /// Parses, verifies and copies into an owned record.
    pub fn to_record(&self) -> Result<Record, CodecError> {
        self.verify_hash()?;
        Ok(Record {
            envelope: self.envelope()?,
            payload: self.payload().to_vec(),
        })
    }
}

fn short_len(field: &'static str, s: &str) -> Result<u8, CodecError> {
    u8::try_from(s.len()).map_err(|_| CodecError::TooLarge {
        field,
        problem: format!("{} bytes, at most 255", s.len()),
    })
}

/// The envelope's fields, borrowed, for encoding without building an [`Envelope`] (the
/// store's writer encodes many records of one stream and actor).
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader<'a> {
    /// Global position.
    pub position: Position,
    /// Stream.
    pub stream_id: &'a StreamId,
    /// Version within the stream.
    pub stream_version: StreamVersion,
    /// Event id.
    pub event_id: Uuid,
    /// Catalogue name.
    pub event_type: &'a str,
    /// Schema version of the payload.
    pub schema_version: u16,
    /// When recorded, microsecond precision.
    pub recorded_at: DateTime<Utc>,
    /// Who.
    pub actor: &'a Actor,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Previous record's hash.
    pub prev_hash: Hash,
}

impl<'a> From<&'a Envelope> for RecordHeader<'a> {
    fn from(e: &'a Envelope) -> Self {
        Self {
            position: e.position,
            stream_id: &e.stream_id,
            stream_version: e.stream_version,
            event_id: e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            actor: &e.actor,
            correlation_id: e.correlation_id,
            prev_hash: e.prev_hash,
        }
    }
}

/// Appends the encoding of a record to `out` and returns its hash. `envelope.hash` is
/// ignored: the hash is computed here. `recorded_at` must already be truncated to
/// microseconds (see [`crate::envelope::truncate_to_micros`]); finer precision is refused so
/// that a record never hashes differently from what it stores.
pub fn encode_record_into(
    out: &mut Vec<u8>,
    envelope: &Envelope,
    payload: &[u8],
) -> Result<Hash, CodecError> {
    encode_header_into(out, &RecordHeader::from(envelope), payload)
}

/// [`encode_record_into`] from borrowed fields. On error nothing is appended to `out`.
pub fn encode_header_into(
    out: &mut Vec<u8>,
    h: &RecordHeader<'_>,
    payload: &[u8],
) -> Result<Hash, CodecError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(CodecError::TooLarge {
            field: "payload",
            problem: format!("{} bytes, at most {MAX_PAYLOAD_BYTES}", payload.len()),
        });
    }
    if !h.recorded_at.timestamp_subsec_nanos().is_multiple_of(1000) {
        return Err(CodecError::TooLarge {
            field: "recorded_at",
            problem: "finer than microseconds".into(),
        });
    }
    Actor::check_name(&h.actor.name).map_err(|e| CodecError::TooLarge {
        field: "actor_name",
        problem: e.problem,
    })?;
    let stream_len = short_len("stream_id", h.stream_id.as_str())?;
    let type_len = short_len("event_type", h.event_type)?;
    let actor_len = short_len("actor_name", &h.actor.name)?;
    let start = out.len();
    out.reserve(MIN_RECORD_BYTES + 3 * 64 + payload.len());
    out.extend_from_slice(&h.prev_hash.0);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&h.position.to_be_bytes());
    out.extend_from_slice(&h.stream_version.to_be_bytes());
    out.extend_from_slice(&h.recorded_at.timestamp_micros().to_be_bytes());
    out.extend_from_slice(h.event_id.as_bytes());
    out.extend_from_slice(h.correlation_id.as_bytes());
    out.extend_from_slice(&h.schema_version.to_be_bytes());
    out.push(h.actor.kind.code());
    out.push(stream_len);
    out.extend_from_slice(h.stream_id.as_str().as_bytes());
    out.push(type_len);
    out.extend_from_slice(h.event_type.as_bytes());
    out.push(actor_len);
    out.extend_from_slice(h.actor.name.as_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let hash = Hash(Sha256::digest(&out[start..]).into());
    out.extend_from_slice(&hash.0);
    debug_assert!(out.len() - start <= MAX_RECORD_BYTES);
    Ok(hash)
}

/// An owned record: envelope and payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Everything but the payload.
    pub envelope: Envelope,
    /// The postcard payload at `envelope.schema_version`.
    pub payload: Vec<u8>,
}

impl Record {
    /// Parses and verifies one record (structure, hash, envelope strings).
    pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
        RecordView::parse(bytes)?.to_record()
    }

    /// Encodes the record (its stored hash must match its bytes).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        let hash = encode_record_into(&mut out, &self.envelope, &self.payload)?;
        if hash != self.envelope.hash {
            return Err(CodecError::HashMismatch {
                stored: self.envelope.hash,
                computed: hash,
            });
        }
        Ok(out)
    }

    /// Decodes the payload, upcasting old schema versions.
    pub fn event(&self) -> Result<Event, CodecError> {
        Event::decode_payload(
            &self.envelope.event_type,
            self.envelope.schema_version,
            &self.payload,
        )
    }

    /// The JSON form used by the HTTP feed and exports.
    pub fn to_json(&self) -> Result<RecordJson, CodecError> {
        let event = self.event()?;
        let e = &self.envelope;
        Ok(RecordJson {
            position: e.position,
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            actor: e.actor.clone(),
            correlation_id: e.correlation_id,
            prev_hash: e.prev_hash,
            hash: e.hash,
            data: event.data_json(),
            payload: hex::encode(&self.payload),
        })
    }

    /// Rebuilds a record from its JSON form, byte for byte. Refuses JSON whose `data` does
    /// not match its `payload`, or whose `hash` does not match the record.
    pub fn from_json(json: &RecordJson) -> Result<Record, CodecError> {
        Self::from_json_owned(json.clone())
    }

    /// [`Record::from_json`] taking the JSON form by value (nothing of it is copied): what
    /// an import of many records uses.
    pub fn from_json_owned(json: RecordJson) -> Result<Record, CodecError> {
        let mut payload = vec![0; json.payload.len() / 2];
        // An odd number of digits fails too: it is not twice the bytes.
        if crate::envelope::decode_hex(json.payload.as_bytes(), &mut payload).is_err() {
            return Err(CodecError::BadField {
                field: "payload",
                offset: 0,
                problem: "expected an even number of hex digits".into(),
            });
        }
        let from_data = Event::from_data_json(&json.event_type, json.data)?;
        let envelope = Envelope {
            position: json.position,
            stream_id: json.stream_id,
            stream_version: json.stream_version,
            event_id: json.event_id,
            event_type: json.event_type,
            schema_version: json.schema_version,
            recorded_at: json.recorded_at,
            actor: json.actor,
            correlation_id: json.correlation_id,
            prev_hash: json.prev_hash,
            hash: json.hash,
        };
        let record = Record { envelope, payload };
        if record.event()? != from_data {
            return Err(CodecError::Payload {
                event_type: record.envelope.event_type,
                problem: "data does not match payload".into(),
            });
        }
        record.encode()?;
        Ok(record)
    }
}

/// The JSON form of a record. `data` is the event's fields (upcast to the current version);
/// `payload` is the stored bytes in hex, so that anyone can recompute the hash from JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Record))]
pub struct RecordJson {
    /// Global position.
    pub position: Position,
    /// Stream.
    pub stream_id: StreamId,
    /// Version within the stream.
    pub stream_version: StreamVersion,
    /// Event id.
    pub event_id: Uuid,
    /// Catalogue name.
    pub event_type: String,
    /// Stored schema version.
    pub schema_version: u16,
    /// When recorded (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Who.
    pub actor: Actor,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Previous record's hash.
    pub prev_hash: Hash,
    /// This record's hash.
    pub hash: Hash,
    /// The event's fields.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
    /// The stored payload, hex.
    #[cfg_attr(feature = "openapi", schema(pattern = "^([0-9a-f]{2})*$"))]
    pub payload: String,
}
