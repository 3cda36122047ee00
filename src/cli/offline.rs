//! `offline issue|verify`: support's counter-key tool (through the ledger, so the activation
//! is recorded and a serial is used once) and a terminal's local check of a counter-key.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use ledger_events::{offline, Actor, Cnpj, CounterKey, HardwareId, LicenseId, Product, Serial};
use uuid::Uuid;

use super::{parse_flag, CliError};
use crate::app::commands::OfflineRequest;
use crate::clock::{Clock, SystemClock};
use crate::config::{SecretsFile, SECRETS_FILE_NAME};

/// The `offline` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum OfflineCommand {
    /// Issue a counter-key for a terminal's serial ("Ativar Offline"); records it.
    Issue(IssueArgs),
    /// Check a counter-key as the terminal does; exits 1 when it does not verify.
    Verify(VerifyArgs),
}

/// Options of `offline issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The product (code or name: easycash, notify, nfe, tef_iws, "NF-e Nota Fiscal"...).
    #[arg(long, value_name = "PRODUCT")]
    pub product: String,
    /// The serial the terminal shows (16 hex digits).
    #[arg(long, value_name = "SERIAL")]
    pub serial: String,
    /// The customer, when known.
    #[arg(long, value_name = "CNPJ")]
    pub cnpj: Option<String>,
    /// The license released, when known (with --cnpj, opens a manual contingency).
    #[arg(long, value_name = "ID")]
    pub license: Option<String>,
}

/// Options of `offline verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The product.
    #[arg(long, value_name = "PRODUCT")]
    pub product: String,
    /// The terminal's serial.
    #[arg(long, value_name = "SERIAL")]
    pub serial: String,
    /// The counter-key as typed (`XXXX XXXX XXXX XXXX`; spaces optional).
    #[arg(long, value_name = "KEY")]
    pub counter_key: String,
    /// The terminal's date [default: today].
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub date: Option<String>,
    /// The terminal's customer: with --hardware-id, check with that terminal's own key
    /// (derived here from the product's key), as a terminal the center has seen online does.
    #[arg(long, value_name = "CNPJ", requires = "hardware_id")]
    pub cnpj: Option<String>,
    /// The terminal's hardware id (with --cnpj).
    #[arg(long, value_name = "HARDWARE_ID", requires = "cnpj")]
    pub hardware_id: Option<String>,
    /// The terminal's own offline key as the center delivered it (64 hex digits): check with
    /// it alone, as the terminal does, without the product's key.
    #[arg(long, value_name = "HEX", conflicts_with_all = ["cnpj", "hardware_id"])]
    pub terminal_key: Option<String>,
}

/// Runs an `offline` subcommand.
pub fn run(
    data_dir: &Path,
    log: &super::backend::Log,
    command: OfflineCommand,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match command {
        OfflineCommand::Issue(args) => issue(data_dir, log, &args, calendar, out),
        OfflineCommand::Verify(args) => verify(data_dir, &args, calendar, out),
    }
}

fn product(s: &str) -> Result<Product, CliError> {
    parse_flag(
        "--product",
        s,
        Product::parse,
        "pass a product code such as easycash",
    )
}

fn serial(s: &str) -> Result<Serial, CliError> {
    parse_flag(
        "--serial",
        s,
        Serial::parse,
        "pass the 16 hex digits the terminal shows",
    )
}

fn secrets(data_dir: &Path) -> Result<SecretsFile, CliError> {
    let path = data_dir.join(SECRETS_FILE_NAME);
    if !path.is_file() {
        return Err(CliError::Refused(format!(
            "{} does not exist: the offline keys are created by the server's first start; \
             pass the server's --data-dir",
            path.display()
        )));
    }
    Ok(SecretsFile::load_or_create(data_dir)?.0)
}

fn issue(
    data_dir: &Path,
    log: &super::backend::Log,
    args: &IssueArgs,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let request = OfflineRequest {
        serial: serial(&args.serial)?,
        product: product(&args.product)?,
        cnpj: args
            .cnpj
            .as_deref()
            .map(|c| {
                parse_flag(
                    "--cnpj",
                    c,
                    Cnpj::parse,
                    "pass the customer's 14-character CNPJ",
                )
            })
            .transpose()?,
        license_id: args
            .license
            .as_deref()
            .map(|l| parse_flag("--license", l, LicenseId::parse, "pass an id from `table`"))
            .transpose()?,
        caixa: None,
        equipamento: None,
    };
    let file = secrets(data_dir)?;
    let actor = Actor::operator("suporte").map_err(|e| CliError::Refused(e.to_string()))?;
    let issued = super::backend::with_ledger(
        log,
        Arc::new(SystemClock),
        calendar,
        "issue it through the API instead: POST /v1/offline-activations",
        async |ledger| {
            Ok(ledger
                .issue_offline_activation(&file.secrets, request, &actor, Uuid::now_v7())
                .await?)
        },
    )?;
    writeln!(out, "Contra-chave: {}", issued.counter_key.grouped())?;
    match issued.terminal {
        Some(hardware_id) => writeln!(out, "Chave: do terminal {hardware_id}")?,
        None => writeln!(
            out,
            "Chave: do produto (terminal nunca visto on-line por este servidor)"
        )?,
    }
    writeln!(
        out,
        "Válida até: {} ({})",
        issued.valid_until.format("%d/%m/%Y"),
        issued.valid_until
    )?;
    Ok(())
}

fn verify(
    data_dir: &Path,
    args: &VerifyArgs,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let product = product(&args.product)?;
    let serial = serial(&args.serial)?;
    let key = parse_flag(
        "--counter-key",
        &args.counter_key,
        CounterKey::parse_grouped,
        "pass the 16 hex digits support read out, e.g. \"AF67 142D 1048 F615\"",
    )?;
    let day = match &args.date {
        Some(d) => parse_flag(
            "--date",
            d,
            |s| NaiveDate::parse_from_str(s, "%Y-%m-%d"),
            "pass the terminal's date as YYYY-MM-DD",
        )?,
        None => calendar.day(SystemClock.now()),
    };
    let verified = if let Some(hex) = &args.terminal_key {
        let terminal_key = parse_flag(
            "--terminal-key",
            hex,
            |s| offline::TerminalKey::parse_hex(s).ok_or("not 64 hex digits"),
            "pass the 64 hex digits the center delivered to the terminal",
        )?;
        offline::verify_terminal_counter_key(&terminal_key, &serial, product, &key, day)
    } else {
        let file = secrets(data_dir)?;
        let secret = file.secrets.offline.get(&product).ok_or_else(|| {
            CliError::Refused(format!(
                "{} has no offline key for {product}",
                file.path().display()
            ))
        })?;
        match (&args.cnpj, &args.hardware_id) {
            (Some(cnpj), Some(hardware_id)) => {
                let cnpj = parse_flag(
                    "--cnpj",
                    cnpj,
                    Cnpj::parse,
                    "pass the customer's 14-character CNPJ",
                )?;
                let hardware_id = parse_flag(
                    "--hardware-id",
                    hardware_id,
                    HardwareId::parse,
                    "pass the terminal's 16 hex digits hardware id",
                )?;
                let terminal_key = offline::terminal_key(secret, &cnpj, &hardware_id);
                offline::verify_terminal_counter_key(&terminal_key, &serial, product, &key, day)
            }
            _ => offline::verify_counter_key(secret, &serial, product, &key, day),
        }
    };
    match verified {
        Ok(until) => {
            writeln!(out, "OK: valid until {}", until.format("%d/%m/%Y"))?;
            Ok(())
        }
        Err(_) => Err(CliError::Failed(format!(
            "the counter-key does not verify for {product} and serial {serial} on {day}: \
             it is for another product, serial or terminal, mistyped, or expired"
        ))),
    }
}
