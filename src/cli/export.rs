//! `export --format jsonl|csv [--from POS]`: the log on stdout. JSON lines carry each record's
//! `Record::to_json()` (raw payload included), so `import` rebuilds the log byte for byte;
//! CSV is a summary for spreadsheets. Reads the log without taking its lock.
//!
//! The file store's export runs on [`super::pipeline`]: a scanning thread checks every CRC,
//! hash and chain link (the same `scan` as `verify`) and hands the record bytes on in
//! chunks; formatter threads, one per core, decode each record (envelope and payload
//! checked as before) and write its line with [`ledger_events::json::write_record_json`]
//! (the bytes serde_json writes for `Record::to_json`, without building a JSON value); this
//! thread writes the chunks out in log order. Memory is bounded by the recycled chunks.

use std::io::Write;

use ledger_events::Envelope;

use super::{pipeline, CliError};
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
        super::backend::Log::Postgres(config) => {
            let (from, format) = (args.from, args.format);
            pipeline::run_database(
                config,
                |envelope, payload, out| {
                    if envelope.position >= from {
                        write_line(format, envelope, payload, out)?;
                    }
                    Ok(())
                },
                |lines| {
                    out.write_all(lines)
                        .map_err(|e| StoreError::io("writing the export", e))?;
                    Ok(())
                },
            )?;
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

/// Decodes and formats every record of `chunk` into its `out`.
fn format_chunk(chunk: &mut pipeline::Chunk, format: Format) -> Result<(), CliError> {
    let mut out = std::mem::take(&mut chunk.out);
    for view in chunk.views() {
        let view = view?;
        let envelope = view
            .envelope()
            .map_err(|e| pipeline::undecodable(&view, e))?;
        write_line(format, &envelope, view.payload(), &mut out)?;
    }
    chunk.out = out;
    Ok(())
}

/// The file store's export: the scanner → formatters, one per core → this thread, which
/// writes the chunks out in log order ([`pipeline`]).
fn export_file(
    dir: &std::path::Path,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    export_in_chunks(dir, args, out, pipeline::CHUNK_BYTES)
}

/// [`export_file`] with chunks of about `chunk_bytes` of records.
fn export_in_chunks(
    dir: &std::path::Path,
    args: &ExportArgs,
    out: &mut impl Write,
    chunk_bytes: usize,
) -> Result<(), CliError> {
    let (from, format) = (args.from, args.format);
    pipeline::run(
        chunk_bytes,
        pipeline::workers(),
        |push| {
            super::scan_file_views(dir, |view| {
                if view.position() < from {
                    return Ok(());
                }
                push(view.bytes())
            })
        },
        |chunk| format_chunk(chunk, format),
        |chunk| Ok(write_out(out, &mut chunk.out)?),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::file_log;

    /// Chunks of one or two records, formatted by several threads, come out in log order:
    /// byte for byte what one chunk for the whole log gives, every position once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_formatted_side_by_side_are_written_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        file_log(dir.path(), 300, &["v"]).await;
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
