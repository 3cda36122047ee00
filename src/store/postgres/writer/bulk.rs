//! An import into an empty store as one transaction (`PgStore::begin_bulk_import`).
//!
//! A batch import pays, for every row, the upkeep of the two unique indexes (`event_id`, a
//! random UUID, and `(stream_id, stream_version)`): past a few million rows their pages no
//! longer fit PostgreSQL's buffers and each insert reads and dirties pages all over them
//! (import rates fell from 46,000/s at 1 M records to 30,000/s at 10 M). Into an empty store
//! nothing needs them until the import ends, so this path:
//!
//! 1. `BEGIN`, locks the head row (`FOR UPDATE`, as every append does) and refuses unless the
//!    log is empty; drops the two unique constraints (transactional DDL: a failure or a lost
//!    connection anywhere before the commit brings them back with the rollback; other
//!    sessions wait for the table until then);
//! 2. opens one binary `COPY` for the whole import; each batch is planned by the same
//!    planner as appends and batch imports ([`plan_batch`]: position, previous hash, time,
//!    stream version and recomputed hash of every record), on a [`Snapshot`] that holds the
//!    version of every stream imported so far (the database cannot answer that cheaply
//!    without the index: memory grows with the number of streams, not of records), and its
//!    rows stream into the `COPY` while the next batch is parsed and planned;
//! 3. at the end, adds the constraints back (each index built once, sorted: an event id
//!    stored twice is refused here, naming it), moves the head with the usual guard, and
//!    commits: the whole file, or nothing.

use std::pin::Pin;

use super::super::conn::timed;
use super::*;

/// Drops the two unique constraints the import's rows would otherwise keep up row by row.
const DROP_UNIQUE: &str = "ALTER TABLE ledger_events \
     DROP CONSTRAINT ledger_events_event_id_key, \
     DROP CONSTRAINT ledger_events_stream_version_key";

/// Adds them back exactly as `migrations/0001_create_events.sql` declares them.
const ADD_UNIQUE: &str = "ALTER TABLE ledger_events \
     ADD CONSTRAINT ledger_events_event_id_key UNIQUE (event_id), \
     ADD CONSTRAINT ledger_events_stream_version_key UNIQUE (stream_id, stream_version)";

/// Memory PostgreSQL may use to sort each index at the end (this transaction only).
const SORT_MEMORY: &str = "SET LOCAL maintenance_work_mem = '512MB'";

/// Rows the final index build is given a time-out for, per `op_timeout`.
const ROWS_PER_TIMEOUT: u64 = 1_000_000;

/// An import in progress (see the module doc). Dropping it without [`Self::finish`] closes
/// its connection: the server rolls everything back.
pub struct BulkImport {
    config: Arc<WriterConfig>,
    client: Client,
    driver: JoinHandle<()>,
    copy: Option<Pin<Box<BinaryCopyInWriter>>>,
    /// The head, its time, and the version of every stream the import has written so far
    /// (`ids` stays empty: the log held none when the import began).
    snapshot: Snapshot,
    /// The head the import began on, which the final head move is guarded by.
    start: ChainHead,
    rows: u64,
}

impl Drop for BulkImport {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl BulkImport {
    /// Connects, begins the transaction, locks the head (refusing a log that is not empty),
    /// drops the unique constraints and opens the `COPY`.
    pub(crate) async fn begin(config: Arc<WriterConfig>) -> Result<Self, StoreError> {
        let (client, connection) =
            connect(&config.pg, config.connect_timeout, "bulk import").await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL bulk import connection ended");
            }
        });
        let op_timeout = config.op_timeout;
        let started = timed(op_timeout, "beginning the import", async {
            let fail = |e: tokio_postgres::Error| pg_error("beginning the import", &e);
            durable_commits(&client).await.map_err(fail)?;
            client.batch_execute("BEGIN").await.map_err(fail)?;
            client.batch_execute(SORT_MEMORY).await.map_err(fail)?;
            let head = client.query_one(LOCK_HEAD, &[]).await.map_err(fail)?;
            let snapshot = snapshot(&head, &[], &[], &config.table)?;
            if snapshot.head.position != 0 {
                return Err(StoreError::InvalidAppend(format!(
                    "the log holds {} records: a bulk import goes into an empty store only",
                    snapshot.head.position
                )));
            }
            client.batch_execute(DROP_UNIQUE).await.map_err(|e| {
                pg_error(
                    "dropping the unique constraints for the import (is another session \
                     using the table?)",
                    &e,
                )
            })?;
            let sink = client.copy_in(COPY_EVENTS).await.map_err(fail)?;
            Ok((snapshot, sink))
        })
        .await;
        let (snapshot, sink) = match started {
            Ok(started) => started,
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        let start = snapshot.head;
        Ok(Self {
            config,
            client,
            driver,
            copy: Some(Box::pin(BinaryCopyInWriter::new(sink, &ALL_COLUMN_TYPES))),
            snapshot,
            start,
            rows: 0,
        })
    }

    /// Checks `records` on their own, plans them after everything written so far (the first
    /// one refused refuses the import, naming its position) and streams their rows into the
    /// `COPY`. Returns the head after them (not committed until [`Self::finish`]).
    pub async fn write(&mut self, records: &[Record]) -> Result<ChainHead, StoreError> {
        let bodies = import_bodies(records)?;
        let config = self.config.clone();
        let planned_at = Instant::now();
        let (plan, results) = plan_batch(&self.snapshot, config.clock.as_ref(), &bodies);
        add_nanos(&config.stats.plan_nanos, planned_at);
        for ((_, _, events, import), result) in bodies.iter().zip(results) {
            let refused = match result {
                Ok(a) if !a.was_retry => continue,
                Ok(stored) => StoreError::DuplicateEventId {
                    event_id: events.first().map(|e| e.event_id).unwrap_or_default(),
                    position: *stored.positions.start(),
                },
                Err(e) => e,
            };
            let position = import.as_ref().map_or(0, |i| i.position);
            return Err(import_refused(position, refused));
        }
        let columns = Columns::of(&plan.rows)?;
        let Some(copy) = self.copy.as_mut() else {
            return Err(StoreError::Closed);
        };
        timed(config.op_timeout, "writing the import", async {
            copy_rows(copy.as_mut(), &columns)
                .await
                .map_err(|e| pg_error("writing the import", &e))
        })
        .await?;
        let (head, last_recorded_at) = (plan.head, plan.last_recorded_at);
        drop(columns);
        drop(plan);
        for record in records {
            let e = &record.envelope;
            match self.snapshot.versions.get_mut(e.stream_id.as_str()) {
                Some(version) => *version = e.stream_version,
                None => {
                    self.snapshot
                        .versions
                        .insert(e.stream_id.as_str().to_owned(), e.stream_version);
                }
            }
        }
        self.snapshot.head = head;
        self.snapshot.last_recorded_at = last_recorded_at;
        self.rows += records.len() as u64;
        Ok(head)
    }

    /// Ends the `COPY`, builds the unique indexes (refusing an event id stored twice), moves
    /// the head from where the import began and commits. On any error nothing is stored.
    pub async fn finish(mut self) -> Result<ChainHead, StoreError> {
        let config = self.config.clone();
        let op_timeout = config.op_timeout;
        if let Some(mut copy) = self.copy.take() {
            timed(op_timeout, "ending the import's COPY", async {
                copy.as_mut()
                    .finish()
                    .await
                    .map_err(|e| pg_error("ending the import's COPY", &e))
            })
            .await?;
        }
        let index_timeout =
            op_timeout * u32::try_from(1 + self.rows / ROWS_PER_TIMEOUT).unwrap_or(u32::MAX);
        timed(index_timeout, "building the unique indexes", async {
            self.client.batch_execute(ADD_UNIQUE).await.map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    let detail = e
                        .as_db_error()
                        .and_then(|d| d.detail())
                        .unwrap_or("a key is duplicated");
                    StoreError::InvalidAppend(format!(
                        "two imported records share a key ({detail}); nothing was stored"
                    ))
                } else {
                    pg_error("building the unique indexes", &e)
                }
            })
        })
        .await?;
        let head = self.snapshot.head;
        let moved = timed(op_timeout, "moving the log head", async {
            self.client
                .query_opt(
                    MOVE_HEAD,
                    &[
                        &to_i64(head.position)?,
                        &head.hash.0.as_slice(),
                        &self.snapshot.last_recorded_at.timestamp_micros(),
                        &to_i64(self.start.position)?,
                        &self.start.hash.0.as_slice(),
                        &config.channel.as_str(),
                    ],
                )
                .await
                .map_err(|e| pg_error("moving the log head", &e))
        })
        .await?;
        if moved.is_none() {
            return Err(StoreError::Database(format!(
                "the log head moved from position {} while the import held it; nothing was \
                 stored",
                self.start.position
            )));
        }
        timed(op_timeout, "committing the import", async {
            self.client.batch_execute("COMMIT").await.map_err(|e| {
                StoreError::Unavailable(format!(
                    "{}; it may or may not be stored: run `verify`, or the import again",
                    pg_error("committing the import", &e)
                ))
            })
        })
        .await?;
        advance(&config.head_tx, head.position);
        Ok(head)
    }
}
