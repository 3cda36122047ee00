//! `import FILE`: replays a JSON-lines export into a store. Each record is checked on its own
//! (hash, payload against data) and against the chain (position, previous hash, time), and
//! written verbatim, so the new log's head equals the exported one's.
//!
//! The file is read as a stream, `--batch` records at a time ([`IMPORT_BATCH`] by default),
//! so memory stays bounded whatever its length; a few threads parse it while the store writes
//! the batches before. Each batch is stored whole or not at all (`import_records`), and the
//! next ones are handed to the store while those before are being made durable; a batch
//! refused (or following one refused) stores nothing, and nothing after it is sent. An import
//! that was interrupted can be run again: the records the store already holds are compared
//! with the file's (each must be the very same record) and skipped, and the import goes on
//! after them. A store holding anything else is refused.
//!
//! Into an empty PostgreSQL store the file goes in as one transaction instead
//! ([`crate::store::postgres::BulkImport`]: the unique indexes built once at the end, not
//! kept up row by row): all or nothing, so an interrupted import stores nothing and is simply
//! run again.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_events::{Record, RecordJson};
use tokio::sync::mpsc;

use super::backend::Opened;
use super::CliError;

/// Records written per batch by default (one transaction on PostgreSQL, one sync round on
/// the file store).
pub const IMPORT_BATCH: usize = 10_000;

/// Batches handed to the store before waiting for the oldest one's answer: the file store
/// then syncs several in one round while the next ones are parsed and checked.
const IN_FLIGHT_MAX: usize = 3;

/// Options of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A file written by `export --format jsonl`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Records per batch: each is stored whole or not at all, in one transaction
    /// (PostgreSQL) or one sync (file store).
    #[arg(long, value_name = "N", default_value_t = IMPORT_BATCH, value_parser = batch_size)]
    pub batch: usize,
}

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=crate::store::IMPORT_BATCH_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of records from 1 to {}",
            crate::store::IMPORT_BATCH_MAX
        )),
    }
}

/// Records read from the file, with where they come from.
struct Parsed {
    /// Line number of each record (blank lines are skipped).
    lines: Vec<usize>,
    records: Vec<Record>,
    /// Bytes of the file read up to the end of this batch.
    read: u64,
}

/// Runs `import`; the last line is `count=N head_position=P head_hash=<64 hex>` like
/// `verify`'s, `N` counting the records imported now and those already present.
pub fn run(
    log: &super::backend::Log,
    args: &ImportArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let file = std::fs::File::open(&args.file).map_err(|e| CliError::Input {
        flag: "FILE",
        message: format!(
            "cannot open {}: {e}; pass a file written by `export --format jsonl`",
            args.file.display()
        ),
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let store = log
            .open(
                Arc::new(crate::clock::SystemClock),
                "stop it, or import into another --data-dir",
            )
            .await?;
        let result = async {
            let counts = import(&store, log, args, file, size).await?;
            Ok::<_, CliError>((counts, store.head().await?))
        }
        .await;
        let closed = store.close().await;
        let ((imported, present), head) = result?;
        closed?;
        let count = imported + present;
        if present > 0 {
            writeln!(
                out,
                "imported {imported} records from {} ({present} were already there)",
                args.file.display()
            )?;
        } else {
            writeln!(out, "imported {count} records from {}", args.file.display())?;
        }
        writeln!(
            out,
            "count={count} head_position={} head_hash={}",
            head.position, head.hash
        )?;
        Ok(())
    })
}

/// Imports the file's records after those the store holds; returns how many were imported
/// and how many were already there.
async fn import(
    store: &Opened,
    log: &super::backend::Log,
    args: &ImportArgs,
    file: std::fs::File,
    size: u64,
) -> Result<(u64, u64), CliError> {
    let path = args.file.as_path();
    let present = store.head().await?.position;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {bytes}/{total_bytes} ({eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    // Two batches parsed ahead at most: memory is bounded by the batch size.
    let (tx, mut rx) = mpsc::channel(2);
    let reader = {
        let path = path.to_owned();
        let batch = args.batch;
        std::thread::Builder::new()
            .name("import-reader".into())
            .spawn(move || read_batches(file, &path, batch, &tx))?
    };
    let mut skipped = 0u64;
    let mut imported = 0u64;
    // The batches handed to the store and not yet answered, oldest first.
    let mut in_flight: std::collections::VecDeque<InFlight> =
        std::collections::VecDeque::with_capacity(IN_FLIGHT_MAX + 1);
    let result = match store {
        Opened::Postgres(pg) if present == 0 => bulk(pg, path, &mut rx, &bar).await,
        _ => {
            async {
                while let Some(batch) = rx.recv().await {
                    let mut batch: Parsed = match batch {
                        Ok(batch) => batch,
                        Err(e) => {
                            while let Some(previous) = in_flight.pop_front() {
                                imported += previous.wait(path, imported, skipped).await?;
                            }
                            return Err(e);
                        }
                    };
                    let here = usize::try_from(present - skipped)
                        .unwrap_or(usize::MAX)
                        .min(batch.records.len());
                    if here > 0 {
                        same_as_stored(store, log, path, &batch.lines, &batch.records[..here])
                            .await?;
                        skipped += here as u64;
                    }
                    let new = batch.records.split_off(here);
                    if let (Some(first), Some(last)) = (new.first(), new.last()) {
                        let sent = InFlight {
                            line: batch.lines[here],
                            first: first.envelope.position,
                            last: last.envelope.position,
                            read: batch.read,
                            count: new.len() as u64,
                            answer: store.submit_import(&new).await,
                        };
                        // Refused at once: the batches before it are answered first, then its error.
                        let refused_now = sent.answer.is_err();
                        in_flight.push_back(sent);
                        while in_flight.len() > IN_FLIGHT_MAX
                            || (refused_now && !in_flight.is_empty())
                        {
                            if let Some(previous) = in_flight.pop_front() {
                                let read = previous.read;
                                imported += previous.wait(path, imported, skipped).await?;
                                bar.set_position(read);
                            }
                        }
                    } else {
                        bar.set_position(batch.read);
                    }
                }
                while let Some(previous) = in_flight.pop_front() {
                    let read = previous.read;
                    imported += previous.wait(path, imported, skipped).await?;
                    bar.set_position(read);
                }
                if skipped < present {
                    return Err(CliError::Refused(format!(
                        "the log in {} holds {present} records, {} only {skipped}: it is not this \
                 file's log; import only into an empty store or one holding the start of \
                 this file",
                        log.describe(),
                        path.display()
                    )));
                }
                Ok((imported, skipped))
            }
            .await
        }
    };
    // On an error the reader stops at its next send (the receiver is gone).
    drop(rx);
    bar.finish_and_clear();
    let read = reader.join();
    let counts = result?;
    read.map_err(|_| CliError::Failed("the import's reader thread panicked".into()))?;
    Ok(counts)
}

/// What a refused import into an empty PostgreSQL store adds to its error.
const NOTHING_STORED: &str = "nothing of the file was stored (an import into an empty \
     PostgreSQL store is one transaction; run it again once the file is fixed)";

/// Imports into an empty PostgreSQL store as one transaction, the unique indexes built at
/// its end ([`crate::store::postgres::BulkImport`]): every record or none. Returns how many
/// were imported.
async fn bulk(
    pg: &crate::store::postgres::PgStore,
    path: &Path,
    rx: &mut mpsc::Receiver<Result<Parsed, CliError>>,
    bar: &ProgressBar,
) -> Result<(u64, u64), CliError> {
    let nothing_stored = |e: crate::store::StoreError, what: String| CliError::Input {
        flag: "FILE",
        message: format!("{}: {what}; {NOTHING_STORED}: {e}", path.display()),
    };
    let mut import: Option<crate::store::postgres::BulkImport> = None;
    let mut imported = 0u64;
    // An error returns early: dropping `import` closes its connection, which rolls it back.
    while let Some(batch) = rx.recv().await {
        let batch = batch.map_err(|e| match e {
            CliError::Input { flag, message } => CliError::Input {
                flag,
                message: format!("{message}; {NOTHING_STORED}"),
            },
            other => other,
        })?;
        let (Some(first), Some(last)) = (batch.records.first(), batch.records.last()) else {
            continue;
        };
        let writing = match &mut import {
            Some(writing) => writing,
            None => import.insert(pg.begin_bulk_import().await?),
        };
        writing.write(&batch.records).await.map_err(|e| {
            nothing_stored(
                e,
                format!(
                    "line {}: the batch of records {} to {} was refused",
                    batch.lines.first().copied().unwrap_or(0),
                    first.envelope.position,
                    last.envelope.position
                ),
            )
        })?;
        imported += batch.records.len() as u64;
        bar.set_position(batch.read);
    }
    if let Some(writing) = import {
        writing
            .finish()
            .await
            .map_err(|e| nothing_stored(e, "the import was not committed".into()))?;
    }
    Ok((imported, 0))
}

/// A batch handed to the store: where it comes from, and the answer to come.
struct InFlight {
    /// The file's line of its first record.
    line: usize,
    first: ledger_events::Position,
    last: ledger_events::Position,
    /// Bytes of the file read up to its end.
    read: u64,
    count: u64,
    /// The store's answer to come, or why it refused the batch at once.
    answer: Result<crate::store::PendingImport, crate::store::StoreError>,
}

impl InFlight {
    /// Waits for the store's answer: the records imported, or why the batch was refused.
    async fn wait(self, path: &Path, imported: u64, skipped: u64) -> Result<u64, CliError> {
        let answer = match self.answer {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        answer.map(|_| self.count).map_err(|e| CliError::Input {
            flag: "FILE",
            message: format!(
                "{} line {}: the batch of records {} to {} was refused, nothing of it or after \
                 it stored ({imported} records imported before it, {skipped} already there; \
                 run the import again once the file is fixed): {e}",
                path.display(),
                self.line,
                self.first,
                self.last
            ),
        })
    }
}

/// Checks that the store holds exactly `records` (read from the file at `lines`) at their
/// positions: the part of the file a previous, interrupted import stored already.
async fn same_as_stored(
    store: &Opened,
    log: &super::backend::Log,
    path: &Path,
    lines: &[usize],
    records: &[Record],
) -> Result<(), CliError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let mut stored: Vec<Record> = Vec::with_capacity(records.len());
    let mut next = first.envelope.position;
    while stored.len() < records.len() {
        let want = records.len() - stored.len();
        let batch = store.store().read_all(next, want).await?;
        let Some(last) = batch.last() else {
            break;
        };
        next = last.envelope.position + 1;
        stored.extend(batch);
    }
    for (i, record) in records.iter().enumerate() {
        let differs = |there: String| {
            CliError::Refused(format!(
                "{} line {}: the record at position {} is not the one the log in {} holds \
             ({there}); that store holds another log: import only into an empty store or one \
             holding the start of this file",
                path.display(),
                lines[i],
                record.envelope.position,
                log.describe()
            ))
        };
        match stored.get(i) {
            Some(s) if s == record => {}
            Some(s) => {
                return Err(differs(format!(
                    "position {} with hash {} there, hash {} in the file",
                    s.envelope.position, s.envelope.hash, record.envelope.hash
                )))
            }
            None => return Err(differs("nothing there".into())),
        }
    }
    Ok(())
}

/// Reads the file and parses it (a batch's lines split between a few threads), sending
/// `batch` records at a time; stops at the first error (sent on) or when the receiver is
/// gone.
fn read_batches(
    file: std::fs::File,
    path: &Path,
    batch: usize,
    tx: &mpsc::Sender<Result<Parsed, CliError>>,
) {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut read = 0u64;
    let mut n = 0usize;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    loop {
        let mut lines: Vec<(usize, String)> = Vec::with_capacity(batch);
        while lines.len() < batch {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(len) => {
                    n += 1;
                    read += len as u64;
                    if !line.trim().is_empty() {
                        lines.push((n, line));
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(CliError::Input {
                        flag: "FILE",
                        message: format!("{} line {}: {e}", path.display(), n + 1),
                    }));
                    return;
                }
            }
        }
        if lines.is_empty() {
            return;
        }
        let parsed = parse(&lines, path, workers).map(|records| Parsed {
            lines: lines.iter().map(|(n, _)| *n).collect(),
            records,
            read,
        });
        let failed = parsed.is_err();
        if tx.blocking_send(parsed).is_err() || failed {
            return;
        }
    }
}

/// Parses numbered lines on `workers` threads; the first bad line (in file order) is the
/// error.
fn parse(lines: &[(usize, String)], path: &Path, workers: usize) -> Result<Vec<Record>, CliError> {
    let one = |(n, line): &(usize, String)| {
        serde_json::from_str::<RecordJson>(line.trim())
            .map_err(|e| e.to_string())
            .and_then(|json| Record::from_json_owned(json).map_err(|e| e.to_string()))
            .map_err(|m| CliError::Input {
                flag: "FILE",
                message: format!("{} line {n}: {m}", path.display()),
            })
    };
    let chunk = lines.len().div_ceil(workers.max(1)).max(1);
    let parts: Vec<Result<Vec<Record>, CliError>> = std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(one).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError::Failed("a parsing thread panicked".into())))
            })
            .collect()
    });
    let mut records = Vec::with_capacity(lines.len());
    for part in parts {
        records.extend(part?);
    }
    Ok(records)
}
