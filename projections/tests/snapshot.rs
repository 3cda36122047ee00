//! Snapshots of the view: a snapshot restored and fed the rest of the log is the view folded
//! from the whole log (byte for byte and query for query); the same state always encodes to
//! the same bytes; damaged bytes give an error or another valid view, never a panic.

mod common;

use std::collections::BTreeMap;

use common::*;
use ledger_events::*;
use ledger_projections::*;
use proptest::prelude::*;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True `per_1000` times in a thousand.
    fn chance(&mut self, per_1000: u64) -> bool {
        self.next() % 1000 < per_1000
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Lic {
    id: u32,
    cnpj: Cnpj,
    product: Product,
    expires_on: chrono::NaiveDate,
    terminal: Option<u64>,
    blocked: bool,
    active: bool,
}

/// Customers that register, sign, get licenses, bind terminals that check in daily, renew,
/// unlink and rebind, get blocked, enter and clear contingencies, and issue offline
/// activations and emergency releases over `days` days. Each customer's events concern
/// only that customer. With `inconsistent`, each day also records events the view can apply
/// only in part (more than it keeps over the whole log).
fn realistic_log(seed: u64, customers: u32, days: u32, inconsistent: bool) -> Log {
    let mut rng = Rng(seed | 1);
    let mut log = Log::new();
    let products = [Product::EasyCash, Product::Notify, Product::Nfe];
    let versions = ["2.0.12.1", "1.4.019.003", "2.1.0.0"];
    let resource_sets = [
        resources(&[("habilita_dav", true)]),
        resources(&[("habilita_dav", false)]),
        resources(&[("habilita_dav", true), ("habilita_preventa", true)]),
    ];
    let cnpjs: Vec<Cnpj> = (1..=customers).map(cnpj).collect();
    let mut licenses: Vec<Lic> = Vec::new();
    let mut next_terminal = 1u64;
    let mut open_manual: Vec<(Cnpj, u64)> = Vec::new();
    let mut open_web: Vec<Cnpj> = Vec::new();
    for (i, c) in cnpjs.iter().enumerate() {
        log.push(registered(*c, &format!("Mercado {i}")));
        log.push(ContractSigned {
            contract_id: contract_id(i as u32 + 1),
            cnpj: *c,
            starts_on: day(2023, 1, 2),
            ends_on: (i % 2 == 0).then(|| day(2024, 1, 2)),
            interval_days: 30,
            renew_before_days: 3,
        });
        for _ in 0..8 {
            // Ids not in grant order, to exercise sorting.
            let id = 1 + (licenses.len() as u32 * 37) % 9973;
            let product = products[rng.below(3)];
            let expires_on = day(2023, 4, 1) + chrono::Days::new(rng.next() % 30);
            log.push(LicenseGranted {
                contract_id: Some(contract_id(i as u32 + 1)),
                resources: resource_sets[rng.below(3)].clone(),
                ..granted(id, *c, product, expires_on)
            });
            licenses.push(Lic {
                id,
                cnpj: *c,
                product,
                expires_on,
                terminal: None,
                blocked: false,
                active: true,
            });
        }
    }
    for d in 0..days {
        log.advance(chrono::Duration::hours(24));
        for l in licenses.iter_mut() {
            match l.terminal {
                None if rng.chance(400) => {
                    let address =
                        format!("192.168.{}.{}", next_terminal / 250, next_terminal % 250);
                    log.push(bound(l.id, next_terminal, Some(&address)));
                    l.terminal = Some(next_terminal);
                    next_terminal += 1;
                }
                None => {}
                Some(t) => {
                    if rng.chance(800) {
                        let address = rng
                            .chance(700)
                            .then(|| format!("10.0.{}.{}", t / 250, rng.below(250)));
                        let outcome = if l.blocked {
                            CheckInOutcome::Refused {
                                reason: RefusalReason::LicenseBlocked,
                            }
                        } else {
                            valid(l.expires_on)
                        };
                        log.push(TerminalCheckedIn {
                            program_version: Some(version(versions[rng.below(3)])),
                            ..checked_in(
                                l.cnpj,
                                l.product,
                                t,
                                Some(l.id),
                                address.as_deref(),
                                outcome,
                            )
                        });
                    }
                    if rng.chance(40) {
                        log.push(unlinked(l.id, t));
                        l.terminal = None;
                    }
                }
            }
            if rng.chance(60) || l.expires_on <= day(2023, 4, 1) + chrono::Days::new(u64::from(d)) {
                let to = l.expires_on + chrono::Days::new(30);
                log.push(renewed(l.id, l.expires_on, to));
                l.expires_on = to;
            }
            if rng.chance(30) {
                l.blocked = !l.blocked;
                if l.blocked {
                    log.push(LicenseBlocked {
                        license_id: lic(l.id),
                        note: note("inadimplente"),
                    });
                } else {
                    log.push(LicenseUnblocked {
                        license_id: lic(l.id),
                        note: None,
                    });
                }
            }
            if rng.chance(15) {
                l.active = !l.active;
                if l.active {
                    log.push(LicenseReactivated {
                        license_id: lic(l.id),
                        note: None,
                    });
                } else {
                    log.push(LicenseDeactivated {
                        license_id: lic(l.id),
                        note: None,
                    });
                }
            }
            if rng.chance(20) {
                log.push(LicenseResourcesChanged {
                    license_id: lic(l.id),
                    resources: resource_sets[rng.below(3)].clone(),
                });
            }
        }
        // A terminal rebound to another license of the same customer and product, leaving the
        // first license's binding in place: the bound index then differs from the bindings.
        if rng.chance(500) {
            let pairs: Vec<(usize, usize)> = (0..licenses.len())
                .flat_map(|a| (0..licenses.len()).map(move |b| (a, b)))
                .filter(|&(a, b)| {
                    a != b
                        && licenses[a].cnpj == licenses[b].cnpj
                        && licenses[a].product == licenses[b].product
                        && licenses[a].terminal.is_some()
                })
                .collect();
            if !pairs.is_empty() {
                let (a, b) = pairs[rng.below(pairs.len())];
                let t = licenses[a].terminal.unwrap_or(0);
                log.push(bound(licenses[b].id, t, None));
                licenses[b].terminal = Some(t);
            }
        }
        // Check-ins nothing answered.
        for _ in 0..3 {
            let c = cnpjs[rng.below(cnpjs.len())];
            log.push(checked_in(
                c,
                products[rng.below(3)],
                9_000 + rng.next() % 5,
                None,
                Some("172.16.0.9"),
                CheckInOutcome::Refused {
                    reason: RefusalReason::NoLicenseAvailable,
                },
            ));
        }
        for c in &cnpjs {
            if open_web.contains(c) {
                if rng.chance(500) {
                    log.push(cleared(*c, ContingencyKind::Intelliweb, None));
                    open_web.retain(|o| o != c);
                }
            } else if rng.chance(100) {
                log.push(ContingencyEntered {
                    grace_until: Some(day(2023, 5, 1)),
                    note: note("[401]Assinatura do token inválida"),
                    ..entered(*c, ContingencyKind::Intelliweb, None, None)
                });
                open_web.push(*c);
            }
            if rng.chance(80) {
                let mine: Vec<&Lic> = licenses.iter().filter(|l| l.cnpj == *c).collect();
                let l = mine[rng.below(mine.len())];
                let t = l.terminal.unwrap_or(8_000 + rng.next() % 3);
                log.push(entered(*c, ContingencyKind::Manual, Some(t), Some(l.id)));
                open_manual.push((*c, t));
            }
            if rng.chance(40) {
                let event: Event = match rng.below(4) {
                    0 => CustomerBlocked {
                        cnpj: *c,
                        note: None,
                    }
                    .into(),
                    1 => CustomerUnblocked {
                        cnpj: *c,
                        note: None,
                    }
                    .into(),
                    2 => CustomerBlacklisted {
                        cnpj: *c,
                        note: None,
                    }
                    .into(),
                    _ => CustomerDeactivated {
                        cnpj: *c,
                        note: None,
                    }
                    .into(),
                };
                log.push(event);
            }
        }
        if !open_manual.is_empty() && rng.chance(600) {
            let (c, t) = open_manual.remove(rng.below(open_manual.len()));
            log.push(ContingencyCleared {
                note: note("liberado"),
                ..cleared(c, ContingencyKind::Manual, Some(t))
            });
        }
        if rng.chance(200) {
            let i = rng.below(cnpjs.len());
            log.push(ContractDeactivated {
                contract_id: contract_id(i as u32 + 1),
                note: None,
            });
        }
        if rng.chance(300) {
            let l = &licenses[rng.below(licenses.len())];
            log.push(OfflineActivationIssued {
                serial: Serial::from_bytes(log.head().to_be_bytes()),
                cnpj: Some(l.cnpj),
                product: l.product,
                license_id: Some(lic(l.id)),
                caixa: None,
                equipamento: None,
                terminal: None,
                counter_key: None,
                code_mac: Some(CodeMac::from_bytes([0xAB; 32])),
                valid_until: log.now(),
            });
        }
        if rng.chance(200) {
            log.push(EmergencyReleaseIssued {
                product: Product::EasyCash,
                hardware_id: hw(7_000 + u64::from(d)),
                hardware_key: key(7_000 + u64::from(d)),
                activation_code: None,
                counter_key: None,
                code_mac: Some(CodeMac::from_bytes([0xCD; 32])),
                licensed_to: trade_name("QUALIDADE"),
            });
        }
        if inconsistent {
            for k in 0..10u32 {
                log.push(LicenseBlocked {
                    license_id: lic(990_000 + d * 10 + k),
                    note: None,
                });
            }
            log.push(cleared(cnpjs[0], ContingencyKind::Manual, Some(6_000)));
        }
    }
    log
}

/// Everything the view answers, through its public API.
#[derive(Debug, PartialEq)]
struct Answers {
    all: common::Snapshot,
    licenses_of: Vec<Vec<LicenseRow>>,
    open_contingencies: Vec<Vec<ContingencyRow>>,
    stamps: Vec<Position>,
    inconsistencies: Vec<Inconsistency>,
    sorted_by_ip: Vec<LicenseId>,
}

fn answers(view: &LedgerView, log: &Log) -> Answers {
    let cnpjs: Vec<Cnpj> = view.customers().iter().map(|c| c.cnpj).collect();
    Answers {
        all: snapshot(view, &log.events),
        licenses_of: cnpjs
            .iter()
            .flat_map(|c| Product::ALL.iter().map(move |p| view.licenses_of(c, *p)))
            .collect(),
        open_contingencies: cnpjs.iter().map(|c| view.open_contingencies(c)).collect(),
        stamps: cnpjs.iter().map(|c| view.customer_stamp(c)).collect(),
        inconsistencies: view.inconsistencies(),
        sorted_by_ip: view
            .list_licenses_sorted(
                &LicenseQuery {
                    limit: PAGE_LIMIT_MAX,
                    ..Default::default()
                },
                LicenseSortKey::Ip,
                false,
            )
            .items
            .iter()
            .map(|l| l.license_id)
            .collect(),
    }
}

/// Applies `records` with `apply_record_noting`, collecting what each record joins.
fn apply_noting(view: &LedgerView, records: &[Record]) -> BTreeMap<LicenseId, Vec<Position>> {
    let mut noted = BTreeMap::<LicenseId, Vec<Position>>::new();
    for record in records {
        match view.apply_record_noting(record) {
            Ok(Some(id)) => noted.entry(id).or_default().push(record.envelope.position),
            Ok(None) | Err(ProjectionError::Inconsistent { .. }) => {}
            Err(e) => panic!("apply: {e}"),
        }
    }
    noted
}

#[test]
fn the_realistic_log_exercises_what_a_snapshot_must_keep() {
    let log = realistic_log(7, 6, 12, true);
    let view = prefix_view(&log, log.records.len());
    let a = answers(&view, &log);
    assert!(a.all.licenses.len() >= 40, "licenses");
    assert!(a.all.terminals.iter().flatten().count() > 20, "terminals");
    assert!(
        a.all.contingencies.iter().any(|c| c.is_open()),
        "open entries"
    );
    assert!(
        a.all.contingencies.iter().any(|c| !c.is_open()),
        "cleared entries"
    );
    assert!(
        a.all.inconsistency_count > INCONSISTENCIES_KEPT as u64,
        "more inconsistencies than kept"
    );
    // A terminal whose bound license is not the only one bound to it.
    let bindings: Vec<_> = a
        .all
        .licenses
        .iter()
        .filter_map(|l| l.binding.map(|b| (l.cnpj, l.product, b.hardware_id)))
        .collect();
    let distinct: std::collections::BTreeSet<_> = bindings.iter().collect();
    assert!(distinct.len() < bindings.len(), "a terminal rebound");
}

#[test]
fn a_snapshot_restored_and_fed_the_rest_equals_the_whole_fold() {
    let log = realistic_log(7, 6, 12, true);
    let n = log.records.len();
    let full = LedgerView::new();
    let full_noted = apply_noting(&full, &log.records);
    let full_bytes = full.encode_snapshot();
    let full_answers = answers(&full, &log);
    let cuts = [0, 1, 2, 17, n / 5, n / 3, n / 2, 2 * n / 3, n - 1, n];
    for cut in cuts {
        let prefix = LedgerView::new();
        let noted_before = apply_noting(&prefix, &log.records[..cut]);
        let bytes = prefix.encode_snapshot();
        let restored = LedgerView::decode_snapshot(&bytes).expect("decode");
        assert_eq!(restored.position(), cut as u64, "cut {cut}");
        assert_eq!(restored.encode_snapshot(), bytes, "re-encoded at cut {cut}");
        assert_eq!(
            answers(&restored, &log),
            answers(&prefix, &log),
            "cut {cut}"
        );

        let noted_after = apply_noting(&restored, &log.records[cut..]);
        assert_eq!(restored.encode_snapshot(), full_bytes, "cut {cut}");
        assert_eq!(answers(&restored, &log), full_answers, "cut {cut}");
        // What the rest notes after the restore is what the whole fold noted there.
        let mut joined = noted_before;
        for (id, positions) in noted_after {
            joined.entry(id).or_default().extend(positions);
        }
        assert_eq!(joined, full_noted, "cut {cut}");
    }
}

#[test]
fn a_snapshot_of_an_empty_view_restores_an_empty_view() {
    let bytes = LedgerView::new().encode_snapshot();
    let view = LedgerView::decode_snapshot(&bytes).expect("decode");
    assert_eq!(view.position(), 0);
    assert_eq!(view.license_count(), 0);
    assert_eq!(view.max_license_id(), None);
    assert_eq!(view.encode_snapshot(), bytes);
}

#[test]
fn the_same_events_encode_the_same_whatever_the_order_the_maps_saw() {
    let log = realistic_log(11, 5, 8, false);
    // Two folds: each view's maps hash with their own random seeds, so they iterate in
    // different orders.
    let a = log.view();
    let b = log.view();
    assert_eq!(a.encode_snapshot(), b.encode_snapshot());

    // The same events applied customer by customer, last customer first (each customer's
    // events in their order): the same state, reached along another order.
    let by_customer = LedgerView::new();
    let mut order: Vec<(Option<Cnpj>, usize)> = Vec::new();
    for (i, event) in log.events.iter().enumerate() {
        order.push((a.customer_of(event), i));
    }
    order.sort_by_key(|(c, i)| (std::cmp::Reverse(*c), *i));
    for (_, i) in order {
        by_customer
            .apply_unordered(&log.records[i].envelope, &log.events[i])
            .expect("apply");
    }
    assert_eq!(by_customer.position(), a.position());
    assert_eq!(answers(&by_customer, &log), answers(&a, &log));
    assert_eq!(by_customer.encode_snapshot(), a.encode_snapshot());
}

#[test]
fn a_snapshot_taken_while_the_applier_runs_is_the_state_at_its_position() {
    let log = realistic_log(17, 4, 6, true);
    let n = log.records.len();
    let view = LedgerView::new();
    let started = std::sync::Barrier::new(2);
    let taken: Vec<Vec<u8>> = std::thread::scope(|s| {
        let taker = s.spawn(|| {
            let mut taken = Vec::new();
            started.wait();
            while view.position() < n as u64 {
                taken.push(view.encode_snapshot());
            }
            taken
        });
        started.wait();
        for record in &log.records {
            let _ = view.apply_record(record);
            // Let the taker in between records as well as during them.
            std::thread::yield_now();
        }
        taker.join().expect("taker")
    });
    assert!(!taken.is_empty());
    let mut expected: BTreeMap<Position, Vec<u8>> = BTreeMap::new();
    let mut previous = 0;
    for bytes in &taken {
        let p = LedgerView::decode_snapshot(bytes)
            .expect("decode")
            .position();
        assert!(p >= previous, "snapshots follow the applier");
        previous = p;
        let fold = expected
            .entry(p)
            .or_insert_with(|| prefix_view(&log, p as usize).encode_snapshot());
        assert_eq!(bytes, fold, "snapshot at {p}");
    }
}

#[test]
fn a_different_state_encodes_differently() {
    let log = realistic_log(3, 3, 4, false);
    let all = log.view().encode_snapshot();
    let one_less = prefix_view(&log, log.records.len() - 1).encode_snapshot();
    assert_ne!(all, one_less);
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let log = realistic_log(5, 2, 3, true);
    let bytes = prefix_view(&log, log.records.len()).encode_snapshot();
    for len in 0..bytes.len() {
        assert!(
            LedgerView::decode_snapshot(&bytes[..len]).is_err(),
            "truncated to {len} of {}",
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 1]);
    assert!(matches!(
        LedgerView::decode_snapshot(&longer),
        Err(SnapshotError::TrailingBytes(2))
    ));
}

#[test]
fn another_format_version_is_refused_by_number() {
    let bytes = LedgerView::new().encode_snapshot();
    assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION as u8);
    let mut other = bytes.clone();
    other[0] = 3;
    let err = LedgerView::decode_snapshot(&other).expect_err("version 3");
    assert!(
        matches!(err, SnapshotError::UnsupportedVersion { found: 3 }),
        "{err}"
    );
    assert!(err.to_string().contains("version 3"), "{err}");
}

/// A decoded view must be usable: it answers, re-encodes stably and applies events.
fn check_usable(view: &LedgerView, log: &Log) -> Result<(), TestCaseError> {
    let _ = answers(view, log);
    let once = view.encode_snapshot();
    let again = LedgerView::decode_snapshot(&once).expect("a re-encoded view decodes");
    prop_assert_eq!(again.encode_snapshot(), once);
    // Feeding it the log from its position on never panics.
    let from = usize::try_from(view.position()).unwrap_or(usize::MAX);
    for record in log.records.iter().skip(from).take(50) {
        let _ = view.apply_record(record);
    }
    Ok(())
}

/// A log and the snapshot of two thirds of it, built once for all cases.
fn damage_case() -> &'static (Log, Vec<u8>) {
    static CASE: std::sync::OnceLock<(Log, Vec<u8>)> = std::sync::OnceLock::new();
    CASE.get_or_init(|| {
        let log = realistic_log(13, 3, 4, true);
        let view = prefix_view(&log, log.records.len() * 2 / 3);
        let bytes = view.encode_snapshot();
        (log, bytes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn a_flipped_byte_gives_an_error_or_a_usable_view(
        at in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let (log, bytes) = damage_case();
        let mut bytes = bytes.clone();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        if let Ok(view) = LedgerView::decode_snapshot(&bytes) {
            check_usable(&view, log)?;
        }
    }

    #[test]
    fn a_cut_or_spliced_snapshot_gives_an_error_or_a_usable_view(
        from in any::<prop::sample::Index>(),
        to in any::<prop::sample::Index>(),
        insert in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let (log, bytes) = damage_case();
        let (a, b) = (from.index(bytes.len() + 1), to.index(bytes.len() + 1));
        let (a, b) = (a.min(b), a.max(b));
        let mut damaged = bytes[..a].to_vec();
        damaged.extend_from_slice(&insert);
        damaged.extend_from_slice(&bytes[b..]);
        if let Ok(view) = LedgerView::decode_snapshot(&damaged) {
            check_usable(&view, log)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        let _ = LedgerView::decode_snapshot(&bytes);
        if let Ok(view) = LedgerView::decode_snapshot(&versioned) {
            let log = Log::new();
            check_usable(&view, &log)?;
        }
    }
}
