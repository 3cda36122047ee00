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
//! the center, so an event forwarded twice (the answer was lost) is stored once. A torn last
//! line (a crash mid-write) is cut on open.

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

fn open_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(File, Vec<T>), RelayError> {
    let io = |what: &str, source| RelayError::Io {
        context: format!("{what} {}", path.display()),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(|e| io("reading", e))?;
    let mut items = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive(|b| *b == b'\n') {
        let complete = line.ends_with(b"\n");
        match serde_json::from_slice::<T>(line) {
            Ok(item) if complete => items.push(item),
            _ if offset + line.len() == text.len() => {
                tracing::warn!(path = %path.display(), offset, "cutting a torn last line");
                file.set_len(offset as u64).map_err(|e| io("cutting", e))?;
                file.sync_data().map_err(|e| io("syncing", e))?;
                break;
            }
            Err(e) => {
                return Err(RelayError::Corrupt(format!(
                    "{} at byte {offset}: {e}",
                    path.display()
                )))
            }
            Ok(_) => {}
        }
        offset += line.len();
    }
    file.seek(SeekFrom::End(0)).map_err(|e| io("seeking", e))?;
    Ok((file, items))
}

fn append_line(file: &mut File, path: &Path, value: &impl Serialize) -> Result<(), RelayError> {
    let mut line = serde_json::to_vec(value).map_err(|e| RelayError::Corrupt(e.to_string()))?;
    line.push(b'\n');
    let io = |what: &str, source| RelayError::Io {
        context: format!("{what} {}", path.display()),
        source,
    };
    file.write_all(&line).map_err(|e| io("writing", e))?;
    file.sync_data().map_err(|e| io("syncing", e))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, RelayError> {
        let (events, entries) = open_lines::<ForwardedEvent>(&dir.join(OUTBOX_FILE))?;
        let (resolutions, resolved) = open_lines::<Resolved>(&dir.join(RESOLUTIONS_FILE))?;
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
