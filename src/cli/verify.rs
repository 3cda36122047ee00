//! `license-ledger verify`: the auditor's check of a whole log, read-only.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_events::ChainHead;
use serde::Serialize;

use super::CliError;
use crate::store::file::durable::read_mark;
use crate::store::file::segment::{list_segments, scan, TornTail};
use crate::store::StoreError;

/// Logs larger than this get a progress bar on a terminal (a few seconds of work).
const PROGRESS_BYTES_MIN: u64 = 512 * 1024 * 1024;

/// Arguments of `verify` (the data directory is the global `--data-dir`).
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `verify` found in an intact log.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// Records verified.
    pub count: u64,
    /// Last position.
    pub head_position: u64,
    /// Hash of the last record, hex.
    pub head_hash: String,
    /// Segment files read.
    pub segments: usize,
    /// An interrupted write at the end, proven never acknowledged by the durable-head marker
    /// (the server moves it to `cut/` when it next opens the log).
    pub torn_tail: Option<String>,
}

/// Verifies the log in `data_dir` and writes the report to `out`. In text form the last
/// line is `count=N head_position=P head_hash=<64 hex>` (scripts rely on it).
pub fn run(
    log: &super::backend::Log,
    args: &VerifyArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let report = match log {
        super::backend::Log::File(dir) => verify(dir)?,
        super::backend::Log::Postgres(config) => verify_database(config)?,
    };
    if args.json {
        serde_json::to_writer(&mut *out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        if let Some(torn) = &report.torn_tail {
            writeln!(out, "warning: {torn}")?;
        }
        writeln!(out, "ok: every CRC, record hash and chain link verifies")?;
        writeln!(out, "records: {}", report.count)?;
        if report.segments > 0 {
            writeln!(out, "segments: {}", report.segments)?;
        }
        writeln!(out, "head position: {}", report.head_position)?;
        writeln!(out, "head hash: {}", report.head_hash)?;
        writeln!(
            out,
            "count={} head_position={} head_hash={}",
            report.count, report.head_position, report.head_hash
        )?;
    }
    Ok(())
}

/// Walks the log: frames and CRCs, the hash chain, envelopes and payloads.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, CliError> {
    if !data_dir.is_dir() {
        return Err(CliError::NoDataDir(data_dir.to_owned()));
    }
    // The marker before the segments: beside a running server, everything it names is
    // already on disk when the segments are read.
    let mark = read_mark(data_dir)?;
    let segments = list_segments(data_dir)?;
    let total: u64 = segments
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    let bar = if total >= PROGRESS_BYTES_MIN && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} verifying [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    // The scan (frames, CRCs, chain, durable head) on one thread, decoding every envelope
    // and payload on the others ([`super::pipeline`]).
    let result = super::pipeline::run(
        super::pipeline::CHUNK_BYTES,
        super::pipeline::workers(),
        |push| {
            Ok(scan(
                &segments,
                mark.as_ref(),
                |view, _| push(view.bytes()),
                |done| bar.set_position(done),
            )?)
        },
        decode_chunk,
        |_| Ok(()),
    );
    bar.finish_and_clear();
    let report = result?;
    if let Some(torn) = report.torn.as_ref().filter(|t| !t.is_proven()) {
        // Bytes nothing accounts for: not an error of the records kept, but not provably
        // harmless either, so never a clean exit.
        return Err(CliError::Damaged(StoreError::Corrupt {
            segment: torn.segment.display().to_string(),
            offset: torn.valid_len,
            position: torn.after + 1,
            problem: format!(
                "{}; `serve` would move these bytes to {}/cut/ and go on without them",
                torn.describe(),
                data_dir.display()
            ),
        }));
    }
    let ChainHead { position, hash } = report.head;
    Ok(VerifyReport {
        count: report.count,
        head_position: position,
        head_hash: hash.to_string(),
        segments: segments.len(),
        torn_tail: report.torn.as_ref().map(TornTail::describe),
    })
}

/// Decodes every envelope and payload of a chunk.
fn decode_chunk(chunk: &mut super::pipeline::Chunk) -> Result<(), CliError> {
    for view in chunk.views() {
        let view = view?;
        let bad = |e: ledger_events::CodecError| super::pipeline::undecodable(&view, e);
        view.envelope().map_err(bad)?;
        view.event().map_err(bad)?;
    }
    Ok(())
}

/// Walks a PostgreSQL log in one snapshot ([`super::pipeline::run_database`]): every row
/// read back into its record bytes (its hash and its copies checked against them), every
/// chain link, every payload decoded, the head row against the last record.
fn verify_database(
    config: &crate::store::postgres::PgStoreConfig,
) -> Result<VerifyReport, CliError> {
    let scan = super::pipeline::run_database(
        config,
        |envelope, payload, _| {
            ledger_events::Event::decode_payload(
                &envelope.event_type,
                envelope.schema_version,
                payload,
            )
            .map_err(|e| StoreError::Corrupt {
                segment: "PostgreSQL".into(),
                offset: 0,
                position: envelope.position,
                problem: e.to_string(),
            })?;
            Ok(())
        },
        |_| Ok(()),
    )?;
    Ok(VerifyReport {
        count: scan.count,
        head_position: scan.head.position,
        head_hash: scan.head.hash.to_string(),
        segments: 0,
        torn_tail: None,
    })
}
