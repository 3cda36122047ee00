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
use crate::envelope::Envelope;
use crate::Event;

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
    // The fields of `RecordJson` before `data`, in its order, each as its `Serialize`
    // writes it (the tests compare with serde_json over `to_json`), without the formatting
    // machinery Display-based serializers go through (hashes, UUIDs and times are most of
    // a line).
    out.extend_from_slice(b"{\"position\":");
    write_u64(out, e.position);
    out.extend_from_slice(b",\"stream_id\":");
    write_str(out, e.stream_id.as_str())?;
    out.extend_from_slice(b",\"stream_version\":");
    write_u64(out, e.stream_version);
    out.extend_from_slice(b",\"event_id\":");
    write_uuid(out, &e.event_id);
    out.extend_from_slice(b",\"event_type\":");
    write_str(out, &e.event_type)?;
    out.extend_from_slice(b",\"schema_version\":");
    write_u64(out, u64::from(e.schema_version));
    out.extend_from_slice(b",\"recorded_at\":");
    write_time(out, &e.recorded_at)?;
    out.extend_from_slice(b",\"actor\":{\"kind\":");
    serde_json::to_writer(&mut *out, &e.actor.kind)?;
    out.extend_from_slice(b",\"name\":");
    write_str(out, &e.actor.name)?;
    out.extend_from_slice(b"},\"correlation_id\":");
    write_uuid(out, &e.correlation_id);
    out.extend_from_slice(b",\"prev_hash\":\"");
    write_hex(out, &e.prev_hash.0);
    out.extend_from_slice(b"\",\"hash\":\"");
    write_hex(out, &e.hash.0);
    out.push(b'"');
    out.extend_from_slice(b",\"data\":");
    event.serialize_data(SortedJson { out: &mut *out })?;
    out.extend_from_slice(b",\"payload\":\"");
    write_hex(out, payload);
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// Lower-case hex, as `hex::encode` and `Hash`'s `Display` write it.
fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 32 bytes at a time through a buffer on the stack: one copy per piece, no capacity
    // check per digit.
    let mut buf = [0u8; 64];
    for piece in bytes.chunks(32) {
        for (pair, &b) in buf.chunks_exact_mut(2).zip(piece) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        out.extend_from_slice(&buf[..2 * piece.len()]);
    }
}

/// Whether any byte is one JSON escapes (a control character, `"` or `\\`); eight bytes at
/// a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is zero: `(x - ONES) & !x & HIGH` has its high bit set (exact for the
    // lowest such byte, which is all a yes/no needs).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_ne_bytes(w);
        // Below 0x20: with the high bits cleared, subtracting 0x20 borrows into the high bit
        // only for such bytes (bytes of 0x80 and up are not control characters).
        let low = (x & !HIGH).wrapping_add(u64::from_ne_bytes([0x60; 8])) & HIGH;
        let control = !low & !x & HIGH;
        if control != 0
            || zero(x ^ u64::from_ne_bytes([b'"'; 8])) != 0
            || zero(x ^ u64::from_ne_bytes([b'\\'; 8])) != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string as serde_json writes it: quoted, escaped. Text with nothing to escape (the
/// usual case: ids, names, types) is copied whole.
fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, s)
    }
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A quoted hyphenated lower-case UUID, as uuid's `Serialize` writes it.
fn write_uuid(out: &mut Vec<u8>, id: &Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// A quoted RFC 3339 time as chrono's `Serialize` writes it (`SecondsFormat::AutoSi`, `Z`):
/// no fraction, or 3, 6 or 9 digits, the fewest that hold it. Years outside 0..=9999 (which
/// chrono writes with a sign) go through chrono itself.
fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) -> Result<(), serde_json::Error> {
    use chrono::{Datelike, Timelike};
    // The naive UTC time once: each of `DateTime`'s own accessors applies the offset again.
    let n = t.naive_utc();
    let nanos = n.nanosecond();
    if !(0..=9999).contains(&n.year()) || nanos >= 1_000_000_000 {
        return serde_json::to_writer(&mut *out, t);
    }
    let two = |out: &mut Vec<u8>, n: u32| {
        out.push(b'0' + (n / 10 % 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    let year = n.year() as u32;
    out.push(b'"');
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, n.month());
    out.push(b'-');
    two(out, n.day());
    out.push(b'T');
    two(out, n.hour());
    out.push(b':');
    two(out, n.minute());
    out.push(b':');
    two(out, n.second());
    let (value, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        out.push(b'.');
        for k in (0..digits).rev() {
            out.push(b'0' + (value / 10u32.pow(k) % 10) as u8);
        }
    }
    out.extend_from_slice(b"Z\"");
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
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(self.out, v)
    }

    fn collect_str<T: ?Sized + std::fmt::Display>(self, value: &T) -> Result<(), Error> {
        // The text is written into a buffer kept by the thread, then as one string (ids,
        // dates and addresses are short and need no escape): no `String` per value, no
        // escaping per piece of `Display` output.
        thread_local! {
            static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        TEXT.with(|text| match text.try_borrow_mut() {
            Ok(mut text) => {
                text.clear();
                std::fmt::Write::write_fmt(&mut *text, format_args!("{value}"))
                    .map_err(|_| ser::Error::custom("a value's Display failed"))?;
                write_str(self.out, &text)
            }
            // Only if a `Display` serialized something itself: serde_json's own way.
            Err(_) => (&mut serde_json::Serializer::new(self.out)).collect_str(value),
        })
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
        write_str(self.out, key.as_str())?;
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
            // The entries in key order go after those written, which are then removed:
            // copies within `out`, no allocation.
            let written = self.out.len();
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
                self.out.extend_from_within(*start..*end);
            }
            self.out.drain(self.base..written);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(bytes: &[u8]) -> bool {
        bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// The eight-bytes-at-a-time check says what the byte-by-byte one says: every byte value
    /// at every place of strings of every length up to three words, among harmless bytes.
    #[test]
    fn needs_escape_finds_every_byte_json_escapes_wherever_it_is() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    // Around it, bytes that are next to the ones escaped.
                    let mut bytes: Vec<u8> =
                        (0..len).map(|i| [b'!', 0x7f, 0xff, b'#'][i % 4]).collect();
                    bytes[at] = b;
                    assert_eq!(
                        needs_escape(&bytes),
                        simple(&bytes),
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Any text is written exactly as serde_json writes it.
        #[test]
        fn write_str_writes_what_serde_json_writes(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut out = Vec::new();
            write_str(&mut out, &s).unwrap();
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
            let mut hex = Vec::new();
            write_hex(&mut hex, s.as_bytes());
            proptest::prop_assert_eq!(String::from_utf8(hex).unwrap(), hex::encode(s.as_bytes()));
        }
    }
}
