//! The command line: one module per subcommand. `main.rs` parses, sets up logging and calls
//! [`run`]; every subcommand returns a [`CliError`] whose exit code and message tell the user
//! what to fix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::StoreError;

pub mod verify;

/// license-ledger: an event-sourced license server.
#[derive(Debug, Parser)]
#[command(name = "license-ledger", version, about, long_about = None)]
pub struct Cli {
    /// The data directory of the embedded log.
    #[arg(long, global = true, env = "LEDGER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
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
    match cli.command {
        Command::Verify(args) => verify::run(&cli.data_dir, &args, &mut std::io::stdout().lock()),
    }
}
