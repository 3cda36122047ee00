//! `export --format jsonl|csv [--from POS]`: the log on stdout. JSON lines carry each record's
//! `Record::to_json()` (raw payload included), so `import` rebuilds the log byte for byte;
//! CSV is a summary for spreadsheets. Reads the log without taking its lock.
//!
//! The file store's export is a three-stage pipeline: a scanning thread reads the segments
//! and checks every CRC, hash and chain link (the same `scan` as `verify`), and hands the
//! record bytes on in numbered chunks through a bounded channel; formatter threads, one per
//! core, each take a chunk, decode its records (envelope and payload checked as before) and
//! write their lines with [`ledger_events::json::write_record_json`] (the bytes serde_json
//! writes for `Record::to_json`, without building a JSON value); this thread writes the
//! chunks out in their order (a chunk formatted early waits for the ones before it). Order
//! is kept by the chunk numbers; memory is bounded by the chunks, which are recycled and
//! never more than [`chunks_in_flight`].

use std::io::Write;
use std::sync::mpsc;

use ledger_events::{Envelope, Record, RecordView};

use super::CliError;
use crate::store::StoreError;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON record per line (what `import` reads).
    Jsonl,
    /// position,stream_id,stream_version,event_type,recorded_at,actor,hash
    Csv,
}

/// Options of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// jsonl (replayable with `import`) or csv.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Format,
    /// First position to write [default: 1].
    #[arg(long, value_name = "POS", default_value_t = 1)]
    pub from: u64,
}

/// Record bytes per chunk handed from the scanner to a formatter (about 1,000 records; the
/// chunk's lines take about three times that).
const CHUNK_BYTES: usize = 1 << 18;
/// Chunks queued between the stages: enough to ride out a slow write, little memory.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Output written in pieces of about this size (a JSON line is about 1 KiB).
const OUT_BYTES: usize = 1 << 20;

const CSV_HEADER: &str = "position,stream_id,stream_version,event_type,recorded_at,actor,hash";

fn write_csv_field(out: &mut Vec<u8>, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends one output line for the record to `out`.
fn write_line(
    format: Format,
    envelope: &Envelope,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    match format {
        Format::Jsonl => {
            let event = ledger_events::Event::decode_payload(
                &envelope.event_type,
                envelope.schema_version,
                payload,
            )?;
            ledger_events::json::write_record_json(envelope, payload, &event, out)?;
            out.push(b'\n');
        }
        Format::Csv => {
            let io = |e| StoreError::io("writing the export", e);
            write!(out, "{},", envelope.position).map_err(io)?;
            write_csv_field(out, envelope.stream_id.as_str());
            write!(out, ",{},", envelope.stream_version).map_err(io)?;
            write_csv_field(out, &envelope.event_type);
            out.push(b',');
            out.extend_from_slice(
                envelope
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .as_bytes(),
            );
            out.push(b',');
            write_csv_field(out, &envelope.actor.name);
            writeln!(out, ",{}", envelope.hash).map_err(io)?;
        }
    }
    Ok(())
}

/// Runs `export`.
pub fn run(
    log: &super::backend::Log,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if args.format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    match log {
        super::backend::Log::File(dir) => export_file(dir, args, out)?,
        super::backend::Log::Postgres(_) => {
            let mut buf = Vec::with_capacity(OUT_BYTES + 64 * 1024);
            super::backend::scan_log(log, |record: Record| {
                if record.envelope.position < args.from {
                    return Ok(());
                }
                write_line(args.format, &record.envelope, &record.payload, &mut buf)?;
                if buf.len() >= OUT_BYTES {
                    write_out(out, &mut buf)?;
                }
                Ok(())
            })?;
            write_out(out, &mut buf)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn write_out(out: &mut impl Write, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    out.write_all(buf)
        .map_err(|e| StoreError::io("writing the export", e))?;
    buf.clear();
    Ok(())
}

/// Whole records, back to back, where each ends, and their formatted lines.
#[derive(Default)]
struct Chunk {
    /// Its place in the log: chunks are written out in this order.
    seq: u64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// The lines the records became (filled by a formatter).
    out: Vec<u8>,
}

impl Chunk {
    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(s, &e)| &self.bytes[s..e])
    }

    /// Decodes and formats every record into `out`.
    fn format(&mut self, format: Format) -> Result<(), CliError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for bytes in self.records() {
            let view = RecordView::parse(bytes).map_err(StoreError::from)?;
            let bad = |e: ledger_events::CodecError| StoreError::Corrupt {
                segment: String::new(),
                offset: 0,
                position: view.position(),
                problem: e.to_string(),
            };
            let envelope = view.envelope().map_err(bad)?;
            write_line(format, &envelope, view.payload(), &mut out)?;
        }
        self.out = out;
        Ok(())
    }
}

/// Chunks in existence at once: each is with the scanner, queued, with a formatter or
/// waiting to be written; they are recycled, so memory is bounded by their number.
fn chunks_in_flight(formatters: usize) -> usize {
    2 * formatters + CHUNKS_IN_FLIGHT
}

/// The file store's export: a scanner thread → formatter threads, one per core (decode,
/// format) → this thread, which writes the chunks out in log order.
fn export_file(
    dir: &std::path::Path,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    export_in_chunks(dir, args, out, CHUNK_BYTES)
}

/// [`export_file`] with chunks of about `chunk_bytes` of records.
fn export_in_chunks(
    dir: &std::path::Path,
    args: &ExportArgs,
    out: &mut impl Write,
    chunk_bytes: usize,
) -> Result<(), CliError> {
    let from = args.from;
    let format = args.format;
    let formatters = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    // Shared by the formatters; the last one to stop drops it, which stops the scanner.
    let full_rx = std::sync::Arc::new(std::sync::Mutex::new(full_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<Chunk, CliError>>();
    // The writer hands written chunks back to the scanner, so their buffers are allocated
    // once and no more than `chunks_in_flight` exist: the scanner waits for one.
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    for _ in 0..chunks_in_flight(formatters) {
        let _ = empty_tx.send(Chunk::default());
    }
    std::thread::scope(|scope| {
        let scanner = scope.spawn(move || {
            let stopped = || {
                StoreError::io(
                    "writing the export",
                    std::io::Error::other("the writer stopped"),
                )
            };
            let mut seq = 0;
            let mut chunk = empty_rx.recv().map_err(|_| stopped())?;
            super::scan_file_views(dir, |view| {
                if view.position() < from {
                    return Ok(());
                }
                chunk.bytes.extend_from_slice(view.bytes());
                chunk.ends.push(chunk.bytes.len());
                if chunk.bytes.len() >= chunk_bytes {
                    let next = empty_rx.recv().map_err(|_| stopped())?;
                    chunk.seq = seq;
                    seq += 1;
                    full_tx
                        .send(std::mem::replace(&mut chunk, next))
                        .map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !chunk.ends.is_empty() {
                chunk.seq = seq;
                full_tx.send(chunk).map_err(|_| stopped())?;
            }
            Ok::<_, CliError>(())
        });
        for _ in 0..formatters {
            let (full_rx, done_tx) = (full_rx.clone(), done_tx.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next chunk.
                let next = full_rx.lock().map(|rx| rx.recv());
                let Ok(Ok(mut chunk)) = next else { return };
                let formatted = chunk.format(format).map(|()| chunk);
                let failed = formatted.is_err();
                if done_tx.send(formatted).is_err() || failed {
                    return;
                }
            });
        }
        drop((full_rx, done_tx));
        // Moving the receivers in drops them when writing fails, which stops the others.
        let written = (move || -> Result<(), CliError> {
            let mut waiting = std::collections::BTreeMap::new();
            let mut next = 0;
            for done in done_rx {
                let chunk = done?;
                waiting.insert(chunk.seq, chunk);
                while let Some(mut chunk) = waiting.remove(&next) {
                    write_out(out, &mut chunk.out)?;
                    chunk.bytes.clear();
                    chunk.ends.clear();
                    next += 1;
                    // The scanner may be done already: then the buffer is simply dropped.
                    let _ = empty_tx.send(chunk);
                }
            }
            if !waiting.is_empty() {
                // A formatter stopped without a word (it panicked): chunks would be missing.
                return Err(CliError::Store(StoreError::io(
                    "formatting the export",
                    std::io::Error::other("a formatting thread stopped"),
                )));
            }
            Ok(())
        })();
        let scanned = scanner.join().unwrap_or_else(|_| {
            Err(CliError::Store(StoreError::io(
                "reading the log",
                std::io::Error::other("the scanning thread panicked"),
            )))
        });
        // A failed write stops the scanner too: its error is the one to report.
        written.and(scanned)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::conformance::{new_event, start_time, stream};
    use crate::store::file::{FileStore, FileStoreConfig};
    use crate::store::{EventStore, ExpectedVersion};

    /// Chunks of one or two records, formatted by several threads, come out in log order:
    /// byte for byte what one chunk for the whole log gives, every position once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_formatted_side_by_side_are_written_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(
            FileStoreConfig::new(dir.path()),
            Arc::new(ManualClock::new(start_time())),
        )
        .await
        .unwrap();
        for i in 0..300 {
            store
                .append(&stream("v"), ExpectedVersion::Any, vec![new_event(i)])
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        for (format, from) in [(Format::Jsonl, 1), (Format::Csv, 1), (Format::Jsonl, 37)] {
            let args = ExportArgs { format, from };
            let mut whole = Vec::new();
            export_in_chunks(dir.path(), &args, &mut whole, usize::MAX).unwrap();
            let mut chunked = Vec::new();
            export_in_chunks(dir.path(), &args, &mut chunked, 400).unwrap();
            let lines: Vec<&str> = std::str::from_utf8(&chunked).unwrap().lines().collect();
            assert_eq!(lines.len() as u64, 301 - from, "{format:?} from {from}");
            for (i, line) in lines.iter().enumerate() {
                let position: u64 = match format {
                    Format::Jsonl => {
                        serde_json::from_str::<ledger_events::RecordJson>(line)
                            .unwrap()
                            .position
                    }
                    Format::Csv => line.split(',').next().unwrap().parse().unwrap(),
                };
                assert_eq!(position, from + i as u64, "{format:?}");
            }
            assert!(chunked == whole, "{format:?}: chunked output differs");
        }
    }
}
