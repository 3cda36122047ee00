//! # license-ledger
//!
//! An event-sourced license ledger with CQRS read models. Modules in reading order:
//! - [`clock`]: time as an input;
//! - [`store`]: the event store contract and its embedded file backend;
//! - [`domain`]: commands and the pure decisions that turn them into events;
//! - [`app`]: command handling over the store, and the projected view that follows it;
//! - [`derived`]: the log index and snapshots, rebuilt from the log whenever in doubt;
//! - [`background`]: a low-priority thread for long reads (as-of);
//! - [`config`]: settings and the secrets file of `serve`;
//! - [`http`]: the actix-web edge (routes, tokens, the one `ApiError`);
//! - [`cli`]: the command line.
//!
//! The event vocabulary lives in the `ledger-events` crate, the read models in
//! `ledger-projections`. See ARCHITECTURE.md for the map and its invariants.

pub mod app;
pub mod background;
pub mod cli;
pub mod clock;
pub mod config;
pub mod derived;
pub mod domain;
pub mod http;
pub mod oplog;
pub mod relay;
pub mod store;
pub mod tls;
