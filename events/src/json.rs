//! A record's JSON form written straight into a byte buffer: exactly the bytes
//! `serde_json::to_writer(w, &record.to_json()?)` writes, without the `serde_json::Value`
//! that [`Record::to_json`] builds for `data` (a map and a string per field: most of an
//! export's time).
//!
//! The one difference to take care of: `RecordJson::data` is a `Value`, and serde_json's
//! `Value` keeps object keys sorted (the `preserve_order` feature is off), whereas a derived
//! `Serialize` writes fields in declaration order. [`SortedJson`] is a serializer that writes
//! every object (struct, map, variant) with its keys in the order a `Value` would hold them
//! and hands everything else to serde_json, so the output does not depend on how the event
//! structs order their fields. `events/tests/json.rs` compares both writers on every event
//! type.

use chrono::{DateTime, Utc};
use serde::ser::{self, Serialize, Serializer};
use uuid::Uuid;

use crate::codec::{CodecError, Record};
use crate::envelope::{Actor, Envelope, Hash, Position, StreamId, StreamVersion};
use crate::Event;

/// The fields of `RecordJson` before `data`, in its order, borrowed.
#[derive(serde::Serialize)]
struct Head<'a> {
    position: Position,
    stream_id: &'a StreamId,
    stream_version: StreamVersion,
    event_id: Uuid,
    event_type: &'a str,
    schema_version: u16,
    recorded_at: DateTime<Utc>,
    actor: &'a Actor,
    correlation_id: Uuid,
    prev_hash: Hash,
    hash: Hash,
}

impl Record {
    /// Appends the record's JSON form to `out` (no newline): the bytes serde_json writes for
    /// [`Record::to_json`], built without a JSON value.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        write_record_json(&self.envelope, &self.payload, &self.event()?, out)
    }
}

/// Appends the JSON form of the record with `envelope` and `payload` to `out` (no newline);
/// `event` must be the payload decoded (what [`Record::event`] returns). On error `out` is
/// left as it was.
pub fn write_record_json(
    envelope: &Envelope,
    payload: &[u8],
    event: &Event,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    let written = write_unchecked(envelope, payload, event, out);
    if written.is_err() {
        out.truncate(start);
    }
    written.map_err(|e| CodecError::Payload {
        event_type: envelope.event_type.clone(),
        problem: e.to_string(),
    })
}

fn write_unchecked(
    e: &Envelope,
    payload: &[u8],
    event: &Event,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let head = Head {
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
        hash: e.hash,
    };
    serde_json::to_writer(&mut *out, &head)?;
    // The head is an object: reopen it for the last two fields.
    if out.pop() != Some(b'}') {
        return Err(ser::Error::custom("the record's head is not a JSON object"));
    }
    out.extend_from_slice(b",\"data\":");
    event.serialize_data(SortedJson { out: &mut *out })?;
    out.extend_from_slice(b",\"payload\":\"");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * payload.len() + 2);
    for &b in payload {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// Serializes like `serde_json::to_writer(out, &serde_json::to_value(x)?)`: objects with
/// their keys sorted (and a repeated map key written once, its last value), floats widened
/// to `f64` as a `Value` holds them; scalars are serde_json's own output.
pub struct SortedJson<'a> {
    /// Where the JSON goes.
    pub out: &'a mut Vec<u8>,
}

type Error = serde_json::Error;

macro_rules! delegate {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method(self, $($arg: $ty),*) -> Result<(), Error> {
                (&mut serde_json::Serializer::new(self.out)).$method($($arg),*)
            }
        )*
    };
}

impl<'a> Serializer for SortedJson<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    delegate! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // A `Value` holds every float as an f64.
        self.serialize_f64(f64::from(v))
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        open_variant(self.out, variant)?;
        value.serialize(SortedJson {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Error> {
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            close: b"]",
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>, Error> {
        open_variant(self.out, variant)?;
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            close: b"]}",
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::open(self.out, false))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        Ok(Object::open(self.out, false))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Error> {
        open_variant(self.out, variant)?;
        Ok(Object::open(self.out, true))
    }
}

/// `{"variant":` (a `Value` holds an enum's variant as a one-key object).
fn open_variant(out: &mut Vec<u8>, variant: &str) -> Result<(), Error> {
    out.push(b'{');
    serde_json::to_writer(&mut *out, variant)?;
    out.push(b':');
    Ok(())
}

/// An array being written.
pub struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    close: &'static [u8],
}

impl Seq<'_> {
    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(SortedJson {
            out: &mut *self.out,
        })
    }

    fn close(self) -> Result<(), Error> {
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// An object key: a field name, or a map key as the string a `Value` would hold.
enum Key {
    Field(&'static str),
    Map(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Field(s) => s,
            Key::Map(s) => s,
        }
    }
}

/// An object being written. Entries go out in the order they come, `"key":value` each, and
/// their spans are remembered; at the end, if the keys were not strictly ascending (a struct
/// whose fields are not declared in order, a map with repeated keys), the entries are
/// rewritten sorted, the last of equal keys kept, as a `Value`'s map would hold them.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// Where the first entry starts (just after `{`).
    base: usize,
    /// Key, and the span of `"key":value` in `out`.
    entries: Vec<(Key, usize, usize)>,
    /// A struct variant: one more `}` at the end.
    variant: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>, variant: bool) -> Self {
        out.push(b'{');
        let base = out.len();
        Object {
            out,
            base,
            entries: Vec::new(),
            variant,
        }
    }

    /// Writes `,"key":` (no comma first) and remembers where the entry starts.
    fn key(&mut self, key: Key) -> Result<(), Error> {
        if !self.entries.is_empty() {
            self.out.push(b',');
        }
        let start = self.out.len();
        serde_json::to_writer(&mut *self.out, key.as_str())?;
        self.out.push(b':');
        self.entries.push((key, start, start));
        Ok(())
    }

    fn value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(SortedJson {
            out: &mut *self.out,
        })?;
        let end = self.out.len();
        match self.entries.last_mut() {
            Some(entry) => entry.2 = end,
            None => return Err(ser::Error::custom("a map value without its key")),
        }
        Ok(())
    }

    fn close(mut self) -> Result<(), Error> {
        let ascending = self
            .entries
            .windows(2)
            .all(|w| w[0].0.as_str() < w[1].0.as_str());
        if !ascending {
            let written = self.out.split_off(self.base);
            // Stable: equal keys keep their order, and the last of them wins.
            self.entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            let mut first = true;
            for (i, (key, start, end)) in self.entries.iter().enumerate() {
                let superseded = self
                    .entries
                    .get(i + 1)
                    .is_some_and(|next| next.0.as_str() == key.as_str());
                if superseded {
                    continue;
                }
                if !first {
                    self.out.push(b',');
                }
                first = false;
                self.out
                    .extend_from_slice(&written[start - self.base..end - self.base]);
            }
        }
        self.out.push(b'}');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        // Maps are rare in events (resources): the key goes through a `Value` to get exactly
        // the string a `Value`'s map would hold.
        let key = match serde_json::to_value(MapKey(key))? {
            serde_json::Value::Object(map) => map.into_iter().next().map(|(k, _)| k),
            _ => None,
        };
        match key {
            Some(s) => self.key(Key::Map(s)),
            None => Err(ser::Error::custom("key must be a string")),
        }
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// `{key: null}`, so that serde_json's own map-key rules turn `key` into a string.
struct MapKey<'k, T: ?Sized>(&'k T);

impl<T: ?Sized + Serialize> Serialize for MapKey<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &())?;
        map.end()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.key(Key::Field(key))?;
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.key(Key::Field(key))?;
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}
