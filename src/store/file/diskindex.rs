//! The derived on-disk part of the file log's index, in an embedded LSM store (`fjall`) under
//! `<log dir>/index/`.
//!
//! It holds what the in-memory index (`super::index`) moved out of memory once it was
//! durable, so that an open reads it instead of every segment and memory does not grow with
//! every record. Keyspaces (all integers big-endian):
//!
//! ```text
//! loc     position u64                         -> segment u32 | offset u64 | len u32
//! stream  stream id | 0x00 | version u64        -> position u64
//! eid     event id [16]                         -> position u64 | stream version u64
//! ver     stream id                             -> current version u64
//! meta    "format"                              -> u32 (FORMAT)
//!         "head"                                -> position u64 | hash [32]
//! ```
//!
//! `meta/head` names the last position whose entries are stored; it moves after the entries
//! and versions are written, so after any crash the index holds every position up to it (and
//! perhaps entries and versions of durable records after it, which the open's scan from
//! `head` indexes again and finds identical; `repair`, which may cut durable records, removes
//! the index). It never runs ahead of durable records: only records already
//! acknowledged (synced, marked) are written here. Nothing here is trusted without the log:
//! an open checks that the record at `head` is in the log with that hash, and drops and rebuilds
//! the index otherwise ([`remove`]). Stream ids contain no 0x00 byte, so `stream | 0x00` is a
//! prefix of exactly one stream's keys.

use std::path::{Path, PathBuf};

use ahash::AHashMap;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use ledger_events::{ChainHead, Hash, Position, StreamId, StreamVersion};
use uuid::Uuid;

use super::segment::RecordLoc;
use crate::store::{Maintenance, StoreError};

/// The index's directory inside the log directory.
pub const INDEX_DIR: &str = "index";
/// Layout version stored in `meta/format`; any other value means "rebuild". (2: `ver` is
/// ingested, never journaled; a version-1 index carries a journal of versions that every
/// open would replay, so it is rebuilt once.)
const FORMAT: u32 = 2;
/// Block cache of the index.
const CACHE_BYTES: u64 = 16 << 20;
/// Journal kept before memtables are written out (bounds recovery work and disk use; the
/// smallest the store accepts).
const JOURNAL_BYTES: u64 = 64 << 20;
/// One keyspace's memtable.
const MEMTABLE_BYTES: u64 = 4 << 20;

/// Entries moved from memory to disk in one write, up to and including `upto`.
#[derive(Debug, Default)]
pub(crate) struct Flush {
    /// The last position covered, and its hash (becomes `meta/head`).
    pub upto: ChainHead,
    /// Locations of positions `first..=upto.position`, in order.
    pub first: Position,
    pub locs: Vec<RecordLoc>,
    /// Per stream: the version of its first entry here, and the positions in order.
    pub streams: Vec<(StreamId, StreamVersion, Vec<Position>)>,
    /// Event id, position, stream version.
    pub ids: Vec<(Uuid, Position, StreamVersion)>,
}

impl Flush {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.locs.len()
    }
}

/// A handle on the on-disk index (cheap to clone).
#[derive(Clone)]
pub(crate) struct DiskIndex {
    db: Database,
    loc: Keyspace,
    stream: Keyspace,
    eid: Keyspace,
    ver: Keyspace,
    meta: Keyspace,
    maintenance: Maintenance,
}

/// Why an index could not be used.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// Another handle in this process still has it open (a store closed but not dropped).
    Busy,
    /// Unreadable or inconsistent: remove it and rebuild.
    Damaged(String),
}

fn index_error(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::io(
        format!("{context} (log index)"),
        std::io::Error::other(e.to_string()),
    )
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes)
}

fn stream_key(stream: &str, version: StreamVersion) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 9);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn encode_loc(loc: &RecordLoc) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&loc.segment.to_be_bytes());
    v[4..12].copy_from_slice(&loc.offset.to_be_bytes());
    v[12..].copy_from_slice(&loc.len.to_be_bytes());
    v
}

fn decode_loc(v: &[u8]) -> Option<RecordLoc> {
    (v.len() == 16).then_some(())?;
    Some(RecordLoc {
        segment: u32_at(v, 0)?,
        offset: u64_at(v, 4)?,
        len: u32_at(v, 12)?,
    })
}

/// The index directory of the log in `dir`.
pub(crate) fn index_path(dir: &Path) -> PathBuf {
    dir.join(INDEX_DIR)
}

/// Removes the index of the log in `dir` (derived data: the next open rebuilds it).
pub fn remove(dir: &Path) -> Result<(), StoreError> {
    let path = index_path(dir);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
    }
}

impl DiskIndex {
    /// Opens (or creates) the index of the log in `dir`. A panic inside the LSM store while
    /// opening damaged files counts as damage.
    pub fn open(dir: &Path, maintenance: Maintenance) -> Result<Self, OpenFailure> {
        let path = index_path(dir);
        std::panic::catch_unwind(move || Self::open_inner(&path, maintenance)).unwrap_or_else(
            |_| {
                Err(OpenFailure::Damaged(
                    "the index store panicked while opening".into(),
                ))
            },
        )
    }

    fn open_inner(path: &Path, maintenance: Maintenance) -> Result<Self, OpenFailure> {
        // No worker at all for a deferred maintenance (`worker_threads` refuses 0; fjall
        // supports it: nothing is flushed or compacted in the background).
        let db = Database::builder(path)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads_unchecked(maintenance.workers(1))
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => OpenFailure::Busy,
                e => OpenFailure::Damaged(e.to_string()),
            })?;
        maintenance.lower_workers();
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| OpenFailure::Damaged(format!("keyspace {name}: {e}")))
        };
        let index = Self {
            loc: ks("loc")?,
            stream: ks("stream")?,
            eid: ks("eid")?,
            ver: ks("ver")?,
            meta: ks("meta")?,
            db,
            maintenance,
        };
        match index.meta.get(b"format") {
            Ok(Some(v)) if u32_at(&v, 0) == Some(FORMAT) && v.len() == 4 => Ok(index),
            Ok(Some(_)) => Err(OpenFailure::Damaged("unknown index format".into())),
            Ok(None) => {
                // New (or never written): an empty index says it covers position 0.
                let empty = index.loc.is_empty().and_then(|a| {
                    Ok(a && index.stream.is_empty()?
                        && index.eid.is_empty()?
                        && index.ver.is_empty()?)
                });
                match empty {
                    Ok(true) => index
                        .meta
                        .insert(b"format", FORMAT.to_be_bytes())
                        .map(|()| index)
                        .map_err(|e| OpenFailure::Damaged(e.to_string())),
                    Ok(false) => Err(OpenFailure::Damaged(
                        "entries without a format record".into(),
                    )),
                    Err(e) => Err(OpenFailure::Damaged(e.to_string())),
                }
            }
            Err(e) => Err(OpenFailure::Damaged(e.to_string())),
        }
    }

    /// The last position whose entries are stored, with its hash (position 0: none).
    pub fn head(&self) -> Result<ChainHead, StoreError> {
        let Some(v) = self
            .meta
            .get(b"head")
            .map_err(|e| index_error("reading meta", e))?
        else {
            return Ok(ChainHead::default());
        };
        let bad = || index_error("reading meta", "malformed head entry");
        if v.len() != 40 {
            return Err(bad());
        }
        Ok(ChainHead {
            position: u64_at(&v, 0).ok_or_else(bad)?,
            hash: Hash(v[8..40].try_into().map_err(|_| bad())?),
        })
    }

    /// Where the record at `position` is.
    pub fn loc(&self, position: Position) -> Result<Option<RecordLoc>, StoreError> {
        match self
            .loc
            .get(position.to_be_bytes())
            .map_err(|e| index_error("reading a location", e))?
        {
            Some(v) => decode_loc(&v)
                .map(Some)
                .ok_or_else(|| index_error("reading a location", "malformed entry")),
            None => Ok(None),
        }
    }

    /// Locations of `positions` (ascending, all stored); a run of consecutive positions is
    /// read with one range scan.
    pub fn locs(&self, positions: &[Position]) -> Result<Vec<RecordLoc>, StoreError> {
        let missing = |p: Position| {
            index_error(
                "reading a location",
                format!("no entry for position {p}, which the index covers"),
            )
        };
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            return Ok(Vec::new());
        };
        if last - first + 1 != positions.len() as u64 {
            return positions
                .iter()
                .map(|&p| self.loc(p)?.ok_or_else(|| missing(p)))
                .collect();
        }
        let mut out = Vec::with_capacity(positions.len());
        for kv in self.loc.range(first.to_be_bytes()..=last.to_be_bytes()) {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| index_error("reading locations", e))?;
            let expected = first + out.len() as u64;
            if u64_at(&k, 0) != Some(expected) || k.len() != 8 {
                return Err(missing(expected));
            }
            out.push(decode_loc(&v).ok_or_else(|| missing(expected))?);
        }
        if out.len() != positions.len() {
            return Err(missing(first + out.len() as u64));
        }
        Ok(out)
    }

    /// Position and stream version of the record with `event_id`.
    pub fn event(&self, event_id: &Uuid) -> Result<Option<(Position, StreamVersion)>, StoreError> {
        let Some(v) = self
            .eid
            .get(event_id.as_bytes())
            .map_err(|e| index_error("reading an event id", e))?
        else {
            return Ok(None);
        };
        match (u64_at(&v, 0), u64_at(&v, 8)) {
            (Some(p), Some(version)) if v.len() == 16 => Ok(Some((p, version))),
            _ => Err(index_error("reading an event id", "malformed entry")),
        }
    }

    /// Positions of `stream`'s versions `from..to` (at most `limit`).
    pub fn stream_positions(
        &self,
        stream: &str,
        from: StreamVersion,
        to: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Position>, StoreError> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self
            .stream
            .range(stream_key(stream, from)..stream_key(stream, to))
            .take(limit)
        {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| index_error("reading a stream", e))?;
            let expected = from + out.len() as u64;
            let version = k.len().checked_sub(8).and_then(|at| u64_at(&k, at));
            match (version, u64_at(&v, 0)) {
                (Some(found), Some(p)) if found == expected && v.len() == 8 => out.push(p),
                _ => {
                    return Err(index_error(
                        "reading a stream",
                        format!("stream {stream} has no entry for version {expected}"),
                    ))
                }
            }
        }
        if out.len() as u64 != (to - from).min(limit as u64) {
            return Err(index_error(
                "reading a stream",
                format!(
                    "stream {stream} has no entry for version {}",
                    from + out.len() as u64
                ),
            ));
        }
        Ok(out)
    }

    /// Every stream's current version (as of `head`).
    pub fn versions(&self) -> Result<AHashMap<StreamId, StreamVersion>, StoreError> {
        let mut out = AHashMap::new();
        for kv in self.ver.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| index_error("reading stream versions", e))?;
            let bad = || index_error("reading stream versions", "malformed entry");
            let stream = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| StreamId::parse(s).ok())
                .ok_or_else(bad)?;
            let version = u64_at(&v, 0).filter(|_| v.len() == 8).ok_or_else(bad)?;
            out.insert(stream, version);
        }
        Ok(out)
    }

    /// Writes the in-memory part of the index out as tables (at close), so that the next
    /// open has no journal to replay.
    pub fn settle(&self) -> Result<(), StoreError> {
        // Without workers a rotation would wait forever for a flush; only `meta` has a
        // memtable (entries are ingested), and its journal is a few bytes to replay.
        if self.maintenance == Maintenance::Deferred {
            return Ok(());
        }
        for ks in [&self.loc, &self.stream, &self.eid, &self.ver, &self.meta] {
            ks.rotate_memtable_and_wait()
                .map_err(|e| index_error("writing the index out", e))?;
        }
        Ok(())
    }

    /// Stores `flush`. The entries of `loc`, `stream` and `eid` are written as sorted runs
    /// straight into tables (fjall's ingestion: no journal, no memtable, about a third of the
    /// CPU of a write batch), `ver` too; then `meta/head`, the only entry that goes through
    /// the journal. A crash in between leaves entries and versions past `meta/head`: they
    /// describe durable records that the next open scans again (and finds identical), and no
    /// read looks past `head` or `ver`. Not
    /// synced: the index is derived, and a crash leaves an older, still consistent state.
    pub fn write(&self, flush: &Flush) -> Result<(), StoreError> {
        let err = |e: fjall::Error| index_error("writing the index", e);
        // Ingestion panics on keys out of order: every run below is sorted and its keys are
        // unique (positions; stream and version; event ids).
        crate::store::bound_level0(&self.loc, self.maintenance).map_err(err)?;
        let mut run = self.loc.start_ingestion().map_err(err)?;
        for (i, loc) in flush.locs.iter().enumerate() {
            let p = flush.first + i as u64;
            run.write(p.to_be_bytes(), encode_loc(loc)).map_err(err)?;
        }
        run.finish().map_err(err)?;

        let mut streams: Vec<(Vec<u8>, Position)> = Vec::with_capacity(flush.len());
        let mut versions: std::collections::BTreeMap<&str, u64> = Default::default();
        for (stream, first_version, positions) in &flush.streams {
            for (i, p) in positions.iter().enumerate() {
                streams.push((stream_key(stream.as_str(), first_version + i as u64), *p));
            }
            let last = first_version + positions.len() as u64 - 1;
            let v = versions.entry(stream.as_str()).or_insert(last);
            *v = (*v).max(last);
        }
        streams.sort_unstable();
        crate::store::bound_level0(&self.stream, self.maintenance).map_err(err)?;
        let mut run = self.stream.start_ingestion().map_err(err)?;
        for (key, p) in streams {
            run.write(key, p.to_be_bytes()).map_err(err)?;
        }
        run.finish().map_err(err)?;

        let mut ids: Vec<([u8; 16], [u8; 16])> = flush
            .ids
            .iter()
            .map(|(id, p, version)| {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&p.to_be_bytes());
                v[8..].copy_from_slice(&version.to_be_bytes());
                (*id.as_bytes(), v)
            })
            .collect();
        ids.sort_unstable();
        crate::store::bound_level0(&self.eid, self.maintenance).map_err(err)?;
        let mut run = self.eid.start_ingestion().map_err(err)?;
        for (key, v) in ids {
            run.write(key, v).map_err(err)?;
        }
        run.finish().map_err(err)?;

        // Each stream's version as a sorted run too (it shadows the older ones); through the
        // journal, one entry per stream per flush made every open replay megabytes.
        crate::store::bound_level0(&self.ver, self.maintenance).map_err(err)?;
        let mut run = self.ver.start_ingestion().map_err(err)?;
        for (stream, last) in versions {
            run.write(stream.as_bytes(), last.to_be_bytes())
                .map_err(err)?;
        }
        run.finish().map_err(err)?;

        let mut batch = self.db.batch();
        let mut head = [0u8; 40];
        head[..8].copy_from_slice(&flush.upto.position.to_be_bytes());
        head[8..].copy_from_slice(&flush.upto.hash.0);
        batch.insert(&self.meta, b"head", head);
        batch.commit().map_err(err)
    }
}
