//! Write quotas (finding 5 of issue 15): what a terminal or relay token can make the center
//! *write*, bounded per token, per customer and per terminal. Reading is never limited here:
//! a terminal that keeps checking in always gets its signed answer.
//!
//! - **Records per terminal token** ([`QuotaSettings::terminal_records_per_minute`]): every
//!   check-in that would append (a record, a bind, a renewal) counts. Past the quota, a
//!   check-in that would only *record* is answered exactly as decided but not recorded
//!   (logged, counted in `/metrics`); one that would *bind* a license answers 429 with
//!   `Retry-After` (a bind is a write that must not be skipped, and must not happen at any
//!   rate).
//! - **Changes per terminal** ([`QuotaSettings::terminal_changes_per_hour`]): a record that is
//!   due only because the IP or program version changed (not the first sighting, not a new
//!   outcome, not the record interval) counts against the terminal's hourly budget; past it,
//!   the terminal is recorded again only when the interval passes or its outcome changes, so
//!   a terminal flapping between two addresses writes a bounded number of records.
//! - **Unknown terminals per customer** ([`QuotaSettings::unknown_terminals_per_day`]): a
//!   hardware id the center has never recorded for that customer, checking in with a
//!   terminal token, takes one of the customer's places of the (UTC) day; past the cap it
//!   answers 429 with `Retry-After` until the next day.
//! - **Forwarded events per relay token**
//!   ([`QuotaSettings::relay_events_per_minute`]): a forward request is taken while the
//!   token has forwarded fewer events than its quota this minute (all of its events count,
//!   so one window takes at most quota + 499); past it the request answers 429 with
//!   `Retry-After` and nothing of it is decided: the relay keeps the events and forwards them
//!   again after the wait.
//!
//! The quotas apply to the `terminal` and `relay` roles (the tokens that live at the
//! customer's premises); admin and support tokens are the vendor's own and are not limited.
//! Windows are fixed (minute, hour, UTC day) on the server's clock, kept in bounded maps:
//! past [`KEYS_MAX`] keys a map starts over (which only ever lets more through, never
//! refuses a caller that was within its quota).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ledger_events::{Cnpj, HardwareId};

/// Most keys one map tracks at once; past it the map starts over.
pub const KEYS_MAX: usize = 100_000;

/// The quotas' settings (`[quotas]` in the configuration file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Check-ins that append (records, binds, renewals) per terminal token per minute.
    pub terminal_records_per_minute: u32,
    /// Records due only to an IP or program-version change, per terminal per hour.
    pub terminal_changes_per_hour: u32,
    /// Hardware ids never recorded for a customer that may check in with a terminal token,
    /// per customer per UTC day.
    pub unknown_terminals_per_day: u32,
    /// Forwarded events per relay token per minute.
    pub relay_events_per_minute: u32,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            terminal_records_per_minute: 120,
            terminal_changes_per_hour: 12,
            unknown_terminals_per_day: 200,
            relay_events_per_minute: 12_000,
        }
    }
}

/// A window's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// Appending check-ins of a terminal token (its name).
    Records(String),
    /// Change-only records of one terminal.
    Changes(Cnpj, HardwareId),
    /// Forwarded events of a relay token (its name).
    Relay(String),
}

/// Why a write was refused: what to tell the caller, and when to try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverQuota {
    /// What was exceeded, for the answer's message and the log.
    pub message: String,
    /// Seconds until the window ends (`Retry-After`).
    pub retry_after_s: u32,
    /// Whether this is the window's first refusal (logged at `warn`; later ones at `debug`,
    /// so a flood does not flood the log).
    pub first: bool,
}

/// The counters of `/metrics`.
#[derive(Debug, Default)]
pub struct QuotaCounters {
    /// Check-ins answered but not recorded (the token's record quota).
    pub records_skipped_token: AtomicU64,
    /// Check-ins answered but not recorded (the terminal's change budget).
    pub records_skipped_changes: AtomicU64,
    /// Binds refused (429) past the token's record quota.
    pub binds_refused: AtomicU64,
    /// Check-ins of unknown terminals refused (429) past the customer's daily cap.
    pub unknown_terminals_refused: AtomicU64,
    /// Forward requests refused (429) past the relay token's quota.
    pub relay_forwards_refused: AtomicU64,
}

/// The quotas' state: fixed windows per key, and the unknown terminals admitted per
/// customer today.
#[derive(Debug, Default)]
pub struct WriteQuotas {
    /// The settings.
    pub settings: QuotaSettings,
    /// Per key: the window's index, what it counted, and whether a refusal in it was logged.
    windows: DashMap<Key, (i64, u64, bool), ahash::RandomState>,
    /// Per customer: the day, the unknown terminals admitted on it, and whether a refusal on
    /// it was logged.
    unknown: DashMap<Cnpj, (i64, HashSet<HardwareId>, bool), ahash::RandomState>,
    /// What was skipped and refused, for `/metrics`.
    pub counters: QuotaCounters,
}

/// The window of `now` for windows `len` seconds long, and the seconds left in it.
fn window(now: DateTime<Utc>, len: i64) -> (i64, u32) {
    let secs = now.timestamp();
    let index = secs.div_euclid(len);
    let left = len - secs.rem_euclid(len);
    (index, u32::try_from(left).unwrap_or(u32::MAX))
}

impl WriteQuotas {
    /// Quotas with `settings`.
    pub fn new(settings: QuotaSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Counts `n` for `key` in its window of `len` seconds if the key has used less than
    /// `limit` there (a request that starts under the limit is taken whole); else the
    /// seconds left in the window and whether it is the window's first refusal.
    fn take(
        &self,
        key: Key,
        n: u64,
        limit: u32,
        len: i64,
        now: DateTime<Utc>,
    ) -> Result<(), (u32, bool)> {
        let (index, left) = window(now, len);
        if self.windows.len() >= KEYS_MAX {
            self.windows.clear();
        }
        let mut w = self.windows.entry(key).or_insert((index, 0, false));
        if w.0 != index {
            *w = (index, 0, false);
        }
        if w.1 >= u64::from(limit) {
            let first = !w.2;
            w.2 = true;
            return Err((left, first));
        }
        w.1 = w.1.saturating_add(n);
        Ok(())
    }

    /// Whether a check-in by terminal token `token` may append now (one counted if so).
    pub fn take_record(&self, token: &str, now: DateTime<Utc>) -> Result<(), OverQuota> {
        let limit = self.settings.terminal_records_per_minute;
        self.take(Key::Records(token.to_owned()), 1, limit, 60, now)
            .map_err(|(retry_after_s, first)| OverQuota {
                first,
                message: format!(
                    "this terminal token made {limit} recorded check-ins this minute \
                     (terminal_records_per_minute); a new terminal can bind a license again \
                     after the wait; retry later"
                ),
                retry_after_s,
            })
    }

    /// Whether terminal `hardware_id` of `cnpj` may have a record due only to a changed IP or
    /// program version (one counted if so); if not, whether it is the hour's first refusal.
    pub fn take_change(
        &self,
        cnpj: Cnpj,
        hardware_id: HardwareId,
        now: DateTime<Utc>,
    ) -> Result<(), bool> {
        let limit = self.settings.terminal_changes_per_hour;
        self.take(Key::Changes(cnpj, hardware_id), 1, limit, 3600, now)
            .map_err(|(_, first)| first)
    }

    /// Whether the unknown terminal `hardware_id` may check in for `cnpj` today (the
    /// customer's local day on `calendar`): it is one of the customer's places of the day
    /// already, or takes a free one.
    pub fn admit_unknown(
        &self,
        cnpj: Cnpj,
        hardware_id: HardwareId,
        now: DateTime<Utc>,
        calendar: crate::domain::Calendar,
    ) -> Result<(), OverQuota> {
        let cap = self.settings.unknown_terminals_per_day;
        let day = i64::from(chrono::Datelike::num_days_from_ce(&calendar.day(now)));
        let left = u32::try_from((calendar.next_day_start(now) - now).num_seconds().max(1))
            .unwrap_or(u32::MAX);
        if self.unknown.len() >= KEYS_MAX {
            self.unknown.clear();
        }
        let mut entry = self
            .unknown
            .entry(cnpj)
            .or_insert_with(|| (day, HashSet::new(), false));
        if entry.0 != day {
            *entry = (day, HashSet::new(), false);
        }
        if entry.1.contains(&hardware_id) {
            return Ok(());
        }
        if entry.1.len() >= cap as usize {
            let first = !entry.2;
            entry.2 = true;
            return Err(OverQuota {
                first,
                message: format!(
                    "customer {cnpj} has had {cap} new terminals check in today \
                     (unknown_terminals_per_day); retry later"
                ),
                retry_after_s: left,
            });
        }
        entry.1.insert(hardware_id);
        Ok(())
    }

    /// Whether relay token `token` may forward `events` events now (counted if so).
    pub fn take_forward(
        &self,
        token: &str,
        events: usize,
        now: DateTime<Utc>,
    ) -> Result<(), OverQuota> {
        let limit = self.settings.relay_events_per_minute;
        let n = u64::try_from(events).unwrap_or(u64::MAX);
        self.take(Key::Relay(token.to_owned()), n, limit, 60, now)
            .map_err(|(retry_after_s, first)| OverQuota {
                first,
                message: format!(
                    "this relay token forwarded {limit} events this minute \
                     (relay_events_per_minute); nothing of this request was decided, \
                     forward it again after the wait"
                ),
                retry_after_s,
            })
    }
}

/// Adds one to `counter`.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2031, 5, 6, h, m, s).unwrap()
    }

    #[test]
    fn a_token_is_refused_past_its_quota_until_the_window_ends_and_others_are_not() {
        let q = WriteQuotas::new(QuotaSettings {
            terminal_records_per_minute: 3,
            ..QuotaSettings::default()
        });
        for _ in 0..3 {
            assert!(q.take_record("a", at(10, 0, 15)).is_ok());
        }
        let over = q.take_record("a", at(10, 0, 15)).unwrap_err();
        assert_eq!(over.retry_after_s, 45);
        assert!(q.take_record("b", at(10, 0, 15)).is_ok());
        assert!(q.take_record("a", at(10, 1, 0)).is_ok(), "a new minute");
    }

    #[test]
    fn a_forward_is_taken_whole_while_under_the_quota() {
        let q = WriteQuotas::new(QuotaSettings {
            relay_events_per_minute: 100,
            ..QuotaSettings::default()
        });
        assert!(q.take_forward("r", 99, at(10, 0, 0)).is_ok());
        assert!(q.take_forward("r", 200, at(10, 0, 1)).is_ok(), "99 < 100");
        assert!(q.take_forward("r", 1, at(10, 0, 2)).is_err());
    }

    #[test]
    fn unknown_terminals_are_capped_per_customer_per_day_and_an_admitted_one_stays_admitted() {
        let q = WriteQuotas::new(QuotaSettings {
            unknown_terminals_per_day: 2,
            ..QuotaSettings::default()
        });
        let cnpj = Cnpj::parse("11222333000181").unwrap();
        let other = Cnpj::parse("11444777000161").unwrap();
        let hw = |n: u8| HardwareId::parse(&format!("50026B77825EEC{n:02X}")).unwrap();
        // Days are Brasília's: 02:00 UTC is 23:00 of the day before there.
        let brasilia = crate::domain::Calendar::default();
        let admit = |hw: HardwareId, cnpj: Cnpj, t| q.admit_unknown(cnpj, hw, t, brasilia);
        assert!(admit(hw(1), cnpj, at(2, 0, 0)).is_ok());
        assert!(admit(hw(2), cnpj, at(2, 0, 0)).is_ok());
        assert!(admit(hw(1), cnpj, at(2, 0, 1)).is_ok(), "again");
        let over = admit(hw(3), cnpj, at(2, 0, 0)).unwrap_err();
        assert_eq!(over.retry_after_s, 3600, "until local midnight");
        assert!(admit(hw(3), other, at(2, 0, 0)).is_ok());
        assert!(
            admit(hw(3), cnpj, at(0, 0, 0)).is_err(),
            "00:00 UTC is 21:00 of the same local day"
        );
        assert!(admit(hw(3), cnpj, at(3, 0, 0)).is_ok(), "a new local day");
    }

    #[test]
    fn a_terminal_has_a_budget_of_changes_per_hour() {
        let q = WriteQuotas::new(QuotaSettings {
            terminal_changes_per_hour: 2,
            ..QuotaSettings::default()
        });
        let cnpj = Cnpj::parse("11222333000181").unwrap();
        let hw = HardwareId::parse("50026B77825EEC01").unwrap();
        assert!(q.take_change(cnpj, hw, at(10, 0, 0)).is_ok());
        assert!(q.take_change(cnpj, hw, at(10, 30, 0)).is_ok());
        assert_eq!(q.take_change(cnpj, hw, at(10, 59, 0)), Err(true));
        assert_eq!(q.take_change(cnpj, hw, at(10, 59, 1)), Err(false));
        assert!(q.take_change(cnpj, hw, at(11, 0, 0)).is_ok());
    }
}
