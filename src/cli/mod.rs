//! The command line: one module per subcommand. `main.rs` parses, sets up logging and calls
//! [`run`]; every subcommand returns a [`CliError`] whose exit code and message tell the user
//! what to fix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::StoreError;

pub mod backend;
pub mod demo;
pub mod export;
pub mod history;
pub mod import;
pub mod offline;
mod pipeline;
pub mod relay;
pub mod renew;
pub mod repair;
pub mod serve;
pub mod table;
pub mod token;
pub mod verify;

/// license-ledger: an event-sourced license server.
///
/// Settings come from flags, then `LEDGER_*` environment variables, then the TOML file given
/// by `--config` (keys: `data_dir`, `listen`, `record_interval_hours`,
/// `renewal_interval_minutes`, `workers`, `tls_cert`, `tls_key`, and the `[quotas]` table),
/// then the defaults.
#[derive(Debug, Parser)]
#[command(name = "license-ledger", version, about, long_about = None)]
pub struct Cli {
    /// The data directory of the embedded log [default: ./data, or `data_dir` in the config
    /// file].
    #[arg(long, global = true, env = "LEDGER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML configuration file with any of `data_dir`, `listen` (ADDR:PORT, default
    /// 127.0.0.1:8023) and `record_interval_hours` (default 24: how old a terminal's last
    /// recorded check-in may get before an unchanged one is recorded again).
    #[arg(long, global = true, env = "LEDGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The time zone every day rule counts in (expiry, days left, renewals, grace, offline
    /// codes) and times are shown in: an IANA name such as America/Manaus [default:
    /// America/Sao_Paulo, or `time_zone` in the config file].
    #[arg(long, global = true, env = "LEDGER_TIME_ZONE", value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// Where the log is: the embedded file store in --data-dir, or PostgreSQL
    /// [default: file, or `store` in the config file].
    #[arg(long, global = true, env = "LEDGER_STORE", value_enum)]
    pub store: Option<backend::StoreKind>,
    /// PostgreSQL connection URL for --store postgres, e.g.
    /// postgres://ledger@db.example:5432/ledger [or `database_url` in the config file].
    #[arg(
        long,
        global = true,
        env = "LEDGER_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// PostgreSQL schema holding the tables [default: public, or `database_schema` in the
    /// config file].
    #[arg(
        long,
        global = true,
        env = "LEDGER_DATABASE_SCHEMA",
        value_name = "NAME"
    )]
    pub database_schema: Option<String>,
    /// Testing hook: read the current time from FILE (one RFC 3339 time, moving on with
    /// real time from when it was read) instead of the system clock. Never in production.
    #[arg(
        long,
        global = true,
        env = "LEDGER_CLOCK_FILE",
        value_name = "FILE",
        hide = true
    )]
    pub clock_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Walk the whole log, check every CRC and the hash chain, and print the head.
    ///
    /// Exits 0 when the log is intact, 1 naming the first bad position when it is not, and
    /// 2 when the log cannot be read at all. Read-only: safe to run beside a server.
    Verify(verify::VerifyArgs),
    /// Serve the HTTP API (JSON under /v1) until SIGTERM or Ctrl-C.
    ///
    /// On first start creates `<data_dir>/answer-signing.key` and `<data_dir>/secrets.toml`
    /// (mode 0600: offline and emergency keys, hashed API tokens) and prints a new admin
    /// token once.
    Serve(serve::ServeArgs),
    /// Fill an empty store with a realistic demo data set (customers, contract, licenses,
    /// check-ins, a contingency and an offline activation), dated relative to today.
    Demo,
    /// Create, list or revoke API tokens in `<data_dir>/secrets.toml`.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Print a license's Histórico, newest first. Read-only: safe beside a server.
    History(history::HistoryArgs),
    /// Print the license table (one row per license), now or as of a past moment.
    /// Read-only: safe beside a server.
    Table(table::TableArgs),
    /// Write the log to stdout as JSON lines (`import` replays them) or CSV.
    /// Read-only: safe beside a server.
    Export(export::ExportArgs),
    /// Replay a JSON-lines export into an empty store, verifying the chain; the head
    /// (position and hash) ends identical to the exported log's.
    Import(import::ImportArgs),
    /// Offline activation: support issues a counter-key; a terminal checks one.
    #[command(subcommand)]
    Offline(offline::OfflineCommand),
    /// Renew now every license of a contract that its terms renew today (what the server's
    /// automatic renewal does on its next pass); prints each license renewed. With the file
    /// store, needs the server stopped (else use POST /v1/contracts/{id}/renew).
    Renew(renew::RenewArgs),
    /// Apply the PostgreSQL schema's pending migrations (`serve` also does on start) and
    /// print what was applied. Needs --store postgres.
    Migrate,
    /// Run an on-premises relay for one customer: follows the center's log for that
    /// customer, serves its terminals (POST /v1/checkin) even when the link is down, and
    /// forwards what happened when it returns. Keeps its mirror, outbox, key and tokens in
    /// --data-dir.
    Relay(relay::RelayArgs),
    /// Show a running relay's status: last refresh, next retry, link, contingency, outbox.
    RelayStatus(relay::RelayStatusArgs),
    /// Cut the file store's log back to the end of the append ending at a position (after a
    /// failed fdatasync, the server logs the last position it acknowledged). Every record
    /// kept is verified; every byte cut is moved to `<log dir>/cut/`, never deleted. Without
    /// --yes it only says what it would cut. Needs the server stopped.
    Repair(repair::RepairArgs),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The log is damaged (exit code 1).
    #[error("{0}")]
    Damaged(StoreError),
    /// The data directory does not exist.
    #[error("data directory {0} does not exist; pass the directory the server writes to with --data-dir")]
    NoDataDir(PathBuf),
    /// Anything else the store reported.
    #[error("{0}")]
    Store(StoreError),
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server failed to start or stop.
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A flag or argument is wrong (exit code 2); the message says how to fix it.
    #[error("{flag}: {message}")]
    Input {
        /// The flag or argument.
        flag: &'static str,
        /// What is wrong and what to pass instead.
        message: String,
    },
    /// The command cannot run in this state (exit code 2); the message says why.
    #[error("{0}")]
    Refused(String),
    /// A check the command made failed (exit code 1).
    #[error("{0}")]
    Failed(String),
    /// The ledger refused or failed a command.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Damaged(_) | CliError::Failed(_) => ExitCode::from(1),
            // A server that will not open a damaged log failed the same check as `verify`.
            CliError::Serve(serve::ServeError::Store(StoreError::Corrupt { .. })) => {
                ExitCode::from(1)
            }
            _ => ExitCode::from(2),
        }
    }
}

impl From<crate::tls::TlsError> for CliError {
    fn from(e: crate::tls::TlsError) -> Self {
        CliError::Input {
            flag: e.flag,
            message: e.message,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => CliError::Damaged(e),
            other => CliError::Store(other),
        }
    }
}

/// A multi-threaded tokio runtime for commands that open the store.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Reads every committed record of the log in `data_dir` without taking its lock (like
/// `verify`), calling `visit` for each in position order. Safe beside a running server: it
/// stops at the last complete append.
pub(crate) fn scan_file_log(
    data_dir: &std::path::Path,
    mut visit: impl FnMut(ledger_events::Record) -> Result<(), StoreError>,
) -> Result<ledger_events::ChainHead, CliError> {
    scan_file_views(data_dir, |view| {
        // `scan` has checked the record's hash in the chain before visiting it: only the
        // envelope's strings are left to check.
        let envelope = view.envelope().map_err(|e| StoreError::Corrupt {
            segment: String::new(),
            offset: 0,
            position: view.position(),
            problem: e.to_string(),
        })?;
        visit(ledger_events::Record {
            envelope,
            payload: view.payload().to_vec(),
        })
    })
}

/// [`scan_file_log`] handing out the records as they lie in the segment (CRC, hash, chain
/// link and position checked; envelope and payload not yet decoded).
pub(crate) fn scan_file_views(
    data_dir: &std::path::Path,
    mut visit: impl FnMut(&ledger_events::RecordView<'_>) -> Result<(), StoreError>,
) -> Result<ledger_events::ChainHead, CliError> {
    use crate::store::file::durable::read_mark;
    use crate::store::file::segment::{list_segments, scan};
    if !data_dir.is_dir() {
        return Err(CliError::NoDataDir(data_dir.to_owned()));
    }
    // The marker before the segments: beside a running server, everything it names is
    // already on disk when the segments are read.
    let mark = read_mark(data_dir)?;
    let segments = list_segments(data_dir)?;
    let report = scan(&segments, mark.as_ref(), |view, _| visit(view), |_| {})?;
    Ok(report.head)
}

/// Parses a flag's value with the value type's own checks, naming the flag on failure.
pub(crate) fn parse_flag<T, E: std::fmt::Display>(
    flag: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    hint: &str,
) -> Result<T, CliError> {
    parse(value).map_err(|e| CliError::Input {
        flag,
        message: format!("{e}; {hint}"),
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let file = match &cli.config {
        Some(path) => crate::config::FileConfig::load(path)?,
        None => crate::config::FileConfig::default(),
    };
    let data_dir = serve::resolve_data_dir(cli.data_dir.as_deref(), file.data_dir.as_deref());
    let log = backend::Log::resolve(
        cli.store.or(file.store),
        cli.database_url.or(file.database_url.clone()),
        cli.database_schema.or(file.database_schema.clone()),
        &data_dir,
    )?;
    let calendar = match (&cli.time_zone, &file.time_zone) {
        (Some(zone), _) => parse_flag(
            "--time-zone",
            zone,
            str::parse::<crate::domain::Calendar>,
            "pass an IANA zone name",
        )?,
        (None, Some(zone)) => parse_flag(
            "time_zone",
            zone,
            str::parse::<crate::domain::Calendar>,
            "fix `time_zone` in the config file",
        )?,
        (None, None) => crate::domain::Calendar::default(),
    };
    let clock: std::sync::Arc<dyn crate::clock::Clock> = match &cli.clock_file {
        Some(path) => std::sync::Arc::new(crate::clock::FileClock::new(path)),
        None => std::sync::Arc::new(crate::clock::SystemClock),
    };
    // Two event loops per core: on the 2-core machine measured (benches/results/
    // 2026-11-26-http-load.md) this answered 27 % more check-ins than one per core, at a lower
    // p99, because a worker's connections wait less often on a sleeping peer.
    let workers = file
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| 2 * n.get()));
    match cli.command {
        Command::Verify(args) => verify::run(&log, &args, &mut std::io::stdout().lock()),
        Command::Demo => demo::run(&data_dir, &log, calendar, &mut std::io::stdout().lock()),
        Command::Migrate => migrate(&log, &mut std::io::stdout().lock()),
        Command::Token(cmd) => token::run(&data_dir, cmd, &mut std::io::stdout().lock()),
        Command::History(args) => history::run(
            &log,
            &data_dir,
            &args,
            calendar,
            &mut std::io::stdout().lock(),
        ),
        Command::Table(args) => table::run(
            &log,
            &data_dir,
            &args,
            calendar,
            &mut std::io::stdout().lock(),
        ),
        Command::Export(args) => export::run(&log, &args, &mut std::io::stdout().lock()),
        Command::Import(args) => import::run(&log, &args, &mut std::io::stdout().lock()),
        Command::Renew(args) => {
            renew::run(&log, &args, calendar, clock, &mut std::io::stdout().lock())
        }
        Command::Offline(cmd) => offline::run(
            &data_dir,
            &log,
            cmd,
            calendar,
            &mut std::io::stdout().lock(),
        ),
        Command::Serve(args) => {
            let mut ledger = crate::app::LedgerConfig {
                calendar,
                ..crate::app::LedgerConfig::default()
            };
            if let Some(h) = file.record_interval_hours {
                ledger.record_interval = chrono::Duration::hours(i64::from(h));
            }
            let trusted_proxies = trusted_proxies(&file)?;
            let tls = crate::tls::from_flags(
                args.tls_cert.or(file.tls_cert.clone()),
                args.tls_key.or(file.tls_key.clone()),
            )?;
            let quotas = file.quotas().map_err(|message| CliError::Input {
                flag: "quotas",
                message,
            })?;
            let settings = serve::ServeSettings {
                data_dir,
                log,
                listen: args
                    .listen
                    .or(file.listen)
                    .unwrap_or_else(|| crate::config::LISTEN_DEFAULT.to_owned()),
                ledger,
                workers: args.workers.map_or(workers, usize::from),
                clock,
                store_layer: None,
                trusted_proxies,
                tls,
                quotas,
                renewal_every: match file.renewal_interval_minutes {
                    Some(0) => None,
                    Some(m) => Some(std::time::Duration::from_secs(u64::from(m) * 60)),
                    None => Some(crate::app::renewals::DEFAULT_RENEWAL_INTERVAL),
                },
            };
            Ok(serve::run(settings, args.demo)?)
        }
        Command::Relay(args) => relay::run(&data_dir, args, &file, clock, workers, calendar),
        Command::RelayStatus(args) => relay::status(&args, &mut std::io::stdout().lock()),
        Command::Repair(args) => repair::run(&log, &args, &mut std::io::stdout().lock()),
    }
}

/// The configuration's `trusted_proxies`, each an address or a CIDR network.
fn trusted_proxies(file: &crate::config::FileConfig) -> Result<Vec<ipnet::IpNet>, CliError> {
    let mut out = Vec::new();
    for entry in file.trusted_proxies.iter().flatten() {
        let entry = entry.trim();
        let net = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| CliError::Input {
                flag: "trusted_proxies",
                message: format!(
                    "{entry:?} in the configuration file is neither an IP address nor a CIDR \
                     network; write e.g. \"127.0.0.1\" or \"10.0.0.0/8\""
                ),
            })?;
        out.push(net);
    }
    Ok(out)
}

/// `migrate`: applies the PostgreSQL schema's pending migrations.
fn migrate(log: &backend::Log, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let backend::Log::Postgres(config) = log else {
        return Err(CliError::Input {
            flag: "--store",
            message: "migrations are for --store postgres (with --database-url); the file \
                      store needs none"
                .into(),
        });
    };
    let report = runtime()?.block_on(crate::store::postgres::migrate(config))?;
    for name in &report.applied {
        writeln!(out, "applied {name}")?;
    }
    writeln!(
        out,
        "schema {}: {} applied now, {} already applied",
        config.schema_name(),
        report.applied.len(),
        report.already_applied
    )?;
    Ok(())
}
