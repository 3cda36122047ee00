//! The license table's filters and pages, timelines, and the contingency tab.

mod common;

use common::*;
use ledger_events::*;
use ledger_projections::*;

/// Two customers:
/// - Mercado Bom (cnpj 1): 1 EasyCash bound to terminal 1 at 192.168.0.198, expires 2023-05-01;
///   2 EasyCash free, blocked, expires 2023-03-01; 3 Notify bound to terminal 2, expires
///   2023-03-30; 4 EasyCash deactivated, free, expires 2023-04-02.
/// - Padaria Sol (cnpj 2): 5 EasyCash bound to terminal 3 (no IP, last check-in from
///   10.0.0.5), expires 2023-06-01; 6 Nfe free, expires 2023-03-28.
fn table() -> (Log, Cnpj, Cnpj) {
    let mut log = Log::new();
    let (a, b) = (cnpj(1), cnpj(2));
    log.push(registered(a, "Mercado Bom"));
    log.push(registered(b, "Padaria Sol"));
    log.push(granted(1, a, Product::EasyCash, day(2023, 5, 1)));
    log.push(granted(2, a, Product::EasyCash, day(2023, 3, 1)));
    log.push(granted(3, a, Product::Notify, day(2023, 3, 30)));
    log.push(granted(4, a, Product::EasyCash, day(2023, 4, 2)));
    log.push(granted(5, b, Product::EasyCash, day(2023, 6, 1)));
    log.push(granted(6, b, Product::Nfe, day(2023, 3, 28)));
    log.push(bound(1, 1, Some("192.168.0.198")));
    log.push(bound(3, 2, None));
    log.push(bound(5, 3, None));
    log.push(checked_in(
        b,
        Product::EasyCash,
        3,
        Some(5),
        Some("10.0.0.5"),
        valid(day(2023, 6, 1)),
    ));
    log.push(LicenseBlocked {
        license_id: lic(2),
        note: None,
    });
    log.push(LicenseDeactivated {
        license_id: lic(4),
        note: None,
    });
    (log, a, b)
}

fn ids(page: &Page<LicenseRow>) -> Vec<u32> {
    page.items.iter().map(|l| l.license_id.get()).collect()
}

fn list(view: &LedgerView, query: LicenseQuery) -> Vec<u32> {
    ids(&view.list_licenses(&query))
}

const TODAY: Option<chrono::NaiveDate> = chrono::NaiveDate::from_ymd_opt(2023, 3, 27);

#[test]
fn without_filters_every_license_is_listed_by_id() {
    let (log, _, _) = table();
    let page = log.view().list_licenses(&LicenseQuery::default());
    assert_eq!(ids(&page), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        (page.total, page.offset, page.limit),
        (6, 0, PAGE_LIMIT_DEFAULT)
    );
}

#[test]
fn cnpj_and_product_filters_narrow_the_list() {
    let (log, a, b) = table();
    let view = log.view();
    let q = |cnpj, product| LicenseQuery {
        cnpj,
        product,
        ..Default::default()
    };
    assert_eq!(list(&view, q(Some(a), None)), vec![1, 2, 3, 4]);
    assert_eq!(list(&view, q(Some(b), None)), vec![5, 6]);
    assert_eq!(
        list(&view, q(None, Some(Product::EasyCash))),
        vec![1, 2, 4, 5]
    );
    assert_eq!(
        list(&view, q(Some(a), Some(Product::EasyCash))),
        vec![1, 2, 4]
    );
    assert_eq!(
        list(&view, q(Some(b), Some(Product::Notify))),
        Vec::<u32>::new()
    );
    assert_eq!(list(&view, q(Some(cnpj(3)), None)), Vec::<u32>::new());
}

#[test]
fn each_status_filter_selects_its_licenses() {
    let (log, _, _) = table();
    let view = log.view();
    let q = |status, today| LicenseQuery {
        status: Some(status),
        today,
        ..Default::default()
    };
    assert_eq!(
        list(&view, q(LicenseStatus::Active, TODAY)),
        vec![1, 3, 5, 6]
    );
    assert_eq!(list(&view, q(LicenseStatus::Blocked, TODAY)), vec![2]);
    assert_eq!(list(&view, q(LicenseStatus::Deactivated, TODAY)), vec![4]);
    assert_eq!(list(&view, q(LicenseStatus::Expired, TODAY)), vec![2]);
    assert_eq!(list(&view, q(LicenseStatus::Free, TODAY)), vec![2, 4, 6]);
    assert_eq!(list(&view, q(LicenseStatus::Bound, TODAY)), vec![1, 3, 5]);
    // A later day expires more licenses.
    let later = chrono::NaiveDate::from_ymd_opt(2023, 4, 1);
    assert_eq!(list(&view, q(LicenseStatus::Active, later)), vec![1, 5]);
    assert_eq!(list(&view, q(LicenseStatus::Expired, later)), vec![2, 3, 6]);
    // Without a date, nothing is expired and expiry does not bar activity.
    assert_eq!(
        list(&view, q(LicenseStatus::Active, None)),
        vec![1, 3, 5, 6]
    );
    assert_eq!(
        list(&view, q(LicenseStatus::Expired, None)),
        Vec::<u32>::new()
    );
}

#[test]
fn expiring_within_days_counts_from_today_both_ends_included() {
    let (log, _, _) = table();
    let view = log.view();
    let q = |days, today| LicenseQuery {
        expiring_within_days: Some(days),
        today,
        ..Default::default()
    };
    assert_eq!(list(&view, q(0, TODAY)), Vec::<u32>::new());
    assert_eq!(list(&view, q(1, TODAY)), vec![6]);
    assert_eq!(list(&view, q(3, TODAY)), vec![3, 6]);
    assert_eq!(list(&view, q(6, TODAY)), vec![3, 4, 6]);
    assert_eq!(list(&view, q(u32::MAX, TODAY)), vec![1, 3, 4, 5, 6]);
    assert_eq!(list(&view, q(3, None)), Vec::<u32>::new());
}

#[test]
fn hardware_key_matches_a_prefix_of_the_bound_key_ignoring_case() {
    let (log, _, _) = table();
    let view = log.view();
    let q = |prefix: &str| LicenseQuery {
        hardware_key: Some(prefix.to_owned()),
        ..Default::default()
    };
    assert_eq!(list(&view, q("88a7b56c")), vec![1, 3, 5]);
    let full = key(3).to_string();
    assert_eq!(list(&view, q(&full.to_lowercase())), vec![5]);
    assert_eq!(list(&view, q(&full[..30])), vec![1, 3, 5]);
    assert_eq!(list(&view, q("FFFF")), Vec::<u32>::new());
    assert_eq!(list(&view, q("  ")), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn text_matches_id_key_ip_and_trade_name_ignoring_case() {
    let (log, _, _) = table();
    let view = log.view();
    let q = |text: &str| LicenseQuery {
        text: Some(text.to_owned()),
        ..Default::default()
    };
    assert_eq!(list(&view, q("000004")), vec![4]);
    assert_eq!(list(&view, q("padaria")), vec![5, 6]);
    assert_eq!(list(&view, q("MERCADO bom")), vec![1, 2, 3, 4]);
    assert_eq!(list(&view, q("192.168.0.198")), vec![1]);
    assert_eq!(list(&view, q("10.0.0.5")), vec![5]);
    let k = key(2).to_string();
    assert_eq!(list(&view, q(&k[20..].to_lowercase())), vec![3]);
    assert_eq!(list(&view, q("nada disso")), Vec::<u32>::new());
}

#[test]
fn filters_combine() {
    let (log, a, _) = table();
    let view = log.view();
    let query = LicenseQuery {
        cnpj: Some(a),
        product: Some(Product::EasyCash),
        status: Some(LicenseStatus::Free),
        today: TODAY,
        ..Default::default()
    };
    assert_eq!(list(&view, query), vec![2, 4]);
}

#[test]
fn pages_slice_the_sorted_list_and_report_the_total() {
    let (log, _, _) = table();
    let view = log.view();
    let page = |offset, limit| {
        view.list_licenses(&LicenseQuery {
            offset,
            limit,
            ..Default::default()
        })
    };
    let p = page(0, 4);
    assert_eq!(
        (ids(&p), p.total, p.offset, p.limit),
        (vec![1, 2, 3, 4], 6, 0, 4)
    );
    let p = page(4, 4);
    assert_eq!((ids(&p), p.total), (vec![5, 6], 6));
    let p = page(10, 4);
    assert_eq!((ids(&p), p.total), (vec![], 6));
    let p = page(0, 0);
    assert_eq!((ids(&p), p.total), (vec![], 6));
    assert_eq!(page(0, 10_000).limit, PAGE_LIMIT_MAX);
}

#[test]
fn the_historico_notes_check_ins_and_contingencies_of_the_license() {
    let mut log = Log::new();
    let c = cnpj(1);
    log.push(registered(c, "Mercado Bom")); // 1
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1))); // 2
    log.push(granted(2, c, Product::EasyCash, day(2023, 5, 1))); // 3
    log.push(bound(1, 7, None)); // 4
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        None,
        valid(day(2023, 5, 1)),
    )); // 5
    log.push(checked_in(
        c,
        Product::EasyCash,
        8,
        Some(2),
        None,
        valid(day(2023, 5, 1)),
    )); // 6
    log.push(entered(c, ContingencyKind::Manual, Some(7), Some(1))); // 7
    log.push(entered(c, ContingencyKind::Intelliweb, None, None)); // 8
    log.push(cleared(c, ContingencyKind::Manual, Some(7))); // 9
    log.push(renewed(1, day(2023, 5, 1), day(2023, 5, 31))); // 10
    let (_, noted) = log.noted_view();
    assert_eq!(
        noted.into_iter().collect::<Vec<_>>(),
        vec![(lic(1), vec![2, 4, 5, 7, 9, 10]), (lic(2), vec![3, 6])]
    );
}

#[test]
fn the_contingency_tab_filters_by_customer_state_and_kind_newest_first() {
    let mut log = Log::new();
    let (a, b) = (cnpj(1), cnpj(2));
    log.push(registered(a, "Mercado Bom")); // 1
    log.push(registered(b, "Padaria Sol")); // 2
    log.push(entered(a, ContingencyKind::Intelliweb, None, None)); // 3
    log.push(entered(b, ContingencyKind::Manual, Some(1), None)); // 4
    log.push(cleared(a, ContingencyKind::Intelliweb, None)); // 5
    log.push(entered(a, ContingencyKind::Manual, Some(2), None)); // 6
    log.push(entered(b, ContingencyKind::Intelliweb, None, None)); // 7
    let view = log.view();
    let positions = |q: ContingencyQuery| -> (Vec<Position>, usize) {
        let page = view.contingencies(&q);
        (
            page.items.iter().map(|r| r.entered_position).collect(),
            page.total,
        )
    };
    assert_eq!(
        positions(ContingencyQuery::default()),
        (vec![7, 6, 4, 3], 4)
    );
    assert_eq!(
        positions(ContingencyQuery {
            open_only: true,
            ..Default::default()
        }),
        (vec![7, 6, 4], 3)
    );
    assert_eq!(
        positions(ContingencyQuery {
            cnpj: Some(a),
            ..Default::default()
        }),
        (vec![6, 3], 2)
    );
    assert_eq!(
        positions(ContingencyQuery {
            kind: Some(ContingencyKind::Manual),
            ..Default::default()
        }),
        (vec![6, 4], 2)
    );
    assert_eq!(
        positions(ContingencyQuery {
            offset: 1,
            limit: 2,
            ..Default::default()
        }),
        (vec![6, 4], 4)
    );
    assert_eq!(
        view.open_contingencies(&b)
            .iter()
            .map(|r| r.entered_position)
            .collect::<Vec<_>>(),
        vec![7, 4]
    );
}

#[test]
fn rows_serialize_to_json_with_the_screen_forms() {
    let (log, _, _) = table();
    let row = log.view().license(lic(1)).expect("license");
    let json = serde_json::to_value(&row).expect("json");
    assert_eq!(json["license_id"], "000001");
    assert_eq!(json["product"], "easycash");
    assert_eq!(json["expires_on"], "2023-05-01");
    assert_eq!(json["binding"]["hardware_key"], key(1).to_string());
    assert_eq!(json["binding"]["ip"], "192.168.0.198");
    assert_eq!(json["resources"]["habilita_dav"], true);
    let terminal = log.view().terminal(&cnpj(2), &hw(3)).expect("terminal");
    let json = serde_json::to_value(&terminal).expect("json");
    assert_eq!(json["last"]["easycash"]["outcome"]["result"], "valid");
}
