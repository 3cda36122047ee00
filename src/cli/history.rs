//! `history LICENSE_ID`: a license's Histórico in the terminal, newest first, one line per
//! event: `dd/mm/yyyy HH:MM:SS  <actor>  <description>  #<position>` (times in UTC). Reads
//! the log without taking its lock: safe beside a server.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use ledger_events::{LicenseId, Record};
use ledger_projections::view::{LedgerView, ProjectionError};

use super::{parse_flag, CliError};
use crate::store::StoreError;

/// Options of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The license's id (up to 6 digits, e.g. 000042 or 42).
    #[arg(value_name = "LICENSE_ID")]
    pub license_id: String,
}

/// Runs `history`.
pub fn run(
    log: &super::backend::Log,
    args: &HistoryArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let id = parse_flag(
        "LICENSE_ID",
        &args.license_id,
        LicenseId::parse,
        "pass the license's number from `table`, e.g. 000001",
    )?;
    // First pass: fold the view, which knows which positions concern the license; second
    // pass: keep just those records.
    let view = LedgerView::new();
    super::backend::scan_log(log, |record| {
        match view.apply_record(&record) {
            Ok(()) | Err(ProjectionError::Inconsistent { .. }) => {}
            Err(e) => {
                return Err(StoreError::InvalidAppend(format!(
                    "the read model cannot apply position {}: {e}",
                    record.envelope.position
                )))
            }
        }
        Ok(())
    })?;
    if view.license(id).is_none() {
        return Err(CliError::Input {
            flag: "LICENSE_ID",
            message: format!("license {id} does not exist; see `table` for the ids"),
        });
    }
    let mut positions = view.history(id);
    positions.sort_unstable_by(|a, b| b.cmp(a));
    let wanted: HashSet<u64> = positions.iter().copied().collect();
    let mut records: HashMap<u64, Record> = HashMap::with_capacity(wanted.len());
    super::backend::scan_log(log, |record| {
        if wanted.contains(&record.envelope.position) {
            records.insert(record.envelope.position, record);
        }
        Ok(())
    })?;
    for p in positions {
        let Some(record) = records.get(&p) else {
            continue;
        };
        let event = record.event().map_err(StoreError::from)?;
        let e = &record.envelope;
        writeln!(
            out,
            "{}  {}  {}  #{}",
            e.recorded_at.format("%d/%m/%Y %H:%M:%S"),
            e.actor.name,
            ledger_projections::describe(e, &event),
            e.position
        )?;
    }
    Ok(())
}
