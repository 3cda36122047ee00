//! The index of the file log: a bounded in-memory tail over the derived on-disk index
//! ([`super::diskindex`]).
//!
//! Maps positions to places on disk, streams to their positions, and event ids to positions
//! (for idempotent retries). Positions up to `base` are on disk; later ones (the tail) are in
//! memory. Only the writer adds to the tail, and only records it has written; readers see
//! acknowledged records only (up to `head`). Once durable, the tail's oldest entries are
//! written to disk in batches and dropped from memory ([`Index::plan_flush`],
//! [`Index::flushed`]), so memory is bounded by the tail plus one version number per stream.
//! Without a disk index (another handle in this process still holds it) the tail simply keeps
//! everything, as a purely in-memory index.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use ahash::AHashMap;
use ledger_events::{ChainHead, Position, StreamId, StreamVersion};
use uuid::Uuid;

use super::diskindex::{DiskIndex, Flush};
use super::segment::RecordLoc;
use crate::store::{Maintenance, StoreError};

/// One opened segment, shared by readers.
#[derive(Debug)]
pub struct OpenSegment {
    /// Display path, for errors.
    pub path: String,
    /// Read handle (positional reads only).
    pub file: Arc<File>,
}

/// A stream's entries in the tail: versions `first_version..` at `positions`.
#[derive(Debug)]
pub(crate) struct TailStream {
    pub first_version: StreamVersion,
    pub positions: Vec<Position>,
}

/// The index. `locs[p - base - 1]` is position `p`. Entries past `head` are written but not
/// yet durable: the writer sees them (to check versions and retries), readers stop at `head`.
#[derive(Default)]
pub struct Index {
    /// Positions up to this one are in `disk` (and no longer in memory).
    pub(crate) base: Position,
    pub(crate) locs: Vec<RecordLoc>,
    pub(crate) streams: AHashMap<StreamId, TailStream>,
    pub(crate) event_ids: AHashMap<Uuid, (Position, StreamVersion)>,
    /// Every stream's version, counting records not yet durable (one entry per stream).
    pub(crate) versions: AHashMap<StreamId, StreamVersion>,
    pub(crate) segments: Vec<OpenSegment>,
    pub(crate) head: ChainHead,
    pub(crate) disk: Option<DiskIndex>,
    /// Without `disk`: the log directory where one is created once entries first move out
    /// of memory (`None`: never, as when another handle of this process holds it).
    pub(crate) disk_dir: Option<PathBuf>,
    /// How that disk part is kept compacted.
    pub(crate) maintenance: Maintenance,
}

impl Index {
    /// An index whose first `base.position` records are in `disk`, with every stream's version.
    pub(crate) fn on_disk(
        disk: DiskIndex,
        base: Position,
        versions: AHashMap<StreamId, StreamVersion>,
    ) -> Self {
        Self {
            base,
            versions,
            disk: Some(disk),
            ..Self::default()
        }
    }

    /// An empty index that creates its disk part in the log directory `dir` when first
    /// needed (small logs never need one).
    pub(crate) fn lazy(dir: PathBuf, maintenance: Maintenance) -> Self {
        Self {
            disk_dir: Some(dir),
            maintenance,
            ..Self::default()
        }
    }

    /// Whether a disk part is there, creating it if it may be; a failure to create it is
    /// logged and not retried (the index then stays in memory).
    pub(crate) fn ensure_disk(&mut self) -> bool {
        if self.disk.is_some() {
            return true;
        }
        let Some(dir) = self.disk_dir.take() else {
            return false;
        };
        match DiskIndex::open(&dir, self.maintenance) {
            Ok(disk) => {
                self.disk = Some(disk);
                true
            }
            Err(e) => {
                tracing::warn!(problem = ?e, dir = %dir.display(), "could not create the log index; keeping it in memory only");
                false
            }
        }
    }

    /// Records held in memory (written, durable or not, and not yet on disk).
    pub fn tail_len(&self) -> usize {
        self.locs.len()
    }

    /// The last position written (durable or not).
    pub fn written(&self) -> Position {
        self.base + self.locs.len() as Position
    }

    /// Current version of `stream` including records not yet durable (0 when absent).
    pub fn stream_version(&self, stream: &str) -> StreamVersion {
        self.versions.get(stream).copied().unwrap_or(0)
    }

    /// Version of `stream` counting durable records only (what readers may see).
    pub fn durable_stream_version(&self, stream: &str) -> StreamVersion {
        let durable = self.head.position;
        match self.streams.get(stream) {
            // Everything on disk is durable; so is any stream without tail entries.
            Some(t) => t.first_version - 1 + t.positions.partition_point(|&q| q <= durable) as u64,
            None => self.stream_version(stream),
        }
    }

    /// Where the record at `position` is (`None` past what was written).
    pub fn loc(&self, position: Position) -> Result<Option<RecordLoc>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        if position > self.base {
            return Ok(self.locs.get((position - self.base - 1) as usize).copied());
        }
        match &self.disk {
            Some(disk) => disk.loc(position),
            None => Ok(None),
        }
    }

    /// Position and stream version of the record with `event_id`, durable or not.
    pub fn event(&self, event_id: &Uuid) -> Result<Option<(Position, StreamVersion)>, StoreError> {
        if let Some(&found) = self.event_ids.get(event_id) {
            return Ok(Some(found));
        }
        match &self.disk {
            Some(disk) => disk.event(event_id),
            None => Ok(None),
        }
    }

    /// Position of `stream`'s `version`, durable or not.
    pub fn stream_position(
        &self,
        stream: &str,
        version: StreamVersion,
    ) -> Result<Option<Position>, StoreError> {
        if version == 0 || version > self.stream_version(stream) {
            return Ok(None);
        }
        if let Some(t) = self.streams.get(stream) {
            if version >= t.first_version {
                return Ok(t
                    .positions
                    .get((version - t.first_version) as usize)
                    .copied());
            }
        }
        match &self.disk {
            Some(disk) => Ok(disk
                .stream_positions(stream, version, version + 1, 1)?
                .first()
                .copied()),
            None => Ok(None),
        }
    }

    /// What a reader of `stream` from `from` (at most `limit` records) needs: the versions to
    /// read from disk (`from..to`), and the durable positions already in memory after them.
    pub fn stream_plan(
        &self,
        stream: &str,
        from: StreamVersion,
        limit: usize,
    ) -> (Option<(StreamVersion, StreamVersion)>, Vec<Position>) {
        let from = from.max(1);
        let durable_version = self.durable_stream_version(stream);
        if from > durable_version || limit == 0 {
            return (None, Vec::new());
        }
        let end = durable_version.min(from + limit as u64 - 1); // inclusive
        let tail_first = self
            .streams
            .get(stream)
            .map_or(end + 1, |t| t.first_version);
        let disk = (from < tail_first).then(|| (from, tail_first.min(end + 1)));
        let mut tail = Vec::new();
        if let Some(t) = self.streams.get(stream) {
            let start = from.max(t.first_version);
            if start <= end {
                tail.extend_from_slice(
                    &t.positions
                        [(start - t.first_version) as usize..=(end - t.first_version) as usize],
                );
            }
        }
        (disk, tail)
    }

    /// Adds one written record. Positions must arrive in order, and stream versions must be
    /// dense; a violation is reported (it means the log is damaged). With `check_disk`, an
    /// event id already on disk is a violation too (the writer checks ids itself before).
    pub fn insert(
        &mut self,
        stream: &str,
        stream_version: StreamVersion,
        event_id: Uuid,
        position: Position,
        loc: RecordLoc,
        check_disk: bool,
    ) -> Result<(), String> {
        if position != self.written() + 1 {
            return Err(format!("position {position} follows {}", self.written()));
        }
        let current = self.stream_version(stream);
        if stream_version != current + 1 {
            return Err(format!(
                "stream {stream} version {stream_version} follows version {current}"
            ));
        }
        if check_disk {
            if let Some(disk) = &self.disk {
                // The same position is this very record, written to disk just before a
                // crash stopped `meta/head` from covering it.
                match disk.event(&event_id).map_err(|e| e.to_string())? {
                    Some((other, _)) if other != position => {
                        return Err(format!(
                            "event id {event_id} already stored at position {other}"
                        ));
                    }
                    _ => {}
                }
            }
        }
        if let Some((other, _)) = self.event_ids.insert(event_id, (position, stream_version)) {
            return Err(format!(
                "event id {event_id} already stored at position {other}"
            ));
        }
        self.locs.push(loc);
        match self.versions.get_mut(stream) {
            Some(v) => *v = stream_version,
            None => {
                let id = StreamId::parse(stream).map_err(|e| e.to_string())?;
                self.versions.insert(id, stream_version);
            }
        }
        match self.streams.get_mut(stream) {
            Some(t) => t.positions.push(position),
            None => {
                let id = StreamId::parse(stream).map_err(|e| e.to_string())?;
                self.streams.insert(
                    id,
                    TailStream {
                        first_version: stream_version,
                        positions: vec![position],
                    },
                );
            }
        }
        Ok(())
    }

    /// The tail's entries up to `upto` (a written position ending an append, whose hash is
    /// given), ready to be written to disk; `None` without a disk index or when nothing is
    /// there to move.
    pub(crate) fn plan_flush(&self, upto: ChainHead) -> Option<(DiskIndex, Flush)> {
        let disk = self.disk.clone()?;
        if upto.position <= self.base || upto.position > self.written() {
            return None;
        }
        let n = (upto.position - self.base) as usize;
        let mut streams = Vec::new();
        for (id, t) in &self.streams {
            let k = t.positions.partition_point(|&p| p <= upto.position);
            if k > 0 {
                streams.push((id.clone(), t.first_version, t.positions[..k].to_vec()));
            }
        }
        let ids = self
            .event_ids
            .iter()
            .filter(|(_, &(p, _))| p <= upto.position)
            .map(|(id, &(p, v))| (*id, p, v))
            .collect();
        Some((
            disk,
            Flush {
                upto,
                first: self.base + 1,
                locs: self.locs[..n].to_vec(),
                streams,
                ids,
            },
        ))
    }

    /// Drops the tail's entries up to `upto` once they are on disk.
    pub(crate) fn flushed(&mut self, upto: Position) {
        if upto <= self.base || upto > self.written() {
            return;
        }
        self.locs.drain(..(upto - self.base) as usize);
        self.base = upto;
        self.streams.retain(|_, t| {
            let k = t.positions.partition_point(|&p| p <= upto);
            t.positions.drain(..k);
            t.first_version += k as u64;
            !t.positions.is_empty()
        });
        self.event_ids.retain(|_, &mut (p, _)| p > upto);
        // Keep memory proportional to what the tail holds now.
        if self.locs.capacity() > 4 * self.locs.len().max(1024) {
            self.locs.shrink_to_fit();
        }
        if self.event_ids.capacity() > 4 * self.event_ids.len().max(1024) {
            self.event_ids.shrink_to_fit();
        }
        if self.streams.capacity() > 4 * self.streams.len().max(1024) {
            self.streams.shrink_to_fit();
        }
    }

    /// Moves the tail up to `upto` to disk now (used while opening). A failure leaves the
    /// tail as it was.
    pub(crate) fn flush_now(&mut self, upto: ChainHead) -> Result<usize, StoreError> {
        self.ensure_disk();
        let Some((disk, flush)) = self.plan_flush(upto) else {
            return Ok(0);
        };
        disk.write(&flush)?;
        self.flushed(upto.position);
        Ok(flush.len())
    }
}
