//! Snapshots of a [`LedgerView`]: its whole state as bytes, so that a server can start from
//! the newest snapshot and apply only the log's tail, and as-of checkpoints can start from a
//! nearby one.
//!
//! The bytes are postcard: the format version (a varint, [`SNAPSHOT_FORMAT_VERSION`]) and
//! then that version's body, a tree of `Snapshot*` structs defined here that mirror the view's
//! state field by field. The view's own types are never serialized: a change to the view that
//! changes what a snapshot holds is a new format version (a reader refuses versions it does
//! not know, and the caller rebuilds from the log), never a silent reinterpretation. Value
//! types (CNPJ, ids, keys, outcomes, notes…) use their event-payload binary forms, which the
//! golden files of `ledger-events` keep stable; dates are days since 0001-01-01 and instants
//! seconds and nanoseconds since the Unix epoch, encoded here.
//!
//! Invariants:
//! - **Deterministic**: the same state gives the same bytes, whatever order events reached
//!   the view's maps in: every map is written as a list sorted by key (a customer's
//!   contingency entries keep their order of entry, which the fold depends on), and
//!   repeated values (CNPJs, resource sets, program versions) are written once, in tables in
//!   order of first use along those sorted lists, and referred to by index.
//! - **Complete**: a decoded view continues applying events exactly as the view that was
//!   encoded would have (same rows, indexes, stamps, max ids, kept inconsistencies and their
//!   count). The indexes the fold derives from licenses alone (licenses per customer and
//!   product) and the interners are rebuilt on decode; the bound-terminal index is written,
//!   since it can differ from the licenses' bindings (a terminal rebound to another license).
//! - **Validated**: decoding checks the version, that nothing follows the body, every value
//!   type (through its own decoder), that lists are sorted without duplicates, that indexes
//!   into the tables and the bound index point at something, that the max ids are the
//!   largest ids present and that no position lies past the snapshot's. It never panics on
//!   any bytes; what it accepts is a view that could continue applying events.
//!
//! A snapshot says nothing about which log it came from and carries no checksum (most
//! damage to its bytes still decodes, to another valid view): the caller stores it with a
//! hash of its bytes and the position and chain hash it reflects, and checks those against
//! the log before trusting it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use ledger_events::{
    CheckInOutcome, Cnpj, ContingencyKind, ContractId, HardwareId, HardwareKey, LicenseId, Note,
    Partner, Position, Product, ProgramVersion, Resources, StreamVersion, TerminalNumber,
    TimeZoneName, TradeName,
};
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::rows::{Binding, ContingencyRow, ContractRow, CustomerRow};
use crate::state::{LicenseState, StoredCheckIn, TerminalState};
use crate::view::{Inconsistency, LedgerView, INCONSISTENCIES_KEPT};

/// The format [`LedgerView::encode_snapshot`] writes and the only one
/// [`LedgerView::decode_snapshot`] reads. Version 2 is version 1's body followed by what each
/// customer gained (profile, "Criado em", "Atualizado em"); version 1 cannot say when its
/// customers were created, so it is refused and the caller rebuilds from the log (once,
/// after the upgrade).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

/// Why bytes are not a snapshot this build can restore.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Written in a format this build does not read (rebuild from the log instead).
    #[error("snapshot format version {found} is not supported (this build reads version {SNAPSHOT_FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version the bytes start with.
        found: u32,
    },
    /// The bytes do not decode as a snapshot (truncated, damaged, or a value out of range).
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// Bytes follow the snapshot's end.
    #[error("{0} bytes follow the end of the snapshot")]
    TrailingBytes(usize),
    /// The snapshot decodes but describes a state no fold produces.
    #[error("snapshot is not valid: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------------
// Format version 1
// ---------------------------------------------------------------------------------------------

/// A date: days since 0001-01-01 (an `i32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Day(NaiveDate);

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.num_days_from_ce().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let days = i32::deserialize(d)?;
        NaiveDate::from_num_days_from_ce_opt(days)
            .map(Day)
            .ok_or_else(|| de::Error::custom(format_args!("day {days} is out of range")))
    }
}

/// An instant: seconds since the Unix epoch and nanoseconds within the second (nothing is
/// lost, whatever the precision the view was fed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Time(DateTime<Utc>);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0.timestamp(), self.0.timestamp_subsec_nanos()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
        DateTime::from_timestamp(secs, nanos)
            .map(Time)
            .ok_or_else(|| {
                de::Error::custom(format_args!("time {secs}.{nanos:09} is out of range"))
            })
    }
}

/// Version 1's body (after the version number). CNPJs, resource sets and program versions
/// are written once, in tables, and referred to by their index there.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotV1 {
    /// The last applied position.
    position: Position,
    /// Largest license and contract ids granted and signed, 0 for none.
    max_license_id: u32,
    max_contract_id: u32,
    /// Events applied only in part, all told.
    inconsistency_count: u64,
    /// The latest of them, oldest first.
    inconsistencies: Vec<SnapshotInconsistency>,
    /// Distinct CNPJs, in order of first use by the lists below (customers first).
    cnpjs: Vec<Cnpj>,
    /// Distinct resource sets, in order of first use by `licenses`.
    resources: Vec<Resources>,
    /// Distinct program versions, in order of first use by `licenses` then `terminals`.
    program_versions: Vec<ProgramVersion>,
    /// Sorted by CNPJ.
    customers: Vec<SnapshotCustomer>,
    /// Sorted by id.
    contracts: Vec<SnapshotContract>,
    /// Sorted by id.
    licenses: Vec<SnapshotLicense>,
    /// The check-in index, sorted by (CNPJ, product, hardware id).
    bound: Vec<SnapshotBound>,
    /// Sorted by (CNPJ, hardware id).
    terminals: Vec<SnapshotTerminal>,
    /// Sorted by CNPJ; each customer's entries in the order entered.
    contingencies: Vec<SnapshotContingencies>,
    /// Sorted by CNPJ.
    stamps: Vec<SnapshotStamp>,
}

/// Version 2's addition, after version 1's body: one per customer, in the order of
/// `SnapshotV1::customers`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotProfile {
    partner: Option<Partner>,
    time_zone: Option<TimeZoneName>,
    created_at: Time,
    updated_at: Time,
}

/// An index into `SnapshotV1::cnpjs`.
type CnpjIndex = u32;

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotInconsistency {
    position: Position,
    problem: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotCustomer {
    cnpj: CnpjIndex,
    trade_name: TradeName,
    since: Day,
    active: bool,
    blocked: bool,
    blacklisted: bool,
    version: StreamVersion,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotContract {
    contract_id: ContractId,
    cnpj: CnpjIndex,
    starts_on: Day,
    ends_on: Option<Day>,
    interval_days: u16,
    renew_before_days: u16,
    active: bool,
    version: StreamVersion,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotLicense {
    license_id: LicenseId,
    cnpj: CnpjIndex,
    product: Product,
    blocked: bool,
    active: bool,
    contract_id: Option<ContractId>,
    expires_on: Day,
    /// Index into `SnapshotV1::resources`.
    resources: u32,
    binding: Option<SnapshotBinding>,
    last_ip: Option<IpAddr>,
    last_check_in: Option<SnapshotCheckIn>,
    granted_at: Time,
    version: StreamVersion,
    updated_position: Position,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBinding {
    hardware_id: HardwareId,
    hardware_key: HardwareKey,
    ip: Option<IpAddr>,
    caixa: Option<TerminalNumber>,
    equipamento: Option<TerminalNumber>,
    bound_at: Time,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotCheckIn {
    at: Time,
    hardware_id: HardwareId,
    ip: Option<IpAddr>,
    /// Index into `SnapshotV1::program_versions`.
    program_version: Option<u32>,
    outcome: CheckInOutcome,
    position: Position,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBound {
    cnpj: CnpjIndex,
    product: Product,
    hardware_id: HardwareId,
    license_id: LicenseId,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotTerminal {
    cnpj: CnpjIndex,
    hardware_id: HardwareId,
    version: StreamVersion,
    /// The latest check-in per product, sorted by product, at least one.
    last: Vec<(Product, SnapshotCheckIn)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotContingencies {
    cnpj: CnpjIndex,
    /// At least one, in the order entered.
    entries: Vec<SnapshotContingency>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotContingency {
    kind: ContingencyKind,
    hardware_id: Option<HardwareId>,
    license_id: Option<LicenseId>,
    grace_until: Option<Day>,
    entered_at: Time,
    entered_position: Position,
    note: Option<Note>,
    cleared_at: Option<Time>,
    cleared_note: Option<Note>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotStamp {
    cnpj: CnpjIndex,
    position: Position,
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// The view's state, copied out while the applier is held off (unsorted: sorting and
/// serializing happen after the applier is let go).
struct Copied {
    position: Position,
    max_license_id: u32,
    max_contract_id: u32,
    inconsistency_count: u64,
    inconsistencies: Vec<Inconsistency>,
    customers: Vec<(Cnpj, CustomerRow)>,
    contracts: Vec<(ContractId, ContractRow)>,
    licenses: Vec<(LicenseId, LicenseState)>,
    bound: Vec<((Cnpj, Product, HardwareId), LicenseId)>,
    terminals: Vec<((Cnpj, HardwareId), TerminalState)>,
    contingencies: Vec<(Cnpj, Vec<ContingencyRow>)>,
    stamps: Vec<(Cnpj, Position)>,
}

/// Copies a map's entries out, one shard locked at a time.
fn copy<K: Copy + Eq + std::hash::Hash, V, T>(
    map: &crate::view::Map<K, V>,
    copy: impl Fn(&V) -> T,
) -> Vec<(K, T)> {
    let mut all = Vec::with_capacity(map.len());
    all.extend(map.iter().map(|r| (*r.key(), copy(r.value()))));
    all
}

/// The entries in key order. Sorts (key, index) pairs rather than the entries themselves,
/// which are large (a license is about 200 bytes).
fn in_key_order<K: Ord + Copy, T>(all: &[(K, T)]) -> impl Iterator<Item = (K, &T)> {
    let mut order: Vec<(K, usize)> = all.iter().enumerate().map(|(i, e)| (e.0, i)).collect();
    order.sort_unstable_by_key(|e| e.0);
    order.into_iter().map(move |(k, i)| (k, &all[i].1))
}

/// Numbers distinct shared values in order of first use. The view shares equal values
/// through one `Arc` (interned), so most lookups are by address; equal values behind two
/// addresses still get one number.
struct Table<T> {
    by_address: HashMap<usize, u32, ahash::RandomState>,
    by_value: HashMap<T, u32, ahash::RandomState>,
    values: Vec<T>,
}

impl<T: std::hash::Hash + Eq + Clone> Table<T> {
    fn new() -> Self {
        Self {
            by_address: HashMap::with_hasher(ahash::RandomState::new()),
            by_value: HashMap::with_hasher(ahash::RandomState::new()),
            values: Vec::new(),
        }
    }

    /// `value`'s number. The `Arc`s passed in must outlive the table (they do: the copied
    /// state holds them), so an address is never reused for another value.
    fn index_of(&mut self, value: &Arc<T>) -> u32 {
        let address = Arc::as_ptr(value) as usize;
        if let Some(&i) = self.by_address.get(&address) {
            return i;
        }
        let i = match self.by_value.get(&**value) {
            Some(&i) => i,
            None => {
                // A view holds far fewer than 2^32 distinct values (each came from an event).
                let i = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
                self.by_value.insert(T::clone(value), i);
                self.values.push(T::clone(value));
                i
            }
        };
        self.by_address.insert(address, i);
        i
    }
}

/// Numbers distinct CNPJs in order of first use.
struct CnpjTable {
    index: HashMap<Cnpj, u32, ahash::RandomState>,
    values: Vec<Cnpj>,
}

impl CnpjTable {
    fn index_of(&mut self, cnpj: Cnpj) -> CnpjIndex {
        let next = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        let i = *self.index.entry(cnpj).or_insert(next);
        if i == next {
            self.values.push(cnpj);
        }
        i
    }
}

fn check_in_to_snapshot(
    c: &StoredCheckIn,
    versions: &mut Table<ProgramVersion>,
) -> SnapshotCheckIn {
    SnapshotCheckIn {
        at: Time(c.at),
        hardware_id: c.hardware_id,
        ip: c.ip,
        program_version: c.program_version.as_ref().map(|v| versions.index_of(v)),
        outcome: c.outcome,
        position: c.position,
    }
}

impl Copied {
    fn into_body(self) -> (SnapshotV1, Vec<SnapshotProfile>) {
        let mut cnpjs = CnpjTable {
            index: HashMap::with_hasher(ahash::RandomState::new()),
            values: Vec::new(),
        };
        let mut resources = Table::<Resources>::new();
        let mut versions = Table::<ProgramVersion>::new();
        let profiles: Vec<SnapshotProfile> = in_key_order(&self.customers)
            .map(|(_, c)| SnapshotProfile {
                partner: c.partner.clone(),
                time_zone: c.time_zone.clone(),
                created_at: Time(c.created_at),
                updated_at: Time(c.updated_at),
            })
            .collect();
        let customers = in_key_order(&self.customers)
            .map(|(cnpj, c)| SnapshotCustomer {
                cnpj: cnpjs.index_of(cnpj),
                trade_name: c.trade_name.clone(),
                since: Day(c.since),
                active: c.active,
                blocked: c.blocked,
                blacklisted: c.blacklisted,
                version: c.version,
            })
            .collect();
        let contracts = in_key_order(&self.contracts)
            .map(|(contract_id, c)| SnapshotContract {
                contract_id,
                cnpj: cnpjs.index_of(c.cnpj),
                starts_on: Day(c.starts_on),
                ends_on: c.ends_on.map(Day),
                interval_days: c.interval_days,
                renew_before_days: c.renew_before_days,
                active: c.active,
                version: c.version,
            })
            .collect();
        let licenses = in_key_order(&self.licenses)
            .map(|(license_id, l)| SnapshotLicense {
                license_id,
                cnpj: cnpjs.index_of(l.cnpj),
                product: l.product,
                blocked: l.blocked,
                active: l.active,
                contract_id: l.contract_id,
                expires_on: Day(l.expires_on),
                resources: resources.index_of(&l.resources),
                binding: l.binding.map(|b| SnapshotBinding {
                    hardware_id: b.hardware_id,
                    hardware_key: b.hardware_key,
                    ip: b.ip,
                    caixa: b.caixa,
                    equipamento: b.equipamento,
                    bound_at: Time(b.bound_at),
                }),
                last_ip: l.last_ip,
                last_check_in: l
                    .last_check_in
                    .as_ref()
                    .map(|c| check_in_to_snapshot(c, &mut versions)),
                granted_at: Time(l.granted_at),
                version: l.version,
                updated_position: l.updated_position,
            })
            .collect();
        let bound = in_key_order(&self.bound)
            .map(|((cnpj, product, hardware_id), license_id)| SnapshotBound {
                cnpj: cnpjs.index_of(cnpj),
                product,
                hardware_id,
                license_id: *license_id,
            })
            .collect();
        let terminals = in_key_order(&self.terminals)
            .map(|((cnpj, hardware_id), t)| SnapshotTerminal {
                cnpj: cnpjs.index_of(cnpj),
                hardware_id,
                version: t.version,
                last: t
                    .last
                    .iter()
                    .map(|(p, c)| (*p, check_in_to_snapshot(c, &mut versions)))
                    .collect(),
            })
            .collect();
        let contingencies = in_key_order(&self.contingencies)
            .map(|(cnpj, rows)| SnapshotContingencies {
                cnpj: cnpjs.index_of(cnpj),
                entries: rows
                    .iter()
                    .map(|r| SnapshotContingency {
                        kind: r.kind,
                        hardware_id: r.hardware_id,
                        license_id: r.license_id,
                        grace_until: r.grace_until.map(Day),
                        entered_at: Time(r.entered_at),
                        entered_position: r.entered_position,
                        note: r.note.clone(),
                        cleared_at: r.cleared_at.map(Time),
                        cleared_note: r.cleared_note.clone(),
                    })
                    .collect(),
            })
            .collect();
        let stamps = in_key_order(&self.stamps)
            .map(|(cnpj, position)| SnapshotStamp {
                cnpj: cnpjs.index_of(cnpj),
                position: *position,
            })
            .collect();
        let body = SnapshotV1 {
            position: self.position,
            max_license_id: self.max_license_id,
            max_contract_id: self.max_contract_id,
            inconsistency_count: self.inconsistency_count,
            inconsistencies: self
                .inconsistencies
                .into_iter()
                .map(|i| SnapshotInconsistency {
                    position: i.position,
                    problem: i.problem,
                })
                .collect(),
            cnpjs: cnpjs.values,
            resources: resources.values,
            program_versions: versions.values,
            customers,
            contracts,
            licenses,
            bound,
            terminals,
            contingencies,
            stamps,
        };
        (body, profiles)
    }
}

impl LedgerView {
    /// The view's whole state as a snapshot (see [`crate::snapshot`]): the same state always
    /// gives the same bytes. Holds the applier off while it copies the state out (not while
    /// it sorts and serializes), so the snapshot is the state at exactly
    /// [`LedgerView::position`]; readers are never held off.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let copied = {
            let applier = self.lock_applier();
            Copied {
                position: self.position(),
                max_license_id: self.max_license_id.load(Ordering::Acquire),
                max_contract_id: self.max_contract_id.load(Ordering::Acquire),
                inconsistency_count: applier.inconsistency_count,
                inconsistencies: applier.inconsistencies.iter().cloned().collect(),
                customers: copy(&self.customers, CustomerRow::clone),
                contracts: copy(&self.contracts, ContractRow::clone),
                licenses: copy(&self.licenses, LicenseState::clone),
                bound: copy(&self.bound, |id| *id),
                terminals: copy(&self.terminals, TerminalState::clone),
                contingencies: copy(&self.contingencies, Vec::clone),
                stamps: copy(&self.stamps, |p| *p),
            }
        };
        let (body, profiles) = copied.into_body();
        let out = postcard::to_extend(&SNAPSHOT_FORMAT_VERSION, Vec::new())
            .and_then(|out| postcard::to_extend(&body, out))
            .and_then(|out| postcard::to_extend(&profiles, out));
        // Serializing to a vector fails only on a type serde cannot express in postcard
        // (none here: every field is a fixed struct, sequence or value type). Were it ever
        // to fail, the empty vector it gives instead never decodes: the caller rebuilds.
        out.unwrap_or_default()
    }

    /// Restores a view from [`LedgerView::encode_snapshot`]'s bytes, at the position it was
    /// taken, ready to apply the events that follow. Never panics: damaged, truncated or
    /// foreign bytes give an error (or, if the damage happens to leave a valid snapshot,
    /// another valid view; callers check snapshots against the log's hash chain).
    pub fn decode_snapshot(bytes: &[u8]) -> Result<LedgerView, SnapshotError> {
        let (version, rest) = postcard::take_from_bytes::<u32>(bytes)?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: version });
        }
        let (body, rest) = postcard::take_from_bytes::<SnapshotV1>(rest)?;
        let (profiles, rest) = postcard::take_from_bytes::<Vec<SnapshotProfile>>(rest)?;
        if !rest.is_empty() {
            return Err(SnapshotError::TrailingBytes(rest.len()));
        }
        restore_v1(body, profiles)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

fn invalid(problem: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(problem.into())
}

/// Checks that `keys` are strictly increasing (sorted, no duplicates).
fn check_sorted<K: Ord + std::fmt::Debug>(
    what: &str,
    keys: impl IntoIterator<Item = K>,
) -> Result<(), SnapshotError> {
    let mut previous: Option<K> = None;
    for key in keys {
        if let Some(p) = previous.take() {
            if p >= key {
                return Err(invalid(format!(
                    "{what} are not in strictly increasing order ({p:?} before {key:?})"
                )));
            }
        }
        previous = Some(key);
    }
    Ok(())
}

fn check_position(what: &str, p: Position, snapshot: Position) -> Result<(), SnapshotError> {
    if p > snapshot {
        return Err(invalid(format!(
            "{what} at position {p}, past the snapshot's position {snapshot}"
        )));
    }
    Ok(())
}

fn check_max_id(what: &str, max: u32, largest: Option<u32>) -> Result<(), SnapshotError> {
    if max != largest.unwrap_or(0) {
        return Err(invalid(format!(
            "largest {what} id is {max}, but the largest present is {}",
            largest.unwrap_or(0)
        )));
    }
    Ok(())
}

/// The entry `i` of a table, or an error naming it.
fn entry<T: Clone>(table: &[T], i: u32, what: &str) -> Result<T, SnapshotError> {
    table
        .get(i as usize)
        .cloned()
        .ok_or_else(|| invalid(format!("{what} {i} named, of {}", table.len())))
}

/// A check-in as the view stores it, its program version shared from the table.
fn check_in_from_snapshot(
    c: SnapshotCheckIn,
    versions: &[Arc<ProgramVersion>],
    snapshot: Position,
) -> Result<StoredCheckIn, SnapshotError> {
    check_position("a check-in", c.position, snapshot)?;
    let program_version = match c.program_version {
        None => None,
        Some(i) => Some(entry(versions, i, "program version")?),
    };
    Ok(StoredCheckIn {
        at: c.at.0,
        hardware_id: c.hardware_id,
        ip: c.ip,
        program_version,
        outcome: c.outcome,
        position: c.position,
    })
}

fn sized_map<K: Eq + std::hash::Hash, V>(n: usize) -> crate::view::Map<K, V> {
    dashmap::DashMap::with_capacity_and_hasher(n, ahash::RandomState::new())
}

fn restore_v1(s: SnapshotV1, profiles: Vec<SnapshotProfile>) -> Result<LedgerView, SnapshotError> {
    let at = s.position;
    let cnpjs = s.cnpjs;
    let cnpj = |i: CnpjIndex| entry(&cnpjs, i, "CNPJ");
    let mut view = LedgerView::new();
    view.customers = sized_map(s.customers.len());
    view.contracts = sized_map(s.contracts.len());
    view.licenses = sized_map(s.licenses.len());
    view.bound = sized_map(s.bound.len());
    view.terminals = sized_map(s.terminals.len());
    view.contingencies = sized_map(s.contingencies.len());
    view.stamps = sized_map(s.stamps.len());
    view.position.store(at, Ordering::Release);
    let mut applier = view.lock_applier();

    // Applier state.
    if s.inconsistencies.len() > INCONSISTENCIES_KEPT {
        return Err(invalid(format!(
            "{} inconsistencies kept, at most {INCONSISTENCIES_KEPT}",
            s.inconsistencies.len()
        )));
    }
    if (s.inconsistencies.len() as u64) > s.inconsistency_count {
        return Err(invalid(format!(
            "{} inconsistencies kept of {} counted",
            s.inconsistencies.len(),
            s.inconsistency_count
        )));
    }
    for i in s.inconsistencies {
        check_position("an inconsistency", i.position, at)?;
        applier.inconsistencies.push_back(Inconsistency {
            position: i.position,
            problem: i.problem,
        });
    }
    applier.inconsistency_count = s.inconsistency_count;
    let resources: Vec<Arc<Resources>> = s
        .resources
        .iter()
        .map(|r| applier.resources.intern(r))
        .collect();
    let versions: Vec<Arc<ProgramVersion>> = s
        .program_versions
        .iter()
        .map(|v| applier.versions.intern(v))
        .collect();

    // Customers and contracts.
    let mut keys = Vec::with_capacity(s.customers.len());
    for c in &s.customers {
        keys.push(cnpj(c.cnpj)?);
    }
    check_sorted("customers", keys.iter().copied())?;
    if profiles.len() != s.customers.len() {
        return Err(invalid(format!(
            "{} customer profiles for {} customers",
            profiles.len(),
            s.customers.len()
        )));
    }
    for ((c, key), p) in s.customers.into_iter().zip(keys).zip(profiles) {
        view.customers.insert(
            key,
            CustomerRow {
                cnpj: key,
                trade_name: c.trade_name,
                since: c.since.0,
                active: c.active,
                blocked: c.blocked,
                blacklisted: c.blacklisted,
                partner: p.partner,
                time_zone: p.time_zone,
                created_at: p.created_at.0,
                updated_at: p.updated_at.0,
                version: c.version,
            },
        );
    }
    check_sorted("contracts", s.contracts.iter().map(|c| c.contract_id))?;
    check_max_id(
        "contract",
        s.max_contract_id,
        s.contracts.last().map(|c| c.contract_id.get()),
    )?;
    view.max_contract_id
        .store(s.max_contract_id, Ordering::Release);
    for c in s.contracts {
        view.contracts.insert(
            c.contract_id,
            ContractRow {
                contract_id: c.contract_id,
                cnpj: cnpj(c.cnpj)?,
                starts_on: c.starts_on.0,
                ends_on: c.ends_on.map(|d| d.0),
                interval_days: c.interval_days,
                renew_before_days: c.renew_before_days,
                active: c.active,
                version: c.version,
            },
        );
    }

    // Licenses, and the per-owner index they determine (ids arrive sorted, so each owner's
    // list is built sorted).
    check_sorted("licenses", s.licenses.iter().map(|l| l.license_id))?;
    check_max_id(
        "license",
        s.max_license_id,
        s.licenses.last().map(|l| l.license_id.get()),
    )?;
    view.max_license_id
        .store(s.max_license_id, Ordering::Release);
    for l in s.licenses {
        check_position("a license update", l.updated_position, at)?;
        let owner = cnpj(l.cnpj)?;
        let last_check_in = match l.last_check_in {
            Some(c) => Some(check_in_from_snapshot(c, &versions, at)?),
            None => None,
        };
        view.by_owner
            .entry((owner, l.product))
            .or_default()
            .push(l.license_id);
        view.licenses.insert(
            l.license_id,
            LicenseState {
                cnpj: owner,
                product: l.product,
                blocked: l.blocked,
                active: l.active,
                contract_id: l.contract_id,
                expires_on: l.expires_on.0,
                resources: entry(&resources, l.resources, "resource set")?,
                binding: l.binding.map(|b| Binding {
                    hardware_id: b.hardware_id,
                    hardware_key: b.hardware_key,
                    ip: b.ip,
                    caixa: b.caixa,
                    equipamento: b.equipamento,
                    bound_at: b.bound_at.0,
                }),
                last_ip: l.last_ip,
                last_check_in,
                granted_at: l.granted_at.0,
                version: l.version,
                updated_position: l.updated_position,
            },
        );
    }

    // The check-in index: each entry names a license of that customer and product.
    let mut keys = Vec::with_capacity(s.bound.len());
    for b in &s.bound {
        keys.push((cnpj(b.cnpj)?, b.product, b.hardware_id));
    }
    check_sorted("bound terminals", keys.iter().copied())?;
    for (b, key) in s.bound.into_iter().zip(keys) {
        let fits = view
            .licenses
            .get(&b.license_id)
            .is_some_and(|l| l.cnpj == key.0 && l.product == key.1);
        if !fits {
            return Err(invalid(format!(
                "terminal {} of {} is bound to license {}, which is not one of their {:?} licenses",
                key.2, key.0, b.license_id, key.1
            )));
        }
        view.bound.insert(key, b.license_id);
    }

    // Terminals.
    let mut keys = Vec::with_capacity(s.terminals.len());
    for t in &s.terminals {
        keys.push((cnpj(t.cnpj)?, t.hardware_id));
    }
    check_sorted("terminals", keys.iter().copied())?;
    for (t, key) in s.terminals.into_iter().zip(keys) {
        if t.last.is_empty() {
            return Err(invalid(format!(
                "terminal {} of {} has no check-in",
                key.1, key.0
            )));
        }
        check_sorted("a terminal's products", t.last.iter().map(|(p, _)| *p))?;
        let mut last = Vec::with_capacity(t.last.len());
        for (p, c) in t.last {
            last.push((p, check_in_from_snapshot(c, &versions, at)?));
        }
        view.terminals.insert(
            key,
            TerminalState {
                version: t.version,
                last,
            },
        );
    }

    // Contingencies.
    let mut keys = Vec::with_capacity(s.contingencies.len());
    for c in &s.contingencies {
        keys.push(cnpj(c.cnpj)?);
    }
    check_sorted("contingency customers", keys.iter().copied())?;
    for (c, key) in s.contingencies.into_iter().zip(keys) {
        if c.entries.is_empty() {
            return Err(invalid(format!("{key} has an empty contingency list")));
        }
        let mut rows = Vec::with_capacity(c.entries.len());
        for e in c.entries {
            check_position("a contingency entry", e.entered_position, at)?;
            rows.push(ContingencyRow {
                cnpj: key,
                kind: e.kind,
                hardware_id: e.hardware_id,
                license_id: e.license_id,
                grace_until: e.grace_until.map(|d| d.0),
                entered_at: e.entered_at.0,
                entered_position: e.entered_position,
                note: e.note,
                cleared_at: e.cleared_at.map(|t| t.0),
                cleared_note: e.cleared_note,
            });
        }
        view.contingencies.insert(key, rows);
    }

    // Stamps.
    let mut keys = Vec::with_capacity(s.stamps.len());
    for st in &s.stamps {
        keys.push(cnpj(st.cnpj)?);
    }
    check_sorted("stamps", keys.iter().copied())?;
    for (st, key) in s.stamps.into_iter().zip(keys) {
        check_position("a customer stamp", st.position, at)?;
        view.stamps.insert(key, st.position);
    }

    drop(applier);
    Ok(view)
}

#[cfg(test)]
mod tests {
    //! Validation of decoded values: each test damages one part of a valid body and expects
    //! decoding to name the problem.

    use super::*;

    fn time(secs: i64) -> Time {
        Time(DateTime::from_timestamp(secs, 0).unwrap_or_default())
    }

    fn day(days: i32) -> Day {
        Day(NaiveDate::from_num_days_from_ce_opt(days).unwrap_or_default())
    }

    fn check_in(position: Position, version: Option<u32>) -> SnapshotCheckIn {
        SnapshotCheckIn {
            at: time(1_680_000_000),
            hardware_id: HardwareId::from_bytes([1; 8]),
            ip: None,
            program_version: version,
            outcome: CheckInOutcome::Valid {
                expires_on: day(738_000).0,
            },
            position,
        }
    }

    fn license(id: u32) -> SnapshotLicense {
        SnapshotLicense {
            license_id: LicenseId::new(id).expect("id"),
            cnpj: 0,
            product: Product::EasyCash,
            blocked: false,
            active: true,
            contract_id: None,
            expires_on: day(738_000),
            resources: 0,
            binding: None,
            last_ip: None,
            last_check_in: Some(check_in(9, Some(0))),
            granted_at: time(1_680_000_000),
            version: 2,
            updated_position: 9,
        }
    }

    /// A valid body: one customer with a contract, two licenses (the first bound), a
    /// terminal, an open contingency entry, a stamp and an inconsistency, at position 10.
    fn sample() -> SnapshotV1 {
        let cnpj = Cnpj::parse("11222333000181").expect("cnpj");
        let hardware_id = HardwareId::from_bytes([1; 8]);
        SnapshotV1 {
            position: 10,
            max_license_id: 7,
            max_contract_id: 1,
            inconsistency_count: 3,
            inconsistencies: vec![SnapshotInconsistency {
                position: 8,
                problem: "LicenseBlocked for unknown license 000009".into(),
            }],
            cnpjs: vec![cnpj],
            resources: vec![Resources::default()],
            program_versions: vec![ProgramVersion::parse("2.0.12.1").expect("version")],
            customers: vec![SnapshotCustomer {
                cnpj: 0,
                trade_name: TradeName::parse("Mercado Bom").expect("name"),
                since: day(738_000),
                active: true,
                blocked: false,
                blacklisted: false,
                version: 1,
            }],
            contracts: vec![SnapshotContract {
                contract_id: ContractId::new(1).expect("id"),
                cnpj: 0,
                starts_on: day(738_000),
                ends_on: None,
                interval_days: 30,
                renew_before_days: 3,
                active: true,
                version: 1,
            }],
            licenses: vec![license(3), license(7)],
            bound: vec![SnapshotBound {
                cnpj: 0,
                product: Product::EasyCash,
                hardware_id,
                license_id: LicenseId::new(3).expect("id"),
            }],
            terminals: vec![SnapshotTerminal {
                cnpj: 0,
                hardware_id,
                version: 1,
                last: vec![(Product::EasyCash, check_in(9, Some(0)))],
            }],
            contingencies: vec![SnapshotContingencies {
                cnpj: 0,
                entries: vec![SnapshotContingency {
                    kind: ContingencyKind::Manual,
                    hardware_id: Some(hardware_id),
                    license_id: None,
                    grace_until: None,
                    entered_at: time(1_680_000_000),
                    entered_position: 6,
                    note: None,
                    cleared_at: None,
                    cleared_note: None,
                }],
            }],
            stamps: vec![SnapshotStamp {
                cnpj: 0,
                position: 10,
            }],
        }
    }

    /// `body` as a snapshot, each customer with an empty profile created at time 1000.
    fn bytes(body: &SnapshotV1) -> Vec<u8> {
        let at = Time(DateTime::from_timestamp(1000, 0).expect("a time"));
        let profiles: Vec<SnapshotProfile> = body
            .customers
            .iter()
            .map(|_| SnapshotProfile {
                partner: None,
                time_zone: None,
                created_at: at,
                updated_at: at,
            })
            .collect();
        postcard::to_extend(&SNAPSHOT_FORMAT_VERSION, Vec::new())
            .and_then(|out| postcard::to_extend(body, out))
            .and_then(|out| postcard::to_extend(&profiles, out))
            .expect("encode")
    }

    /// Decoding `change`d sample fails as invalid, naming `expected`.
    fn refused(change: impl FnOnce(&mut SnapshotV1), expected: &str) {
        let mut body = sample();
        change(&mut body);
        match LedgerView::decode_snapshot(&bytes(&body)) {
            Err(SnapshotError::Invalid(problem)) => {
                assert!(problem.contains(expected), "{problem:?} lacks {expected:?}")
            }
            other => panic!("expected Invalid naming {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_sample_decodes_and_encodes_back_to_the_same_bytes() {
        let original = bytes(&sample());
        let view = LedgerView::decode_snapshot(&original).expect("decode");
        assert_eq!(view.position(), 10);
        assert_eq!(view.license_count(), 2);
        assert_eq!(view.encode_snapshot(), original);
    }

    #[test]
    fn a_version_1_snapshot_is_refused_so_the_log_rebuilds_it() {
        // Version 1 cannot say when its customers were created ("Criado em").
        let mut v1 = postcard::to_extend(&1u32, Vec::new())
            .and_then(|out| postcard::to_extend(&sample(), out))
            .expect("encode");
        assert!(matches!(
            LedgerView::decode_snapshot(&v1),
            Err(SnapshotError::UnsupportedVersion { found: 1 })
        ));
        v1[0] = 2;
        assert!(
            LedgerView::decode_snapshot(&v1).is_err(),
            "a version 1 body without the customers' part"
        );
    }

    #[test]
    fn unsorted_or_duplicate_entries_are_refused() {
        refused(
            |b| b.licenses.reverse(),
            "licenses are not in strictly increasing order",
        );
        refused(
            |b| {
                b.licenses[1] = license(3);
                b.max_license_id = 3;
            },
            "licenses are not in strictly increasing order",
        );
        refused(
            |b| {
                let first = b.terminals[0].last[0].1.position;
                b.terminals[0]
                    .last
                    .push((Product::EasyCash, check_in(first, None)));
            },
            "a terminal's products",
        );
        refused(
            |b| {
                let s = SnapshotStamp {
                    cnpj: b.stamps[0].cnpj,
                    position: 1,
                };
                b.stamps.push(s);
            },
            "stamps",
        );
    }

    #[test]
    fn indexes_into_the_tables_must_exist() {
        refused(
            |b| b.licenses[0].resources = 1,
            "resource set 1 named, of 1",
        );
        refused(|b| b.licenses[1].cnpj = 1, "CNPJ 1 named, of 1");
        refused(|b| b.stamps[0].cnpj = 7, "CNPJ 7 named, of 1");
        refused(
            |b| b.terminals[0].last[0].1.program_version = Some(4),
            "program version 4 named, of 1",
        );
    }

    #[test]
    fn max_ids_must_be_the_largest_present() {
        refused(|b| b.max_license_id = 9, "largest license id is 9");
        refused(|b| b.max_contract_id = 0, "largest contract id is 0");
    }

    #[test]
    fn no_position_may_lie_past_the_snapshot() {
        refused(|b| b.licenses[0].updated_position = 11, "past the snapshot");
        refused(|b| b.stamps[0].position = 11, "past the snapshot");
        refused(
            |b| b.contingencies[0].entries[0].entered_position = 11,
            "past the snapshot",
        );
        refused(|b| b.inconsistencies[0].position = 11, "past the snapshot");
        refused(
            |b| b.terminals[0].last[0].1.position = 11,
            "past the snapshot",
        );
    }

    #[test]
    fn the_bound_index_must_name_a_license_of_that_customer_and_product() {
        refused(
            |b| b.bound[0].license_id = LicenseId::new(5).expect("id"),
            "not one of their EasyCash licenses",
        );
        refused(
            |b| b.bound[0].product = Product::Nfe,
            "not one of their Nfe licenses",
        );
    }

    #[test]
    fn kept_inconsistencies_are_bounded_and_counted() {
        refused(|b| b.inconsistency_count = 0, "1 inconsistencies kept of 0");
        refused(
            |b| {
                let one = SnapshotInconsistency {
                    position: 1,
                    problem: String::new(),
                };
                b.inconsistencies = (0..=INCONSISTENCIES_KEPT)
                    .map(|_| SnapshotInconsistency {
                        problem: one.problem.clone(),
                        ..one
                    })
                    .collect();
                b.inconsistency_count = 1_000;
            },
            "65 inconsistencies kept",
        );
    }

    #[test]
    fn empty_terminals_and_contingency_lists_are_refused() {
        refused(|b| b.terminals[0].last.clear(), "has no check-in");
        refused(
            |b| b.contingencies[0].entries.clear(),
            "empty contingency list",
        );
    }

    #[test]
    fn out_of_range_dates_and_times_do_not_decode() {
        let day_bytes = postcard::to_allocvec(&i32::MAX).expect("encode");
        assert!(postcard::from_bytes::<Day>(&day_bytes).is_err());
        let time_bytes = postcard::to_allocvec(&(i64::MAX, 0u32)).expect("encode");
        assert!(postcard::from_bytes::<Time>(&time_bytes).is_err());
        let nanos_bytes = postcard::to_allocvec(&(0i64, 2_000_000_000u32)).expect("encode");
        assert!(postcard::from_bytes::<Time>(&nanos_bytes).is_err());
    }
}
