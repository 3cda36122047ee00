//! From rows back to records: every read rebuilds the record's bytes from the columns with the
//! same codec as the file store (`ledger_events::codec`) and checks that their SHA-256 is the
//! stored hash, so a row altered in SQL is refused, naming its position, and never returned.
//! The write side computed that hash from the same fields; this is the other half of the pair.

use chrono::{TimeZone, Utc};
use ledger_events::{
    encode_record_into, Actor, ActorKind, Envelope, Hash, Position, Record, StreamId,
};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::StoreError;

/// The columns [`decode_row`] reads, in its order (a macro so that queries can `concat!` it).
macro_rules! event_columns {
    () => {
        "position, stream_id, stream_version, event_id, event_type, schema_version, \
         recorded_at_micros, actor_kind, actor_name, correlation_id, payload, prev_hash, hash"
    };
}
pub(crate) use event_columns;

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

/// Rebuilds and verifies the record of one row of `event_columns!()`. `buf` is scratch space
/// for the record's bytes.
pub(crate) fn decode_row(row: &Row, table: &str, buf: &mut Vec<u8>) -> Result<Record, StoreError> {
    let raw_position: i64 = row
        .try_get(0)
        .map_err(|e| corrupt(table, 0, format!("unreadable position: {e}")))?;
    let position = Position::try_from(raw_position)
        .map_err(|_| corrupt(table, 0, format!("negative position {raw_position}")))?;
    let bad = |problem: String| corrupt(table, position, problem);
    let field = |e: tokio_postgres::Error| bad(format!("unreadable column: {e}"));

    let stream_id: &str = row.try_get(1).map_err(field)?;
    let stream_id = StreamId::parse(stream_id).map_err(|e| bad(format!("stream_id: {e}")))?;
    let stream_version: i64 = row.try_get(2).map_err(field)?;
    let stream_version = u64::try_from(stream_version)
        .map_err(|_| bad(format!("negative stream_version {stream_version}")))?;
    let event_id: Uuid = row.try_get(3).map_err(field)?;
    let event_type: &str = row.try_get(4).map_err(field)?;
    let schema_version: i32 = row.try_get(5).map_err(field)?;
    let schema_version = u16::try_from(schema_version)
        .map_err(|_| bad(format!("schema_version {schema_version} out of range")))?;
    let micros: i64 = row.try_get(6).map_err(field)?;
    let recorded_at = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or_else(|| bad(format!("recorded_at_micros {micros} out of range")))?;
    let kind: &str = row.try_get(7).map_err(field)?;
    let kind = parse_actor_kind(kind).ok_or_else(|| bad(format!("actor_kind {kind:?}")))?;
    let actor_name: &str = row.try_get(8).map_err(field)?;
    let actor = Actor::with_kind(kind, actor_name).map_err(|e| bad(format!("actor: {e}")))?;
    let correlation_id: Uuid = row.try_get(9).map_err(field)?;
    let payload: &[u8] = row.try_get(10).map_err(field)?;
    let prev_hash: &[u8] = row.try_get(11).map_err(field)?;
    let prev_hash = hash_of(prev_hash).ok_or_else(|| bad("prev_hash is not 32 bytes".into()))?;
    let hash: &[u8] = row.try_get(12).map_err(field)?;
    let hash = hash_of(hash).ok_or_else(|| bad("hash is not 32 bytes".into()))?;

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
    Ok(Record {
        envelope,
        payload: payload.to_vec(),
    })
}

/// Decodes rows of consecutive positions starting at `first` (a read of the global log):
/// every row must verify, every position must be there, in order, and each record must chain
/// to the one before it. Rows are verified first, so an altered row is named as such even when
/// the alteration also moved it.
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
