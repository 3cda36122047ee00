//! The in-memory index of the file log, rebuilt from the segments on open.
//!
//! Maps positions to places on disk, streams to their positions, and event ids to positions
//! (for idempotent retries). Only the writer mutates it, and only with records that are
//! already durable; readers see acknowledged records only. Memory: about 16 bytes per record
//! for locations, 8 per record in its stream's list, and about 40 per event id.

use std::fs::File;
use std::sync::Arc;

use ahash::AHashMap;
use ledger_events::{ChainHead, Position, StreamId, StreamVersion};
use uuid::Uuid;

use super::segment::RecordLoc;

/// One opened segment, shared by readers.
#[derive(Debug)]
pub struct OpenSegment {
    /// Display path, for errors.
    pub path: String,
    /// Read handle (positional reads only).
    pub file: Arc<File>,
}

/// The index. `locs[p - 1]` is position `p`. Entries past `head` are written but not yet
/// durable: the writer sees them (to check versions and retries), readers stop at `head`.
#[derive(Debug, Default)]
pub struct Index {
    pub(crate) locs: Vec<RecordLoc>,
    pub(crate) streams: AHashMap<StreamId, Vec<Position>>,
    pub(crate) event_ids: AHashMap<Uuid, Position>,
    pub(crate) segments: Vec<OpenSegment>,
    pub(crate) head: ChainHead,
}

impl Index {
    /// Current version of `stream` including records not yet durable (0 when absent).
    pub fn stream_version(&self, stream: &str) -> StreamVersion {
        self.streams
            .get(stream)
            .map_or(0, |p| p.len() as StreamVersion)
    }

    /// Version of `stream` counting durable records only (what readers may see).
    pub fn durable_stream_version(&self, stream: &str) -> StreamVersion {
        let durable = self.head.position;
        self.streams
            .get(stream)
            .map_or(0, |p| p.partition_point(|&q| q <= durable) as StreamVersion)
    }

    /// Version of the record at `position` if it belongs to `stream`.
    pub fn version_in_stream(&self, stream: &str, position: Position) -> Option<StreamVersion> {
        let positions = self.streams.get(stream)?;
        positions
            .binary_search(&position)
            .ok()
            .map(|i| i as StreamVersion + 1)
    }

    /// Adds one durable record. Positions must arrive in order, and stream versions must be
    /// dense; a violation is reported (it means the log is damaged).
    pub fn insert(
        &mut self,
        stream: &str,
        stream_version: StreamVersion,
        event_id: Uuid,
        position: Position,
        loc: RecordLoc,
    ) -> Result<(), String> {
        if position != self.locs.len() as Position + 1 {
            return Err(format!("position {position} follows {}", self.locs.len()));
        }
        let current = self.stream_version(stream);
        if stream_version != current + 1 {
            return Err(format!(
                "stream {stream} version {stream_version} follows version {current}"
            ));
        }
        if let Some(other) = self.event_ids.insert(event_id, position) {
            return Err(format!(
                "event id {event_id} already stored at position {other}"
            ));
        }
        self.locs.push(loc);
        match self.streams.get_mut(stream) {
            Some(list) => list.push(position),
            None => {
                let id = StreamId::parse(stream).map_err(|e| e.to_string())?;
                self.streams.insert(id, vec![position]);
            }
        }
        Ok(())
    }
}
