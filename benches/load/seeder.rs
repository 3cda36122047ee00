//! The seeder behind `load_seed` (benches/load/seed.rs), shared with tests/load_seed.rs.
//!
//! Without `days` it seeds the current state only: customers, licenses granted until a year
//! from now, each bound to its terminal by a first check-in, all through the `Ledger`.
//!
//! With `days` the same licenses are seeded `days` days before `now` (each customer with a
//! contract renewing every [`History::interval_days`]), and then every day up to yesterday is
//! written through the store's append, with the events the domain produces for that day:
//! - every terminal checks in and its `TerminalCheckedIn` is recorded (the domain records an
//!   unchanged check-in once its last record is 24 h old: one record a day); its IP and
//!   program version change now and then (a monthly release rolled out over two weeks);
//! - the contract renews a license when its check-in falls within the renew-before window
//!   (`domain::license::contract_renewal`), before the record, as `decide_check_in` orders it;
//! - a few licenses per thousand a month are unlinked by support ("Desassociar", the
//!   terminal's next check-in binds the same license again), blocked for a day, or released
//!   offline ("Ativar Offline": a counter-key and a manual contingency; the terminal is
//!   offline that day and clears the contingency at its next check-in); a few customers have
//!   a type 01 contingency for a day (its terminals are told `Contingency`).
//!
//! Time is an input: the store is opened with a [`SeedClock`] that the seeder moves through
//! each day (operators at 07:00, check-ins spread from 08:00 to 20:00 in terminal order,
//! closing contingencies at 21:00), so `recorded_at` follows the days and never decreases.
//! Nothing is blocked, unlinked or in contingency on the last day: at `now` every license is
//! valid and bound to the same terminal as without `days`.
//!
//! Appends run concurrently: [`History::workers`] tasks each own a share of the terminals.
//! A terminal's check-in record is one event on its own stream, and one day's records must
//! be appended in that day's time, so each is its own append; a quiet day's record (the
//! check-in alone, 97 % of the history) goes with [`History::batch`] others to
//! `FileStore::append_batch` (each append still checked, versioned and answered on its own;
//! [`History::batches_in_flight`] such calls at a time per task), the other days run as
//! single appends, [`History::in_flight`] at a time, after the task's quiet ones (see
//! benches/results/2026-12-03-ingest.md).

#![allow(dead_code)]

use std::error::Error;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use ledger_events::{
    offline, Actor, CheckInOutcome, Cnpj, ContingencyCleared, ContingencyEntered, ContingencyKind,
    ContractId, Event, HardwareId, HardwareKey, LicenseBlocked, LicenseBound, LicenseId,
    LicenseRenewed, LicenseUnblocked, LicenseUnlinked, Note, OfflineActivationIssued, Product,
    ProgramVersion, RefusalReason, RenewalCause, Resources, Serial, StreamId, TerminalCheckedIn,
    TradeName,
};
use license_ledger::app::{Ledger, LedgerConfig};
use license_ledger::clock::Clock;
use license_ledger::config::{new_token, token_digest, Role, SecretsFile, TokenEntry};
use license_ledger::domain::checkin::{CheckInRequest, UPSTREAM_GRACE_DAYS, WARNING_DAYS};
use license_ledger::domain::contract::{Contract, ContractCommand};
use license_ledger::domain::customer::{Customer, CustomerCommand};
use license_ledger::domain::license::{contract_renewal, License, LicenseCommand, RenewalTerms};
use license_ledger::domain::{Aggregate, Loaded};
use license_ledger::store::file::{FileStore, FileStoreConfig, FileStoreStats};
use license_ledger::store::{BatchAppend, EventStore, ExpectedVersion, NewEvent, StoreError};
use parking_lot::Mutex;
use tokio::task::JoinSet;
use uuid::Uuid;

pub type SeedError = Box<dyn Error + Send + Sync>;

/// The server's audit key, read from the secrets file the seeder made (see `seed`).
static AUDIT_KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// How the history is made (rates are per thousand licenses per month, 30 days).
#[derive(Clone, Debug)]
pub struct History {
    /// Days of history before `now`.
    pub days: u32,
    /// The contracts' interval.
    pub interval_days: u16,
    /// The contracts' renew-before window.
    pub renew_before_days: u16,
    /// Unlinks (and the terminal's re-bind).
    pub unlinks_per_mille_month: f64,
    /// Blocks (unblocked the next day).
    pub blocks_per_mille_month: f64,
    /// Offline activations (with their manual contingency).
    pub offline_per_mille_month: f64,
    /// Type 01 contingencies: a customer has one for a day with this chance per thousand of
    /// its licenses a month.
    pub contingencies_per_mille_month: f64,
    /// IP changes per thousand terminals a month.
    pub ip_changes_per_mille_month: f64,
    /// Appending tasks (`LOAD_SEED_WORKERS`, default 2), each owning a share of the
    /// terminals.
    pub workers: usize,
    /// Eventful days each task keeps in flight (`LOAD_SEED_IN_FLIGHT`, default 2048).
    pub in_flight: usize,
    /// Quiet days' records per `append_batch` call (`LOAD_SEED_BATCH`, default 1024).
    pub batch: usize,
    /// `append_batch` calls each task keeps in flight (`LOAD_SEED_BATCHES`, default 4).
    pub batches_in_flight: usize,
    /// The store's `index_tail_records` while seeding (`LOAD_SEED_INDEX_TAIL`, default
    /// 1,048,576, about 100 MB): with 100,000 terminals a day touches 100,000 streams, and
    /// each move of the tail to the on-disk index writes one version per stream it holds;
    /// a tail of ten days' records writes a tenth of the versions the default 65,536 does.
    pub index_tail_records: usize,
}

impl History {
    /// The rates the load benchmark uses.
    pub fn new(days: u32) -> Self {
        Self {
            days,
            interval_days: 30,
            renew_before_days: 3,
            unlinks_per_mille_month: 5.0,
            blocks_per_mille_month: 3.0,
            offline_per_mille_month: 3.0,
            contingencies_per_mille_month: 2.0,
            ip_changes_per_mille_month: 20.0,
            workers: std::env::var("LOAD_SEED_WORKERS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2),
            in_flight: std::env::var("LOAD_SEED_IN_FLIGHT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2048),
            batch: std::env::var("LOAD_SEED_BATCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1024),
            batches_in_flight: std::env::var("LOAD_SEED_BATCHES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(4),
            index_tail_records: std::env::var("LOAD_SEED_INDEX_TAIL")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1 << 20),
        }
    }
}

/// What to seed.
#[derive(Clone, Debug)]
pub struct SeedParams {
    pub customers: u32,
    pub per_customer: u32,
    pub history: Option<History>,
}

/// What was written, by kind.
#[derive(Debug, Default)]
pub struct Tally {
    pub check_ins: AtomicU64,
    pub binds: AtomicU64,
    pub renewals: AtomicU64,
    pub unlinks: AtomicU64,
    pub blocks: AtomicU64,
    pub unblocks: AtomicU64,
    pub offline: AtomicU64,
    pub contingencies_entered: AtomicU64,
    pub contingencies_cleared: AtomicU64,
}

impl Tally {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every record the history wrote.
    pub fn total(&self) -> u64 {
        [
            &self.check_ins,
            &self.binds,
            &self.renewals,
            &self.unlinks,
            &self.blocks,
            &self.unblocks,
            &self.offline,
            &self.contingencies_entered,
            &self.contingencies_cleared,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// The outcome of a seeding run.
#[derive(Debug)]
pub struct SeedReport {
    pub licenses: u64,
    /// The log's head position at the end.
    pub head: u64,
    /// Records written by the setup (through the Ledger).
    pub setup_records: u64,
    pub setup_seconds: f64,
    /// Records written by the history (through the store's append).
    pub history: Tally,
    pub history_seconds: f64,
    /// CPU time (user + system, all threads) the history took, when the system tells.
    pub history_cpu_seconds: Option<f64>,
    /// The store's write counters over the whole run.
    pub store_stats: FileStoreStats,
    /// The first start's admin token.
    pub admin_token: String,
}

/// A clock the seeder moves: a base time plus a share of a span as work progresses.
#[derive(Debug)]
pub struct SeedClock {
    base: Mutex<(DateTime<Utc>, i64, u64)>,
    done: AtomicU64,
}

impl SeedClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            base: Mutex::new((at, 0, 1)),
            done: AtomicU64::new(0),
        }
    }

    /// Stops at `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        self.spread(at, Duration::zero(), 1);
    }

    /// From `at`, moving through `span` as `total` steps are done.
    pub fn spread(&self, at: DateTime<Utc>, span: Duration, total: u64) {
        *self.base.lock() = (at, span.num_microseconds().unwrap_or(0), total.max(1));
        self.done.store(0, Ordering::Relaxed);
    }

    fn step(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

impl Clock for SeedClock {
    fn now(&self) -> DateTime<Utc> {
        let (at, span, total) = *self.base.lock();
        let done = self.done.load(Ordering::Relaxed).min(total);
        let offset = (i128::from(span) * i128::from(done) / i128::from(total)) as i64;
        at + Duration::microseconds(offset)
    }
}

/// A valid CNPJ for customer `n`.
pub fn cnpj(n: u32) -> Result<Cnpj, SeedError> {
    Ok(Cnpj::with_check_digits(&format!(
        "{:08}0001",
        20_000_000 + n
    ))?)
}

/// Terminal `n`'s hardware id and key.
pub fn terminal(n: u64) -> (HardwareId, HardwareKey) {
    (
        HardwareId::from_bytes((0x5002_0000_0000_0000 | n).to_be_bytes()),
        HardwareKey::from_bytes(
            (0x88A7_0000_0000_0000_0000_0000_0000_0000u128 | u128::from(n)).to_be_bytes(),
        ),
    )
}

/// A deterministic draw in [0, 1) for (`what`, `n`, `day`).
fn draw(what: u64, n: u64, day: u32) -> f64 {
    let mut z = what
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(u64::from(day).wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What support does to a license on a day (at most one thing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incident {
    Unlink,
    Block,
    Offline,
}

impl History {
    /// What happens to license `n` on history day `day` (1..days). Blocks and offline
    /// releases end the next day, so none starts on the last day.
    pub fn incident(&self, n: u64, day: u32) -> Option<Incident> {
        let x = draw(1, n, day) * 30_000.0;
        let last = day + 1 >= self.days;
        if x < self.unlinks_per_mille_month {
            Some(Incident::Unlink)
        } else if x < self.unlinks_per_mille_month + self.blocks_per_mille_month {
            (!last).then_some(Incident::Block)
        } else if x < self.unlinks_per_mille_month
            + self.blocks_per_mille_month
            + self.offline_per_mille_month
        {
            (!last).then_some(Incident::Offline)
        } else {
            None
        }
    }

    /// Whether customer `c` (with `licenses` licenses) has a type 01 contingency on `day`.
    pub fn upstream_contingency(&self, c: u32, licenses: u32, day: u32) -> bool {
        draw(2, u64::from(c), day) * 30_000.0
            < self.contingencies_per_mille_month * f64::from(licenses)
    }

    /// Whether terminal `n` moves to another address on `day` (a few times a year).
    pub fn ip_changes(&self, n: u64, day: u32) -> bool {
        draw(3, n, day) * 30_000.0 < self.ip_changes_per_mille_month
    }

    /// Terminal `n`'s address after `changes` changes.
    pub fn ip(&self, n: u64, changes: u64) -> IpAddr {
        let host = (n % 250 + changes * 7) % 250 + 2;
        IpAddr::V4(Ipv4Addr::new(192, 168, (n / 250 % 256) as u8, host as u8))
    }

    /// Which release terminal `n` runs on `day`: one every 30 days, rolled out to each
    /// terminal within 14 days of it.
    pub fn release(&self, n: u64, day: u32) -> u32 {
        let mut release = 0;
        let mut r = 1;
        while r * 30 <= day {
            if r * 30 + (draw(4, n, r) * 14.0) as u32 <= day {
                release = r;
            }
            r += 1;
        }
        release
    }

    /// The program version of a release.
    pub fn program_version(release: u32) -> Result<ProgramVersion, SeedError> {
        Ok(ProgramVersion::parse(&format!("2.0.{}.1", 12 + release))?)
    }
}

/// The day's first instant.
fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// One terminal and its license, as one worker tracks it.
struct Term {
    n: u64,
    customer: u32,
    cnpj: Cnpj,
    license_id: LicenseId,
    hardware_id: HardwareId,
    hardware_key: HardwareKey,
    /// The license's state and stream version, folded from what was appended.
    license: Loaded<License>,
    terms: RenewalTerms,
    /// How often its address changed so far.
    ip_changes: u64,
    /// The release it runs, and its version.
    release: (u32, ProgramVersion),
    /// Its stream `terminal-{cnpj}-{hardware id}`, and itself as actor.
    stream: StreamId,
    actor: Actor,
}

impl Term {
    fn apply(&mut self, event: &Event) {
        self.license.state.apply(event);
        self.license.version += 1;
    }

    /// Appends `event` to this terminal's license stream at the version the seeder holds
    /// (what the domain decided on), applies it and counts it in `count`.
    async fn on_license(
        &mut self,
        store: &FileStore,
        event: Event,
        actor: &Actor,
        count: &AtomicU64,
    ) -> Result<(), StoreError> {
        let stream = StreamId::license(self.license_id);
        let expected = ExpectedVersion::Exact(self.license.version);
        append(store, &stream, expected, vec![event.clone()], actor).await?;
        self.apply(&event);
        Tally::add(count);
        Ok(())
    }

    fn expires_on(&self) -> Result<NaiveDate, SeedError> {
        Ok(self
            .license
            .state
            .granted
            .as_ref()
            .ok_or("license not granted")?
            .expires_on)
    }
}

/// Seeds `data_dir` (which must be empty) and appends the terminals' rows to `csv_path`.
pub async fn seed(
    data_dir: &str,
    csv_path: &str,
    params: &SeedParams,
    now: DateTime<Utc>,
) -> Result<SeedReport, SeedError> {
    let days = params.history.as_ref().map_or(0, |h| h.days);
    let day0 = now.date_naive() - Duration::days(i64::from(days));
    // The setup runs on day 0 at 06:00 (or now, without history).
    let clock = Arc::new(SeedClock::new(if days == 0 {
        now
    } else {
        midnight(day0) + Duration::hours(6)
    }));
    let mut config = FileStoreConfig::new(data_dir);
    if let Some(h) = &params.history {
        config.index_tail_records = h.index_tail_records;
    }
    let store = FileStore::open(config, clock.clone()).await?;
    let ledger = Arc::new(
        Ledger::start(
            Arc::new(store.clone()),
            clock.clone(),
            LedgerConfig::default(),
        )
        .await?,
    );
    if ledger.view().license_count() > 0 {
        return Err(format!("{data_dir} already holds licenses; seed an empty directory").into());
    }
    let started = std::time::Instant::now();
    let expires = if days == 0 {
        now.date_naive() + Duration::days(365)
    } else {
        day0 + Duration::days(i64::from(
            params.history.as_ref().map_or(30, |h| h.interval_days),
        ))
    };
    let operator = Actor::operator("load-seed")?;
    let (mut secrets, admin) = SecretsFile::load_or_create(std::path::Path::new(data_dir))?;
    let admin =
        admin.ok_or("the data directory already has a secrets file; seed an empty directory")?;
    let offline_key = secrets.secrets.offline.get(&Product::EasyCash).cloned();
    // The server's audit key: the seeded offline activations keep a MAC of their code under
    // it, as the server's do (set once per process; a second seed keeps the first).
    let _ = AUDIT_KEY.set(secrets.secrets.audit.clone());
    let mut tokens = Vec::new();
    let mut entries = Vec::new();
    for c in 0..params.customers {
        let token = new_token()?;
        entries.push(TokenEntry {
            name: format!("load-terminal-{c:04}"),
            sha256: hex::encode(token_digest(&token)),
            role: Role::Terminal,
            cnpj: Some(cnpj(c)?),
        });
        tokens.push(Arc::new(token));
    }
    secrets.add_tokens(entries)?;
    let per_customer = params.per_customer;
    let history = params.history.clone();
    let mut tasks = JoinSet::new();
    for c in 0..params.customers {
        let token = tokens[c as usize].clone();
        let ledger = ledger.clone();
        let operator = operator.clone();
        let history = history.clone();
        tasks.spawn(async move {
            let cnpj = cnpj(c).map_err(|e| e.to_string())?;
            let register = CustomerCommand::Register {
                cnpj,
                trade_name: TradeName::parse(&format!("Loja {c:04}")).map_err(|e| e.to_string())?,
                since: None,
            };
            ledger
                .execute::<Customer>(
                    &StreamId::customer(&cnpj),
                    &register,
                    &operator,
                    Uuid::now_v7(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let contract_id = match &history {
                None => None,
                Some(h) => {
                    let contract_id = ContractId::new(c + 1).map_err(|e| e.to_string())?;
                    let sign = ContractCommand::Sign {
                        contract_id,
                        cnpj,
                        starts_on: day0,
                        ends_on: None,
                        interval_days: h.interval_days,
                        renew_before_days: h.renew_before_days,
                    };
                    ledger
                        .execute::<Contract>(
                            &StreamId::contract(contract_id),
                            &sign,
                            &operator,
                            Uuid::now_v7(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    Some(contract_id)
                }
            };
            let mut rows = Vec::new();
            for l in 0..per_customer {
                let n = u64::from(c) * u64::from(per_customer) + u64::from(l);
                let license_id = LicenseId::new(n as u32 + 1).map_err(|e| e.to_string())?;
                let grant = LicenseCommand::Grant {
                    license_id,
                    cnpj,
                    product: Product::EasyCash,
                    contract_id,
                    expires_on: expires,
                    resources: Resources::default(),
                };
                ledger
                    .execute::<License>(
                        &StreamId::license(license_id),
                        &grant,
                        &operator,
                        Uuid::now_v7(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let (hardware_id, hardware_key) = terminal(n);
                let (ip, program_version) = match &history {
                    None => ("192.168.0.10".parse().ok(), None),
                    Some(h) => (
                        Some(h.ip(n, 0)),
                        Some(History::program_version(0).map_err(|e| e.to_string())?),
                    ),
                };
                let req = CheckInRequest {
                    cnpj,
                    product: Product::EasyCash,
                    hardware_id,
                    hardware_key,
                    ip,
                    program_version,
                    caixa: None,
                    equipamento: None,
                };
                let plan = ledger.check_in(&req).await.map_err(|e| e.to_string())?;
                if plan.license_id.is_none() {
                    return Err(format!("terminal {hardware_id} was not bound"));
                }
                rows.push(format!(
                    "{cnpj},{hardware_id},{hardware_key},{license_id},{token}"
                ));
            }
            Ok::<_, String>(rows)
        });
        // At most 64 customers in flight: enough to batch appends, bounded memory.
        while tasks.len() >= 64 {
            if let Some(r) = tasks.join_next().await {
                write_rows(csv_path, r??)?;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        write_rows(csv_path, r??)?;
    }
    let setup_records = ledger.store().head().await?.position;
    let setup_seconds = started.elapsed().as_secs_f64();
    drop(ledger);

    let tally = Arc::new(Tally::default());
    let history_started = std::time::Instant::now();
    let cpu_started = cpu_seconds();
    if let (Some(h), Some(key)) = (&history, offline_key) {
        write_history(&store, &clock, h, params, day0, &key, &tally, &operator).await?;
    } else if history.is_some() {
        return Err("no offline activation key for EasyCash in the secrets file".into());
    }
    let history_seconds = history_started.elapsed().as_secs_f64();
    let history_cpu_seconds = cpu_seconds()
        .zip(cpu_started)
        .map(|(end, start)| end - start);
    let head = store.head().await?.position;
    let store_stats = store.stats();
    store.close().await?;
    let tally = Arc::into_inner(tally).ok_or("a history task outlived the history")?;
    Ok(SeedReport {
        licenses: u64::from(params.customers) * u64::from(per_customer),
        head,
        setup_records,
        setup_seconds,
        history: tally,
        history_seconds,
        history_cpu_seconds,
        store_stats,
        admin_token: admin,
    })
}

/// `events` with fresh ids, as one command: the first id correlates them.
fn new_events(events: Vec<Event>, actor: &Actor) -> Vec<NewEvent> {
    let correlation = Uuid::now_v7();
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| NewEvent {
            event_id: if i == 0 { correlation } else { Uuid::now_v7() },
            event,
            actor: actor.clone(),
            correlation_id: correlation,
        })
        .collect()
}

/// Appends `events` to `stream` with fresh ids.
async fn append(
    store: &FileStore,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<Event>,
    actor: &Actor,
) -> Result<(), StoreError> {
    store
        .append(stream, expected, new_events(events, actor))
        .await
        .map(|_| ())
}

/// Appends quiet days' records in one `append_batch`; the first refusal fails the day.
async fn append_quiet(
    store: &FileStore,
    appends: Vec<BatchAppend>,
    tally: &Tally,
) -> Result<(), SeedError> {
    for answer in store.append_batch(appends).await? {
        answer?;
        Tally::add(&tally.check_ins);
    }
    Ok(())
}

/// A customer-wide contingency (type 01) entered or cleared, at the stream's version.
async fn upstream(
    store: &FileStore,
    cnpj: Cnpj,
    enter: bool,
    actor: &Actor,
) -> Result<(), SeedError> {
    let stream = StreamId::contingency(&cnpj);
    let event: Event = if enter {
        ContingencyEntered {
            cnpj,
            kind: ContingencyKind::Intelliweb,
            hardware_id: None,
            license_id: None,
            grace_until: None,
            note: Some(Note::parse("servidor do cliente sem acesso à plataforma")?),
        }
        .into()
    } else {
        ContingencyCleared {
            cnpj,
            kind: ContingencyKind::Intelliweb,
            hardware_id: None,
            note: None,
        }
        .into()
    };
    let version = store.stream_version(&stream).await?;
    append(
        store,
        &stream,
        ExpectedVersion::Exact(version),
        vec![event],
        actor,
    )
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_history(
    store: &FileStore,
    clock: &Arc<SeedClock>,
    h: &History,
    params: &SeedParams,
    day0: NaiveDate,
    offline_key: &[u8],
    tally: &Arc<Tally>,
    operator: &Actor,
) -> Result<(), SeedError> {
    let customers = params.customers;
    let per_customer = params.per_customer;
    let licenses = u64::from(customers) * u64::from(per_customer);
    let workers = h.workers.clamp(1, licenses.max(1) as usize);
    // Each worker owns the terminals n ≡ w (mod workers).
    let mut shares: Vec<Vec<Term>> = (0..workers).map(|_| Vec::new()).collect();
    let mut contracts: std::collections::HashMap<ContractId, Contract> =
        std::collections::HashMap::new();
    for n in 0..licenses {
        let c = (n / u64::from(per_customer)) as u32;
        let cnpj = cnpj(c)?;
        let license_id = LicenseId::new(n as u32 + 1)?;
        let (hardware_id, hardware_key) = terminal(n);
        let stream = StreamId::license(license_id);
        let records = store.read_stream(&stream, 1, 100).await?;
        let events = records
            .iter()
            .map(|r| r.event())
            .collect::<Result<Vec<_>, _>>()?;
        let license = Loaded::<License>::from_events(events.iter());
        let contract_id = license
            .state
            .granted
            .as_ref()
            .and_then(|g| g.contract_id)
            .ok_or("license without contract")?;
        let contract = match contracts.get(&contract_id) {
            Some(c) => c.clone(),
            None => {
                let records = store
                    .read_stream(&StreamId::contract(contract_id), 1, 100)
                    .await?;
                let events = records
                    .iter()
                    .map(|r| r.event())
                    .collect::<Result<Vec<_>, _>>()?;
                let contract = Loaded::<Contract>::from_events(events.iter()).state;
                contracts.insert(contract_id, contract.clone());
                contract
            }
        };
        shares[(n % workers as u64) as usize].push(Term {
            n,
            customer: c,
            cnpj,
            license_id,
            hardware_id,
            hardware_key,
            license,
            terms: RenewalTerms {
                contract,
                customer_active: true,
                // Unused here: each day's renewal is `contract_renewal` on that day's date.
                today: chrono::NaiveDate::default(),
            },
            ip_changes: 0,
            release: (0, History::program_version(0)?),
            stream: StreamId::terminal(&cnpj, &hardware_id),
            actor: Actor::terminal(&hardware_id),
        });
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(workers + 1));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let day_now: Arc<AtomicU64> = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for share in shares {
        let store = store.clone();
        let clock = clock.clone();
        let h = h.clone();
        let barrier = barrier.clone();
        let failure = failure.clone();
        let tally = tally.clone();
        let operator = operator.clone();
        let offline_key = offline_key.to_vec();
        let day_now = day_now.clone();
        tasks.spawn(async move {
            let mut share = share;
            for _ in 1..h.days {
                barrier.wait().await;
                let day = day_now.load(Ordering::Acquire) as u32;
                if failure.lock().is_none() {
                    if let Err(e) = share_day(
                        &store,
                        &clock,
                        &h,
                        per_customer,
                        day0,
                        day,
                        &mut share,
                        &offline_key,
                        &tally,
                        &operator,
                    )
                    .await
                    {
                        failure.lock().get_or_insert(e.to_string());
                    }
                }
                barrier.wait().await;
            }
        });
    }
    let started = std::time::Instant::now();
    for day in 1..h.days {
        let date = day0 + Duration::days(i64::from(day));
        // 07:00: type 01 contingencies open.
        clock.set(midnight(date) + Duration::hours(7));
        let down: Vec<u32> = (0..customers)
            .filter(|&c| h.upstream_contingency(c, per_customer, day) && day + 1 < h.days)
            .collect();
        for &c in &down {
            upstream(store, cnpj(c)?, true, operator).await?;
            Tally::add(&tally.contingencies_entered);
        }
        // 08:00 to 20:00: the terminals, in order.
        clock.spread(
            midnight(date) + Duration::hours(8),
            Duration::hours(12),
            licenses,
        );
        day_now.store(u64::from(day), Ordering::Release);
        barrier.wait().await;
        barrier.wait().await;
        if let Some(e) = failure.lock().take() {
            tasks.abort_all();
            return Err(e.into());
        }
        // 21:00: they close.
        clock.set(midnight(date) + Duration::hours(21));
        for &c in &down {
            upstream(store, cnpj(c)?, false, operator).await?;
            Tally::add(&tally.contingencies_cleared);
        }
        if day % 30 == 0 || day + 1 == h.days {
            let written = tally.total();
            eprintln!(
                "day {day}/{}: {written} records, {:.0} records/s",
                h.days - 1,
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    Ok(())
}

/// One task's share of the terminals on `day`: the quiet days' records in batches
/// (`batches_in_flight` at a time), then the eventful days, `in_flight` at a time.
#[allow(clippy::too_many_arguments)]
async fn share_day(
    store: &FileStore,
    clock: &SeedClock,
    h: &History,
    per_customer: u32,
    day0: NaiveDate,
    day: u32,
    share: &mut [Term],
    offline_key: &[u8],
    tally: &Tally,
    operator: &Actor,
) -> Result<(), SeedError> {
    let date = day0 + Duration::days(i64::from(day));
    let batch = h.batch.max(1);
    let mut pending: Vec<BatchAppend> = Vec::with_capacity(batch);
    let mut batches = FuturesUnordered::new();
    let mut eventful = Vec::new();
    for t in share.iter_mut() {
        match plan_day(h, per_customer, day0, day, t)? {
            Day::Eventful(ip) => eventful.push((t, ip)),
            Day::Quiet(record) => {
                pending.push(BatchAppend {
                    stream: t.stream.clone(),
                    expected: ExpectedVersion::Any,
                    events: new_events(vec![record], &t.actor),
                });
                // The record's time: the writer reads the clock when it writes it, at or
                // after this step.
                clock.step();
                if pending.len() >= batch {
                    let appends = std::mem::replace(&mut pending, Vec::with_capacity(batch));
                    batches.push(append_quiet(store, appends, tally));
                    while batches.len() >= h.batches_in_flight.max(1) {
                        if let Some(r) = batches.next().await {
                            r?;
                        }
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        batches.push(append_quiet(store, pending, tally));
    }
    while let Some(r) = batches.next().await {
        r?;
    }
    // One task polls them all, so an acknowledgement wakes no other task.
    let mut days = FuturesUnordered::new();
    let mut eventful = eventful.into_iter();
    loop {
        while days.len() < h.in_flight.max(1) {
            let Some((t, ip)) = eventful.next() else {
                break;
            };
            days.push(Box::pin(eventful_day(
                store,
                clock,
                h,
                per_customer,
                date,
                day,
                t,
                ip,
                offline_key,
                tally,
                operator,
            )));
        }
        let Some(r) = days.next().await else { break };
        r?;
    }
    Ok(())
}

/// What a terminal's day holds.
enum Day {
    /// Its check-in record alone.
    Quiet(Event),
    /// More than that ([`eventful_day`]), with the day's IP.
    Eventful(IpAddr),
}

/// Decides whether the terminal's `day` is quiet, and if so makes its check-in record.
fn plan_day(
    h: &History,
    per_customer: u32,
    day0: NaiveDate,
    day: u32,
    t: &mut Term,
) -> Result<Day, SeedError> {
    let date = day0 + Duration::days(i64::from(day));
    if h.ip_changes(t.n, day) {
        t.ip_changes += 1;
    }
    let ip = h.ip(t.n, t.ip_changes);
    let renewal_due =
        t.license.state.active && contract_renewal(t.expires_on()?, &t.terms, date).is_some();
    let yesterday = h.incident(t.n, day - 1).filter(|_| day > 1);
    let quiet = h.incident(t.n, day).is_none()
        && matches!(yesterday, None | Some(Incident::Unlink))
        && t.license.state.bound.is_some()
        && !renewal_due;
    if !quiet {
        return Ok(Day::Eventful(ip));
    }
    Ok(Day::Quiet(record(t, h, per_customer, day, date, ip)?))
}

/// The terminal's `TerminalCheckedIn` for `day`, after its license's events of the day:
/// the outcome as `decide_check_in` gives it.
fn record(
    t: &mut Term,
    h: &History,
    per_customer: u32,
    day: u32,
    date: NaiveDate,
    ip: IpAddr,
) -> Result<Event, SeedError> {
    let expires_on = t.expires_on()?;
    let upstream = h.upstream_contingency(t.customer, per_customer, day) && day + 1 < h.days;
    let outcome = if t.license.state.blocked {
        CheckInOutcome::Refused {
            reason: RefusalReason::LicenseBlocked,
        }
    } else if upstream {
        CheckInOutcome::Contingency {
            kind: ContingencyKind::Intelliweb,
            expires_on: expires_on + Duration::days(UPSTREAM_GRACE_DAYS),
        }
    } else if date > expires_on {
        CheckInOutcome::Refused {
            reason: RefusalReason::LicenseExpired,
        }
    } else {
        let days_left = (expires_on - date).num_days();
        if days_left <= WARNING_DAYS {
            CheckInOutcome::ExpiringSoon {
                expires_on,
                days_left: days_left as u16,
            }
        } else {
            CheckInOutcome::Valid { expires_on }
        }
    };
    let release = h.release(t.n, day);
    if release != t.release.0 {
        t.release = (release, History::program_version(release)?);
    }
    Ok(TerminalCheckedIn {
        cnpj: t.cnpj,
        product: Product::EasyCash,
        hardware_id: t.hardware_id,
        hardware_key: t.hardware_key,
        license_id: Some(t.license_id),
        // Terminals that do not send their address (the request's `ip` is optional): one
        // check-in in eleven, so a license's last IP outlives some of its check-ins.
        ip: (!(t.n + u64::from(day)).is_multiple_of(11)).then_some(ip),
        program_version: Some(t.release.1.clone()),
        caixa: None,
        equipamento: None,
        outcome,
    }
    .into())
}

/// A day with more than a check-in record, in the order the domain decides it: support's
/// doing first, then the check-in's steps (bind, renew, clear a manual contingency, record).
#[allow(clippy::too_many_arguments)]
async fn eventful_day(
    store: &FileStore,
    clock: &SeedClock,
    h: &History,
    per_customer: u32,
    date: NaiveDate,
    day: u32,
    t: &mut Term,
    ip: IpAddr,
    offline_key: &[u8],
    tally: &Tally,
    operator: &Actor,
) -> Result<(), SeedError> {
    let incident = h.incident(t.n, day);
    let yesterday = h.incident(t.n, day - 1).filter(|_| day > 1);
    let terminal_actor = t.actor.clone();
    // Support's doing, before the terminal's check-in.
    if yesterday == Some(Incident::Block) {
        let e: Event = LicenseUnblocked {
            license_id: t.license_id,
            note: None,
        }
        .into();
        t.on_license(store, e, operator, &tally.unblocks).await?;
    }
    match incident {
        Some(Incident::Unlink) => {
            let e: Event = LicenseUnlinked {
                license_id: t.license_id,
                hardware_id: t.hardware_id,
                note: Some(Note::parse("troca de equipamento")?),
            }
            .into();
            t.on_license(store, e, operator, &tally.unlinks).await?;
        }
        Some(Incident::Block) => {
            let e: Event = LicenseBlocked {
                license_id: t.license_id,
                note: Some(Note::parse("pagamento em atraso")?),
            }
            .into();
            t.on_license(store, e, operator, &tally.blocks).await?;
        }
        Some(Incident::Offline) => {
            // The terminal cannot reach its server today: support releases it by phone.
            // The serial: the hardware id's prefix, then a per-request challenge.
            let h_id = t.hardware_id.to_string();
            let challenge = (t.n << 12 | u64::from(day)) as u32;
            let serial = Serial::parse(&format!("{}{challenge:08X}", &h_id[..8]))?;
            let valid_until = offline::valid_until(date);
            // As the server issues it for a terminal it has seen: under the terminal's own
            // key, the record keeping only the code's MAC.
            let code = offline::terminal_counter_key(
                &offline::terminal_key(offline_key, &t.cnpj, &t.hardware_id),
                &serial,
                Product::EasyCash,
                valid_until,
            );
            let audit = AUDIT_KEY.get().map(Vec::as_slice).unwrap_or_default();
            let issued: Event = OfflineActivationIssued {
                serial,
                cnpj: Some(t.cnpj),
                product: Product::EasyCash,
                license_id: Some(t.license_id),
                caixa: None,
                equipamento: None,
                terminal: Some(t.hardware_id),
                counter_key: None,
                code_mac: Some(offline::code_mac(
                    audit,
                    &serial,
                    Product::EasyCash,
                    valid_until,
                    &code,
                )),
                valid_until: midnight(valid_until + Duration::days(1)) - Duration::microseconds(1),
            }
            .into();
            append(
                store,
                &StreamId::offline_activation(&serial),
                ExpectedVersion::NoStream,
                vec![issued],
                operator,
            )
            .await?;
            Tally::add(&tally.offline);
            let enter: Event = ContingencyEntered {
                cnpj: t.cnpj,
                kind: ContingencyKind::Manual,
                hardware_id: Some(t.hardware_id),
                license_id: Some(t.license_id),
                grace_until: Some(valid_until),
                note: None,
            }
            .into();
            // The customer's contingency stream is shared by its terminals: decide on the
            // version read, and read again if another terminal's entry came first.
            let stream = StreamId::contingency(&t.cnpj);
            loop {
                let v = store.stream_version(&stream).await?;
                match append(
                    store,
                    &stream,
                    ExpectedVersion::Exact(v),
                    vec![enter.clone()],
                    operator,
                )
                .await
                {
                    Err(StoreError::WrongExpectedVersion { .. }) => continue,
                    r => r?,
                }
                break;
            }
            Tally::add(&tally.contingencies_entered);
            clock.step();
            return Ok(());
        }
        None => {}
    }
    // The check-in (decide_check_in's order: bind, renew, outcome, clear, record).
    if t.license.state.bound.is_none() {
        let e: Event = LicenseBound {
            license_id: t.license_id,
            hardware_id: t.hardware_id,
            hardware_key: t.hardware_key,
            ip: Some(ip),
            caixa: None,
            equipamento: None,
        }
        .into();
        t.on_license(store, e, &terminal_actor, &tally.binds)
            .await?;
    }
    if t.license.state.active {
        let expires_on = t.expires_on()?;
        if let Some(new_expiry) = contract_renewal(expires_on, &t.terms, date) {
            let contract_id = t
                .terms
                .contract
                .signed
                .as_ref()
                .ok_or("contract not signed")?
                .contract_id;
            let e: Event = LicenseRenewed {
                license_id: t.license_id,
                previous_expiry: expires_on,
                expires_on: new_expiry,
                cause: RenewalCause::Contract { contract_id },
            }
            .into();
            t.on_license(store, e, &terminal_actor, &tally.renewals)
                .await?;
        }
    }
    if yesterday == Some(Incident::Offline) {
        // Back online: its manual contingency ends.
        let e: Event = ContingencyCleared {
            cnpj: t.cnpj,
            kind: ContingencyKind::Manual,
            hardware_id: Some(t.hardware_id),
            note: None,
        }
        .into();
        append(
            store,
            &StreamId::contingency(&t.cnpj),
            ExpectedVersion::Any,
            vec![e],
            &terminal_actor,
        )
        .await?;
        Tally::add(&tally.contingencies_cleared);
    }
    let record = record(t, h, per_customer, day, date, ip)?;
    append(
        store,
        &t.stream,
        ExpectedVersion::Any,
        vec![record],
        &terminal_actor,
    )
    .await?;
    Tally::add(&tally.check_ins);
    clock.step();
    Ok(())
}

/// This process's CPU time so far (user + system, every thread), from `/proc/self/stat`
/// (in clock ticks of 1/100 s, Linux's `USER_HZ`); `None` elsewhere.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Appends `rows` to the CSV at `path`.
pub fn write_rows(path: &str, rows: Vec<String>) -> Result<(), SeedError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for r in rows {
        writeln!(f, "{r}")?;
    }
    Ok(())
}
