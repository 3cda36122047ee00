//! `demo`: fills an empty store with a realistic data set, dated relative to today, through
//! the [`Ledger`] API (the same commands support and terminals use). `serve --demo` uses the
//! same [`fill`].

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use ledger_events::{
    Actor, Cnpj, ContingencyKind, ContractId, CounterKey, HardwareId, HardwareKey, LicenseId, Note,
    Product, ProgramVersion, ResourceKey, ResourceValue, Resources, Serial, TerminalNumber,
    TradeName,
};
use uuid::Uuid;

use super::CliError;
use crate::app::commands::{GrantLicense, OfflineRequest, Secrets, SignContract};
use crate::app::{AppError, Ledger, LedgerConfig};
use crate::clock::{Clock, SystemClock};
use crate::config::SecretsFile;
use crate::domain::checkin::CheckInRequest;
use crate::domain::customer::CustomerCommand;
use crate::domain::license::LicenseCommand;
use crate::domain::release::ContingencyCommand;
use crate::domain::DomainError;

/// The numeric CNPJ of the first demo customer.
pub const CNPJ_NUMERIC: &str = "11222333000181";
/// The alphanumeric CNPJ of the second demo customer.
pub const CNPJ_ALPHANUMERIC: &str = "12ABC34501DE35";

/// What [`fill`] created.
#[derive(Clone, Debug)]
pub struct DemoSummary {
    /// Customers registered.
    pub customers: usize,
    /// The contract signed.
    pub contract_id: ContractId,
    /// Licenses granted, in id order.
    pub licenses: Vec<LicenseId>,
    /// Check-ins made.
    pub check_ins: usize,
    /// The license expiring within three days.
    pub expiring: LicenseId,
    /// The expired license.
    pub expired: LicenseId,
    /// The blocked license.
    pub blocked: LicenseId,
    /// The offline activation's serial.
    pub offline_serial: Serial,
    /// Its counter-key.
    pub counter_key: CounterKey,
    /// Its last valid day.
    pub offline_valid_until: NaiveDate,
}

impl DemoSummary {
    /// A few lines for a person.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "demo data: {} customers ({CNPJ_NUMERIC}, {CNPJ_ALPHANUMERIC}), contract {}, \
             {} licenses ({}..{}), {} check-ins",
            self.customers,
            self.contract_id,
            self.licenses.len(),
            self.licenses
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            self.licenses
                .last()
                .map(ToString::to_string)
                .unwrap_or_default(),
            self.check_ins
        )?;
        writeln!(
            out,
            "  expiring within 3 days: {}; expired: {}; blocked: {}",
            self.expiring, self.expired, self.blocked
        )?;
        writeln!(
            out,
            "  offline activation: serial {} counter-key {} valid until {}",
            self.offline_serial,
            self.counter_key.grouped(),
            self.offline_valid_until.format("%d/%m/%Y")
        )
    }
}

/// Runs `demo` on `data_dir`: refuses a non-empty log, fills it, prints a summary.
pub fn run(
    data_dir: &Path,
    log: &super::backend::Log,
    calendar: crate::domain::Calendar,
    out: &mut impl Write,
) -> Result<(), CliError> {
    std::fs::create_dir_all(data_dir)?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let store = log
            .open(
                Arc::new(SystemClock),
                "stop it first, or start it with `serve --demo` on an empty data directory",
            )
            .await?;
        let result = async {
            let head = store.head().await?;
            if head.position != 0 {
                return Err(CliError::Refused(format!(
                    "the log in {} is not empty ({} records); `demo` only fills an empty \
                     store: pass another --data-dir",
                    log.describe(),
                    head.position
                )));
            }
            let (secrets, admin) = SecretsFile::load_or_create(data_dir)?;
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let config = LedgerConfig {
                calendar,
                ..LedgerConfig::default()
            };
            let ledger = Ledger::start(store.store(), clock, config).await?;
            let summary = fill(&ledger, &secrets.secrets).await?;
            drop(ledger);
            summary.write(out)?;
            writeln!(
                out,
                "see it with `license-ledger table --data-dir {}`",
                data_dir.display()
            )?;
            if let Some(token) = admin {
                writeln!(
                    out,
                    "Created an admin API token (shown only this once; keep it safe):"
                )?;
                writeln!(out, "{token}")?;
            }
            Ok(())
        }
        .await;
        let closed = store.close().await;
        result?;
        Ok(closed?)
    })
}

fn value<T>(r: Result<T, ledger_events::ValueError>) -> Result<T, AppError> {
    r.map_err(|e| AppError::Domain(DomainError::rejected(e.to_string())))
}

fn resources(dav: bool, preventa: bool) -> Result<Resources, AppError> {
    value(Resources::new([
        (
            value(ResourceKey::parse("habilita_dav"))?,
            ResourceValue::Bool(dav),
        ),
        (
            value(ResourceKey::parse("habilita_preventa"))?,
            ResourceValue::Bool(preventa),
        ),
    ]))
}

/// One demo terminal.
struct Terminal {
    cnpj: Cnpj,
    product: Product,
    hardware_id: &'static str,
    hardware_key: &'static str,
    ip: &'static str,
    number: u16,
}

/// Fills an empty ledger with the demo data set (the caller checks that it is empty).
/// Dates are relative to the ledger clock's today.
pub async fn fill(ledger: &Ledger, secrets: &Secrets) -> Result<DemoSummary, AppError> {
    let support = value(Actor::operator("suporte"))?;
    let day = ledger.today();
    let a = value(Cnpj::parse(CNPJ_NUMERIC))?;
    let b = value(Cnpj::parse(CNPJ_ALPHANUMERIC))?;
    for (cnpj, name, since) in [
        (a, "Mercado Bom Preço", day - Duration::days(400)),
        (b, "Padaria Pão Dourado", day - Duration::days(90)),
    ] {
        ledger
            .customer(
                CustomerCommand::Register {
                    cnpj,
                    trade_name: value(TradeName::parse(name))?,
                    since: Some(since),
                },
                &support,
                Uuid::now_v7(),
            )
            .await?;
    }
    let (contract_id, _) = ledger
        .sign_contract(
            SignContract {
                cnpj: a,
                starts_on: day - Duration::days(60),
                ends_on: None,
                interval_days: 30,
                renew_before_days: 3,
            },
            &support,
            Uuid::now_v7(),
        )
        .await?;
    // (customer, product, by contract, days to expiry, habilita_dav, habilita_preventa)
    let grants: [(Cnpj, Product, bool, i64, bool, bool); 12] = [
        (a, Product::EasyCash, false, 2, true, true),
        (a, Product::EasyCash, true, 28, true, false),
        (a, Product::EasyCash, true, 28, false, false),
        (a, Product::EasyCash, false, -5, true, false),
        (a, Product::Notify, true, 28, false, false),
        (a, Product::Nfe, true, 28, false, false),
        (a, Product::TefIws, true, 28, false, false),
        (a, Product::Intellistock, true, 28, false, false),
        (b, Product::EasyCash, false, 90, true, true),
        (b, Product::EasyCash, false, 90, false, false),
        (b, Product::Notify, false, 90, false, false),
        (b, Product::Nfe, false, 90, false, false),
    ];
    let mut licenses = Vec::with_capacity(grants.len());
    for (cnpj, product, by_contract, days, dav, preventa) in grants {
        let (id, _) = ledger
            .grant_license(
                GrantLicense {
                    cnpj,
                    product,
                    contract_id: by_contract.then_some(contract_id),
                    expires_on: day + Duration::days(days),
                    resources: resources(dav, preventa)?,
                },
                &support,
                Uuid::now_v7(),
            )
            .await?;
        licenses.push(id);
    }
    let nth = |i: usize| {
        licenses.get(i).copied().ok_or_else(|| {
            AppError::Domain(DomainError::rejected(
                "a demo license is missing".to_owned(),
            ))
        })
    };
    let (expiring, expired, blocked) = (nth(0)?, nth(3)?, nth(6)?);
    ledger
        .license(
            LicenseCommand::Block {
                license_id: blocked,
                note: Some(value(Note::parse("Bloqueada por falta de pagamento"))?),
            },
            &support,
            Uuid::now_v7(),
        )
        .await?;
    // The manual's terminal first: it binds the lowest usable EasyCash license (expiring
    // within 3 days and on no contract, so the check-in warns instead of renewing it).
    let terminals = [
        Terminal {
            cnpj: a,
            product: Product::EasyCash,
            hardware_id: "50026B77825EECA5",
            hardware_key: "88A7B56C2B3F326F91362A182483F63E",
            ip: "192.168.0.191",
            number: 1,
        },
        Terminal {
            cnpj: a,
            product: Product::EasyCash,
            hardware_id: "50026B77825EECA6",
            hardware_key: "88A7B56C2B3F326F91362A182483F63F",
            ip: "192.168.0.192",
            number: 2,
        },
        Terminal {
            cnpj: a,
            product: Product::Notify,
            hardware_id: "50026B77825EECA5",
            hardware_key: "88A7B56C2B3F326F91362A182483F63E",
            ip: "192.168.0.191",
            number: 1,
        },
        Terminal {
            cnpj: b,
            product: Product::EasyCash,
            hardware_id: "4A1F09C2D37B8E60",
            hardware_key: "1C9E44B07A2D5F3E8B6071D2C4A9E5F0",
            ip: "10.0.0.21",
            number: 1,
        },
    ];
    for t in &terminals {
        ledger
            .check_in(&CheckInRequest {
                cnpj: t.cnpj,
                product: t.product,
                hardware_id: value(HardwareId::parse(t.hardware_id))?,
                hardware_key: value(HardwareKey::parse(t.hardware_key))?,
                ip: t.ip.parse().ok(),
                program_version: ProgramVersion::parse("2.0.12.1").ok(),
                caixa: TerminalNumber::new(t.number).ok(),
                equipamento: TerminalNumber::new(t.number).ok(),
            })
            .await?;
    }
    ledger
        .contingency(
            ContingencyCommand::Enter {
                cnpj: b,
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                license_id: None,
                grace_until: Some(day + Duration::days(7)),
                note: Some(value(Note::parse(
                    "Servidor do cliente sem acesso à plataforma",
                ))?),
            },
            &support,
            Uuid::now_v7(),
        )
        .await?;
    let offline_serial = value(Serial::parse("50026B77605FA3F8"))?;
    let issued = ledger
        .issue_offline_activation(
            secrets,
            OfflineRequest {
                serial: offline_serial,
                product: Product::EasyCash,
                cnpj: Some(a),
                license_id: Some(nth(1)?),
                caixa: TerminalNumber::new(2).ok(),
                equipamento: TerminalNumber::new(2).ok(),
            },
            &support,
            Uuid::now_v7(),
        )
        .await?;
    Ok(DemoSummary {
        customers: 2,
        contract_id,
        check_ins: terminals.len(),
        expiring,
        expired,
        blocked,
        offline_serial,
        counter_key: issued.counter_key,
        offline_valid_until: issued.valid_until,
        licenses,
    })
}
