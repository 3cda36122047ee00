//! The writer of one node: group commit, one statement or transaction per batch.
//!
//! Appending tasks encode and validate their events, then queue an [`AppendRequest`]. A
//! writer lane takes the first waiting request and every other one queued (up to
//! `batch_events_max` events) and stores them together, in one of two ways.
//!
//! **The locked path** (always correct, used when the speculative one cannot be):
//! 1. `BEGIN`; lock the head row (`SELECT ... FROM ledger_head ... FOR UPDATE`); look up the
//!    batch's streams' versions and its event ids. The three statements are pipelined (one
//!    round trip). The lookups are separate statements after the lock on purpose: under READ
//!    COMMITTED each statement takes a new snapshot, so they see every append committed
//!    before the lock was granted — a single statement would use a snapshot taken before it
//!    waited.
//! 2. In memory, request by request as the file store's writer does: a retry (every id
//!    stored, in this stream, in order) is answered with the original positions; ids stored
//!    elsewhere, a wrong expected version or a bad import are refused for that request only;
//!    the others get positions after the head, versions after the stream's (as stored, or as
//!    left by an earlier request of the batch), `recorded_at` = max(clock, head's time) and
//!    chained hashes.
//! 3. One statement moves the head (guarded: it must still be the head read in 1), inserts
//!    every row of the batch with `UNNEST` of column arrays and calls `pg_notify`; `COMMIT`
//!    is pipelined behind it (one round trip). The insert takes its rows through the head
//!    update, so if the head were not what step 1 read, nothing would be inserted.
//!
//! **The speculative path** (the usual one): read the head, versions and ids in one
//! statement *without* a lock, plan exactly as in 2 on top of that (and of this node's
//! batches still in flight), then send the statement of 3 alone, as its own transaction. Its
//! guard is the proof: every append moves the head, so if the head is still the one planned
//! on, the log is exactly the one planned on. If it is not (another node appended), nothing
//! was stored or answered, and the batch runs on the locked path. The statement takes the
//! head row lock itself (the `UPDATE`), so the lock is held only while the server inserts and
//! commits, never across a round trip; the speculative inserts of a node go through one
//! connection, so the server runs them in the order they were planned, each right after the
//! one it was planned on.
//!
//! **Imports** (`PgStore::import_records`) are a batch of their own, on the locked path: the
//! head is locked and the streams' versions looked up as in 1, every record is planned as its
//! own request by the same planner (so checked exactly as an append of it would be, plus its
//! position, previous hash, time and recomputed hash), and the first record refused refuses
//! the batch (rolled back, nothing stored). Otherwise the head moves once, with the same
//! guard as 3, and the rows go in by binary `COPY`, then `COMMIT`. The batch's ids are not
//! looked up first: the unique `event_id` refuses a copy holding a stored one, and the batch
//! is then planned again with them, so that the refusal names the record. An import into an
//! empty store can instead be one transaction with the unique indexes built at its end
//! ([`bulk`]), planned by the same planner.
//!
//! Either way commit order is position order and positions are dense, across nodes too: an
//! append holds the head row from before it assigns positions (locked path) or from the
//! guard's check (speculative path) until it commits. Payloads are encoded by the appending
//! tasks, never under the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::{join, join4};
use ledger_events::{
    encode_header_into, Actor, ChainHead, Hash, Position, Record, RecordHeader, StreamId,
    StreamVersion,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Config, Statement};
use uuid::Uuid;

use super::conn::{connect, pg_error, replicate};
use super::rows::{actor_kind_name, all_event_columns, decode_row, ALL_COLUMN_TYPES};
use crate::clock::Clock;
mod bulk;

pub use self::bulk::BulkImport;

use crate::store::{
    check_imported_hash, import_refused, recorded_at, Appended, ExpectedVersion, ImportCheck,
    StoreError,
};

const LOCK_HEAD: &str = "SELECT last_position, last_hash, last_recorded_micros \
     FROM ledger_head WHERE id = 1 FOR UPDATE";

const STREAM_VERSIONS: &str = "SELECT u.stream_id, COALESCE((SELECT max(e.stream_version) \
     FROM ledger_events e WHERE e.stream_id = u.stream_id), 0) \
     FROM unnest($1::text[]) AS u(stream_id)";

/// The stored rows of a batch's ids, whole: each is verified before it answers a retry.
const FIND_IDS: &str = concat!(
    "SELECT ",
    all_event_columns!(),
    " FROM ledger_events WHERE event_id = ANY($1::uuid[])"
);

/// The head, the batch's streams' versions and its stored ids, in one statement (so from one
/// snapshot), without any lock: what the speculative path plans on.
const PEEK: &str = "SELECT 0::int2, last_position, last_hash, last_recorded_micros, NULL::text, \
            NULL::int8, NULL::uuid \
       FROM ledger_head WHERE id = 1 \
     UNION ALL \
     SELECT 1::int2, NULL::int8, NULL::bytea, NULL::int8, u.stream_id, \
            COALESCE((SELECT max(e.stream_version) FROM ledger_events e \
                       WHERE e.stream_id = u.stream_id), 0), NULL::uuid \
       FROM unnest($1::text[]) AS u(stream_id) \
     UNION ALL \
     SELECT 2::int2, position, NULL::bytea, NULL::int8, stream_id, stream_version, event_id \
       FROM ledger_events WHERE event_id = ANY($2::uuid[])";

const WRITE: &str = "WITH head AS ( \
         UPDATE ledger_head \
            SET last_position = $1, last_hash = $2, last_recorded_micros = $3 \
          WHERE id = 1 AND last_position = $4 AND last_hash = $5 \
      RETURNING last_position \
     ), ins AS ( \
         INSERT INTO ledger_events (position, stream_id, stream_version, event_id, event_type, \
             schema_version, recorded_at_micros, recorded_at, actor_kind, actor_name, \
             correlation_id, payload, data, prev_hash, hash) \
         SELECT r.position, r.stream_id, r.stream_version, r.event_id, r.event_type, \
             r.schema_version, r.micros, to_timestamp(0) + r.micros * interval '1 microsecond', \
             r.actor_kind, r.actor_name, r.correlation_id, r.payload, r.data::jsonb, \
             r.prev_hash, r.hash \
           FROM head, unnest($7::int8[], $8::text[], $9::int8[], $10::uuid[], $11::text[], \
                $12::int4[], $13::int8[], $14::text[], $15::text[], $16::uuid[], $17::bytea[], \
                $18::text[], $19::bytea[], $20::bytea[]) \
             AS r(position, stream_id, stream_version, event_id, event_type, schema_version, \
                  micros, actor_kind, actor_name, correlation_id, payload, data, prev_hash, hash) \
      RETURNING 1 \
     ) \
     SELECT (SELECT count(*) FROM ins), pg_notify($6, head.last_position::text) FROM head";

/// Moves the head of an import batch (guarded like [`WRITE`]: it must still be the head the
/// batch was planned on) and notifies, before the batch's rows are copied in.
const MOVE_HEAD: &str = "UPDATE ledger_head \
        SET last_position = $1, last_hash = $2, last_recorded_micros = $3 \
      WHERE id = 1 AND last_position = $4 AND last_hash = $5 \
     RETURNING pg_notify($6, last_position::text)";

/// The rows of an import batch, in binary COPY format: every column, in the order of
/// `all_event_columns!()`, whose types are [`ALL_COLUMN_TYPES`].
const COPY_EVENTS: &str = concat!(
    "COPY ledger_events (",
    all_event_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// A `timestamptz` in binary form from microseconds since 1970 (the instant the hash covers).
#[derive(Debug)]
struct Timestamptz(i64);

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01 (UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl ToSql for Timestamptz {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let micros = self
            .0
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or("recorded_at out of range")?;
        out.extend_from_slice(&micros.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// JSON text as a `jsonb` value in binary form (version 1, then the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// An event encoded by the appending task, waiting for its position.
pub(crate) struct PreparedEvent {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub schema_version: u16,
    pub payload: Vec<u8>,
    /// The catalogue's JSON form of the event's data, for the `data` column.
    pub data_json: String,
    pub actor: Actor,
    pub correlation_id: Uuid,
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
    pub reply: Reply,
    /// Set when replaying an exported record verbatim (see `PgStore::import_record`).
    pub import: Option<ImportCheck>,
}

/// Exported records to replay verbatim, one body each (see `PgStore::import_records`):
/// written in one transaction of their own, all or none.
pub(crate) struct ImportBatch {
    pub bodies: Vec<Body>,
    /// The head after the batch, or why the batch was refused.
    pub reply: oneshot::Sender<Result<ChainHead, StoreError>>,
}

pub(crate) enum WriterMsg {
    Append(AppendRequest),
    Import(ImportBatch),
    /// Finish what is queued before this message, then stop.
    Shutdown,
}

/// Monotonic counters of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub batches_written: AtomicU64,
    pub records_written: AtomicU64,
    pub appends: AtomicU64,
    pub commits: AtomicU64,
    pub commit_nanos: AtomicU64,
    pub lock_nanos: AtomicU64,
    pub plan_nanos: AtomicU64,
    pub speculative_batches: AtomicU64,
    pub fallbacks: AtomicU64,
    pub plans_without_read: AtomicU64,
}

fn add_nanos(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Moves a head watch forward (never back).
/// What follows a committed batch of `rows` rows, written since `written_at`, the insert
/// having reported `inserted`: the counters, and the node's durable head moves to `head`.
fn committed(
    config: &WriterConfig,
    written_at: Instant,
    inserted: i64,
    rows: usize,
    head: Position,
) {
    let stats = &config.stats;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    add_nanos(&stats.commit_nanos, written_at);
    if usize::try_from(inserted).ok() != Some(rows) {
        // Cannot happen: the insert takes every row or fails. Say so loudly if it does.
        tracing::error!(
            inserted,
            planned = rows,
            "append batch inserted an unexpected number of rows"
        );
    }
    stats.batches_written.fetch_add(1, Ordering::Relaxed);
    stats
        .records_written
        .fetch_add(rows as u64, Ordering::Relaxed);
    advance(&config.head_tx, head);
}

pub(crate) fn advance(head_tx: &watch::Sender<Position>, position: Position) {
    head_tx.send_if_modified(|h| {
        let moved = position > *h;
        if moved {
            *h = position;
        }
        moved
    });
}

/// The writer's connection and its prepared statements.
struct WriterConn {
    client: Client,
    driver: JoinHandle<()>,
    peek: Statement,
    lock: Statement,
    versions: Statement,
    ids: Statement,
    write: Statement,
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        // Closes the socket even if a statement is still outstanding, so that the server
        // rolls the transaction back and releases the head row.
        self.driver.abort();
    }
}

/// What every lane of a node's writer shares.
pub(crate) struct WriterConfig {
    pub pg: Config,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    pub batch_events_max: usize,
    pub stall_after_lock: Option<Duration>,
    /// The `pg_notify` channel of the schema.
    pub channel: String,
    /// `schema.ledger_events`, for error messages.
    pub table: String,
    pub head_tx: Arc<watch::Sender<Position>>,
    pub stats: Arc<Counters>,
    pub speculation: Speculation,
}

/// Batches after a failed guess during which the writer takes the locked path only (another
/// node is probably writing).
const SPECULATION_PAUSE_BATCHES: u32 = 16;

/// The speculative path's shared state: the batches sent and not yet answered, in the order
/// they were planned, and a pause after a wrong guess.
#[derive(Default)]
pub(crate) struct Speculation {
    /// The one connection every speculative insert of this node goes through, so that the
    /// server runs them in the order they were planned (each on top of the one before).
    ordered: parking_lot::Mutex<Option<Arc<OrderedConn>>>,
    /// Held while a batch is planned (and, on the locked path, until it commits).
    turn: Arc<tokio::sync::Mutex<()>>,
    in_flight: parking_lot::Mutex<Vec<Arc<Overlay>>>,
    known: parking_lot::Mutex<Known>,
    next_id: AtomicU64,
    pause: std::sync::atomic::AtomicU32,
}

/// Most streams whose version a node remembers; past it, it forgets them all and reads again.
const KNOWN_STREAMS_MAX: usize = 65_536;

/// What this node knows exactly about the log as of `head`: the head itself and the versions
/// of some streams. Learnt from reads (with nothing in flight) and from its own speculative
/// batches; forgotten at the first surprise. A batch whose streams are all known is planned
/// without reading anything: if another node appended meanwhile, the guard fails (the head
/// moved); an id already stored fails the insert (`event_id` is unique); either way nothing
/// is stored and the batch is redone on the locked path, which answers retries and refusals.
#[derive(Default)]
struct Known {
    head: Option<(ChainHead, DateTime<Utc>)>,
    versions: HashMap<String, StreamVersion>,
}

impl Known {
    fn snapshot_for(&self, streams: &[&str]) -> Option<Snapshot> {
        let (head, last_recorded_at) = self.head?;
        let mut versions = HashMap::with_capacity(streams.len());
        for &stream in streams {
            versions.insert(stream.to_owned(), *self.versions.get(stream)?);
        }
        Some(Snapshot {
            head,
            last_recorded_at,
            versions,
            ids: HashMap::new(),
        })
    }

    fn learn(&mut self, snapshot: &Snapshot) {
        if self.head.map(|(h, _)| h) != Some(snapshot.head) {
            self.forget();
            self.head = Some((snapshot.head, snapshot.last_recorded_at));
        }
        if self.versions.len() + snapshot.versions.len() > KNOWN_STREAMS_MAX {
            self.versions.clear();
        }
        for (stream, version) in &snapshot.versions {
            self.versions.insert(stream.clone(), *version);
        }
    }

    fn advance(
        &mut self,
        base: ChainHead,
        head: ChainHead,
        last_recorded_at: DateTime<Utc>,
        versions: &HashMap<&str, StreamVersion>,
    ) {
        if self.head.map(|(h, _)| h) != Some(base) {
            self.forget();
            return;
        }
        self.head = Some((head, last_recorded_at));
        if self.versions.len() + versions.len() > KNOWN_STREAMS_MAX {
            self.versions.clear();
        }
        for (stream, version) in versions {
            self.versions.insert((*stream).to_owned(), *version);
        }
    }

    fn forget(&mut self) {
        self.head = None;
        self.versions.clear();
    }
}

/// The connection of the speculative inserts and its prepared insert.
struct OrderedConn {
    client: Client,
    driver: JoinHandle<()>,
    write: Statement,
}

impl Drop for OrderedConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What a batch in flight will have changed once it commits.
struct Overlay {
    id: u64,
    head: ChainHead,
    last_recorded_at: DateTime<Utc>,
    versions: Vec<(String, StreamVersion)>,
    ids: Vec<(Uuid, Position, String, StreamVersion)>,
}

/// How the speculative path ended.
enum Speculated {
    /// Every request is answered.
    Done,
    /// The guess was wrong (or cannot be checked); nothing was stored or answered: run the
    /// batch on the locked path.
    Fallback,
}

/// The queue the lanes take batches from, and whether a lane has seen the shutdown message.
struct Queue {
    rx: mpsc::Receiver<WriterMsg>,
    stopping: bool,
    /// An import taken from the queue while appends were being gathered: the next batch.
    import: Option<ImportBatch>,
}

/// What a lane took from the queue.
enum Work {
    Appends(Vec<AppendRequest>),
    Import(ImportBatch),
}

/// One lane of the writer: a connection running one append transaction at a time.
struct Lane {
    config: Arc<WriterConfig>,
    conn: Option<WriterConn>,
}

/// A lane's turn to plan: only one batch of a node is planned at a time, so that each plans
/// on top of the one before (see [`run`]).
type Turn = tokio::sync::OwnedMutexGuard<()>;

/// A row this batch will insert.
struct PlannedRow<'a> {
    position: Position,
    stream: &'a str,
    version: StreamVersion,
    event: &'a PreparedEvent,
    recorded_at_micros: i64,
    prev_hash: Hash,
    hash: Hash,
}

/// What the database held for the batch when the head was locked.
struct Snapshot {
    head: ChainHead,
    last_recorded_at: DateTime<Utc>,
    versions: HashMap<String, StreamVersion>,
    /// Event id → (position, stream, version) of the ids of the batch already stored.
    ids: HashMap<Uuid, (Position, String, StreamVersion)>,
}

/// The batch being planned: what the log will look like once it commits.
struct Plan<'a> {
    base: Position,
    head: ChainHead,
    last_recorded_at: DateTime<Utc>,
    rows: Vec<PlannedRow<'a>>,
    versions: HashMap<&'a str, StreamVersion>,
    /// Ids placed by this batch → index into `rows`.
    new_ids: HashMap<Uuid, usize>,
    scratch: Vec<u8>,
}

/// Runs the writer of a node until shutdown or until every sender is gone: `lanes` lanes,
/// each with its own connection (reads, locked path), plus one connection that every
/// speculative insert of the node goes through.
///
/// A lane waits for the first queued request, then for its turn to plan, then takes every
/// other request queued by then (so a batch holds whatever arrived while the batch before it
/// was being planned and written). On the speculative path the turn passes on as soon as the
/// insert is queued on the ordered connection: with several lanes, the next batch is planned
/// on top of this one while this one commits, and its insert runs right after it. On the
/// locked path the turn is held until the commit, so a node never plans on top of a
/// transaction whose outcome it cannot predict.
pub(crate) async fn run(config: Arc<WriterConfig>, rx: mpsc::Receiver<WriterMsg>, lanes: usize) {
    let queue = Arc::new(tokio::sync::Mutex::new(Queue {
        rx,
        stopping: false,
        import: None,
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..lanes.max(1) {
        let mut lane = Lane {
            config: config.clone(),
            conn: None,
        };
        let queue = queue.clone();
        tasks.spawn(async move {
            loop {
                match lane.gather(&queue).await {
                    (Work::Appends(requests), _) if requests.is_empty() => break,
                    (Work::Appends(requests), turn) => lane.process(requests, turn).await,
                    (Work::Import(batch), turn) => lane.import(batch, turn).await,
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a PostgreSQL writer lane ended abnormally");
        }
    }
    tracing::debug!("PostgreSQL writer stopped");
}

impl Lane {
    /// Waits for the next batch: the first queued request, then this lane's turn to plan,
    /// then every other request queued by then, up to `batch_events_max` events, stopping
    /// before an import (an import is a batch of its own). No appends once the writer stops.
    async fn gather(&self, queue: &tokio::sync::Mutex<Queue>) -> (Work, Option<Turn>) {
        let mut q = queue.lock().await;
        let mut requests = Vec::new();
        let turn = || self.config.speculation.turn.clone().lock_owned();
        if let Some(import) = q.import.take() {
            return (Work::Import(import), Some(turn().await));
        }
        if q.stopping {
            return (Work::Appends(requests), None);
        }
        let mut events = 0usize;
        match q.rx.recv().await {
            Some(WriterMsg::Append(r)) => {
                events += r.events.len();
                requests.push(r);
            }
            Some(WriterMsg::Import(import)) => {
                return (Work::Import(import), Some(turn().await));
            }
            Some(WriterMsg::Shutdown) | None => q.stopping = true,
        }
        let turn = turn().await;
        while !q.stopping && events < self.config.batch_events_max {
            match q.rx.try_recv() {
                Ok(WriterMsg::Append(r)) => {
                    events += r.events.len();
                    requests.push(r);
                }
                Ok(WriterMsg::Import(import)) => {
                    q.import = Some(import);
                    break;
                }
                Ok(WriterMsg::Shutdown) => q.stopping = true,
                Err(_) => break,
            }
        }
        (Work::Appends(requests), Some(turn))
    }

    /// The node's ordered insert connection, (re)connecting if needed. Called during the
    /// lane's turn, so lanes do not connect twice.
    async fn ordered(&self) -> Result<Arc<OrderedConn>, StoreError> {
        let spec = &self.config.speculation;
        if let Some(conn) = spec.ordered.lock().as_ref() {
            if !conn.client.is_closed() {
                return Ok(conn.clone());
            }
        }
        let (client, connection) = connect(
            &self.config.pg,
            self.config.connect_timeout,
            "ordered writer",
        )
        .await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL ordered writer connection ended");
            }
        });
        let timeout = self.config.connect_timeout.max(self.config.op_timeout);
        let prepared = async {
            durable_commits(&client).await?;
            client.prepare(WRITE).await
        };
        let write = match tokio::time::timeout(timeout, prepared).await {
            Ok(Ok(write)) => write,
            Ok(Err(e)) => {
                driver.abort();
                return Err(pg_error("preparing the writer's insert", &e));
            }
            Err(_) => {
                driver.abort();
                return Err(StoreError::Unavailable(format!(
                    "preparing the writer's insert: no answer within {timeout:?}"
                )));
            }
        };
        let conn = Arc::new(OrderedConn {
            client,
            driver,
            write,
        });
        *spec.ordered.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// The writer's connection, (re)connecting and preparing the statements if needed.
    async fn connection(&mut self) -> Result<&WriterConn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let timeout = self.config.connect_timeout.max(self.config.op_timeout);
            let (client, connection) =
                connect(&self.config.pg, self.config.connect_timeout, "writer").await?;
            let driver = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL writer connection ended");
                }
            });
            let prepared = tokio::time::timeout(timeout, async {
                durable_commits(&client).await?;
                let (lock, versions, ids, write) = futures_util::future::try_join4(
                    client.prepare(LOCK_HEAD),
                    client.prepare(STREAM_VERSIONS),
                    client.prepare(FIND_IDS),
                    client.prepare(WRITE),
                )
                .await?;
                let peek = client.prepare(PEEK).await?;
                Ok::<_, tokio_postgres::Error>((peek, lock, versions, ids, write))
            })
            .await;
            let (peek, lock, versions, ids, write) = match prepared {
                Ok(Ok(statements)) => statements,
                Ok(Err(e)) => {
                    driver.abort();
                    return Err(pg_error("preparing the writer's statements", &e));
                }
                Err(_) => {
                    driver.abort();
                    return Err(StoreError::Unavailable(format!(
                        "preparing the writer's statements: no answer within {timeout:?}"
                    )));
                }
            };
            tracing::debug!("PostgreSQL writer connected");
            self.conn = Some(WriterConn {
                client,
                driver,
                peek,
                lock,
                versions,
                ids,
                write,
            });
        }
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the writer has no connection".into()))
    }

    /// Runs one batch and answers every request in it.
    async fn process(&mut self, requests: Vec<AppendRequest>, turn: Option<Turn>) {
        let stats = &self.config.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .appends
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(requests.len());
        let mut bodies = Vec::with_capacity(requests.len());
        for r in requests {
            replies.push(Some(r.reply));
            bodies.push((r.stream, r.expected, r.events, r.import));
        }
        let pause = &self.config.speculation.pause;
        let speculate = self.config.stall_after_lock.is_none()
            && pause
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1))
                .is_err();
        let outcome = if speculate {
            match self.speculate(&bodies, &mut replies, turn).await {
                Ok(Speculated::Done) => Ok(()),
                Ok(Speculated::Fallback) => {
                    self.config.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let turn = self.config.speculation.turn.clone().lock_owned().await;
                    self.transact(&bodies, &mut replies, Some(turn)).await
                }
                Err(e) => Err(e),
            }
        } else {
            self.transact(&bodies, &mut replies, turn).await
        };
        if let Err(e) = outcome {
            if e.is_unavailable() {
                tracing::warn!(error = %e, "append batch failed: database unavailable");
            } else {
                tracing::error!(error = %e, "append batch failed");
            }
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(replicate(&e)));
            }
        }
    }

    /// The speculative path: plan on an unlocked read of the head (plus this node's batches
    /// still in flight), then send the guarded insert as one statement, which takes the head
    /// lock itself. The guard (the head is still the one planned on) proves the plan right:
    /// every append moves the head, so an unchanged head means an unchanged log. Nothing is
    /// answered until the guard has held; when it does not, nothing was stored and the batch
    /// goes to the locked path. The head lock is then held only while the server inserts and
    /// commits, never across a round trip to this node.
    async fn speculate(
        &mut self,
        bodies: &[Body],
        replies: &mut [Option<Reply>],
        turn: Option<Turn>,
    ) -> Result<Speculated, StoreError> {
        let config = self.config.clone();
        let op_timeout = config.op_timeout;
        let stats = &config.stats;
        // Taken before the read: a batch that leaves the list after this point has committed
        // before the read starts, so the read sees it.
        let overlays: Vec<Arc<Overlay>> = config.speculation.in_flight.lock().clone();
        let (streams, ids) = keys(bodies);
        let started = Instant::now();
        // With nothing in flight, what this node knows may be enough to plan on: no read.
        let known = if overlays.is_empty() {
            config.speculation.known.lock().snapshot_for(&streams)
        } else {
            None
        };
        let ids_looked_up = known.is_none();
        let snapshot = match known {
            Some(snapshot) => {
                stats.plans_without_read.fetch_add(1, Ordering::Relaxed);
                snapshot
            }
            None => {
                let conn = self.connection().await?;
                let peeked = tokio::time::timeout(
                    op_timeout,
                    conn.client.query(&conn.peek, &[&streams, &ids]),
                )
                .await;
                let rows = match peeked {
                    Err(_) => {
                        self.conn = None;
                        return Err(StoreError::Unavailable(format!(
                            "reading the log head: no answer within {op_timeout:?}"
                        )));
                    }
                    Ok(Err(e)) => {
                        if conn.client.is_closed() {
                            self.conn = None;
                        }
                        return Err(pg_error("reading the log head", &e));
                    }
                    Ok(Ok(rows)) => rows,
                };
                let mut snapshot = snapshot_from_peek(&rows)?;
                if !snapshot.ids.is_empty() {
                    // Ids already stored (a retry, or a reuse): the locked path answers them
                    // from their rows, read whole and verified.
                    return Ok(Speculated::Fallback);
                }
                if let Some(last) = overlays.last() {
                    for o in &overlays {
                        for (stream, version) in &o.versions {
                            snapshot.versions.insert(stream.clone(), *version);
                        }
                        for (id, position, stream, version) in &o.ids {
                            snapshot
                                .ids
                                .insert(*id, (*position, stream.clone(), *version));
                        }
                    }
                    snapshot.head = last.head;
                    snapshot.last_recorded_at = last.last_recorded_at;
                } else {
                    config.speculation.known.lock().learn(&snapshot);
                }
                snapshot
            }
        };
        add_nanos(&stats.lock_nanos, started);

        let planned_at = Instant::now();
        let (plan, results) = plan_batch(&snapshot, config.clock.as_ref(), bodies);
        add_nanos(&stats.plan_nanos, planned_at);
        if plan.rows.is_empty() {
            // Only refusals and retries: nothing to write whose guard would confirm them.
            return Ok(Speculated::Fallback);
        }
        if !ids_looked_up && results.iter().any(Result::is_err) {
            // Planned without the stored ids: a refusal may really be a retry (whose answer is
            // its original positions, whatever the expected version says).
            return Ok(Speculated::Fallback);
        }
        let write_params = WriteParams::of(&plan, &snapshot.head, &config.channel)?;
        let overlay = Arc::new(Overlay {
            id: config.speculation.next_id.fetch_add(1, Ordering::Relaxed),
            head: plan.head,
            last_recorded_at: plan.last_recorded_at,
            versions: plan
                .versions
                .iter()
                .map(|(stream, version)| ((*stream).to_owned(), *version))
                .collect(),
            ids: plan
                .rows
                .iter()
                .map(|r| (r.event.event_id, r.position, r.stream.to_owned(), r.version))
                .collect(),
        });
        config.speculation.in_flight.lock().push(overlay.clone());
        let ordered = match self.ordered().await {
            Ok(ordered) => ordered,
            Err(e) => {
                config
                    .speculation
                    .in_flight
                    .lock()
                    .retain(|o| o.id != overlay.id);
                return Err(e);
            }
        };
        let written_at = Instant::now();
        let params = write_params.params();
        let write = ordered.client.query_opt(&ordered.write, &params);
        let mut write = std::pin::pin!(write);
        // The first poll queues the insert on the ordered connection; only then may the next
        // lane plan its batch on top of this one (its insert then runs after this one).
        let early = futures_util::FutureExt::now_or_never(write.as_mut());
        drop(turn);
        let result = match early {
            Some(done) => Ok(done),
            None => tokio::time::timeout(op_timeout, write).await,
        };
        // What the node knows moves on (or is forgotten) before the batch leaves the list, so
        // that a lane planning next finds one or the other up to date.
        if matches!(result, Ok(Ok(Some(_)))) {
            config.speculation.known.lock().advance(
                snapshot.head,
                plan.head,
                plan.last_recorded_at,
                &plan.versions,
            );
        } else {
            // Whatever happened, this node no longer knows the log exactly.
            config.speculation.known.lock().forget();
        }
        config
            .speculation
            .in_flight
            .lock()
            .retain(|o| o.id != overlay.id);
        let wrong_guess = || {
            config
                .speculation
                .pause
                .store(SPECULATION_PAUSE_BATCHES, Ordering::Relaxed);
            Ok(Speculated::Fallback)
        };
        let forget_ordered = || {
            let mut slot = config.speculation.ordered.lock();
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &ordered)) {
                *slot = None;
            }
        };
        let inserted = match result {
            Err(_) => {
                forget_ordered();
                return Err(StoreError::Unavailable(format!(
                    "writing an append batch: no answer within {op_timeout:?}; it may or may \
                     not be stored, retry with the same event ids"
                )));
            }
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                // An id of the batch is stored already (a retry, or a duplicate): the
                // statement was rolled back whole, and the locked path will sort it out. Not
                // a wrong guess about the head: no pause.
                tracing::debug!(error = %e, "speculative append batch hit a stored id");
                return Ok(Speculated::Fallback);
            }
            Ok(Err(e)) => {
                if ordered.client.is_closed() {
                    forget_ordered();
                }
                let e = pg_error("writing an append batch", &e);
                if e.is_unavailable() {
                    return Err(StoreError::Unavailable(format!(
                        "{e}; the batch may or may not be stored, retry with the same event ids"
                    )));
                }
                // Rolled back whole (a single statement): try again under the lock.
                tracing::warn!(error = %e, "speculative append batch refused; retrying it locked");
                return wrong_guess();
            }
            Ok(Ok(None)) => return wrong_guess(),
            Ok(Ok(Some(row))) => row.try_get::<_, i64>(0).unwrap_or(-1),
        };
        stats.speculative_batches.fetch_add(1, Ordering::Relaxed);
        committed(
            &config,
            written_at,
            inserted,
            plan.rows.len(),
            plan.head.position,
        );
        for (result, reply) in results.into_iter().zip(replies.iter_mut()) {
            if let Some(reply) = reply.take() {
                let _ = reply.send(result);
            }
        }
        Ok(Speculated::Done)
    }

    /// The transaction of one batch. Requests answered inside have their reply taken; on
    /// `Err`, the caller answers the rest with the error.
    async fn transact(
        &mut self,
        bodies: &[Body],
        replies: &mut [Option<Reply>],
        // Held until this returns, after the commit: see `run`.
        _turn: Option<Turn>,
    ) -> Result<(), StoreError> {
        let config = self.config.clone();
        let op_timeout = config.op_timeout;
        let stats = &config.stats;

        // 1. Lock the head, then look up versions and ids.
        let snapshot = self.lock_snapshot(bodies, true).await?;

        // 2. Plan in memory.
        let planned_at = Instant::now();
        let (plan, results) = plan_batch(&snapshot, config.clock.as_ref(), bodies);
        let mut verdicts = Vec::with_capacity(bodies.len());
        for (result, reply) in results.into_iter().zip(replies.iter_mut()) {
            match result {
                Ok(a) => verdicts.push(Some(a)),
                Err(e) => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(Err(e));
                    }
                    verdicts.push(None);
                }
            }
        }
        // Retries of appends committed before this batch are answered now.
        for (verdict, reply) in verdicts.iter_mut().zip(replies.iter_mut()) {
            if let Some(a) = verdict {
                if *a.positions.end() <= plan.base {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(Ok(a.clone()));
                    }
                    *verdict = None;
                }
            }
        }
        add_nanos(&stats.plan_nanos, planned_at);

        if let Some(stall) = config.stall_after_lock {
            // Test hook: hold the head (and the positions just taken) for a while.
            tokio::time::sleep(stall).await;
        }

        if plan.rows.is_empty() {
            // Nothing to write: end the transaction to release the head.
            let Some(conn) = self.conn.as_ref() else {
                return Err(StoreError::Unavailable(
                    "the writer lost its connection".into(),
                ));
            };
            let end = tokio::time::timeout(op_timeout, conn.client.batch_execute("COMMIT")).await;
            if !matches!(end, Ok(Ok(()))) {
                self.conn = None;
            }
            return Ok(());
        }

        // 3. Write and commit.
        let written_at = Instant::now();
        let inserted = self.write_commit(&plan, &snapshot.head).await?;
        committed(
            &config,
            written_at,
            inserted,
            plan.rows.len(),
            plan.head.position,
        );
        for (verdict, reply) in verdicts.into_iter().zip(replies.iter_mut()) {
            if let (Some(a), Some(reply)) = (verdict, reply.take()) {
                let _ = reply.send(Ok(a));
            }
        }
        Ok(())
    }

    /// Runs one import batch in a transaction of its own and answers it.
    async fn import(&mut self, batch: ImportBatch, turn: Option<Turn>) {
        let stats = &self.config.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .appends
            .fetch_add(batch.bodies.len() as u64, Ordering::Relaxed);
        let result = self.import_locked(&batch.bodies, turn).await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                tracing::warn!(error = %e, "import batch failed: database unavailable");
            } else {
                tracing::warn!(error = %e, "import batch refused");
            }
        }
        let _ = batch.reply.send(result);
    }

    /// The import's transaction: on the locked path, every record planned as its own request
    /// by the same planner as appends (so checked exactly as [`Self::transact`] checks it);
    /// the first record refused refuses the batch, naming its position, and the transaction
    /// is rolled back. A record whose event id is stored already is refused too (an import
    /// stores each id once; it is not a retry). Otherwise the rows go in with the append's
    /// guarded statement, moving `ledger_head` once, and commit.
    async fn import_locked(
        &mut self,
        bodies: &[Body],
        // Held until this returns, after the commit: see `run`.
        _turn: Option<Turn>,
    ) -> Result<ChainHead, StoreError> {
        let config = self.config.clone();
        // First without looking the batch's ids up (the usual case: none is stored; the
        // unique `event_id` refuses the copy if one is), then, if one is, with them, so that
        // the planner names the record.
        for look_up_ids in [false, true] {
            let snapshot = self.lock_snapshot(bodies, look_up_ids).await?;
            let planned_at = Instant::now();
            let (plan, results) = plan_batch(&snapshot, config.clock.as_ref(), bodies);
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
                self.abandon().await;
                let position = import.as_ref().map_or(0, |i| i.position);
                return Err(import_refused(position, refused));
            }
            if plan.rows.is_empty() {
                self.abandon().await;
                return Ok(snapshot.head);
            }
            let written_at = Instant::now();
            match self.copy_commit(&plan, &snapshot.head).await? {
                Copied::Rows(inserted) => {
                    committed(
                        &config,
                        written_at,
                        inserted,
                        plan.rows.len(),
                        plan.head.position,
                    );
                    return Ok(plan.head);
                }
                Copied::StoredId => continue,
            }
        }
        Err(StoreError::Database(
            "an import batch hit a stored event id that its lookup did not find".into(),
        ))
    }

    /// Moves the head (guarded) and copies the planned rows in, then commits; the transaction
    /// is the one [`Self::lock_snapshot`] began. Nothing is stored unless this returns
    /// `Rows` (or an error saying the commit got no answer).
    async fn copy_commit(
        &mut self,
        plan: &Plan<'_>,
        old: &ChainHead,
    ) -> Result<Copied, StoreError> {
        let op_timeout = self.config.op_timeout;
        let prepared = (|| {
            Ok::<_, StoreError>((
                to_i64(plan.head.position)?,
                to_i64(old.position)?,
                Columns::of(&plan.rows)?,
            ))
        })();
        let (new_position, old_position, columns) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        };
        let Some(conn) = self.conn.as_ref() else {
            return Err(StoreError::Unavailable(
                "the writer lost its connection".into(),
            ));
        };
        let client = &conn.client;
        let channel = self.config.channel.as_str();
        let last_micros = plan.last_recorded_at.timestamp_micros();
        let copy = async {
            let moved = client
                .query_opt(
                    MOVE_HEAD,
                    &[
                        &new_position,
                        &plan.head.hash.0.as_slice(),
                        &last_micros,
                        &old_position,
                        &old.hash.0.as_slice(),
                        &channel,
                    ],
                )
                .await?;
            if moved.is_none() {
                return Ok(None);
            }
            let sink = client.copy_in(COPY_EVENTS).await?;
            let writer = BinaryCopyInWriter::new(sink, &ALL_COLUMN_TYPES);
            let mut writer = std::pin::pin!(writer);
            copy_rows(writer.as_mut(), &columns).await?;
            writer.finish().await.map(Some)
        };
        let copied = match tokio::time::timeout(op_timeout, copy).await {
            Err(_) => {
                // Nothing committed; closing the connection rolls it back.
                self.conn = None;
                return Err(StoreError::Unavailable(format!(
                    "writing an import batch: no answer within {op_timeout:?}; nothing of it \
                     was stored"
                )));
            }
            Ok(Err(e)) => {
                let stored_id =
                    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
                let e = pg_error("writing an import batch", &e);
                self.abandon().await;
                if stored_id {
                    return Ok(Copied::StoredId);
                }
                return Err(e);
            }
            Ok(Ok(None)) => {
                self.abandon().await;
                return Err(StoreError::Database(format!(
                    "the log head moved from position {} while it was locked; nothing was \
                     written",
                    old.position
                )));
            }
            Ok(Ok(Some(n))) => n,
        };
        let Some(conn) = self.conn.as_ref() else {
            return Err(StoreError::Unavailable(
                "the writer lost its connection".into(),
            ));
        };
        let commit = tokio::time::timeout(op_timeout, conn.client.batch_execute("COMMIT")).await;
        if !matches!(commit, Ok(Ok(()))) {
            self.conn = None;
            return Err(StoreError::Unavailable(
                "committing an import batch: no answer; it may or may not be stored, run the \
                 import again to find out (it goes on after what is stored)"
                    .into(),
            ));
        }
        Ok(Copied::Rows(i64::try_from(copied).unwrap_or(-1)))
    }

    /// Begins a transaction, locks the head row, then looks up the versions of the batch's
    /// streams and (with `look_up_ids`) its ids already stored (pipelined, in this order; see
    /// the module doc).
    async fn lock_snapshot(
        &mut self,
        bodies: &[Body],
        look_up_ids: bool,
    ) -> Result<Snapshot, StoreError> {
        let config = self.config.clone();
        config.speculation.known.lock().forget();
        let op_timeout = config.op_timeout;
        let stats = &config.stats;
        let conn = self.connection().await?;
        let (streams, mut ids) = keys(bodies);
        if !look_up_ids {
            ids.clear();
        }
        let started = Instant::now();
        let step = tokio::time::timeout(
            op_timeout,
            join4(
                conn.client.batch_execute("BEGIN"),
                conn.client.query_one(&conn.lock, &[]),
                conn.client.query(&conn.versions, &[&streams]),
                conn.client.query(&conn.ids, &[&ids]),
            ),
        )
        .await;
        let snapshot = match step {
            Err(_) => {
                self.conn = None;
                return Err(StoreError::Unavailable(format!(
                    "locking the log head: no answer within {op_timeout:?}"
                )));
            }
            Ok((begin, head, versions, found)) => {
                let read = begin
                    .and(head)
                    .and_then(|head| Ok((head, versions?, found?)))
                    .map_err(|e| pg_error("locking the log head", &e))
                    .and_then(|(head, versions, found)| {
                        snapshot(&head, &versions, &found, &config.table)
                    });
                match read {
                    Ok(s) => s,
                    Err(e) => {
                        self.abandon().await;
                        return Err(e);
                    }
                }
            }
        };
        add_nanos(&stats.lock_nanos, started);
        Ok(snapshot)
    }

    /// Writes a planned batch with the guarded statement (the head must still be `old`) and
    /// commits (pipelined); returns the rows inserted. On `Err` nothing is stored, or, when
    /// the commit got no answer, it may be (the error says so).
    async fn write_commit(&mut self, plan: &Plan<'_>, old: &ChainHead) -> Result<i64, StoreError> {
        let op_timeout = self.config.op_timeout;
        let write_params = match WriteParams::of(plan, old, &self.config.channel) {
            Ok(params) => params,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        };
        let Some(conn) = self.conn.as_ref() else {
            return Err(StoreError::Unavailable(
                "the writer lost its connection".into(),
            ));
        };
        let result = tokio::time::timeout(
            op_timeout,
            join(
                conn.client.query_opt(&conn.write, &write_params.params()),
                conn.client.batch_execute("COMMIT"),
            ),
        )
        .await;
        let (write, commit) = match result {
            Ok(pair) => pair,
            Err(_) => {
                self.conn = None;
                return Err(StoreError::Unavailable(format!(
                    "committing an append batch: no answer within {op_timeout:?}; it may or may \
                     not be stored, retry with the same event ids"
                )));
            }
        };
        let inserted = match write {
            // The COMMIT behind a failed statement rolled the transaction back.
            Err(e) => {
                if conn.client.is_closed() {
                    self.conn = None;
                }
                return Err(pg_error("writing an append batch", &e));
            }
            Ok(None) => {
                return Err(StoreError::Database(format!(
                    "the log head moved from position {} while it was locked; nothing was \
                     written",
                    old.position
                )))
            }
            Ok(Some(row)) => row.try_get::<_, i64>(0).unwrap_or(-1),
        };
        if let Err(e) = commit {
            self.conn = None;
            let e = pg_error("committing an append batch", &e);
            return Err(StoreError::Unavailable(format!(
                "{e}; the batch may or may not be stored, retry with the same event ids"
            )));
        }
        Ok(inserted)
    }

    /// Ends a transaction that failed before writing; drops the connection if even that
    /// fails (the server then rolls back when the socket closes).
    async fn abandon(&mut self) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        if conn.client.is_closed() {
            self.conn = None;
            return;
        }
        let rollback = tokio::time::timeout(
            self.config.op_timeout,
            conn.client.batch_execute("ROLLBACK"),
        )
        .await;
        if !matches!(rollback, Ok(Ok(()))) {
            self.conn = None;
        }
    }
}

/// Writes a batch's rows into a binary `COPY` (of [`COPY_EVENTS`]).
async fn copy_rows(
    mut writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    c: &Columns<'_>,
) -> Result<(), tokio_postgres::Error> {
    for i in 0..c.positions.len() {
        let recorded_at = Timestamptz(c.micros[i]);
        let data = Jsonb(c.data[i]);
        writer
            .as_mut()
            .write(&[
                &c.positions[i],
                &c.streams[i],
                &c.versions[i],
                &c.ids[i],
                &c.types[i],
                &c.schema_versions[i],
                &c.micros[i],
                &c.actor_kinds[i],
                &c.actor_names[i],
                &c.correlation_ids[i],
                &c.payloads[i],
                &c.prev_hashes[i],
                &c.hashes[i],
                &recorded_at,
                &data,
            ])
            .await?;
    }
    Ok(())
}

/// How an import's copy ended.
enum Copied {
    /// Committed, with the rows copied.
    Rows(i64),
    /// An event id of the batch is stored already; rolled back, nothing stored.
    StoredId,
}

/// The bodies of an import batch: each record checked on its own (see
/// [`crate::store::check_import_batch`]) and prepared as a request of one event.
pub(crate) fn import_bodies(records: &[Record]) -> Result<Vec<Body>, StoreError> {
    let checked = crate::store::check_import_batch(records)?;
    let mut bodies = Vec::with_capacity(records.len());
    for (record, (event, import)) in records.iter().zip(checked) {
        let e = &record.envelope;
        let data_json = serde_json::to_string(&event.data_json()).map_err(|err| {
            StoreError::InvalidAppend(format!(
                "record at position {}: event data as JSON: {err}",
                e.position
            ))
        })?;
        let prepared = PreparedEvent {
            event_id: e.event_id,
            event_type: event.event_type(),
            schema_version: e.schema_version,
            payload: record.payload.clone(),
            data_json,
            actor: e.actor.clone(),
            correlation_id: e.correlation_id,
        };
        bodies.push((
            e.stream_id.clone(),
            ExpectedVersion::Exact(e.stream_version - 1),
            vec![prepared],
            Some(import),
        ));
    }
    Ok(bodies)
}

/// One request of a batch, without its reply.
pub(crate) type Body = (
    StreamId,
    ExpectedVersion,
    Vec<PreparedEvent>,
    Option<ImportCheck>,
);

/// The streams and event ids a batch must look up.
fn keys(bodies: &[Body]) -> (Vec<&str>, Vec<Uuid>) {
    let mut streams: Vec<&str> = bodies.iter().map(|b| b.0.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    let ids = bodies
        .iter()
        .flat_map(|b| b.2.iter().map(|e| e.event_id))
        .collect();
    (streams, ids)
}

/// Plans every request of a batch on `snapshot`, in order; returns the plan and each
/// request's answer-to-be.
fn plan_batch<'a>(
    snapshot: &'a Snapshot,
    clock: &dyn Clock,
    bodies: &'a [Body],
) -> (Plan<'a>, Vec<Result<Appended, StoreError>>) {
    let events: usize = bodies.iter().map(|b| b.2.len()).sum();
    let mut plan = Plan {
        base: snapshot.head.position,
        head: snapshot.head,
        last_recorded_at: snapshot.last_recorded_at,
        rows: Vec::with_capacity(events),
        versions: HashMap::with_capacity(bodies.len()),
        new_ids: HashMap::with_capacity(events),
        scratch: Vec::with_capacity(1024),
    };
    let results = bodies
        .iter()
        .map(|(stream, expected, events, import)| {
            plan.request(snapshot, clock, stream, *expected, events, import.as_ref())
        })
        .collect();
    (plan, results)
}

/// Reads the rows of [`PEEK`] into a [`Snapshot`].
fn snapshot_from_peek(rows: &[tokio_postgres::Row]) -> Result<Snapshot, StoreError> {
    let read = |e: tokio_postgres::Error| pg_error("reading the log head", &e);
    let mut snapshot = Snapshot {
        head: ChainHead::default(),
        last_recorded_at: DateTime::<Utc>::MIN_UTC,
        versions: HashMap::new(),
        ids: HashMap::new(),
    };
    let mut saw_head = false;
    for row in rows {
        let kind: i16 = row.try_get(0).map_err(read)?;
        match kind {
            0 => {
                let position: i64 = row.try_get(1).map_err(read)?;
                let hash: &[u8] = row.try_get(2).map_err(read)?;
                let micros: Option<i64> = row.try_get(3).map_err(read)?;
                snapshot.head = ChainHead {
                    position: u64::try_from(position).map_err(|_| {
                        StoreError::Database(format!("log head at position {position}"))
                    })?,
                    hash: hash_from(hash, "the log head's hash")?,
                };
                snapshot.last_recorded_at = recorded_at_of(micros)?;
                saw_head = true;
            }
            1 => {
                let stream: String = row.try_get(4).map_err(read)?;
                let version: i64 = row.try_get(5).map_err(read)?;
                snapshot
                    .versions
                    .insert(stream, u64::try_from(version).unwrap_or(0));
            }
            _ => {
                let position: i64 = row.try_get(1).map_err(read)?;
                let stream: String = row.try_get(4).map_err(read)?;
                let version: i64 = row.try_get(5).map_err(read)?;
                let id: Uuid = row.try_get(6).map_err(read)?;
                snapshot.ids.insert(
                    id,
                    (
                        u64::try_from(position).unwrap_or(0),
                        stream,
                        u64::try_from(version).unwrap_or(0),
                    ),
                );
            }
        }
    }
    if !saw_head {
        return Err(StoreError::Database("ledger_head has no row".into()));
    }
    Ok(snapshot)
}

fn recorded_at_of(micros: Option<i64>) -> Result<DateTime<Utc>, StoreError> {
    match micros {
        None => Ok(DateTime::<Utc>::MIN_UTC),
        Some(m) => Utc.timestamp_micros(m).single().ok_or_else(|| {
            StoreError::Database(format!("log head's recorded_at {m} is out of range"))
        }),
    }
}

/// Acknowledged must mean durable: a server-wide `synchronous_commit = off` must not make the
/// writer's commits asynchronous (readers would see records a crash can lose), so the writer
/// turns it back on for its own connections.
async fn durable_commits(client: &Client) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await?;
    let setting: String = row.try_get(0)?;
    if setting == "off" {
        tracing::warn!(
            "synchronous_commit is off on the server; the ledger's writer sets it on for its \
             own connections"
        );
        client.batch_execute("SET synchronous_commit = on").await?;
    }
    Ok(())
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Database(format!("{n} does not fit a bigint")))
}

fn hash_from(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash)
        .map_err(|_| StoreError::Database(format!("{what} is not 32 bytes")))
}

/// Reads the locked head and the lookups into a [`Snapshot`].
fn snapshot(
    head: &tokio_postgres::Row,
    versions: &[tokio_postgres::Row],
    found: &[tokio_postgres::Row],
    table: &str,
) -> Result<Snapshot, StoreError> {
    let read = |e: tokio_postgres::Error| pg_error("reading the log head", &e);
    let position: i64 = head.try_get(0).map_err(read)?;
    let hash: &[u8] = head.try_get(1).map_err(read)?;
    let micros: Option<i64> = head.try_get(2).map_err(read)?;
    let position = u64::try_from(position)
        .map_err(|_| StoreError::Database(format!("log head at position {position}")))?;
    let last_recorded_at = recorded_at_of(micros)?;
    let mut snapshot = Snapshot {
        head: ChainHead {
            position,
            hash: hash_from(hash, "the log head's hash")?,
        },
        last_recorded_at,
        versions: HashMap::with_capacity(versions.len()),
        ids: HashMap::with_capacity(found.len()),
    };
    for row in versions {
        let stream: String = row.try_get(0).map_err(read)?;
        let version: i64 = row.try_get(1).map_err(read)?;
        snapshot
            .versions
            .insert(stream, u64::try_from(version).unwrap_or(0));
    }
    let mut buf = Vec::new();
    for row in found {
        let e = decode_row(row, table, &mut buf)?.envelope;
        snapshot.ids.insert(
            e.event_id,
            (e.position, e.stream_id.to_string(), e.stream_version),
        );
    }
    Ok(snapshot)
}

impl<'a> Plan<'a> {
    /// Where an id is stored: in this batch, or in the database. Returns position, stream and
    /// version.
    fn lookup(&self, snapshot: &'a Snapshot, id: &Uuid) -> Option<(Position, &str, StreamVersion)> {
        if let Some(&i) = self.new_ids.get(id) {
            let row = self.rows.get(i)?;
            return Some((row.position, row.stream, row.version));
        }
        snapshot.ids.get(id).map(|(p, s, v)| (*p, s.as_str(), *v))
    }

    /// The stream's version as the batch stands.
    fn version(&self, snapshot: &Snapshot, stream: &str) -> StreamVersion {
        self.versions
            .get(stream)
            .or_else(|| snapshot.versions.get(stream))
            .copied()
            .unwrap_or(0)
    }

    /// `Some` when every event id of the request is stored, in this stream, in this order (a
    /// retry); `None` when none is; an error for anything in between.
    fn check_retry(
        &self,
        snapshot: &'a Snapshot,
        stream: &StreamId,
        events: &[PreparedEvent],
    ) -> Result<Option<Appended>, StoreError> {
        let Some(first_event) = events.first() else {
            return Err(StoreError::InvalidAppend("no events to append".into()));
        };
        let first_id = first_event.event_id;
        match self.lookup(snapshot, &first_id) {
            None => {
                for e in events {
                    if let Some((position, _, _)) = self.lookup(snapshot, &e.event_id) {
                        return Err(StoreError::DuplicateEventId {
                            event_id: e.event_id,
                            position,
                        });
                    }
                }
                Ok(None)
            }
            Some((first, _, _)) => {
                let mut version = 0;
                for (i, e) in events.iter().enumerate() {
                    let due = first + i as Position;
                    version = match self.lookup(snapshot, &e.event_id) {
                        Some((p, s, v)) if p == due && s == stream.as_str() => v,
                        Some((p, _, _)) => {
                            return Err(StoreError::DuplicateEventId {
                                event_id: e.event_id,
                                position: p,
                            })
                        }
                        None => {
                            return Err(StoreError::DuplicateEventId {
                                event_id: first_id,
                                position: first,
                            })
                        }
                    };
                }
                Ok(Some(Appended {
                    positions: first..=first + events.len() as Position - 1,
                    stream_version: version,
                    was_retry: true,
                }))
            }
        }
    }

    /// Checks one request and, if accepted, adds its rows; returns the answer to give once the
    /// batch commits (a retry's original positions, or the new ones). Nothing changes unless
    /// the whole request is accepted.
    fn request(
        &mut self,
        snapshot: &'a Snapshot,
        clock: &dyn Clock,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [PreparedEvent],
        import: Option<&ImportCheck>,
    ) -> Result<Appended, StoreError> {
        if let Some(retry) = self.check_retry(snapshot, stream, events)? {
            return Ok(retry);
        }
        let actual = self.version(snapshot, stream.as_str());
        if !expected.admits(actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let first = self.head.position + 1;
        let recorded_at = recorded_at(
            clock.now(),
            import,
            events.len(),
            self.head,
            self.last_recorded_at,
        )?;
        let mut head = self.head;
        let mut rows = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let position = head.position + 1;
            let version = actual + 1 + i as StreamVersion;
            let header = RecordHeader {
                position,
                stream_id: stream,
                stream_version: version,
                event_id: e.event_id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                recorded_at,
                actor: &e.actor,
                correlation_id: e.correlation_id,
                prev_hash: head.hash,
            };
            self.scratch.clear();
            let hash = encode_header_into(&mut self.scratch, &header, &e.payload)?;
            rows.push(PlannedRow {
                position,
                stream: stream.as_str(),
                version,
                event: e,
                recorded_at_micros: recorded_at.timestamp_micros(),
                prev_hash: head.hash,
                hash,
            });
            head = ChainHead { position, hash };
        }
        if let Some(import) = import {
            check_imported_hash(import, head.hash)?;
        }
        let stream_version = actual + events.len() as StreamVersion;
        for row in rows {
            self.new_ids.insert(row.event.event_id, self.rows.len());
            self.rows.push(row);
        }
        self.versions.insert(stream.as_str(), stream_version);
        self.head = head;
        self.last_recorded_at = recorded_at;
        Ok(Appended {
            positions: first..=head.position,
            stream_version,
            was_retry: false,
        })
    }
}

/// The write statement's parameters, in its order (`$1` to `$20`): the new head, the head it
/// must still find, the channel to notify, and the batch as columns.
struct WriteParams<'a> {
    new_position: i64,
    new_hash: &'a [u8],
    last_micros: i64,
    old_position: i64,
    old_hash: &'a [u8],
    channel: &'a str,
    columns: Columns<'a>,
}

impl<'a> WriteParams<'a> {
    fn of(plan: &'a Plan<'a>, old: &'a ChainHead, channel: &'a str) -> Result<Self, StoreError> {
        Ok(WriteParams {
            new_position: to_i64(plan.head.position)?,
            new_hash: plan.head.hash.0.as_slice(),
            last_micros: plan.last_recorded_at.timestamp_micros(),
            old_position: to_i64(old.position)?,
            old_hash: old.hash.0.as_slice(),
            channel,
            columns: Columns::of(&plan.rows)?,
        })
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 20] {
        let c = &self.columns;
        [
            &self.new_position,
            &self.new_hash,
            &self.last_micros,
            &self.old_position,
            &self.old_hash,
            &self.channel,
            &c.positions,
            &c.streams,
            &c.versions,
            &c.ids,
            &c.types,
            &c.schema_versions,
            &c.micros,
            &c.actor_kinds,
            &c.actor_names,
            &c.correlation_ids,
            &c.payloads,
            &c.data,
            &c.prev_hashes,
            &c.hashes,
        ]
    }
}

/// The batch as column arrays, the parameters of the `UNNEST` insert.
struct Columns<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    versions: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    micros: Vec<i64>,
    actor_kinds: Vec<&'static str>,
    actor_names: Vec<&'a str>,
    correlation_ids: Vec<Uuid>,
    payloads: Vec<&'a [u8]>,
    data: Vec<&'a str>,
    prev_hashes: Vec<&'a [u8]>,
    hashes: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [PlannedRow<'a>]) -> Result<Self, StoreError> {
        let n = rows.len();
        let mut c = Columns {
            positions: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            micros: Vec::with_capacity(n),
            actor_kinds: Vec::with_capacity(n),
            actor_names: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            prev_hashes: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
        };
        for r in rows {
            c.positions.push(to_i64(r.position)?);
            c.streams.push(r.stream);
            c.versions.push(to_i64(r.version)?);
            c.ids.push(r.event.event_id);
            c.types.push(r.event.event_type);
            c.schema_versions.push(i32::from(r.event.schema_version));
            c.micros.push(r.recorded_at_micros);
            c.actor_kinds.push(actor_kind_name(r.event.actor.kind));
            c.actor_names.push(&r.event.actor.name);
            c.correlation_ids.push(r.event.correlation_id);
            c.payloads.push(&r.event.payload);
            c.data.push(&r.event.data_json);
            c.prev_hashes.push(&r.prev_hash.0);
            c.hashes.push(&r.hash.0);
        }
        Ok(c)
    }
}
