//! Subscriptions to the whole log: catch-up and live are one loop.
//!
//! A subscription never holds records pushed to it. It keeps a cursor and reads forward from
//! the store whenever the store's acknowledged head is past the cursor, and otherwise waits
//! for the head to move. Because the live phase reads the same durable index as the
//! catch-up phase, the hand-over can neither skip nor repeat a record; a missing position in
//! a read is reported as corruption, never skipped.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_events::{Position, Record};
use tokio::sync::watch;

use super::StoreError;

/// Records read per round trip to the store.
pub const SUBSCRIPTION_BATCH: usize = 1000;

/// What a subscription needs from a backend.
#[async_trait]
pub trait HeadSource: Send + Sync + 'static {
    /// Reads acknowledged records from `from` (inclusive), at most `limit`.
    async fn read_from(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError>;
    /// A receiver of the acknowledged head position.
    fn watch_head(&self) -> watch::Receiver<Position>;
}

/// A live feed of records from a position on. Dropping it unsubscribes.
pub struct Subscription {
    source: Arc<dyn HeadSource>,
    head: watch::Receiver<Position>,
    next: Position,
    buffer: VecDeque<Record>,
}

impl Subscription {
    /// Starts at `from` (inclusive; 0 and 1 both mean the beginning).
    pub fn new(source: Arc<dyn HeadSource>, from: Position) -> Self {
        let head = source.watch_head();
        Self {
            source,
            head,
            next: from.max(1),
            buffer: VecDeque::new(),
        }
    }

    /// The position of the record the next call returns.
    pub fn cursor(&self) -> Position {
        self.next
    }

    /// Waits for and returns the next record. Fails with [`StoreError::Closed`] once the store
    /// is closed and every stored record has been delivered.
    pub async fn next(&mut self) -> Result<Record, StoreError> {
        loop {
            if let Some(record) = self.buffer.pop_front() {
                debug_assert_eq!(record.envelope.position, self.next);
                self.next = record.envelope.position + 1;
                return Ok(record);
            }
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let batch = self.source.read_from(self.next, SUBSCRIPTION_BATCH).await?;
                for (expected, record) in (self.next..).zip(&batch) {
                    if record.envelope.position != expected {
                        return Err(StoreError::Corrupt {
                            segment: "(read)".into(),
                            offset: 0,
                            position: expected,
                            problem: format!(
                                "read returned position {} where {expected} was due",
                                record.envelope.position
                            ),
                        });
                    }
                }
                if batch.is_empty() {
                    return Err(StoreError::Corrupt {
                        segment: "(read)".into(),
                        offset: 0,
                        position: self.next,
                        problem: format!("head is {head} but position {} is missing", self.next),
                    });
                }
                self.buffer.extend(batch);
                continue;
            }
            if self.head.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }
}
