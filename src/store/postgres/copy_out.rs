//! The whole log in one snapshot, as one stream: what `verify` and `export` read.
//!
//! A read-only `REPEATABLE READ` transaction reads the head row, then streams every row of
//! `ledger_events` by position with a binary `COPY ... TO STDOUT`: one statement, no page
//! boundaries, the server sending while the client checks. The tuples are handed on as
//! PostgreSQL sent them ([`rows::CopyTuple`] reads them; [`rows::decode_columns`] checks each
//! as every read does); the head row comes back for the caller to compare with the last
//! record (one snapshot, so the two must agree even beside a running server).

use futures_util::StreamExt;

use super::conn::{connect_spawned, pg_config, pg_error, timed};
use super::rows::{all_event_columns, decode_head, StoredHead, READ_HEAD_ROW};
use super::{migrate, PgStoreConfig};
use crate::store::StoreError;

/// The signature that opens PostgreSQL's binary copy format.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Every row of the log, by position: `COPY` takes no parameters, so the statement is fixed.
const COPY_LOG: &str = concat!(
    "COPY (SELECT ",
    all_event_columns!(),
    " FROM ledger_events ORDER BY position) TO STDOUT (FORMAT binary)"
);

/// Streams the whole log in one snapshot, calling `tuple` with each row's bytes (a
/// [`super::rows::CopyTuple`] of `all_event_columns!()`) in position order; returns the head
/// row of that snapshot. Applies pending migrations first, as opening the store does (a
/// fresh schema is an empty log).
pub(crate) async fn copy_log(
    config: &PgStoreConfig,
    mut tuple: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<StoredHead, StoreError> {
    let schema = config.schema_name().to_owned();
    let pg = pg_config(&config.url, &schema, config.connect_timeout)?;
    migrate(config).await?;
    let client = connect_spawned(&pg, config.connect_timeout, "copying the log").await?;
    let timeout = config.op_timeout;
    let (begin, read_head, copy) = (
        "beginning the snapshot",
        "reading the log head",
        "copying the log",
    );
    timed(timeout, begin, async {
        let sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        client
            .batch_execute(sql)
            .await
            .map_err(|e| pg_error(begin, &e))
    })
    .await?;
    let rows = timed(timeout, read_head, async {
        client
            .query(READ_HEAD_ROW, &[])
            .await
            .map_err(|e| pg_error(read_head, &e))
    })
    .await?;
    let head = decode_head(&rows, &format!("{schema}.ledger_head"))?;
    let stream = timed(timeout, copy, async {
        client
            .copy_out(COPY_LOG)
            .await
            .map_err(|e| pg_error(copy, &e))
    })
    .await?;
    let mut stream = std::pin::pin!(stream);
    let table = format!("{schema}.ledger_events");
    let mut parser = TupleParser::default();
    // Each message within the timeout: a stalled server is an outage, a long log is not.
    while let Some(message) = timed(timeout, copy, async { Ok(stream.next().await) }).await? {
        let message = message.map_err(|e| pg_error(copy, &e))?;
        parser.feed(&message, &mut tuple, &table)?;
    }
    parser.finish(&table)?;
    // Read-only: ending it is all the transaction needs.
    let _ = tokio::time::timeout(timeout, client.batch_execute("COMMIT")).await;
    Ok(head)
}

/// Splits the bytes of a binary copy into tuples, whatever the message boundaries.
#[derive(Default)]
struct TupleParser {
    /// Bytes received and not yet handed on (a tuple cut by a message boundary).
    pending: Vec<u8>,
    header_read: bool,
    trailer_read: bool,
}

impl TupleParser {
    fn feed(
        &mut self,
        bytes: &[u8],
        tuple: &mut impl FnMut(&[u8]) -> Result<(), StoreError>,
        table: &str,
    ) -> Result<(), StoreError> {
        let bad = |problem: &str| super::rows::corrupt(table, 0, format!("the copy {problem}"));
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        if !self.header_read {
            // Signature, flags, then the header extension's length and bytes.
            let Some(len) = self.pending.get(15..19) else {
                return Ok(());
            };
            if !self.pending.starts_with(SIGNATURE) {
                return Err(bad("does not start with the binary format's signature"));
            }
            let extension = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if self.pending.len() < 19 + extension {
                return Ok(());
            }
            at = 19 + extension;
            self.header_read = true;
        }
        while let Some(len) = super::rows::CopyTuple::measure(&self.pending[at..]) {
            if self.trailer_read {
                return Err(bad("goes on after its trailer"));
            }
            if len == 2 {
                self.trailer_read = true;
            } else {
                tuple(&self.pending[at..at + len])?;
            }
            at += len;
        }
        self.pending.drain(..at);
        Ok(())
    }

    fn finish(&self, table: &str) -> Result<(), StoreError> {
        if !self.trailer_read || !self.pending.is_empty() {
            return Err(super::rows::corrupt(
                table,
                0,
                "the copy ended without its trailer".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuple of two fields, the second NULL.
    fn tuple(value: &[u8]) -> Vec<u8> {
        let mut t = 2i16.to_be_bytes().to_vec();
        t.extend_from_slice(&(value.len() as i32).to_be_bytes());
        t.extend_from_slice(value);
        t.extend_from_slice(&(-1i32).to_be_bytes());
        t
    }

    /// Tuples cut anywhere by message boundaries come out whole, in order, once each.
    #[test]
    fn tuples_split_across_messages_are_handed_on_whole() {
        let mut copy = SIGNATURE.to_vec();
        copy.extend_from_slice(&0u32.to_be_bytes());
        copy.extend_from_slice(&3u32.to_be_bytes());
        copy.extend_from_slice(b"ext");
        let tuples: Vec<Vec<u8>> = (0..5u8).map(|i| tuple(&vec![i; i as usize * 7])).collect();
        for t in &tuples {
            copy.extend_from_slice(t);
        }
        copy.extend_from_slice(&(-1i16).to_be_bytes());
        for cut in [1, 2, 5, 16, 19, 23, copy.len()] {
            let mut parser = TupleParser::default();
            let mut seen = Vec::new();
            for piece in copy.chunks(cut) {
                let mut keep = |t: &[u8]| {
                    seen.push(t.to_vec());
                    Ok(())
                };
                parser.feed(piece, &mut keep, "t").unwrap();
            }
            parser.finish("t").unwrap();
            assert_eq!(seen, tuples, "messages of {cut} bytes");
        }
        // Cut short: no trailer.
        let mut parser = TupleParser::default();
        parser
            .feed(&copy[..copy.len() - 3], &mut |_| Ok(()), "t")
            .unwrap();
        assert!(parser.finish("t").is_err());
        // A wrong signature is refused.
        let mut parser = TupleParser::default();
        let mut wrong = copy.clone();
        wrong[0] = b'X';
        assert!(parser.feed(&wrong, &mut |_| Ok(()), "t").is_err());
    }
}
