//! Check-in decisions from the projected view, on one core, and the cost of signing.
//!
//! The view holds 1,000 customers × 100 EasyCash licenses, each bound to its terminal with a
//! recorded check-in, so a repeated check-in is the hot path: read the view, decide, nothing
//! to append. Measured: `check_in_context` + `decide_check_in` (no append, no signing), and
//! separately Ed25519 signing of the answer.
//!
//! Run: `cargo bench --bench checkin` (`LEDGER_BENCH_RECORD=1` appends the figures to
//! `benches/results/checkin.jsonl`).

use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger_events::{
    Actor, CheckInOutcome, Cnpj, CustomerRegistered, Envelope, Event, HardwareId, HardwareKey,
    Hash, LicenseBound, LicenseGranted, LicenseId, Product, ResourceKey, ResourceValue, Resources,
    TerminalCheckedIn, TradeName,
};
use ledger_projections::view::LedgerView;
use license_ledger::app::answers::AnswerSigner;
use license_ledger::app::checkin::check_in_context;
use license_ledger::domain::checkin::{decide_check_in, CheckInRequest};
use license_ledger::domain::Calendar;
use uuid::Uuid;

mod common;

const CUSTOMERS: u32 = 1_000;
const LICENSES_PER_CUSTOMER: u32 = 100;

/// A valid CNPJ for customer `n` (check digits computed).
fn cnpj(n: u32) -> Cnpj {
    let base = format!("{:08}0001", 10_000_000 + n);
    for d1 in 0..10 {
        for d2 in 0..10 {
            if let Ok(c) = Cnpj::parse(&format!("{base}{d1}{d2}")) {
                return c;
            }
        }
    }
    panic!("no CNPJ for {n}")
}

fn ids(c: u32, l: u32) -> (HardwareId, HardwareKey) {
    let n = u64::from(c) * 1000 + u64::from(l);
    (
        HardwareId::from_bytes(n.to_be_bytes()),
        HardwareKey::from_bytes(u128::from(n).to_be_bytes()),
    )
}

struct Feeder {
    view: LedgerView,
    position: u64,
}

impl Feeder {
    fn apply(&mut self, event: Event, version: u64) {
        self.position += 1;
        let env = Envelope {
            position: self.position,
            stream_id: event.stream_id(),
            stream_version: version,
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            recorded_at: Utc.with_ymd_and_hms(2023, 3, 27, 10, 0, 0).unwrap(),
            actor: Actor::system("bench").unwrap(),
            correlation_id: Uuid::nil(),
            prev_hash: Hash::ZERO,
            hash: Hash::ZERO,
        };
        self.view.apply(&env, &event).expect("apply");
    }
}

fn build_view() -> LedgerView {
    let mut f = Feeder {
        view: LedgerView::new(),
        position: 0,
    };
    let expires = NaiveDate::from_ymd_opt(2023, 5, 1).unwrap();
    let resources = Resources::new([
        (
            ResourceKey::parse("habilita_dav").unwrap(),
            ResourceValue::Bool(true),
        ),
        (
            ResourceKey::parse("habilita_preventa").unwrap(),
            ResourceValue::Bool(false),
        ),
    ])
    .unwrap();
    let mut license = 0u32;
    for c in 0..CUSTOMERS {
        let cnpj = cnpj(c);
        f.apply(
            CustomerRegistered {
                cnpj,
                trade_name: TradeName::parse("Mercado").unwrap(),
                since: expires,
            }
            .into(),
            1,
        );
        for l in 0..LICENSES_PER_CUSTOMER {
            license += 1;
            let license_id = LicenseId::new(license).unwrap();
            let (hardware_id, hardware_key) = ids(c, l);
            f.apply(
                LicenseGranted {
                    license_id,
                    cnpj,
                    product: Product::EasyCash,
                    contract_id: None,
                    expires_on: expires,
                    resources: resources.clone(),
                }
                .into(),
                1,
            );
            f.apply(
                LicenseBound {
                    license_id,
                    hardware_id,
                    hardware_key,
                    ip: "192.168.0.10".parse().ok(),
                    caixa: None,
                    equipamento: None,
                }
                .into(),
                2,
            );
            f.apply(
                TerminalCheckedIn {
                    cnpj,
                    product: Product::EasyCash,
                    hardware_id,
                    hardware_key,
                    license_id: Some(license_id),
                    ip: "192.168.0.10".parse().ok(),
                    program_version: None,
                    caixa: None,
                    equipamento: None,
                    outcome: CheckInOutcome::Valid {
                        expires_on: expires,
                    },
                }
                .into(),
                1,
            );
        }
    }
    f.view
}

fn requests() -> Vec<CheckInRequest> {
    let mut out = Vec::new();
    for c in (0..CUSTOMERS).step_by(7) {
        for l in (0..LICENSES_PER_CUSTOMER).step_by(3) {
            let (hardware_id, hardware_key) = ids(c, l);
            out.push(CheckInRequest {
                cnpj: cnpj(c),
                product: Product::EasyCash,
                hardware_id,
                hardware_key,
                ip: "192.168.0.10".parse().ok(),
                program_version: None,
                caixa: None,
                equipamento: None,
            });
        }
    }
    out
}

fn bench_checkin(c: &mut Criterion) {
    let view = build_view();
    let reqs = requests();
    let now = Utc.with_ymd_and_hms(2023, 3, 27, 12, 0, 0).unwrap();
    let interval = chrono::Duration::hours(24);
    // Sanity: the hot path appends nothing.
    let plan = decide_check_in(
        &reqs[0],
        &check_in_context(&view, &reqs[0], interval, Calendar::default()),
        now,
    );
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);

    let mut group = c.benchmark_group("checkin");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let mut i = 0usize;
    group.bench_function("decide_from_view", |b| {
        b.iter(|| {
            let req = &reqs[i % reqs.len()];
            i += 1;
            std::hint::black_box(decide_check_in(
                req,
                &check_in_context(&view, req, interval, Calendar::default()),
                now,
            ))
        })
    });
    let signer = AnswerSigner::from_seed([42; 32]);
    group.bench_function("sign_answer", |b| {
        b.iter(|| std::hint::black_box(signer.sign(&reqs[0], &plan, Some("n-1".into()), now)))
    });
    group.finish();

    // Plain timed passes for the record.
    let n = 1_000_000usize;
    let t = Instant::now();
    for k in 0..n {
        let req = &reqs[k % reqs.len()];
        std::hint::black_box(decide_check_in(
            req,
            &check_in_context(&view, req, interval, Calendar::default()),
            now,
        ));
    }
    let decide_per_s = n as f64 / t.elapsed().as_secs_f64();
    let m = 20_000usize;
    let t = Instant::now();
    for _ in 0..m {
        std::hint::black_box(signer.sign(&reqs[0], &plan, Some("n-1".into()), now));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / m as f64;
    common::record(
        "checkin",
        &serde_json::json!({
            "licenses": CUSTOMERS * LICENSES_PER_CUSTOMER,
            "decisions_per_s_one_core": decide_per_s.round(),
            "sign_us_per_answer": (sign_us * 100.0).round() / 100.0,
        }),
    );
}

criterion_group!(benches, bench_checkin);
criterion_main!(benches);
