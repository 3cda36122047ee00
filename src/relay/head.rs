//! The outbox's durable head: how much of `outbox.jsonl` and `resolutions.jsonl` the relay
//! acknowledged, kept beside them so that opening can tell a write a crash interrupted from
//! acknowledged lines that went missing.
//!
//! Without it, a file cut exactly at a line boundary looks whole: the events after the cut
//! (acknowledged to terminals, maybe not forwarded yet) would be lost without a word. With it,
//! opening knows how many lines and bytes of each file were acknowledged, and the CRC-32C of
//! those bytes: fewer, or different, refuses; more is a write that was never acknowledged.
//!
//! The file `outbox.head` holds two slots, at offsets 0 and [`SLOT_STRIDE`] (in different
//! pages, so one torn write cannot reach both), big-endian:
//!
//! ```text
//! magic "LLOUTHD1" | seq u64 |
//! outbox lines u64 | outbox bytes u64 | CRC-32C of those bytes u32 |
//! resolutions lines u64 | resolutions bytes u64 | CRC-32C of those bytes u32 |
//! crc32c u32 (of the 56 bytes before)
//! ```
//!
//! Each append (the line written and `fdatasync`ed first) then writes the slot `seq % 2` and
//! `fdatasync`s it, before the caller answers; the other slot keeps the previous value, so a
//! write torn by a crash leaves the older (smaller, still true) mark. Reading takes the valid
//! slot with the larger `seq`; both slots bad refuses, naming the file. The file is created
//! whole (temporary file, `fsync`, rename, directory sync): it is absent or has two slots.
//! The cost is one more `fdatasync` per append; outbox appends happen only when something
//! happens at the relay (a bind, a recorded check-in, a contingency entry), and the
//! resolutions of a forwarded batch are written with one of each.

use std::path::Path;

use super::RelayError;
use crate::store::slots::{self, SlotValue, SlotWriter, Slots};

/// The marker's file name in the relay's data directory.
pub const HEAD_FILE: &str = "outbox.head";
/// Distance between the two slots.
pub const SLOT_STRIDE: u64 = slots::SLOT_STRIDE;
/// The bytes of one slot.
pub const SLOT_BYTES: usize = slots::slot_bytes::<OutboxMark>();

/// How much of one file was acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMark {
    /// Whole lines.
    pub lines: u64,
    /// Bytes (those lines, newlines included).
    pub bytes: u64,
    /// CRC-32C of those bytes.
    pub crc: u32,
}

impl FileMark {
    /// The mark after `line` (a whole line, newline included) is appended.
    pub fn after(self, line: &[u8]) -> FileMark {
        FileMark {
            lines: self.lines + 1,
            bytes: self.bytes + line.len() as u64,
            crc: crc32c::crc32c_append(self.crc, line),
        }
    }

    fn encode_into(&self, b: &mut [u8]) {
        b[..8].copy_from_slice(&self.lines.to_be_bytes());
        b[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        b[16..20].copy_from_slice(&self.crc.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<FileMark> {
        Some(FileMark {
            lines: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            bytes: u64::from_be_bytes(b.get(8..16)?.try_into().ok()?),
            crc: u32::from_be_bytes(b.get(16..20)?.try_into().ok()?),
        })
    }
}

/// What the relay acknowledged of both outbox files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxMark {
    /// `outbox.jsonl`.
    pub events: FileMark,
    /// `resolutions.jsonl`.
    pub resolutions: FileMark,
}

impl SlotValue for OutboxMark {
    const MAGIC: &'static [u8; 8] = b"LLOUTHD1";
    const BODY_BYTES: usize = 40;

    fn encode_body(&self, b: &mut [u8]) {
        self.events.encode_into(&mut b[..20]);
        self.resolutions.encode_into(&mut b[20..40]);
    }

    fn decode_body(b: &[u8]) -> Option<Self> {
        Some(OutboxMark {
            events: FileMark::decode(b.get(..20)?)?,
            resolutions: FileMark::decode(b.get(20..40)?)?,
        })
    }
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RelayError {
    let context = format!("{what} {}", path.display());
    move |source| RelayError::Io { context, source }
}

/// Reads the marker in `dir`: `None` when there is none (a new directory, or files written
/// before markers), else the newest valid slot and its `seq`. Both slots damaged is
/// [`RelayError::Corrupt`] naming the file: the marker cannot vouch for anything.
pub fn read_mark(dir: &Path) -> Result<Option<(u64, OutboxMark)>, RelayError> {
    let path = dir.join(HEAD_FILE);
    match slots::read::<OutboxMark>(&path).map_err(io_error("reading", &path))? {
        Slots::Missing => Ok(None),
        Slots::Valid(seq, mark) => Ok(Some((seq, mark))),
        Slots::Damaged => Err(RelayError::Corrupt(format!(
            "{}: both slots of the outbox's durable head are damaged: it cannot say which \
             events were acknowledged; the files were left as they are (if outbox.jsonl and \
             resolutions.jsonl are whole, move the marker away and restart: it is rebuilt \
             from what they hold)",
            path.display()
        ))),
    }
}

/// The open marker, updated after each append.
#[derive(Debug)]
pub struct MarkWriter(SlotWriter);

impl MarkWriter {
    /// Replaces the marker in `dir` with `mark`, whole (temporary file, `fsync`, rename,
    /// directory sync), and opens it for updates.
    pub fn create(dir: &Path, mark: &OutboxMark) -> Result<MarkWriter, RelayError> {
        SlotWriter::create(dir, HEAD_FILE, mark)
            .map(MarkWriter)
            .map_err(io_error("writing the marker in", dir))
    }

    /// Opens the existing marker in `dir` for updates; `seq` is the one [`read_mark`] found.
    pub fn open(dir: &Path, seq: u64) -> Result<MarkWriter, RelayError> {
        let path = dir.join(HEAD_FILE);
        SlotWriter::open(&path, seq)
            .map(MarkWriter)
            .map_err(io_error("opening", &path))
    }

    /// Makes `mark` the marker: writes the older slot and `fdatasync`s it. Call only once
    /// every line it counts is durable, and before acknowledging any of them.
    pub fn store(&mut self, mark: &OutboxMark) -> Result<(), RelayError> {
        let path = self.0.path().to_owned();
        self.0.store(mark).map_err(io_error("writing", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(lines: u64) -> OutboxMark {
        let mut m = OutboxMark::default();
        for n in 0..lines {
            m.events = m.events.after(format!("line {n}\n").as_bytes());
        }
        m.resolutions = m.resolutions.after(b"one\n");
        m
    }

    #[test]
    fn the_newest_slot_wins_and_a_damaged_one_leaves_the_older_mark() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), None);
        let mut w = MarkWriter::create(dir.path(), &mark(3)).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some((1, mark(3))));
        w.store(&mark(5)).unwrap();
        drop(w);
        let mut w = MarkWriter::open(dir.path(), 2).unwrap();
        w.store(&mark(9)).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some((3, mark(9))));
        // Damage the newest slot (seq 3, slot 1): the older one (5) is what remains.
        let path = dir.path().join(HEAD_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some((2, mark(5))));
        // Both damaged: refused, naming the file.
        bytes[20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_mark(dir.path()).unwrap_err().to_string();
        assert!(err.contains(HEAD_FILE), "{err}");
    }
}
