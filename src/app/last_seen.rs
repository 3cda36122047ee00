//! "Última Comunicação": when each terminal last checked in, for every check-in, also the
//! ones that record nothing (an unchanged check-in is recorded only once a day, so the log
//! alone says when a terminal was last seen to within a day).
//!
//! Not an event per check-in: one timestamp per (customer, product, terminal) in memory
//! (bounded by the number of terminals, never by the log), written to
//! `<derived dir>/last-seen.bin` by [`flush_every`] when it changed and at shutdown
//! (postcard, written to a temporary file, fsynced, renamed). It is derived data like the
//! index: losing the file loses only what happened since the last recorded check-ins, which
//! stay the floor ([`Ledger::last_communication`] is the later of the two).
//!
//! With several PostgreSQL nodes each node knows the check-ins it answered; the table shows
//! the later of that node's and the log's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ledger_events::{Cnpj, HardwareId, Product};
use ledger_projections::rows::LicenseRow;

use super::Ledger;

/// The file's name in the derived directory.
pub const FILE_NAME: &str = "last-seen.bin";

/// How often [`flush_every`] writes the file when it changed (`serve`).
pub const FLUSH_EVERY: StdDuration = StdDuration::from_secs(10);

/// The file's format version (the first byte).
const FORMAT: u8 = 1;

type Key = (Cnpj, Product, HardwareId);

/// The last check-in of every terminal, per product.
#[derive(Debug, Default)]
pub struct LastSeen {
    at: DashMap<Key, DateTime<Utc>, ahash::RandomState>,
    dirty: AtomicBool,
    path: Option<PathBuf>,
    /// Serializes writers of the file.
    writing: parking_lot::Mutex<()>,
}

impl LastSeen {
    /// Reads `path` if it exists; a missing file starts empty, an unreadable one too (it is
    /// derived data), with a warning.
    pub fn load(path: Option<PathBuf>) -> Self {
        let seen = Self {
            path,
            ..Self::default()
        };
        let Some(path) = &seen.path else {
            return seen;
        };
        match std::fs::read(path) {
            Ok(bytes) => match decode(&bytes) {
                Ok(entries) => {
                    for (key, at) in entries {
                        seen.at.insert(key, at);
                    }
                }
                Err(problem) => tracing::warn!(
                    path = %path.display(),
                    problem,
                    "ignoring the last-communication file; recorded check-ins still show"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read the last-communication file; recorded check-ins still show"
            ),
        }
        seen
    }

    /// Notes a check-in of that terminal at `at` (never moves back).
    pub fn saw(&self, cnpj: Cnpj, product: Product, hardware_id: HardwareId, at: DateTime<Utc>) {
        let mut entry = self.at.entry((cnpj, product, hardware_id)).or_insert(at);
        if *entry < at {
            *entry = at;
        }
        drop(entry);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// That terminal's last check-in, if seen since the file began.
    pub fn get(
        &self,
        cnpj: Cnpj,
        product: Product,
        hardware_id: HardwareId,
    ) -> Option<DateTime<Utc>> {
        self.at.get(&(cnpj, product, hardware_id)).map(|e| *e)
    }

    /// Writes the file if anything changed since the last write.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _writing = self.writing.lock();
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let entries: Vec<(Key, DateTime<Utc>)> =
            self.at.iter().map(|e| (*e.key(), *e.value())).collect();
        let result = write_atomically(path, &encode(&entries));
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }
}

fn encode(entries: &[(Key, DateTime<Utc>)]) -> Vec<u8> {
    let mut bytes = vec![FORMAT];
    // Infallible for these types into a Vec.
    if let Ok(body) = postcard::to_allocvec(entries) {
        bytes.extend_from_slice(&body);
    }
    bytes
}

fn decode(bytes: &[u8]) -> Result<Vec<(Key, DateTime<Utc>)>, String> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!("format version {version} is not {FORMAT}")),
        None => Err("empty file".into()),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Ledger {
    /// Notes a check-in that arrived `at` (every answer, also a kept one).
    pub fn saw_check_in(&self, req: &crate::domain::checkin::CheckInRequest, at: DateTime<Utc>) {
        self.last_seen
            .saw(req.cnpj, req.product, req.hardware_id, at);
    }

    /// Sets a live row's "Última Comunicação" (`last_seen_at`) to the later of its bound
    /// terminal's last check-in seen by this server and its last recorded one (what the read
    /// model put there).
    pub fn fill_last_communication(&self, row: &mut LicenseRow) {
        let seen = row
            .binding
            .as_ref()
            .and_then(|b| self.last_seen.get(row.cnpj, row.product, b.hardware_id));
        row.last_seen_at = row.last_seen_at.max(seen);
    }

    /// Writes the last-communication file if it changed.
    pub fn flush_last_seen(&self) {
        if let Err(e) = self.last_seen.flush() {
            tracing::warn!(error = %e, "could not write the last-communication file");
        }
    }
}

/// Writes the file every `every` while the ledger lives (`serve`).
pub async fn flush_every(ledger: Weak<Ledger>, every: StdDuration) {
    super::every(ledger, every, async |ledger| {
        let _ = crate::background::offload(move || ledger.flush_last_seen()).await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        (
            Cnpj::parse("11222333000181").unwrap(),
            Product::EasyCash,
            HardwareId::parse("50026B77825EECA5").unwrap(),
        )
    }

    #[test]
    fn the_file_keeps_the_latest_time_across_a_restart_and_a_bad_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (c, p, h) = key();
        let t1: DateTime<Utc> = "2030-03-10T12:00:00Z".parse().unwrap();
        let t2: DateTime<Utc> = "2030-03-10T13:00:00Z".parse().unwrap();
        let seen = LastSeen::load(Some(path.clone()));
        seen.saw(c, p, h, t2);
        seen.saw(c, p, h, t1);
        assert_eq!(seen.get(c, p, h), Some(t2), "never moves back");
        seen.flush().unwrap();
        let again = LastSeen::load(Some(path.clone()));
        assert_eq!(again.get(c, p, h), Some(t2));

        std::fs::write(&path, [9u8, 1, 2]).unwrap();
        assert_eq!(LastSeen::load(Some(path.clone())).get(c, p, h), None);
        std::fs::write(&path, [FORMAT, 0xff, 0xff]).unwrap();
        assert_eq!(LastSeen::load(Some(path)).get(c, p, h), None);
    }

    #[test]
    fn flush_writes_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let seen = LastSeen::load(Some(path.clone()));
        seen.flush().unwrap();
        assert!(!path.exists(), "nothing seen, nothing written");
        let (c, p, h) = key();
        seen.saw(c, p, h, Utc::now());
        seen.flush().unwrap();
        assert!(path.exists());
    }
}
