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
//! a line is the worst failure. A crash mid-write leaves a strict prefix of the last line;
//! only that is cut on open: the final bytes, with no newline, shorter than a header or with
//! a header that checks out announcing more bytes than are there. They are copied into
//! `cut/` first ([`super::cut`]). A final line complete but for its newline is kept (the
//! newline is added). Anything else (a complete line that does not check out, a final line as
//! long as its header says or longer) is damage: opening refuses, naming the file, the line
//! and its byte offset, and changes nothing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

fn open_lines<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
) -> Result<(File, Vec<T>), RelayError> {
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
    let mut items = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let complete = line.ends_with(b"\n");
        let chunk = line.strip_suffix(b"\n").unwrap_or(line);
        match parse_line::<T>(chunk, !complete) {
            Line::Item(item) => {
                items.push(item);
                if !complete {
                    // All but the newline reached the disk: keep the line, end it.
                    tracing::warn!(path = %path.display(), line = n + 1, offset, "ending a last line that lacked its newline");
                    file.write_all(b"\n")
                        .and_then(|()| file.sync_data())
                        .map_err(|e| io("ending the last line of", e))?;
                }
            }
            Line::Torn => {
                super::cut::cut_tail(dir, &path, &file, offset, line)?;
                break;
            }
            Line::Bad(problem) => {
                return Err(RelayError::Corrupt(format!(
                    "{} line {} (byte {offset}): {problem}; the file was left as it is",
                    path.display(),
                    n + 1
                )))
            }
        }
        offset += line.len();
    }
    file.seek(SeekFrom::End(0)).map_err(|e| io("seeking", e))?;
    Ok((file, items))
}

fn append_line(file: &mut File, path: &Path, value: &impl Serialize) -> Result<(), RelayError> {
    let json = serde_json::to_vec(value).map_err(|e| RelayError::Corrupt(e.to_string()))?;
    if json.len() > LINE_JSON_MAX {
        return Err(RelayError::Corrupt(format!(
            "a line of {} bytes for {}",
            json.len(),
            path.display()
        )));
    }
    let mut line = format!("{:08x} {:08x} ", json.len(), crc32c::crc32c(&json)).into_bytes();
    let header_crc = crc32c::crc32c(&line);
    line.extend_from_slice(format!("{header_crc:08x} ").as_bytes());
    line.extend_from_slice(&json);
    line.push(b'\n');
    let io = |what: &str, source| RelayError::Io {
        context: format!("{what} {}", path.display()),
        source,
    };
    file.write_all(&line).map_err(|e| io("writing", e))?;
    file.sync_data().map_err(|e| io("syncing", e))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, checking every line and cutting a torn last
    /// line (copied into `dir/cut/` first).
    pub fn open(dir: &Path) -> Result<Outbox, RelayError> {
        let (events, entries) = open_lines::<ForwardedEvent>(dir, OUTBOX_FILE)?;
        let (resolutions, resolved) = open_lines::<Resolved>(dir, RESOLUTIONS_FILE)?;
        Ok(Outbox {
            dir: dir.to_owned(),
            events,
            resolutions,
            entries,
            resolved: resolved.into_iter().map(|r| (r.event_id, r)).collect(),
        })
    }

    /// Writes an event durably.
    pub fn append(&mut self, event: ForwardedEvent) -> Result<(), RelayError> {
        append_line(&mut self.events, &self.dir.join(OUTBOX_FILE), &event)?;
        self.entries.push(event);
        Ok(())
    }

    /// Records the center's decision on an event, durably.
    pub fn resolve(&mut self, resolved: Resolved) -> Result<(), RelayError> {
        append_line(
            &mut self.resolutions,
            &self.dir.join(RESOLUTIONS_FILE),
            &resolved,
        )?;
        self.resolved.insert(resolved.event_id, resolved);
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
