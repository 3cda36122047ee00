//! `export --format jsonl|csv [--from POS]`: the log on stdout. JSON lines carry each record's
//! `Record::to_json()` (raw payload included), so `import` rebuilds the log byte for byte;
//! CSV is a summary for spreadsheets. Reads the log without taking its lock.
//!
//! The file store's export is a two-stage pipeline, one core each: a scanning thread reads
//! the segments and checks every CRC, hash and chain link (the same `scan` as `verify`), and
//! hands the record bytes on in chunks through a bounded channel; this thread decodes each
//! record (envelope and payload checked as before), writes its line into a buffer with
//! [`ledger_events::json::write_record_json`] (the bytes serde_json writes for
//! `Record::to_json`, without building a JSON value) and writes the buffer out in large
//! pieces. Order is kept: one scanner, one formatter, a FIFO channel. Memory is bounded by
//! the chunks in flight.

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

/// Record bytes per chunk handed from the scanner to the formatter (about 4,000 records).
const CHUNK_BYTES: usize = 1 << 20;
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

/// Whole records, back to back, and where each ends.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunk {
    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(s, &e)| &self.bytes[s..e])
    }
}

/// The file store's export: scanner thread → this thread (decode, format, write).
fn export_file(
    dir: &std::path::Path,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let from = args.from;
    let format = args.format;
    let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    // Emptied chunks go back to the scanner, so their buffers are allocated once.
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    std::thread::scope(|scope| {
        let scanner = scope.spawn(move || {
            let stopped = || {
                StoreError::io(
                    "writing the export",
                    std::io::Error::other("the writer stopped"),
                )
            };
            let mut chunk = Chunk::default();
            super::scan_file_views(dir, |view| {
                if view.position() < from {
                    return Ok(());
                }
                chunk.bytes.extend_from_slice(view.bytes());
                chunk.ends.push(chunk.bytes.len());
                if chunk.bytes.len() >= CHUNK_BYTES {
                    let next = empty_rx.try_recv().unwrap_or_default();
                    full_tx
                        .send(std::mem::replace(&mut chunk, next))
                        .map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !chunk.ends.is_empty() {
                full_tx.send(chunk).map_err(|_| stopped())?;
            }
            Ok::<_, CliError>(())
        });
        // Moving the receiver in drops it when formatting fails, which stops the scanner.
        let formatted = (move || -> Result<(), CliError> {
            let mut buf = Vec::with_capacity(OUT_BYTES + 64 * 1024);
            for mut chunk in full_rx {
                for bytes in chunk.records() {
                    let view = RecordView::parse(bytes).map_err(StoreError::from)?;
                    let bad = |e: ledger_events::CodecError| StoreError::Corrupt {
                        segment: String::new(),
                        offset: 0,
                        position: view.position(),
                        problem: e.to_string(),
                    };
                    let envelope = view.envelope().map_err(bad)?;
                    write_line(format, &envelope, view.payload(), &mut buf)?;
                    if buf.len() >= OUT_BYTES {
                        write_out(out, &mut buf)?;
                    }
                }
                chunk.bytes.clear();
                chunk.ends.clear();
                // The scanner may be done already: then the buffer is simply dropped.
                let _ = empty_tx.send(chunk);
            }
            write_out(out, &mut buf)?;
            Ok(())
        })();
        let scanned = scanner.join().unwrap_or_else(|_| {
            Err(CliError::Store(StoreError::io(
                "reading the log",
                std::io::Error::other("the scanning thread panicked"),
            )))
        });
        // A failed write stops the scanner too: its error is the one to report.
        formatted.and(scanned)
    })
}
