//! The license table sorted by a column (`LedgerView::list_licenses_sorted`): the whole
//! matching set is ordered before the page is cut, ties fall back to the id, and the filters
//! are the same as the unsorted listing's.

mod common;

use common::*;
use ledger_events::*;
use ledger_projections::*;

/// Mercado Bom (cnpj 1): 1 EasyCash bound to terminal 3 at 192.168.0.198, expires 2023-05-01,
/// on active contract 7; 2 EasyCash free and blocked, expires 2023-03-01, on contract 8
/// (deactivated); 3 Notify bound to terminal 1 at 10.0.0.9, expires 2023-03-30; 4 EasyCash
/// free and deactivated, expires 2023-04-02.
fn table() -> Log {
    let mut log = Log::new();
    let a = cnpj(1);
    log.push(registered(a, "Mercado Bom"));
    for id in [7, 8] {
        log.push(ContractSigned {
            contract_id: contract_id(id),
            cnpj: a,
            starts_on: day(2023, 1, 1),
            ends_on: None,
            interval_days: 30,
            renew_before_days: 3,
        });
    }
    let on_contract = |id, product, expires_on, contract| {
        let mut g = granted(id, a, product, expires_on);
        g.contract_id = Some(contract_id(contract));
        g
    };
    log.push(on_contract(1, Product::EasyCash, day(2023, 5, 1), 7));
    log.push(on_contract(2, Product::EasyCash, day(2023, 3, 1), 8));
    log.push(granted(3, a, Product::Notify, day(2023, 3, 30)));
    log.push(granted(4, a, Product::EasyCash, day(2023, 4, 2)));
    log.push(bound(1, 3, Some("192.168.0.198")));
    log.push(bound(3, 1, Some("10.0.0.9")));
    log.push(LicenseBlocked {
        license_id: lic(2),
        note: None,
    });
    log.push(LicenseDeactivated {
        license_id: lic(4),
        note: None,
    });
    log.push(ContractDeactivated {
        contract_id: contract_id(8),
        note: None,
    });
    log
}

fn sorted(view: &LedgerView, query: &LicenseQuery, key: LicenseSortKey, desc: bool) -> Vec<u32> {
    view.list_licenses_sorted(query, key, desc)
        .items
        .iter()
        .map(|l| l.license_id.get())
        .collect()
}

#[test]
fn each_column_orders_the_whole_table_with_ties_by_id() {
    let view = table().view();
    let all = LicenseQuery::default();
    let cases = [
        (LicenseSortKey::Id, vec![1, 2, 3, 4]),
        // Free licenses (no key) first, then by key: terminal 1's key sorts before 3's.
        (LicenseSortKey::HardwareKey, vec![2, 4, 3, 1]),
        // No IP first; IPv4 addresses in numeric order.
        (LicenseSortKey::Ip, vec![2, 4, 3, 1]),
        (LicenseSortKey::ExpiresOn, vec![2, 3, 4, 1]),
        (LicenseSortKey::Product, vec![1, 2, 4, 3]),
        (LicenseSortKey::Blocked, vec![1, 3, 4, 2]),
        (LicenseSortKey::Active, vec![4, 1, 2, 3]),
        // Only license 1 is on an active contract; 2's contract was deactivated.
        (LicenseSortKey::Contract, vec![2, 3, 4, 1]),
    ];
    for (key, expected) in cases {
        assert_eq!(sorted(&view, &all, key, false), expected, "{key:?}");
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(
            sorted(&view, &all, key, true),
            reversed,
            "{key:?} descending"
        );
    }
}

#[test]
fn a_sorted_page_is_cut_after_sorting_and_keeps_the_filters() {
    let view = table().view();
    let page = |offset, limit| LicenseQuery {
        offset,
        limit,
        ..Default::default()
    };
    assert_eq!(
        sorted(&view, &page(0, 2), LicenseSortKey::ExpiresOn, false),
        vec![2, 3]
    );
    assert_eq!(
        sorted(&view, &page(2, 2), LicenseSortKey::ExpiresOn, false),
        vec![4, 1]
    );
    let p = view.list_licenses_sorted(&page(2, 2), LicenseSortKey::ExpiresOn, false);
    assert_eq!((p.total, p.offset, p.limit), (4, 2, 2));

    let easycash = LicenseQuery {
        product: Some(Product::EasyCash),
        ..Default::default()
    };
    assert_eq!(
        sorted(&view, &easycash, LicenseSortKey::ExpiresOn, true),
        vec![1, 4, 2]
    );
    // The same set as the unsorted listing, for every filter.
    let blocked = LicenseQuery {
        status: Some(LicenseStatus::Blocked),
        ..Default::default()
    };
    assert_eq!(sorted(&view, &blocked, LicenseSortKey::Ip, false), vec![2]);
    assert_eq!(view.list_licenses(&blocked).total, 1);
}
