//! The relay's time never goes back, across restarts too.
//!
//! The center floors its clock at its log's last `recorded_at` (see `crate::clock::
//! MonotonicClock` in `Ledger::start`). The relay answers far more often than it writes (an
//! unchanged check-in records nothing), so its own files may hold an older time than its last
//! answer: after `GRACE_EXPIRED` at expiry + 8 days, a clock stepped back to expiry + 6 would
//! otherwise answer "valid" again, with an earlier `issued_at`. So the relay keeps a
//! **high-water mark** of the times it answered at, in the small file [`MARK_FILE`], and its
//! clock on start is floored at the newest of: the mirror's last `recorded_at`, the outbox's
//! last `recorded_at`, and the mark plus [`MARK_STEP`].
//!
//! Why "plus a step": writing the mark durably before every answer would add an `fsync` (and a
//! rename) per check-in. Instead the mark is written only when an answer's time passes what is
//! already covered: the persisted mark plus `MARK_STEP` (a restart floors there, so every answer
//! up to it stays covered), or the last outbox line (written and synced before the answer it
//! belongs to, so a check-in that records something never writes the mark). With real time
//! moving on, that is at most one small atomic write per `MARK_STEP`; the price is that a
//! restarted relay may run up to `MARK_STEP` ahead of its clock until the clock catches up.
//!
//! The file is one line, `<RFC 3339 time> crc32c=<8 hex digits of the time's bytes>`, replaced
//! atomically (temporary file, `fsync`, rename, `fsync` of the directory). A damaged mark
//! refuses to open, naming the file: starting without it could answer "valid" for a time the
//! relay already refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use parking_lot::Mutex;

use super::RelayError;

/// The mark's file name in the relay's data directory.
pub const MARK_FILE: &str = "clock-mark";
/// How far an answer's time may pass the persisted mark before the mark is written again;
/// a restart floors the clock at the persisted mark plus this step.
pub const MARK_STEP: Duration = Duration::seconds(60);

/// The persisted high-water mark of the relay's answer times.
#[derive(Debug)]
pub struct TimeMark {
    dir: PathBuf,
    /// Every time up to this one is covered by something durable (the mark plus a step, or an
    /// outbox line): a restart floors the clock at least here.
    covered: Mutex<DateTime<Utc>>,
}

impl TimeMark {
    /// Reads the mark in `dir` (none yet is fine). Returns it with the floor it gives a
    /// restarted clock: the persisted time plus [`MARK_STEP`], or `None` when there is no mark.
    pub fn open(dir: &Path) -> Result<(TimeMark, Option<DateTime<Utc>>), RelayError> {
        let path = dir.join(MARK_FILE);
        let floor = match fs::read(&path) {
            Ok(bytes) => Some(
                parse(&bytes).ok_or_else(|| {
                    RelayError::Corrupt(format!(
                        "{} is damaged (expected `<RFC 3339 time> crc32c=<8 hex digits>`); \
                     the relay's clock cannot be floored safely. If the relay's clock is right, \
                     move the file away and restart: the clock is then floored at the mirror's \
                     and the outbox's last times only",
                        path.display()
                    ))
                })? + MARK_STEP,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(RelayError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let mark = TimeMark {
            dir: dir.to_owned(),
            covered: Mutex::new(floor.unwrap_or(DateTime::<Utc>::MIN_UTC)),
        };
        Ok((mark, floor))
    }

    /// Notes that `at` is durable elsewhere (an outbox line recorded at `at` was synced): a
    /// restart floors the clock at least there, so answers up to it need no mark.
    pub fn durable_at(&self, at: DateTime<Utc>) {
        let mut covered = self.covered.lock();
        *covered = (*covered).max(at);
    }

    /// Makes sure a restarted relay's clock starts no earlier than `at`, writing the mark if
    /// nothing durable covers it yet. Call before giving an answer issued at `at`.
    pub fn cover(&self, at: DateTime<Utc>) -> Result<(), RelayError> {
        let mut covered = self.covered.lock();
        if at <= *covered {
            return Ok(());
        }
        self.write(at)?;
        *covered = at + MARK_STEP;
        Ok(())
    }

    fn write(&self, at: DateTime<Utc>) -> Result<(), RelayError> {
        let path = self.dir.join(MARK_FILE);
        let tmp = self.dir.join(format!("{MARK_FILE}.tmp"));
        let time = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let line = format!("{time} crc32c={:08x}\n", crc32c::crc32c(time.as_bytes()));
        let io = |what: &str, source| RelayError::Io {
            context: format!("{what} {}", path.display()),
            source,
        };
        let mut f = fs::File::create(&tmp).map_err(|e| io("writing", e))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("replacing", e))?;
        crate::store::file::sync_dir(&self.dir).map_err(|e| io("syncing the directory of", e))
    }
}

/// The time in a mark file's bytes, if they are exactly a line this module writes.
fn parse(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    let (time, crc) = text.split_once(" crc32c=")?;
    let lower_hex =
        |s: &str| s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex(crc) || u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(time.as_bytes()) {
        return None;
    }
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_mark_is_written_only_past_what_is_covered_and_floors_a_restart_a_step_later() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, floor) = TimeMark::open(dir.path()).unwrap();
        assert_eq!(floor, None);
        mark.cover(at("2031-02-08T08:00:00Z")).unwrap();
        let written = fs::read(dir.path().join(MARK_FILE)).unwrap();
        // Within the step: nothing written.
        mark.cover(at("2031-02-08T08:00:59Z")).unwrap();
        assert_eq!(fs::read(dir.path().join(MARK_FILE)).unwrap(), written);
        // An outbox line made later times durable: nothing written either.
        mark.durable_at(at("2031-02-08T09:00:00Z"));
        mark.cover(at("2031-02-08T09:00:00Z")).unwrap();
        assert_eq!(fs::read(dir.path().join(MARK_FILE)).unwrap(), written);
        let (_, floor) = TimeMark::open(dir.path()).unwrap();
        assert_eq!(floor, Some(at("2031-02-08T08:01:00Z")));
        // Past it: written.
        mark.cover(at("2031-02-08T09:00:01Z")).unwrap();
        let (_, floor) = TimeMark::open(dir.path()).unwrap();
        assert_eq!(floor, Some(at("2031-02-08T09:01:01Z")));
    }

    #[test]
    fn a_damaged_mark_refuses_to_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, _) = TimeMark::open(dir.path()).unwrap();
        mark.cover(at("2031-02-08T08:00:00Z")).unwrap();
        let good = fs::read(dir.path().join(MARK_FILE)).unwrap();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                fs::write(dir.path().join(MARK_FILE), &bad).unwrap();
                let err = TimeMark::open(dir.path()).unwrap_err();
                assert!(err.to_string().contains(MARK_FILE), "byte {i}: {err}");
            }
        }
    }
}
