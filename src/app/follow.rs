//! How the ledger's read models follow the log: the start (resume from the newest snapshot
//! the log confirms, or from nothing) and the applier task (view, log index, checkpoints).

use std::sync::Arc;

use futures_util::FutureExt;
use ledger_events::{ChainHead, Event, Position, Record, TerminalEvent};
use ledger_projections::view::{LedgerView, ProjectionError};
use tokio::sync::watch;

use super::{AppError, CatchUpLog};
use crate::derived::{index, Derived, DerivedConfig, DerivedError};
use crate::store::{EventStore, StoreError};

/// Records the applier takes before it commits them to the index and tells waiters.
const APPLY_BATCH_MAX: usize = 4096;

/// Where the read models resume: a view (empty, or restored from a snapshot) and the
/// position it reflects.
pub(super) struct Resume {
    pub view: LedgerView,
    pub derived: Derived,
}

/// The record at `position`, if stored.
pub(super) async fn record_at(
    store: &dyn EventStore,
    position: Position,
) -> Result<Option<Record>, StoreError> {
    let mut records = store.read_all(position, 1).await?;
    Ok(records.pop().filter(|r| r.envelope.position == position))
}

/// Whether the log's record at `at.position` has hash `at.hash`.
async fn log_confirms(store: &dyn EventStore, at: ChainHead) -> Result<bool, StoreError> {
    Ok(record_at(store, at.position)
        .await?
        .is_some_and(|r| r.envelope.hash == at.hash))
}

/// Opens the derived data and the newest snapshot the log confirms. Checks, in order: the
/// index covers a record of this log (else it is rebuilt); a snapshot is used only at or
/// below what the index covers (so the index can follow from the same point), with its
/// digest intact, its hash the log's at its position, and a body that decodes to a view at
/// that position. Every snapshot that fails is removed.
pub(super) async fn resume(
    store: &dyn EventStore,
    config: &DerivedConfig,
    head: ChainHead,
) -> Result<Resume, AppError> {
    let mut derived = Derived::open(config)?;
    let covers = derived.index.covers();
    if covers.position > 0
        && (covers.position > head.position || !log_confirms(store, covers).await?)
    {
        tracing::warn!(
            position = covers.position,
            head = head.position,
            "the log index names a record this log does not have: rebuilding it from the log"
        );
        derived.reset_index()?;
    }
    let limit = derived.index.covers().position;
    let mut view = LedgerView::new();
    if let Some(snapshots) = &derived.snapshots {
        for position in snapshots.positions()? {
            if position > head.position {
                tracing::info!(position, "removing a snapshot past the log's head");
                snapshots.remove(position)?;
            }
        }
        view = newest_confirmed(store, snapshots, limit, OnFailure::Remove).await?;
        if view.position() > 0 {
            tracing::info!(
                position = view.position(),
                head = head.position,
                "resuming the read models from a snapshot"
            );
        }
    }
    Ok(Resume { view, derived })
}

/// What to do with a snapshot that fails its checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnFailure {
    /// Remove it (at start: the log rebuilds it).
    Remove,
    /// Leave it (an as-of request, beside the applier that owns the files).
    Skip,
}

/// The newest snapshot at or below `at_most` that the log confirms, restored; an empty view
/// when there is none.
pub(super) async fn newest_confirmed(
    store: &dyn EventStore,
    snapshots: &crate::derived::Snapshots,
    at_most: Position,
    on_failure: OnFailure,
) -> Result<LedgerView, AppError> {
    for position in snapshots.positions()?.into_iter().rev() {
        if position > at_most {
            continue;
        }
        match restore(store, snapshots, position).await {
            Ok(view) => return Ok(view),
            Err(why) if on_failure == OnFailure::Remove => {
                tracing::warn!(position, %why, "a snapshot failed its checks: removed, the log rebuilds it");
                snapshots.remove(position)?;
            }
            Err(why) => {
                tracing::warn!(position, %why, "a snapshot failed its checks: skipped");
            }
        }
    }
    Ok(LedgerView::new())
}

/// Reads, checks and decodes the snapshot of `position`.
pub(super) async fn restore(
    store: &dyn EventStore,
    snapshots: &crate::derived::Snapshots,
    position: Position,
) -> Result<LedgerView, String> {
    let loaded = snapshots.read(position).map_err(|e| e.to_string())?;
    let at = ChainHead {
        position,
        hash: loaded.hash,
    };
    if !log_confirms(store, at).await.map_err(|e| e.to_string())? {
        return Err(format!("the log's record {position} has another hash"));
    }
    let view = crate::background::offload(move || LedgerView::decode_snapshot(&loaded.body))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if view.position() != position {
        return Err(format!("its view is at position {}", view.position()));
    }
    Ok(view)
}

/// The index entry of `record`, applying it to `view` (which notes the license whose
/// Histórico it joins). An inconsistent event is logged and indexed by what it names.
fn apply(view: &LedgerView, record: &Record) -> Result<index::Entry, ProjectionError> {
    let event = record.event()?;
    let license = match view.apply_noting(&record.envelope, &event) {
        Ok(license) => license,
        Err(ProjectionError::Inconsistent { position, problem }) => {
            tracing::warn!(position, %problem, "read model skipped an inconsistent event");
            None
        }
        Err(e) => return Err(e),
    };
    let joins = match &event {
        Event::Terminal(TerminalEvent::CheckedIn(c)) if license.is_some() => {
            if c.ip.is_some() {
                index::Joins::CheckInWithIp
            } else {
                index::Joins::CheckIn
            }
        }
        _ => index::Joins::Changes,
    };
    Ok(index::Entry {
        position: record.envelope.position,
        license,
        customer: view.customer_of(&event),
        event_type: record.envelope.event_type.clone(),
        joins,
    })
}

/// What the applier task shares with the ledger.
pub(super) struct Applier {
    pub store: Arc<dyn EventStore>,
    pub view: Arc<LedgerView>,
    pub derived: Arc<Derived>,
    pub applied: watch::Sender<Position>,
    pub failure: Arc<parking_lot::Mutex<Option<String>>>,
    pub index_failure: Arc<parking_lot::Mutex<Option<String>>>,
    pub stop: watch::Receiver<bool>,
    pub progress: CatchUpLog,
}

impl Applier {
    /// Follows the log from the view's position on until the store closes or the ledger
    /// stops; on a stop, leaves a snapshot of where it got to.
    pub async fn run(mut self) {
        let mut sub = self.store.subscribe_all(self.view.position() + 1);
        let mut batch = index::Batch::default();
        let mut last: Option<ChainHead> = None;
        let mut snapshot_at = self.view.position();
        loop {
            let next = match sub.next().now_or_never() {
                Some(r) => r,
                None => {
                    self.flush(&mut batch, last);
                    tokio::select! {
                        r = sub.next() => r,
                        _ = self.stop.changed() => {
                            self.flush(&mut batch, last);
                            if let Some(at) = last {
                                self.checkpoint(at, snapshot_at, true).await;
                            }
                            return;
                        }
                    }
                }
            };
            let record = match next {
                Ok(r) => r,
                Err(StoreError::Closed) => {
                    self.flush(&mut batch, last);
                    if let Some(at) = last {
                        self.checkpoint(at, snapshot_at, true).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "read model stopped: reading the log failed");
                    *self.failure.lock() = Some(e.to_string());
                    return;
                }
            };
            let entry = match apply(&self.view, &record) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(error = %e, position = record.envelope.position, "read model stopped");
                    *self.failure.lock() = Some(e.to_string());
                    return;
                }
            };
            let head = ChainHead {
                position: record.envelope.position,
                hash: record.envelope.hash,
            };
            batch.push(entry, head.hash);
            last = Some(head);
            if head.position.is_multiple_of(self.derived.checkpoint_every) {
                self.flush(&mut batch, last);
                snapshot_at = self.checkpoint(head, snapshot_at, false).await;
            } else if batch.len() >= APPLY_BATCH_MAX {
                self.flush(&mut batch, last);
            }
        }
    }

    /// Commits the waiting index entries, then tells waiters the view reached `last`.
    fn flush(&mut self, batch: &mut index::Batch, last: Option<ChainHead>) {
        let Some(last) = last else { return };
        if !batch.is_empty() && self.index_failure.lock().is_none() {
            if let Err(e) = self.derived.index.commit(std::mem::take(batch)) {
                tracing::error!(error = %e, "the log index stopped: the Histórico, search and dashboard answer 503 until a restart rebuilds it");
                *self.index_failure.lock() = Some(e.to_string());
            }
        }
        *batch = index::Batch::default();
        if *self.applied.borrow() < last.position {
            self.applied.send_replace(last.position);
            self.progress.applied(last.position);
        }
    }

    /// Writes a snapshot of the view, which is at `at` (the applier holds it still while it
    /// encodes), unless `previous` is that position already. With `last` (a stop) it waits
    /// for the file; otherwise the write goes on in the background. Returns the position
    /// snapshotted.
    async fn checkpoint(&self, at: ChainHead, previous: Position, last: bool) -> Position {
        let ChainHead { position, hash } = at;
        if self.derived.snapshots.is_none()
            || position == 0
            || position == previous
            || self.view.position() != position
            || self.index_failure.lock().is_some()
        {
            return previous;
        }
        // The index must cover the snapshot's position after a crash too; at a stop it is
        // also written out as tables, so that the next start replays no journal.
        if last {
            if let Err(e) = self.derived.index.settle() {
                tracing::warn!(error = %e, "could not write the log index out");
            }
        }
        if let Err(e) = self.derived.index.persist() {
            tracing::warn!(error = %e, "could not make the log index durable: no snapshot taken");
            return previous;
        }
        let body = self.view.encode_snapshot();
        let write = {
            let derived = self.derived.clone();
            move || -> Result<(), DerivedError> {
                let Some(snapshots) = &derived.snapshots else {
                    return Ok(());
                };
                snapshots.write(position, hash, &body)?;
                // Keep checkpoints (multiples of the interval) for as-of; an older resume
                // point that is not one is no longer needed.
                for p in snapshots.positions()? {
                    if p < position && !p.is_multiple_of(derived.checkpoint_every) {
                        snapshots.remove(p)?;
                    }
                }
                Ok(())
            }
        };
        let task = tokio::task::spawn_blocking(write);
        if last {
            match task.await {
                Ok(Ok(())) => tracing::info!(position, "left a snapshot of the read models"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write a snapshot"),
                Err(e) => tracing::warn!(error = %e, "could not write a snapshot"),
            }
        } else {
            tokio::spawn(async move {
                match task.await {
                    Ok(Ok(())) => tracing::debug!(position, "checkpoint written"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not write a checkpoint"),
                    Err(e) => tracing::warn!(error = %e, "could not write a checkpoint"),
                }
            });
        }
        position
    }
}
