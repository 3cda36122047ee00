//! # ledger-projections
//!
//! The read models of license-ledger, as pure folds over recorded events: customers,
//! contracts, the license table with its indexes, terminals and contingencies. Modules in
//! reading order:
//! - [`rows`]: the rows handed out to readers;
//! - [`view`]: [`LedgerView`], which applies events in position order and answers queries
//!   from many threads at once;
//! - [`asof`]: rebuilding a view from a log, as of a position or a time;
//! - [`snapshot`]: a view's whole state as deterministic, versioned bytes, and back;
//! - [`describe`]: the pt-BR line a timeline ("Histórico") shows for each event.
//!
//! Invariants: no I/O, no clock, no async runtime, and no business rules: the view records
//! what events say (a renewal's new expiry, a check-in's outcome) and never decides one. The
//! same events in the same order always give the same view.

pub mod asof;
pub mod describe;
pub mod rows;
pub mod snapshot;
mod state;
pub mod view;

pub use asof::{rebuild, AsOf, RebuildError};
pub use describe::describe;
pub use rows::{
    Binding, ContingencyRow, ContractRow, CustomerRow, LastCheckIn, LicenseRow, TerminalRow,
};
pub use snapshot::{SnapshotError, SNAPSHOT_FORMAT_VERSION};
pub use view::{
    ContingencyQuery, Inconsistency, LedgerView, LicenseQuery, LicenseSortKey, LicenseStatus, Page,
    ProjectionError, INCONSISTENCIES_KEPT, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX,
};
