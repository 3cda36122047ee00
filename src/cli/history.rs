//! `history LICENSE_ID`: a license's Histórico in the terminal, newest first, one line per
//! event: `dd/mm/yyyy HH:MM:SS  <actor>  <description>  #<position>` (times in UTC).
//!
//! It reads the license's positions from the log index (`<data_dir>/derived`) and only
//! those records; when the index does not cover the log's head, it first resumes from the
//! derived data (a snapshot and the index) and brings them up to date. Beside a running server, which holds the log, it reads
//! the log without taking its lock instead: whole, so its cost grows with the log (the
//! server answers the same from its index: `GET /v1/licenses/{id}/history`).

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
    data_dir: &std::path::Path,
    args: &HistoryArgs,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let id = parse_flag(
        "LICENSE_ID",
        &args.license_id,
        LicenseId::parse,
        "pass the license's number from `table`, e.g. 000001",
    )?;
    // The index alone answers when it covers the log's head (after a server's clean stop);
    // otherwise a ledger resumes on the same open store from the derived data and brings
    // the index up to date. `None`: a server holds the log or the derived data.
    let config = crate::derived::DerivedConfig {
        maintenance: crate::store::Maintenance::Deferred,
        ..crate::derived::DerivedConfig::in_data_dir(data_dir)
    };
    let indexed = super::backend::with_store(log, async |store, clock| {
        use crate::app::{queries::history_from_index, AppError};
        use crate::derived::DerivedError;
        match history_from_index(store.as_ref(), &config, id).await {
            Ok(Some(records)) if records.is_empty() => return Err(unknown(id)),
            Ok(Some(records)) => return Ok(Some(records)),
            Ok(None) => {}
            Err(AppError::Derived(DerivedError::Locked(_))) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        super::backend::on_resumed_ledger(store, clock, data_dir, calendar, async |ledger| {
            if ledger.view().license(id).is_none() {
                return Err(unknown(id));
            }
            Ok(ledger.history(id, 0, usize::MAX).await?.1)
        })
        .await
    })?
    .flatten();
    let records = match indexed {
        Some(records) => records,
        None => {
            eprintln!(
                "note: a server holds this log; reading all of it (the server answers faster: \
                 GET /v1/licenses/{id}/history)"
            );
            scan(log, id)?
        }
    };
    for record in &records {
        let event = record.event().map_err(StoreError::from)?;
        let e = &record.envelope;
        writeln!(
            out,
            "{}  {}  {}  #{}",
            calendar.local_time_with_offset(e.recorded_at),
            e.actor.name,
            ledger_projections::describe(e, &event),
            e.position
        )?;
    }
    Ok(())
}

fn unknown(id: LicenseId) -> CliError {
    CliError::Input {
        flag: "LICENSE_ID",
        message: format!("license {id} does not exist; see `table` for the ids"),
    }
}

/// The license's records newest first, from two passes over the whole log: the first folds
/// the view, noting which positions concern the license; the second keeps those records.
fn scan(log: &super::backend::Log, id: LicenseId) -> Result<Vec<Record>, CliError> {
    let view = LedgerView::new();
    let mut wanted: HashSet<u64> = HashSet::new();
    super::backend::scan_log(log, |record| {
        match view.apply_record_noting(&record) {
            Ok(Some(license)) if license == id => {
                wanted.insert(record.envelope.position);
            }
            Ok(_) | Err(ProjectionError::Inconsistent { .. }) => {}
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
        return Err(unknown(id));
    }
    let mut records: HashMap<u64, Record> = HashMap::with_capacity(wanted.len());
    super::backend::scan_log(log, |record| {
        if wanted.contains(&record.envelope.position) {
            records.insert(record.envelope.position, record);
        }
        Ok(())
    })?;
    let mut positions: Vec<u64> = wanted.into_iter().collect();
    positions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(positions
        .into_iter()
        .filter_map(|p| records.remove(&p))
        .collect())
}
