//! `license-ledger repair --truncate-after P [--yes]`: cut the file store's log back to the
//! end of the append ending at position P, after a failed `fdatasync` left unacknowledged
//! writes half on disk (see `store::file::repair`). Without `--yes` it only says what it
//! would cut. Needs the server stopped (the log's `LOCK`).

use std::io::Write;

use ledger_events::Position;

use super::backend::Log;
use super::CliError;
use crate::store::file::repair::{cut_after, Cut};
use crate::store::StoreError;

/// Arguments of `repair`.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The last position to keep: the durable head the server logged when it stopped taking
    /// appends ("refusing appends until the log is reopened", field `durable_head`).
    #[arg(long, value_name = "POSITION")]
    pub truncate_after: Position,
    /// Make the cut (without it, print what would be cut and change nothing).
    #[arg(long)]
    pub yes: bool,
}

/// Runs `repair` on the file store's log.
pub fn run(log: &Log, args: &RepairArgs, out: &mut impl Write) -> Result<(), CliError> {
    let Log::File(dir) = log else {
        return Err(CliError::Refused(
            "repair is for the file store: PostgreSQL commits an append whole or not at all".into(),
        ));
    };
    if !dir.is_dir() {
        return Err(CliError::NoDataDir(dir.clone()));
    }
    let p = args.truncate_after;
    let cut = cut_after(dir, p, args.yes).map_err(|e| match e {
        StoreError::Locked(_) => CliError::Refused(format!(
            "the log in {} is open by a running server: stop it first",
            dir.display()
        )),
        e @ StoreError::Corrupt { .. } => CliError::Failed(format!(
            "the log is damaged at or before position {p}, so it cannot be kept up to there: \
             {e}; cut after an earlier position, or restore from a backup"
        )),
        e => CliError::Store(e),
    })?;
    match cut {
        Cut::NotAnAppendEnd { reached } if reached < p => Err(CliError::Input {
            flag: "--truncate-after",
            message: format!(
                "the log's intact records end at position {reached}, before {p}: pass {reached} \
                 (or less)"
            ),
        }),
        Cut::NotAnAppendEnd { reached } => Err(CliError::Input {
            flag: "--truncate-after",
            message: format!(
                "position {p} is inside an append that ends at {reached}: an append is kept or \
                 cut whole; pass {reached}, or the end of an earlier append"
            ),
        }),
        Cut::Plan {
            head,
            count,
            segment,
            keep_len,
            bytes,
            later,
            aside,
        } => {
            let verb = if args.yes { "moved" } else { "would move" };
            writeln!(
                out,
                "keeps {count} records, verified, up to position {} (hash {})",
                head.position, head.hash
            )?;
            if bytes == 0 {
                writeln!(out, "nothing follows position {p}: nothing to cut")?;
            } else {
                writeln!(
                    out,
                    "{verb} {bytes} bytes after it to {}: {} from offset {keep_len}{}",
                    aside.display(),
                    segment.display(),
                    if later.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} later segment(s)", later.len())
                    }
                )?;
                if !args.yes {
                    writeln!(out, "run again with --yes to cut")?;
                }
            }
            Ok(())
        }
    }
}
