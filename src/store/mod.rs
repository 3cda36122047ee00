//! The event store: the only place where bytes reach a disk or SQL.
//!
//! [`EventStore`] is the contract both backends implement: the embedded file log
//! ([`file::FileStore`]) and PostgreSQL ([`postgres::PgStore`]). [`conformance`] holds the
//! tests every backend must pass. Invariants every backend keeps:
//! - positions are dense from 1 and commit order equals position order;
//! - a stream's versions are dense from 1; an append either stores all its events, at
//!   consecutive positions, or none;
//! - an acknowledged append is durable;
//! - every record stored chains to its predecessor (see `ledger_events::codec`);
//! - `recorded_at` never decreases along the log, whatever the clock does.

use std::ops::RangeInclusive;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_events::{
    truncate_to_micros, Actor, ChainHead, CodecError, Event, Position, Record, StreamId,
    StreamVersion,
};
use uuid::Uuid;

pub mod aside;
pub mod conformance;
pub mod file;
pub mod postgres;
pub mod slots;
mod subscription;

pub use subscription::{HeadSource, Subscription};

/// Who keeps an on-disk index's tables (fjall, an LSM tree) compacted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Maintenance {
    /// This process: worker threads flush and compact in the background (the server,
    /// imports, anything that writes much or lives long).
    #[default]
    Background,
    /// A later, long-running process. Nothing runs in the background, so a short command's
    /// exit never waits for a compaction its open would have started (a `history` that
    /// read in 0.25 s waited 5.6 s for one, measured on a 38 M-record log); what it writes
    /// is ingested as tables, compacted when a server next opens the index.
    Deferred,
}

/// Runs in level 0 that trigger a compaction before the next ingestion (see [`bound_level0`]).
pub(crate) const LEVEL0_RUNS_MAX: usize = 64;

/// How long an ingestion waits for the background workers to bring level 0 under
/// [`LEVEL0_RUNS_MAX`] before it compacts the keyspace itself.
const LEVEL0_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Keeps a keyspace's level 0 under [`LEVEL0_RUNS_MAX`] runs before an ingestion adds one.
/// fjall 3.1 (lsm-tree 3.1.10) writes a level's run count in one byte of its manifest, and
/// every ingestion adds a run to level 0: with compaction behind (the first start of a
/// 38 M-record log, on workers at nice 10) or absent (short commands, no workers), 256 runs
/// made the index unreadable at the next open (`InvalidTag(("ChecksumType", ..))`), and it
/// was rebuilt from the log. With workers, the ingestion waits for them (back-pressure on
/// whoever writes the index); without them, or past [`LEVEL0_WAIT`], it compacts here.
pub(crate) fn bound_level0(
    keyspace: &fjall::Keyspace,
    maintenance: Maintenance,
) -> Result<(), fjall::Error> {
    use fjall::AbstractTree;
    let runs = || keyspace.tree.l0_run_count();
    if runs() < LEVEL0_RUNS_MAX {
        return Ok(());
    }
    if maintenance == Maintenance::Background {
        let started = std::time::Instant::now();
        while runs() >= LEVEL0_RUNS_MAX && started.elapsed() < LEVEL0_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if runs() < LEVEL0_RUNS_MAX {
            return Ok(());
        }
        tracing::warn!(
            runs = runs(),
            "an index's level 0 is still full after waiting for its compaction: compacting it here"
        );
    }
    keyspace.major_compact()
}

impl Maintenance {
    /// fjall worker threads for this kind of maintenance, `background` in the background.
    pub(crate) fn workers(self, background: usize) -> usize {
        match self {
            Maintenance::Background => background.max(1),
            Maintenance::Deferred => 0,
        }
    }

    /// After a fjall open: its workers (if it started any) at the background priority.
    pub(crate) fn lower_workers(self) {
        if self == Maintenance::Background {
            crate::background::lower_threads_named(
                "fjall:worker",
                crate::background::BACKGROUND_NICE,
            );
        }
    }
}

/// Most events one append may carry.
pub const APPEND_EVENTS_MAX: usize = 1000;
/// Most records one read returns; larger limits are clamped.
pub const READ_BATCH_MAX: usize = 10_000;

/// What the writer expects the stream's current version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this (0 means no stream).
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies the expectation.
    pub fn admits(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

/// One event to append, with its metadata. `event_id` should be a UUID v7 chosen once per
/// logical event: a retry reuses it, and the store answers the retry with the original
/// positions instead of storing it twice.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id; retries reuse it.
    pub event_id: Uuid,
    /// The event.
    pub event: Event,
    /// Who caused it.
    pub actor: Actor,
    /// Groups the events of one command.
    pub correlation_id: Uuid,
}

impl NewEvent {
    /// An event with a fresh v7 id, correlated with `correlation_id`.
    pub fn new(event: impl Into<Event>, actor: Actor, correlation_id: Uuid) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event: event.into(),
            actor,
            correlation_id,
        }
    }
}

/// One append of [`file::FileStore::append_batch`]: what [`EventStore::append`] takes.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchAppend {
    /// The stream.
    pub stream: StreamId,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// The events, as for one append.
    pub events: Vec<NewEvent>,
}

/// Most events (over all its appends) one [`file::FileStore::append_batch`] call may carry.
pub const APPEND_BATCH_MAX: usize = 10_000;

/// Where an append landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// First and last global positions of the appended events (consecutive).
    pub positions: RangeInclusive<Position>,
    /// The stream's version after the append (the last event's version).
    pub stream_version: StreamVersion,
    /// Whether this answer is for a retry whose events were already stored.
    pub was_retry: bool,
}

/// Everything that can go wrong in the store. Business rejections are not here: they belong
/// to the domain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: the stream is not at the expected version.
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: StreamVersion,
    },
    /// An event id is already stored, but not as part of this very append.
    #[error("event id {event_id} is already stored at position {position} in another append")]
    DuplicateEventId {
        /// The id.
        event_id: Uuid,
        /// Where it is stored.
        position: Position,
    },
    /// The append itself is malformed (empty, too many events, event too large).
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// An event could not be encoded, or a stored record could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The log on disk is damaged where a crash cannot explain it. Nothing was changed.
    #[error("log damaged in {segment} at offset {offset} (position {position}): {problem}")]
    Corrupt {
        /// The segment file.
        segment: String,
        /// Byte offset within it.
        offset: u64,
        /// The position expected there.
        position: Position,
        /// What is wrong.
        problem: String,
    },
    /// An I/O error, with what the store was doing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A write or sync failed in a way that leaves the file's state unknown; the store
    /// refuses appends until it is reopened (which re-reads and repairs the tail).
    #[error("store refuses appends until reopened: {0}")]
    Poisoned(String),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(String),
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
    /// The database cannot be reached right now (connection refused, closed or timed out,
    /// server shutting down, no connection slot). Nothing is known to be wrong with the data;
    /// retry later. An append that failed this way may or may not have been stored: retry it
    /// with the same event ids and the store answers with the original positions if it was.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement for a reason other than availability (permissions,
    /// a constraint, an unexpected schema), or the configuration is unusable.
    #[error("PostgreSQL error: {0}")]
    Database(String),
    /// The database's schema does not match this build's migrations (an applied migration
    /// was edited, or the database was migrated by a newer build). Nothing was changed.
    #[error("database schema refused: {0}")]
    Migration(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the failure is the storage being full or unwritable (a 503, retry later),
    /// as opposed to a caller mistake or damage.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Poisoned(_)
                | StoreError::Closed
                | StoreError::Unavailable(_)
        )
    }
}

/// The contract of an event store. Implementations must be safe to share between tasks;
/// no method may panic on any input or I/O failure.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version admits `expected`, atomically and durably,
    /// and returns where they landed. A retry of an append that was stored (same event ids,
    /// same stream, same order) returns the original positions and stores nothing.
    ///
    /// Fails with [`StoreError::WrongExpectedVersion`] (carrying the actual version),
    /// [`StoreError::DuplicateEventId`] when some ids are stored elsewhere,
    /// [`StoreError::InvalidAppend`] for an empty or oversized batch, or an I/O error.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError>;

    /// Reads `stream` forward from version `from_version` (the first event is version 1),
    /// at most `limit` records (clamped to [`READ_BATCH_MAX`]). An unknown stream is empty.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// Reads the log forward from global position `from_position` (inclusive; the first
    /// record is 1), at most `limit` records (clamped to [`READ_BATCH_MAX`]).
    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// The records at `positions` (ascending, at most [`READ_BATCH_MAX`] of them), in
    /// ascending order; positions not stored are left out. For reads that an index points
    /// at (a Histórico page, search results): one round trip instead of one per record.
    async fn read_positions(&self, positions: &[Position]) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::with_capacity(positions.len());
        for &p in positions.iter().take(READ_BATCH_MAX) {
            if let Some(r) = self.read_all(p, 1).await?.pop() {
                if r.envelope.position == p {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The last position and its hash (position 0 and zero hash when empty).
    async fn head(&self) -> Result<ChainHead, StoreError>;

    /// The stream's current version (0 when it does not exist).
    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError>;

    /// Every record from `from_position` on: first those already stored, then new ones as
    /// they are acknowledged, with no gap and no duplicate between the two.
    fn subscribe_all(&self, from_position: Position) -> Subscription;

    /// Write counters since the store was opened, for metrics; `None` when the backend keeps
    /// none.
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

/// An event of an append that passed the checks every backend makes before writing: the
/// append is not empty nor over [`APPEND_EVENTS_MAX`], no id repeats, and each payload
/// encodes within `ledger_events::MAX_PAYLOAD_BYTES`. Done in the caller's task.
pub(crate) struct CheckedEvent {
    /// The event.
    pub event: NewEvent,
    /// Its postcard payload.
    pub payload: Vec<u8>,
}

/// What an imported record (replayed verbatim from an export) must land on for its stored
/// hash to stay valid.
pub(crate) struct ImportCheck {
    pub position: Position,
    pub prev_hash: ledger_events::Hash,
    pub recorded_at: DateTime<Utc>,
    /// The hash the export recorded (PostgreSQL checks it again after encoding).
    pub hash: ledger_events::Hash,
}

/// Checks a record to import on its own (it encodes to its stored hash, its payload decodes
/// as its type says, within the size limit, at a stream version of 1 or more): its event,
/// and what it must land on (checked by the writer with [`recorded_at`]).
pub(crate) fn check_import(record: &Record) -> Result<(Event, ImportCheck), StoreError> {
    record.encode()?;
    let e = &record.envelope;
    let event = record.event()?;
    let event_type = event.event_type();
    if event_type != e.event_type {
        return Err(StoreError::InvalidAppend(format!(
            "record at position {} has type {} but decodes as {event_type}",
            e.position, e.event_type
        )));
    }
    if record.payload.len() > ledger_events::MAX_PAYLOAD_BYTES || e.stream_version == 0 {
        return Err(StoreError::InvalidAppend(format!(
            "record at position {} has an invalid payload size or stream version",
            e.position
        )));
    }
    let import = ImportCheck {
        position: e.position,
        prev_hash: e.prev_hash,
        recorded_at: e.recorded_at,
        hash: e.hash,
    };
    Ok((event, import))
}

/// Checks that an imported record, encoded here on the head it lands on, hashes to what its
/// export recorded: every input of the hash was checked one by one before, and this proves
/// they were all (the writers call it after encoding).
pub(crate) fn check_imported_hash(
    import: &ImportCheck,
    hash: ledger_events::Hash,
) -> Result<(), StoreError> {
    if hash != import.hash {
        return Err(StoreError::InvalidAppend(format!(
            "imported record at position {} hashes to {hash} here, not {}",
            import.position, import.hash
        )));
    }
    Ok(())
}

/// An import batch handed to a store's writer, whose answer is still to come: batches are
/// written in the order they were handed over, so a caller may hand over the next one
/// before this one is durable. Dropping it does not withdraw the batch.
#[must_use = "the batch's answer says whether it was stored"]
pub struct PendingImport(
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ChainHead, StoreError>> + Send>>,
);

impl PendingImport {
    pub(crate) fn new(
        answer: impl std::future::Future<Output = Result<ChainHead, StoreError>> + Send + 'static,
    ) -> Self {
        Self(Box::pin(answer))
    }

    /// Waits for the answer: the head after the batch, or why it was refused (nothing of it
    /// stored).
    pub async fn wait(self) -> Result<ChainHead, StoreError> {
        self.0.await
    }
}

/// Most records one `import_records` call may carry (both stores write them in one batch).
pub const IMPORT_BATCH_MAX: usize = 100_000;

/// Checks the shape of an import batch (not empty, not over [`IMPORT_BATCH_MAX`]) and each
/// record on its own ([`check_import`]), naming the position of the first bad one.
pub(crate) fn check_import_batch(
    records: &[Record],
) -> Result<Vec<(Event, ImportCheck)>, StoreError> {
    if records.is_empty() {
        return Err(StoreError::InvalidAppend("no records to import".into()));
    }
    if records.len() > IMPORT_BATCH_MAX {
        return Err(StoreError::InvalidAppend(format!(
            "{} records in one import batch, at most {IMPORT_BATCH_MAX}",
            records.len()
        )));
    }
    records
        .iter()
        .map(|r| check_import(r).map_err(|e| import_refused(r.envelope.position, e)))
        .collect()
}

/// A refusal of the record at `position` in an import batch, naming it (the whole batch is
/// refused with it). Unavailability and damage pass through unchanged.
pub(crate) fn import_refused(position: Position, e: StoreError) -> StoreError {
    match e {
        StoreError::InvalidAppend(_)
        | StoreError::Codec(_)
        | StoreError::DuplicateEventId { .. }
        | StoreError::WrongExpectedVersion { .. } => StoreError::InvalidAppend(format!(
            "imported record at position {position} refused: {e}"
        )),
        other => other,
    }
}

/// When an append of `events` records after `head`, whose last record was recorded at
/// `last`: `now` truncated to microseconds and never before `last`; for an import, the time
/// its export recorded, once every other input of its hash (one record, its position, the
/// previous hash, its order in time) is checked to be what the export recorded.
pub(crate) fn recorded_at(
    now: DateTime<Utc>,
    import: Option<&ImportCheck>,
    events: usize,
    head: ChainHead,
    last: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    let Some(import) = import else {
        return Ok(truncate_to_micros(now).max(last));
    };
    if events != 1
        || import.position != head.position + 1
        || import.prev_hash != head.hash
        || import.recorded_at < last
        || truncate_to_micros(import.recorded_at) != import.recorded_at
    {
        return Err(StoreError::InvalidAppend(format!(
            "imported record at position {} does not follow the head (position {}, hash {}) \
             in position, hash chain or time",
            import.position, head.position, head.hash
        )));
    }
    Ok(import.recorded_at)
}

/// Checks an append (see [`CheckedEvent`]) and encodes its payloads.
pub(crate) fn check_append(events: Vec<NewEvent>) -> Result<Vec<CheckedEvent>, StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend("no events to append".into()));
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(StoreError::InvalidAppend(format!(
            "{} events in one append, at most {APPEND_EVENTS_MAX}",
            events.len()
        )));
    }
    // A single event cannot repeat an id: no set to allocate (most appends are one event).
    let check_ids = events.len() > 1;
    let mut ids =
        std::collections::HashSet::with_capacity(if check_ids { events.len() } else { 0 });
    events
        .into_iter()
        .map(|e| {
            if check_ids && !ids.insert(e.event_id) {
                return Err(StoreError::InvalidAppend(format!(
                    "event id {} appears twice in one append",
                    e.event_id
                )));
            }
            let payload = e.event.encode_payload()?;
            if payload.len() > ledger_events::MAX_PAYLOAD_BYTES {
                return Err(StoreError::InvalidAppend(format!(
                    "{} payload is {} bytes, at most {}",
                    e.event.event_type(),
                    payload.len(),
                    ledger_events::MAX_PAYLOAD_BYTES
                )));
            }
            Ok(CheckedEvent { event: e, payload })
        })
        .collect()
}

/// Backend-neutral write counters of a store since it was opened (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// Write batches (one or more appends written together).
    pub write_batches: u64,
    /// Records written.
    pub records_written: u64,
    /// Durability rounds (`fdatasync` for the file store).
    pub syncs: u64,
    /// Time spent in them, in seconds.
    pub sync_seconds: f64,
}
