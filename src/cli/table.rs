//! `table [--as-of T]`: the license table as the manual shows it, one row per license with
//! its 6-digit id first. Reads the log without taking its lock: safe beside a server.

use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::LicenseId;
use ledger_projections::asof::AsOf;
use ledger_projections::rows::LicenseRow;
use ledger_projections::view::{LedgerView, ProjectionError};

use super::{parse_flag, CliError};
use crate::clock::{Clock, SystemClock};
use crate::store::StoreError;

/// Options of `table`.
#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// Show the table as it was at this moment (RFC 3339, e.g. 2024-05-01T12:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub as_of: Option<String>,
}

/// Builds the view from `log`, up to `until` when given.
pub fn load_view(log: &super::backend::Log, until: Option<AsOf>) -> Result<LedgerView, CliError> {
    let view = LedgerView::new();
    let mut done = false;
    super::backend::scan_log(log, |record| {
        if done || until.is_some_and(|u| u.is_past(&record.envelope)) {
            done = true;
            return Ok(());
        }
        match view.apply_record(&record) {
            Ok(()) | Err(ProjectionError::Inconsistent { .. }) => Ok(()),
            Err(e) => Err(StoreError::InvalidAppend(format!(
                "the read model cannot apply position {}: {e}",
                record.envelope.position
            ))),
        }
    })?;
    Ok(view)
}

/// Every license of `view`, in id order.
pub fn licenses(view: &LedgerView) -> Vec<LicenseRow> {
    let max = view.max_license_id().map_or(0, LicenseId::get);
    (1..=max)
        .filter_map(|n| LicenseId::new(n).ok())
        .filter_map(|id| view.license(id))
        .collect()
}

/// Runs `table`.
pub fn run(
    log: &super::backend::Log,
    data_dir: &std::path::Path,
    args: &TableArgs,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let as_of = args
        .as_of
        .as_deref()
        .map(|t| {
            parse_flag(
                "--as-of",
                t,
                DateTime::parse_from_rfc3339,
                "pass an RFC 3339 time such as 2024-05-01T12:00:00Z",
            )
            .map(|t| t.with_timezone(&Utc))
        })
        .transpose()?;
    let day = calendar.day(as_of.unwrap_or_else(|| SystemClock.now()));
    // From the derived data (a snapshot or checkpoint and the records after it); beside a
    // running server, from the whole log.
    let resumed = super::backend::with_resumed_ledger(log, data_dir, calendar, async |ledger| {
        Ok(match as_of {
            Some(t) => licenses(&*ledger.view_as_of(AsOf::Time(t)).await?),
            None => licenses(ledger.view()),
        })
    })?;
    let all = match resumed {
        Some(all) => all,
        None => licenses(&load_view(log, as_of.map(AsOf::Time))?),
    };
    let rows: Vec<[String; 8]> = all.iter().map(|l| row(l, day)).collect();
    let header = [
        "ID",
        "Hardware Key",
        "IP",
        "Expira",
        "Produto",
        "Bloqueado",
        "Licença",
        "Contrato",
    ]
    .map(String::from);
    write_columns(out, &header, &rows)?;
    if rows.is_empty() {
        writeln!(out, "Nenhum item (Total 0)")?;
    } else {
        writeln!(out, "1º Item (Total {})", rows.len())?;
    }
    Ok(())
}

fn row(l: &LicenseRow, day: NaiveDate) -> [String; 8] {
    let status = if !l.active {
        "Desativada"
    } else if l.expires_on < day {
        "Expirada"
    } else if l.binding.is_some() {
        "Em uso"
    } else {
        "Livre"
    };
    [
        l.license_id.to_string(),
        l.binding
            .as_ref()
            .map(|b| b.hardware_key.to_string())
            .unwrap_or_default(),
        l.ip().map(|ip| ip.to_string()).unwrap_or_default(),
        l.expires_on.format("%d/%m/%Y").to_string(),
        l.product.display_name().to_owned(),
        if l.blocked { "Sim" } else { "Não" }.to_owned(),
        status.to_owned(),
        l.contract_id.map(|c| c.to_string()).unwrap_or_default(),
    ]
}

/// Writes `header` and `rows` as left-aligned columns two spaces apart.
pub fn write_columns<const N: usize>(
    out: &mut impl Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
