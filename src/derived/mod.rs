//! Derived data: what the log can always rebuild, kept on disk so that starting, the
//! Histórico, as-of, search and the dashboard cost no replay of the whole log.
//!
//! - [`index`]: positions by license (the Histórico), customer and event type.
//! - [`snapshots`]: the read models' state at a position: the newest one a start resumes
//!   from, and checkpoints every [`DerivedConfig::checkpoint_every`] records that as-of
//!   requests resume from.
//!
//! Invariants: derived data is never the source of truth. Each piece names the position and
//! chain hash it reflects and is used only after the log's record at that position has that
//! hash; a piece that fails a check is removed and rebuilt from the log, never served.
//! Deleting `derived/` entirely changes no answer (tests/derived.rs).

use std::path::{Path, PathBuf};

use crate::store::Maintenance;

pub mod index;
pub mod snapshots;

pub use index::LogIndex;
pub use snapshots::Snapshots;

/// The file that tells the next open to rebuild the index.
const CONDEMNED: &str = "index.damaged";

/// Why derived data could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index database failed.
    #[error("the log index failed: {0}")]
    Index(String),
    /// A piece failed its checks.
    #[error("derived data is damaged: {0}")]
    Damaged(String),
    /// Another process (a server) holds the log index.
    #[error("{0} is in use by another process (a server running on this data directory)")]
    Locked(String),
}

impl DerivedError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DerivedError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Where derived data lives and how often checkpoints are taken.
#[derive(Clone, Debug)]
pub struct DerivedConfig {
    /// The directory (`<data_dir>/derived`); `None` keeps the index in memory and takes no
    /// snapshots.
    pub dir: Option<PathBuf>,
    /// A checkpoint of the read models every this many records.
    pub checkpoint_every: u64,
    /// Who compacts the index: this process (the default), or a later server (short
    /// read commands: [`Maintenance::Deferred`]).
    pub maintenance: Maintenance,
}

impl Default for DerivedConfig {
    fn default() -> Self {
        Self {
            dir: None,
            checkpoint_every: 250_000,
            maintenance: Maintenance::Background,
        }
    }
}

impl DerivedConfig {
    /// Derived data in `<data_dir>/derived`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: Some(data_dir.join("derived")),
            ..Self::default()
        }
    }
}

/// The derived data a ledger keeps.
#[derive(Debug)]
pub struct Derived {
    /// The log index.
    pub index: LogIndex,
    /// Snapshots, when on disk.
    pub snapshots: Option<Snapshots>,
    /// Checkpoint interval in records.
    pub checkpoint_every: u64,
    /// The index's directory, when on disk.
    index_dir: Option<PathBuf>,
    maintenance: Maintenance,
}

impl Derived {
    /// Opens what `config` names. An index that cannot be opened is removed and started
    /// anew (it is rebuilt from the log).
    pub fn open(config: &DerivedConfig) -> Result<Self, DerivedError> {
        let checkpoint_every = config.checkpoint_every.max(1);
        let Some(dir) = &config.dir else {
            return Ok(Self {
                index: LogIndex::memory(),
                snapshots: None,
                checkpoint_every,
                index_dir: None,
                maintenance: config.maintenance,
            });
        };
        let index_dir = dir.join("index");
        let condemned = dir.join(CONDEMNED);
        if condemned.exists() {
            tracing::warn!(dir = %index_dir.display(), "the log index was found damaged while serving: rebuilding it from the log");
            Self::clear_index(&index_dir)?;
            std::fs::remove_file(&condemned).map_err(|e| DerivedError::io(&condemned, e))?;
        }
        let index = match LogIndex::open(&index_dir, config.maintenance) {
            Ok(index) => index,
            Err(DerivedError::Locked(_)) => {
                return Err(DerivedError::Locked(index_dir.display().to_string()))
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %index_dir.display(), "the log index cannot be used: rebuilding it from the log");
                Self::clear_index(&index_dir)?;
                LogIndex::open(&index_dir, config.maintenance)?
            }
        };
        Ok(Self {
            index,
            snapshots: Some(Snapshots::open(&dir.join("snapshots"))?),
            checkpoint_every,
            index_dir: Some(index_dir),
            maintenance: config.maintenance,
        })
    }

    /// Marks the index damaged (a read failed its checks while serving): the next open
    /// rebuilds it from the log.
    pub fn condemn_index(&self) -> Result<(), DerivedError> {
        let Some(index_dir) = &self.index_dir else {
            return Ok(());
        };
        let Some(dir) = index_dir.parent() else {
            return Ok(());
        };
        let path = dir.join(CONDEMNED);
        std::fs::write(
            &path,
            b"the log index failed a check; the next start rebuilds it\n",
        )
        .map_err(|e| DerivedError::io(&path, e))
    }

    /// Throws the index away and starts an empty one (it disagreed with the log).
    pub fn reset_index(&mut self) -> Result<(), DerivedError> {
        // Close the database before removing its files.
        self.index = LogIndex::memory();
        if let Some(dir) = &self.index_dir {
            Self::clear_index(dir)?;
            self.index = LogIndex::open(dir, self.maintenance)?;
        }
        Ok(())
    }

    /// Removes an index directory (derived: the log rebuilds it).
    pub fn clear_index(index_dir: &Path) -> Result<(), DerivedError> {
        match std::fs::remove_dir_all(index_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DerivedError::io(index_dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::index::{Batch, Entry, Filter, Joins};
    use super::*;
    use ledger_events::{Cnpj, Hash, LicenseId};

    fn config(dir: &Path) -> DerivedConfig {
        DerivedConfig {
            dir: Some(dir.to_path_buf()),
            checkpoint_every: 10,
            ..DerivedConfig::default()
        }
    }

    /// A few hundred entries over 3 customers, 7 licenses and 3 types, pseudo-random.
    fn batch(from: u64, to: u64) -> Batch {
        let cnpjs = ["11222333000181", "45723174000110", "33000167000101"];
        let types = ["LicenseBound", "TerminalCheckedIn", "ContingencyEntered"];
        let mut b = Batch::default();
        for p in from..=to {
            let r = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            b.push(
                Entry {
                    position: p,
                    license: (r % 3 != 0).then(|| LicenseId::new((r % 7) as u32 + 1).unwrap()),
                    customer: (r % 5 != 0).then(|| Cnpj::parse(cnpjs[(r % 3) as usize]).unwrap()),
                    event_type: types[(r % 3) as usize].to_owned(),
                    joins: match (r % 3, r % 4) {
                        (1, 0) => Joins::CheckIn,
                        (1, _) => Joins::CheckInWithIp,
                        _ => Joins::Changes,
                    },
                },
                Hash([p as u8; 32]),
            );
        }
        b
    }

    #[test]
    fn the_disk_index_answers_what_the_memory_index_answers() {
        let dir = tempfile::tempdir().unwrap();
        let disk = LogIndex::open(&dir.path().join("index"), Maintenance::Background).unwrap();
        let memory = LogIndex::memory();
        // The first two batches are written out as tables, the third stays in the tail:
        // every answer below reads both.
        for (from, to) in [(1, 100), (101, 250), (251, 400)] {
            disk.commit(batch(from, to)).unwrap();
            memory.commit(batch(from, to)).unwrap();
            if to < 400 {
                disk.persist().unwrap();
            }
        }
        // A replay after a restart commits positions the disk holds again: no duplicates.
        disk.commit(batch(90, 260)).unwrap();
        memory.commit(batch(90, 260)).unwrap();
        assert_eq!(disk.covers(), memory.covers());
        assert_eq!(disk.covers().position, 400);
        for id in 1..=8 {
            let id = LicenseId::new(id).unwrap();
            for (upto, offset, limit) in [(400, 0, usize::MAX), (250, 3, 5), (17, 0, 2)] {
                assert_eq!(
                    disk.history(id, upto, offset, limit).unwrap(),
                    memory.history(id, upto, offset, limit).unwrap()
                );
            }
            for upto in [400, 250, 101, 17] {
                assert_eq!(
                    disk.fold_positions(id, upto).unwrap(),
                    memory.fold_positions(id, upto).unwrap()
                );
            }
        }
        let customers = [None, Some(Cnpj::parse("45723174000110").unwrap())];
        let types = [
            None,
            Some(vec!["TerminalCheckedIn".to_owned()]),
            Some(vec![
                "LicenseBound".to_owned(),
                "ContingencyEntered".to_owned(),
            ]),
        ];
        for customer in customers {
            for event_types in types.clone() {
                let filter = Filter {
                    event_types,
                    customer,
                };
                for (lo, hi, limit) in [(1, 400, 10), (37, 201, 1000), (300, 299, 5), (5, 5, 1)] {
                    let d = disk.search(&filter, lo, hi, limit).unwrap();
                    assert_eq!(d, memory.search(&filter, lo, hi, limit).unwrap());
                    assert!(d.positions.windows(2).all(|w| w[0] > w[1]), "newest first");
                    assert!(d.positions.iter().all(|p| (lo..=hi).contains(p)));
                }
            }
        }
        assert_eq!(
            disk.count("TerminalCheckedIn", 10, 300).unwrap(),
            memory.count("TerminalCheckedIn", 10, 300).unwrap()
        );
    }

    #[test]
    fn a_license_folds_from_its_changes_its_newest_check_in_and_newest_ip() {
        let index = LogIndex::memory();
        let id = LicenseId::new(1).unwrap();
        let mut b = Batch::default();
        let joins = [
            (1, Joins::Changes),       // granted
            (2, Joins::CheckInWithIp), // overridden by 5
            (3, Joins::CheckIn),       // overridden by 6
            (4, Joins::Changes),       // bound
            (5, Joins::CheckInWithIp), // the newest with an IP
            (6, Joins::CheckIn),       // overridden by 8
            (7, Joins::Changes),       // blocked
            (8, Joins::CheckIn),       // the newest
        ];
        for (p, j) in joins {
            b.push(
                Entry {
                    position: p,
                    license: Some(id),
                    customer: None,
                    event_type: String::new(),
                    joins: j,
                },
                Hash([p as u8; 32]),
            );
        }
        index.commit(b).unwrap();
        assert_eq!(index.fold_positions(id, 8).unwrap(), vec![1, 4, 5, 7, 8]);
        // As of 6: 6 is the newest check-in, 5 the newest with an IP.
        assert_eq!(index.fold_positions(id, 6).unwrap(), vec![1, 4, 5, 6]);
        // As of 5: the newest check-in carries the IP itself.
        assert_eq!(index.fold_positions(id, 5).unwrap(), vec![1, 4, 5]);
        assert_eq!(index.fold_positions(id, 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(index.fold_positions(id, 1).unwrap(), vec![1]);
    }

    /// fjall's manifest keeps a level's run count in one byte, and every spill adds a run to
    /// level 0: with compaction behind (or no workers, as in the CLI), 256 runs made the index
    /// unreadable at the next open (`InvalidTag(("ChecksumType", ..))`: rebuilt from the log,
    /// 9 minutes at 38 M records).
    #[test]
    fn an_index_spilled_more_often_than_a_level_holds_runs_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let memory = LogIndex::memory();
        {
            let index = LogIndex::open(&path, Maintenance::Deferred).unwrap();
            for i in 0..1200u64 {
                index.commit(batch(i * 2 + 1, i * 2 + 2)).unwrap();
                memory.commit(batch(i * 2 + 1, i * 2 + 2)).unwrap();
                index.persist().unwrap();
            }
            assert!(index.level0_runs() < 256, "{} runs", index.level0_runs());
        }
        let index = LogIndex::open(&path, Maintenance::Deferred).unwrap();
        assert_eq!(index.covers().position, 2400);
        for id in 1..=8 {
            let id = LicenseId::new(id).unwrap();
            assert_eq!(
                index.history(id, 2400, 0, usize::MAX).unwrap(),
                memory.history(id, 2400, 0, usize::MAX).unwrap()
            );
        }
    }

    #[test]
    fn a_reopened_index_covers_what_was_persisted_and_loses_only_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let id = LicenseId::new(3).unwrap();
        let upto = |n: u64| {
            let memory = LogIndex::memory();
            memory.commit(batch(1, n)).unwrap();
            memory.history(id, n, 0, usize::MAX).unwrap()
        };
        assert!(upto(120).0 > 0 && upto(200).0 > upto(120).0);
        {
            let index = LogIndex::open(&path, Maintenance::Background).unwrap();
            index.commit(batch(1, 120)).unwrap();
            index.persist().unwrap();
            index.commit(batch(121, 200)).unwrap();
            assert_eq!(index.covers().position, 200);
            assert_eq!(index.history(id, 200, 0, usize::MAX).unwrap(), upto(200));
        }
        let index = LogIndex::open(&path, Maintenance::Background).unwrap();
        assert_eq!(index.covers().position, 120, "the tail was not persisted");
        assert_eq!(index.history(id, 200, 0, usize::MAX).unwrap(), upto(120));
        // What a restart does: replay from a snapshot at or below what the disk covers.
        index.commit(batch(100, 200)).unwrap();
        let memory = LogIndex::memory();
        memory.commit(batch(1, 200)).unwrap();
        assert_eq!(
            index.history(id, 200, 0, usize::MAX).unwrap(),
            memory.history(id, 200, 0, usize::MAX).unwrap()
        );
        index.settle().unwrap();
        drop(index);
        let index = LogIndex::open(&path, Maintenance::Background).unwrap();
        assert_eq!(index.covers().position, 200, "a stop writes everything out");
        assert_eq!(
            index.history(id, 200, 3, 4).unwrap(),
            memory.history(id, 200, 3, 4).unwrap()
        );
    }

    #[test]
    fn a_reopened_index_covers_what_was_committed_and_a_condemned_one_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let derived = Derived::open(&config(dir.path())).unwrap();
            derived.index.commit(batch(1, 50)).unwrap();
            derived.index.persist().unwrap();
        }
        let derived = Derived::open(&config(dir.path())).unwrap();
        assert_eq!(derived.index.covers().position, 50);
        derived.condemn_index().unwrap();
        drop(derived);
        let derived = Derived::open(&config(dir.path())).unwrap();
        assert_eq!(derived.index.covers().position, 0, "rebuilt from nothing");
        assert!(!dir.path().join(CONDEMNED).exists());
    }

    #[test]
    fn a_snapshot_reads_back_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshots::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        snapshots.write(42, Hash([9; 32]), &body).unwrap();
        assert_eq!(snapshots.positions().unwrap(), vec![42]);
        let loaded = snapshots.read(42).unwrap();
        assert_eq!(
            (loaded.position, loaded.hash, loaded.body),
            (42, Hash([9; 32]), body)
        );
        let path = dir.path().join(format!("{:020}.snap", 42));
        let good = std::fs::read(&path).unwrap();
        for at in [0, 9, 50, 60, 87, 88, 500, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let read = snapshots.read(42);
            // The hash in the header (bytes 16..48) is checked against the log, not here.
            if (16..48).contains(&at) {
                assert!(read.is_ok());
            } else {
                assert!(read.is_err(), "a flip at byte {at} was not noticed");
            }
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(snapshots.read(42).is_err(), "a cut body");
        std::fs::write(&path, &good).unwrap();
        std::fs::rename(&path, dir.path().join(format!("{:020}.snap", 43))).unwrap();
        assert!(
            snapshots.read(43).is_err(),
            "a file under another position's name"
        );
    }
}
