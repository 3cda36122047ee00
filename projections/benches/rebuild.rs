//! Rebuilding the read models from a realistic log held in memory.
//!
//! The log has `LEDGER_BENCH_EVENTS` events (default 1,000,000): 1,000 customers with a
//! contract each, about one license per ten events (granted, bound to a terminal, renewed once
//! or twice, resources changed, about six check-ins), occasional blocks and unlinks, and a few
//! contingencies. Two measurements:
//! - `apply`: events already decoded, fed to `LedgerView::apply` (what the live applier
//!   does);
//! - `decode+apply`: `LedgerView::apply_record` on owned `Record`s, decoding every payload
//!   (what `rebuild` does per record).
//!
//! First a one-shot run prints the resident memory the view adds per license (from
//! `/proc/self/statm`, measured after the input is built) and a JSON summary line; then
//! criterion measures both paths. Run: `cargo bench -p ledger-projections --bench rebuild`
//! (`LEDGER_BENCH_RECORD=1` appends the summary line to `benches/results/rebuild.jsonl`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ledger_events::*;
use ledger_projections::{rebuild, LedgerView};

fn events_in_log() -> usize {
    std::env::var("LEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// splitmix64: a deterministic stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
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

struct License {
    id: LicenseId,
    customer: usize,
    product: Product,
    expires_on: NaiveDate,
    terminal: Option<u64>,
    blocked: bool,
}

/// Builds the log: events with their envelopes, and the same as owned records.
struct LogBuilder {
    target: usize,
    now: DateTime<Utc>,
    prev_hash: Hash,
    versions: HashMap<StreamId, StreamVersion>,
    actor: Actor,
    buf: Vec<u8>,
    pairs: Vec<(Envelope, Event)>,
    records: Vec<Record>,
}

impl LogBuilder {
    fn full(&self) -> bool {
        self.pairs.len() >= self.target
    }

    fn push(&mut self, event: impl Into<Event>) {
        if self.full() {
            return;
        }
        let event = event.into();
        let stream_id = event.stream_id();
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        *version += 1;
        let position = self.pairs.len() as u64 + 1;
        let mut envelope = Envelope {
            position,
            stream_id,
            stream_version: *version,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            recorded_at: self.now,
            actor: self.actor.clone(),
            correlation_id: uuid::Uuid::from_u128(u128::from(position)),
            prev_hash: self.prev_hash,
            hash: Hash::ZERO,
        };
        let payload = event.encode_payload().expect("payload");
        self.buf.clear();
        envelope.hash = encode_record_into(&mut self.buf, &envelope, &payload).expect("encode");
        self.prev_hash = envelope.hash;
        self.records.push(Record {
            envelope: envelope.clone(),
            payload,
        });
        self.pairs.push((envelope, event));
        self.now += chrono::Duration::milliseconds(250);
    }
}

/// The realistic log: returns (decoded pairs, records, licenses granted).
fn build_log(target: usize) -> (Vec<(Envelope, Event)>, Vec<Record>, usize) {
    let licenses_wanted = (target / 10).max(1);
    let customers = 1_000.min(licenses_wanted);
    let mut rng = Rng(0x1ed6e7);
    let mut log = LogBuilder {
        target,
        now: "2023-01-02T08:00:00Z".parse().expect("time"),
        prev_hash: Hash::ZERO,
        versions: HashMap::new(),
        actor: Actor::system("bench").expect("actor"),
        buf: Vec::new(),
        pairs: Vec::with_capacity(target),
        records: Vec::with_capacity(target),
    };
    let start = NaiveDate::from_ymd_opt(2023, 1, 2).expect("date");
    let key = |s: &str| ResourceKey::parse(s).expect("key");
    let resource_sets: Vec<Resources> = (0..4u8)
        .map(|f| {
            Resources::new([
                (key("habilita_dav"), ResourceValue::Bool(f & 1 == 1)),
                (key("habilita_preventa"), ResourceValue::Bool(f & 2 == 2)),
            ])
            .expect("resources")
        })
        .collect();
    let versions = [
        ProgramVersion::parse("2.0.12.1").expect("version"),
        ProgramVersion::parse("1.4.019.003").expect("version"),
    ];
    let cnpjs: Vec<Cnpj> = (0..customers as u32).map(cnpj).collect();

    for (i, c) in cnpjs.iter().enumerate() {
        log.push(CustomerRegistered {
            cnpj: *c,
            trade_name: TradeName::parse(&format!("Mercado {i}")).expect("name"),
            since: start,
        });
        log.push(ContractSigned {
            contract_id: ContractId::new(i as u32 + 1).expect("id"),
            cnpj: *c,
            starts_on: start,
            ends_on: None,
            interval_days: 30,
            renew_before_days: 3,
        });
    }

    let mut licenses = Vec::with_capacity(licenses_wanted);
    for i in 0..licenses_wanted {
        let customer = i % customers;
        let product = match rng.next() % 10 {
            0..=6 => Product::EasyCash,
            7 | 8 => Product::Notify,
            _ => Product::Nfe,
        };
        let id = LicenseId::new((i % LicenseId::MAX as usize) as u32 + 1).expect("id");
        let expires_on = start + Days::new(30 + rng.next() % 30);
        log.push(LicenseGranted {
            license_id: id,
            cnpj: cnpjs[customer],
            product,
            contract_id: Some(ContractId::new(customer as u32 + 1).expect("id")),
            expires_on,
            resources: resource_sets[(rng.next() % 4) as usize].clone(),
        });
        licenses.push(License {
            id,
            customer,
            product,
            expires_on,
            terminal: None,
            blocked: false,
        });
    }
    let granted = licenses.len().min(log.pairs.len());

    let mut next_terminal = 1u64;
    let bind = |log: &mut LogBuilder, l: &mut License, terminal: u64| {
        l.terminal = Some(terminal);
        log.push(LicenseBound {
            license_id: l.id,
            hardware_id: HardwareId::from_bytes(terminal.to_be_bytes()),
            hardware_key: HardwareKey::from_bytes(u128::from(terminal).to_be_bytes()),
            ip: Some(IpAddr::V4(Ipv4Addr::from(
                0xC0A8_0000 | (terminal as u32 & 0xFFFF),
            ))),
            caixa: TerminalNumber::new((terminal % 20) as u16).ok(),
            equipamento: None,
        });
    };
    for l in licenses.iter_mut() {
        if rng.chance(950) {
            bind(&mut log, l, next_terminal);
            next_terminal += 1;
        }
    }

    let mut open_contingency = vec![false; customers];
    for round in 0..8u64 {
        if log.full() {
            break;
        }
        log.now += chrono::Duration::hours(24);
        let today = start + Days::new(30 + round * 5);
        for (c, open) in open_contingency.iter_mut().enumerate() {
            if *open {
                log.push(ContingencyCleared {
                    cnpj: cnpjs[c],
                    kind: ContingencyKind::Intelliweb,
                    hardware_id: None,
                    note: None,
                });
                *open = false;
            } else if rng.chance(20) {
                log.push(ContingencyEntered {
                    cnpj: cnpjs[c],
                    kind: ContingencyKind::Intelliweb,
                    hardware_id: None,
                    license_id: None,
                    grace_until: None,
                    note: Note::parse("[401]Assinatura do token inválida").ok(),
                });
                *open = true;
            }
        }
        for l in licenses.iter_mut() {
            if log.full() {
                break;
            }
            if let Some(terminal) = l.terminal {
                if rng.chance(950) {
                    let hardware_id = HardwareId::from_bytes(terminal.to_be_bytes());
                    let outcome = if l.blocked {
                        CheckInOutcome::Refused {
                            reason: RefusalReason::LicenseBlocked,
                        }
                    } else {
                        CheckInOutcome::Valid {
                            expires_on: l.expires_on,
                        }
                    };
                    log.push(TerminalCheckedIn {
                        cnpj: cnpjs[l.customer],
                        product: l.product,
                        hardware_id,
                        hardware_key: HardwareKey::from_bytes(u128::from(terminal).to_be_bytes()),
                        license_id: Some(l.id),
                        ip: Some(IpAddr::V4(Ipv4Addr::from(
                            0xC0A8_0000 | (terminal as u32 & 0xFFFF),
                        ))),
                        program_version: Some(versions[(terminal % 7 == 0) as usize].clone()),
                        caixa: None,
                        equipamento: None,
                        outcome,
                    });
                }
                if rng.chance(3) {
                    log.push(LicenseUnlinked {
                        license_id: l.id,
                        hardware_id: HardwareId::from_bytes(terminal.to_be_bytes()),
                        note: Note::parse("troca de máquina").ok(),
                    });
                    l.terminal = None;
                }
            } else if rng.chance(300) {
                bind(&mut log, l, next_terminal);
                next_terminal += 1;
            }
            if l.expires_on <= today + Days::new(3) || rng.chance(20) {
                let previous_expiry = l.expires_on;
                l.expires_on = l.expires_on + Days::new(30);
                log.push(LicenseRenewed {
                    license_id: l.id,
                    previous_expiry,
                    expires_on: l.expires_on,
                    cause: RenewalCause::Contract {
                        contract_id: ContractId::new(l.customer as u32 + 1).expect("id"),
                    },
                });
            }
            if rng.chance(125) {
                log.push(LicenseResourcesChanged {
                    license_id: l.id,
                    resources: resource_sets[(rng.next() % 4) as usize].clone(),
                });
            }
            if rng.chance(5) {
                l.blocked = !l.blocked;
                if l.blocked {
                    log.push(LicenseBlocked {
                        license_id: l.id,
                        note: Note::parse("inadimplente").ok(),
                    });
                } else {
                    log.push(LicenseUnblocked {
                        license_id: l.id,
                        note: None,
                    });
                }
            }
        }
    }
    (log.pairs, log.records, granted)
}

/// Resident set size in bytes, from `/proc/self/statm` (pages of 4 KiB).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Appends `line` to `benches/results/rebuild.jsonl` when `LEDGER_BENCH_RECORD` is set, so
/// that a run meant to be published leaves its numbers behind.
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
        .open(dir.join("rebuild.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn apply_all(pairs: &[(Envelope, Event)]) -> LedgerView {
    let view = LedgerView::new();
    for (envelope, event) in pairs {
        view.apply(envelope, event).expect("apply");
    }
    view
}

/// What `rebuild` does per record, without cloning the owned records the iterator needs.
fn decode_and_apply_all(records: &[Record]) -> LedgerView {
    let view = LedgerView::new();
    for record in records {
        view.apply_record(record).expect("apply");
    }
    view
}

fn bench(c: &mut Criterion) {
    let target = events_in_log();
    let setup = Instant::now();
    let (pairs, records, licenses) = build_log(target);
    let events = pairs.len();
    eprintln!(
        "built {events} events ({licenses} licenses) in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let mut mix: HashMap<&str, usize> = HashMap::new();
    for (envelope, _) in &pairs {
        *mix.entry(envelope.event_type.as_str()).or_default() += 1;
    }
    let mut mix: Vec<_> = mix.into_iter().collect();
    mix.sort_unstable_by_key(|(t, n)| (std::cmp::Reverse(*n), *t));
    eprintln!("event mix: {mix:?}");

    // One-shot: throughput and the memory the view adds, with the input already resident.
    let rss_before = rss_bytes().unwrap_or(0);
    let t = Instant::now();
    let view = apply_all(&pairs);
    let apply_s = t.elapsed().as_secs_f64();
    let rss_after = rss_bytes().unwrap_or(0);
    let bytes_per_license = rss_after.saturating_sub(rss_before) / licenses.max(1) as u64;
    assert_eq!(view.position(), events as u64);
    assert_eq!(view.inconsistency_count(), 0);
    let counted = view.license_count();
    drop(view);
    let t = Instant::now();
    let view = decode_and_apply_all(&records);
    let decode_s = t.elapsed().as_secs_f64();
    drop(black_box(view));
    // The library's entry point gives the same view (checked on a small prefix: it needs
    // owned records).
    let prefix = records.len().min(10_000);
    let rebuilt = rebuild(
        records[..prefix].iter().cloned().map(Ok::<_, Infallible>),
        None,
    )
    .expect("rebuild");
    assert_eq!(rebuilt.position(), prefix as u64);
    println!("memory_per_license_bytes: {bytes_per_license}");
    let line = format!(
        "{{\"bench\":\"rebuild\",\"events\":{events},\"events_per_s\":{:.0},\"decode_events_per_s\":{:.0},\"licenses\":{counted},\"bytes_per_license\":{bytes_per_license}}}",
        events as f64 / apply_s,
        events as f64 / decode_s
    );
    println!("{line}");
    record(&line);

    let mut group = c.benchmark_group("rebuild");
    group
        .throughput(Throughput::Elements(events as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    group.bench_function("apply", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let view = apply_all(&pairs);
                spent += t.elapsed();
                drop(black_box(view));
            }
            spent
        })
    });
    group.bench_function("decode+apply", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let view = decode_and_apply_all(&records);
                spent += t.elapsed();
                drop(black_box(view));
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
