//! The operator log: the pt-BR lines of the manual's IntelliWeb Server screen, each prefixed
//! with the local `dd/mm/yyyy HH:MM:SS` (`27/03/2023 17:31:32 Processo finalizado...`), in a
//! plain text file beside the JSON logs (`<data_dir>/iwb.log` for the relay).
//!
//! Appended, one line per write, flushed at once (a relay writes a few lines per refresh); a
//! line that cannot be written is reported once to the JSON log and never stops the caller.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use crate::domain::Calendar;

/// The relay's operator log's file name in its data directory.
pub const FILE_NAME: &str = "iwb.log";

/// An append-only text file of operator lines.
#[derive(Debug)]
pub struct OperatorLog {
    path: PathBuf,
    calendar: Calendar,
    file: parking_lot::Mutex<Option<std::fs::File>>,
    warned: AtomicBool,
}

impl OperatorLog {
    /// The log at `path` (created at the first line), with times on `calendar`'s clock.
    pub fn new(path: &Path, calendar: Calendar) -> Self {
        Self {
            path: path.to_owned(),
            calendar,
            file: parking_lot::Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Writes `text` at `now`: `dd/mm/yyyy HH:MM:SS text`.
    pub fn line(&self, now: DateTime<Utc>, text: &str) {
        let stamp = self.calendar.local_time(now);
        let line = format!("{stamp} {text}\n");
        let mut file = self.file.lock();
        let result = (|| {
            if file.is_none() {
                *file = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                );
            }
            match file.as_mut() {
                Some(f) => f.write_all(line.as_bytes()),
                None => Ok(()),
            }
        })();
        if let Err(e) = result {
            *file = None;
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the operator log");
            }
        }
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_local_time_as_the_manual_prints_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = OperatorLog::new(&dir.path().join(FILE_NAME), Calendar::default());
        // 20:31:32 UTC is 17:31:32 in Brasília.
        let at: DateTime<Utc> = "2023-03-27T20:31:32Z".parse().unwrap();
        log.line(at, "Processo finalizado...");
        log.line(at, "Aguardando novas requisições...");
        assert_eq!(
            std::fs::read_to_string(log.path()).unwrap(),
            "27/03/2023 17:31:32 Processo finalizado...\n\
             27/03/2023 17:31:32 Aguardando novas requisições...\n"
        );
    }
}
