//! The single writer of the file log, with pipelined group commit.
//!
//! Three threads share the work:
//! - the **writer** takes the first waiting append request, drains whatever else is queued
//!   (up to a batch limit), checks each request (idempotent retry, expected version) against
//!   the index, encodes the accepted ones into frames, writes them with one positional write
//!   per segment touched, adds them to the index beyond the durable head, and hands the batch
//!   to the syncer; then it goes straight on with the next batch;
//! - the **syncer** takes every batch handed over so far and runs one `fdatasync` per file
//!   they touched (plus the directory when a segment was created), then hands them on and
//!   goes straight on with the next round;
//! - the **marker** thread writes and `fdatasync`s the durable-head marker (`durable.head`,
//!   see [`super::durable`]) for every round handed over so far, then moves the durable head
//!   and answers their requests. Its sync overlaps the syncer's next one.
//!
//! So the disk is never idle while requests wait, batches grow with load, an acknowledged
//! append is durable, and readers (who stop at the durable head) never see a record that is
//! not. A retry of an append that is written but not yet durable is answered only once it is.
//!
//! An import batch (`FileStore::import_records`: exported records replayed verbatim, one
//! request each) is a batch of its own, planned request by request by the same `plan` as
//! appends, then written and synced like any batch; the first request refused refuses the
//! whole batch and nothing of it is written.
//!
//! Failure handling: if a write fails (disk full, I/O error) the writer cuts the files back,
//! removes the batch from the index and refuses the batch; the store stays usable. If
//! `fdatasync` fails, the page cache may have dropped data nobody can know about, so the
//! store is poisoned: it refuses appends until reopened, and reopening re-reads the disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use chrono::{DateTime, Utc};
use ledger_events::{
    encode_header_into, Actor, ChainHead, Position, RecordHeader, StreamId, StreamVersion,
    MIN_RECORD_BYTES,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::durable::{DurableMark, MarkWriter};
use super::index::{Index, OpenSegment};
use super::segment::{
    frame_len, seal_frame, segment_header, segment_path, RecordLoc, FRAME_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::sync_dir;
use crate::clock::Clock;
use crate::store::{
    check_imported_hash, import_refused, recorded_at, Appended, ExpectedVersion, ImportCheck,
    StoreError,
};

/// Batches written but not yet synced before the writer waits for the syncer.
const BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Longest the syncer waits for appends that are being written before syncing without them.
const SYNC_GATHER_MAX: Duration = Duration::from_micros(400);

/// An event encoded by the appending task, waiting for its position.
pub(crate) struct PreparedEvent {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub schema_version: u16,
    pub payload: Vec<u8>,
    pub actor: Actor,
    pub correlation_id: Uuid,
}

impl PreparedEvent {
    fn record_len(&self, stream: &StreamId) -> usize {
        MIN_RECORD_BYTES
            + stream.as_str().len()
            + self.event_type.len()
            + self.actor.name.len()
            + self.payload.len()
    }
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
    pub reply: Reply,
    /// Set when replaying an exported record verbatim (see `FileStore::import_record`).
    pub import: Option<ImportCheck>,
}

pub(crate) enum WriterMsg {
    Append(AppendRequest),
    /// Several independent appends handed over at once (`FileStore::append_batch`): each is
    /// checked and answered on its own, exactly as if it had been sent alone; they only save
    /// the hand-over per append.
    Appends(Vec<AppendRequest>),
    /// Exported records to replay verbatim, one request each (see
    /// `FileStore::import_records`): written as a batch of their own, all or none.
    Import(Vec<AppendRequest>),
    /// Finish what is queued before this message, then stop.
    Shutdown,
}

/// State both threads and the readers share.
pub(crate) struct Shared {
    /// The index; entries past `index.head` are written but not yet durable.
    pub index: RwLock<Index>,
    /// Set when a sync or an undo failed; appends are refused until reopened.
    pub poisoned: Mutex<Option<String>>,
    /// Counters for metrics and benchmarks.
    pub stats: Counters,
    /// Appends submitted whose records have not yet been handed to the syncer (queued for
    /// the writer, or being written). The syncer waits briefly for them so that one sync
    /// covers them too.
    pub unwritten: AtomicU64,
    /// What the open found.
    pub opened: OpenStats,
}

/// What the open did, for [`super::FileStoreStats`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OpenStats {
    pub records_scanned: u64,
    pub index_rebuilt: bool,
}

/// Longest wait of the syncer for the log index when it poisons the store (to name the
/// durable head): its holders hold it for one batch at most.
const POISON_INDEX_WAIT: Duration = Duration::from_secs(2);

/// How the marker thread wakes the indexer: once durable records in memory reach `tail_max`.
pub(crate) struct IndexerWake {
    pub tx: std_mpsc::SyncSender<()>,
    pub tail_max: u64,
}

/// Monotonic counters of the writer and syncer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches_written: AtomicU64,
    pub records_written: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos: AtomicU64,
}

impl Shared {
    fn poison(&self, why: String) {
        // The caller may hold the index: it is not waited for.
        self.poison_with(why, 0, Duration::ZERO);
    }

    /// [`Shared::poison`] by the syncer, whose data syncs up to `synced` succeeded: those
    /// records are durable and may still be acknowledged (their marker's sync runs on its own
    /// thread), so the line's durable head is never below them. The syncer holds no lock, and
    /// those who hold the index never wait for it: the index is waited for (briefly), so the
    /// line names the durable head even when the writer or the marker holds it just then.
    fn poison_after(&self, why: String, synced: Position) {
        self.poison_with(why, synced, POISON_INDEX_WAIT);
    }

    fn poison_with(&self, why: String, synced: Position, wait: Duration) {
        // The last position acknowledged or about to be (readers see only durable records).
        // Not read when the index stays held for `wait`: the line then says so.
        match self
            .index
            .try_read_for(wait)
            .map(|index| index.head.position.max(synced))
        {
            Some(durable_head) => tracing::error!(
                %why,
                durable_head,
                "refusing appends until the log is reopened; every position up to durable_head \
                 is durable and no position after it was acknowledged. If the log does not \
                 verify once the disk is repaired, `license-ledger repair --truncate-after \
                 {durable_head}` cuts only what was never acknowledged",
            ),
            None => tracing::error!(
                %why,
                "refusing appends until the log is reopened; the durable head could not be read \
                 (the log index was busy): `license-ledger verify` on the repaired disk names it"
            ),
        }
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(why);
        }
    }

    fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().clone()
    }
}

pub(crate) struct Writer {
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    pub segment_bytes_max: u64,
    pub batch_events_max: usize,
    pub active_file: Arc<File>,
    pub active_segment: u32,
    /// First position of the active segment.
    pub active_first: Position,
    pub active_len: u64,
    /// Head of what has been written (durable or not).
    pub head: ChainHead,
    pub last_recorded_at: DateTime<Utc>,
    /// Held for the writer's lifetime: the data directory's lock.
    pub lock: File,
    /// The durable-head marker, handed to the syncer.
    pub mark: Option<MarkWriter>,
    /// Wakes the indexer, handed to the syncer (and on to the marker thread).
    pub indexer: Option<IndexerWake>,
}

/// One stretch of bytes to write into one segment.
struct Chunk {
    segment: u32,
    /// Set when the chunk opens a new segment starting at this position.
    new_segment_first: Option<Position>,
    start: u64,
    bytes: Vec<u8>,
}

/// A record placed by this batch, not yet written.
struct Placed {
    /// Index into [`Batch::streams`].
    stream: u32,
    version: StreamVersion,
    event_id: Uuid,
    loc: RecordLoc,
}

/// The batch being assembled: what the log will look like if the write succeeds.
struct Batch {
    base: Position,
    head: ChainHead,
    last_recorded_at: DateTime<Utc>,
    segment: u32,
    segment_len: u64,
    chunks: Vec<Chunk>,
    placed: Vec<Placed>,
    /// The stream of each accepted request, in order.
    streams: Vec<StreamId>,
    versions: AHashMap<StreamId, StreamVersion>,
    ids: AHashMap<Uuid, Position>,
    accepted: Vec<(Reply, Appended)>,
}

impl Batch {
    fn stream_version(&self, index: &Index, stream: &StreamId) -> StreamVersion {
        self.versions
            .get(stream)
            .copied()
            .unwrap_or_else(|| index.stream_version(stream.as_str()))
    }

    fn position_of(&self, index: &Index, id: &Uuid) -> Result<Option<Position>, StoreError> {
        match self.ids.get(id) {
            Some(&p) => Ok(Some(p)),
            None => Ok(index.event(id)?.map(|(p, _)| p)),
        }
    }

    /// The version of the record with `id`, stored at `position`, if it is in `stream`.
    fn version_in_stream(
        &self,
        index: &Index,
        stream: &StreamId,
        id: &Uuid,
        position: Position,
    ) -> Result<Option<StreamVersion>, StoreError> {
        if position > self.base {
            let Some(p) = self.placed.get((position - self.base - 1) as usize) else {
                return Ok(None);
            };
            return Ok((self.streams[p.stream as usize] == *stream).then_some(p.version));
        }
        let Some((_, version)) = index.event(id)? else {
            return Ok(None);
        };
        let at = index.stream_position(stream.as_str(), version)?;
        Ok((at == Some(position)).then_some(version))
    }
}

enum Verdict {
    New(Appended),
    Retry(Appended),
}

/// What the writer hands the syncer: files to sync, then answers to give.
struct Written {
    /// Where the batch ends on disk, for the durable-head marker.
    mark: DurableMark,
    files: Vec<Arc<File>>,
    sync_dir: bool,
    replies: Vec<(Reply, Appended)>,
}

impl Writer {
    /// Runs the writer on this thread and the syncer on another until shutdown.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>, head_tx: watch::Sender<Position>) {
        let (to_syncer, syncer_rx) = std_mpsc::sync_channel::<Written>(BATCHES_IN_FLIGHT_MAX);
        let syncer = {
            let shared = self.shared.clone();
            let dir = self.dir.clone();
            let mark = self.mark.take();
            let indexer = self.indexer.take();
            std::thread::Builder::new()
                .name("ledger-syncer".into())
                .spawn(move || run_syncer(&shared, &dir, mark, indexer, syncer_rx, head_tx))
        };
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(e) => {
                self.shared
                    .poison(format!("could not start the syncer thread: {e}"));
                while let Some(msg) = rx.blocking_recv() {
                    let requests = match msg {
                        WriterMsg::Append(r) => vec![r],
                        WriterMsg::Appends(rs) | WriterMsg::Import(rs) => rs,
                        WriterMsg::Shutdown => Vec::new(),
                    };
                    for r in requests {
                        let _ = r.reply.send(Err(StoreError::Poisoned(e.to_string())));
                    }
                }
                return;
            }
        };
        let mut stop = false;
        // An import taken from the queue while appends were being gathered: it goes next,
        // in a batch of its own.
        let mut next_import = None;
        while !stop {
            let mut requests = Vec::new();
            let mut events = 0usize;
            // Messages taken (an `Appends` counts once, like an `Append`).
            let mut messages = 0u64;
            let mut import = next_import.take();
            if import.is_none() {
                match rx.blocking_recv() {
                    None => break,
                    Some(WriterMsg::Append(r)) => {
                        events += r.events.len();
                        messages += 1;
                        requests.push(r);
                    }
                    Some(WriterMsg::Appends(rs)) => {
                        events += rs.iter().map(|r| r.events.len()).sum::<usize>();
                        messages += 1;
                        requests.extend(rs);
                    }
                    Some(WriterMsg::Import(rs)) => import = Some(rs),
                    Some(WriterMsg::Shutdown) => stop = true,
                }
            }
            while import.is_none() && !stop && events < self.batch_events_max {
                match rx.try_recv() {
                    Ok(WriterMsg::Append(r)) => {
                        events += r.events.len();
                        messages += 1;
                        requests.push(r);
                    }
                    Ok(WriterMsg::Appends(rs)) => {
                        events += rs.iter().map(|r| r.events.len()).sum::<usize>();
                        messages += 1;
                        requests.extend(rs);
                    }
                    Ok(WriterMsg::Import(rs)) => next_import = Some(rs),
                    Ok(WriterMsg::Shutdown) => stop = true,
                    Err(_) => break,
                }
                if next_import.is_some() {
                    break;
                }
            }
            // Every message taken counts once in `unwritten` (see `FileStore::submit`).
            let (taken, written) = match import {
                Some(records) => (1, self.process_import(records)),
                None if !requests.is_empty() => (messages, self.process(requests)),
                None => (0, None),
            };
            self.shared.unwritten.fetch_sub(taken, Ordering::AcqRel);
            if let Some(written) = written {
                if let Err(std_mpsc::SendError(w)) = to_syncer.send(written) {
                    for (reply, _) in w.replies {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                }
            }
        }
        drop(to_syncer);
        let _ = syncer.join();
        drop(self.lock);
        tracing::debug!(head = self.head.position, "log writer stopped");
    }

    /// Plans and writes one batch; returns what the syncer must make durable and answer.
    fn process(&mut self, requests: Vec<AppendRequest>) -> Option<Written> {
        if let Some(why) = self.shared.poisoned() {
            for r in requests {
                let _ = r.reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return None;
        }
        let mut batch = self.new_batch(&requests);
        // Retries of appends written but not yet durable are answered with the batch.
        let mut deferred = Vec::new();
        {
            let index = self.shared.index.read();
            for request in requests {
                match self.plan(&index, &mut batch, &request) {
                    Ok(Verdict::New(appended)) => batch.accepted.push((request.reply, appended)),
                    Ok(Verdict::Retry(appended)) => {
                        if *appended.positions.end() <= index.head.position {
                            let _ = request.reply.send(Ok(appended));
                        } else {
                            deferred.push((request.reply, appended));
                        }
                    }
                    Err(e) => {
                        let _ = request.reply.send(Err(e));
                    }
                }
            }
        }
        if batch.placed.is_empty() {
            return (!deferred.is_empty()).then(|| Written {
                mark: DurableMark {
                    head: self.head,
                    segment_first: self.active_first,
                    segment_len: self.active_len,
                },
                files: Vec::new(),
                sync_dir: false,
                replies: deferred,
            });
        }
        self.write_batch(batch, deferred)
    }

    /// Plans and writes the records of one import (one request each), all or none: the
    /// first request refused refuses the batch, naming its position, and nothing is written.
    /// A record whose event id is stored already is refused too (an import stores each id
    /// once; it is not a retry).
    fn process_import(&mut self, requests: Vec<AppendRequest>) -> Option<Written> {
        if let Some(why) = self.shared.poisoned() {
            for r in requests {
                let _ = r.reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return None;
        }
        let mut batch = self.new_batch(&requests);
        {
            let index = self.shared.index.read();
            let mut requests = requests.into_iter();
            for request in requests.by_ref() {
                let position = request.import.as_ref().map_or(0, |i| i.position);
                let refused = match self.plan(&index, &mut batch, &request) {
                    Ok(Verdict::New(appended)) => {
                        batch.accepted.push((request.reply, appended));
                        continue;
                    }
                    Ok(Verdict::Retry(stored)) => StoreError::DuplicateEventId {
                        event_id: request
                            .events
                            .first()
                            .map(|e| e.event_id)
                            .unwrap_or_default(),
                        position: *stored.positions.start(),
                    },
                    Err(e) => e,
                };
                // Nothing of the batch is written: the other requests' replies are dropped
                // unanswered, this one carries the reason.
                let _ = request.reply.send(Err(import_refused(position, refused)));
                return None;
            }
        }
        if batch.placed.is_empty() {
            return None;
        }
        self.write_batch(batch, Vec::new())
    }

    /// Writes a planned batch; returns what the syncer must make durable and answer (the
    /// batch's and `deferred`'s replies), or answers them all with the write error.
    fn write_batch(&mut self, batch: Batch, deferred: Vec<(Reply, Appended)>) -> Option<Written> {
        match self.write(&batch) {
            Ok(new_files) => {
                let mut written = self.publish_written(batch, new_files);
                written.replies.extend(deferred);
                Some(written)
            }
            Err(e) => {
                let message = format!("appending to the log: {e}");
                tracing::warn!(error = %e, "append batch refused");
                for (reply, _) in batch.accepted.into_iter().chain(deferred) {
                    let _ = reply.send(Err(StoreError::io(
                        "appending to the log",
                        std::io::Error::new(e.kind(), message.clone()),
                    )));
                }
                None
            }
        }
    }

    /// An empty batch on the writer's head, its buffers sized for `requests`.
    fn new_batch(&self, requests: &[AppendRequest]) -> Batch {
        // Size the batch's buffers once: reallocation shows up in profiles at high load.
        let events: usize = requests.iter().map(|r| r.events.len()).sum();
        let bytes: usize = requests
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .map(|e| e.record_len(&r.stream) + FRAME_HEADER_BYTES)
            })
            .sum();
        Batch {
            base: self.head.position,
            head: self.head,
            last_recorded_at: self.last_recorded_at,
            segment: self.active_segment,
            segment_len: self.active_len,
            chunks: vec![Chunk {
                segment: self.active_segment,
                new_segment_first: None,
                start: self.active_len,
                bytes: Vec::with_capacity(bytes),
            }],
            placed: Vec::with_capacity(events),
            streams: Vec::with_capacity(requests.len()),
            versions: AHashMap::with_capacity(requests.len()),
            ids: AHashMap::with_capacity(events),
            accepted: Vec::new(),
        }
    }

    /// Checks one request and, if accepted, encodes it into the batch. Nothing in the batch
    /// changes unless the whole request is accepted.
    fn plan(
        &self,
        index: &Index,
        batch: &mut Batch,
        request: &AppendRequest,
    ) -> Result<Verdict, StoreError> {
        let stream = &request.stream;
        if let Some(v) = self.check_retry(index, batch, request)? {
            return Ok(v);
        }
        let actual = batch.stream_version(index, stream);
        if !request.expected.admits(actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected: request.expected,
                actual,
            });
        }
        let size: u64 = request
            .events
            .iter()
            .map(|e| frame_len(e.record_len(stream)))
            .sum();
        let mut segment = batch.segment;
        let mut segment_len = batch.segment_len;
        let mut opens_segment = false;
        if segment_len > SEGMENT_HEADER_BYTES && segment_len + size > self.segment_bytes_max {
            segment += 1;
            segment_len = SEGMENT_HEADER_BYTES;
            opens_segment = true;
        }
        // Encode straight into the batch; on failure, cut it back so it is untouched.
        let first = batch.head.position + 1;
        if opens_segment {
            batch.chunks.push(Chunk {
                segment,
                new_segment_first: Some(first),
                start: SEGMENT_HEADER_BYTES,
                bytes: Vec::with_capacity(size as usize),
            });
        }
        let placed_before = batch.placed.len();
        let stream_ix = batch.streams.len() as u32;
        let mut head = batch.head;
        let recorded_at = match recorded_at(
            self.clock.now(),
            request.import.as_ref(),
            request.events.len(),
            batch.head,
            batch.last_recorded_at,
        ) {
            Ok(t) => t,
            Err(e) => {
                if opens_segment {
                    batch.chunks.pop();
                }
                return Err(e);
            }
        };
        let Some(chunk) = batch.chunks.last_mut() else {
            return Err(StoreError::Poisoned("writer batch has no chunk".into()));
        };
        let bytes_before = chunk.bytes.len();
        let chunk_start = chunk.start;
        for (i, e) in request.events.iter().enumerate() {
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
            let frame_start = chunk.bytes.len();
            chunk.bytes.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
            let hash = match encode_header_into(&mut chunk.bytes, &header, &e.payload) {
                Ok(hash) => hash,
                Err(err) => {
                    chunk.bytes.truncate(bytes_before);
                    batch.placed.truncate(placed_before);
                    if opens_segment {
                        batch.chunks.pop();
                    }
                    return Err(err.into());
                }
            };
            let len = seal_frame(&mut chunk.bytes, frame_start, i + 1 == request.events.len());
            debug_assert_eq!(len, e.record_len(stream));
            batch.placed.push(Placed {
                stream: stream_ix,
                version,
                event_id: e.event_id,
                loc: RecordLoc {
                    segment,
                    offset: chunk_start + (frame_start + FRAME_HEADER_BYTES) as u64,
                    len: len as u32,
                },
            });
            head = ChainHead { position, hash };
        }
        if let Some(import) = &request.import {
            if let Err(e) = check_imported_hash(import, head.hash) {
                chunk.bytes.truncate(bytes_before);
                batch.placed.truncate(placed_before);
                if opens_segment {
                    batch.chunks.pop();
                }
                return Err(e);
            }
        }
        let written = (chunk.bytes.len() - bytes_before) as u64;
        for (i, e) in request.events.iter().enumerate() {
            batch.ids.insert(e.event_id, first + i as Position);
        }
        batch
            .versions
            .insert(stream.clone(), head_version(actual, request));
        batch.streams.push(stream.clone());
        batch.segment = segment;
        batch.segment_len = segment_len + written;
        batch.head = head;
        batch.last_recorded_at = recorded_at;
        Ok(Verdict::New(Appended {
            positions: first..=head.position,
            stream_version: head_version(actual, request),
            was_retry: false,
        }))
    }

    /// `Some(Retry)` when every event id of the request is stored, in this stream, in this
    /// order; `None` when none is; an error for anything in between.
    fn check_retry(
        &self,
        index: &Index,
        batch: &Batch,
        request: &AppendRequest,
    ) -> Result<Option<Verdict>, StoreError> {
        let first_id = request.events[0].event_id;
        match batch.position_of(index, &first_id)? {
            None => {
                for e in &request.events {
                    if let Some(position) = batch.position_of(index, &e.event_id)? {
                        return Err(StoreError::DuplicateEventId {
                            event_id: e.event_id,
                            position,
                        });
                    }
                }
                Ok(None)
            }
            Some(first) => {
                let mut version = 0;
                for (i, e) in request.events.iter().enumerate() {
                    let expected_position = first + i as Position;
                    let found = batch.position_of(index, &e.event_id)?;
                    version = match found {
                        Some(p) if p == expected_position => batch
                            .version_in_stream(index, &request.stream, &e.event_id, p)?
                            .ok_or(StoreError::DuplicateEventId {
                                event_id: e.event_id,
                                position: p,
                            })?,
                        Some(p) => {
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
                Ok(Some(Verdict::Retry(Appended {
                    positions: first..=first + request.events.len() as Position - 1,
                    stream_version: version,
                    was_retry: true,
                })))
            }
        }
    }

    /// Writes every chunk (creating new segments). On a write error the files are cut back
    /// to where they were and the error returned; if even that fails, the store is poisoned.
    fn write(&mut self, batch: &Batch) -> std::io::Result<Vec<NewSegment>> {
        let mut new_files: Vec<NewSegment> = Vec::new();
        let result = (|| {
            for chunk in batch.chunks.iter().filter(|c| !c.bytes.is_empty()) {
                match chunk.new_segment_first {
                    None => self.active_file.write_all_at(&chunk.bytes, chunk.start)?,
                    Some(first) => {
                        let path = segment_path(&self.dir, first);
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .open(&path)?;
                        let file = Arc::new(file);
                        new_files.push(NewSegment {
                            segment: chunk.segment,
                            first,
                            file: file.clone(),
                            path,
                        });
                        file.write_all_at(&segment_header(first), 0)?;
                        file.write_all_at(&chunk.bytes, chunk.start)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.roll_back(&new_files);
            return Err(e);
        }
        Ok(new_files)
    }

    fn roll_back(&mut self, new_files: &[NewSegment]) {
        let mut failed = None;
        if let Err(e) = self.active_file.set_len(self.active_len) {
            failed = Some(e);
        }
        for s in new_files {
            if let Err(e) = std::fs::remove_file(&s.path) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            self.shared
                .poison(format!("could not undo a failed write: {e}"));
        }
    }

    /// Adds a written batch to the index (beyond the durable head) and moves the writer's
    /// own state forward; returns the hand-over for the syncer.
    fn publish_written(&mut self, batch: Batch, new_files: Vec<NewSegment>) -> Written {
        let mut files = vec![self.active_file.clone()];
        let sync_dir = !new_files.is_empty();
        {
            let mut index = self.shared.index.write();
            for s in new_files {
                debug_assert_eq!(s.segment as usize, index.segments.len());
                index.segments.push(OpenSegment {
                    path: s.path.display().to_string(),
                    file: s.file.clone(),
                });
                files.push(s.file.clone());
                self.active_file = s.file;
                self.active_segment = s.segment;
                self.active_first = s.first;
            }
            let mut position = batch.base;
            for p in &batch.placed {
                position += 1;
                let stream = batch.streams[p.stream as usize].as_str();
                if let Err(problem) =
                    index.insert(stream, p.version, p.event_id, position, p.loc, false)
                {
                    self.shared
                        .poison(format!("index refused a written record: {problem}"));
                    break;
                }
            }
        }
        if batch.chunks[0].bytes.is_empty() {
            // Nothing was written to the segment that was active before this batch.
            files.remove(0);
        }
        let stats = &self.shared.stats;
        stats.batches_written.fetch_add(1, Ordering::Relaxed);
        stats
            .records_written
            .fetch_add(batch.placed.len() as u64, Ordering::Relaxed);
        self.active_len = batch.segment_len;
        self.head = batch.head;
        self.last_recorded_at = batch.last_recorded_at;
        Written {
            mark: DurableMark {
                head: batch.head,
                segment_first: self.active_first,
                segment_len: batch.segment_len,
            },
            files,
            sync_dir,
            replies: batch.accepted,
        }
    }
}

/// A segment created by a batch.
struct NewSegment {
    segment: u32,
    first: Position,
    file: Arc<File>,
    path: PathBuf,
}

/// The syncer: drains every batch handed over, syncs their files once, then publishes the
/// new durable head and answers.
fn run_syncer(
    shared: &Arc<Shared>,
    dir: &std::path::Path,
    mark: Option<MarkWriter>,
    indexer: Option<IndexerWake>,
    rx: std_mpsc::Receiver<Written>,
    head_tx: watch::Sender<Position>,
) {
    // The marker's `fdatasync` runs on its own thread, so that the next round's data sync
    // overlaps it: under load a round costs one sync, not two.
    let (to_marker, marker_rx) = std_mpsc::sync_channel::<Vec<Written>>(BATCHES_IN_FLIGHT_MAX);
    let marker = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("ledger-marker".into())
            .spawn(move || run_marker(&shared, mark, indexer, marker_rx, head_tx))
    };
    let marker = match marker {
        Ok(handle) => Some(handle),
        Err(e) => {
            shared.poison(format!("could not start the marker thread: {e}"));
            None
        }
    };
    // The end of the last round whose data sync succeeded: durable, acknowledged once its
    // marker is (see `Shared::poison_after`).
    let mut synced: Position = 0;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        // Group commit: take every batch already written, and while more appends are on
        // their way through the writer, wait (briefly) for them as well.
        let deadline = Instant::now() + SYNC_GATHER_MAX;
        loop {
            while let Ok(more) = rx.try_recv() {
                batches.push(more);
            }
            if shared.unwritten.load(Ordering::Acquire) == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(more) => batches.push(more),
                Err(_) => break,
            }
        }
        if let Some(why) = shared.poisoned() {
            answer_all(batches, |_| Err(StoreError::Poisoned(why.clone())));
            continue;
        }
        let mut files: Vec<&Arc<File>> = Vec::new();
        for f in batches.iter().flat_map(|b| &b.files) {
            if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                files.push(f);
            }
        }
        let started = Instant::now();
        let sync_result = files.iter().try_for_each(|f| f.sync_data()).and_then(|()| {
            if batches.iter().any(|b| b.sync_dir) {
                sync_dir(dir)
            } else {
                Ok(())
            }
        });
        shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .sync_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = sync_result {
            shared.poison_after(format!("fdatasync failed: {e}"), synced);
            let why = e.to_string();
            answer_all(batches, |_| {
                Err(StoreError::Poisoned(format!("fdatasync failed: {why}")))
            });
            continue;
        }
        synced = batches
            .iter()
            .map(|b| b.mark.head.position)
            .fold(synced, Position::max);
        if let Err(std_mpsc::SendError(batches)) = to_marker.send(batches) {
            answer_all(batches, |_| Err(StoreError::Closed));
        }
    }
    drop(to_marker);
    if let Some(marker) = marker {
        let _ = marker.join();
    }
}

/// The marker thread: for rounds whose records are durable, moves the durable-head marker
/// (one write and `fdatasync` for every round waiting), then publishes the new durable head
/// and answers. The marker moves only once the records it names are durable, and before any
/// of them is acknowledged: recovery never cuts at or before it.
fn run_marker(
    shared: &Shared,
    mut mark: Option<MarkWriter>,
    indexer: Option<IndexerWake>,
    rx: std_mpsc::Receiver<Vec<Written>>,
    head_tx: watch::Sender<Position>,
) {
    let mut failed: Option<String> = None;
    while let Ok(mut batches) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            batches.extend(more);
        }
        if let Some(why) = &failed {
            answer_all(batches, |_| Err(StoreError::Poisoned(why.clone())));
            continue;
        }
        let newest = batches
            .iter()
            .map(|b| b.mark)
            .max_by_key(|m| m.head.position);
        let marked = match (mark.as_mut(), newest) {
            (Some(m), Some(newest)) => m.store(&newest),
            _ => Ok(()),
        };
        if let Err(e) = marked {
            let why = format!("writing the durable-head marker failed: {e}");
            shared.poison(why.clone());
            answer_all(batches, |_| Err(StoreError::Poisoned(why.clone())));
            failed = Some(why);
            continue;
        }
        let head = newest.map(|m| m.head).unwrap_or_default();
        let in_memory = {
            let mut index = shared.index.write();
            if head.position > index.head.position {
                index.head = head;
            }
            index.head.position.saturating_sub(index.base)
        };
        if let Some(wake) = indexer.as_ref().filter(|w| in_memory >= w.tail_max) {
            // Full: a wake-up is already pending.
            let _ = wake.tx.try_send(());
        }
        head_tx.send_if_modified(|h| {
            let moved = head.position > *h;
            if moved {
                *h = head.position;
            }
            moved
        });
        answer_all(batches, Ok);
    }
}

fn answer_all(batches: Vec<Written>, answer: impl Fn(Appended) -> Result<Appended, StoreError>) {
    for (reply, appended) in batches.into_iter().flat_map(|b| b.replies) {
        let _ = reply.send(answer(appended));
    }
}

fn head_version(actual: StreamVersion, request: &AppendRequest) -> StreamVersion {
    actual + request.events.len() as StreamVersion
}

/// The indexer thread: whenever woken (durable records in memory reached `tail_max`), moves
/// every durable index entry in memory to the on-disk index in one batch, then drops them from
/// memory. When the marker thread ends (the store closes or is dropped), it moves what is left
/// and stops. A failed write leaves the entries in memory (and is retried at the next wake-up).
pub(crate) fn run_indexer(shared: &Shared, rx: &std_mpsc::Receiver<()>, tail_max: usize) {
    loop {
        let last = rx.recv().is_err();
        // At the end, what is durable goes to an index that exists (the next open then reads
        // nothing); a log smaller than the tail never gets one.
        let (full, exists) = {
            let index = shared.index.read();
            let durable = index.head.position.saturating_sub(index.base);
            (
                durable >= tail_max as u64,
                durable > 0 && index.disk.is_some(),
            )
        };
        let go = match (full, exists) {
            (true, false) => shared.index.write().ensure_disk(),
            (full, exists) => exists && (full || last),
        };
        let plan = if go {
            let index = shared.index.read();
            index.plan_flush(index.head)
        } else {
            None
        };
        if let Some((disk, flush)) = plan {
            match disk.write(&flush) {
                Ok(()) => shared.index.write().flushed(flush.upto.position),
                Err(e) => tracing::warn!(
                    error = %e,
                    records = flush.len(),
                    "could not move log index entries to disk; keeping them in memory"
                ),
            }
        }
        if last {
            let disk = shared.index.read().disk.clone();
            if let Some(Err(e)) = disk.map(|d| d.settle()) {
                tracing::warn!(error = %e, "could not write the log index out at close");
            }
            return;
        }
    }
}
