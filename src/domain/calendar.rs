//! Days as the shop counts them: every day rule of the manual (expiry, days left, renew-before,
//! the contingency grace, an offline code's last day) is about the customer's local calendar
//! day, never the UTC date. In Brasília (UTC−3) a license that "expira no dia 26/03" sells
//! until 23:59:59 local time on 26/03, which is 02:59:59 UTC on 27/03.
//!
//! A [`Calendar`] is a time zone from the IANA database (`chrono-tz`, so historical offsets
//! and daylight saving are right, not a fixed offset); the deployment's one comes from the
//! configuration (`time_zone`, default [`Calendar::DEFAULT_ZONE`]). Pure: the moment comes in
//! as an argument.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The time zone days are counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    zone: Tz,
}

impl Default for Calendar {
    fn default() -> Self {
        Self::new(Self::DEFAULT_ZONE)
    }
}

impl fmt::Display for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.zone.name())
    }
}

/// A time zone name that is not in the IANA database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a time zone of the IANA database; use a name such as \
     \"America/Sao_Paulo\", \"America/Manaus\" or \"UTC\""
)]
pub struct UnknownZone {
    /// The name given.
    pub name: String,
}

impl FromStr for Calendar {
    type Err = UnknownZone;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        name.trim()
            .parse::<Tz>()
            .map(Self::new)
            .map_err(|_| UnknownZone {
                name: name.to_owned(),
            })
    }
}

impl Calendar {
    /// The calendar of a customer whose own zone is `zone` (its profile), else this one
    /// (the deployment's). A zone the database does not know (it was checked when set)
    /// falls back to this one.
    pub fn for_customer(self, zone: Option<&ledger_events::TimeZoneName>) -> Calendar {
        zone.and_then(|z| z.as_str().parse().ok()).unwrap_or(self)
    }

    /// Where the vendor and most of its customers are: Brasília time.
    pub const DEFAULT_ZONE: Tz = chrono_tz::America::Sao_Paulo;

    /// Days counted in `zone`.
    pub const fn new(zone: Tz) -> Self {
        Self { zone }
    }

    /// The time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The local calendar day at `now`.
    pub fn day(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.zone).date_naive()
    }

    /// The first instant of the local day `day` (its midnight, or the first instant after it
    /// where a daylight-saving change skips midnight).
    pub fn start_of(&self, day: NaiveDate) -> DateTime<Utc> {
        let mut local = day.and_time(NaiveTime::MIN);
        // A gap is at most a few hours; step through it a quarter of an hour at a time.
        for _ in 0..(24 * 4) {
            if let Some(start) = self.zone.from_local_datetime(&local).earliest() {
                return start.with_timezone(&Utc);
            }
            local += chrono::Duration::minutes(15);
        }
        day.and_time(NaiveTime::MIN).and_utc()
    }

    /// The first instant of the local day after the one of `now`: until when a decision
    /// taken by day stays the same.
    pub fn next_day_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.day(now)
            .succ_opt()
            .map_or(DateTime::<Utc>::MAX_UTC, |d| self.start_of(d))
    }

    /// The last microsecond of the local day `day`: when a thing valid "until that day"
    /// stops.
    pub fn end_of(&self, day: NaiveDate) -> DateTime<Utc> {
        let next = day
            .succ_opt()
            .map_or(DateTime::<Utc>::MAX_UTC, |d| self.start_of(d));
        next - chrono::Duration::microseconds(1)
    }

    /// `t` on the local clock, for people: `dd/mm/yyyy HH:MM:SS` as the manual prints times.
    pub fn local_time(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.zone)
            .format("%d/%m/%Y %H:%M:%S")
            .to_string()
    }

    /// [`Self::local_time`] with the offset from UTC: `26/03/2026 21:30:05 -03:00`.
    pub fn local_time_with_offset(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.zone)
            .format("%d/%m/%Y %H:%M:%S %:z")
            .to_string()
    }

    /// `t` in RFC 3339 with the local offset (e.g. `2026-03-26T20:59:00-03:00`).
    pub fn local_rfc3339(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.zone)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn brasilia_days_end_at_three_in_the_morning_utc() {
        let c = Calendar::default();
        assert_eq!(c.day(utc("2026-03-26T23:59:59Z")), day(2026, 3, 26));
        assert_eq!(c.day(utc("2026-03-27T02:59:59Z")), day(2026, 3, 26));
        assert_eq!(c.day(utc("2026-03-27T03:00:00Z")), day(2026, 3, 27));
        assert_eq!(c.start_of(day(2026, 3, 27)), utc("2026-03-27T03:00:00Z"));
        assert_eq!(
            c.next_day_start(utc("2026-03-26T12:00:00Z")),
            utc("2026-03-27T03:00:00Z")
        );
        assert_eq!(
            c.end_of(day(2026, 3, 26)),
            utc("2026-03-27T02:59:59.999999Z")
        );
        assert_eq!(c.day(c.end_of(day(2026, 3, 26))), day(2026, 3, 26));
    }

    #[test]
    fn manaus_is_an_hour_behind_brasilia() {
        let c: Calendar = "America/Manaus".parse().unwrap();
        assert_eq!(c.day(utc("2026-03-27T03:59:59Z")), day(2026, 3, 26));
        assert_eq!(c.day(utc("2026-03-27T04:00:00Z")), day(2026, 3, 27));
        assert_eq!(c.to_string(), "America/Manaus");
    }

    #[test]
    fn a_day_that_starts_in_a_daylight_saving_gap_starts_when_the_clock_resumes() {
        // Brazil still had daylight saving in 2018: clocks jumped from 00:00 to 01:00 on
        // 4 November in São Paulo.
        let c = Calendar::default();
        assert_eq!(c.start_of(day(2018, 11, 4)), utc("2018-11-04T03:00:00Z"));
        assert_eq!(c.day(utc("2018-11-04T02:59:59Z")), day(2018, 11, 3));
    }

    #[test]
    fn unknown_zones_are_refused_with_examples() {
        let e = "America/Brasilia".parse::<Calendar>().unwrap_err();
        assert!(e.to_string().contains("America/Sao_Paulo"), "{e}");
        assert_eq!(
            "UTC"
                .parse::<Calendar>()
                .unwrap()
                .day(utc("2026-03-26T23:00:00Z")),
            day(2026, 3, 26)
        );
    }

    #[test]
    fn local_times_are_printed_on_the_shops_clock() {
        let c = Calendar::default();
        assert_eq!(
            c.local_time(utc("2026-03-27T00:30:05Z")),
            "26/03/2026 21:30:05"
        );
        assert_eq!(
            c.local_time_with_offset(utc("2026-03-27T00:30:05Z")),
            "26/03/2026 21:30:05 -03:00"
        );
        assert_eq!(
            c.local_rfc3339(utc("2026-03-27T00:30:05Z")),
            "2026-03-26T21:30:05-03:00"
        );
    }
}
