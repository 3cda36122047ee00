//! The relay's copy of its customer's part of the central log: upstream records verbatim
//! (their central positions, previous hashes and hashes), in one append-only file
//! `mirror.log`.
//!
//! Frame: `length: u32 BE ‖ CRC-32C of the record: u32 BE ‖ CRC-32C of the 8 bytes before:
//! u32 BE ‖ record bytes` (the record format of `ledger_events::codec`). Positions strictly
//! increase but have gaps (other customers' records are not here), so the chain between two
//! records cannot be checked locally; each record's own hash is checked on append and on
//! open, and an auditor can match every (position, hash) against the central log.
//!
//! Torn tail versus damage: a crash mid-append leaves a strict prefix of what was being
//! written, so the only frame that may be cut on open is the final one, and only when it is
//! incomplete: fewer bytes than a header, or a header that checks out (its own CRC: a
//! flipped length bit cannot pass for a long frame) announcing more bytes than the file
//! holds. The cut bytes are copied into `cut/` first ([`super::cut`]). Anything else (a bad
//! header, a complete frame with a bad CRC or record, even the last one) is damage: opening
//! refuses, naming the file and the frame's offset, and changes nothing. The mirror is a copy
//! of the center's records: moving a damaged file away makes the relay fetch them again.
//!
//! A mirror in the format written before header checksums (`length ‖ CRC-32C ‖ record`) is
//! recognised by its first frame (see `convert_v1`), checked with the old rules and converted,
//! the old file kept as `cut/mirror.log.v1` ([`super::cut::convert`]).

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
/// A frame's header: length, the record's CRC, the header's own CRC.
pub const FRAME_HEADER_BYTES: usize = 12;

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
    /// Opens (or creates) `dir/mirror.log`, checking every frame and cutting a torn tail
    /// (copied into `dir/cut/` first).
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
        if let Some(new) = convert_v1(&path, &bytes)? {
            super::cut::convert(dir, MIRROR_FILE, &bytes, &new)?;
            drop(file);
            return MirrorLog::open(dir);
        }
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
                    super::cut::cut_tail(dir, &path, &file, offset, &bytes[offset..])?;
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
            frame_into(&mut buf, &bytes)?;
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

/// Appends `record`'s frame to `buf`.
fn frame_into(buf: &mut Vec<u8>, record: &[u8]) -> Result<(), RelayError> {
    let len = u32::try_from(record.len())
        .ok()
        .filter(|len| (1..=FRAME_BYTES_MAX).contains(len))
        .ok_or_else(|| RelayError::Corrupt(format!("a record of {} bytes", record.len())))?;
    let start = buf.len();
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(record).to_be_bytes());
    let header_crc = crc32c::crc32c(&buf[start..]);
    buf.extend_from_slice(&header_crc.to_be_bytes());
    buf.extend_from_slice(record);
    Ok(())
}

/// The frame written before header checksums: `length ‖ CRC-32C ‖ record` (8-byte header).
///
/// A file is in that format when its first frame's 12-byte header does not check out but its
/// first 8 bytes and what follows form a whole old frame: the CRC-32C of `length` bytes from
/// offset 8 matches, and they decode as a record whose own hash checks out. A damaged current
/// file cannot pass for that: its bytes 4..8 are the CRC of the record from offset 12, so it
/// would take a CRC-32C collision over other bytes and a record whose hash verifies. Checked
/// with the old rules (a last frame incomplete or failing its CRC was an interrupted write;
/// any other bad frame is damage, refused); returns the same records in current frames, or
/// `None` when the file is not in the old format.
fn convert_v1(path: &Path, bytes: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
    let header_ok = |b: &[u8]| {
        b.get(..FRAME_HEADER_BYTES)
            .is_some_and(|h| crc32c::crc32c(&h[..8]).to_be_bytes() == h[8..12])
    };
    /// The body of the old frame at the start of `b`: `None` when incomplete, `Some(Err)`
    /// when it does not check out.
    fn old_frame(b: &[u8]) -> Option<Result<&[u8], String>> {
        let word = |i: usize| b.get(i..i + 4).map(|w| [w[0], w[1], w[2], w[3]]);
        let (len, crc) = (u32::from_be_bytes(word(0)?), u32::from_be_bytes(word(4)?));
        if len == 0 || len > FRAME_BYTES_MAX {
            return Some(Err(format!("frame length {len}")));
        }
        let body = b.get(8..8 + len as usize)?;
        if crc32c::crc32c(body) != crc {
            return Some(Err("CRC mismatch".into()));
        }
        Some(Ok(body))
    }
    let verified = |body: &[u8]| {
        RecordView::parse(body)
            .and_then(|view| view.verify_hash())
            .is_ok()
    };
    match old_frame(bytes) {
        Some(Ok(body)) if !header_ok(bytes) && verified(body) => {}
        _ => return Ok(None),
    }
    let mut new = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match old_frame(&bytes[offset..]) {
            Some(Ok(body)) if verified(body) => {
                frame_into(&mut new, body)?;
                offset += 8 + body.len();
            }
            None => break,
            // A whole-length last frame failing its CRC: the old rules took it for torn.
            Some(Err(_))
                if (1..=FRAME_BYTES_MAX as usize).contains(&old_len(&bytes[offset..]))
                    && offset + 8 + old_len(&bytes[offset..]) == bytes.len() =>
            {
                break
            }
            problem => {
                let problem = match problem {
                    Some(Err(p)) => p,
                    _ => "the record's hash does not check out".into(),
                };
                return Err(RelayError::Corrupt(format!(
                    "{} at offset {offset}, in the format written before header checksums: \
                     {problem}; the mirror can be rebuilt from the center: move the file away \
                     and restart the relay",
                    path.display()
                )));
            }
        }
    }
    if offset < bytes.len() {
        tracing::warn!(path = %path.display(), offset, "leaving out a torn last frame of a mirror in the old format (kept in cut/ with the old file)");
    }
    Ok(Some(new))
}

/// The length an old frame's header at the start of `b` announces.
fn old_len(b: &[u8]) -> usize {
    b.get(..4)
        .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
}

enum Frame {
    Whole {
        record: Box<Record>,
        len: usize,
    },
    /// The final frame, incomplete: a strict prefix of a frame, as a crash mid-append leaves.
    Torn,
    Bad(String),
}

fn parse_frame(bytes: &[u8]) -> Frame {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Frame::Torn;
    };
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (len, crc, header_crc) = (word(0), word(4), word(8));
    if crc32c::crc32c(&header[..8]) != header_crc {
        return Frame::Bad("frame header checksum mismatch".into());
    }
    if len == 0 || len > FRAME_BYTES_MAX {
        return Frame::Bad(format!("frame length {len}"));
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..end) else {
        return Frame::Torn;
    };
    if crc32c::crc32c(body) != crc {
        return Frame::Bad("CRC mismatch".into());
    }
    match Record::decode(body) {
        Ok(record) => Frame::Whole {
            record: Box::new(record),
            len: end,
        },
        Err(e) => Frame::Bad(e.to_string()),
    }
}
