//! The relay's copy of its customer's part of the central log: upstream records verbatim
//! (their central positions, previous hashes and hashes), in one append-only file
//! `mirror.log`.
//!
//! Frame: `length: u32 BE ‖ CRC-32C of the record: u32 BE ‖ record bytes` (the record format
//! of `ledger_events::codec`). Positions strictly increase but have gaps (other customers'
//! records are not here), so the chain between two records cannot be checked locally; each
//! record's own hash is checked on append and on open, and an auditor can match every
//! (position, hash) against the central log. A crash mid-append leaves a torn last frame,
//! cut on open; damage anywhere else refuses to open, naming the offset.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ledger_events::codec::RecordView;
use ledger_events::{Hash, Position, Record};
use uuid::Uuid;

use super::RelayError;

/// The mirror file's name in the relay's data directory.
pub const MIRROR_FILE: &str = "mirror.log";
/// Largest record accepted (the codec's own limit is lower).
const FRAME_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// The mirror: the records in memory (one customer's part is small) and the file.
pub struct MirrorLog {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
    ids: ahash::HashSet<Uuid>,
}

impl std::fmt::Debug for MirrorLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorLog")
            .field("path", &self.path)
            .field("records", &self.records.len())
            .field("head", &self.head_position())
            .finish()
    }
}

impl MirrorLog {
    /// Opens (or creates) `dir/mirror.log`, checking every frame and cutting a torn tail.
    pub fn open(dir: &Path) -> Result<MirrorLog, RelayError> {
        let path = dir.join(MIRROR_FILE);
        let io = |what: &str| {
            let path = path.clone();
            let what = what.to_owned();
            move |source| RelayError::Io {
                context: format!("{what} {}", path.display()),
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("opening"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("reading"))?;
        let mut records = Vec::new();
        let mut ids = ahash::HashSet::default();
        let mut offset = 0usize;
        let mut last: Position = 0;
        while offset < bytes.len() {
            match parse_frame(&bytes[offset..]) {
                Frame::Whole { record, len } => {
                    let p = record.envelope.position;
                    if p <= last {
                        return Err(RelayError::Corrupt(format!(
                            "{} at offset {offset}: position {p} does not follow {last}",
                            path.display()
                        )));
                    }
                    last = p;
                    ids.insert(record.envelope.event_id);
                    records.push(*record);
                    offset += len;
                }
                Frame::Torn => {
                    tracing::warn!(path = %path.display(), offset, cut = bytes.len() - offset, "cutting a torn last frame of the mirror");
                    file.set_len(offset as u64).map_err(io("cutting"))?;
                    file.sync_data().map_err(io("syncing"))?;
                    break;
                }
                Frame::Bad(problem) => {
                    return Err(RelayError::Corrupt(format!(
                        "{} at offset {offset}: {problem}; the mirror can be rebuilt from the \
                         center: move the file away and restart the relay",
                        path.display()
                    )));
                }
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io("seeking"))?;
        Ok(MirrorLog {
            path,
            file,
            records,
            ids,
        })
    }

    /// Appends upstream records (each checked: its hash, and positions after the head),
    /// durably. Records at or below the head are skipped if they are the same record (a
    /// refresh re-reads them) and refused if they differ.
    pub fn append(&mut self, incoming: &[Record]) -> Result<Vec<Record>, RelayError> {
        let mut added = Vec::new();
        let mut buf = Vec::new();
        let mut head = self.head_position();
        for record in incoming {
            let bytes = record.encode()?;
            let p = record.envelope.position;
            if p <= head {
                if self.find(p).map(|r| r.envelope.hash) != Some(record.envelope.hash) {
                    return Err(RelayError::Corrupt(format!(
                        "the center sent position {p} with hash {}, which differs from the \
                         mirror's copy",
                        record.envelope.hash
                    )));
                }
                continue;
            }
            RecordView::parse(&bytes)?.verify_hash()?;
            head = p;
            buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&bytes).to_be_bytes());
            buf.extend_from_slice(&bytes);
            added.push(record.clone());
        }
        if added.is_empty() {
            return Ok(added);
        }
        let io = |what: &'static str| {
            let path = self.path.clone();
            move |source| RelayError::Io {
                context: format!("{what} {}", path.display()),
                source,
            }
        };
        self.file.write_all(&buf).map_err(io("writing"))?;
        self.file.sync_data().map_err(io("syncing"))?;
        for r in &added {
            self.ids.insert(r.envelope.event_id);
        }
        self.records.extend(added.iter().cloned());
        Ok(added)
    }

    /// Every record, in position order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The last record's position (0 when empty).
    pub fn head_position(&self) -> Position {
        self.records.last().map_or(0, |r| r.envelope.position)
    }

    /// The last record's hash, if any.
    pub fn head_hash(&self) -> Option<Hash> {
        self.records.last().map(|r| r.envelope.hash)
    }

    /// Whether an event with this id is mirrored.
    pub fn contains_event(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    fn find(&self, position: Position) -> Option<&Record> {
        self.records
            .binary_search_by_key(&position, |r| r.envelope.position)
            .ok()
            .and_then(|i| self.records.get(i))
    }
}

enum Frame {
    Whole {
        record: Box<Record>,
        len: usize,
    },
    /// Incomplete at the end of the file: a crash mid-append.
    Torn,
    Bad(String),
}

fn parse_frame(bytes: &[u8]) -> Frame {
    let Some(header) = bytes.get(..8) else {
        return Frame::Torn;
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > FRAME_BYTES_MAX {
        return Frame::Bad(format!("frame length {len}"));
    }
    let end = 8 + len as usize;
    let Some(body) = bytes.get(8..end) else {
        return Frame::Torn;
    };
    if crc32c::crc32c(body) != crc {
        // A last frame whose bytes did not all reach the disk looks like this too.
        return if end == bytes.len() {
            Frame::Torn
        } else {
            Frame::Bad("CRC mismatch".into())
        };
    }
    match Record::decode(body) {
        Ok(record) => Frame::Whole {
            record: Box::new(record),
            len: end,
        },
        Err(e) => Frame::Bad(e.to_string()),
    }
}
