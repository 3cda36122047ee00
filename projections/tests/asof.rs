//! Views as of a position or a time equal views of the log's prefix.

mod common;

use chrono::Duration;
use common::*;
use ledger_events::*;
use ledger_projections::*;

/// A small log touching every kind of row, spread over three days.
fn history_log() -> Log {
    let mut log = Log::new();
    let (a, b) = (cnpj(1), cnpj(2));
    log.push(registered(a, "Mercado Bom"));
    log.push(registered(b, "Padaria Sol"));
    log.push(ContractSigned {
        contract_id: contract_id(731),
        cnpj: a,
        starts_on: day(2023, 3, 1),
        ends_on: None,
        interval_days: 30,
        renew_before_days: 3,
    });
    log.push(granted(1, a, Product::EasyCash, day(2023, 3, 30)));
    log.push(granted(2, b, Product::EasyCash, day(2023, 4, 30)));
    log.push(bound(1, 1, Some("192.168.0.198")));
    log.advance(Duration::days(1));
    log.push(checked_in(
        a,
        Product::EasyCash,
        1,
        Some(1),
        None,
        valid(day(2023, 3, 30)),
    ));
    log.push(entered(a, ContingencyKind::Intelliweb, None, None));
    log.push(renewed(1, day(2023, 3, 30), day(2023, 4, 29)));
    log.advance(Duration::days(1));
    log.push(cleared(a, ContingencyKind::Intelliweb, None));
    log.push(unlinked(1, 1));
    log.push(LicenseBlocked {
        license_id: lic(2),
        note: None,
    });
    log.push(bound(2, 4, None));
    log
}

#[test]
fn a_full_rebuild_equals_the_live_view() {
    let log = history_log();
    let rebuilt = rebuild(log.source(), None).expect("rebuild");
    assert_eq!(
        snapshot(&rebuilt, &log.events),
        snapshot(&log.view(), &log.events)
    );
}

#[test]
fn a_rebuild_as_of_each_position_equals_the_view_of_that_prefix() {
    let log = history_log();
    for p in 0..=log.head() + 1 {
        let rebuilt = rebuild(log.source(), Some(AsOf::Position(p))).expect("rebuild");
        let n = (p as usize).min(log.records.len());
        assert_eq!(
            snapshot(&rebuilt, &log.events),
            snapshot(&prefix_view(&log, n), &log.events),
            "as of position {p}"
        );
        assert_eq!(rebuilt.position(), n as u64);
    }
}

#[test]
fn a_rebuild_as_of_a_time_includes_every_record_up_to_that_instant() {
    let log = history_log();
    let times: Vec<_> = log.records.iter().map(|r| r.envelope.recorded_at).collect();
    for (i, t) in times.iter().enumerate() {
        for (probe, expected) in [
            (*t, i + 1),
            (*t - Duration::microseconds(1), i),
            (*t + Duration::milliseconds(500), i + 1),
        ] {
            let rebuilt = rebuild(log.source(), Some(AsOf::Time(probe))).expect("rebuild");
            assert_eq!(
                snapshot(&rebuilt, &log.events),
                snapshot(&prefix_view(&log, expected), &log.events),
                "as of {probe}"
            );
        }
    }
    // "What did the license table look like on 28/03?": before the renewal of the 28th.
    let end_of_first_day = times[0] + Duration::hours(12);
    let view = rebuild(log.source(), Some(AsOf::Time(end_of_first_day))).expect("rebuild");
    let row = view.license(lic(1)).expect("license");
    assert_eq!(row.expires_on, day(2023, 3, 30));
    assert!(row.binding.is_some());
}

#[test]
fn a_rebuild_stops_reading_at_the_cut() {
    let log = history_log();
    let source = log
        .records
        .iter()
        .take(3)
        .cloned()
        .map(Ok)
        .chain(std::iter::repeat_with(|| Err("read past the cut")));
    let view = rebuild(source, Some(AsOf::Position(2))).expect("rebuild");
    assert_eq!(view.position(), 2);
}

#[test]
fn a_failing_source_fails_the_rebuild() {
    let log = history_log();
    let source = log
        .records
        .iter()
        .take(2)
        .cloned()
        .map(Ok)
        .chain(std::iter::once(Err("disk on fire")));
    match rebuild(source, None) {
        Err(RebuildError::Source(e)) => assert_eq!(e, "disk on fire"),
        other => panic!("expected a source error, got {other:?}"),
    }
}

#[test]
fn a_gap_in_the_source_fails_the_rebuild() {
    let log = history_log();
    let source = log
        .source()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, r)| r);
    match rebuild(source, None) {
        Err(RebuildError::Projection(ProjectionError::Gap {
            expected: 5,
            found: 6,
        })) => {}
        other => panic!("expected a gap, got {other:?}"),
    }
}

#[test]
fn an_inconsistent_event_does_not_stop_a_rebuild() {
    let mut log = history_log();
    log.push(LicenseBlocked {
        license_id: lic(99),
        note: None,
    });
    log.push(granted(3, cnpj(1), Product::Notify, day(2023, 5, 1)));
    let view = rebuild(log.source(), None).expect("rebuild");
    assert_eq!(view.position(), log.head());
    assert_eq!(view.inconsistency_count(), 1);
    assert!(view.license(lic(3)).is_some());
}
