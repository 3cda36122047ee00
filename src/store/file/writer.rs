//! The single writer of the file log, on its own thread, with group commit.
//!
//! Appenders send requests over a bounded channel. The writer takes the first waiting
//! request, drains whatever else is queued (up to a batch limit), checks each request
//! (idempotent retry, expected version) against the index plus the batch so far, encodes
//! the accepted ones into frames, writes them with one `write` per segment touched and one
//! `fdatasync`, and only then publishes them to the index and answers every request. So an
//! acknowledged append is durable, and readers never see a record that is not.
//!
//! Failure handling: if a write fails (disk full, I/O error) the files are cut back to where
//! they were and the whole batch is refused; the store stays usable. If `fdatasync` fails,
//! the page cache may have dropped data the writer cannot know about, so the store is
//! poisoned: it refuses appends until reopened, and reopening re-reads the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger_events::{
    encode_record_into, truncate_to_micros, Actor, ChainHead, Envelope, Hash, Position, StreamId,
    StreamVersion, MIN_RECORD_BYTES,
};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::index::{Index, OpenSegment};
use super::segment::{
    frame_len, push_frame, segment_header, segment_path, RecordLoc, SEGMENT_HEADER_BYTES,
};
use super::sync_dir;
use crate::clock::Clock;
use crate::store::{Appended, ExpectedVersion, StoreError};

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

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

pub(crate) enum WriterMsg {
    Append(AppendRequest),
    /// Finish what is queued before this message, then stop.
    Shutdown,
}

pub(crate) struct Shared {
    pub index: parking_lot::RwLock<Index>,
}

pub(crate) struct Writer {
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    pub segment_bytes_max: u64,
    pub batch_events_max: usize,
    pub active_file: File,
    pub active_segment: u32,
    pub active_len: u64,
    pub head: ChainHead,
    pub last_recorded_at: DateTime<Utc>,
    pub head_tx: watch::Sender<Position>,
    pub poisoned: Option<String>,
    /// Held for the writer's lifetime: the data directory's lock.
    pub _lock: File,
}

/// One stretch of bytes to write into one segment.
struct Chunk {
    segment: u32,
    /// Set when the chunk opens a new segment starting at this position.
    new_segment_first: Option<Position>,
    start: u64,
    bytes: Vec<u8>,
}

/// A record placed by this batch, not yet durable.
struct Placed {
    stream: StreamId,
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
    versions: HashMap<StreamId, StreamVersion>,
    ids: HashMap<Uuid, Position>,
    accepted: Vec<(oneshot::Sender<Result<Appended, StoreError>>, Appended)>,
}

type NewSegment = (u32, File, PathBuf);

impl Batch {
    fn stream_version(&self, index: &Index, stream: &StreamId) -> StreamVersion {
        self.versions
            .get(stream)
            .copied()
            .unwrap_or_else(|| index.stream_version(stream.as_str()))
    }

    fn position_of(&self, index: &Index, id: &Uuid) -> Option<Position> {
        self.ids
            .get(id)
            .or_else(|| index.event_ids.get(id))
            .copied()
    }

    fn version_in_stream(
        &self,
        index: &Index,
        stream: &StreamId,
        position: Position,
    ) -> Option<StreamVersion> {
        if position > self.base {
            let p = self.placed.get((position - self.base - 1) as usize)?;
            (p.stream == *stream).then_some(p.version)
        } else {
            index.version_in_stream(stream.as_str(), position)
        }
    }
}

enum Verdict {
    New(Appended),
    Retry(Appended),
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut events = 0usize;
            match first {
                WriterMsg::Append(r) => {
                    events += r.events.len();
                    batch.push(r);
                }
                WriterMsg::Shutdown => stop = true,
            }
            while !stop && events < self.batch_events_max {
                match rx.try_recv() {
                    Ok(WriterMsg::Append(r)) => {
                        events += r.events.len();
                        batch.push(r);
                    }
                    Ok(WriterMsg::Shutdown) => stop = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.process(batch);
            }
        }
        tracing::debug!(head = self.head.position, "log writer stopped");
    }

    fn process(&mut self, requests: Vec<AppendRequest>) {
        if let Some(why) = &self.poisoned {
            for r in requests {
                let _ = r.reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        let mut batch = Batch {
            base: self.head.position,
            head: self.head,
            last_recorded_at: self.last_recorded_at,
            segment: self.active_segment,
            segment_len: self.active_len,
            chunks: vec![Chunk {
                segment: self.active_segment,
                new_segment_first: None,
                start: self.active_len,
                bytes: Vec::new(),
            }],
            placed: Vec::new(),
            versions: HashMap::new(),
            ids: HashMap::new(),
            accepted: Vec::new(),
        };
        {
            let index = self.shared.index.read();
            for request in requests {
                match self.plan(&index, &mut batch, &request) {
                    Ok(Verdict::New(appended)) => batch.accepted.push((request.reply, appended)),
                    Ok(Verdict::Retry(appended)) => {
                        let _ = request.reply.send(Ok(appended));
                    }
                    Err(e) => {
                        let _ = request.reply.send(Err(e));
                    }
                }
            }
        }
        if batch.placed.is_empty() {
            for (reply, appended) in batch.accepted {
                let _ = reply.send(Ok(appended));
            }
            return;
        }
        match self.commit(&batch) {
            Ok(new_files) => self.publish(batch, new_files),
            Err(e) => {
                let message = e.to_string();
                for (reply, _) in batch.accepted {
                    let _ = reply.send(Err(StoreError::io(
                        "appending to the log",
                        std::io::Error::new(e.kind(), message.clone()),
                    )));
                }
            }
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
        // Encode into a request-local buffer first, so a failure leaves the batch untouched.
        let mut frames = Vec::with_capacity(size as usize);
        let mut record = Vec::new();
        let mut head = batch.head;
        let mut recorded_at = batch.last_recorded_at;
        let mut placed = Vec::with_capacity(request.events.len());
        let now = truncate_to_micros(self.clock.now());
        if now > recorded_at {
            recorded_at = now;
        }
        for (i, e) in request.events.iter().enumerate() {
            let position = head.position + 1;
            let version = actual + 1 + i as StreamVersion;
            let envelope = Envelope {
                position,
                stream_id: stream.clone(),
                stream_version: version,
                event_id: e.event_id,
                event_type: e.event_type.to_owned(),
                schema_version: e.schema_version,
                recorded_at,
                actor: e.actor.clone(),
                correlation_id: e.correlation_id,
                prev_hash: head.hash,
                hash: Hash::ZERO,
            };
            record.clear();
            let hash = encode_record_into(&mut record, &envelope, &e.payload)?;
            debug_assert_eq!(record.len(), e.record_len(stream));
            let offset = segment_len + frames.len() as u64 + 8;
            push_frame(&mut frames, &record, i + 1 == request.events.len());
            placed.push(Placed {
                stream: stream.clone(),
                version,
                event_id: e.event_id,
                loc: RecordLoc {
                    segment,
                    offset,
                    len: record.len() as u32,
                },
            });
            head = ChainHead { position, hash };
        }
        // Accepted: fold into the batch.
        if opens_segment {
            batch.chunks.push(Chunk {
                segment,
                new_segment_first: Some(batch.head.position + 1),
                start: SEGMENT_HEADER_BYTES,
                bytes: Vec::new(),
            });
        }
        let first = batch.head.position + 1;
        for (i, p) in placed.iter().enumerate() {
            batch.ids.insert(p.event_id, first + i as Position);
        }
        batch
            .versions
            .insert(stream.clone(), head_version(actual, request));
        if let Some(chunk) = batch.chunks.last_mut() {
            chunk.bytes.extend_from_slice(&frames);
        }
        batch.segment = segment;
        batch.segment_len = segment_len + frames.len() as u64;
        batch.placed.extend(placed);
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
        match batch.position_of(index, &first_id) {
            None => {
                for e in &request.events {
                    if let Some(position) = batch.position_of(index, &e.event_id) {
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
                    let found = batch.position_of(index, &e.event_id);
                    version = match found {
                        Some(p) if p == expected_position => batch
                            .version_in_stream(index, &request.stream, p)
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

    /// Writes and syncs every chunk. Returns the files of new segments. On a write error the
    /// files are cut back; on a sync error the store is poisoned.
    fn commit(&mut self, batch: &Batch) -> std::io::Result<Vec<NewSegment>> {
        let mut new_files: Vec<NewSegment> = Vec::new();
        let result = (|| {
            for chunk in batch.chunks.iter().filter(|c| !c.bytes.is_empty()) {
                match chunk.new_segment_first {
                    None => {
                        self.active_file.write_all_at(&chunk.bytes, chunk.start)?;
                    }
                    Some(first) => {
                        let path = segment_path(&self.dir, first);
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .open(&path)?;
                        new_files.push((chunk.segment, file, path));
                        let file = &new_files[new_files.len() - 1].1;
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
        let synced = (|| {
            if !batch.chunks[0].bytes.is_empty() {
                self.active_file.sync_data()?;
            }
            for (_, file, _) in &new_files {
                file.sync_data()?;
            }
            if !new_files.is_empty() {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        if let Err(e) = synced {
            let why = format!("fdatasync failed: {e}");
            tracing::error!(error = %e, "log sync failed; refusing appends until reopened");
            self.poisoned = Some(why);
            return Err(e);
        }
        Ok(new_files)
    }

    fn roll_back(&mut self, new_files: &[NewSegment]) {
        let mut failed = None;
        if let Err(e) = self.active_file.set_len(self.active_len) {
            failed = Some(e);
        }
        for (_, _, path) in new_files {
            if let Err(e) = std::fs::remove_file(path) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            tracing::error!(error = %e, "could not undo a failed write; refusing appends until reopened");
            self.poisoned = Some(format!("could not undo a failed write: {e}"));
        }
    }

    /// Makes a durable batch visible: index, head, replies.
    fn publish(&mut self, batch: Batch, new_files: Vec<NewSegment>) {
        let mut index = self.shared.index.write();
        for (segment, file, path) in new_files {
            debug_assert_eq!(segment as usize, index.segments.len());
            match file.try_clone() {
                Ok(reader) => index.segments.push(OpenSegment {
                    path: path.display().to_string(),
                    file: Arc::new(reader),
                }),
                Err(e) => {
                    self.poisoned = Some(format!("could not reopen a new segment: {e}"));
                }
            }
            self.active_file = file;
            self.active_segment = segment;
        }
        let mut position = batch.base;
        for p in &batch.placed {
            position += 1;
            if let Err(problem) =
                index.insert(p.stream.as_str(), p.version, p.event_id, position, p.loc)
            {
                tracing::error!(%problem, "index refused a durable record; refusing appends until reopened");
                self.poisoned = Some(format!("index inconsistency: {problem}"));
                break;
            }
        }
        index.head = batch.head;
        drop(index);
        self.active_len = batch.segment_len;
        self.head = batch.head;
        self.last_recorded_at = batch.last_recorded_at;
        self.head_tx.send_replace(self.head.position);
        for (reply, appended) in batch.accepted {
            let _ = reply.send(Ok(appended));
        }
    }
}

fn head_version(actual: StreamVersion, request: &AppendRequest) -> StreamVersion {
    actual + request.events.len() as StreamVersion
}
