//! Reads that go beyond the live view: a license's Histórico, the log searched by customer,
//! type and time, and the read models as of a past moment. Each reads the log index and
//! snapshots (`crate::derived`) and only the records it answers with, never the whole log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger_events::{LicenseId, Position, Record};
use ledger_projections::asof::AsOf;
use ledger_projections::view::{LedgerView, ProjectionError};

use super::follow::OnFailure;
use super::{AppError, Ledger};
use crate::derived::index::{Filter, Found};
use crate::derived::Derived;
use crate::store::{EventStore, READ_BATCH_MAX};

impl Ledger {
    /// Fails when the log index stopped.
    fn index_usable(&self) -> Result<(), AppError> {
        match self.index_failure.lock().clone() {
            Some(why) => Err(AppError::IndexUnavailable(why)),
            None => Ok(()),
        }
    }

    /// A failed index read: the index is not used again, and the next start rebuilds it.
    fn index_failed(&self, e: crate::derived::DerivedError) -> AppError {
        tracing::error!(error = %e, "a read of the log index failed: the Histórico, search and dashboard answer 503 until a restart rebuilds it");
        if let Err(e) = self.derived.condemn_index() {
            tracing::error!(error = %e, "could not mark the log index for a rebuild");
        }
        let why = e.to_string();
        *self.index_failure.lock() = Some(why.clone());
        AppError::IndexUnavailable(why)
    }

    /// The highest position the index answers for: what the view has applied.
    fn indexed(&self) -> Position {
        (*self.applied.borrow()).min(self.derived.index.covers().position)
    }

    /// A license's Histórico, newest first: how many entries it has, and the records of
    /// `limit` of them after skipping `offset`.
    pub async fn history(
        &self,
        license: LicenseId,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Record>), AppError> {
        self.index_usable()?;
        let (total, positions) = self
            .derived
            .index
            .history(license, self.indexed(), offset, limit)
            .map_err(|e| self.index_failed(e))?;
        let mut records = self.indexed_records(&positions).await?;
        records.reverse();
        Ok((total, records))
    }

    /// The records at `positions` (any order), which the index names, ascending: one read
    /// per [`READ_BATCH_MAX`] positions. A position the log does not have condemns the index.
    pub async fn indexed_records(&self, positions: &[Position]) -> Result<Vec<Record>, AppError> {
        match read_indexed(self.store.as_ref(), positions).await? {
            Ok(records) => Ok(records),
            Err(missing) => Err(self.index_failed(missing)),
        }
    }

    /// Up to `limit` positions in `lo..=hi` matching `filter`, newest first; the range is
    /// bounded by what the view has applied. Complete: paging on `next_before` finds every
    /// match.
    pub fn search(
        &self,
        filter: &Filter,
        lo: Position,
        hi: Position,
        limit: usize,
    ) -> Result<Found, AppError> {
        self.index_usable()?;
        self.derived
            .index
            .search(filter, lo.max(1), hi.min(self.indexed()), limit)
            .map_err(|e| self.index_failed(e))
    }

    /// How many records of `event_type` lie in `lo..=hi` (bounded by what the view applied).
    pub fn count(&self, event_type: &str, lo: Position, hi: Position) -> Result<u64, AppError> {
        self.index_usable()?;
        self.derived
            .index
            .count(event_type, lo.max(1), hi.min(self.indexed()))
            .map_err(|e| self.index_failed(e))
    }

    /// The first position in `1..=head` recorded after `t` (or at `t` when `inclusive`), or
    /// `head + 1` if none: `recorded_at` never decreases along the log, so a binary search
    /// over positions finds it in about log2(head) reads.
    pub async fn first_recorded_after(
        &self,
        t: DateTime<Utc>,
        inclusive: bool,
        head: Position,
    ) -> Result<Position, AppError> {
        let (mut lo, mut hi) = (1, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let record = self.record_at(mid).await?.ok_or_else(|| {
                AppError::ViewStopped(format!("position {mid} below the head is not in the log"))
            })?;
            let at = record.envelope.recorded_at;
            let before = if inclusive { at < t } else { at <= t };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The read models as they were at `until` (a position or a time): the newest checkpoint
    /// at or before it, plus the records after it. See [`Ledger::read_as_of`].
    pub async fn view_as_of(&self, until: AsOf) -> Result<Arc<LedgerView>, AppError> {
        self.read_as_of(until, |view| view.clone()).await
    }

    /// Runs `read` on the read models as they were at `until`, on the ledger's background
    /// thread (a low priority: check-ins come first). Everything that costs in proportion
    /// to the table happens there: building the view (the newest checkpoint at or before
    /// `until`, plus the records after it), `read` itself (a page of a 100,000-row table is
    /// a scan and a sort), and dropping the view it replaces; the HTTP threads only wait.
    /// One such view is built at a time; the last one built is kept for the requests that
    /// ask for the same position.
    pub async fn read_as_of<T, F>(&self, until: AsOf, read: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<LedgerView>) -> T + Send + 'static,
    {
        let position = self.position_of(until).await?;
        let mut slot = self.as_of.lock().await;
        let cached = slot.take();
        let store = self.store.clone();
        let derived = self.derived.clone();
        let runtime = tokio::runtime::Handle::current();
        let (kept, answer) = self
            .background
            .run(move || -> Result<_, AppError> {
                let view = match cached {
                    Some((p, view)) if p == position => view,
                    other => {
                        drop(other);
                        Arc::new(runtime.block_on(build_as_of(store, derived, position))?)
                    }
                };
                let answer = read(&view);
                Ok(((position, view), answer))
            })
            .await
            .map_err(|e| AppError::ViewStopped(e.to_string()))??;
        *slot = Some(kept);
        Ok(answer)
    }

    /// The position `until` names: a position (at most the head), or the last record
    /// recorded at or before a time.
    pub async fn position_of(&self, until: AsOf) -> Result<Position, AppError> {
        let head = self.head().await?.position;
        Ok(match until {
            AsOf::Position(p) => p.min(head),
            AsOf::Time(t) => self.first_recorded_after(t, false, head).await? - 1,
        })
    }

    /// One license as it was at `until`: its own Histórico up to there (every record that
    /// changed its row: the license's events, the check-ins it answered, contingencies and
    /// offline activations naming it) folded alone, less the check-ins a newer one overrides
    /// ([`crate::derived::index::LogIndex::fold_positions`]). Costs the records that changed
    /// more than its last check-in, not the log's length nor a year of daily check-ins;
    /// `None` when it did not exist yet.
    pub async fn license_as_of(
        &self,
        license: LicenseId,
        until: AsOf,
    ) -> Result<Option<ledger_projections::LicenseRow>, AppError> {
        self.index_usable()?;
        let position = self.position_of(until).await?.min(self.indexed());
        let positions = self
            .derived
            .index
            .fold_positions(license, position)
            .map_err(|e| self.index_failed(e))?;
        let view = LedgerView::new();
        for record in self.indexed_records(&positions).await? {
            let event = record
                .event()
                .map_err(|e| AppError::Store(crate::store::StoreError::from(e)))?;
            match view.apply_unordered(&record.envelope, &event) {
                Ok(()) | Err(ProjectionError::Inconsistent { .. }) => {}
                Err(e) => return Err(AppError::ViewStopped(e.to_string())),
            }
        }
        Ok(view.license(license))
    }
}

/// The view at `position`: the newest checkpoint at or before it, then the records after it.
async fn build_as_of(
    store: Arc<dyn EventStore>,
    derived: Arc<Derived>,
    position: Position,
) -> Result<LedgerView, AppError> {
    let view = checkpoint_before(store.as_ref(), &derived, position).await?;
    let mut next = view.position() + 1;
    while next <= position {
        let want = ((position - next + 1) as usize).min(READ_BATCH_MAX);
        let batch = store.read_all(next, want).await?;
        let Some(last) = batch.last() else { break };
        next = last.envelope.position + 1;
        for record in batch.iter().filter(|r| r.envelope.position <= position) {
            match view.apply_record(record) {
                Ok(()) | Err(ProjectionError::Inconsistent { .. }) => {}
                Err(e) => return Err(AppError::ViewStopped(e.to_string())),
            }
        }
    }
    Ok(view)
}

/// The newest checkpoint at or before `position` that the log confirms, or an empty view.
async fn checkpoint_before(
    store: &dyn EventStore,
    derived: &Derived,
    position: Position,
) -> Result<LedgerView, AppError> {
    match &derived.snapshots {
        Some(snapshots) => {
            super::follow::newest_confirmed(store, snapshots, position, OnFailure::Skip).await
        }
        None => Ok(LedgerView::new()),
    }
}

/// A license's whole Histórico, newest first, from the derived index alone — no snapshot
/// decoded, no view built (what the CLI's `history` needs when no server runs): `None` when
/// the index does not cover the log's head (after a crash, or never built), so the caller
/// resumes a ledger, which brings it up to date; `Some(empty)` for a license that never was.
pub async fn history_from_index(
    store: &dyn EventStore,
    config: &crate::derived::DerivedConfig,
    license: LicenseId,
) -> Result<Option<Vec<Record>>, AppError> {
    let derived = Derived::open(config)?;
    let covers = derived.index.covers();
    let head = store.head().await?;
    // The store's head is its last record's position and hash: equal, the index covers
    // exactly this log.
    if covers.position == 0 || covers != head {
        return Ok(None);
    }
    let (_, positions) = derived
        .index
        .history(license, covers.position, 0, usize::MAX)
        .map_err(AppError::Derived)?;
    let mut records = read_indexed(store, &positions)
        .await?
        .map_err(AppError::Derived)?;
    records.reverse();
    Ok(Some(records))
}

/// The records at `positions` (any order), ascending, read in chunks of at most
/// [`READ_BATCH_MAX`]; the inner error names a position the index gave and the log lacks.
async fn read_indexed(
    store: &dyn EventStore,
    positions: &[Position],
) -> Result<Result<Vec<Record>, crate::derived::DerivedError>, AppError> {
    let mut wanted = positions.to_vec();
    wanted.sort_unstable();
    let mut out = Vec::with_capacity(wanted.len());
    for chunk in wanted.chunks(READ_BATCH_MAX) {
        let records = store.read_positions(chunk).await?;
        if records.len() != chunk.len() {
            let missing = chunk
                .iter()
                .find(|p| !records.iter().any(|r| r.envelope.position == **p))
                .copied()
                .unwrap_or_default();
            return Ok(Err(crate::derived::DerivedError::Damaged(format!(
                "the index names position {missing}, which the log does not have"
            ))));
        }
        out.extend(records);
    }
    Ok(Ok(out))
}
