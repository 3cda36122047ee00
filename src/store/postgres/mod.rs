//! The PostgreSQL event store: the same log as the file store (same records, same hash
//! chain, same [`EventStore`] semantics) in a table, so that several nodes can share it.
//!
//! # Layout
//! `migrations/` (embedded, applied on open by [`migrate`]) creates, in the configured schema:
//! `ledger_events`, one row per record (the envelope's fields as columns, the postcard payload
//! as `bytea`, a `jsonb` copy of the event's data for auditors' SQL, `prev_hash` and `hash`);
//! `ledger_head`, one row with the last position, hash and time; and `ledger_migrations`.
//! Every connection has the schema as its `search_path`, so no statement names a schema.
//!
//! # Appends
//! Writer lanes on each node batch the appends waiting for them (group commit); see
//! [`writer`](self) for the two paths. Every append statement updates the single
//! `ledger_head` row, guarded by the head its batch was planned on, and holds that row until
//! its commit: positions are dense and commit order is position order even with several nodes
//! writing. Usually a batch is planned on an unlocked read and written with one guarded
//! statement (the lock is then held only while the server inserts and commits); when the
//! guard fails (another node appended in between) the batch is redone under the lock
//! (`SELECT ... FOR UPDATE`, lookups, insert, `COMMIT`). Payloads are encoded and validated by
//! the appending task before the request is queued. A request in a batch fails on its own (a
//! version conflict, a duplicate id); only a database failure fails the whole batch.
//!
//! # Reads
//! Reads go through a small pool and only ever see committed rows, and every row is turned
//! back into the exact record bytes the file store would hold and checked against its stored
//! hash, and its `recorded_at` against the instant the hash covers (see [`rows`](self)): a
//! row altered in SQL is refused with [`StoreError::Corrupt`] naming its position. The JSON
//! copy `data`, which no read returns, is checked against the payload by the reads that
//! select it: [`PgStore::read_all_columns`] (`verify`) and the lookup of a retry's event ids,
//! which answers a retry only from a verified row. `open` checks the head row against the
//! record it names and refuses a damaged one. `verify_chain` and the `verify` of an export
//! therefore work the same on both backends, and [`PgStore::import_record`] replays a file
//! store's export verbatim.
//!
//! # Subscriptions
//! [`EventStore::subscribe_all`] is the backend-neutral [`Subscription`] over a head watch
//! that this node's writer moves after each commit and that a listener task moves on
//! `NOTIFY` from any node (a dedicated `LISTEN` connection), polling `ledger_head` every
//! `poll_interval` in case a notification is missed or the connection drops. A subscription's
//! reads wait out an outage (retrying with backoff) instead of failing.
//!
//! # Failures
//! A refused, closed or timed-out connection is [`StoreError::Unavailable`] (a 503 at the
//! HTTP edge). Nothing needs restarting when the database comes back: the pool makes new
//! connections, the writer reconnects on its next batch, the listener reconnects with
//! backoff. An append whose `COMMIT` got no answer may or may not be stored; retrying it with
//! the same event ids gives the original positions if it was.
//!
//! # Why `tokio-postgres` (and not sqlx)
//! - A lighter build: no proc-macro query checking, no compile-time database, no second
//!   async runtime abstraction; `deadpool-postgres` adds a few hundred lines of pool.
//! - Direct control of the append transaction: the lock, the lookups and the insert are
//!   prepared statements pipelined on connections the writer owns (`COMMIT` sent behind the
//!   insert; speculative inserts queued in order on one connection), which is what keeps the
//!   head lock held for server work only.
//! - A plain `LISTEN` connection whose notifications we poll ourselves, reconnected on our
//!   terms.
//! - Binary parameters and results throughout: whole batches go in as arrays (`UNNEST`),
//!   hashes and payloads as `bytea`, with no text round trip.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use ledger_events::{ChainHead, Hash, Position, Record, StreamId, StreamVersion};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

use self::conn::{pg_config, pg_error, pool_error, read_pool, timed};
use self::listen::{Listener, READ_HEAD};
use self::rows::{
    all_event_columns, check_head, decode_head, decode_log, decode_rows, decode_stream,
    event_columns, StoredHead, READ_HEAD_ROW,
};
pub use self::writer::BulkImport;
use self::writer::{AppendRequest, Counters, ImportBatch, PreparedEvent, WriterConfig, WriterMsg};
use super::subscription::{HeadSource, Subscription};
use super::{
    Appended, EventStore, ExpectedVersion, ImportCheck, NewEvent, PendingImport, StoreError,
    StoreStats, READ_BATCH_MAX,
};
use crate::clock::Clock;

mod conn;
mod copy_out;
mod listen;
mod migrate;
mod rows;
mod writer;

pub(crate) use self::copy_out::copy_log;
pub use self::migrate::{migrate, migrate_with, Migration, MigrationReport, MIGRATIONS};
pub(crate) use self::rows::{decode_columns, CopyTuple};

const READ_ALL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM ledger_events WHERE position >= $1 ORDER BY position LIMIT $2"
);

/// The records at a set of positions.
const READ_POSITIONS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM ledger_events WHERE position = ANY($1) ORDER BY position"
);

/// [`READ_ALL`] with every column, `data` included: what `verify` reads.
const READ_ALL_COLUMNS: &str = concat!(
    "SELECT ",
    all_event_columns!(),
    " FROM ledger_events WHERE position >= $1 ORDER BY position LIMIT $2"
);

const READ_STREAM: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM ledger_events WHERE stream_id = $1 AND stream_version >= $2 \
     ORDER BY stream_version LIMIT $3"
);

const STREAM_VERSION: &str =
    "SELECT COALESCE(max(stream_version), 0) FROM ledger_events WHERE stream_id = $1";

/// First wait of a subscription's read retry while the database is unavailable.
const READ_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between a subscription's read retries.
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

/// Settings of the PostgreSQL store.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// Connection string: `postgres://user:password@host:port/database` or `key=value` pairs.
    pub url: String,
    /// Schema holding the tables (created if missing); `public` when `None`. Lower-case
    /// letters, digits and `_` only.
    pub schema: Option<String>,
    /// Connections of the read pool (the writer and the listener have their own besides).
    pub pool_size: usize,
    /// Writer lanes (one connection each, besides the one all speculative inserts share).
    /// With more than one, the next batch is planned while the previous one commits; on one
    /// node that measured no faster than one lane, which can plan most batches without
    /// reading anything (see `benches/results/2026-11-26-postgres.md`), so the default is 1.
    pub writer_connections: usize,
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// Longest wait for any statement, lock waits included; past it the database is taken to
    /// be unavailable.
    pub op_timeout: Duration,
    /// Most events the writer puts into one transaction.
    pub batch_events_max: usize,
    /// Appends that may wait for the writer before appenders wait to enqueue.
    pub queue_depth: usize,
    /// How often the head is polled besides `LISTEN`.
    pub poll_interval: Duration,
    /// Test hook: the writer sleeps this long after taking the head lock and positions,
    /// before writing, to open the slow-writer race.
    #[doc(hidden)]
    pub stall_after_lock: Option<Duration>,
}

impl PgStoreConfig {
    /// The schema used when none is configured.
    pub const DEFAULT_SCHEMA: &'static str = "public";

    /// Defaults for `url`: schema `public`, 4 read connections, 1 writer lane, 5 s to connect,
    /// 30 s per statement, batches of up to 4096 events, polling every 500 ms.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: 4,
            writer_connections: 1,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(30),
            batch_events_max: 4096,
            queue_depth: 8192,
            poll_interval: Duration::from_millis(500),
            stall_after_lock: None,
        }
    }

    /// The schema in use.
    pub fn schema_name(&self) -> &str {
        self.schema.as_deref().unwrap_or(Self::DEFAULT_SCHEMA)
    }
}

impl fmt::Debug for PgStoreConfig {
    /// Never prints the password of the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema_name())
            .field("pool_size", &self.pool_size)
            .field("writer_connections", &self.writer_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("batch_events_max", &self.batch_events_max)
            .field("queue_depth", &self.queue_depth)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced by `***`.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let path = match path.split_once('?') {
            Some((path, query)) => format!("{path}?{}", redact_password_pairs(query, '&')),
            None => path.to_owned(),
        };
        return format!("{scheme}://{authority}{path}");
    }
    redact_password_pairs(url, ' ')
}

fn redact_password_pairs(s: &str, separator: char) -> String {
    s.split(separator)
        .map(|part| {
            let (key, _) = part.split_once('=').unwrap_or((part, ""));
            if key.trim() == "password" {
                format!("{}=***", key)
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// Counters of a [`PgStore`]'s writer since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PgStoreStats {
    /// Append transactions run (including those that wrote nothing).
    pub transactions: u64,
    /// Transactions that inserted records.
    pub batches_written: u64,
    /// Records inserted.
    pub records_written: u64,
    /// Append requests handled.
    pub appends: u64,
    /// Successful commits of a write.
    pub commits: u64,
    /// Time from sending the insert to the commit's answer.
    pub commit_seconds: f64,
    /// Time reading the head and the lookups: unlocked on the speculative path; from `BEGIN`
    /// to having the head locked (lock waits included) on the locked path.
    pub lock_seconds: f64,
    /// Time spent checking and hashing batches in memory.
    pub plan_seconds: f64,
    /// Batches written on the speculative path (planned without the lock, guarded insert).
    pub speculative_batches: u64,
    /// Batches whose speculation failed (the head had moved) and that were written locked.
    pub fallbacks: u64,
    /// Speculative batches planned on what the node knew, without reading anything first.
    pub plans_without_read: u64,
}

/// The PostgreSQL-backed event store. Cheap to clone; clones share one writer, one pool and
/// one listener. Several `PgStore`s (on several nodes) may share one schema.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<WriterMsg>,
}

struct Inner {
    read: Arc<ReadSide>,
    /// What the writer runs with; also what a bulk import connects and plans with.
    writer_config: Arc<WriterConfig>,
    stats: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Dropping it (or sending `true`) stops the listener and subscriptions' read retries.
    shutdown: watch::Sender<bool>,
}

/// What reads and subscriptions need: the pool and the head watch.
struct ReadSide {
    pool: Pool,
    /// `schema.ledger_events`, for error messages.
    table: String,
    /// `schema.ledger_head`, for error messages.
    head_table: String,
    op_timeout: Duration,
    head_rx: watch::Receiver<Position>,
    shutdown: watch::Receiver<bool>,
}

impl PgStore {
    /// Connects, applies the migrations (see [`migrate`]), reads the head and starts the
    /// writer and the listener. Fails with [`StoreError::Unavailable`] when the database
    /// cannot be reached within `connect_timeout`, and with [`StoreError::Migration`] when the
    /// schema's migration history does not match this build.
    pub async fn open(config: PgStoreConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let schema = config.schema_name().to_owned();
        let pg = pg_config(&config.url, &schema, config.connect_timeout)?;
        migrate(&config).await?;
        let pool = read_pool(
            pg.clone(),
            config.pool_size,
            config.connect_timeout,
            config.op_timeout,
        )?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (head_tx, head_rx) = watch::channel(0);
        let read = Arc::new(ReadSide {
            pool: pool.clone(),
            table: format!("{schema}.ledger_events"),
            head_table: format!("{schema}.ledger_head"),
            op_timeout: config.op_timeout,
            head_rx,
            shutdown: shutdown_rx.clone(),
        });
        let head = read.checked_head().await?;
        head_tx.send_replace(head.position);
        let head_tx = Arc::new(head_tx);
        let channel = format!("ledger_events.{schema}");
        let stats = Arc::new(Counters::default());
        let writer = WriterConfig {
            pg: pg.clone(),
            connect_timeout: config.connect_timeout,
            op_timeout: config.op_timeout,
            clock,
            batch_events_max: config.batch_events_max.max(1),
            stall_after_lock: config.stall_after_lock,
            channel: channel.clone(),
            table: read.table.clone(),
            head_tx: head_tx.clone(),
            stats: stats.clone(),
            speculation: Default::default(),
        };
        let writer_config = Arc::new(writer);
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let writer = tokio::spawn(writer::run(
            writer_config.clone(),
            rx,
            config.writer_connections,
        ));
        let listener = Listener {
            pg,
            pool,
            channel,
            head_tx,
            poll_interval: config.poll_interval.max(Duration::from_millis(10)),
            connect_timeout: config.connect_timeout,
            op_timeout: config.op_timeout,
            shutdown: shutdown_rx,
        };
        let listener = tokio::spawn(listener.run());
        tracing::info!(schema = %schema, head = head.position, "opened PostgreSQL event store");
        Ok(Self {
            inner: Arc::new(Inner {
                read,
                writer_config,
                stats,
                writer: Mutex::new(Some(writer)),
                listener: Mutex::new(Some(listener)),
                shutdown,
            }),
            tx,
        })
    }

    /// Finishes queued appends, then stops the writer and the listener. Other clones' appends
    /// fail with [`StoreError::Closed`] afterwards; reads keep working, and subscriptions end
    /// with `Closed` once they have delivered what they can see.
    pub async fn close(&self) -> Result<(), StoreError> {
        let _ = self.tx.send(WriterMsg::Shutdown).await;
        let writer = self.inner.writer.lock().take();
        if let Some(writer) = writer {
            if let Err(e) = writer.await {
                tracing::warn!(error = %e, "the PostgreSQL writer task ended abnormally");
            }
        }
        self.inner.shutdown.send_replace(true);
        let listener = self.inner.listener.lock().take();
        if let Some(listener) = listener {
            if let Err(e) = listener.await {
                tracing::warn!(error = %e, "the PostgreSQL listener task ended abnormally");
            }
        }
        Ok(())
    }

    /// Counters since open.
    pub fn pg_stats(&self) -> PgStoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.stats;
        let seconds = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed) as f64 / 1e9;
        PgStoreStats {
            transactions: c.transactions.load(Relaxed),
            batches_written: c.batches_written.load(Relaxed),
            records_written: c.records_written.load(Relaxed),
            appends: c.appends.load(Relaxed),
            commits: c.commits.load(Relaxed),
            commit_seconds: seconds(&c.commit_nanos),
            lock_seconds: seconds(&c.lock_nanos),
            plan_seconds: seconds(&c.plan_nanos),
            speculative_batches: c.speculative_batches.load(Relaxed),
            fallbacks: c.fallbacks.load(Relaxed),
            plans_without_read: c.plans_without_read.load(Relaxed),
        }
    }

    /// Appends `record` exactly as it was stored elsewhere (same position, ids, time, hash):
    /// the replay of an export (from either backend) into an empty store. The record must
    /// verify on its own and follow the current head (position, previous hash, time never
    /// decreasing); the writer checks the last two under the head lock, so the chain stays
    /// intact whatever else runs.
    pub async fn import_record(&self, record: &Record) -> Result<Appended, StoreError> {
        let body = writer::import_bodies(std::slice::from_ref(record))?.pop();
        let Some((stream, expected, events, import)) = body else {
            return Err(StoreError::InvalidAppend("no record to import".into()));
        };
        self.submit(&stream, expected, events, import).await
    }

    /// Appends `records` exactly as they were stored elsewhere, as one batch: what
    /// [`Self::import_record`] does for each, in one transaction that moves `ledger_head`
    /// once (under its lock, so no other node interleaves). Each record is checked on its
    /// own, then against the one before it (or the head): position dense, previous hash, time
    /// never decreasing, stream version, event id not stored, and the hash recomputed once
    /// encoded. All or nothing: the first record refused refuses the batch, naming its
    /// position, and nothing of it is stored. Returns the head after the batch.
    pub async fn import_records(&self, records: &[Record]) -> Result<ChainHead, StoreError> {
        self.submit_import(records).await?.wait().await
    }

    /// The first half of [`Self::import_records`]: checks the records on their own and hands
    /// the batch to the writer, which writes batches in the order they are handed over.
    pub async fn submit_import(&self, records: &[Record]) -> Result<PendingImport, StoreError> {
        let bodies = writer::import_bodies(records)?;
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(WriterMsg::Import(ImportBatch { bodies, reply }))
            .await
            .is_err()
        {
            return Err(StoreError::Closed);
        }
        Ok(PendingImport::new(async move {
            answer.await.map_err(|_| StoreError::Closed)?
        }))
    }

    /// Begins an import into this empty store as one transaction, with the unique indexes
    /// built at its end (see `writer::bulk`): feed it with [`BulkImport::write`], then
    /// [`BulkImport::finish`] commits everything or nothing. Until then other sessions wait
    /// for the table. Refused unless the log is empty.
    pub async fn begin_bulk_import(&self) -> Result<BulkImport, StoreError> {
        BulkImport::begin(self.inner.writer_config.clone()).await
    }

    /// Reads like [`EventStore::read_all`], and also checks every row's JSON copy `data`
    /// against its payload (which no other read does: no read returns it): what `verify`
    /// reads.
    pub async fn read_all_columns(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner
            .read
            .read_log(READ_ALL_COLUMNS, from_position, limit)
            .await
    }

    async fn submit(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<PreparedEvent>,
        import: Option<ImportCheck>,
    ) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            stream: stream.clone(),
            expected,
            events,
            reply,
            import,
        };
        if self.tx.send(WriterMsg::Append(request)).await.is_err() {
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Validates and encodes an append in the caller's task, before it reaches the writer.
    fn prepare(events: Vec<NewEvent>) -> Result<Vec<PreparedEvent>, StoreError> {
        crate::store::check_append(events)?
            .into_iter()
            .map(|c| {
                let data_json =
                    serde_json::to_string(&c.event.event.data_json()).map_err(|err| {
                        StoreError::InvalidAppend(format!("event data as JSON: {err}"))
                    })?;
                Ok(PreparedEvent {
                    event_id: c.event.event_id,
                    event_type: c.event.event.event_type(),
                    schema_version: c.event.event.schema_version(),
                    payload: c.payload,
                    data_json,
                    actor: c.event.actor,
                    correlation_id: c.event.correlation_id,
                })
            })
            .collect()
    }
}

/// A position or version as a `bigint` parameter; values past `i64::MAX` (which no log
/// reaches) are clamped, which reads as "past the end".
fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ReadSide {
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        timed(self.op_timeout, what, async {
            let client = self.pool.get().await.map_err(|e| pool_error(what, e))?;
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(|e| pg_error(what, &e))?;
            client
                .query(&statement, params)
                .await
                .map_err(|e| pg_error(what, &e))
        })
        .await
    }

    async fn read_all(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.read_log(READ_ALL, from, limit).await
    }

    /// Reads the log with `sql` ([`READ_ALL`] or [`READ_ALL_COLUMNS`]).
    async fn read_log(
        &self,
        sql: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let from = from.max(1);
        let limit = limit.min(READ_BATCH_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query("reading the log", sql, &[&clamp_i64(from), &(limit as i64)])
            .await?;
        decode_log(&rows, &self.table, from)
    }

    async fn read_positions(&self, positions: &[Position]) -> Result<Vec<Record>, StoreError> {
        let wanted: Vec<i64> = positions
            .iter()
            .take(READ_BATCH_MAX)
            .map(|&p| clamp_i64(p))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .query("reading records", READ_POSITIONS, &[&wanted])
            .await?;
        decode_rows(&rows, &self.table)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let from = from_version.max(1);
        let limit = limit.min(READ_BATCH_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                "reading a stream",
                READ_STREAM,
                &[&stream.as_str(), &clamp_i64(from), &(limit as i64)],
            )
            .await?;
        decode_stream(&rows, &self.table, from)
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        let rows = self.query("reading the log head", READ_HEAD, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Database("ledger_head has no row".into()))?;
        let read = |e: tokio_postgres::Error| pg_error("reading the log head", &e);
        let position: i64 = row.try_get(0).map_err(read)?;
        let hash: &[u8] = row.try_get(1).map_err(read)?;
        let hash = <[u8; 32]>::try_from(hash)
            .map_err(|_| StoreError::Database("ledger_head.last_hash is not 32 bytes".into()))?;
        Ok(ChainHead {
            position: u64::try_from(position).unwrap_or(0),
            hash: Hash(hash),
        })
    }

    /// The head row, checked against the record it names (see [`check_head`]): what `open`
    /// starts from, so that a store (and `verify`) refuses a damaged head instead of appending
    /// after it. A head that moved while it was checked (another node appending) is read
    /// again.
    async fn checked_head(&self) -> Result<ChainHead, StoreError> {
        let mut attempts = 0;
        loop {
            let stored = self.stored_head().await?;
            let last = self.read_all(stored.head.position.max(1), 1).await?;
            match check_head(&stored, last.first(), &self.head_table) {
                Err(_) if attempts < 3 && self.stored_head().await?.head != stored.head => {
                    attempts += 1;
                }
                checked => return checked,
            }
        }
    }

    async fn stored_head(&self) -> Result<StoredHead, StoreError> {
        let rows = self
            .query("reading the log head", READ_HEAD_ROW, &[])
            .await?;
        decode_head(&rows, &self.head_table)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let rows = self
            .query(
                "reading a stream's version",
                STREAM_VERSION,
                &[&stream.as_str()],
            )
            .await?;
        let version: i64 = rows
            .first()
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(|e| pg_error("reading a stream's version", &e))?
            .unwrap_or(0);
        Ok(u64::try_from(version).unwrap_or(0))
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }
}

/// The subscription's view of the store: reads and the head watch, without the writer's
/// sender (so open subscriptions do not keep the writer alive).
struct Feed(Arc<ReadSide>);

#[async_trait]
impl HeadSource for Feed {
    /// Reads like `read_all`, but waits out an unavailable database (retrying with backoff
    /// until the store is closed), so that a follower survives an outage.
    async fn read_from(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut backoff = READ_RETRY_MIN;
        let mut shutdown = self.0.shutdown.clone();
        loop {
            match self.0.read_all(from, limit).await {
                Err(e @ StoreError::Unavailable(_)) if !self.0.stopping() => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "subscription waiting for PostgreSQL");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Err(e),
                    }
                    backoff = (backoff * 2).min(READ_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.0.head_rx.clone()
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let events = Self::prepare(events)?;
        self.submit(stream, expected, events, None).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner
            .read
            .read_stream(stream, from_version, limit)
            .await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read.read_all(from_position, limit).await
    }

    async fn read_positions(&self, positions: &[Position]) -> Result<Vec<Record>, StoreError> {
        self.inner.read.read_positions(positions).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.read.head().await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        self.inner.read.stream_version(stream).await
    }

    fn subscribe_all(&self, from_position: Position) -> Subscription {
        Subscription::new(Arc::new(Feed(self.inner.read.clone())), from_position)
    }

    fn stats(&self) -> Option<StoreStats> {
        let s = self.pg_stats();
        Some(StoreStats {
            write_batches: s.batches_written,
            records_written: s.records_written,
            syncs: s.commits,
            sync_seconds: s.commit_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_config_hides_the_password() {
        for url in [
            "postgres://ledger:s3cret@db.example:5432/ledger",
            "postgres://ledger@db.example/ledger?password=s3cret&sslmode=disable",
            "host=db.example user=ledger password=s3cret dbname=ledger",
        ] {
            let shown = format!("{:?}", PgStoreConfig::new(url));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
        }
    }
}
