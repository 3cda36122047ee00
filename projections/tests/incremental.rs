//! Property: random valid histories, fed one event at a time (with repeats), give the same
//! view as a rebuild from scratch, at the end and as of any position; and the rows agree with
//! a naive model of what the events said.

mod common;

use std::collections::HashMap;

use common::*;
use ledger_events::*;
use ledger_projections::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Register,
    CustomerFlag(u8, u8),
    Sign(u8),
    Grant {
        customer: u8,
        product: u8,
        days: u16,
    },
    Bind {
        license: u8,
        terminal: u8,
        ip: Option<u8>,
    },
    Unlink(u8),
    Block(u8, bool),
    Deactivate(u8, bool),
    Renew(u8, u16),
    Resources(u8, u8),
    CheckIn {
        license: u8,
        terminal: u8,
        answered: bool,
        ip: Option<u8>,
    },
    Enter {
        customer: u8,
        manual: bool,
        terminal: u8,
        license: Option<u8>,
    },
    Clear(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Register),
        1 => (any::<u8>(), 0..6u8).prop_map(|(c, w)| Op::CustomerFlag(c, w)),
        1 => any::<u8>().prop_map(Op::Sign),
        4 => (any::<u8>(), 0..3u8, 0..400u16)
            .prop_map(|(customer, product, days)| Op::Grant { customer, product, days }),
        3 => (any::<u8>(), 0..6u8, proptest::option::of(any::<u8>()))
            .prop_map(|(license, terminal, ip)| Op::Bind { license, terminal, ip }),
        1 => any::<u8>().prop_map(Op::Unlink),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(l, on)| Op::Block(l, on)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(l, on)| Op::Deactivate(l, on)),
        2 => (any::<u8>(), 1..60u16).prop_map(|(l, d)| Op::Renew(l, d)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(l, f)| Op::Resources(l, f)),
        5 => (any::<u8>(), 0..6u8, any::<bool>(), proptest::option::of(any::<u8>()))
            .prop_map(|(license, terminal, answered, ip)| Op::CheckIn { license, terminal, answered, ip }),
        1 => (any::<u8>(), any::<bool>(), 0..6u8, proptest::option::of(any::<u8>()))
            .prop_map(|(customer, manual, terminal, license)| Op::Enter { customer, manual, terminal, license }),
        1 => any::<u8>().prop_map(Op::Clear),
    ]
}

/// What the test expects of a license, tracked while generating.
#[derive(Clone, Debug, PartialEq)]
struct ModelLicense {
    cnpj: Cnpj,
    product: Product,
    expires_on: chrono::NaiveDate,
    blocked: bool,
    active: bool,
    bound_to: Option<HardwareId>,
    version: u64,
    /// Positions of the events its Histórico lists, oldest first.
    history: Vec<Position>,
}

#[derive(Default)]
struct Model {
    customers: Vec<Cnpj>,
    contracts: u32,
    licenses: Vec<(LicenseId, ModelLicense)>,
    open: Vec<(Cnpj, ContingencyKind, Option<HardwareId>, Option<LicenseId>)>,
}

fn pick<T>(items: &[T], n: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[usize::from(n) % items.len()])
}

/// Turns ops into valid events, skipping those that do not apply (e.g. no customer yet).
fn generate(ops: &[Op]) -> (Log, Model) {
    let mut log = Log::new();
    let mut m = Model::default();
    let products = [Product::EasyCash, Product::Notify, Product::Nfe];
    for op in ops {
        log.advance(chrono::Duration::minutes(7));
        match op {
            Op::Register => {
                let c = cnpj(m.customers.len() as u32 + 1);
                m.customers.push(c);
                log.push(registered(c, &format!("Loja {}", m.customers.len())));
            }
            Op::CustomerFlag(c, which) => {
                let Some(&c) = pick(&m.customers, *c) else {
                    continue;
                };
                let event: Event = match which {
                    0 => CustomerActivated {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                    1 => CustomerDeactivated {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                    2 => CustomerBlocked {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                    3 => CustomerUnblocked {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                    4 => CustomerBlacklisted {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                    _ => CustomerUnblacklisted {
                        cnpj: c,
                        note: None,
                    }
                    .into(),
                };
                log.push(event);
            }
            Op::Sign(c) => {
                let Some(&c) = pick(&m.customers, *c) else {
                    continue;
                };
                m.contracts += 1;
                log.push(ContractSigned {
                    contract_id: contract_id(m.contracts),
                    cnpj: c,
                    starts_on: day(2023, 1, 1),
                    ends_on: None,
                    interval_days: 30,
                    renew_before_days: 3,
                });
            }
            Op::Grant {
                customer,
                product,
                days,
            } => {
                let Some(&c) = pick(&m.customers, *customer) else {
                    continue;
                };
                // Ids are not granted in order, to exercise the sorted indexes.
                let id = lic(1000 - m.licenses.len() as u32 * 7 % 997);
                if m.licenses.iter().any(|(l, _)| *l == id) {
                    continue;
                }
                let product = products[usize::from(*product)];
                let expires_on = day(2023, 1, 1) + chrono::Days::new(u64::from(*days));
                log.push(granted(id.get(), c, product, expires_on));
                m.licenses.push((
                    id,
                    ModelLicense {
                        cnpj: c,
                        product,
                        expires_on,
                        blocked: false,
                        active: true,
                        bound_to: None,
                        version: 1,
                        history: vec![log.head()],
                    },
                ));
            }
            Op::Bind {
                license,
                terminal,
                ip,
            } => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = m.licenses[i].clone();
                let terminal = u64::from(*terminal);
                // A terminal holds one license per product.
                let taken = m.licenses.iter().any(|(_, o)| {
                    o.cnpj == l.cnpj && o.product == l.product && o.bound_to == Some(hw(terminal))
                });
                if l.bound_to.is_some() || taken {
                    continue;
                }
                let address = ip.map(|b| format!("192.168.0.{b}"));
                log.push(bound(id.get(), terminal, address.as_deref()));
                let l = &mut m.licenses[i].1;
                l.bound_to = Some(hw(terminal));
                l.version += 1;
                l.history.push(log.head());
            }
            Op::Unlink(license) => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = &mut m.licenses[i];
                let Some(h) = l.bound_to.take() else { continue };
                log.push(LicenseUnlinked {
                    license_id: *id,
                    hardware_id: h,
                    note: None,
                });
                l.version += 1;
                l.history.push(log.head());
            }
            Op::Block(license, on) | Op::Deactivate(license, on) => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = &mut m.licenses[i];
                let (id, on) = (*id, *on);
                let event: Event = match (op, on) {
                    (Op::Block(..), true) => LicenseBlocked {
                        license_id: id,
                        note: None,
                    }
                    .into(),
                    (Op::Block(..), false) => LicenseUnblocked {
                        license_id: id,
                        note: None,
                    }
                    .into(),
                    (_, true) => LicenseReactivated {
                        license_id: id,
                        note: None,
                    }
                    .into(),
                    (_, false) => LicenseDeactivated {
                        license_id: id,
                        note: None,
                    }
                    .into(),
                };
                if matches!(op, Op::Block(..)) {
                    l.blocked = on;
                } else {
                    l.active = on;
                }
                log.push(event);
                l.version += 1;
                l.history.push(log.head());
            }
            Op::Renew(license, days) => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = &mut m.licenses[i];
                let to = l.expires_on + chrono::Days::new(u64::from(*days));
                log.push(renewed(id.get(), l.expires_on, to));
                l.expires_on = to;
                l.version += 1;
                l.history.push(log.head());
            }
            Op::Resources(license, flags) => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = &mut m.licenses[i];
                log.push(LicenseResourcesChanged {
                    license_id: *id,
                    resources: resources(&[
                        ("habilita_dav", flags & 1 == 1),
                        ("habilita_preventa", flags & 2 == 2),
                    ]),
                });
                l.version += 1;
                l.history.push(log.head());
            }
            Op::CheckIn {
                license,
                terminal,
                answered,
                ip,
            } => {
                let n = m.licenses.len();
                let Some(i) = (n > 0).then(|| usize::from(*license) % n) else {
                    continue;
                };
                let (id, l) = &mut m.licenses[i];
                let terminal = l
                    .bound_to
                    .map(|h| u64::from(h.as_bytes()[7]))
                    .unwrap_or(u64::from(*terminal));
                let address = ip.map(|b| format!("10.0.0.{b}"));
                let outcome = if *answered {
                    valid(l.expires_on)
                } else {
                    CheckInOutcome::Refused {
                        reason: RefusalReason::NoLicenseAvailable,
                    }
                };
                log.push(checked_in(
                    l.cnpj,
                    l.product,
                    terminal,
                    answered.then_some(id.get()),
                    address.as_deref(),
                    outcome,
                ));
                if *answered {
                    l.history.push(log.head());
                }
            }
            Op::Enter {
                customer,
                manual,
                terminal,
                license,
            } => {
                let Some(&c) = pick(&m.customers, *customer) else {
                    continue;
                };
                let kind = if *manual {
                    ContingencyKind::Manual
                } else {
                    ContingencyKind::Intelliweb
                };
                let terminal = manual.then_some(u64::from(*terminal));
                let license_id = license
                    .and_then(|n| pick(&m.licenses, n))
                    .map(|(id, _)| *id)
                    .filter(|_| *manual);
                log.push(ContingencyEntered {
                    license_id,
                    ..entered(c, kind, terminal, None)
                });
                if let Some(id) = license_id {
                    if let Some((_, l)) = m.licenses.iter_mut().find(|(l, _)| *l == id) {
                        l.history.push(log.head());
                    }
                }
                m.open.push((c, kind, terminal.map(hw), license_id));
            }
            Op::Clear(n) => {
                let Some(i) = (!m.open.is_empty()).then(|| usize::from(*n) % m.open.len()) else {
                    continue;
                };
                let (c, kind, h, _) = m.open[i];
                // The view closes the latest open entry of that (customer, kind, terminal).
                let latest = m
                    .open
                    .iter()
                    .rposition(|(oc, ok, oh, _)| (*oc, *ok, *oh) == (c, kind, h))
                    .unwrap_or(i);
                let (_, _, _, license_id) = m.open.remove(latest);
                log.push(ContingencyCleared {
                    cnpj: c,
                    kind,
                    hardware_id: h,
                    note: None,
                });
                if let Some(id) = license_id {
                    if let Some((_, l)) = m.licenses.iter_mut().find(|(l, _)| *l == id) {
                        l.history.push(log.head());
                    }
                }
            }
        }
    }
    (log, m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn incremental_application_equals_a_rebuild_from_scratch(
        ops in proptest::collection::vec(op(), 0..80),
        replays in proptest::collection::vec(any::<u16>(), 0..20),
        cut in any::<u16>(),
    ) {
        let (log, model) = generate(&ops);
        let cut = usize::from(cut) % (log.records.len() + 1);
        let view = LedgerView::new();
        let mut at_cut = None;
        if cut == 0 {
            at_cut = Some(snapshot(&view, &log.events));
        }
        // What applying noted, per license.
        let mut noted: HashMap<LicenseId, Vec<Position>> = HashMap::new();
        for (i, (record, event)) in log.records.iter().zip(&log.events).enumerate() {
            let joins = if i % 2 == 0 {
                view.apply_noting(&record.envelope, event).expect("apply")
            } else {
                view.apply_record_noting(record).expect("apply record")
            };
            if let Some(id) = joins {
                noted.entry(id).or_default().push(record.envelope.position);
            }
            // Replays of anything already applied change nothing and join nothing.
            if let Some(&r) = replays.get(i % 20) {
                let j = usize::from(r) % (i + 1);
                prop_assert_eq!(view.apply_record_noting(&log.records[j]).expect("replay"), None);
            }
            if i + 1 == cut {
                at_cut = Some(snapshot(&view, &log.events));
            }
        }
        let live = snapshot(&view, &log.events);
        prop_assert_eq!(live.inconsistency_count, 0);

        let rebuilt = rebuild(log.source(), None).expect("rebuild");
        prop_assert_eq!(&snapshot(&rebuilt, &log.events), &live);

        let as_of = rebuild(log.source(), Some(AsOf::Position(cut as u64))).expect("as of");
        prop_assert_eq!(Some(snapshot(&as_of, &log.events)), at_cut);

        // The rows say what the events said.
        let expected: HashMap<LicenseId, ModelLicense> = model.licenses.iter().cloned().collect();
        prop_assert_eq!(view.license_count(), expected.len());
        for row in &live.licenses {
            let m = &expected[&row.license_id];
            prop_assert_eq!(row.cnpj, m.cnpj);
            prop_assert_eq!(row.product, m.product);
            prop_assert_eq!(row.expires_on, m.expires_on);
            prop_assert_eq!((row.blocked, row.active), (m.blocked, m.active));
            prop_assert_eq!(row.binding.map(|b| b.hardware_id), m.bound_to);
            prop_assert_eq!(row.version, m.version);
            prop_assert_eq!(noted.get(&row.license_id).cloned().unwrap_or_default(), m.history.clone());
            if let Some(h) = m.bound_to {
                prop_assert_eq!(
                    view.bound_license(&m.cnpj, m.product, &h).map(|l| l.license_id),
                    Some(row.license_id)
                );
            }
        }
        let open: usize = model.customers.iter().map(|c| view.open_contingencies(c).len()).sum();
        prop_assert_eq!(open, model.open.len());
    }
}
