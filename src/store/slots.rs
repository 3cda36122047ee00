//! Two-slot files: a small value replaced durably in place, that a crash can tear but never
//! lose. The file log's durable head (`durable.head`) and the relay outbox's (`outbox.head`)
//! are kept this way.
//!
//! The file holds two slots, at offsets 0 and [`SLOT_STRIDE`] (in different pages, so one
//! torn write cannot reach both), each big-endian:
//!
//! ```text
//! magic [8] | seq u64 | body [V::BODY_BYTES] | crc32c u32 (of everything before it)
//! ```
//!
//! An update writes the slot `seq % 2` and `fdatasync`s it; the other slot keeps the previous
//! value, so a write torn by a crash leaves the older one. Reading takes the valid slot with
//! the larger `seq`. The file is created whole (temporary file, `fsync`, rename, directory
//! sync), so it is either absent or has two written slots.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Distance between the two slots.
pub const SLOT_STRIDE: u64 = 4096;

/// A value kept in a two-slot file: its magic and its fixed-size encoding.
pub trait SlotValue: Sized {
    /// The first 8 bytes of every slot (names the file's kind and format version).
    const MAGIC: &'static [u8; 8];
    /// Bytes of the encoded value.
    const BODY_BYTES: usize;
    /// Writes the value into `out` (exactly `BODY_BYTES` long).
    fn encode_body(&self, out: &mut [u8]);
    /// Reads a value from `body` (exactly `BODY_BYTES` long); `None` if it is not one.
    fn decode_body(body: &[u8]) -> Option<Self>;
}

/// Bytes of one slot of `V`.
pub const fn slot_bytes<V: SlotValue>() -> usize {
    8 + 8 + V::BODY_BYTES + 4
}

fn encode<V: SlotValue>(value: &V, seq: u64) -> Vec<u8> {
    let n = slot_bytes::<V>();
    let mut b = vec![0u8; n];
    b[..8].copy_from_slice(V::MAGIC);
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    value.encode_body(&mut b[16..n - 4]);
    let crc = crc32c::crc32c(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn decode<V: SlotValue>(bytes: &[u8], at: u64) -> Option<(u64, V)> {
    let n = slot_bytes::<V>();
    let at = usize::try_from(at).ok()?;
    let b = bytes.get(at..at.checked_add(n)?)?;
    if &b[..8] != V::MAGIC || crc32c::crc32c(&b[..n - 4]).to_be_bytes() != b[n - 4..] {
        return None;
    }
    let seq = u64::from_be_bytes(b[8..16].try_into().ok()?);
    Some((seq, V::decode_body(&b[16..n - 4])?))
}

/// What a two-slot file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slots<V> {
    /// There is no such file.
    Missing,
    /// The newest valid slot: its `seq` and value.
    Valid(u64, V),
    /// Neither slot is valid: the file cannot vouch for anything.
    Damaged,
}

/// Reads the two-slot file at `path`.
pub fn read<V: SlotValue>(path: &Path) -> io::Result<Slots<V>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slots::Missing),
        Err(e) => return Err(e),
    };
    Ok(
        match (decode::<V>(&bytes, 0), decode::<V>(&bytes, SLOT_STRIDE)) {
            (Some(a), Some(b)) => {
                let (seq, v) = if a.0 >= b.0 { a } else { b };
                Slots::Valid(seq, v)
            }
            (Some((seq, v)), None) | (None, Some((seq, v))) => Slots::Valid(seq, v),
            (None, None) => Slots::Damaged,
        },
    )
}

/// A two-slot file open for updates.
pub struct SlotWriter {
    file: File,
    path: PathBuf,
    seq: u64,
}

impl std::fmt::Debug for SlotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotWriter")
            .field("path", &self.path)
            .field("seq", &self.seq)
            .finish()
    }
}

impl SlotWriter {
    /// Replaces the file `name` in `dir` with one holding `value` in both slots, whole
    /// (temporary file, `fsync`, rename, directory sync), and opens it for updates.
    /// Errors name the file they concern.
    pub fn create<V: SlotValue>(dir: &Path, name: &str, value: &V) -> io::Result<SlotWriter> {
        let path = dir.join(name);
        let temp = dir.join(format!("{name}.new"));
        let named = |what: &str, p: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| named("creating", &temp, e))?;
        file.write_all_at(&encode(value, 0), 0)
            .and_then(|()| file.write_all_at(&encode(value, 1), SLOT_STRIDE))
            .and_then(|()| file.sync_all())
            .map_err(|e| named("writing", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| named("renaming", &temp, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| named("syncing", dir, e))?;
        Ok(SlotWriter { file, path, seq: 1 })
    }

    /// Opens the existing file at `path` for updates; `seq` is the one [`read`] found.
    pub fn open(path: &Path, seq: u64) -> io::Result<SlotWriter> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(SlotWriter {
            file,
            path: path.to_owned(),
            seq,
        })
    }

    /// Makes `value` the file's value: writes the older slot and `fdatasync`s it.
    pub fn store<V: SlotValue>(&mut self, value: &V) -> io::Result<()> {
        let seq = self.seq + 1;
        self.file
            .write_all_at(&encode(value, seq), (seq % 2) * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct N(u64);

    impl SlotValue for N {
        const MAGIC: &'static [u8; 8] = b"TESTSLT1";
        const BODY_BYTES: usize = 8;
        fn encode_body(&self, out: &mut [u8]) {
            out.copy_from_slice(&self.0.to_be_bytes());
        }
        fn decode_body(body: &[u8]) -> Option<Self> {
            Some(N(u64::from_be_bytes(body.try_into().ok()?)))
        }
    }

    #[test]
    fn the_newest_slot_wins_a_torn_one_leaves_the_older_and_two_bad_ones_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.head");
        assert_eq!(read::<N>(&path).unwrap(), Slots::Missing);
        let mut w = SlotWriter::create(dir.path(), "x.head", &N(3)).unwrap();
        assert_eq!(read::<N>(&path).unwrap(), Slots::Valid(1, N(3)));
        w.store(&N(5)).unwrap();
        drop(w);
        let mut w = SlotWriter::open(&path, 2).unwrap();
        w.store(&N(9)).unwrap();
        assert_eq!(read::<N>(&path).unwrap(), Slots::Valid(3, N(9)));
        // Tear the newest slot (seq 3 → slot 1): the older one (5) is what remains.
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read::<N>(&path).unwrap(), Slots::Valid(2, N(5)));
        bytes[20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read::<N>(&path).unwrap(), Slots::Damaged);
        // Another kind's file is not this kind's value.
        fs::write(&path, vec![0u8; 8192]).unwrap();
        assert_eq!(read::<N>(&path).unwrap(), Slots::Damaged);
    }
}
