#![allow(dead_code)] // shared by several test files, each using part of it
//! The file store's frames, read and damaged on purpose (see src/store/file/segment.rs for
//! the format: a 32-byte segment header, then `word u32 | crc32c u32 | record` frames).

use std::fs;
use std::path::{Path, PathBuf};

use license_ledger::store::file::segment::list_segments;

const SEGMENT_HEADER: usize = 32;

/// The last segment's path and its frames as (start, length in bytes).
pub fn frames(dir: &Path) -> (PathBuf, Vec<(usize, usize)>) {
    let seg = list_segments(dir).unwrap().pop().expect("a segment").path;
    let data = fs::read(&seg).unwrap();
    let mut at = SEGMENT_HEADER;
    let mut out = Vec::new();
    while at + 8 <= data.len() {
        let word = u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
        let len = 8 + (word & 0x7fff_ffff) as usize;
        out.push((at, len));
        at += len;
    }
    (seg, out)
}

/// Appends a copy of the last frame with one byte of its record changed: a complete frame
/// whose CRC does not match, after the last append, as a failed fdatasync can leave. Returns
/// the bytes appended.
pub fn append_damaged_frame(dir: &Path) -> Vec<u8> {
    let (seg, frames) = frames(dir);
    let (start, len) = *frames.last().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let mut frame = data[start..start + len].to_vec();
    frame[len / 2] ^= 0x5A;
    data.extend_from_slice(&frame);
    fs::write(&seg, &data).unwrap();
    frame
}

/// Rewinds the log's durable-head marker to `position`: the state of a log whose later
/// appends were written but not yet acknowledged when the process stopped (what a crash
/// mid-write leaves). The records up to `position` must be intact.
pub fn acknowledged_only_up_to(dir: &Path, position: u64) {
    use license_ledger::store::file::durable::{DurableMark, MarkWriter};
    use license_ledger::store::file::segment::scan_until;
    let segments = list_segments(dir).unwrap();
    let report = scan_until(&segments, None, |_, _| Ok(()), |_| {}, Some(position)).unwrap();
    let (index, segment_len) = report.stopped_at.expect("position ends an append");
    let mark = DurableMark {
        head: report.head,
        segment_first: segments[index].first_position,
        segment_len,
    };
    MarkWriter::create(dir, &mark).unwrap();
}

/// Removes the durable-head marker: a log written before markers existed.
pub fn remove_marker(dir: &Path) {
    fs::remove_file(dir.join(license_ledger::store::file::durable::MARKER_FILE)).unwrap();
}
