//! Time as an input. Domain code and the store ask a [`Clock`] for `now`; production uses
//! [`SystemClock`], tests use [`ManualClock`] to travel in time.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

/// A source of the current time. Must never panic.
pub trait Clock: Send + Sync + 'static {
    /// The current time, UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Sets the time (backwards too: tests of clock jumps need it).
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock() = at;
    }

    /// Moves the time by `by` (may be negative).
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock();
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock()
    }
}

/// A clock that never goes back: the later of its source's time and the latest time it
/// returned (or a floor, such as the log's last recorded time). Every decision reads it, so
/// a system clock stepped backwards cannot re-open an expired license or undo a renewal's
/// day; the store separately never records a time before the last one.
pub struct MonotonicClock {
    inner: Arc<dyn Clock>,
    /// Latest time returned, in microseconds since the epoch.
    latest: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonotonicClock")
            .field("latest_micros", &self.latest)
            .finish_non_exhaustive()
    }
}

impl MonotonicClock {
    /// `inner`, never earlier than `floor`.
    pub fn new(inner: Arc<dyn Clock>, floor: DateTime<Utc>) -> Self {
        Self {
            inner,
            latest: std::sync::atomic::AtomicI64::new(floor.timestamp_micros()),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> DateTime<Utc> {
        let t = self.inner.now();
        let micros = t.timestamp_micros();
        let before = self
            .latest
            .fetch_max(micros, std::sync::atomic::Ordering::AcqRel);
        if before > micros {
            DateTime::<Utc>::from_timestamp_micros(before).unwrap_or(t)
        } else {
            t
        }
    }
}

/// A clock read from a file, for tests that drive a server *process* through time (the
/// relay's seven days of contingency): the file holds one RFC 3339 time, which the clock
/// returns, moving on with real time from the moment it was read, so a test writes a new
/// time only to jump. Re-read at most every [`FileClock::REREAD`]. While the file is absent
/// or unreadable the system time is used (and a warning logged once).
///
/// Enabled only by the hidden `--clock-file` flag (`LEDGER_CLOCK_FILE`); never in production.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
    state: Mutex<FileClockState>,
}

#[derive(Debug)]
struct FileClockState {
    /// The time in the file, and the instant it was read; `None` while there is none.
    base: Option<(DateTime<Utc>, std::time::Instant)>,
    text: String,
    read_at: Option<std::time::Instant>,
    warned: bool,
}

impl FileClock {
    /// How often the file is looked at.
    pub const REREAD: std::time::Duration = std::time::Duration::from_millis(20);

    /// A clock following `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            state: Mutex::new(FileClockState {
                base: None,
                text: String::new(),
                read_at: None,
                warned: false,
            }),
        }
    }
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        let mut s = self.state.lock();
        let due = s.read_at.is_none_or(|at| at.elapsed() >= Self::REREAD);
        if due {
            s.read_at = Some(std::time::Instant::now());
            match std::fs::read_to_string(&self.path) {
                Ok(text) if text == s.text => {}
                Ok(text) => match DateTime::parse_from_rfc3339(text.trim()) {
                    Ok(t) => {
                        s.base = Some((t.with_timezone(&Utc), std::time::Instant::now()));
                        s.text = text;
                    }
                    Err(e) => {
                        if !s.warned {
                            tracing::warn!(path = %self.path.display(), error = %e, "clock file does not hold an RFC 3339 time");
                            s.warned = true;
                        }
                    }
                },
                Err(e) => {
                    if !s.warned {
                        tracing::warn!(path = %self.path.display(), error = %e, "clock file unreadable; using the system time");
                        s.warned = true;
                    }
                }
            }
        }
        match s.base {
            Some((t, read)) => {
                t + Duration::from_std(read.elapsed()).unwrap_or_else(|_| Duration::zero())
            }
            None => SystemClock.now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_clock_never_goes_back_and_starts_at_its_floor() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let manual = ManualClock::new(at("2031-01-10T00:00:00Z"));
        let clock = MonotonicClock::new(Arc::new(manual.clone()), at("2031-01-12T00:00:00Z"));
        assert_eq!(clock.now(), at("2031-01-12T00:00:00Z"), "the floor");
        manual.set(at("2031-01-14T00:00:00Z"));
        assert_eq!(clock.now(), at("2031-01-14T00:00:00Z"));
        manual.set(at("2031-01-11T00:00:00Z"));
        assert_eq!(
            clock.now(),
            at("2031-01-14T00:00:00Z"),
            "stepped back: holds"
        );
        manual.set(at("2031-01-15T00:00:00Z"));
        assert_eq!(clock.now(), at("2031-01-15T00:00:00Z"));
    }

    #[test]
    fn a_file_clock_follows_its_file_and_moves_on_from_the_time_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        std::fs::write(&path, "2031-01-01T00:00:00Z").unwrap();
        let clock = FileClock::new(&path);
        let first = clock.now();
        let base: DateTime<Utc> = "2031-01-01T00:00:00Z".parse().unwrap();
        assert!(
            first >= base && first < base + Duration::seconds(5),
            "{first}"
        );
        std::fs::write(&path, "2031-01-08T12:00:00Z\n").unwrap();
        std::thread::sleep(FileClock::REREAD * 2);
        let jumped = clock.now();
        let base: DateTime<Utc> = "2031-01-08T12:00:00Z".parse().unwrap();
        assert!(
            jumped >= base && jumped < base + Duration::seconds(5),
            "{jumped}"
        );
        assert!(
            clock.now() >= jumped,
            "moves on, never back, between writes"
        );
    }
}
