//! Each event type changes the rows as it says, in order, once.

mod common;

use common::*;
use ledger_events::*;
use ledger_projections::*;

fn customer_log() -> (Log, Cnpj) {
    let mut log = Log::new();
    let c = cnpj(1);
    log.push(registered(c, "Mercado Bom"));
    (log, c)
}

#[test]
fn a_registered_customer_is_active_unblocked_and_off_the_blacklist() {
    let (log, c) = customer_log();
    let row = log.view().customer(&c).expect("customer");
    assert_eq!(
        row,
        CustomerRow {
            cnpj: c,
            trade_name: trade_name("Mercado Bom"),
            since: day(2023, 1, 2),
            active: true,
            blocked: false,
            blacklisted: false,
            partner: None,
            time_zone: None,
            created_at: log.envelope(1).recorded_at,
            updated_at: log.envelope(1).recorded_at,
            version: 1,
        }
    );
}

/// Manual, "Clientes": Parceiro; and the customer's own time zone. Each event states the
/// whole profile, and a snapshot keeps it.
#[test]
fn clientes_a_profile_sets_partner_and_time_zone_and_a_snapshot_keeps_them() {
    let (mut log, c) = customer_log();
    let partner = ledger_events::Partner::parse("IWS").ok();
    let zone = ledger_events::TimeZoneName::parse("America/Manaus").ok();
    log.push(ledger_events::CustomerProfileChanged {
        cnpj: c,
        partner: partner.clone(),
        time_zone: zone.clone(),
    });
    let view = log.view();
    let row = view.customer(&c).expect("customer");
    assert_eq!(
        (&row.partner, &row.time_zone, row.version),
        (&partner, &zone, 2)
    );
    // "Criado em" is the registration's time, "Atualizado em" the latest change's.
    assert_eq!(row.created_at, log.envelope(1).recorded_at);
    assert_eq!(row.updated_at, log.envelope(2).recorded_at);
    assert!(row.updated_at > row.created_at);
    let restored = LedgerView::decode_snapshot(&view.encode_snapshot()).expect("decodes");
    assert_eq!(restored.customer(&c), Some(row));
    log.push(ledger_events::CustomerProfileChanged {
        cnpj: c,
        partner: None,
        time_zone: None,
    });
    let row = log.view().customer(&c).expect("customer");
    assert_eq!((row.partner, row.time_zone), (None, None));
}

#[test]
fn customer_flags_follow_their_events_and_the_version_counts_them() {
    let (mut log, c) = customer_log();
    let check = |log: &Log, active, blocked, blacklisted| {
        let row = log.view().customer(&c).expect("customer");
        assert_eq!(
            (row.active, row.blocked, row.blacklisted, row.version),
            (active, blocked, blacklisted, log.head())
        );
    };
    log.push(CustomerDeactivated {
        cnpj: c,
        note: None,
    });
    check(&log, false, false, false);
    log.push(CustomerActivated {
        cnpj: c,
        note: None,
    });
    check(&log, true, false, false);
    log.push(CustomerBlocked {
        cnpj: c,
        note: None,
    });
    check(&log, true, true, false);
    log.push(CustomerUnblocked {
        cnpj: c,
        note: None,
    });
    check(&log, true, false, false);
    log.push(CustomerBlacklisted {
        cnpj: c,
        note: None,
    });
    check(&log, true, false, true);
    log.push(CustomerUnblacklisted {
        cnpj: c,
        note: None,
    });
    check(&log, true, false, false);
}

#[test]
fn customers_are_listed_sorted_by_cnpj() {
    let mut log = Log::new();
    for n in [5, 2, 9] {
        log.push(registered(cnpj(n), "Loja"));
    }
    let listed: Vec<Cnpj> = log.view().customers().iter().map(|c| c.cnpj).collect();
    let mut sorted = vec![cnpj(5), cnpj(2), cnpj(9)];
    sorted.sort();
    assert_eq!(listed, sorted);
}

#[test]
fn a_signed_contract_is_active_until_deactivated_and_reactivated() {
    let (mut log, c) = customer_log();
    let id = contract_id(731);
    log.push(ContractSigned {
        contract_id: id,
        cnpj: c,
        starts_on: day(2023, 3, 1),
        ends_on: Some(day(2024, 3, 1)),
        interval_days: 30,
        renew_before_days: 3,
    });
    let view = log.view();
    assert_eq!(
        view.contract(id),
        Some(ContractRow {
            contract_id: id,
            cnpj: c,
            starts_on: day(2023, 3, 1),
            ends_on: Some(day(2024, 3, 1)),
            interval_days: 30,
            renew_before_days: 3,
            active: true,
            version: 1,
        })
    );
    assert_eq!(view.max_contract_id(), Some(id));
    log.push(ContractDeactivated {
        contract_id: id,
        note: None,
    });
    let row = log.view().contract(id).expect("contract");
    assert!(!row.active);
    assert_eq!(row.version, 2);
    log.push(ContractReactivated {
        contract_id: id,
        note: None,
    });
    assert!(log.view().contract(id).expect("contract").active);
}

#[test]
fn a_granted_license_is_free_active_unblocked_with_its_resources() {
    let (mut log, c) = customer_log();
    log.push(LicenseGranted {
        contract_id: Some(contract_id(731)),
        ..granted(2438, c, Product::EasyCash, day(2023, 5, 1))
    });
    let view = log.view();
    let row = view.license(lic(2438)).expect("license");
    assert_eq!(
        row,
        LicenseRow {
            license_id: lic(2438),
            cnpj: c,
            product: Product::EasyCash,
            contract_id: Some(contract_id(731)),
            expires_on: day(2023, 5, 1),
            resources: resources(&[("habilita_dav", true)]),
            blocked: false,
            active: true,
            binding: None,
            last_ip: None,
            last_check_in: None,
            last_seen_at: None,
            granted_at: log.envelope(2).recorded_at,
            version: 1,
            updated_position: 2,
        }
    );
    assert_eq!(view.license_count(), 1);
    assert_eq!(view.max_license_id(), Some(lic(2438)));
    assert_eq!(view.licenses_of(&c, Product::EasyCash), vec![row]);
    assert!(view.licenses_of(&c, Product::Notify).is_empty());
}

#[test]
fn licenses_of_a_customer_are_sorted_by_id_whatever_the_grant_order() {
    let (mut log, c) = customer_log();
    for id in [30, 10, 20] {
        log.push(granted(id, c, Product::EasyCash, day(2023, 5, 1)));
    }
    let ids: Vec<LicenseId> = log
        .view()
        .licenses_of(&c, Product::EasyCash)
        .iter()
        .map(|l| l.license_id)
        .collect();
    assert_eq!(ids, vec![lic(10), lic(20), lic(30)]);
    assert_eq!(log.view().max_license_id(), Some(lic(30)));
}

#[test]
fn renewed_moves_the_expiry_and_counts_in_the_stream_version() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(LicenseRenewed {
        license_id: lic(1),
        previous_expiry: day(2023, 5, 1),
        expires_on: day(2023, 5, 31),
        cause: RenewalCause::Contract {
            contract_id: contract_id(731),
        },
    });
    let row = log.view().license(lic(1)).expect("license");
    assert_eq!(row.expires_on, day(2023, 5, 31));
    assert_eq!((row.version, row.updated_position), (2, 3));
}

#[test]
fn bound_records_the_binding_and_the_bound_index_finds_it() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, Some("192.168.0.198")));
    let view = log.view();
    let row = view.license(lic(1)).expect("license");
    assert_eq!(
        row.binding,
        Some(Binding {
            hardware_id: hw(7),
            hardware_key: key(7),
            ip: Some(ip("192.168.0.198")),
            caixa: Some(TerminalNumber::new(3).expect("caixa")),
            equipamento: None,
            bound_at: log.envelope(3).recorded_at,
        })
    );
    assert_eq!(row.last_ip, Some(ip("192.168.0.198")));
    assert_eq!(row.version, 2);
    assert_eq!(view.bound_license(&c, Product::EasyCash, &hw(7)), Some(row));
    assert_eq!(view.bound_license(&c, Product::Notify, &hw(7)), None);
    assert_eq!(view.bound_license(&c, Product::EasyCash, &hw(8)), None);
    assert_eq!(
        view.bound_license(&cnpj(2), Product::EasyCash, &hw(7)),
        None
    );
}

#[test]
fn unlinked_clears_the_binding_and_the_bound_index() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, Some("192.168.0.198")));
    log.push(unlinked(1, 7));
    let view = log.view();
    let row = view.license(lic(1)).expect("license");
    assert_eq!(row.binding, None);
    assert_eq!(row.version, 3);
    assert_eq!(view.bound_license(&c, Product::EasyCash, &hw(7)), None);
}

#[test]
fn a_rebind_to_another_terminal_moves_the_index_and_unlinking_one_license_spares_another() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(granted(2, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, None));
    log.push(unlinked(1, 7));
    log.push(bound(2, 7, None));
    log.push(bound(1, 8, None));
    let view = log.view();
    let on = |t| {
        view.bound_license(&c, Product::EasyCash, &hw(t))
            .map(|l| l.license_id)
    };
    assert_eq!((on(7), on(8)), (Some(lic(2)), Some(lic(1))));
    // Rebinding license 1 straight to terminal 9 (no unlink in between) frees terminal 8.
    log.push(bound(1, 9, None));
    let view = log.view();
    let on = |t| {
        view.bound_license(&c, Product::EasyCash, &hw(t))
            .map(|l| l.license_id)
    };
    assert_eq!((on(7), on(8), on(9)), (Some(lic(2)), None, Some(lic(1))));
}

#[test]
fn block_and_deactivate_flip_their_flags() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    let flags = |log: &Log| {
        let r = log.view().license(lic(1)).expect("license");
        (r.blocked, r.active)
    };
    log.push(LicenseBlocked {
        license_id: lic(1),
        note: note("inadimplente"),
    });
    assert_eq!(flags(&log), (true, true));
    log.push(LicenseUnblocked {
        license_id: lic(1),
        note: None,
    });
    assert_eq!(flags(&log), (false, true));
    log.push(LicenseDeactivated {
        license_id: lic(1),
        note: None,
    });
    assert_eq!(flags(&log), (false, false));
    log.push(LicenseReactivated {
        license_id: lic(1),
        note: None,
    });
    assert_eq!(flags(&log), (false, true));
    assert_eq!(log.view().license(lic(1)).expect("license").version, 5);
}

#[test]
fn resources_changed_replaces_the_whole_set() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    let new = resources(&[("habilita_preventa", false), ("caixas_extra", true)]);
    log.push(LicenseResourcesChanged {
        license_id: lic(1),
        resources: new.clone(),
    });
    assert_eq!(log.view().license(lic(1)).expect("license").resources, new);
}

#[test]
fn a_check_in_updates_the_terminal_and_the_license_that_answered() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, Some("192.168.0.198")));
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        Some("192.168.0.225"),
        valid(day(2023, 5, 1)),
    ));
    let view = log.view();
    let expected = LastCheckIn {
        at: log.envelope(4).recorded_at,
        hardware_id: hw(7),
        ip: Some(ip("192.168.0.225")),
        program_version: Some(version("2.0.12.1")),
        outcome: valid(day(2023, 5, 1)),
        position: 4,
    };
    let row = view.license(lic(1)).expect("license");
    assert_eq!(row.last_check_in, Some(expected.clone()));
    assert_eq!(row.last_ip, Some(ip("192.168.0.225")));
    // A check-in is not an event of the license's stream.
    assert_eq!((row.version, row.updated_position), (2, 4));
    let terminal = view.terminal(&c, &hw(7)).expect("terminal");
    assert_eq!(terminal.version, 1);
    assert_eq!(terminal.last.len(), 1);
    assert_eq!(terminal.last.get(&Product::EasyCash), Some(&expected));
}

#[test]
fn a_check_in_without_an_ip_keeps_the_last_known_one() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, Some("192.168.0.198")));
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        None,
        valid(day(2023, 5, 1)),
    ));
    let row = log.view().license(lic(1)).expect("license");
    assert_eq!(row.last_ip, Some(ip("192.168.0.198")));
    assert_eq!(row.last_check_in.expect("check-in").position, 4);
}

/// Manual, "GERENCIAMENTO DE LICENÇAS": the IP column is the terminal's latest address, not
/// the one it had when it was bound, and a free license shows none.
#[test]
fn gerenciamento_de_licencas_the_ip_column_is_the_latest_and_empty_when_free() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(bound(1, 7, Some("192.168.0.198")));
    assert_eq!(
        log.view().license(lic(1)).expect("license").ip(),
        Some(ip("192.168.0.198"))
    );
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        Some("192.168.0.225"),
        valid(day(2023, 5, 1)),
    ));
    let row = log.view().license(lic(1)).expect("license");
    assert_eq!(
        row.binding.as_ref().and_then(|b| b.ip),
        Some(ip("192.168.0.198")),
        "the binding keeps the address it was bound from"
    );
    assert_eq!(row.ip(), Some(ip("192.168.0.225")));
    log.push(unlinked(1, 7));
    assert_eq!(log.view().license(lic(1)).expect("license").ip(), None);
    // Bound again by a terminal that sends no address: not the previous terminal's.
    log.push(bound(1, 8, None));
    assert_eq!(log.view().license(lic(1)).expect("license").ip(), None);
}

#[test]
fn a_terminal_keeps_the_latest_check_in_per_product() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(granted(2, c, Product::Notify, day(2023, 5, 1)));
    log.push(checked_in(
        c,
        Product::Notify,
        7,
        Some(2),
        None,
        valid(day(2023, 5, 1)),
    ));
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        None,
        valid(day(2023, 5, 1)),
    ));
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        None,
        None,
        CheckInOutcome::Refused {
            reason: RefusalReason::NoLicenseAvailable,
        },
    ));
    let view = log.view();
    let t = view.terminal(&c, &hw(7)).expect("terminal");
    assert_eq!(t.version, 3);
    assert_eq!(
        t.last.keys().copied().collect::<Vec<_>>(),
        vec![Product::EasyCash, Product::Notify]
    );
    assert_eq!(t.last[&Product::EasyCash].position, 6);
    assert_eq!(t.last[&Product::Notify].position, 4);
    // The refused check-in answered no license: license 1 keeps the one it answered.
    let l1 = view.license(lic(1)).expect("license");
    assert_eq!(l1.last_check_in.expect("check-in").position, 5);
    assert_eq!(view.terminal(&c, &hw(8)), None);
}

#[test]
fn applying_the_same_position_twice_changes_nothing() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        None,
        valid(day(2023, 5, 1)),
    ));
    let (view, noted) = log.noted_view();
    assert_eq!(noted.get(&lic(1)), Some(&vec![2, 3]));
    let before = view.license(lic(1));
    for p in 1..=3 {
        assert_eq!(
            view.apply_noting(log.envelope(p), log.event(p))
                .expect("re-apply"),
            None
        );
        assert_eq!(
            view.apply_record_noting(&log.records[p as usize - 1])
                .expect("re-apply record"),
            None
        );
        view.apply_record(&log.records[p as usize - 1])
            .expect("re-apply record");
    }
    assert_eq!(view.license(lic(1)), before);
    assert_eq!(view.position(), 3);
}

#[test]
fn a_gap_is_reported_and_nothing_is_applied() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(granted(2, c, Product::EasyCash, day(2023, 5, 1)));
    let view = LedgerView::new();
    assert_eq!(
        view.apply(log.envelope(2), log.event(2)),
        Err(ProjectionError::Gap {
            expected: 1,
            found: 2
        })
    );
    assert_eq!(view.position(), 0);
    view.apply_record(&log.records[0]).expect("first");
    assert_eq!(
        view.apply_record(&log.records[2]),
        Err(ProjectionError::Gap {
            expected: 2,
            found: 3
        })
    );
    assert_eq!(view.license(lic(2)), None);
    assert_eq!(view.position(), 1);
}

#[test]
fn apply_record_decodes_and_applies_and_reports_a_bad_payload() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    let view = LedgerView::new();
    view.apply_record(&log.records[0]).expect("customer");
    let mut bad = log.records[1].clone();
    bad.payload.truncate(3);
    assert!(matches!(
        view.apply_record(&bad),
        Err(ProjectionError::Decode(_))
    ));
    assert_eq!(view.position(), 1);
    view.apply_record(&log.records[1]).expect("license");
    assert!(view.license(lic(1)).is_some());
    assert_eq!(view.position(), 2);
}

#[test]
fn an_event_for_an_unknown_license_is_inconsistent_and_the_view_moves_on() {
    let (mut log, c) = customer_log();
    log.push(LicenseBlocked {
        license_id: lic(9),
        note: None,
    });
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    let view = LedgerView::new();
    view.apply(log.envelope(1), log.event(1)).expect("customer");
    let err = view
        .apply(log.envelope(2), log.event(2))
        .expect_err("unknown license");
    assert!(
        matches!(&err, ProjectionError::Inconsistent { position: 2, problem } if problem.contains("000009")),
        "{err}"
    );
    assert_eq!(view.position(), 2);
    view.apply(log.envelope(3), log.event(3)).expect("grant");
    assert_eq!(view.inconsistency_count(), 1);
    assert_eq!(view.inconsistencies()[0].position, 2);
}

#[test]
fn a_second_grant_of_the_same_id_is_inconsistent_and_keeps_the_first() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(granted(1, c, Product::Notify, day(2024, 5, 1)));
    let view = LedgerView::new();
    view.apply(log.envelope(1), log.event(1)).expect("customer");
    view.apply(log.envelope(2), log.event(2)).expect("grant");
    assert!(matches!(
        view.apply(log.envelope(3), log.event(3)),
        Err(ProjectionError::Inconsistent { position: 3, .. })
    ));
    assert_eq!(
        view.license(lic(1)).expect("license").product,
        Product::EasyCash
    );
}

#[test]
fn an_event_recorded_in_a_stream_of_another_category_is_inconsistent() {
    let (log, c) = customer_log();
    let mut envelope = log.envelope(1).clone();
    envelope.stream_id = StreamId::license(lic(1));
    let view = LedgerView::new();
    assert!(matches!(
        view.apply(&envelope, &registered(c, "Mercado Bom").into()),
        Err(ProjectionError::Inconsistent { position: 1, .. })
    ));
    assert_eq!(view.customer(&c), None);
}

#[test]
fn contingencies_open_on_entered_and_close_on_cleared_of_the_same_kind_and_terminal() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(entered(c, ContingencyKind::Intelliweb, None, None)); // 3
    log.push(ContingencyEntered {
        grace_until: Some(day(2023, 3, 29)),
        note: note("contra-chave AF67 142D 1048 F615"),
        ..entered(c, ContingencyKind::Manual, Some(7), Some(1))
    }); // 4
    log.push(entered(c, ContingencyKind::Manual, Some(8), None)); // 5
    log.push(ContingencyCleared {
        note: note("conexão restabelecida"),
        ..cleared(c, ContingencyKind::Manual, Some(7))
    }); // 6
    let view = log.view();
    let open: Vec<Position> = view
        .open_contingencies(&c)
        .iter()
        .map(|r| r.entered_position)
        .collect();
    assert_eq!(open, vec![5, 3]);
    let all = view.contingencies(&ContingencyQuery {
        cnpj: Some(c),
        ..Default::default()
    });
    assert_eq!(all.total, 3);
    let closed = &all.items[1];
    assert_eq!(
        closed,
        &ContingencyRow {
            cnpj: c,
            kind: ContingencyKind::Manual,
            hardware_id: Some(hw(7)),
            license_id: Some(lic(1)),
            grace_until: Some(day(2023, 3, 29)),
            entered_at: log.envelope(4).recorded_at,
            entered_position: 4,
            note: note("contra-chave AF67 142D 1048 F615"),
            cleared_at: Some(log.envelope(6).recorded_at),
            cleared_note: note("conexão restabelecida"),
        }
    );
    assert!(!closed.is_open());
}

#[test]
fn cleared_closes_the_latest_open_entry_and_a_clear_with_none_open_is_inconsistent() {
    let (mut log, c) = customer_log();
    log.push(entered(c, ContingencyKind::Intelliweb, None, None)); // 2
    log.push(cleared(c, ContingencyKind::Intelliweb, None)); // 3
    log.push(entered(c, ContingencyKind::Intelliweb, None, None)); // 4
    log.push(cleared(c, ContingencyKind::Intelliweb, None)); // 5
    log.push(cleared(c, ContingencyKind::Intelliweb, None)); // 6: none open
    let view = LedgerView::new();
    for p in 1..=5 {
        view.apply(log.envelope(p), log.event(p)).expect("apply");
    }
    assert!(matches!(
        view.apply(log.envelope(6), log.event(6)),
        Err(ProjectionError::Inconsistent { position: 6, .. })
    ));
    let rows = view
        .contingencies(&ContingencyQuery {
            cnpj: Some(c),
            ..Default::default()
        })
        .items;
    let pairs: Vec<(Position, Option<_>)> = rows
        .iter()
        .map(|r| (r.entered_position, r.cleared_at))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (4, Some(log.envelope(5).recorded_at)),
            (2, Some(log.envelope(3).recorded_at))
        ]
    );
}

#[test]
fn offline_activations_and_emergency_releases_only_join_the_historico() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    log.push(OfflineActivationIssued {
        serial: Serial::parse("50026B77605FA3F8").expect("serial"),
        cnpj: Some(c),
        product: Product::EasyCash,
        license_id: Some(lic(1)),
        caixa: None,
        equipamento: None,
        terminal: None,
        counter_key: None,
        code_mac: Some(CodeMac::from_bytes([0xAB; 32])),
        valid_until: at("2023-03-28T12:00:00Z"),
    });
    log.push(EmergencyReleaseIssued {
        product: Product::EasyCash,
        hardware_id: hw(7),
        hardware_key: key(7),
        activation_code: None,
        counter_key: None,
        code_mac: Some(CodeMac::from_bytes([0xCD; 32])),
        licensed_to: trade_name("QUALIDADE"),
    });
    let (view, noted) = log.noted_view();
    assert_eq!(view.position(), 4);
    // The offline activation names the license; the emergency release names none.
    assert_eq!(
        noted.into_iter().collect::<Vec<_>>(),
        vec![(lic(1), vec![2, 3])]
    );
    let row = view.license(lic(1)).expect("license");
    assert_eq!((row.version, row.updated_position), (1, 2));
}

#[test]
fn readers_on_other_threads_see_whole_rows_while_the_applier_runs() {
    let (mut log, c) = customer_log();
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1)));
    for n in 0..2_000u64 {
        if n % 2 == 0 {
            log.push(bound(1, n, None));
        } else {
            log.push(unlinked(1, n - 1));
        }
    }
    let view = std::sync::Arc::new(LedgerView::new());
    let head = log.head();
    std::thread::scope(|s| {
        let reader = {
            let view = view.clone();
            s.spawn(move || {
                let mut seen = 0;
                while view.position() < head {
                    if let Some(row) = view.license(lic(1)) {
                        // Versions 2k+1 follow a bind, 2k+2 an unlink.
                        assert_eq!(row.binding.is_some(), row.version % 2 == 0);
                        seen += 1;
                    }
                    let _ = view.list_licenses(&LicenseQuery::default());
                }
                seen
            })
        };
        for record in &log.records {
            view.apply_record(record).expect("apply");
        }
        reader.join().expect("reader");
    });
    assert_eq!(view.position(), log.head());
}

#[test]
fn a_customers_stamp_moves_with_every_event_of_theirs_and_no_other() {
    let mut log = Log::new();
    let (a, b) = (cnpj(1), cnpj(2));
    // (what is pushed, whose stamp must move)
    log.push(registered(a, "Mercado Bom"));
    log.push(registered(b, "Padaria Sol"));
    let expect = |log: &mut Log, event: Event, owner: Cnpj| {
        let before = log.view();
        let (stamp_a, stamp_b) = (before.customer_stamp(&a), before.customer_stamp(&b));
        log.push(event);
        let p = log.head();
        let view = log.view();
        let (now_a, now_b) = (view.customer_stamp(&a), view.customer_stamp(&b));
        if owner == a {
            assert_eq!((now_a, now_b), (p, stamp_b), "event at {p} is a's");
        } else {
            assert_eq!((now_a, now_b), (stamp_a, p), "event at {p} is b's");
        }
    };
    expect(
        &mut log,
        ContractSigned {
            contract_id: contract_id(731),
            cnpj: a,
            starts_on: day(2023, 3, 1),
            ends_on: None,
            interval_days: 30,
            renew_before_days: 3,
        }
        .into(),
        a,
    );
    expect(
        &mut log,
        ContractDeactivated {
            contract_id: contract_id(731),
            note: None,
        }
        .into(),
        a,
    );
    expect(
        &mut log,
        granted(1, b, Product::EasyCash, day(2023, 3, 30)).into(),
        b,
    );
    expect(&mut log, bound(1, 1, None).into(), b);
    expect(
        &mut log,
        LicenseResourcesChanged {
            license_id: lic(1),
            resources: resources(&[("habilita_dav", false)]),
        }
        .into(),
        b,
    );
    expect(
        &mut log,
        checked_in(
            b,
            Product::EasyCash,
            1,
            Some(1),
            None,
            valid(day(2023, 3, 30)),
        )
        .into(),
        b,
    );
    expect(
        &mut log,
        entered(a, ContingencyKind::Intelliweb, None, None).into(),
        a,
    );
    expect(
        &mut log,
        cleared(a, ContingencyKind::Intelliweb, None).into(),
        a,
    );
    expect(
        &mut log,
        CustomerBlocked {
            cnpj: b,
            note: None,
        }
        .into(),
        b,
    );
    assert_eq!(
        log.view().customer_stamp(&cnpj(3)),
        0,
        "an unknown customer"
    );
}

#[test]
fn an_inconsistent_event_joins_no_historico_and_the_consistent_ones_still_do() {
    let (mut log, c) = customer_log(); // 1
    log.push(granted(1, c, Product::EasyCash, day(2023, 5, 1))); // 2
    log.push(LicenseBlocked {
        license_id: lic(9),
        note: None,
    }); // 3: unknown license
    log.push(granted(1, c, Product::Notify, day(2024, 5, 1))); // 4: granted twice
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(9),
        None,
        valid(day(2023, 5, 1)),
    )); // 5: answered by an unknown license
    log.push(entered(c, ContingencyKind::Manual, Some(7), Some(9))); // 6: names unknown
    log.push(cleared(c, ContingencyKind::Manual, Some(8))); // 7: none open for terminal 8
    log.push(OfflineActivationIssued {
        serial: Serial::parse("50026B77605FA3F8").expect("serial"),
        cnpj: Some(c),
        product: Product::EasyCash,
        license_id: Some(lic(9)),
        caixa: None,
        equipamento: None,
        terminal: None,
        counter_key: None,
        code_mac: Some(CodeMac::from_bytes([0xAB; 32])),
        valid_until: at("2023-03-28T12:00:00Z"),
    }); // 8: names unknown
    log.push(checked_in(
        c,
        Product::EasyCash,
        7,
        Some(1),
        None,
        valid(day(2023, 5, 1)),
    )); // 9
    log.push(entered(c, ContingencyKind::Manual, Some(7), Some(1))); // 10
    log.push(cleared(c, ContingencyKind::Manual, Some(7))); // 11
    let view = LedgerView::new();
    let mut outcomes = Vec::new();
    for record in &log.records {
        outcomes.push(match view.apply_record_noting(record) {
            Ok(noted) => Ok(noted.map(|id| id.get())),
            Err(ProjectionError::Inconsistent { position, .. }) => Err(position),
            Err(e) => panic!("{e}"),
        });
    }
    assert_eq!(
        outcomes,
        vec![
            Ok(None),
            Ok(Some(1)),
            Err(3),
            Err(4),
            Err(5),
            Err(6),
            Err(7),
            Err(8),
            Ok(Some(1)),
            Ok(Some(1)),
            Ok(Some(1)),
        ]
    );
    assert_eq!(view.inconsistency_count(), 6);
}
