//! Cutting the log back to a position the operator names.
//!
//! After a failed `fdatasync` the store refuses appends until it is reopened (see
//! `writer.rs`), and logs its durable head: the last position it acknowledged. What it wrote
//! after that may be on disk in any pattern — the kernel writes pages back in any order, and
//! a file system that lost writes may keep some — so a reopen can meet a complete frame with a
//! bad CRC after the last acknowledged append. Recovery refuses that (it cannot tell it from a
//! damaged acknowledged record), naming segment, offset and position. The operator, who has
//! the server's log line, then runs `license-ledger repair --truncate-after P`: every record
//! up to P is verified (CRC, hash, chain, up to the end of P's append), and every byte after
//! it is moved, unread, into `<log dir>/cut/`. Nothing is deleted.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ledger_events::{ChainHead, Position};

use super::durable::{read_mark, DurableMark, MarkWriter};
use super::segment::{list_segments, scan_until};
use super::{lock_dir, sync_dir};
use crate::store::{aside, StoreError};

/// Where the cut bytes go, inside the log directory.
pub use crate::store::aside::CUT_DIR;

/// What cutting after a position does (or did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The log keeps the records up to `head` (all verified); `bytes` after them, in the
    /// segment `segment` from offset `keep_len` and in the `later` segments, go to `aside`.
    Plan {
        /// The last record kept.
        head: ChainHead,
        /// Records kept.
        count: u64,
        /// The segment cut.
        segment: PathBuf,
        /// Its length after the cut.
        keep_len: u64,
        /// Bytes moved aside, in all.
        bytes: u64,
        /// Whole segments after it, moved aside.
        later: Vec<PathBuf>,
        /// Where the bytes go (or went).
        aside: PathBuf,
    },
    /// The position is not the end of an append the log has intact: the scan reached
    /// `reached` (the end of the last intact append at or past it, or the log's end).
    NotAnAppendEnd {
        /// The last position of the append where the scan stopped.
        reached: Position,
    },
}

/// Plans the cut after `position` in the log `dir` and, with `apply`, makes it. Holds the
/// directory's `LOCK` throughout: refuses (`Locked`) while a server has the log open.
pub fn cut_after(dir: &Path, position: Position, apply: bool) -> Result<Cut, StoreError> {
    let _lock = lock_dir(dir)?;
    let segments = list_segments(dir)?;
    let mark = read_mark(dir)?;
    let report = scan_until(
        &segments,
        mark.as_ref(),
        |_, _| Ok(()),
        |_| {},
        Some(position),
    )?;
    let Some((index, keep_len)) = report.stopped_at else {
        return Ok(Cut::NotAnAppendEnd {
            reached: report.head.position,
        });
    };
    let segment = segments[index].path.clone();
    let io = |what: &str, path: &Path, e: std::io::Error| {
        StoreError::io(format!("{what} {}", path.display()), e)
    };
    let file_len = fs::metadata(&segment)
        .map_err(|e| io("reading", &segment, e))?
        .len();
    let later: Vec<PathBuf> = segments[index + 1..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    let mut bytes = file_len.saturating_sub(keep_len);
    for path in &later {
        bytes += fs::metadata(path)
            .map_err(|e| io("reading", path, e))?
            .len();
    }
    let aside = dir.join(CUT_DIR);
    let plan = Cut::Plan {
        head: report.head,
        count: report.count,
        segment: segment.clone(),
        keep_len,
        bytes,
        later: later.clone(),
        aside: aside.clone(),
    };
    if !apply || (file_len == keep_len && later.is_empty()) {
        return Ok(plan);
    }

    // The derived index may name cut positions: drop it (the next open rebuilds it; an open
    // would also refuse to trust it, as it runs past the new marker).
    super::diskindex::remove(dir)?;
    // The marker first: should this stop half-way, the next open cuts the rest itself.
    write_mark(dir, &segments[..=index], index, report.head, keep_len)?;
    set_aside(
        dir,
        &segment,
        keep_len,
        &later,
        &format!("after-{position}"),
    )?;
    tracing::warn!(
        position,
        segment = %segment.display(),
        keep_len,
        bytes,
        aside = %aside.display(),
        "cut the log after a position"
    );
    Ok(plan)
}

/// Moves every byte of `segment` from `keep_len` on (all of it when `keep_len` is 0) and the
/// `later` segment files into `<dir>/cut/`, named `<segment file>.<label>` (with `.1`, `.2`...
/// when that name is taken), then cuts `segment` back. A copy of the tail is made durable
/// before anything is cut or moved: nothing is deleted. Returns the folder.
pub(crate) fn set_aside(
    dir: &Path,
    segment: &Path,
    keep_len: u64,
    later: &[PathBuf],
    label: &str,
) -> Result<PathBuf, StoreError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        StoreError::io(format!("{what} {}", path.display()), e)
    };
    let name = |path: &Path| {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        format!("{file}.{label}")
    };
    let set_aside_failed = |e: std::io::Error| StoreError::io("setting bytes aside", e);
    let file_len = fs::metadata(segment)
        .map_err(|e| io("reading", segment, e))?
        .len();
    let whole = keep_len == 0;
    if whole {
        aside::move_file(dir, segment, &name(segment)).map_err(set_aside_failed)?;
    } else if file_len > keep_len {
        let mut tail = Vec::new();
        let mut f = fs::File::open(segment).map_err(|e| io("opening", segment, e))?;
        f.seek(SeekFrom::Start(keep_len))
            .and_then(|_| f.read_to_end(&mut tail))
            .map_err(|e| io("reading", segment, e))?;
        aside::keep_copy(dir, &name(segment), &tail).map_err(set_aside_failed)?;
    }
    for path in later {
        aside::move_file(dir, path, &name(path)).map_err(set_aside_failed)?;
    }
    if !whole && file_len > keep_len {
        let f = OpenOptions::new()
            .write(true)
            .open(segment)
            .map_err(|e| io("opening", segment, e))?;
        f.set_len(keep_len)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("cutting", segment, e))?;
    }
    sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
    Ok(dir.join(CUT_DIR))
}

/// Replaces the durable-head marker after a cut: the operator chose `head` as the last
/// record, ending at `len` in `segments[index]`.
fn write_mark(
    dir: &Path,
    segments: &[super::segment::SegmentFile],
    index: usize,
    head: ChainHead,
    len: u64,
) -> Result<(), StoreError> {
    let mark = DurableMark {
        head,
        segment_first: segments[index].first_position,
        segment_len: len,
    };
    MarkWriter::create(dir, &mark).map(drop)
}
