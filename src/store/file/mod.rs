//! The embedded event store: an append-only log of segment files in a data directory.
//!
//! Layout and recovery rules are in [`segment`]; the group-commit writer is in [`writer`];
//! the index in [`index`] (its in-memory tail) and [`diskindex`] (the rest, on disk). One process at a time may open a directory (a lock file,
//! `LOCK`, is held while open).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use ledger_events::{ChainHead, Position, Record, RecordView, StreamId, StreamVersion};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use self::diskindex::{DiskIndex, OpenFailure};
use self::index::{Index, OpenSegment};
use self::segment::{
    check_frame, list_segments, scan_from, segment_header, segment_path, RecordLoc, ScanStart,
    FRAME_HEADER_BYTES,
};
use self::writer::{AppendRequest, PreparedEvent, Shared, Writer, WriterMsg};
use super::subscription::{HeadSource, Subscription};
use super::{
    check_import, Appended, BatchAppend, EventStore, ExpectedVersion, ImportCheck, Maintenance,
    NewEvent, PendingImport, StoreError, APPEND_BATCH_MAX, READ_BATCH_MAX,
};
use crate::clock::Clock;

pub mod diskindex;
pub mod durable;
mod index;
pub mod repair;
pub mod segment;
mod writer;

/// Settings of the file store.
#[derive(Clone, Debug)]
pub struct FileStoreConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// A segment is sealed once the next append would take it past this size. An append is
    /// never split, so a single append larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    /// Most events the writer takes into one write + `fdatasync`.
    pub batch_events_max: usize,
    /// Appends that may wait for the writer before appenders wait to enqueue.
    pub queue_depth: usize,
    /// Durable records the in-memory index holds before it moves them to the on-disk index
    /// (`<dir>/index/`) in one batch: bounds the index's memory (about 100 bytes a record).
    pub index_tail_records: usize,
    /// Who compacts the on-disk index: this process in the background (the default), or a
    /// later server ([`Maintenance::Deferred`], for short read commands).
    pub maintenance: Maintenance,
}

impl FileStoreConfig {
    /// Smallest segment size accepted.
    pub const SEGMENT_BYTES_MIN: u64 = 4096;

    /// Defaults for `dir`: 64 MiB segments, batches of up to 8192 events.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes_max: 64 * 1024 * 1024,
            batch_events_max: 8192,
            queue_depth: 8192,
            index_tail_records: 65_536,
            maintenance: Maintenance::Background,
        }
    }
}

/// Counters of a [`FileStore`] since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct FileStoreStats {
    /// Write batches (one positional write per segment touched).
    pub batches_written: u64,
    /// Records written.
    pub records_written: u64,
    /// `fdatasync` rounds (each may cover several batches).
    pub syncs: u64,
    /// Time spent in them.
    pub sync_seconds: f64,
    /// Records the open read from the segments (those after the on-disk index's position;
    /// every record when the index was missing or rebuilt).
    pub open_records_scanned: u64,
    /// Whether the open found no usable on-disk index (none yet, or one it refused) and so
    /// read every record, rebuilding the index.
    pub index_rebuilt: bool,
    /// Records the index holds in memory now (not yet moved to disk).
    pub index_tail_records: u64,
    /// The last position whose index entries are on disk.
    pub index_on_disk: u64,
}

/// The file-backed event store. Cheap to clone; clones share one writer.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<WriterMsg>,
}

struct Inner {
    shared: Arc<Shared>,
    head_rx: watch::Receiver<Position>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The thread moving durable index entries to disk; ends after the writer.
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Makes a directory entry change (a new or removed file) durable.
/// Takes the log directory's `LOCK` (held while the returned file is open): one process at a
/// time writes a log.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File, StoreError> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| StoreError::io(format!("opening {}/LOCK", dir.display()), e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.display().to_string())),
        Err(fs::TryLockError::Error(e)) => {
            Err(StoreError::io(format!("locking {}", dir.display()), e))
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileStore {
    /// Opens (or creates) the log in `config.dir`: checks the on-disk index against the log
    /// (see `load_index`) and scans the segments after its position (every segment when
    /// there is no usable index, rebuilding it), verifying CRCs and the hash chain; cuts off a
    /// torn tail left by a crash (with a warning), and starts the writer and the indexer.
    /// Refuses to open a damaged log, naming segment, offset and position.
    pub async fn open(config: FileStoreConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config, clock))
            .await
            .map_err(|e| StoreError::io("opening the log", std::io::Error::other(e.to_string())))?
    }

    fn open_blocking(config: FileStoreConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if config.segment_bytes_max < FileStoreConfig::SEGMENT_BYTES_MIN {
            return Err(StoreError::InvalidAppend(format!(
                "segment_bytes_max must be at least {} bytes",
                FileStoreConfig::SEGMENT_BYTES_MIN
            )));
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;

        let mut segments = list_segments(&dir)?;
        let mark = durable::read_mark(&dir)?;
        let (mut index, start) = load_index(&dir, &segments, mark.as_ref(), config.maintenance);
        let rebuilt = start.is_none() && (index.disk.is_some() || index.disk_dir.is_some());
        // While rebuilding, entries move to disk as the scan goes, but only acknowledged
        // ones: the index never runs ahead of durable records.
        let acknowledged = mark.as_ref().map_or(0, |m| m.head.position);
        let tail_max = config.index_tail_records.max(1);
        let mut flushing = true;
        let report = scan_from(
            &segments,
            mark.as_ref(),
            start.as_ref(),
            |view, loc, ends_append| {
                let stream = view.stream_id().map_err(|e| corrupt_here(e.to_string()))?;
                let position = view.position();
                index
                    .insert(
                        stream,
                        view.stream_version(),
                        view.event_id(),
                        position,
                        loc,
                        true,
                    )
                    .map_err(corrupt_here)?;
                if flushing
                    && ends_append
                    && position <= acknowledged
                    && index.tail_len() >= tail_max
                {
                    let upto = ChainHead {
                        position,
                        hash: view.hash(),
                    };
                    if let Err(e) = index.flush_now(upto) {
                        tracing::warn!(error = %e, "could not write the log index; keeping it in memory");
                        flushing = false;
                    }
                }
                Ok(())
            },
            |_| {},
        )?;
        if let Some(torn) = &report.torn {
            let later: Vec<PathBuf> = torn.later.iter().map(|l| l.0.clone()).collect();
            let label = format!("torn-after-{}", torn.after);
            let aside = repair::set_aside(&dir, &torn.segment, torn.valid_len, &later, &label)?;
            tracing::warn!(
                segment = %torn.segment.display(),
                after_position = torn.after,
                valid_len = torn.valid_len,
                file_len = torn.file_len,
                later_segments = torn.later.len(),
                bytes = torn.bytes(),
                aside = %aside.display(),
                proven = torn.is_proven(),
                "set aside an interrupted write at the end of the log: {}",
                torn.describe()
            );
            segments.truncate(torn.segment_index + usize::from(torn.valid_len > 0));
        }
        let mut segment_lens = report.segment_lens.clone();
        if segments.is_empty() {
            let first = report.head.position + 1;
            let path = segment_path(&dir, first);
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|f| {
                    f.write_all_at(&segment_header(first), 0)
                        .and_then(|()| f.sync_all())
                });
            f.map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
            sync_dir(&dir).map_err(|e| StoreError::io("syncing the data directory", e))?;
            segments.push(segment::SegmentFile {
                path,
                first_position: first,
            });
            segment_lens = vec![segment::SEGMENT_HEADER_BYTES];
        }
        segment_lens.truncate(segments.len());
        for seg in &segments {
            let file = File::open(&seg.path)
                .map_err(|e| StoreError::io(format!("opening {}", seg.path.display()), e))?;
            index.segments.push(OpenSegment {
                path: seg.path.display().to_string(),
                file: Arc::new(file),
            });
        }
        let last = segments.len() - 1;
        let active_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segments[last].path)
            .map_err(|e| StoreError::io(format!("opening {}", segments[last].path.display()), e))?;
        index.head = report.head;
        let head_loc = index.loc(report.head.position)?;
        let mark = Self::mark_on_open(&dir, &segments, head_loc, mark.as_ref(), report.head)?;
        let last_recorded_at: DateTime<Utc> = report
            .last_recorded_at_micros
            .and_then(|m| Utc.timestamp_micros(m).single())
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        tracing::info!(
            dir = %dir.display(),
            records_scanned = report.count,
            index_on_disk = index.base,
            index_rebuilt = rebuilt,
            head = report.head.position,
            segments = segments.len(),
            "opened event log"
        );

        let shared = Arc::new(Shared {
            index: parking_lot::RwLock::new(index),
            poisoned: Mutex::new(None),
            stats: writer::Counters::default(),
            unwritten: std::sync::atomic::AtomicU64::new(0),
            opened: writer::OpenStats {
                records_scanned: report.count,
                index_rebuilt: rebuilt,
            },
        });
        let (head_tx, head_rx) = watch::channel(report.head.position);
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let (wake_indexer, indexer_rx) = std::sync::mpsc::sync_channel(1);
        let indexer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ledger-indexer".into())
                .spawn(move || writer::run_indexer(&shared, &indexer_rx, tail_max))
                .map_err(|e| StoreError::io("starting the log indexer", e))?
        };
        let writer = Writer {
            dir,
            shared: shared.clone(),
            clock,
            segment_bytes_max: config.segment_bytes_max,
            batch_events_max: config.batch_events_max.max(1),
            active_file: Arc::new(active_file),
            active_segment: last as u32,
            active_first: segments[last].first_position,
            active_len: segment_lens
                .get(last)
                .copied()
                .unwrap_or(segment::SEGMENT_HEADER_BYTES),
            head: report.head,
            last_recorded_at,
            lock,
            mark: Some(mark),
            indexer: Some(writer::IndexerWake {
                tx: wake_indexer,
                tail_max: tail_max as u64,
            }),
        };
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx, head_tx))
            .map_err(|e| StoreError::io("starting the log writer", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                head_rx,
                writer: Mutex::new(Some(handle)),
                indexer: Mutex::new(Some(indexer)),
            }),
            tx,
        })
    }

    /// Finishes queued appends, stops the writer and releases the directory. Other clones
    /// fail with [`StoreError::Closed`] afterwards; reads keep working.
    pub async fn close(&self) -> Result<(), StoreError> {
        let _ = self.tx.send(WriterMsg::Shutdown).await;
        let writer = self.inner.writer.lock().take();
        // The indexer ends once the writer has (it then moves what is durable to disk).
        let indexer = self.inner.indexer.lock().take();
        for handle in writer.into_iter().chain(indexer) {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| {
                    StoreError::io("stopping the writer", std::io::Error::other(e.to_string()))
                })?
                .map_err(|_| {
                    StoreError::io(
                        "stopping the writer",
                        std::io::Error::other("writer thread panicked"),
                    )
                })?;
        }
        Ok(())
    }

    /// Counters since open: batches and records written, syncs and time spent in them.
    pub fn stats(&self) -> FileStoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.shared.stats;
        let index = self.inner.shared.index.read();
        FileStoreStats {
            batches_written: c.batches_written.load(Relaxed),
            records_written: c.records_written.load(Relaxed),
            syncs: c.syncs.load(Relaxed),
            sync_seconds: c.sync_nanos.load(Relaxed) as f64 / 1e9,
            open_records_scanned: self.inner.shared.opened.records_scanned,
            index_rebuilt: self.inner.shared.opened.index_rebuilt,
            index_tail_records: index.tail_len() as u64,
            index_on_disk: index.base,
        }
    }

    /// Appends `record` exactly as it was stored elsewhere (same position, ids, time, hash):
    /// the replay of an export into an empty store. The record must verify on its own and
    /// follow the current head (position, previous hash, time never decreasing); the writer
    /// checks the last two under its lock, so the chain stays intact whatever else runs.
    pub async fn import_record(&self, record: &Record) -> Result<Appended, StoreError> {
        let (event, import) = check_import(record)?;
        let e = &record.envelope;
        let event_type = event.event_type();
        let prepared = PreparedEvent {
            event_id: e.event_id,
            event_type,
            schema_version: e.schema_version,
            payload: record.payload.clone(),
            actor: e.actor.clone(),
            correlation_id: e.correlation_id,
        };
        self.submit(
            &e.stream_id,
            ExpectedVersion::Exact(e.stream_version - 1),
            vec![prepared],
            Some(import),
        )
        .await
    }

    /// Appends `records` exactly as they were stored elsewhere, as one batch: what
    /// [`Self::import_record`] does for each, in one writer batch and one `fdatasync`. Each
    /// record is checked on its own, then against the one before it (or the head): position
    /// dense, previous hash, time never decreasing, stream version, event id not stored, and
    /// the hash recomputed once encoded here. All or nothing: the first record refused
    /// refuses the batch, naming its position, and nothing of it is stored. Returns the head
    /// after the batch.
    pub async fn import_records(&self, records: &[Record]) -> Result<ChainHead, StoreError> {
        self.submit_import(records).await?.wait().await
    }

    /// The first half of [`Self::import_records`]: checks the records on their own and hands
    /// the batch to the writer, which writes batches in the order they are handed over.
    pub async fn submit_import(&self, records: &[Record]) -> Result<PendingImport, StoreError> {
        let checked = crate::store::check_import_batch(records)?;
        let head = records
            .last()
            .map(|r| ChainHead {
                position: r.envelope.position,
                hash: r.envelope.hash,
            })
            .ok_or_else(|| StoreError::InvalidAppend("no records to import".into()))?;
        let mut requests = Vec::with_capacity(records.len());
        let mut answers = Vec::with_capacity(records.len());
        for (record, (event, import)) in records.iter().zip(checked) {
            let e = &record.envelope;
            let (reply, answer) = oneshot::channel();
            requests.push(AppendRequest {
                stream: e.stream_id.clone(),
                expected: ExpectedVersion::Exact(e.stream_version - 1),
                events: vec![PreparedEvent {
                    event_id: e.event_id,
                    event_type: event.event_type(),
                    schema_version: e.schema_version,
                    payload: record.payload.clone(),
                    actor: e.actor.clone(),
                    correlation_id: e.correlation_id,
                }],
                reply,
                import: Some(import),
            });
            answers.push(answer);
        }
        let unwritten = &self.inner.shared.unwritten;
        unwritten.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.tx.send(WriterMsg::Import(requests)).await.is_err() {
            unwritten.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        Ok(PendingImport::new(async move {
            // A refused batch answers the refused record with the reason and drops the
            // others' replies unanswered.
            let mut unanswered = false;
            for answer in answers {
                match answer.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => unanswered = true,
                }
            }
            if unanswered {
                return Err(StoreError::Closed);
            }
            Ok(head)
        }))
    }

    /// Many independent appends (to the same or different streams) in one hand-over to the
    /// writer: each is checked, versioned, written and answered exactly as if it had been
    /// [`EventStore::append`]ed on its own, concurrently with the others, in the order
    /// given (an append may depend on an earlier one of the same call, e.g. its
    /// `Exact` version). One append refused refuses only itself. The answers come in the
    /// order of `appends`, once every accepted append is durable. What it saves is the
    /// per-append task, channel message and wake-up: for bulk writers such as the seeder.
    ///
    /// Fails as a whole only for more than [`APPEND_BATCH_MAX`] events in all, or a closed
    /// store.
    pub async fn append_batch(
        &self,
        appends: Vec<BatchAppend>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        // Bounds the writer batch it becomes (memory, one write).
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        if events > APPEND_BATCH_MAX {
            return Err(StoreError::InvalidAppend(format!(
                "{events} events in one batch of appends, at most {APPEND_BATCH_MAX}"
            )));
        }
        let mut requests = Vec::with_capacity(appends.len());
        // Per append: its answer to come, or why it was refused before the writer.
        let mut answers = Vec::with_capacity(appends.len());
        for a in appends {
            match Self::prepare(a.events) {
                Ok(events) => {
                    let (reply, answer) = oneshot::channel();
                    requests.push(AppendRequest {
                        stream: a.stream,
                        expected: a.expected,
                        events,
                        reply,
                        import: None,
                    });
                    answers.push(Ok(answer));
                }
                Err(e) => answers.push(Err(e)),
            }
        }
        if !requests.is_empty() {
            let unwritten = &self.inner.shared.unwritten;
            unwritten.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if self.tx.send(WriterMsg::Appends(requests)).await.is_err() {
                unwritten.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                return Err(StoreError::Closed);
            }
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Ok(answer) => answer.await.unwrap_or(Err(StoreError::Closed)),
                Err(e) => Err(e),
            });
        }
        Ok(out)
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
        let unwritten = &self.inner.shared.unwritten;
        unwritten.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.tx.send(WriterMsg::Append(request)).await.is_err() {
            unwritten.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn prepare(events: Vec<NewEvent>) -> Result<Vec<PreparedEvent>, StoreError> {
        Ok(crate::store::check_append(events)?
            .into_iter()
            .map(|c| PreparedEvent {
                event_id: c.event.event_id,
                event_type: c.event.event.event_type(),
                schema_version: c.event.event.schema_version(),
                payload: c.payload,
                actor: c.event.actor,
                correlation_id: c.event.correlation_id,
            })
            .collect())
    }
}

impl FileStore {
    /// Makes every record on disk durable and the marker say so: whatever a killed process
    /// left in the page cache past the old marker is synced before the new marker names it.
    fn mark_on_open(
        dir: &Path,
        segments: &[segment::SegmentFile],
        head_loc: Option<RecordLoc>,
        old: Option<&durable::DurableMark>,
        head: ChainHead,
    ) -> Result<durable::MarkWriter, StoreError> {
        let from = old.map_or(0, |m| {
            segments
                .iter()
                .rposition(|s| s.first_position <= m.segment_first)
                .unwrap_or(0)
        });
        for seg in &segments[from..] {
            File::open(&seg.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(format!("syncing {}", seg.path.display()), e))?;
        }
        let mark = match head_loc {
            Some(loc) => durable::DurableMark {
                head,
                segment_first: segments[loc.segment as usize].first_position,
                segment_len: loc.offset + u64::from(loc.len),
            },
            None => durable::DurableMark {
                head,
                segment_first: segments[0].first_position,
                segment_len: segment::SEGMENT_HEADER_BYTES,
            },
        };
        if old != Some(&mark) {
            tracing::info!(
                position = head.position,
                previous = old.map(|m| m.head.position),
                "durable-head marker set"
            );
        }
        durable::MarkWriter::create(dir, &mark)
    }
}

/// Opens the on-disk index of the log in `dir` and checks it against the log: its position
/// must be acknowledged (at or before the durable-head marker) and the record there must be
/// in the log, ending an append, with the hash the index names. Returns the index (its entries
/// up to that position on disk, every stream's version in memory) and where the scan of the
/// rest starts. An index that fails any check is removed and an empty one returned (the scan
/// then rebuilds it from every segment); one this process still holds open elsewhere is left
/// alone and the index is kept in memory only.
fn load_index(
    dir: &Path,
    segments: &[segment::SegmentFile],
    mark: Option<&durable::DurableMark>,
    maintenance: Maintenance,
) -> (Index, Option<ScanStart>) {
    let fresh = |why: String| {
        tracing::warn!(
            dir = %dir.display(),
            problem = %why,
            "the log index cannot be used; rebuilding it from the segments"
        );
        if let Err(e) = diskindex::remove(dir) {
            tracing::warn!(error = %e, "could not remove the log index; keeping it in memory only");
            return Index::default();
        }
        Index::lazy(dir.to_path_buf(), maintenance)
    };
    if !diskindex::index_path(dir).exists() {
        return (Index::lazy(dir.to_path_buf(), maintenance), None);
    }
    let disk = match DiskIndex::open(dir, maintenance) {
        Ok(disk) => disk,
        Err(OpenFailure::Busy) => {
            tracing::warn!(
                dir = %dir.display(),
                "the log index is open in another handle of this process; keeping it in memory only"
            );
            return (Index::default(), None);
        }
        Err(OpenFailure::Damaged(why)) => return (fresh(why), None),
    };
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_index(&disk, segments, mark)
    }))
    .unwrap_or_else(|_| Err("the index store panicked while reading".into()));
    match checked {
        Ok(None) => (Index::on_disk(disk, 0, Default::default()), None),
        Ok(Some((start, versions))) => (
            Index::on_disk(disk, start.head.position, versions),
            Some(start),
        ),
        Err(why) => {
            drop(disk);
            (fresh(why), None)
        }
    }
}

/// See [`load_index`]: `None` for an empty index.
#[allow(clippy::type_complexity)]
fn check_index(
    disk: &DiskIndex,
    segments: &[segment::SegmentFile],
    mark: Option<&durable::DurableMark>,
) -> Result<
    Option<(
        ScanStart,
        ahash::AHashMap<ledger_events::StreamId, StreamVersion>,
    )>,
    String,
> {
    let head = disk.head().map_err(|e| e.to_string())?;
    if head.position == 0 {
        return Ok(None);
    }
    let p = head.position;
    let Some(mark) = mark else {
        return Err(format!(
            "the index covers position {p}, but the log has no durable.head marker to check it"
        ));
    };
    if p > mark.head.position {
        return Err(format!(
            "the index covers position {p}, but only {} is acknowledged (durable.head)",
            mark.head.position
        ));
    }
    let loc = disk
        .loc(p)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the index has no location for its own position {p}"))?;
    let seg = segments.get(loc.segment as usize).ok_or_else(|| {
        format!(
            "position {p} is in segment #{}, which is missing",
            loc.segment
        )
    })?;
    let from = loc
        .offset
        .checked_sub(FRAME_HEADER_BYTES as u64)
        .ok_or_else(|| format!("position {p} has an impossible offset {}", loc.offset))?;
    let mut frame = vec![0u8; FRAME_HEADER_BYTES + loc.len as usize];
    File::open(&seg.path)
        .and_then(|f| f.read_exact_at(&mut frame, from))
        .map_err(|e| format!("reading position {p} in {}: {e}", seg.path.display()))?;
    let (bytes, ends_append) = check_frame(&frame).map_err(|e| format!("position {p}: {e}"))?;
    let view = RecordView::parse(bytes).map_err(|e| format!("position {p}: {e}"))?;
    if view.position() != p || view.hash() != head.hash || view.computed_hash() != head.hash {
        return Err(format!(
            "the record at position {p} is not the one the index names (hash {})",
            head.hash
        ));
    }
    if !ends_append {
        return Err(format!("position {p} does not end an append"));
    }
    let end = loc.offset + u64::from(loc.len);
    if mark.head.position == p
        && (mark.head.hash != head.hash
            || mark.segment_first != seg.first_position
            || mark.segment_len != end)
    {
        return Err(format!(
            "position {p} disagrees with durable.head (hash or place)"
        ));
    }
    let versions = disk.versions().map_err(|e| e.to_string())?;
    Ok(Some((
        ScanStart {
            segment: loc.segment as usize,
            offset: end,
            head,
            recorded_at_micros: view.recorded_at_micros(),
        },
        versions,
    )))
}

fn corrupt_here(problem: String) -> StoreError {
    // The scan fills in segment, offset and position.
    StoreError::Corrupt {
        segment: String::new(),
        offset: 0,
        position: 0,
        problem,
    }
}

impl Inner {
    /// Reads the records at `positions` (ascending), checking frame CRC, record hash and
    /// position of each (the read half of the write-side checks).
    fn read_positions(&self, positions: &[Position]) -> Result<Vec<Record>, StoreError> {
        // Positions up to `base` are on disk, later ones in memory (read under the lock; the
        // disk part after it: entries on disk are never removed while open).
        let (disk, on_disk, mut tail, files) = {
            let index = self.shared.index.read();
            let on_disk = positions.partition_point(|&p| p <= index.base);
            let mut tail = Vec::with_capacity(positions.len() - on_disk);
            for &p in &positions[on_disk..] {
                match index.loc(p)? {
                    Some(loc) => tail.push(loc),
                    None => break,
                }
            }
            let files: Vec<(Arc<File>, String)> = index
                .segments
                .iter()
                .map(|s| (s.file.clone(), s.path.clone()))
                .collect();
            (index.disk.clone(), on_disk, tail, files)
        };
        let locs = match (on_disk, disk) {
            (0, _) => tail,
            (n, Some(disk)) => {
                let mut locs = disk.locs(&positions[..n])?;
                locs.append(&mut tail);
                locs
            }
            (_, None) => Vec::new(),
        };
        let mut out = Vec::with_capacity(locs.len());
        let mut buf = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            // A run of records adjacent on disk is read with one positional read.
            let start = locs[i];
            let mut j = i + 1;
            while j < locs.len()
                && locs[j].segment == start.segment
                && locs[j].offset
                    == locs[j - 1].offset + u64::from(locs[j - 1].len) + FRAME_HEADER_BYTES as u64
                && positions[j] == positions[j - 1] + 1
            {
                j += 1;
            }
            let end = locs[j - 1].offset + u64::from(locs[j - 1].len);
            let from = start.offset - FRAME_HEADER_BYTES as u64;
            let (file, path) =
                files
                    .get(start.segment as usize)
                    .ok_or_else(|| StoreError::Corrupt {
                        segment: format!("#{}", start.segment),
                        offset: start.offset,
                        position: positions[i],
                        problem: "index names a segment that is not open".into(),
                    })?;
            buf.resize((end - from) as usize, 0);
            file.read_exact_at(&mut buf, from).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    StoreError::Corrupt {
                        segment: path.clone(),
                        offset: from,
                        position: positions[i],
                        problem: "the segment ends before this record: it was cut short".into(),
                    }
                } else {
                    StoreError::io(format!("reading {path}"), e)
                }
            })?;
            for k in i..j {
                let loc = locs[k];
                let rel = (loc.offset - FRAME_HEADER_BYTES as u64 - from) as usize;
                let frame = &buf[rel..rel + FRAME_HEADER_BYTES + loc.len as usize];
                let bad = |problem: String| StoreError::Corrupt {
                    segment: path.clone(),
                    offset: loc.offset - FRAME_HEADER_BYTES as u64,
                    position: positions[k],
                    problem,
                };
                let (bytes, _) = check_frame(frame).map_err(bad)?;
                let view = RecordView::parse(bytes).map_err(|e| bad(e.to_string()))?;
                if view.position() != positions[k] {
                    return Err(bad(format!("record says position {}", view.position())));
                }
                out.push(view.to_record().map_err(|e| bad(e.to_string()))?);
            }
            i = j;
        }
        Ok(out)
    }

    fn read_all_blocking(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        let head = self.shared.index.read().head.position;
        let from = from.max(1);
        if from > head {
            return Ok(Vec::new());
        }
        let end = head.min(from + limit.min(READ_BATCH_MAX) as u64 - 1);
        let positions: Vec<Position> = (from..=end).collect();
        self.read_positions(&positions)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::background::offload(f)
        .await
        .map_err(|e| StoreError::io("reading the log", std::io::Error::other(e.to_string())))?
}

/// The subscription's view of the store: reads and the head watch, without the writer's
/// sender (so open subscriptions do not keep the writer alive).
struct Feed(Arc<Inner>);

#[async_trait]
impl HeadSource for Feed {
    async fn read_from(&self, from: Position, limit: usize) -> Result<Vec<Record>, StoreError> {
        let inner = self.0.clone();
        blocking(move || inner.read_all_blocking(from, limit)).await
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.0.head_rx.clone()
    }
}

#[async_trait]
impl EventStore for FileStore {
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
        let (disk, on_disk, tail) = {
            let index = self.inner.shared.index.read();
            let (on_disk, tail) =
                index.stream_plan(stream.as_str(), from_version, limit.min(READ_BATCH_MAX));
            (index.disk.clone(), on_disk, tail)
        };
        let inner = self.inner.clone();
        let stream = stream.clone();
        blocking(move || {
            let mut positions = match (on_disk, disk) {
                (Some((from, to)), Some(disk)) => {
                    disk.stream_positions(stream.as_str(), from, to, (to - from) as usize)?
                }
                _ => Vec::new(),
            };
            positions.extend(tail);
            inner.read_positions(&positions)
        })
        .await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.read_all_blocking(from_position, limit)).await
    }

    async fn read_positions(&self, positions: &[Position]) -> Result<Vec<Record>, StoreError> {
        let head = self.inner.shared.index.read().head.position;
        let mut wanted: Vec<Position> = positions
            .iter()
            .copied()
            .filter(|&p| (1..=head).contains(&p))
            .take(READ_BATCH_MAX)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let inner = self.inner.clone();
        blocking(move || inner.read_positions(&wanted)).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        Ok(self.inner.shared.index.read().head)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        Ok(self
            .inner
            .shared
            .index
            .read()
            .durable_stream_version(stream.as_str()))
    }

    fn subscribe_all(&self, from_position: Position) -> Subscription {
        Subscription::new(Arc::new(Feed(self.inner.clone())), from_position)
    }

    fn stats(&self) -> Option<crate::store::StoreStats> {
        let s = FileStore::stats(self);
        Some(crate::store::StoreStats {
            write_batches: s.batches_written,
            records_written: s.records_written,
            syncs: s.syncs,
            sync_seconds: s.sync_seconds,
        })
    }
}
