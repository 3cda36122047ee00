//! The command line: one module per subcommand. `main.rs` parses, sets up logging and calls
//! [`run`]; every subcommand returns a [`CliError`] whose exit code and message tell the user
//! what to fix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::StoreError;

pub mod serve;
pub mod verify;

/// license-ledger: an event-sourced license server.
///
/// Settings come from flags, then `LEDGER_*` environment variables, then the TOML file given
/// by `--config` (keys: `data_dir`, `listen`, `record_interval_hours`), then the defaults.
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
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Damaged(_) => ExitCode::from(1),
            _ => ExitCode::from(2),
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

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let file = match &cli.config {
        Some(path) => crate::config::FileConfig::load(path)?,
        None => crate::config::FileConfig::default(),
    };
    let data_dir = serve::resolve_data_dir(cli.data_dir.as_deref(), file.data_dir.as_deref());
    match cli.command {
        Command::Verify(args) => verify::run(&data_dir, &args, &mut std::io::stdout().lock()),
        Command::Serve(args) => {
            let mut ledger = crate::app::LedgerConfig::default();
            if let Some(h) = file.record_interval_hours {
                ledger.record_interval = chrono::Duration::hours(i64::from(h));
            }
            let settings = serve::ServeSettings {
                data_dir,
                listen: args
                    .listen
                    .or(file.listen)
                    .unwrap_or_else(|| crate::config::LISTEN_DEFAULT.to_owned()),
                ledger,
                workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            };
            Ok(serve::run(settings)?)
        }
    }
}
