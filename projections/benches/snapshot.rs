//! Snapshots of a large view: encode time, decode time and size.
//!
//! The view holds `LEDGER_BENCH_LICENSES` licenses (default 100,000) of 1,000 customers,
//! each bound to its own terminal that has checked in (`LEDGER_BENCH_ROUNDS` rounds, default
//! 3; every seventh terminal checks in for a second product too), renewed once; one license
//! in a hundred unlinked, a few contingencies per customer. Four resource sets and two
//! program versions are shared, as in real logs.
//!
//! First a one-shot run prints the snapshot's size, bytes per license, one encode and one
//! decode (wall and on-CPU time of the thread, the latter meaningful on a loaded machine),
//! and how long an encode holds the applier off (the slowest of the applies another
//! thread makes meanwhile), as a JSON summary line; then criterion measures
//! `encode_snapshot` and `decode_snapshot`. Run:
//! `cargo bench -p ledger-projections --bench snapshot` (`LEDGER_BENCH_RECORD=1` appends the
//! summary line to `benches/results/snapshot.jsonl`).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ledger_events::*;
use ledger_projections::LedgerView;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid CNPJ built from `n`.
fn cnpj(n: u32) -> Cnpj {
    let base: Vec<u8> = format!("{:08}0001", 10_000_000 + n).bytes().collect();
    let digit = |b: &[u8]| {
        let sum: u32 = b
            .iter()
            .rev()
            .enumerate()
            .map(|(i, c)| u32::from(c - b'0') * (2 + (i as u32 % 8)))
            .sum();
        let rest = sum % 11;
        if rest < 2 {
            0
        } else {
            11 - rest
        }
    };
    let mut full = base.clone();
    full.push(b'0' + digit(&base) as u8);
    full.push(b'0' + digit(&full) as u8);
    Cnpj::parse(std::str::from_utf8(&full).expect("ascii")).expect("cnpj")
}

/// Applies events straight to a view, with envelopes built in place (the view does not look
/// at hashes).
struct Feeder {
    now: DateTime<Utc>,
    versions: HashMap<StreamId, StreamVersion>,
    actor: Actor,
}

impl Feeder {
    fn push(&mut self, view: &LedgerView, event: impl Into<Event>) {
        let event = event.into();
        let stream_id = event.stream_id();
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        *version += 1;
        let position = view.position() + 1;
        let envelope = Envelope {
            position,
            stream_id,
            stream_version: *version,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            recorded_at: self.now,
            actor: self.actor.clone(),
            correlation_id: uuid::Uuid::from_u128(u128::from(position)),
            prev_hash: Hash::ZERO,
            hash: Hash::ZERO,
        };
        view.apply(&envelope, &event).expect("apply");
        self.now += chrono::Duration::milliseconds(250);
    }
}

fn build_view(licenses: usize, rounds: usize) -> (LedgerView, Feeder) {
    let customers = 1_000.min(licenses.max(1));
    let view = LedgerView::new();
    let mut f = Feeder {
        now: "2023-01-02T08:00:00Z".parse().expect("time"),
        versions: HashMap::new(),
        actor: Actor::system("bench").expect("actor"),
    };
    let start = NaiveDate::from_ymd_opt(2023, 1, 2).expect("date");
    let key = |s: &str| ResourceKey::parse(s).expect("key");
    let resource_sets: Vec<Resources> = (0..4u8)
        .map(|flags| {
            Resources::new([
                (key("habilita_dav"), ResourceValue::Bool(flags & 1 == 1)),
                (
                    key("habilita_preventa"),
                    ResourceValue::Bool(flags & 2 == 2),
                ),
            ])
            .expect("resources")
        })
        .collect();
    let program_versions = [
        ProgramVersion::parse("2.0.12.1").expect("version"),
        ProgramVersion::parse("1.4.019.003").expect("version"),
    ];
    let cnpjs: Vec<Cnpj> = (0..customers as u32).map(cnpj).collect();
    for (i, c) in cnpjs.iter().enumerate() {
        f.push(
            &view,
            CustomerRegistered {
                cnpj: *c,
                trade_name: TradeName::parse(&format!("Mercado {i}")).expect("name"),
                since: start,
            },
        );
        f.push(
            &view,
            ContractSigned {
                contract_id: ContractId::new(i as u32 + 1).expect("id"),
                cnpj: *c,
                starts_on: start,
                ends_on: None,
                interval_days: 30,
                renew_before_days: 3,
            },
        );
    }
    let products = [Product::EasyCash, Product::Notify, Product::Nfe];
    let license = |i: usize| LicenseId::new(i as u32 + 1).expect("id");
    let terminal = |i: usize| HardwareId::from_bytes((i as u64 + 1).to_be_bytes());
    let ip = |i: usize| Some(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i as u32)));
    let expiry = |i: usize| start + Days::new(30 + (i % 30) as u64);
    for i in 0..licenses {
        let c = cnpjs[i % customers];
        f.push(
            &view,
            LicenseGranted {
                license_id: license(i),
                cnpj: c,
                product: products[i % 3],
                contract_id: Some(ContractId::new((i % customers) as u32 + 1).expect("id")),
                expires_on: expiry(i),
                resources: resource_sets[i % 4].clone(),
            },
        );
        f.push(
            &view,
            LicenseBound {
                license_id: license(i),
                hardware_id: terminal(i),
                hardware_key: HardwareKey::from_bytes((i as u128 + 1).to_be_bytes()),
                ip: ip(i),
                caixa: TerminalNumber::new((i % 20) as u16 + 1).ok(),
                equipamento: None,
            },
        );
    }
    for _ in 0..rounds {
        f.now += chrono::Duration::hours(24);
        for i in 0..licenses {
            let c = cnpjs[i % customers];
            let check_in =
                |product: Product, license_id: Option<LicenseId>, outcome| TerminalCheckedIn {
                    cnpj: c,
                    product,
                    hardware_id: terminal(i),
                    hardware_key: HardwareKey::from_bytes((i as u128 + 1).to_be_bytes()),
                    license_id,
                    ip: ip(i),
                    program_version: Some(program_versions[usize::from(i % 7 == 0)].clone()),
                    caixa: None,
                    equipamento: None,
                    outcome,
                };
            f.push(
                &view,
                check_in(
                    products[i % 3],
                    Some(license(i)),
                    CheckInOutcome::Valid {
                        expires_on: expiry(i),
                    },
                ),
            );
            if i % 7 == 0 {
                // Another product on the same terminal, which no license answers.
                f.push(
                    &view,
                    check_in(
                        products[(i + 1) % 3],
                        None,
                        CheckInOutcome::Refused {
                            reason: RefusalReason::NoLicenseAvailable,
                        },
                    ),
                );
            }
        }
    }
    for i in 0..licenses {
        f.push(
            &view,
            LicenseRenewed {
                license_id: license(i),
                previous_expiry: expiry(i),
                expires_on: expiry(i) + Days::new(30),
                cause: RenewalCause::Contract {
                    contract_id: ContractId::new((i % customers) as u32 + 1).expect("id"),
                },
            },
        );
        if i % 100 == 0 {
            f.push(
                &view,
                LicenseUnlinked {
                    license_id: license(i),
                    hardware_id: terminal(i),
                    note: None,
                },
            );
        }
    }
    for (i, c) in cnpjs.iter().enumerate() {
        f.push(
            &view,
            ContingencyEntered {
                cnpj: *c,
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                license_id: None,
                grace_until: None,
                note: Note::parse("[401]Assinatura do token inválida").ok(),
            },
        );
        if i % 2 == 0 {
            f.push(
                &view,
                ContingencyCleared {
                    cnpj: *c,
                    kind: ContingencyKind::Intelliweb,
                    hardware_id: None,
                    note: None,
                },
            );
        }
    }
    (view, f)
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`): unlike wall
/// time, it does not count waiting for a CPU on a loaded machine.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Appends `line` to `benches/results/snapshot.jsonl` when `LEDGER_BENCH_RECORD` is set.
fn record(line: &str) {
    use std::io::Write as _;
    if std::env::var_os("LEDGER_BENCH_RECORD").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("snapshot.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn bench(c: &mut Criterion) {
    let licenses = env_or("LEDGER_BENCH_LICENSES", 100_000);
    let rounds = env_or("LEDGER_BENCH_ROUNDS", 3);
    let t = Instant::now();
    let (view, mut feeder) = build_view(licenses, rounds);
    eprintln!(
        "built a view of {} licenses at position {} in {:.1} s",
        view.license_count(),
        view.position(),
        t.elapsed().as_secs_f64()
    );

    // One shot: size, and that the snapshot restores the same state.
    let position = view.position();
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    let bytes = view.encode_snapshot();
    let encode_s = t.elapsed().as_secs_f64();
    let encode_cpu_ms = thread_cpu_ns()
        .zip(cpu)
        .map_or(-1.0, |(b, a)| (b - a) as f64 / 1e6);
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    let restored = LedgerView::decode_snapshot(&bytes).expect("decode");
    let decode_s = t.elapsed().as_secs_f64();
    let decode_cpu_ms = thread_cpu_ns()
        .zip(cpu)
        .map_or(-1.0, |(b, a)| (b - a) as f64 / 1e6);
    assert_eq!(restored.position(), view.position());
    assert_eq!(restored.encode_snapshot(), bytes);
    drop(restored);

    // How long encoding holds the applier off: apply check-ins on this thread while another
    // encodes, and keep the slowest apply.
    let done = std::sync::atomic::AtomicBool::new(false);
    let blocked = std::thread::scope(|s| {
        s.spawn(|| {
            black_box(view.encode_snapshot());
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut slowest = Duration::ZERO;
        let c = view.customers()[0].cnpj;
        let mut n = 0u64;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let t = Instant::now();
            feeder.push(
                &view,
                TerminalCheckedIn {
                    cnpj: c,
                    product: Product::EasyCash,
                    hardware_id: HardwareId::from_bytes((1_000_000 + n % 100).to_be_bytes()),
                    hardware_key: HardwareKey::from_bytes([7; 16]),
                    license_id: None,
                    ip: None,
                    program_version: None,
                    caixa: None,
                    equipamento: None,
                    outcome: CheckInOutcome::Refused {
                        reason: RefusalReason::NoLicenseAvailable,
                    },
                },
            );
            slowest = slowest.max(t.elapsed());
            n += 1;
        }
        slowest
    });
    let per_license = bytes.len() as f64 / licenses.max(1) as f64;
    let line = format!(
        "{{\"bench\":\"snapshot\",\"licenses\":{licenses},\"position\":{},\"bytes\":{},\"bytes_per_license\":{per_license:.1},\"encode_ms\":{:.1},\"encode_cpu_ms\":{encode_cpu_ms:.1},\"decode_ms\":{:.1},\"decode_cpu_ms\":{decode_cpu_ms:.1},\"applier_blocked_ms\":{:.1}}}",
        position,
        bytes.len(),
        encode_s * 1e3,
        decode_s * 1e3,
        blocked.as_secs_f64() * 1e3
    );
    println!("{line}");
    record(&line);

    let mut group = c.benchmark_group("snapshot");
    group
        .throughput(Throughput::Bytes(bytes.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.bench_function("encode", |b| b.iter(|| black_box(view.encode_snapshot())));
    group.bench_function("decode", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let restored = LedgerView::decode_snapshot(&bytes).expect("decode");
                spent += t.elapsed();
                // Dropping a view is not part of decoding.
                drop(black_box(restored));
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
