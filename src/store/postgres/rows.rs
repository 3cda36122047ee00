//! From rows back to records: every read rebuilds the record's bytes from the columns with the
//! same codec as the file store (`ledger_events::codec`) and checks that their SHA-256 is the
//! stored hash, so a row altered in SQL is refused, naming its position, and never returned.
//! The write side computed that hash from the same fields; this is the other half of the pair.
//!
//! Every column of `ledger_events` is checked here, in [`decode_row`]: the hash covers all but
//! two, and those two are copies that must say what the hashed ones say (`recorded_at` the
//! instant of `recorded_at_micros`, `data` the JSON of `payload`). `data` is for auditors'
//! SQL: no read of the store returns it, so only the reads that select it check it
//! ([`all_event_columns`]: `verify` and the lookups of a retry's ids); checking it on every
//! read would cost more than the read itself (`benches/append_pg.rs`, read pass). The head row
//! is checked against the record it names by [`check_head`].

use std::error::Error;

use chrono::{TimeZone, Utc};
use ledger_events::{
    encode_record_into, Actor, ActorKind, ChainHead, Envelope, Event, Hash, Position, Record,
    StreamId,
};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::StoreError;

/// The columns [`decode_row`] reads, in its order (a macro so that queries can `concat!` it):
/// every column of `ledger_events` a record is rebuilt from, and its time for SQL.
macro_rules! event_columns {
    () => {
        "position, stream_id, stream_version, event_id, event_type, schema_version, \
         recorded_at_micros, actor_kind, actor_name, correlation_id, payload, prev_hash, hash, \
         recorded_at"
    };
}
pub(crate) use event_columns;

/// [`event_columns`] and the JSON copy `data`: every column of `ledger_events`, for the reads
/// that check them all.
macro_rules! all_event_columns {
    () => {
        concat!($crate::store::postgres::rows::event_columns!(), ", data")
    };
}
pub(crate) use all_event_columns;

/// The columns of the head row [`decode_head`] reads, in its order.
pub(crate) const READ_HEAD_ROW: &str =
    "SELECT id, last_position, last_hash, last_recorded_micros FROM ledger_head";

/// The text stored in `actor_kind` (the catalogue's JSON name of the kind).
pub(crate) fn actor_kind_name(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::Operator => "operator",
        ActorKind::Terminal => "terminal",
        ActorKind::System => "system",
    }
}

fn parse_actor_kind(name: &str) -> Option<ActorKind> {
    match name {
        "operator" => Some(ActorKind::Operator),
        "terminal" => Some(ActorKind::Terminal),
        "system" => Some(ActorKind::System),
        _ => None,
    }
}

/// A corruption error for a row of `table` at `position`.
pub(crate) fn corrupt(table: &str, position: Position, problem: String) -> StoreError {
    StoreError::Corrupt {
        segment: format!("table {table}"),
        offset: 0,
        position,
        problem,
    }
}

fn hash_of(bytes: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(bytes).ok().map(Hash)
}

/// A `timestamptz` as PostgreSQL sends it: microseconds since 2000-01-01 00:00 UTC.
struct PgTimestamp(i64);

/// 2000-01-01 00:00 UTC (PostgreSQL's epoch) in microseconds since 1970-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self(i64::from_be_bytes(<[u8; 8]>::try_from(raw)?)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// A `jsonb` as PostgreSQL sends it: the JSON text, after the format's version byte (1).
struct JsonbText<'a>(&'a [u8]);

impl<'a> FromSql<'a> for JsonbText<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, text)) => Ok(Self(text)),
            _ => Err("not jsonb format version 1".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
}

/// A row's columns by index, whether a query's [`Row`] or a tuple of a binary `COPY`
/// ([`CopyTuple`]): what [`decode_columns`] reads.
pub(crate) trait Columns {
    /// Column `i` as `T`.
    fn column<'a, T: FromSql<'a>>(&'a self, i: usize) -> Result<T, String>;
    /// How many columns the row has.
    fn count(&self) -> usize;
}

impl Columns for Row {
    fn column<'a, T: FromSql<'a>>(&'a self, i: usize) -> Result<T, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }

    fn count(&self) -> usize {
        self.len()
    }
}

/// The types of `all_event_columns!()`, in its order: how a binary `COPY` of them is read
/// and written.
pub(crate) const ALL_COLUMN_TYPES: [Type; 15] = [
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::UUID,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::UUID,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

/// One tuple of a binary `COPY (SELECT all_event_columns!() ...) TO STDOUT`: a 16-bit field
/// count, then each field as a 32-bit length (-1 for NULL) and its bytes, in PostgreSQL's
/// binary send format.
pub(crate) struct CopyTuple<'a> {
    fields: [Option<&'a [u8]>; 15],
}

impl<'a> CopyTuple<'a> {
    /// Parses one whole tuple of [`ALL_COLUMN_TYPES`]; `None` unless `bytes` is exactly that.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (count, mut rest) = bytes.split_first_chunk::<2>()?;
        if i16::from_be_bytes(*count) != 15 {
            return None;
        }
        let mut fields = [None; 15];
        for field in &mut fields {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let len = i32::from_be_bytes(*len);
            rest = after;
            if len >= 0 {
                let (value, after) = rest.split_at_checked(len as usize)?;
                *field = Some(value);
                rest = after;
            }
        }
        rest.is_empty().then_some(Self { fields })
    }

    /// The length of the tuple at the start of `bytes` (which may hold more), or `None` when
    /// it is cut short; a count of -1 is the format's trailer (length 2).
    pub(crate) fn measure(bytes: &[u8]) -> Option<usize> {
        let (count, _) = bytes.split_first_chunk::<2>()?;
        let count = i16::from_be_bytes(*count);
        if count < 0 {
            return Some(2);
        }
        let mut at = 2usize;
        for _ in 0..count {
            let len = bytes.get(at..at + 4)?;
            let len = i32::from_be_bytes(len.try_into().ok()?);
            at += 4 + usize::try_from(len).unwrap_or(0);
        }
        (at <= bytes.len()).then_some(at)
    }
}

impl Columns for CopyTuple<'_> {
    fn column<'a, T: FromSql<'a>>(&'a self, i: usize) -> Result<T, String> {
        let ty = ALL_COLUMN_TYPES
            .get(i)
            .ok_or_else(|| format!("no column {i}"))?;
        if !T::accepts(ty) {
            return Err(format!("column {i} is not of the type read"));
        }
        let raw = self.fields.get(i).copied().flatten();
        T::from_sql_nullable(ty, raw).map_err(|e| e.to_string())
    }

    fn count(&self) -> usize {
        self.fields.len()
    }
}

/// Rebuilds and verifies the record of one row of `event_columns!()` or
/// `all_event_columns!()`: every column it has must say what the record's bytes say. `buf` is
/// scratch space for the record's bytes.
pub(crate) fn decode_row(row: &Row, table: &str, buf: &mut Vec<u8>) -> Result<Record, StoreError> {
    let (envelope, payload) = decode_columns(row, table, buf)?;
    Ok(Record {
        envelope,
        payload: payload.to_vec(),
    })
}

/// [`decode_row`] for any [`Columns`], the payload borrowed from the row.
pub(crate) fn decode_columns<'r, C: Columns>(
    row: &'r C,
    table: &str,
    buf: &mut Vec<u8>,
) -> Result<(Envelope, &'r [u8]), StoreError> {
    let raw_position: i64 = row
        .column(0)
        .map_err(|e| corrupt(table, 0, format!("unreadable position: {e}")))?;
    let position = Position::try_from(raw_position)
        .map_err(|_| corrupt(table, 0, format!("negative position {raw_position}")))?;
    let bad = |problem: String| corrupt(table, position, problem);
    let field = |e: String| bad(format!("unreadable column: {e}"));

    let stream_id: &str = row.column(1).map_err(field)?;
    let stream_id = StreamId::parse(stream_id).map_err(|e| bad(format!("stream_id: {e}")))?;
    let stream_version: i64 = row.column(2).map_err(field)?;
    let stream_version = u64::try_from(stream_version)
        .map_err(|_| bad(format!("negative stream_version {stream_version}")))?;
    let event_id: Uuid = row.column(3).map_err(field)?;
    let event_type: &str = row.column(4).map_err(field)?;
    let schema_version: i32 = row.column(5).map_err(field)?;
    let schema_version = u16::try_from(schema_version)
        .map_err(|_| bad(format!("schema_version {schema_version} out of range")))?;
    let micros: i64 = row.column(6).map_err(field)?;
    let recorded_at = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or_else(|| bad(format!("recorded_at_micros {micros} out of range")))?;
    let kind: &str = row.column(7).map_err(field)?;
    let kind = parse_actor_kind(kind).ok_or_else(|| bad(format!("actor_kind {kind:?}")))?;
    let actor_name: &str = row.column(8).map_err(field)?;
    let actor = Actor::with_kind(kind, actor_name).map_err(|e| bad(format!("actor: {e}")))?;
    let correlation_id: Uuid = row.column(9).map_err(field)?;
    let payload: &[u8] = row.column(10).map_err(field)?;
    let prev_hash: &[u8] = row.column(11).map_err(field)?;
    let prev_hash = hash_of(prev_hash).ok_or_else(|| bad("prev_hash is not 32 bytes".into()))?;
    let hash: &[u8] = row.column(12).map_err(field)?;
    let hash = hash_of(hash).ok_or_else(|| bad("hash is not 32 bytes".into()))?;
    let timestamp: PgTimestamp = row.column(13).map_err(field)?;
    let data: Option<JsonbText> = if row.count() > DATA_COLUMN {
        Some(row.column(DATA_COLUMN).map_err(field)?)
    } else {
        None
    };

    let envelope = Envelope {
        position,
        stream_id,
        stream_version,
        event_id,
        event_type: event_type.to_owned(),
        schema_version,
        recorded_at,
        actor,
        correlation_id,
        prev_hash,
        hash,
    };
    buf.clear();
    let computed = encode_record_into(buf, &envelope, payload)
        .map_err(|e| bad(format!("the row does not encode as a record: {e}")))?;
    if computed != hash {
        return Err(bad(format!(
            "hash mismatch: stored {hash}, computed {computed} from the row (the row was altered)"
        )));
    }
    check_copies(&envelope, payload, timestamp, data).map_err(bad)?;
    Ok((envelope, payload))
}

/// Where `data` is in a row of `all_event_columns!()`.
const DATA_COLUMN: usize = 14;

/// The two columns the hash does not cover are copies for SQL; they must say what the hashed
/// columns say: `recorded_at` the same instant as `recorded_at_micros`, and `data` (when
/// read) the JSON of the payload. `data` is compared when this build decodes the payload at
/// its own schema version (the JSON of an older version, or of a type this build does not
/// know, is not something it can rebuild).
fn check_copies(
    envelope: &Envelope,
    payload: &[u8],
    timestamp: PgTimestamp,
    data: Option<JsonbText>,
) -> Result<(), String> {
    let micros = envelope.recorded_at.timestamp_micros();
    if timestamp.0.checked_add(PG_EPOCH_MICROS) != Some(micros) {
        return Err(format!(
            "recorded_at is not the instant of recorded_at_micros {micros} (the row was altered)"
        ));
    }
    let Some(data) = data else {
        return Ok(());
    };
    let Ok(event) = Event::decode_payload(&envelope.event_type, envelope.schema_version, payload)
    else {
        return Ok(());
    };
    if event.schema_version() != envelope.schema_version {
        return Ok(());
    }
    let expected = event.data_json();
    // Fast path: PostgreSQL prints a jsonb in one canonical form; the same text is the same
    // JSON. Any other text is parsed and compared as JSON (numbers, say, may print otherwise).
    let mut text = Vec::with_capacity(data.0.len());
    write_jsonb_text(&expected, &mut text);
    if text == data.0 {
        return Ok(());
    }
    let stored: serde_json::Value = serde_json::from_slice(data.0)
        .map_err(|e| format!("data is not JSON ({e}); the row was altered"))?;
    if stored != expected {
        return Err("data is not the JSON of the payload (the row was altered)".into());
    }
    Ok(())
}

/// Writes `value` as PostgreSQL prints a `jsonb` (`JsonbToCString`): object keys shortest
/// first, then bytewise; `", "` between items and `": "` after keys; strings escaped as
/// `escape_json` does.
fn write_jsonb_text(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_jsonb_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_jsonb_text(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| {
                (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes()))
            });
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_jsonb_string(key, out);
                out.extend_from_slice(b": ");
                write_jsonb_text(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_jsonb_string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Runs of bytes printed as they are, copied whole.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The head row as stored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoredHead {
    /// The last position and its hash.
    pub head: ChainHead,
    /// `recorded_at` of the last record in microseconds; `None` while the log is empty.
    pub recorded_micros: Option<i64>,
}

/// Reads the rows of [`READ_HEAD_ROW`]: exactly one, with id 1, a position, a 32-byte hash.
pub(crate) fn decode_head(rows: &[Row], table: &str) -> Result<StoredHead, StoreError> {
    let [row] = rows else {
        return Err(corrupt(
            table,
            0,
            format!("{} rows where there is always exactly one", rows.len()),
        ));
    };
    let bad = |problem: String| corrupt(table, 0, problem);
    let field = |e: tokio_postgres::Error| bad(format!("unreadable column: {e}"));
    let id: i16 = row.try_get(0).map_err(field)?;
    if id != 1 {
        return Err(bad(format!("the row's id is {id}, not 1")));
    }
    let position: i64 = row.try_get(1).map_err(field)?;
    let position = Position::try_from(position)
        .map_err(|_| bad(format!("negative last_position {position}")))?;
    let hash: &[u8] = row.try_get(2).map_err(field)?;
    let hash = hash_of(hash).ok_or_else(|| bad("last_hash is not 32 bytes".into()))?;
    Ok(StoredHead {
        head: ChainHead { position, hash },
        recorded_micros: row.try_get(3).map_err(field)?,
    })
}

/// The head row must describe the record it names: `last` is the first verified record at or
/// after its position (after position 1 for an empty log), `None` when there is none. The
/// record must be at that position and have the head's hash and time; an empty log has no
/// record, the zero hash and no time.
pub(crate) fn check_head(
    stored: &StoredHead,
    last: Option<&Record>,
    table: &str,
) -> Result<ChainHead, StoreError> {
    let StoredHead {
        head,
        recorded_micros,
    } = *stored;
    let bad = |problem: String| corrupt(table, head.position, problem);
    let expected = match (head.position, last) {
        (0, None) => (Hash::default(), None),
        (0, Some(r)) => {
            return Err(bad(format!(
                "last_position is 0, but the log has a record at position {}",
                r.envelope.position
            )))
        }
        (p, Some(r)) if r.envelope.position == p => (
            r.envelope.hash,
            Some(r.envelope.recorded_at.timestamp_micros()),
        ),
        (p, _) => {
            return Err(bad(format!(
                "last_position is {p}, but the log has no record there"
            )))
        }
    };
    if head.hash != expected.0 {
        return Err(bad(format!(
            "last_hash {} is not {}, the hash of the record at last_position",
            head.hash, expected.0
        )));
    }
    if recorded_micros != expected.1 {
        return Err(bad(format!(
            "last_recorded_micros {recorded_micros:?} is not {:?}, the time of the record at \
             last_position",
            expected.1
        )));
    }
    Ok(head)
}

/// Decodes rows of consecutive positions starting at `first` (a read of the global log):
/// every row must verify, every position must be there, in order, and each record must chain
/// to the one before it. Rows are verified first, so an altered row is named as such even when
/// the alteration also moved it.
/// Rows read by position (each row checked on its own, as every read does).
pub(crate) fn decode_rows(rows: &[Row], table: &str) -> Result<Vec<Record>, StoreError> {
    decode_all(rows, table)
}

pub(crate) fn decode_log(
    rows: &[Row],
    table: &str,
    first: Position,
) -> Result<Vec<Record>, StoreError> {
    let out = decode_all(rows, table)?;
    for (expected, pair) in (first..).zip(out.iter().enumerate()) {
        let (i, record) = pair;
        let e = &record.envelope;
        if e.position != expected {
            return Err(corrupt(
                table,
                expected,
                format!(
                    "position {expected} is missing (the next row is {})",
                    e.position
                ),
            ));
        }
        if let Some(before) = i.checked_sub(1).and_then(|j| out.get(j)) {
            if e.prev_hash != before.envelope.hash {
                return Err(corrupt(
                    table,
                    e.position,
                    format!(
                        "prev_hash {} is not the hash {} of position {}",
                        e.prev_hash, before.envelope.hash, before.envelope.position
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Decodes the rows of one stream from version `first`: every row must verify and versions
/// must be consecutive.
pub(crate) fn decode_stream(
    rows: &[Row],
    table: &str,
    first: u64,
) -> Result<Vec<Record>, StoreError> {
    let out = decode_all(rows, table)?;
    for (expected, record) in (first..).zip(&out) {
        if record.envelope.stream_version != expected {
            return Err(corrupt(
                table,
                record.envelope.position,
                format!(
                    "stream {} has version {} where {expected} was due",
                    record.envelope.stream_id, record.envelope.stream_version
                ),
            ));
        }
    }
    Ok(out)
}

fn decode_all(rows: &[Row], table: &str) -> Result<Vec<Record>, StoreError> {
    let mut buf = Vec::new();
    rows.iter()
        .map(|row| decode_row(row, table, &mut buf))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database of the PostgreSQL tests, or `None` (a skip, except under CI).
    fn database_url(test: &str) -> Option<String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ => {
                let why = "DATABASE_URL is not set \
                           (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";
                assert!(
                    std::env::var("CI").map_or(true, |v| v != "true"),
                    "{test} cannot run under CI: {why}"
                );
                eprintln!("{test}: skipped: {why}");
                None
            }
        }
    }

    /// `write_jsonb_text` writes what PostgreSQL prints for the same jsonb, byte for byte, so
    /// that `verify` compares the JSON copy without parsing it: keys of every length and
    /// order, nesting, every escape, text beyond ASCII, numbers, and every event's JSON.
    #[tokio::test]
    async fn the_jsonb_text_written_is_what_postgresql_prints() {
        let Some(url) = database_url("the_jsonb_text_written_is_what_postgresql_prints") else {
            return;
        };
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let mut values = vec![
            serde_json::json!({
                "b": 1, "aa": -2, "a": "x", "ccc": null, "ab": true, "B": false,
                "nested": {"zz": [1, "dois", {"y": [], "x": {}}], "a": 1.5},
                "text": "aspas \" barra \\ nl \n cr \r tab \t bs \u{8} ff \u{c} \u{1} \u{1f} \u{7f} ação €",
                "big": 12345678901234_i64, "neg": -0.25, "": "empty key"
            }),
            serde_json::json!([]),
            serde_json::json!("só texto"),
        ];
        // Every event type: the golden records (events/tests/golden), one per type and version.
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/tests/golden");
        let mut types = 0;
        for entry in std::fs::read_dir(&golden).expect("golden records") {
            let path = entry.expect("golden entry").path();
            if path.extension().is_some_and(|e| e == "bin") {
                let bytes = std::fs::read(&path).expect("golden record");
                let record = Record::decode(&bytes).expect("golden record decodes");
                values.push(record.event().expect("golden event").data_json());
                types += 1;
            }
        }
        assert!(types >= 20, "golden records in {}", golden.display());
        for value in values {
            let sent = serde_json::to_string(&value).unwrap();
            let printed: String = client
                .query_one("SELECT $1::text::jsonb::text", &[&sent])
                .await
                .expect("round trip")
                .get(0);
            let mut written = Vec::new();
            write_jsonb_text(&value, &mut written);
            assert_eq!(String::from_utf8(written).unwrap(), printed, "{sent}");
        }
    }
}
