//! The relay's outbox: every event that happened at the relay (binds, renewals by contract,
//! check-in records, contingency entries), written durably before the terminal gets its
//! answer, and forwarded to the center when the link is up.
//!
//! Two append-only JSON-lines files in the relay's data directory:
//! - `outbox.jsonl`: one [`ForwardedEvent`] per line, in the order they happened;
//! - `resolutions.jsonl`: the center's decision per event id (accepted or rejected, with
//!   why), appended as answers arrive.
//!
//! An event is pending while it has no resolution. Forwarding is idempotent by event id at
//! the center, so an event forwarded twice (the answer was lost) is stored once.
//!
//! Each line is `LLLLLLLL CCCCCCCC HHHHHHHH <JSON>` and a newline: `L` the JSON's length, `C`
//! its CRC-32C, `H` the CRC-32C of the 18 bytes `LLLLLLLL CCCCCCCC ` (all lowercase hex). A
//! changed byte anywhere (the JSON, the header, a newline) is found.
//!
//! Torn tail versus damage: the outbox holds acknowledged events not yet forwarded, so losing
//! a line is the worst failure. A cut exactly at a line boundary leaves a file that looks
//! whole, so the lines alone cannot tell; the durable head ([`super::head`], `outbox.head`)
//! can: after each append is durable, and before the answer, it records per file the lines,
//! the bytes and the CRC-32C of those bytes that were acknowledged. On open:
//! - fewer bytes than the marker says, or bytes that do not end a line there or do not match
//!   its CRC, or a line before that point that does not check out: refused, naming the file
//!   and what is missing or where, with nothing changed (neither file);
//! - more: what follows was never acknowledged. Lines that check out are kept; from the first
//!   that does not (or a strict prefix of a line) to the end is cut, after being copied into
//!   `cut/` first ([`super::cut`]); a final line complete but for its newline is kept (the
//!   newline is added).
//!
//! Without a marker (files of a relay from before it), the rules for the tail alone apply (only
//! a strict prefix of the final line is cut; anything else that does not check out refuses)
//! and a marker is written for what the files hold. Files in the format written before
//! checksummed headers (one JSON object per line) are recognised only then, and only when
//! their first line is a complete JSON object of the right type (a current line starts with
//! a hex digit; `{` followed by hex digits is no JSON): they are checked with the old rules
//! and converted, the old file kept as `cut/<name>.v1` ([`super::cut::convert`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::head::{self, FileMark, MarkWriter, OutboxMark, HEAD_FILE};
use super::RelayError;
use crate::app::relay::{ForwardedEvent, Resolution};

/// The outbox file's name.
pub const OUTBOX_FILE: &str = "outbox.jsonl";
/// The resolutions file's name.
pub const RESOLUTIONS_FILE: &str = "resolutions.jsonl";
/// A line's header: `LLLLLLLL CCCCCCCC HHHHHHHH `.
pub const LINE_HEADER_BYTES: usize = 27;
/// Largest JSON accepted in a line (the relay writes a few hundred bytes).
const LINE_JSON_MAX: usize = 1024 * 1024;

/// The center's decision on one forwarded event, as the relay recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The event.
    pub event_id: Uuid,
    /// What the center decided.
    pub resolution: Resolution,
    /// When the relay learned it.
    pub at: DateTime<Utc>,
}

/// The outbox and its resolutions.
pub struct Outbox {
    dir: PathBuf,
    events: File,
    resolutions: File,
    /// The durable head, and what it says now.
    head: MarkWriter,
    mark: OutboxMark,
    /// Why a write failed, if one did.
    failed: Option<String>,
    entries: Vec<ForwardedEvent>,
    resolved: HashMap<Uuid, Resolved>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("entries", &self.entries.len())
            .field("pending", &self.depth())
            .finish()
    }
}

/// What one line of an outbox file holds.
enum Line<T> {
    /// A line that checks out.
    Item(T),
    /// The final bytes, a strict prefix of a line: a crash mid-write.
    Torn,
    /// Damage: why.
    Bad(String),
}

/// Reads `chunk` (a line without its newline; `last` when no newline follows it).
fn parse_line<T: for<'de> Deserialize<'de>>(chunk: &[u8], last: bool) -> Line<T> {
    let Some(header) = chunk.get(..LINE_HEADER_BYTES) else {
        return if last {
            Line::Torn
        } else {
            Line::Bad("shorter than a line's header".into())
        };
    };
    let hex = |field: &[u8]| {
        field
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then(|| std::str::from_utf8(field).ok())
            .flatten()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let spaces = [8, 17, 26].iter().all(|&i| header[i] == b' ');
    let (Some(len), Some(crc), Some(header_crc), true) = (
        hex(&header[0..8]),
        hex(&header[9..17]),
        hex(&header[18..26]),
        spaces,
    ) else {
        return Line::Bad("malformed line header".into());
    };
    if crc32c::crc32c(&header[..18]) != header_crc {
        return Line::Bad("line header checksum mismatch".into());
    }
    let len = len as usize;
    if len > LINE_JSON_MAX {
        return Line::Bad(format!("line length {len}"));
    }
    let json = &chunk[LINE_HEADER_BYTES..];
    if json.len() < len && last {
        return Line::Torn;
    }
    if json.len() != len {
        return Line::Bad(format!("{} bytes where the header says {len}", json.len()));
    }
    if crc32c::crc32c(json) != crc {
        return Line::Bad("CRC mismatch".into());
    }
    match serde_json::from_slice::<T>(json) {
        Ok(item) => Line::Item(item),
        Err(e) => Line::Bad(e.to_string()),
    }
}

/// What to do to a file's tail once both files check out.
enum Tail {
    /// Nothing.
    Whole,
    /// The last line is whole but for its newline: add it.
    AddNewline,
    /// Cut from this offset (copied into `cut/` first).
    Cut(usize),
}

/// One outbox file, read and checked; nothing changed yet.
struct Scanned<T> {
    path: PathBuf,
    file: File,
    text: Vec<u8>,
    items: Vec<T>,
    /// The mark of every line kept.
    mark: FileMark,
    tail: Tail,
}

/// Checks `text` (the bytes of the file at `path`) line by line and against `acked`, what
/// the durable head says was acknowledged (`None`: no marker, the rules for the tail alone).
fn scan<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &[u8],
    acked: Option<FileMark>,
) -> Result<(Vec<T>, FileMark, Tail), RelayError> {
    let refuse = |what: String| {
        RelayError::Corrupt(format!(
            "{} {what}; the file was left as it is",
            path.display()
        ))
    };
    if let Some(m) = acked.filter(|m| (text.len() as u64) < m.bytes) {
        let lines = text.iter().filter(|b| **b == b'\n').count();
        return Err(refuse(format!(
            "holds {} bytes ({lines} lines) where {} bytes ({} lines) were acknowledged \
             ({HEAD_FILE}): the last {} bytes of acknowledged events are missing",
            text.len(),
            m.bytes,
            m.lines,
            m.bytes - text.len() as u64
        )));
    }
    let acked_bytes = acked.map_or(0, |m| m.bytes);
    let mut items = Vec::new();
    let mut mark = FileMark::default();
    // The mark where the acknowledged bytes end, if a line ends there.
    let mut at_acked = (acked_bytes == 0).then_some(mark);
    let mut tail = Tail::Whole;
    let mut offset = 0;
    for (n, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let complete = line.ends_with(b"\n");
        let chunk = line.strip_suffix(b"\n").unwrap_or(line);
        match parse_line::<T>(chunk, !complete) {
            Line::Item(item) => {
                items.push(item);
                mark = if complete {
                    mark.after(line)
                } else {
                    tail = Tail::AddNewline;
                    mark.after(&[line, b"\n"].concat())
                };
            }
            Line::Torn => {
                tail = Tail::Cut(offset);
                break;
            }
            // After what the marker says was acknowledged: an interrupted write.
            Line::Bad(_) if acked.is_some() && offset as u64 >= acked_bytes => {
                tail = Tail::Cut(offset);
                break;
            }
            Line::Bad(problem) => {
                return Err(refuse(format!("line {} (byte {offset}): {problem}", n + 1)))
            }
        }
        offset += line.len();
        if mark.bytes == acked_bytes {
            at_acked = Some(mark);
        }
    }
    match acked {
        Some(m) if at_acked != Some(m) => Err(refuse(format!(
            "does not hold the {} lines, {} bytes with CRC-32C {:08x} that were acknowledged \
             ({HEAD_FILE}): acknowledged lines were removed or changed",
            m.lines, m.bytes, m.crc
        ))),
        _ => Ok((items, mark, tail)),
    }
}

/// Opens (or creates) `dir/name` and checks it; a file in the format written before
/// checksummed headers (only when there is no marker) is converted first.
fn open_file<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
    acked: Option<FileMark>,
) -> Result<Scanned<T>, RelayError> {
    let path = dir.join(name);
    let io = |what: &str, source| RelayError::Io {
        context: format!("{what} {}", path.display()),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(|e| io("reading", e))?;
    if acked.is_none() {
        if let Some(new) = convert_v1::<T>(&path, &text)? {
            super::cut::convert(dir, name, &text, &new)?;
            drop(file);
            return open_file(dir, name, None);
        }
    }
    let (items, mark, tail) = scan(&path, &text, acked)?;
    Ok(Scanned {
        path,
        file,
        text,
        items,
        mark,
        tail,
    })
}

/// The format written before checksummed headers: one JSON object per line. Recognised
/// only when the file's first line is complete and is a whole JSON `T` (a line of the
/// current format starts with a hex digit, and `{` followed by hex digits is no JSON), and
/// only without a marker (every file written since has one). Checked with the old rules (a
/// last line that does not parse was an interrupted write; any other is damage); returns the
/// same JSON in current-format lines, or `None` when the file is not in the old format.
fn convert_v1<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &[u8],
) -> Result<Option<Vec<u8>>, RelayError> {
    let is_json = |line: &[u8]| serde_json::from_slice::<T>(line);
    match text.split_inclusive(|b| *b == b'\n').next() {
        Some(first) if first.ends_with(b"\n") && is_json(first).is_ok() => {}
        _ => return Ok(None),
    }
    let mut new = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        match is_json(line) {
            Ok(_) if line.ends_with(b"\n") => {
                new.extend_from_slice(&encode_line(path, &line[..line.len() - 1])?);
            }
            _ if offset + line.len() == text.len() => {
                tracing::warn!(path = %path.display(), offset, "leaving out a torn last line of a file in the old format (kept in cut/ with the old file)");
            }
            Ok(_) => {}
            Err(e) => {
                return Err(RelayError::Corrupt(format!(
                    "{} line {} (byte {offset}), in the format written before checksummed \
                     headers: {e}; the file was left as it is",
                    path.display(),
                    n + 1
                )))
            }
        }
        offset += line.len();
    }
    Ok(Some(new))
}

impl<T> Scanned<T> {
    /// Applies what the tail needs (both files checked): ends or cuts the last line.
    fn finish(mut self, dir: &Path) -> Result<(File, Vec<T>, FileMark), RelayError> {
        let io = |what: &str, source| RelayError::Io {
            context: format!("{what} {}", self.path.display()),
            source,
        };
        match self.tail {
            Tail::Whole => {}
            Tail::AddNewline => {
                tracing::warn!(path = %self.path.display(), line = self.items.len(), "ending a last line that lacked its newline");
                self.file
                    .write_all(b"\n")
                    .and_then(|()| self.file.sync_data())
                    .map_err(|e| io("ending the last line of", e))?;
            }
            Tail::Cut(offset) => {
                super::cut::cut_tail(dir, &self.path, &self.file, offset, &self.text[offset..])?;
            }
        }
        self.file
            .seek(SeekFrom::End(0))
            .map_err(|e| io("seeking", e))?;
        Ok((self.file, self.items, self.mark))
    }
}

/// `json` as a line: header, JSON, newline.
fn encode_line(path: &Path, json: &[u8]) -> Result<Vec<u8>, RelayError> {
    if json.len() > LINE_JSON_MAX {
        return Err(RelayError::Corrupt(format!(
            "a line of {} bytes for {}",
            json.len(),
            path.display()
        )));
    }
    let mut line = format!("{:08x} {:08x} ", json.len(), crc32c::crc32c(json)).into_bytes();
    let header_crc = crc32c::crc32c(&line);
    line.extend_from_slice(format!("{header_crc:08x} ").as_bytes());
    line.extend_from_slice(json);
    line.push(b'\n');
    Ok(line)
}

/// Writes `lines` at the end of `file` and `fdatasync`s it.
fn write_synced(file: &mut File, path: &Path, lines: &[u8]) -> Result<(), RelayError> {
    let io = |what: &str, source| RelayError::Io {
        context: format!("{what} {}", path.display()),
        source,
    };
    file.write_all(lines).map_err(|e| io("writing", e))?;
    file.sync_data().map_err(|e| io("syncing", e))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`: reads the durable head ([`super::head`]),
    /// checks both files line by line and against it (refusing, with nothing changed, when
    /// acknowledged lines are missing or differ), then cuts an interrupted write at the end
    /// (copied into `dir/cut/` first). Files in the format written before checksummed
    /// headers are converted first (the old ones kept in `cut/` as `<name>.v1`); files
    /// without a marker get one.
    pub fn open(dir: &Path) -> Result<Outbox, RelayError> {
        let found = head::read_mark(dir)?;
        let acked = found.map(|(_, m)| m);
        let events = open_file::<ForwardedEvent>(dir, OUTBOX_FILE, acked.map(|m| m.events))?;
        let resolutions =
            open_file::<Resolved>(dir, RESOLUTIONS_FILE, acked.map(|m| m.resolutions))?;
        // Both files check out: only now is anything changed.
        let (events, entries, events_mark) = events.finish(dir)?;
        let (resolutions, resolved, resolutions_mark) = resolutions.finish(dir)?;
        let mark = OutboxMark {
            events: events_mark,
            resolutions: resolutions_mark,
        };
        let head = match found {
            Some((seq, _)) => MarkWriter::open(dir, seq)?,
            None => {
                if mark != OutboxMark::default() {
                    tracing::warn!(dir = %dir.display(), events = mark.events.lines, resolutions = mark.resolutions.lines, "the outbox had no durable head (written before it): writing one for what it holds");
                }
                MarkWriter::create(dir, &mark)?
            }
        };
        Ok(Outbox {
            dir: dir.to_owned(),
            events,
            resolutions,
            head,
            mark,
            failed: None,
            entries,
            resolved: resolved.into_iter().map(|r| (r.event_id, r)).collect(),
        })
    }

    /// Appends `lines` to the outbox file (`resolutions` false) or the resolutions file,
    /// durably, then the durable head. After a failure the outbox accepts nothing more (what
    /// reached the file is unknown) until it is opened again.
    fn write(&mut self, resolutions: bool, lines: &[Vec<u8>]) -> Result<(), RelayError> {
        if let Some(failed) = &self.failed {
            return Err(RelayError::Corrupt(format!(
                "the outbox in {} failed to write ({failed}); it accepts nothing more until \
                 the relay restarts",
                self.dir.display()
            )));
        }
        let mut mark = self.mark;
        let (file, name, file_mark) = if resolutions {
            (
                &mut self.resolutions,
                RESOLUTIONS_FILE,
                &mut mark.resolutions,
            )
        } else {
            (&mut self.events, OUTBOX_FILE, &mut mark.events)
        };
        for line in lines {
            *file_mark = file_mark.after(line);
        }
        let result = write_synced(file, &self.dir.join(name), &lines.concat())
            .and_then(|()| self.head.store(&mark));
        match &result {
            Ok(()) => self.mark = mark,
            Err(e) => self.failed = Some(e.to_string()),
        }
        result
    }

    /// Writes an event durably (the line, then the durable head).
    pub fn append(&mut self, event: ForwardedEvent) -> Result<(), RelayError> {
        self.append_all(vec![event])
    }

    /// Writes events durably, in order, with one write and one `fdatasync` of the file and
    /// of the durable head (as [`Outbox::append`] does for one).
    pub fn append_all(&mut self, events: Vec<ForwardedEvent>) -> Result<(), RelayError> {
        let path = self.dir.join(OUTBOX_FILE);
        let lines = events
            .iter()
            .map(|e| {
                let json = serde_json::to_vec(e).map_err(|e| RelayError::Corrupt(e.to_string()))?;
                encode_line(&path, &json)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write(false, &lines)?;
        self.entries.extend(events);
        Ok(())
    }

    /// Records the center's decision on an event, durably.
    pub fn resolve(&mut self, resolved: Resolved) -> Result<(), RelayError> {
        self.resolve_all(vec![resolved])
    }

    /// Records the center's decisions on a batch of events, durably, with one write and one
    /// `fdatasync` of the file and of the durable head.
    pub fn resolve_all(&mut self, batch: Vec<Resolved>) -> Result<(), RelayError> {
        let path = self.dir.join(RESOLUTIONS_FILE);
        let lines = batch
            .iter()
            .map(|r| {
                let json = serde_json::to_vec(r).map_err(|e| RelayError::Corrupt(e.to_string()))?;
                encode_line(&path, &json)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write(true, &lines)?;
        for r in batch {
            self.resolved.insert(r.event_id, r);
        }
        Ok(())
    }

    /// Every event written, in order.
    pub fn events(&self) -> &[ForwardedEvent] {
        &self.entries
    }

    /// The latest `recorded_at` of the events written, if any.
    pub fn last_recorded_at(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().map(|e| e.recorded_at).max()
    }

    /// Events without a decision yet, in order.
    pub fn pending(&self) -> Vec<ForwardedEvent> {
        self.entries
            .iter()
            .filter(|e| !self.resolved.contains_key(&e.event_id))
            .cloned()
            .collect()
    }

    /// How many events wait for a decision.
    pub fn depth(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !self.resolved.contains_key(&e.event_id))
            .count()
    }

    /// How many events the center rejected.
    pub fn rejected(&self) -> usize {
        self.resolved
            .values()
            .filter(|r| matches!(r.resolution, Resolution::Rejected { .. }))
            .count()
    }

    /// The decision on an event, if known.
    pub fn resolution(&self, id: &Uuid) -> Option<&Resolved> {
        self.resolved.get(id)
    }
}
