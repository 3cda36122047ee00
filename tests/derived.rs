//! Derived data changes nothing: the log index and the snapshots (`<data_dir>/derived`) are
//! disposable. On a seeded history with every kind of event, the Histórico of every license,
//! searches by customer, category and type, and the read models as of many positions are
//! byte-identical whether the ledger resumed from a snapshot, rebuilt everything after the
//! derived data was deleted, or found it damaged; a damaged piece is rebuilt, never served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger_events::{LicenseId, Position, EVENT_TYPES};
use ledger_projections::asof::AsOf;
use license_ledger::app::{Ledger, LedgerConfig};
use license_ledger::clock::ManualClock;
use license_ledger::derived::index::Filter;
use license_ledger::derived::DerivedConfig;
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, Maintenance};

#[path = "../benches/load/seeder.rs"]
mod seeder;

use seeder::{History, SeedParams};

/// A checkpoint every this many records: several over the seeded log.
const CHECKPOINT_EVERY: u64 = 97;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-15T12:34:56Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Seeds 3 customers × 4 licenses with 30 days of history and every incident kind.
async fn seed(dir: &Path) {
    let params = SeedParams {
        customers: 3,
        per_customer: 4,
        history: Some(History {
            unlinks_per_mille_month: 300.0,
            blocks_per_mille_month: 300.0,
            offline_per_mille_month: 300.0,
            contingencies_per_mille_month: 300.0,
            ip_changes_per_mille_month: 3000.0,
            workers: 2,
            in_flight: 3,
            ..History::new(30)
        }),
    };
    let csv = dir.join("terminals.csv");
    seeder::seed(
        dir.join("data").to_str().unwrap(),
        csv.to_str().unwrap(),
        &params,
        now(),
    )
    .await
    .unwrap();
}

fn derived_dir(dir: &Path) -> PathBuf {
    dir.join("derived")
}

async fn open(dir: &Path) -> (FileStore, Ledger) {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
    let clock = Arc::new(ManualClock::new(now()));
    let store = FileStore::open(FileStoreConfig::new(dir.join("data")), clock.clone())
        .await
        .unwrap();
    let config = LedgerConfig {
        derived: DerivedConfig {
            dir: Some(derived_dir(dir)),
            checkpoint_every: CHECKPOINT_EVERY,
            ..DerivedConfig::default()
        },
        ..LedgerConfig::default()
    };
    let ledger = Ledger::start(Arc::new(store.clone()), clock, config)
        .await
        .unwrap();
    (store, ledger)
}

async fn close(store: FileStore, ledger: Ledger) {
    ledger.shutdown().await;
    drop(ledger);
    store.close().await.unwrap();
}

/// Everything the derived data answers, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Answers {
    table: Vec<u8>,
    histories: BTreeMap<u32, (usize, Vec<Position>)>,
    searches: BTreeMap<String, Vec<Position>>,
    as_of: BTreeMap<Position, Vec<u8>>,
}

/// The searches compared, by name: every customer and none, times every event type, none,
/// and a pair of types.
fn filters(view: &ledger_projections::view::LedgerView) -> Vec<(String, Filter)> {
    let mut out = Vec::new();
    let customers: Vec<_> = view.customers().iter().map(|c| c.cnpj).collect();
    for customer in customers.into_iter().map(Some).chain([None]) {
        for event_types in EVENT_TYPES
            .iter()
            .map(|(t, _)| Some(vec![(*t).to_owned()]))
            .chain([
                None,
                Some(vec!["LicenseBound".into(), "LicenseUnlinked".into()]),
            ])
        {
            out.push((
                format!("{customer:?} {event_types:?}"),
                Filter {
                    event_types,
                    customer,
                },
            ));
        }
    }
    out
}

/// Pages through a search to its end, checking each page's limit.
fn search_all(ledger: &Ledger, filter: &Filter, head: Position) -> Vec<Position> {
    let mut all = Vec::new();
    let mut hi = head;
    loop {
        let page = ledger.search(filter, 1, hi, 7).unwrap();
        assert!(page.positions.len() <= 7);
        all.extend(&page.positions);
        match page.next_before {
            Some(before) => hi = before - 1,
            None => return all,
        }
    }
}

async fn answers(ledger: &Ledger) -> Answers {
    let head = ledger.head().await.unwrap().position;
    assert!(
        head > 3 * CHECKPOINT_EVERY,
        "the seeded log is too short: {head}"
    );
    let table = ledger.view().encode_snapshot();
    let mut histories = BTreeMap::new();
    let max = ledger.view().max_license_id().unwrap().get();
    for id in 1..=max {
        let id = LicenseId::new(id).unwrap();
        let (total, records) = ledger.history(id, 0, usize::MAX).await.unwrap();
        let positions: Vec<Position> = records.iter().map(|r| r.envelope.position).collect();
        assert_eq!(total, positions.len());
        // A second page equals the tail of the whole list.
        let (_, page) = ledger.history(id, 2, 3).await.unwrap();
        let page: Vec<Position> = page.iter().map(|r| r.envelope.position).collect();
        assert_eq!(
            page,
            positions
                .iter()
                .skip(2)
                .take(3)
                .copied()
                .collect::<Vec<_>>()
        );
        histories.insert(id.get(), (total, positions));
    }
    let mut searches = BTreeMap::new();
    for (name, filter) in filters(ledger.view()) {
        searches.insert(name, search_all(ledger, &filter, head));
    }
    let mut as_of = BTreeMap::new();
    for p in [
        1,
        CHECKPOINT_EVERY - 1,
        CHECKPOINT_EVERY,
        CHECKPOINT_EVERY + 1,
        2 * CHECKPOINT_EVERY + 13,
        head - 1,
        head,
    ] {
        let view = ledger.view_as_of(AsOf::Position(p)).await.unwrap();
        assert_eq!(view.position(), p);
        // One license as of p, from its own Histórico, equals its row in the whole view.
        for id in 1..=max {
            let id = LicenseId::new(id).unwrap();
            let alone = ledger.license_as_of(id, AsOf::Position(p)).await.unwrap();
            assert_eq!(alone, view.license(id), "license {id} as of {p}");
        }
        as_of.insert(p, view.encode_snapshot());
    }
    // One license alone, folded from its changes, newest check-in and newest IP, equals its
    // row in the whole view at every seventh position (check-ins with and without an IP,
    // binds, unlinks, blocks and renewals between them).
    for p in (1..=head).step_by(7) {
        let view = ledger.view_as_of(AsOf::Position(p)).await.unwrap();
        for id in 1..=max {
            let id = LicenseId::new(id).unwrap();
            let alone = ledger.license_as_of(id, AsOf::Position(p)).await.unwrap();
            assert_eq!(alone, view.license(id), "license {id} as of {p}");
        }
    }
    Answers {
        table,
        histories,
        searches,
        as_of,
    }
}

/// The answers of a fold of the whole log with no derived data at all, computed here the
/// slow way: the reference the derived answers must equal.
async fn reference(dir: &Path) -> Answers {
    let store = FileStore::open(
        FileStoreConfig::new(dir.join("data")),
        Arc::new(ManualClock::new(now())),
    )
    .await
    .unwrap();
    let head = store.head().await.unwrap().position;
    let mut records = Vec::new();
    let mut next = 1;
    while next <= head {
        let batch = store.read_all(next, 1000).await.unwrap();
        next = batch.last().unwrap().envelope.position + 1;
        records.extend(batch);
    }
    store.close().await.unwrap();
    let fold = |until: Position| {
        ledger_projections::asof::rebuild(
            records
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
            Some(AsOf::Position(until)),
        )
        .unwrap()
    };
    // Histórico: the positions the view notes for each license, newest first.
    let view = ledger_projections::view::LedgerView::new();
    let mut histories: BTreeMap<u32, Vec<Position>> = BTreeMap::new();
    let mut customer_of = BTreeMap::new();
    for r in &records {
        if let Ok(Some(id)) = view.apply_record_noting(r) {
            histories
                .entry(id.get())
                .or_default()
                .push(r.envelope.position);
        }
        customer_of.insert(r.envelope.position, view.customer_of(&r.event().unwrap()));
    }
    let histories = histories
        .into_iter()
        .map(|(id, mut ps)| {
            ps.reverse();
            (id, (ps.len(), ps))
        })
        .collect();
    let mut searches = BTreeMap::new();
    for (name, filter) in filters(&view) {
        let hits: Vec<Position> = records
            .iter()
            .rev()
            .filter(|r| {
                filter
                    .event_types
                    .as_ref()
                    .is_none_or(|ts| ts.contains(&r.envelope.event_type))
                    && filter
                        .customer
                        .is_none_or(|c| customer_of[&r.envelope.position] == Some(c))
            })
            .map(|r| r.envelope.position)
            .collect();
        searches.insert(name, hits);
    }
    let mut as_of = BTreeMap::new();
    for p in [
        1,
        CHECKPOINT_EVERY - 1,
        CHECKPOINT_EVERY,
        CHECKPOINT_EVERY + 1,
        2 * CHECKPOINT_EVERY + 13,
        head - 1,
        head,
    ] {
        as_of.insert(p, fold(p).encode_snapshot());
    }
    Answers {
        table: fold(head).encode_snapshot(),
        histories,
        searches,
        as_of,
    }
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(derived_dir(dir).join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_same_from_snapshots_from_nothing_and_after_damage() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let truth = reference(dir.path()).await;

    // First start: nothing derived yet; everything is built from the log.
    let (store, ledger) = open(dir.path()).await;
    assert_eq!(ledger.resumed_from(), 0);
    let head = ledger.head().await.unwrap().position;
    assert_eq!(
        answers(&ledger).await,
        truth,
        "first start, built from the log"
    );
    close(store, ledger).await;
    let files = snapshot_files(dir.path());
    assert!(
        files.len() >= 3,
        "checkpoints every {CHECKPOINT_EVERY} records and one at the stop: {files:?}"
    );

    // Restart: resumes from the snapshot left at the stop, applies nothing.
    let (store, ledger) = open(dir.path()).await;
    assert_eq!(
        ledger.resumed_from(),
        head,
        "resumed from the stop's snapshot"
    );
    assert_eq!(answers(&ledger).await, truth, "resumed from a snapshot");
    close(store, ledger).await;

    // Every snapshot damaged by one flipped byte: none is used, the answers are the same.
    for file in snapshot_files(dir.path()) {
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
    }
    let (store, ledger) = open(dir.path()).await;
    assert_eq!(ledger.resumed_from(), 0, "a damaged snapshot is never used");
    assert_eq!(answers(&ledger).await, truth, "after damaged snapshots");
    close(store, ledger).await;

    // A snapshot that is intact but names another log's record: rejected by the chain.
    let last = snapshot_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[16] ^= 0x01; // the chain hash in the header: the digest covers only the body
    std::fs::write(&last, bytes).unwrap();
    let (store, ledger) = open(dir.path()).await;
    assert!(
        ledger.resumed_from() < head,
        "a snapshot the log does not confirm is not used"
    );
    assert_eq!(
        answers(&ledger).await,
        truth,
        "after a snapshot of another chain"
    );
    close(store, ledger).await;

    // Everything derived deleted: rebuilt, same answers.
    std::fs::remove_dir_all(derived_dir(dir.path())).unwrap();
    let (store, ledger) = open(dir.path()).await;
    assert_eq!(ledger.resumed_from(), 0);
    assert_eq!(
        answers(&ledger).await,
        truth,
        "after deleting everything derived"
    );
    close(store, ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_another_log_is_rebuilt_not_served() {
    // Two different logs; the derived data of the first is put beside the second.
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    seed(first.path()).await;
    let (store, ledger) = open(first.path()).await;
    close(store, ledger).await;
    {
        let params = SeedParams {
            customers: 2,
            per_customer: 5,
            history: Some(History::new(40)),
        };
        let csv = second.path().join("terminals.csv");
        seeder::seed(
            second.path().join("data").to_str().unwrap(),
            csv.to_str().unwrap(),
            &params,
            now(),
        )
        .await
        .unwrap();
    }
    let truth = reference(second.path()).await;
    copy_dir(&derived_dir(first.path()), &derived_dir(second.path()));
    let (store, ledger) = open(second.path()).await;
    assert_eq!(
        ledger.resumed_from(),
        0,
        "no snapshot of the other log is used"
    );
    assert_eq!(answers(&ledger).await, truth);
    close(store, ledger).await;
}

/// Damages the index files whose path contains `part` (every 61st byte flipped); how many.
fn damage_index(dir: &Path, part: &str) -> usize {
    let mut damaged = 0;
    for entry in walk(&derived_dir(dir).join("index")) {
        if !entry.to_string_lossy().contains(part) || entry.file_name().is_some_and(|n| n == "lock")
        {
            continue;
        }
        // (The index's background work may still be removing files it compacted.)
        let Ok(mut bytes) = std::fs::read(&entry) else {
            continue;
        };
        if bytes.is_empty() {
            continue;
        }
        for i in (0..bytes.len()).step_by(61) {
            bytes[i] ^= 0x5a;
        }
        std::fs::write(&entry, bytes).unwrap();
        damaged += 1;
    }
    damaged
}

async fn damaged_index_is_rebuilt_not_served(part: &str) {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let truth = reference(dir.path()).await;
    let (store, ledger) = open(dir.path()).await;
    close(store, ledger).await;
    assert!(
        damage_index(dir.path(), part) > 0,
        "the index has {part} files"
    );
    let (store, ledger) = open(dir.path()).await;
    assert_eq!(
        answers(&ledger).await,
        truth,
        "after damaging the index's {part} files"
    );
    close(store, ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_every_index_file_is_rebuilt_not_served() {
    damaged_index_is_rebuilt_not_served("/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_index_journal_is_rebuilt_not_served() {
    damaged_index_is_rebuilt_not_served(".jnl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_index_tables_is_rebuilt_not_served() {
    damaged_index_is_rebuilt_not_served("/tables/").await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_alone_answers_a_history_only_when_it_covers_the_head() {
    use license_ledger::app::queries::history_from_index;
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let truth = reference(dir.path()).await;
    // As the CLI opens them: no compaction in the background (`Maintenance::Deferred`).
    let config = DerivedConfig {
        dir: Some(derived_dir(dir.path())),
        checkpoint_every: CHECKPOINT_EVERY,
        maintenance: Maintenance::Deferred,
    };
    let clock = Arc::new(ManualClock::new(now()));
    let store_config = || FileStoreConfig {
        maintenance: Maintenance::Deferred,
        ..FileStoreConfig::new(dir.path().join("data"))
    };

    // Nothing derived yet: the index cannot answer; the caller resumes a ledger.
    let store = FileStore::open(store_config(), clock.clone())
        .await
        .unwrap();
    let id = LicenseId::new(1).unwrap();
    assert!(history_from_index(&store, &config, id)
        .await
        .unwrap()
        .is_none());
    store.close().await.unwrap();

    // After a ledger's stop the index covers the head: every Histórico from it alone.
    let (store, ledger) = open(dir.path()).await;
    close(store, ledger).await;
    let store = FileStore::open(store_config(), clock.clone())
        .await
        .unwrap();
    for (&id, (_, positions)) in &truth.histories {
        let records = history_from_index(&store, &config, LicenseId::new(id).unwrap())
            .await
            .unwrap()
            .expect("the index covers the head");
        let got: Vec<Position> = records.iter().map(|r| r.envelope.position).collect();
        assert_eq!(&got, positions, "license {id}");
    }
    let unknown = LicenseId::new(truth.histories.len() as u32 + 100).unwrap();
    assert_eq!(
        history_from_index(&store, &config, unknown)
            .await
            .unwrap()
            .map(|r| r.len()),
        Some(0)
    );

    // A record appended after the stop: the index no longer covers the head.
    let head = store.head().await.unwrap();
    let mut last = store.read_all(head.position, 1).await.unwrap();
    let record = last.pop().unwrap();
    let event = record.event().unwrap();
    let stream = record.envelope.stream_id.clone();
    store
        .append(
            &stream,
            license_ledger::store::ExpectedVersion::Exact(record.envelope.stream_version),
            vec![license_ledger::store::NewEvent::new(
                event,
                record.envelope.actor.clone(),
                uuid::Uuid::now_v7(),
            )],
        )
        .await
        .unwrap();
    assert!(history_from_index(&store, &config, id)
        .await
        .unwrap()
        .is_none());
    store.close().await.unwrap();
}
