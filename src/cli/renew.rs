//! `renew --contract ID`: support runs a contract's renewal now (as `POST
//! /v1/contracts/{id}/renew`), through the ledger, so the renewals are recorded like any.

use std::io::Write;
use std::sync::Arc;

use ledger_events::{Actor, ContractId};
use uuid::Uuid;

use super::{parse_flag, CliError};
use crate::clock::Clock;

/// Options of `renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// The contract whose due licenses to renew now (as `table` and the API show it, e.g.
    /// 000012 or 12).
    #[arg(long, value_name = "ID")]
    pub contract: String,
}

/// Renews the contract's due licenses and prints one line per license renewed.
pub fn run(
    log: &super::backend::Log,
    args: &RenewArgs,
    calendar: crate::domain::Calendar,
    clock: Arc<dyn Clock>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let contract_id = parse_flag(
        "--contract",
        &args.contract,
        ContractId::parse,
        "pass a contract id such as 000012",
    )?;
    let actor = Actor::operator("suporte").map_err(|e| CliError::Refused(e.to_string()))?;
    let renewed = super::backend::with_ledger(
        log,
        clock,
        calendar,
        "renew through the API instead: POST /v1/contracts/{id}/renew",
        async |ledger| {
            Ok(ledger
                .renew_contract(contract_id, &actor, Uuid::now_v7())
                .await?)
        },
    )?;
    if renewed.is_empty() {
        writeln!(
            out,
            "Contrato {contract_id}: nenhuma licença a renovar hoje"
        )?;
    }
    for r in &renewed {
        writeln!(
            out,
            "Licença {} renovada até {} (era {}; contrato {contract_id})",
            r.license_id,
            r.expires_on.format("%d/%m/%Y"),
            r.previous_expiry.format("%d/%m/%Y"),
        )?;
    }
    Ok(())
}
