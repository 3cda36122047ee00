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

pub mod index;
pub mod snapshots;

pub use index::LogIndex;
pub use snapshots::Snapshots;

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
}

impl Default for DerivedConfig {
    fn default() -> Self {
        Self {
            dir: None,
            checkpoint_every: 250_000,
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
            });
        };
        let index_dir = dir.join("index");
        let index = match LogIndex::open(&index_dir) {
            Ok(index) => index,
            Err(DerivedError::Locked(_)) => {
                return Err(DerivedError::Locked(index_dir.display().to_string()))
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %index_dir.display(), "the log index cannot be used: rebuilding it from the log");
                Self::clear_index(&index_dir)?;
                LogIndex::open(&index_dir)?
            }
        };
        Ok(Self {
            index,
            snapshots: Some(Snapshots::open(&dir.join("snapshots"))?),
            checkpoint_every,
            index_dir: Some(index_dir),
        })
    }

    /// Throws the index away and starts an empty one (it disagreed with the log).
    pub fn reset_index(&mut self) -> Result<(), DerivedError> {
        // Close the database before removing its files.
        self.index = LogIndex::memory();
        if let Some(dir) = &self.index_dir {
            Self::clear_index(dir)?;
            self.index = LogIndex::open(dir)?;
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
