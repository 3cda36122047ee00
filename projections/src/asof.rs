//! Views as of a past moment: "what did the license table look like on date D?".
//!
//! A view as of position P (or time T) is the fold of the log's prefix up to P (or up to the
//! last record recorded at or before T; `recorded_at` never decreases along the log, so that
//! prefix is well defined). [`rebuild`] builds one from any source of records.

use chrono::{DateTime, Utc};
use ledger_events::{Envelope, Position, Record};

use crate::view::{LedgerView, ProjectionError};

/// Where a rebuild stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Include records up to and including this position.
    Position(Position),
    /// Include records recorded at or before this time.
    Time(DateTime<Utc>),
}

impl AsOf {
    /// Whether `envelope` lies past this point.
    pub fn is_past(&self, envelope: &Envelope) -> bool {
        match *self {
            AsOf::Position(p) => envelope.position > p,
            AsOf::Time(t) => envelope.recorded_at > t,
        }
    }
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError<E> {
    /// The source of records failed.
    #[error("reading the log failed: {0}")]
    Source(#[source] E),
    /// A record could not be applied: a gap in positions or a payload that does not decode.
    /// (Inconsistent events do not stop a rebuild: the view records them, as it does when
    /// applying live, so that a rebuild equals the live view.)
    #[error("projecting the log failed: {0}")]
    Projection(#[source] ProjectionError),
}

/// Rebuilds a view from records in order, stopping before the first record past `until`
/// (position > P, or recorded_at > T). `None` = all.
///
/// The source is not read past the first record beyond `until`. Records must start at
/// position 1 and be dense; a gap or an undecodable payload is an error, an inconsistent
/// event is recorded in the view (see [`LedgerView::inconsistencies`]) and skipped.
pub fn rebuild<E>(
    records: impl IntoIterator<Item = Result<Record, E>>,
    until: Option<AsOf>,
) -> Result<LedgerView, RebuildError<E>> {
    let view = LedgerView::new();
    for record in records {
        let record = record.map_err(RebuildError::Source)?;
        if until.is_some_and(|u| u.is_past(&record.envelope)) {
            break;
        }
        match view.apply_record(&record) {
            Ok(()) | Err(ProjectionError::Inconsistent { .. }) => {}
            Err(e) => return Err(RebuildError::Projection(e)),
        }
    }
    Ok(view)
}
