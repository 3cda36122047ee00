//! The `license-ledger` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use license_ledger::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    private_files();
    let cli = Cli::parse();
    // The log index's engine (fjall) narrates its recovery at info: warnings only.
    let filter = EnvFilter::try_from_env("LEDGER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    // Human-readable on a terminal, one JSON object per line otherwise (for log collectors).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.with_ansi(true).init();
    } else {
        builder.json().init();
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Everything this process creates — log segments, indexes, snapshots, the relay's mirror,
/// outbox and certificate, keys — is readable by its owner only (files 0600, directories
/// 0700): the log names customers and terminals, and the relay's files are on the
/// customer's premises. One umask covers the files the storage engines create too.
fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file-creation mask; it takes and returns an
    // integer and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}
