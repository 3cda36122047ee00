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
//! Recovery rule: where the bytes stop making records (a frame cut short by the end of the
//! file, zeros, a bad CRC, a broken chain, a bad header), the scan decides whether that is a
//! write a crash interrupted or damage, with the durable-head marker
//! ([`super::durable`]): every position up to the marker's was acknowledged, so a stop at or
//! before it is [`StoreError::Corrupt`] (naming segment, offset and position, changing
//! nothing), and everything after it, in this segment and any later one, is a [`TornTail`]
//! that recovery moves to `cut/`. Without a marker (a log written before markers), only what
//! can be nothing but an interrupted write is a torn tail: in the last segment, an append
//! without its end mark, zeros, or a frame running past the end of the file with no valid
//! frame in the at most one frame's worth of bytes after it. A record kept is always whole
//! and verified; an append is never half there.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ledger_events::{
    ChainHead, ChainVerifier, Position, RecordView, MAX_RECORD_BYTES, MIN_RECORD_BYTES,
};

use super::durable::DurableMark;
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

/// Why the bytes after the last record kept may be cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornProof {
    /// The durable-head marker says the last acknowledged position is this one, and every
    /// record up to it is intact: nothing after it was ever acknowledged.
    Acknowledged(Position),
    /// No marker (a log written before markers, or the file was removed): the bytes look like
    /// an interrupted write (the last segment only, an append without its end, zeros, or a
    /// frame running past the end of the file with no valid frame after it), which is strong
    /// evidence but no proof.
    Unmarked,
}

/// An interrupted write at the end of the log: what recovery sets aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment where the cut starts.
    pub segment: PathBuf,
    /// Its index in the list of segments.
    pub segment_index: usize,
    /// Bytes of it that are kept (0: the whole file goes, its header is unusable).
    pub valid_len: u64,
    /// Its length.
    pub file_len: u64,
    /// Later segments (path, length), which go whole.
    pub later: Vec<(PathBuf, u64)>,
    /// The last position kept.
    pub after: Position,
    /// Why cutting loses nothing acknowledged.
    pub proof: TornProof,
}

impl TornTail {
    /// Bytes cut in all.
    pub fn bytes(&self) -> u64 {
        self.file_len.saturating_sub(self.valid_len) + self.later.iter().map(|l| l.1).sum::<u64>()
    }

    /// Whether the cut is proven safe (see [`TornProof`]).
    pub fn is_proven(&self) -> bool {
        matches!(self.proof, TornProof::Acknowledged(_))
    }

    /// One sentence for a log line or a report.
    pub fn describe(&self) -> String {
        let whole = if self.valid_len == 0 {
            " (all of it)".to_owned()
        } else {
            String::new()
        };
        let later = if self.later.is_empty() {
            String::new()
        } else {
            format!(" and {} later segment file(s)", self.later.len())
        };
        let why = match self.proof {
            TornProof::Acknowledged(p) => format!(
                "not acknowledged: the last acknowledged position is {p} (durable.head) and \
                 every record up to it verifies"
            ),
            TornProof::Unmarked => "it looks like an interrupted write, but the log has no \
                                    durable.head marker to prove it was never acknowledged"
                .to_owned(),
        };
        format!(
            "torn tail of {} bytes after position {}: {} from offset {}{whole}{later}; {why}",
            self.bytes(),
            self.after,
            self.segment.display(),
            self.valid_len,
        )
    }
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
    /// Valid length of each segment kept (after removing a torn tail), in log order.
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

/// Where a scan met bytes it could not read as the next record, and why.
struct Stop {
    segment: usize,
    /// Where the unreadable bytes start.
    offset: u64,
    /// The segment's length up to its last complete append (0: its header is unusable).
    keep_len: u64,
    /// The position the unreadable record would have had.
    position: Position,
    problem: String,
    /// Whether it looks like a write cut short (bytes missing or zero), rather than bytes
    /// that are there and wrong.
    incomplete: bool,
}

/// Reads every segment in order, checking headers, frames, CRCs and the hash chain, and calls
/// `visit` for each record of each complete append. `mark` is the log's durable-head marker
/// ([`super::durable::read_mark`]). `progress` receives the bytes read so far. Changes nothing
/// on disk: the caller decides what to do with a torn tail.
///
/// Where the bytes stop making records, the scan decides (see [`TornProof`]): with a marker,
/// damage at or before the last acknowledged position is [`StoreError::Corrupt`] and anything
/// after it is a torn tail; without one, only what can be nothing but an interrupted write at
/// the end of the last segment is.
pub fn scan(
    segments: &[SegmentFile],
    mark: Option<&DurableMark>,
    visit: impl FnMut(&RecordView<'_>, RecordLoc) -> Result<(), StoreError>,
    progress: impl FnMut(u64),
) -> Result<ScanReport, StoreError> {
    scan_until(segments, mark, visit, progress, None)
}

/// Like [`scan`], but stops at the end of the append whose last record is `stop_after`:
/// nothing after it is read. The report's `stopped_at` then says where that append ends;
/// when the log ends (or an append ends past it) first, `stopped_at` is `None`.
pub fn scan_until(
    segments: &[SegmentFile],
    mark: Option<&DurableMark>,
    mut visit: impl FnMut(&RecordView<'_>, RecordLoc) -> Result<(), StoreError>,
    progress: impl FnMut(u64),
    stop_after: Option<Position>,
) -> Result<ScanReport, StoreError> {
    scan_core(
        segments,
        mark,
        None,
        |view, loc, _| visit(view, loc),
        progress,
        stop_after,
    )
}

/// Where a scan starts when the records before it are known good (verified when the on-disk
/// index took them in): right after the append ending at `head`, at `offset` of the segment
/// `segment` (index into the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanStart {
    /// Index of the segment in the list.
    pub segment: usize,
    /// Where the next frame starts (the end of `head`'s append).
    pub offset: u64,
    /// The last record before the start.
    pub head: ChainHead,
    /// Its `recorded_at`, in microseconds (the next one may not be earlier).
    pub recorded_at_micros: i64,
}

/// Like [`scan`], but starting at `start` (everything before it is taken as verified; the
/// report's `count` is the records read, its `segment_lens` has the file length for each
/// segment before the start), and telling `visit` whether each record ends its append.
pub fn scan_from(
    segments: &[SegmentFile],
    mark: Option<&DurableMark>,
    start: Option<&ScanStart>,
    visit: impl FnMut(&RecordView<'_>, RecordLoc, bool) -> Result<(), StoreError>,
    progress: impl FnMut(u64),
) -> Result<ScanReport, StoreError> {
    scan_core(segments, mark, start, visit, progress, None)
}

fn scan_core(
    segments: &[SegmentFile],
    mark: Option<&DurableMark>,
    start: Option<&ScanStart>,
    mut visit: impl FnMut(&RecordView<'_>, RecordLoc, bool) -> Result<(), StoreError>,
    mut progress: impl FnMut(u64),
    stop_after: Option<Position>,
) -> Result<ScanReport, StoreError> {
    // `chain` runs over every complete record; `committed` is its value at the last
    // end-of-append mark, which is what survives.
    let mut chain = start.map_or_else(ChainVerifier::new, |s| ChainVerifier::resume(s.head));
    let mut committed = chain;
    let mut report = ScanReport {
        last_recorded_at_micros: start.map(|s| s.recorded_at_micros),
        ..ScanReport::default()
    };
    let mut bytes_done = 0u64;
    let mut last_micros: Option<i64> = start.map(|s| s.recorded_at_micros);
    let mut data = Vec::new();
    let mut stop: Option<Stop> = None;
    let acknowledged = mark.map_or(0, |m| m.head.position);
    let first_segment = start.map_or(0, |s| s.segment);
    for seg in segments.iter().take(first_segment) {
        let len = fs::metadata(&seg.path)
            .map_err(|e| StoreError::io(format!("reading {}", seg.path.display()), e))?
            .len();
        report.segment_lens.push(len);
    }
    'segments: for (i, seg) in segments.iter().enumerate().skip(first_segment) {
        // Mid-segment start: the segment's first record is older than the chain's head.
        let resumed = start.filter(|s| s.segment == i);
        match resumed {
            None => {
                data.clear();
                fs::File::open(&seg.path)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .map_err(|e| StoreError::io(format!("reading {}", seg.path.display()), e))?;
            }
            // Only the header and what follows the start are read; the bytes between stay
            // zero pages never touched (a fresh zeroed buffer costs no memory until written).
            Some(s) => data = read_header_and_from(&seg.path, s.offset)?,
        }
        let expected_first = match resumed {
            Some(_) => seg.first_position,
            None => committed.head().position + 1,
        };
        let mut halt = |offset: usize, keep_len: usize, position, problem: String, incomplete| {
            stop = Some(Stop {
                segment: i,
                offset: offset as u64,
                keep_len: keep_len as u64,
                position,
                problem,
                incomplete,
            });
        };
        if seg.first_position != expected_first {
            halt(
                0,
                0,
                expected_first,
                format!(
                    "segment starts at position {}, expected {expected_first}",
                    seg.first_position
                ),
                false,
            );
            break;
        }
        let header_ok = data.len() as u64 >= SEGMENT_HEADER_BYTES
            && data[..SEGMENT_HEADER_BYTES as usize] == segment_header(seg.first_position);
        if !header_ok && resumed.is_none() {
            let torn = data.len() < SEGMENT_HEADER_BYTES as usize || data.iter().all(|&b| b == 0);
            halt(0, 0, expected_first, "bad segment header".into(), torn);
            break;
        }
        let mut at = SEGMENT_HEADER_BYTES as usize;
        if let Some(s) = resumed {
            // The records before the start are acknowledged: nothing here may be cut.
            if !header_ok || s.offset < SEGMENT_HEADER_BYTES || s.offset > data.len() as u64 {
                return Err(corrupt(
                    seg,
                    s.offset,
                    s.head.position + 1,
                    "the scan's start is not inside a segment with a good header",
                ));
            }
            at = s.offset as usize;
        }
        let mut committed_len = at;
        // Records of the append in progress, visited once its end mark is seen.
        let mut pending: Vec<(RecordView<'_>, RecordLoc)> = Vec::new();
        while at < data.len() {
            let position = chain.head().position + 1;
            let rest = &data[at..];
            if rest.len() < FRAME_HEADER_BYTES || rest.iter().all(|&b| b == 0) {
                let problem = if rest.len() < FRAME_HEADER_BYTES {
                    "frame header cut short by the end of the file"
                } else {
                    "zero bytes where a frame should start"
                };
                halt(at, committed_len, position, problem.into(), true);
                break 'segments;
            }
            let (len, _) = frame_word(rest);
            if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&len) {
                halt(
                    at,
                    committed_len,
                    position,
                    format!("impossible frame length {len}"),
                    false,
                );
                break 'segments;
            }
            if rest.len() < FRAME_HEADER_BYTES + len {
                halt(
                    at,
                    committed_len,
                    position,
                    format!(
                        "frame of {len} bytes runs past the end of the file ({} bytes left)",
                        rest.len() - FRAME_HEADER_BYTES
                    ),
                    true,
                );
                break 'segments;
            }
            let frame = &rest[..FRAME_HEADER_BYTES + len];
            let checked = check_frame(frame).and_then(|(record, end)| {
                RecordView::parse(record)
                    .map(|view| (view, end))
                    .map_err(|e| e.to_string())
            });
            let (view, end_of_append) = match checked {
                Ok(v) => v,
                Err(problem) => {
                    halt(at, committed_len, position, problem, false);
                    break 'segments;
                }
            };
            if let Err(e) = chain.push(&view) {
                halt(at, committed_len, e.position, e.fault.to_string(), false);
                break 'segments;
            }
            let micros = view.recorded_at_micros();
            if last_micros.is_some_and(|prev| micros < prev) {
                halt(
                    at,
                    committed_len,
                    position,
                    "recorded_at goes backwards".into(),
                    false,
                );
                break 'segments;
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
                let last = pending.len() - 1;
                for (k, (view, loc)) in pending.drain(..).enumerate() {
                    visit(&view, loc, k == last).map_err(|e| match e {
                        StoreError::Corrupt { problem, .. } => corrupt(
                            seg,
                            loc.offset - FRAME_HEADER_BYTES as u64,
                            view.position(),
                            problem,
                        ),
                        other => other,
                    })?;
                }
                let before = committed.head().position;
                committed = chain;
                committed_len = at;
                report.last_recorded_at_micros = last_micros;
                if let Some(m) = mark
                    .filter(|m| (before + 1..=committed.head().position).contains(&m.head.position))
                {
                    check_mark(m, seg, committed.head(), committed_len as u64)?;
                }
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
        if !pending.is_empty() {
            halt(
                committed_len,
                committed_len,
                committed.head().position + 1,
                "an append cut short: its last record never made it".into(),
                true,
            );
            break;
        }
        bytes_done += data.len() as u64;
        progress(bytes_done);
        report.segment_lens.push(committed_len as u64);
    }
    report.head = committed.head();
    report.count = committed.count();
    if committed.head().position < acknowledged {
        return Err(match &stop {
            Some(s) => corrupt(
                &segments[s.segment],
                s.offset,
                s.position,
                format!(
                    "{}; position {acknowledged} was acknowledged (durable.head), so this is \
                     damage, not an interrupted write",
                    s.problem
                ),
            ),
            None => StoreError::Corrupt {
                segment: segments
                    .last()
                    .map_or_else(String::new, |s| s.path.display().to_string()),
                offset: data.len() as u64,
                position: committed.head().position + 1,
                problem: format!(
                    "the log ends at position {} but position {acknowledged} was acknowledged \
                     (durable.head): segments are missing or cut short",
                    committed.head().position
                ),
            },
        });
    }
    let Some(stop) = stop else {
        return Ok(report);
    };
    let seg = &segments[stop.segment];
    let proof = match mark {
        Some(_) => TornProof::Acknowledged(acknowledged),
        None if stop.segment + 1 == segments.len()
            && stop.incomplete
            && looks_interrupted(&data[stop.offset as usize..]) =>
        {
            TornProof::Unmarked
        }
        None => {
            return Err(corrupt(seg, stop.offset, stop.position, stop.problem));
        }
    };
    if stop.keep_len > 0 {
        report.segment_lens.push(stop.keep_len);
    }
    let mut later = Vec::new();
    for s in &segments[stop.segment + 1..] {
        let len = fs::metadata(&s.path)
            .map_err(|e| StoreError::io(format!("reading {}", s.path.display()), e))?
            .len();
        later.push((s.path.clone(), len));
    }
    report.torn = Some(TornTail {
        segment: seg.path.clone(),
        segment_index: stop.segment,
        valid_len: stop.keep_len,
        file_len: data.len() as u64,
        later,
        after: committed.head().position,
        proof,
    });
    Ok(report)
}

/// The bytes of the segment at `path`, with only its header and the bytes from `offset` on
/// actually read (the rest left zero).
fn read_header_and_from(path: &Path, offset: u64) -> Result<Vec<u8>, StoreError> {
    use std::os::unix::fs::FileExt;
    let io = |e| StoreError::io(format!("reading {}", path.display()), e);
    let file = fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut data = vec![0u8; len as usize];
    let header = (SEGMENT_HEADER_BYTES.min(len)) as usize;
    file.read_exact_at(&mut data[..header], 0).map_err(io)?;
    let from = offset.clamp(header as u64, len) as usize;
    file.read_exact_at(&mut data[from..], from as u64)
        .map_err(io)?;
    Ok(data)
}

/// Checks the durable-head marker against the append that just took the log to or past
/// its position.
fn check_mark(
    mark: &DurableMark,
    seg: &SegmentFile,
    head: ChainHead,
    len: u64,
) -> Result<(), StoreError> {
    let p = mark.head.position;
    let problem = if head.position != p {
        format!("position {p} (durable.head) is not the end of an append in the log")
    } else if head.hash != mark.head.hash {
        format!(
            "position {p} has hash {}, but durable.head says {}",
            head.hash, mark.head.hash
        )
    } else if seg.first_position != mark.segment_first || len != mark.segment_len {
        format!(
            "position {p} ends at offset {len} of the segment starting at {}, but durable.head \
             says offset {} of the segment starting at {}",
            seg.first_position, mark.segment_len, mark.segment_first
        )
    } else {
        return Ok(());
    };
    Err(corrupt(seg, len, p, problem))
}

/// Whether `tail` (from the first unreadable byte to the end of the last segment) can be
/// nothing but a write cut short: all zeros, or no more than one frame's worth of bytes in
/// which no valid frame starts. A valid frame after a bad one, or more bytes than one frame
/// holds, means records are there and something damaged what leads to them.
fn looks_interrupted(tail: &[u8]) -> bool {
    if tail.iter().all(|&b| b == 0) {
        return true;
    }
    if tail.len() > FRAME_HEADER_BYTES + MAX_RECORD_BYTES {
        return false;
    }
    (1..tail.len().saturating_sub(FRAME_HEADER_BYTES)).all(|at| {
        let rest = &tail[at..];
        let (len, _) = frame_word(rest);
        !((MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&len)
            && rest.len() >= FRAME_HEADER_BYTES + len
            && check_frame(&rest[..FRAME_HEADER_BYTES + len]).is_ok())
    })
}
