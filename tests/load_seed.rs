//! The load seeder's history (`load_seed ... DAYS`, benches/load/seeder.rs) on a few
//! customers and days: as many records of each type as its parameters imply, a log that
//! verifies with `recorded_at` following the days, and at the end the same licenses, each
//! bound to the same terminal and answered valid by the real check-in, as without history.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger_events::{CheckInOutcome, LicenseId, Product};
use license_ledger::app::{Ledger, LedgerConfig};
use license_ledger::clock::ManualClock;
use license_ledger::domain::checkin::{CheckInRequest, Step};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::EventStore;

#[path = "../benches/load/seeder.rs"]
mod seeder;

use seeder::{History, Incident, SeedParams};

const CUSTOMERS: u32 = 3;
const PER_CUSTOMER: u32 = 4;
const DAYS: u32 = 40;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-15T12:34:56Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Rates high enough that a dozen licenses over 40 days see every kind of incident.
fn history() -> History {
    History {
        unlinks_per_mille_month: 300.0,
        blocks_per_mille_month: 300.0,
        offline_per_mille_month: 300.0,
        contingencies_per_mille_month: 300.0,
        ip_changes_per_mille_month: 3000.0,
        workers: 2,
        in_flight: 3,
        // Several `append_batch` calls a day, two in flight.
        batch: 2,
        batches_in_flight: 2,
        ..History::new(DAYS)
    }
}

async fn seed(dir: &Path, history: Option<History>) -> seeder::SeedReport {
    let params = SeedParams {
        customers: CUSTOMERS,
        per_customer: PER_CUSTOMER,
        history,
    };
    let csv = dir.join("terminals.csv");
    seeder::seed(
        dir.join("data").to_str().unwrap(),
        csv.to_str().unwrap(),
        &params,
        now(),
    )
    .await
    .unwrap()
}

/// What the parameters imply, by event type, computed from the schedule and the contract
/// terms (one setup day, then `DAYS - 1` days of check-ins).
fn expected_counts(h: &History) -> BTreeMap<&'static str, u64> {
    let licenses = u64::from(CUSTOMERS * PER_CUSTOMER);
    let (mut unlinks, mut blocks, mut offline) = (0, 0, 0);
    for n in 0..licenses {
        for day in 1..DAYS {
            match h.incident(n, day) {
                Some(Incident::Unlink) => unlinks += 1,
                Some(Incident::Block) => blocks += 1,
                Some(Incident::Offline) => offline += 1,
                None => {}
            }
        }
    }
    let upstream = (0..CUSTOMERS)
        .flat_map(|c| (1..DAYS - 1).map(move |d| (c, d)))
        .filter(|&(c, d)| h.upstream_contingency(c, PER_CUSTOMER, d))
        .count() as u64;
    // Granted for one interval; renewed at the check-in within the renew-before window.
    let interval = i64::from(h.interval_days);
    let mut expires = interval;
    let mut renewals_each = 0;
    for day in 1..i64::from(DAYS) {
        if expires - day <= i64::from(h.renew_before_days) {
            expires += interval;
            renewals_each += 1;
        }
    }
    let customers = u64::from(CUSTOMERS);
    BTreeMap::from([
        ("CustomerRegistered", customers),
        ("ContractSigned", customers),
        ("LicenseGranted", licenses),
        ("LicenseBound", licenses + unlinks),
        ("LicenseUnlinked", unlinks),
        ("LicenseBlocked", blocks),
        ("LicenseUnblocked", blocks),
        ("LicenseRenewed", licenses * renewals_each),
        ("OfflineActivationIssued", offline),
        ("ContingencyEntered", offline + upstream),
        ("ContingencyCleared", offline + upstream),
        ("TerminalCheckedIn", licenses * u64::from(DAYS) - offline),
    ])
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .collect()
}

async fn open(dir: &Path) -> (FileStore, Ledger) {
    let clock = Arc::new(ManualClock::new(now()));
    let store = FileStore::open(FileStoreConfig::new(dir.join("data")), clock.clone())
        .await
        .unwrap();
    let ledger = Ledger::start(Arc::new(store.clone()), clock, LedgerConfig::default())
        .await
        .unwrap();
    (store, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_year_has_the_records_its_parameters_imply_in_time_order_and_ends_in_the_same_licenses(
) {
    let plain = tempfile::tempdir().unwrap();
    let year = tempfile::tempdir().unwrap();
    seed(plain.path(), None).await;
    let h = history();
    let report = seed(year.path(), Some(h.clone())).await;

    // Every incident kind happened at these rates, or the test proves little.
    let expected = expected_counts(&h);
    for kind in [
        "LicenseUnlinked",
        "LicenseBlocked",
        "OfflineActivationIssued",
        "LicenseRenewed",
    ] {
        assert!(
            expected.contains_key(kind),
            "no {kind} scheduled: {expected:?}"
        );
    }

    // The log verifies, as the operator's command checks it.
    let out = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .arg("--data-dir")
        .arg(year.path().join("data"))
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (store, ledger) = open(year.path()).await;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut last: Option<DateTime<Utc>> = None;
    let mut days_seen = std::collections::BTreeSet::new();
    let mut next = 1;
    loop {
        let batch = store.read_all(next, 1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            let at = r.envelope.recorded_at;
            if let Some(before) = last {
                assert!(
                    at >= before,
                    "recorded_at went back at {}",
                    r.envelope.position
                );
            }
            assert!(at < now(), "recorded at {at}, after now");
            last = Some(at);
            days_seen.insert(at.date_naive());
            *counts.entry(r.event().unwrap().event_type()).or_default() += 1;
            next = r.envelope.position + 1;
        }
    }
    assert_eq!(counts, expected);
    assert_eq!(next - 1, report.head);
    assert_eq!(report.setup_records + report.history.total(), report.head);
    // One day of setup, then a day of check-ins for each day up to yesterday.
    let first: NaiveDate = now().date_naive() - Duration::days(i64::from(DAYS));
    let days: Vec<NaiveDate> = (0..i64::from(DAYS))
        .map(|d| first + Duration::days(d))
        .collect();
    assert_eq!(days_seen.into_iter().collect::<Vec<_>>(), days);

    // At now: the same licenses, bound to the same terminals, all valid, nothing open.
    let (plain_store, plain_ledger) = open(plain.path()).await;
    let licenses = CUSTOMERS * PER_CUSTOMER;
    assert_eq!(ledger.view().license_count(), licenses as usize);
    assert_eq!(plain_ledger.view().license_count(), licenses as usize);
    let today = now().date_naive();
    for id in 1..=licenses {
        let id = LicenseId::new(id).unwrap();
        let with = ledger.view().license(id).unwrap();
        let without = plain_ledger.view().license(id).unwrap();
        assert_eq!(with.cnpj, without.cnpj);
        assert_eq!(with.product, without.product);
        let (bw, bo) = (with.binding.unwrap(), without.binding.unwrap());
        assert_eq!(
            (bw.hardware_id, bw.hardware_key),
            (bo.hardware_id, bo.hardware_key)
        );
        assert!(with.active && !with.blocked && with.expires_on >= today);
        assert!(ledger.view().open_contingencies(&with.cnpj).is_empty());
        let terminal = ledger.view().terminal(&with.cnpj, &bw.hardware_id).unwrap();
        assert!(plain_ledger
            .view()
            .terminal(&with.cnpj, &bw.hardware_id)
            .is_some());
        assert_eq!(
            terminal.last[&Product::EasyCash].at.date_naive(),
            today - Duration::days(1)
        );

        // The real check-in agrees: valid, on the same license, nothing to bind.
        let plan = ledger
            .check_in(&CheckInRequest {
                cnpj: with.cnpj,
                product: Product::EasyCash,
                hardware_id: bw.hardware_id,
                hardware_key: bw.hardware_key,
                ip: None,
                program_version: None,
                caixa: None,
                equipamento: None,
            })
            .await
            .unwrap();
        assert_eq!(plan.license_id, Some(id));
        assert!(
            matches!(plan.outcome, CheckInOutcome::Valid { .. }),
            "{:?}",
            plan.outcome
        );
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::Bind { .. })));
    }
    drop((ledger, plain_ledger));
    store.close().await.unwrap();
    plain_store.close().await.unwrap();
}
