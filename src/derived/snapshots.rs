//! Snapshot files: the read models' state at a position, so that a start (or an as-of
//! request) applies only the records after it.
//!
//! `snapshots/<position, 20 digits>.snap` holds a header and the body the projections crate
//! encodes (`LedgerView::encode_snapshot`):
//!
//! ```text
//! magic "LLSNAP\0\x01" (8) ‖ position u64 LE ‖ chain hash at position (32)
//! ‖ body length u64 LE ‖ SHA-256 of body (32) ‖ body
//! ```
//!
//! A file is written to a temporary name, synced, renamed and its directory synced. It is
//! trusted only after its length and body digest check and the log's record at its position
//! has its hash ([`super`] checks that against the store); anything else is removed and
//! rebuilt from the log.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ledger_events::{Hash, Position};
use sha2::{Digest, Sha256};

use super::DerivedError;

const MAGIC: &[u8; 8] = b"LLSNAP\0\x01";
const HEADER: usize = 8 + 8 + 32 + 8 + 32;
const SUFFIX: &str = ".snap";

/// A snapshot read back and checked on its own (not yet against the log).
#[derive(Debug)]
pub struct Loaded {
    /// The position it reflects.
    pub position: Position,
    /// The chain hash of the record at that position.
    pub hash: Hash,
    /// The encoded view.
    pub body: Vec<u8>,
}

/// The snapshot directory.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

fn file_name(position: Position) -> String {
    format!("{position:020}{SUFFIX}")
}

impl Snapshots {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> Result<Self, DerivedError> {
        fs::create_dir_all(dir).map_err(|e| DerivedError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The positions of the snapshot files present, ascending (unchecked).
    pub fn positions(&self) -> Result<Vec<Position>, DerivedError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| DerivedError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| DerivedError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(p) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<Position>().ok())
            else {
                continue;
            };
            out.push(p);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Writes the snapshot of `position` durably.
    pub fn write(&self, position: Position, hash: Hash, body: &[u8]) -> Result<(), DerivedError> {
        let path = self.dir.join(file_name(position));
        let tmp = self.dir.join(format!("{}.tmp", file_name(position)));
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&position.to_le_bytes());
        header.extend_from_slice(&hash.0);
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&Sha256::digest(body));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(body)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| DerivedError::io(&path, e))
    }

    /// Reads the snapshot of `position` and checks its header and body digest.
    pub fn read(&self, position: Position) -> Result<Loaded, DerivedError> {
        let path = self.dir.join(file_name(position));
        let bytes = fs::read(&path).map_err(|e| DerivedError::io(&path, e))?;
        let damaged = |why: &str| DerivedError::Damaged(format!("{}: {why}", path.display()));
        let header = bytes
            .get(..HEADER)
            .ok_or_else(|| damaged("shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(damaged("not a snapshot of this version"));
        }
        let field = |at: usize| -> Result<u64, DerivedError> {
            header
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| damaged("header cut short"))
        };
        let stored = field(8)?;
        if stored != position {
            return Err(damaged(&format!("names position {stored}")));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&header[16..48]);
        let len = field(48)?;
        let body = &bytes[HEADER..];
        if body.len() as u64 != len {
            return Err(damaged(&format!(
                "body of {} bytes, header says {len}",
                body.len()
            )));
        }
        if Sha256::digest(body).as_slice() != &header[56..88] {
            return Err(damaged("body digest does not match"));
        }
        Ok(Loaded {
            position,
            hash: Hash(hash),
            body: body.to_vec(),
        })
    }

    /// Removes the snapshot of `position` (derived data: the log rebuilds it).
    pub fn remove(&self, position: Position) -> Result<(), DerivedError> {
        let path = self.dir.join(file_name(position));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DerivedError::io(&path, e)),
        }
    }
}
