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

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ledger_events::{ChainHead, Hash, Position};

use super::sync_dir;
use crate::store::StoreError;

/// The marker's file name in the log directory.
pub const MARKER_FILE: &str = "durable.head";
/// Distance between the two slots.
pub const SLOT_STRIDE: u64 = 4096;
const SLOT_BYTES: usize = 76;
const MAGIC: &[u8; 8] = b"LLDURHD1";

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

impl DurableMark {
    fn encode(&self, seq: u64) -> [u8; SLOT_BYTES] {
        let mut b = [0u8; SLOT_BYTES];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.head.position.to_be_bytes());
        b[24..32].copy_from_slice(&self.segment_first.to_be_bytes());
        b[32..40].copy_from_slice(&self.segment_len.to_be_bytes());
        b[40..72].copy_from_slice(&self.head.hash.0);
        let crc = crc32c::crc32c(&b[..72]);
        b[72..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<(u64, DurableMark)> {
        if b.len() < SLOT_BYTES || &b[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(b[72..76].try_into().ok()?);
        if crc != crc32c::crc32c(&b[..72]) {
            return None;
        }
        let u64_at = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        let hash: [u8; 32] = b[40..72].try_into().ok()?;
        Some((
            u64_at(8)?,
            DurableMark {
                head: ChainHead {
                    position: u64_at(16)?,
                    hash: Hash(hash),
                },
                segment_first: u64_at(24)?,
                segment_len: u64_at(32)?,
            },
        ))
    }
}

/// Reads the marker of the log in `dir`: `None` when there is none (a log written before
/// markers, or a new directory). Both slots damaged is [`StoreError::Corrupt`]: the marker
/// cannot vouch for anything, and guessing could cut acknowledged records.
pub fn read_mark(dir: &Path) -> Result<Option<DurableMark>, StoreError> {
    let path = dir.join(MARKER_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    let slot = |at: u64| {
        let at = at as usize;
        bytes.get(at..at + SLOT_BYTES).and_then(DurableMark::decode)
    };
    match (slot(0), slot(SLOT_STRIDE)) {
        (Some(a), Some(b)) => Ok(Some(if a.0 >= b.0 { a.1 } else { b.1 })),
        (Some((_, m)), None) | (None, Some((_, m))) => Ok(Some(m)),
        (None, None) => Err(StoreError::Corrupt {
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
pub struct MarkWriter {
    file: File,
    path: PathBuf,
    seq: u64,
}

impl MarkWriter {
    /// Replaces the marker in `dir` with `mark`, whole (temporary file, `fsync`, rename,
    /// directory sync), and opens it for updates.
    pub fn create(dir: &Path, mark: &DurableMark) -> Result<MarkWriter, StoreError> {
        let path = dir.join(MARKER_FILE);
        let temp = dir.join(format!("{MARKER_FILE}.new"));
        let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io("creating", &temp, e))?;
        let slot = mark.encode(0);
        file.write_all_at(&slot, 0)
            .and_then(|()| file.write_all_at(&mark.encode(1), SLOT_STRIDE))
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| io("renaming", &temp, e))?;
        sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        Ok(MarkWriter { file, path, seq: 1 })
    }

    /// Makes `mark` the marker: writes the older slot and `fdatasync`s it. Call only once
    /// every record up to `mark.head` is durable.
    pub fn store(&mut self, mark: &DurableMark) -> std::io::Result<()> {
        let seq = self.seq + 1;
        self.file
            .write_all_at(&mark.encode(seq), (seq % 2) * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }

    /// The marker's path.
    pub fn path(&self) -> &Path {
        &self.path
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
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some(mark(5)));
        // Both damaged: refused, naming the file.
        bytes[20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = read_mark(dir.path()).unwrap_err().to_string();
        assert!(err.contains(MARKER_FILE), "{err}");
    }
}
