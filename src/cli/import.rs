//! `import FILE`: replays a JSON-lines export into an empty store. Each record is checked on
//! its own (hash, payload against data) and against the chain (position, previous hash,
//! time), and written verbatim, so the new log's head equals the exported one's.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_events::{Record, RecordJson};

use super::CliError;

/// Options of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A file written by `export --format jsonl`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `import`; the last line is `count=N head_position=P head_hash=<64 hex>` like
/// `verify`'s.
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
            let head = store.head().await?;
            if head.position != 0 {
                return Err(CliError::Refused(format!(
                    "the log in {} is not empty ({} records); import only into an empty \
                     store",
                    log.describe(),
                    head.position
                )));
            }
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
            let mut count = 0u64;
            let mut read = 0u64;
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                read += line.len() as u64 + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |m: String| CliError::Input {
                    flag: "FILE",
                    message: format!("{} line {}: {m}", args.file.display(), n + 1),
                };
                let json: RecordJson =
                    serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
                let record = Record::from_json(&json).map_err(|e| bad(e.to_string()))?;
                store
                    .import_record(&record)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                count += 1;
                bar.set_position(read);
            }
            bar.finish_and_clear();
            let head = store.head().await?;
            writeln!(out, "imported {count} records from {}", args.file.display())?;
            writeln!(
                out,
                "count={count} head_position={} head_hash={}",
                head.position, head.hash
            )?;
            Ok(())
        }
        .await;
        let closed = store.close().await;
        result?;
        Ok(closed?)
    })
}
