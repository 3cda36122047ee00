//! The durable-head marker: the last position the log acknowledged, kept beside the segments
//! so that recovery can tell a write the crash interrupted from damage to acknowledged data.
//!
//! Without it, a bad frame at the end of the last segment looks the same whether a crash tore
//! it (never acknowledged: cut it) or a flipped bit in its length hid every record after it
//! (acknowledged: cutting deletes history). With it, recovery knows: every position up to the
//! marker's was acknowledged and must be there intact; only what follows may be cut.
//!
//! The file `<log dir>/durable.head` holds two slots, at offsets 0 and [`SLOT_STRIDE`] (in
//! different pages, so one torn write cannot reach both):
//!
//! ```text
//! magic "LLDURHD1" | seq u64 | position u64 | segment_first u64 | segment_len u64 |
//! hash [32] | crc32c u32 (of the 72 bytes before)
//! ```
//!
//! big-endian. Each update writes the slot `seq % 2` and `fdatasync`s it, after the records
//! it names are durable and before any of them is acknowledged; the other slot keeps the
//! previous value, so a write torn by a crash leaves the older (smaller, still true) mark.
//! Reading takes the valid slot with the larger `seq`. The file is created whole (temporary
//! file, rename, directory sync), so it is either absent or has two written slots.
//!
//! The marker is a lower bound, never an upper one: records after it may be on disk (written
//! but not yet acknowledged when the process stopped) and are kept when intact.

use std::path::Path;

use ledger_events::{ChainHead, Hash, Position};

use crate::store::slots::{self, SlotValue, SlotWriter, Slots};
use crate::store::StoreError;

/// The marker's file name in the log directory.
pub const MARKER_FILE: &str = "durable.head";
/// Distance between the two slots.
pub const SLOT_STRIDE: u64 = slots::SLOT_STRIDE;

/// The last acknowledged position and where its append ends on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableMark {
    /// The position and hash of the last acknowledged record (position 0: an empty log).
    pub head: ChainHead,
    /// First position of the segment its append ends in.
    pub segment_first: Position,
    /// Length of that segment up to the end of that append.
    pub segment_len: u64,
}

impl SlotValue for DurableMark {
    const MAGIC: &'static [u8; 8] = b"LLDURHD1";
    const BODY_BYTES: usize = 56;

    fn encode_body(&self, b: &mut [u8]) {
        b[..8].copy_from_slice(&self.head.position.to_be_bytes());
        b[8..16].copy_from_slice(&self.segment_first.to_be_bytes());
        b[16..24].copy_from_slice(&self.segment_len.to_be_bytes());
        b[24..56].copy_from_slice(&self.head.hash.0);
    }

    fn decode_body(b: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| b.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes);
        Some(DurableMark {
            head: ChainHead {
                position: u64_at(0)?,
                hash: Hash(b.get(24..56)?.try_into().ok()?),
            },
            segment_first: u64_at(8)?,
            segment_len: u64_at(16)?,
        })
    }
}

/// Reads the marker of the log in `dir`: `None` when there is none (a log written before
/// markers, or a new directory). Both slots damaged is [`StoreError::Corrupt`]: the marker
/// cannot vouch for anything, and guessing could cut acknowledged records.
pub fn read_mark(dir: &Path) -> Result<Option<DurableMark>, StoreError> {
    let path = dir.join(MARKER_FILE);
    match slots::read::<DurableMark>(&path)
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
    {
        Slots::Missing => Ok(None),
        Slots::Valid(_, mark) => Ok(Some(mark)),
        Slots::Damaged => Err(StoreError::Corrupt {
            segment: path.display().to_string(),
            offset: 0,
            position: 0,
            problem: "both slots of the durable-head marker are damaged: it cannot say which \
                      records were acknowledged (if the segments verify, move the file away \
                      and open again: recovery then cuts only a provably interrupted write)"
                .into(),
        }),
    }
}

/// The open marker file, updated by the syncer.
pub struct MarkWriter(SlotWriter);

impl MarkWriter {
    /// Replaces the marker in `dir` with `mark`, whole (temporary file, `fsync`, rename,
    /// directory sync), and opens it for updates.
    pub fn create(dir: &Path, mark: &DurableMark) -> Result<MarkWriter, StoreError> {
        SlotWriter::create(dir, MARKER_FILE, mark)
            .map(MarkWriter)
            .map_err(|e| StoreError::io("writing the durable-head marker", e))
    }

    /// Makes `mark` the marker: writes the older slot and `fdatasync`s it. Call only once
    /// every record up to `mark.head` is durable.
    pub fn store(&mut self, mark: &DurableMark) -> std::io::Result<()> {
        self.0.store(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(position: Position) -> DurableMark {
        DurableMark {
            head: ChainHead {
                position,
                hash: Hash([position as u8; 32]),
            },
            segment_first: 1,
            segment_len: 32 + position * 100,
        }
    }

    #[test]
    fn the_newest_slot_wins_and_a_torn_one_leaves_the_older_mark() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), None);
        let mut w = MarkWriter::create(dir.path(), &mark(3)).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some(mark(3)));
        w.store(&mark(5)).unwrap();
        w.store(&mark(9)).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some(mark(9)));
        // Tear the newest slot (seq 3 → slot 1): the older one (5) is what remains.
        let path = dir.path().join(MARKER_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some(mark(5)));
        // Both damaged: refused, naming the file.
        bytes[20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_mark(dir.path()).unwrap_err().to_string();
        assert!(err.contains(MARKER_FILE), "{err}");
    }
}
