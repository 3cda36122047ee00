//! The store conformance suite: the behaviour every [`EventStore`] backend must show,
//! written once against the trait.
//!
//! A backend's test file provides a function that builds a fresh, empty store on a given
//! clock and invokes [`store_conformance_tests!`](crate::store_conformance_tests), which
//! expands to one `#[tokio::test]` per check below. Each check panics with a message saying
//! which rule broke.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use ledger_events::{
    verify_chain, Actor, ChainHead, Cnpj, Event, Hash, LicenseGranted, LicenseId, Product,
    Resources, StreamId,
};
use uuid::Uuid;

use super::{EventStore, ExpectedVersion, NewEvent, StoreError, APPEND_EVENTS_MAX};
use crate::clock::ManualClock;

/// A fresh store under test, with whatever must live as long as it (a temporary directory,
/// a database schema).
pub struct Harness {
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// The clock the store was built with.
    pub clock: ManualClock,
    /// Dropped after the test.
    pub guard: Box<dyn Any + Send>,
}

/// The moment tests start at: the manual's log line `27/03/2023 17:31:32`.
pub fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 3, 27, 17, 31, 32)
        .single()
        .unwrap_or_default()
}

/// A CNPJ with valid check digits, for tests.
pub fn test_cnpj() -> Cnpj {
    Cnpj::parse("11222333000181").unwrap_or_else(|e| panic!("test CNPJ: {e}"))
}

/// A grant of license `n` (1..=999999), distinct per `n`.
pub fn sample_event(n: u32) -> Event {
    let license_id = LicenseId::new(n % 999_999 + 1).unwrap_or_else(|e| panic!("{e}"));
    LicenseGranted {
        license_id,
        cnpj: test_cnpj(),
        product: Product::EasyCash,
        contract_id: None,
        expires_on: chrono::NaiveDate::from_ymd_opt(2023, 5, 1).unwrap_or_default(),
        resources: Resources::default(),
    }
    .into()
}

/// A new event with a fresh id.
pub fn new_event(n: u32) -> NewEvent {
    NewEvent::new(sample_event(n), operator(), Uuid::now_v7())
}

/// The operator used by tests.
pub fn operator() -> Actor {
    Actor::operator("suporte").unwrap_or_else(|e| panic!("{e}"))
}

/// A stream id for tests.
pub fn stream(name: &str) -> StreamId {
    StreamId::parse(&format!("test-{name}")).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes a file log in `dir` on a manual clock at [`start_time`]: `count` events appended
/// one at a time, event `n` to the stream `streams[n % streams.len()]`. Returns its records
/// (the first 1,000 at most) and closes the store.
pub async fn file_log(
    dir: &std::path::Path,
    count: u32,
    streams: &[&str],
) -> Vec<ledger_events::Record> {
    let store = super::file::FileStore::open(
        super::file::FileStoreConfig::new(dir),
        Arc::new(ManualClock::new(start_time())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..count {
        let name = streams[n as usize % streams.len()];
        store
            .append(&stream(name), ExpectedVersion::Any, vec![new_event(n)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let records = store
        .read_all(1, 1_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.close().await.unwrap_or_else(|e| panic!("{e}"));
    records
}

/// Expands to one test per conformance check. `$make` is an async function
/// `fn(ManualClock) -> Harness` building a fresh empty store.
///
/// For a backend that needs something from outside (a database), write
/// `store_conformance_tests!(optional make)` with `make` returning `Option<Harness>`: when it
/// returns `None` (after saying why on stderr) the test prints that it was skipped and ends.
#[macro_export]
macro_rules! store_conformance_tests {
    (optional $make:path) => {
        $crate::store_conformance_tests!(@list optional $make);
    };
    (@list $mode:ident $make:path) => {
        $crate::store_conformance_tests!(@each $mode $make,
            append_then_read_stream_returns_events_in_order,
            read_all_returns_every_stream_in_position_order,
            expected_version_is_enforced_and_conflicts_report_the_actual_version,
            a_retry_with_the_same_event_ids_returns_the_original_positions,
            event_ids_stored_elsewhere_are_refused,
            empty_oversized_and_self_duplicating_appends_are_refused,
            head_is_the_last_position_and_its_hash,
            every_record_chains_to_its_predecessor,
            exactly_one_of_sixteen_concurrent_writers_wins_each_version,
            subscription_hands_over_from_catch_up_to_live_without_gap_or_duplicate,
            recorded_at_never_goes_backwards_when_the_clock_does,
            reads_past_the_end_and_of_unknown_streams_are_empty,
        );
    };
    (@each required $make:path, $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let clock = $crate::clock::ManualClock::new($crate::store::conformance::start_time());
                let harness = $make(clock).await;
                $crate::store::conformance::$name(&harness).await;
            }
        )+
    };
    (@each optional $make:path, $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let clock = $crate::clock::ManualClock::new($crate::store::conformance::start_time());
                let Some(harness) = $make(clock).await else {
                    eprintln!("{}: skipped", stringify!($name));
                    return;
                };
                $crate::store::conformance::$name(&harness).await;
            }
        )+
    };
    ($make:path) => {
        $crate::store_conformance_tests!(@list required $make);
    };
}

/// Appended events read back from their stream in order, with versions and positions.
pub async fn append_then_read_stream_returns_events_in_order(h: &Harness) {
    let s = stream("a");
    let events: Vec<NewEvent> = (1..=3).map(new_event).collect();
    let appended = h
        .store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap_or_else(|e| panic!("append to a new stream: {e}"));
    assert_eq!(appended.positions, 1..=3);
    assert_eq!(appended.stream_version, 3);
    assert!(!appended.was_retry);
    let read = h
        .store
        .read_stream(&s, 1, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.len(), 3);
    for (i, (record, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(record.envelope.stream_version, i as u64 + 1);
        assert_eq!(record.envelope.position, i as u64 + 1);
        assert_eq!(record.envelope.event_id, sent.event_id);
        assert_eq!(record.envelope.stream_id, s);
        assert_eq!(record.envelope.actor, sent.actor);
        assert_eq!(record.envelope.correlation_id, sent.correlation_id);
        assert_eq!(record.envelope.event_type, sent.event.event_type());
        assert_eq!(record.event().unwrap_or_else(|e| panic!("{e}")), sent.event);
    }
    let tail = h
        .store
        .read_stream(&s, 2, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].envelope.stream_version, 2);
    assert_eq!(
        h.store
            .stream_version(&s)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        3
    );
}

/// The global log interleaves streams in position order, densely.
pub async fn read_all_returns_every_stream_in_position_order(h: &Harness) {
    let (a, b) = (stream("a"), stream("b"));
    for (s, n) in [(&a, 1), (&b, 2), (&a, 3), (&b, 4), (&a, 5)] {
        h.store
            .append(s, ExpectedVersion::Any, vec![new_event(n)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let all = h
        .store
        .read_all(1, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let positions: Vec<u64> = all.iter().map(|r| r.envelope.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
    let streams: Vec<&str> = all.iter().map(|r| r.envelope.stream_id.as_str()).collect();
    assert_eq!(
        streams,
        vec!["test-a", "test-b", "test-a", "test-b", "test-a"]
    );
    let versions: Vec<u64> = all.iter().map(|r| r.envelope.stream_version).collect();
    assert_eq!(versions, vec![1, 1, 2, 2, 3]);
    let page = h
        .store
        .read_all(2, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let positions: Vec<u64> = page.iter().map(|r| r.envelope.position).collect();
    assert_eq!(positions, vec![2, 3]);
    // By positions: the records asked for that are stored, ascending, equal to read_all's.
    let some = h
        .store
        .read_positions(&[1, 3, 5, 6, 99])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let expected: Vec<_> = all
        .iter()
        .filter(|r| [1, 3, 5].contains(&r.envelope.position))
        .cloned()
        .collect();
    assert_eq!(some, expected);
    assert!(h
        .store
        .read_positions(&[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
}

/// `NoStream`, `Exact` and `Any` behave as documented; a conflict names the actual version.
pub async fn expected_version_is_enforced_and_conflicts_report_the_actual_version(h: &Harness) {
    let s = stream("v");
    h.store
        .append(&s, ExpectedVersion::Exact(0), vec![new_event(1)])
        .await
        .unwrap_or_else(|e| panic!("Exact(0) on a new stream: {e}"));
    match h
        .store
        .append(&s, ExpectedVersion::NoStream, vec![new_event(2)])
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual, stream, .. }) => {
            assert_eq!(actual, 1);
            assert_eq!(stream, s);
        }
        other => panic!("NoStream on an existing stream must conflict, got {other:?}"),
    }
    match h
        .store
        .append(&s, ExpectedVersion::Exact(5), vec![new_event(3)])
        .await
    {
        Err(StoreError::WrongExpectedVersion {
            actual, expected, ..
        }) => {
            assert_eq!(actual, 1);
            assert_eq!(expected, ExpectedVersion::Exact(5));
        }
        other => panic!("Exact(5) at version 1 must conflict, got {other:?}"),
    }
    let ok = h
        .store
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![new_event(4), new_event(5)],
        )
        .await
        .unwrap_or_else(|e| panic!("Exact(1) at version 1: {e}"));
    assert_eq!(ok.stream_version, 3);
    let any = h
        .store
        .append(&s, ExpectedVersion::Any, vec![new_event(6)])
        .await
        .unwrap_or_else(|e| panic!("Any: {e}"));
    assert_eq!(any.stream_version, 4);
    assert_eq!(
        any.positions,
        4..=4,
        "refused appends must not use positions"
    );
}

/// Retrying an append (same ids, same stream) answers with the first answer's positions and
/// stores nothing new, even when the retry's expected version is now stale.
pub async fn a_retry_with_the_same_event_ids_returns_the_original_positions(h: &Harness) {
    let s = stream("r");
    h.store
        .append(&s, ExpectedVersion::Any, vec![new_event(1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = vec![new_event(2), new_event(3)];
    let first = h
        .store
        .append(&s, ExpectedVersion::Exact(1), batch.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = h.store.head().await.unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2 {
        let again = h
            .store
            .append(&s, ExpectedVersion::Exact(1), batch.clone())
            .await
            .unwrap_or_else(|e| panic!("retry must succeed: {e}"));
        assert_eq!(again.positions, first.positions);
        assert_eq!(again.stream_version, first.stream_version);
        assert!(again.was_retry);
    }
    assert_eq!(h.store.head().await.unwrap_or_else(|e| panic!("{e}")), head);
    let read = h
        .store
        .read_stream(&s, 1, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.len(), 3, "a retry must not duplicate events");
}

/// An id already stored in another append (partly, or in another stream) is refused.
pub async fn event_ids_stored_elsewhere_are_refused(h: &Harness) {
    let (s, t) = (stream("s"), stream("t"));
    let e1 = new_event(1);
    h.store
        .append(&s, ExpectedVersion::Any, vec![e1.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match h
        .store
        .append(&t, ExpectedVersion::Any, vec![e1.clone()])
        .await
    {
        Err(StoreError::DuplicateEventId { event_id, position }) => {
            assert_eq!(event_id, e1.event_id);
            assert_eq!(position, 1);
        }
        other => panic!("same id in another stream must be refused, got {other:?}"),
    }
    match h
        .store
        .append(&s, ExpectedVersion::Any, vec![new_event(2), e1.clone()])
        .await
    {
        Err(StoreError::DuplicateEventId { .. }) => {}
        other => panic!("a batch mixing new and stored ids must be refused, got {other:?}"),
    }
    match h
        .store
        .append(&s, ExpectedVersion::Any, vec![e1.clone(), new_event(3)])
        .await
    {
        Err(StoreError::DuplicateEventId { .. }) => {}
        other => panic!("a stored id followed by a new one must be refused, got {other:?}"),
    }
    assert_eq!(
        h.store
            .head()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .position,
        1
    );
}

/// Empty appends, appends over the limit, and a batch repeating an id are caller errors.
pub async fn empty_oversized_and_self_duplicating_appends_are_refused(h: &Harness) {
    let s = stream("x");
    assert!(matches!(
        h.store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::InvalidAppend(_))
    ));
    let too_many: Vec<NewEvent> = (0..=APPEND_EVENTS_MAX as u32).map(new_event).collect();
    assert!(matches!(
        h.store.append(&s, ExpectedVersion::Any, too_many).await,
        Err(StoreError::InvalidAppend(_))
    ));
    let e = new_event(1);
    assert!(matches!(
        h.store
            .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
            .await,
        Err(StoreError::InvalidAppend(_))
    ));
    assert_eq!(
        h.store.head().await.unwrap_or_else(|e| panic!("{e}")),
        ChainHead::default()
    );
}

/// The head is (0, zeros) when empty, then the last record's position and hash.
pub async fn head_is_the_last_position_and_its_hash(h: &Harness) {
    let empty = h.store.head().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty.position, 0);
    assert_eq!(empty.hash, Hash::ZERO);
    for n in 1..=4 {
        h.store
            .append(&stream("h"), ExpectedVersion::Any, vec![new_event(n)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let head = h.store.head().await.unwrap_or_else(|e| panic!("{e}"));
    let last = h
        .store
        .read_all(4, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head.position, 4);
    assert_eq!(head.hash, last[0].envelope.hash);
}

/// Reading everything back gives a chain that verifies from genesis to the head.
pub async fn every_record_chains_to_its_predecessor(h: &Harness) {
    for n in 0..30u32 {
        let s = stream(&format!("c{}", n % 4));
        let batch: Vec<NewEvent> = (0..(n % 3 + 1)).map(|k| new_event(n * 10 + k)).collect();
        h.store
            .append(&s, ExpectedVersion::Any, batch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let all = h
        .store
        .read_all(1, 10_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all[0].envelope.prev_hash, Hash::ZERO);
    let encoded: Vec<Vec<u8>> = all
        .iter()
        .map(|r| r.encode().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let head = verify_chain(encoded.iter().map(Vec::as_slice)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head, h.store.head().await.unwrap_or_else(|e| panic!("{e}")));
}

/// Sixteen writers race for each version of one stream: exactly one wins each round, the
/// others learn the version that beat them.
pub async fn exactly_one_of_sixteen_concurrent_writers_wins_each_version(h: &Harness) {
    const WRITERS: usize = 16;
    const ROUNDS: u64 = 20;
    let s = stream("race");
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = h.store.clone();
        let barrier = barrier.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                let event = new_event((w as u32) * 1000 + round as u32);
                match store
                    .append(&s, ExpectedVersion::Exact(round), vec![event])
                    .await
                {
                    Ok(a) => {
                        assert_eq!(a.stream_version, round + 1);
                        wins.push(round);
                    }
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        assert_eq!(actual, round + 1, "a loser must see the winner's version")
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
                // Everyone sees the round's result before the next round starts.
                barrier.wait().await;
            }
            wins
        }));
    }
    let mut winners_per_round = vec![0usize; ROUNDS as usize];
    for t in tasks {
        for round in t.await.unwrap_or_else(|e| panic!("writer task: {e}")) {
            winners_per_round[round as usize] += 1;
        }
    }
    assert!(
        winners_per_round.iter().all(|&n| n == 1),
        "winners per round: {winners_per_round:?}"
    );
    let records = h
        .store
        .read_stream(&s, 1, 1000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let versions: Vec<u64> = records.iter().map(|r| r.envelope.stream_version).collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>());
}

/// A subscription started before concurrent appends delivers every record once, in order,
/// across the switch from stored records to new ones.
pub async fn subscription_hands_over_from_catch_up_to_live_without_gap_or_duplicate(h: &Harness) {
    const BEFORE: u32 = 150;
    const DURING: u32 = 400;
    for n in 0..BEFORE {
        h.store
            .append(
                &stream(&format!("p{}", n % 7)),
                ExpectedVersion::Any,
                vec![new_event(n)],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut from_start = h.store.subscribe_all(1);
    let mut from_middle = h.store.subscribe_all(100);
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let store = h.store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..DURING / 4 {
                let s = stream(&format!("w{w}"));
                store
                    .append(
                        &s,
                        ExpectedVersion::Any,
                        vec![new_event(10_000 + w * 1000 + n)],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let total = u64::from(BEFORE + DURING);
    let mut seen = BTreeSet::new();
    let mut expected = 1;
    while expected <= total {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), from_start.next())
            .await
            .unwrap_or_else(|_| panic!("subscription stalled at position {expected}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.envelope.position, expected, "gap or duplicate");
        assert!(seen.insert(r.envelope.event_id), "duplicate event id");
        expected += 1;
    }
    for p in 100..=total {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), from_middle.next())
            .await
            .unwrap_or_else(|_| panic!("middle subscription stalled at {p}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.envelope.position, p);
    }
    for w in writers {
        w.await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Nothing more is delivered until something more is appended.
    let idle = tokio::time::timeout(std::time::Duration::from_millis(100), from_start.next()).await;
    assert!(
        idle.is_err(),
        "subscription delivered a record that was never appended"
    );
    let last = h
        .store
        .append(&stream("late"), ExpectedVersion::Any, vec![new_event(99)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = from_start.next().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.envelope.position, *last.positions.start());
}

/// When the clock jumps backwards, `recorded_at` holds still instead of going back, so the
/// log stays ordered in time too.
pub async fn recorded_at_never_goes_backwards_when_the_clock_does(h: &Harness) {
    let s = stream("t");
    h.store
        .append(&s, ExpectedVersion::Any, vec![new_event(1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.clock.advance(Duration::hours(-5));
    h.store
        .append(&s, ExpectedVersion::Any, vec![new_event(2)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.clock.advance(Duration::hours(6));
    h.store
        .append(&s, ExpectedVersion::Any, vec![new_event(3)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = h
        .store
        .read_stream(&s, 1, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r[0].envelope.recorded_at, start_time());
    assert_eq!(r[1].envelope.recorded_at, start_time());
    assert_eq!(r[2].envelope.recorded_at, start_time() + Duration::hours(1));
}

/// Reading past the head, or a stream nobody wrote, returns nothing (not an error).
pub async fn reads_past_the_end_and_of_unknown_streams_are_empty(h: &Harness) {
    h.store
        .append(&stream("e"), ExpectedVersion::Any, vec![new_event(1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(h
        .store
        .read_all(2, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    assert!(h
        .store
        .read_stream(&stream("nobody"), 1, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    assert!(h
        .store
        .read_stream(&stream("e"), 2, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    assert_eq!(
        h.store
            .stream_version(&stream("nobody"))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        0
    );
    let zero = h
        .store
        .read_all(0, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(zero.len(), 1, "position 0 reads from the beginning");
}
