//! Segment files: naming, headers, record frames, and the scan that recovery and `verify`
//! share.
//!
//! A data directory holds `NNNNNNNNNNNNNNNNNNNN.seg` files named by the position of their first
//! record (20 digits, so names sort in log order). Each starts with a 32-byte header:
//!
//! ```text
//! magic "LLEDGSEG" | format u32 = 1 | first_position u64 | 8 zero bytes | crc32c u32 (of the 28 bytes before)
//! ```
//!
//! then frames, each `word u32 | crc32c u32 | record`, big-endian. The word's low 31 bits are
//! the record's length; its top bit marks the last record of an append. The CRC covers the
//! word and the record. The record itself is the `ledger_events::codec` format with its own
//! hash chain. An append never spans two segments.
//!
//! Recovery rule: in the *last* segment only, whatever follows the last end-of-append mark
//! (a frame cut short by the end of the file, a tail of zero bytes, or complete records of an
//! append whose last record never made it) is a write the crash interrupted. It was never
//! acknowledged, since acknowledgement waits for `fdatasync` of whole appends, so it is
//! reported as [`TornTail`] and may be truncated: no append is ever half there. Anything else
//! that fails (a bad CRC on a complete frame, a broken chain, a bad header, damage in an
//! earlier segment) is [`StoreError::Corrupt`], naming segment, offset and position, and
//! nothing is changed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ledger_events::{
    ChainHead, ChainVerifier, Position, RecordView, MAX_RECORD_BYTES, MIN_RECORD_BYTES,
};

use crate::store::StoreError;

/// Bytes in a segment header.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a frame before its record.
pub const FRAME_HEADER_BYTES: usize = 8;
const MAGIC: &[u8; 8] = b"LLEDGSEG";
const SEGMENT_FORMAT: u32 = 1;
const EXTENSION: &str = "seg";

/// One segment file in a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its path.
    pub path: PathBuf,
    /// Position of its first record (from its name).
    pub first_position: Position,
}

/// The file name of the segment whose first record is at `first_position`.
pub fn segment_path(dir: &Path, first_position: Position) -> PathBuf {
    dir.join(format!("{first_position:020}.{EXTENSION}"))
}

/// Encodes a segment header.
pub fn segment_header(first_position: Position) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT.to_be_bytes());
    h[12..20].copy_from_slice(&first_position.to_be_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Top bit of a frame word: this record ends its append.
const END_OF_APPEND: u32 = 1 << 31;

/// Bytes a frame of a record of `record_len` bytes takes.
pub fn frame_len(record_len: usize) -> u64 {
    (FRAME_HEADER_BYTES + record_len) as u64
}

/// Fills in the frame header at `frame_start` for the record that follows it up to the end
/// of `buf`, and returns the record's length.
pub fn seal_frame(buf: &mut [u8], frame_start: usize, end_of_append: bool) -> usize {
    let record_start = frame_start + FRAME_HEADER_BYTES;
    let len = buf.len() - record_start;
    debug_assert!(len <= MAX_RECORD_BYTES);
    let mut word = len as u32;
    if end_of_append {
        word |= END_OF_APPEND;
    }
    let word = word.to_be_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&word), &buf[record_start..]);
    buf[frame_start..frame_start + 4].copy_from_slice(&word);
    buf[frame_start + 4..record_start].copy_from_slice(&crc.to_be_bytes());
    len
}

fn frame_word(bytes: &[u8]) -> (usize, bool) {
    let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    ((word & !END_OF_APPEND) as usize, word & END_OF_APPEND != 0)
}

/// Checks one frame whose bytes are fully present; returns the record slice and whether it
/// ends its append.
pub fn check_frame(frame: &[u8]) -> Result<(&[u8], bool), String> {
    if frame.len() < FRAME_HEADER_BYTES {
        return Err("frame shorter than its header".into());
    }
    let (head, record) = frame.split_at(FRAME_HEADER_BYTES);
    let (len, end) = frame_word(head);
    if len != record.len() {
        return Err(format!(
            "frame length {len} does not match {}",
            record.len()
        ));
    }
    let stored = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&head[..4]), record);
    if stored != computed {
        return Err(format!(
            "CRC-32C mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    Ok((record, end))
}

/// Lists the segments of `dir` in log order. Files that are not segments are ignored;
/// a `.seg` file with a malformed name is an error.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let first_position = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<Position>().ok())
            .filter(|&p| p >= 1)
            .ok_or_else(|| StoreError::Corrupt {
                segment: path.display().to_string(),
                offset: 0,
                position: 0,
                problem: "segment file name is not 20 digits of a first position".into(),
            })?;
        segments.push(SegmentFile {
            path,
            first_position,
        });
    }
    segments.sort_by_key(|s| s.first_position);
    Ok(segments)
}

/// A record's place on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLoc {
    /// Index of the segment in log order.
    pub segment: u32,
    /// Offset of the record (after its frame header) in the segment file.
    pub offset: u64,
    /// Length of the record.
    pub len: u32,
}

/// An interrupted write at the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: PathBuf,
    /// Where the valid part ends (the file should be cut to this length).
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// Whether the whole segment is unusable (a torn header): remove it instead of cutting.
    pub remove_segment: bool,
}

/// The result of a scan.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Head of the verified chain.
    pub head: ChainHead,
    /// Records verified.
    pub count: u64,
    /// An interrupted write at the end, if any.
    pub torn: Option<TornTail>,
    /// Valid length of each segment (after removing a torn tail), in log order.
    pub segment_lens: Vec<u64>,
    /// `recorded_at` of the last record, in microseconds.
    pub last_recorded_at_micros: Option<i64>,
    /// With [`scan_until`]: the segment (index into the list) and offset where the append
    /// ending at the asked position ends.
    pub stopped_at: Option<(usize, u64)>,
}

fn corrupt(
    seg: &SegmentFile,
    offset: u64,
    position: Position,
    problem: impl Into<String>,
) -> StoreError {
    StoreError::Corrupt {
        segment: seg.path.display().to_string(),
        offset,
        position,
        problem: problem.into(),
    }
}

/// Reads every segment in order, checking headers, frames, CRCs and the hash chain, and calls
/// `visit` for each record of each complete append. `progress` receives the bytes read so
/// far. Changes nothing on disk: the caller decides what to do with a torn tail.
pub fn scan(
    segments: &[SegmentFile],
    visit: impl FnMut(&RecordView<'_>, RecordLoc) -> Result<(), StoreError>,
    progress: impl FnMut(u64),
) -> Result<ScanReport, StoreError> {
    scan_until(segments, visit, progress, None)
}

/// Like [`scan`], but stops at the end of the append whose last record is `stop_after`:
/// nothing after it is read. The report's `stopped_at` then says where that append ends;
/// when the log ends (or an append ends past it) first, `stopped_at` is `None`.
pub fn scan_until(
    segments: &[SegmentFile],
    mut visit: impl FnMut(&RecordView<'_>, RecordLoc) -> Result<(), StoreError>,
    mut progress: impl FnMut(u64),
    stop_after: Option<Position>,
) -> Result<ScanReport, StoreError> {
    // `chain` runs over every complete record; `committed` is its value at the last
    // end-of-append mark, which is what survives.
    let mut chain = ChainVerifier::new();
    let mut committed = chain;
    let mut report = ScanReport::default();
    let mut bytes_done = 0u64;
    let mut last_micros: Option<i64> = None;
    let mut data = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        data.clear();
        fs::File::open(&seg.path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| StoreError::io(format!("reading {}", seg.path.display()), e))?;
        let expected_first = committed.head().position + 1;
        if seg.first_position != expected_first {
            return Err(corrupt(
                seg,
                0,
                expected_first,
                format!(
                    "segment starts at position {}, expected {expected_first}",
                    seg.first_position
                ),
            ));
        }
        let header_ok = data.len() as u64 >= SEGMENT_HEADER_BYTES
            && data[..SEGMENT_HEADER_BYTES as usize] == segment_header(seg.first_position);
        if !header_ok {
            let torn = data.len() < SEGMENT_HEADER_BYTES as usize || data.iter().all(|&b| b == 0);
            if is_last && torn {
                report.torn = Some(TornTail {
                    segment: seg.path.clone(),
                    valid_len: 0,
                    file_len: data.len() as u64,
                    remove_segment: true,
                });
                break;
            }
            return Err(corrupt(seg, 0, expected_first, "bad segment header"));
        }
        let mut at = SEGMENT_HEADER_BYTES as usize;
        let mut committed_len = at;
        // Records of the append in progress, visited once its end mark is seen.
        let mut pending: Vec<(RecordView<'_>, RecordLoc)> = Vec::new();
        let mut torn_at: Option<usize> = None;
        while at < data.len() {
            let position = chain.head().position + 1;
            let rest = &data[at..];
            if rest.len() < FRAME_HEADER_BYTES || rest.iter().all(|&b| b == 0) {
                torn_at = Some(at);
                break;
            }
            let (len, _) = frame_word(rest);
            if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&len) {
                return Err(corrupt(
                    seg,
                    at as u64,
                    position,
                    format!("impossible frame length {len}"),
                ));
            }
            if rest.len() < FRAME_HEADER_BYTES + len {
                torn_at = Some(at);
                break;
            }
            let frame = &rest[..FRAME_HEADER_BYTES + len];
            let (record, end_of_append) =
                check_frame(frame).map_err(|p| corrupt(seg, at as u64, position, p))?;
            let view = RecordView::parse(record)
                .map_err(|e| corrupt(seg, at as u64, position, e.to_string()))?;
            chain
                .push(&view)
                .map_err(|e| corrupt(seg, at as u64, e.position, e.fault.to_string()))?;
            let micros = view.recorded_at_micros();
            if last_micros.is_some_and(|prev| micros < prev) {
                return Err(corrupt(
                    seg,
                    at as u64,
                    position,
                    "recorded_at goes backwards",
                ));
            }
            last_micros = Some(micros);
            let loc = RecordLoc {
                segment: i as u32,
                offset: (at + FRAME_HEADER_BYTES) as u64,
                len: len as u32,
            };
            pending.push((view, loc));
            at += FRAME_HEADER_BYTES + len;
            if chain.count().is_multiple_of(4096) {
                progress(bytes_done + at as u64);
            }
            if end_of_append {
                for (view, loc) in pending.drain(..) {
                    visit(&view, loc).map_err(|e| match e {
                        StoreError::Corrupt { problem, .. } => corrupt(
                            seg,
                            loc.offset - FRAME_HEADER_BYTES as u64,
                            view.position(),
                            problem,
                        ),
                        other => other,
                    })?;
                }
                committed = chain;
                committed_len = at;
                report.last_recorded_at_micros = last_micros;
                if stop_after.is_some_and(|p| committed.head().position >= p) {
                    if stop_after == Some(committed.head().position) {
                        report.stopped_at = Some((i, committed_len as u64));
                    }
                    report.segment_lens.push(committed_len as u64);
                    report.head = committed.head();
                    report.count = committed.count();
                    return Ok(report);
                }
            }
        }
        if torn_at.is_some() || !pending.is_empty() {
            if !is_last {
                let position = committed.head().position + 1;
                return Err(corrupt(
                    seg,
                    committed_len as u64,
                    position,
                    "append cut short before the end of a sealed segment",
                ));
            }
            report.torn = Some(TornTail {
                segment: seg.path.clone(),
                valid_len: committed_len as u64,
                file_len: data.len() as u64,
                remove_segment: false,
            });
        }
        bytes_done += data.len() as u64;
        progress(bytes_done);
        report.segment_lens.push(committed_len as u64);
    }
    report.head = committed.head();
    report.count = committed.count();
    Ok(report)
}
