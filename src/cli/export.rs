//! `export --format jsonl|csv [--from POS]`: the log on stdout. JSON lines carry each record's
//! `Record::to_json()` (raw payload included), so `import` rebuilds the log byte for byte;
//! CSV is a summary for spreadsheets. Reads the log without taking its lock.

use std::io::Write;

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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Runs `export`.
pub fn run(
    log: &super::backend::Log,
    args: &ExportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let io = |e: std::io::Error| StoreError::io("writing the export", e);
    if args.format == Format::Csv {
        writeln!(
            out,
            "position,stream_id,stream_version,event_type,recorded_at,actor,hash"
        )?;
    }
    super::backend::scan_log(log, |record| {
        let e = &record.envelope;
        if e.position < args.from {
            return Ok(());
        }
        match args.format {
            Format::Jsonl => {
                let json = record.to_json()?;
                serde_json::to_writer(&mut *out, &json).map_err(|e| io(e.into()))?;
                writeln!(out).map_err(io)?;
            }
            Format::Csv => {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    e.position,
                    csv_field(e.stream_id.as_str()),
                    e.stream_version,
                    csv_field(&e.event_type),
                    e.recorded_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    csv_field(&e.actor.name),
                    e.hash
                )
                .map_err(io)?;
            }
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}
