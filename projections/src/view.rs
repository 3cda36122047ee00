//! [`LedgerView`]: every read model of the ledger, folded from recorded events.
//!
//! One applier feeds events in position order through [`LedgerView::apply`]; any number of
//! threads read at the same time. Each map is a `DashMap`, so a read locks one shard of one map
//! for the time it takes to copy a row out, and never waits for more than one event's update
//! of that row. A reader sees each row whole, but may see the rows touched by the event being
//! applied in a mix of before and after; [`LedgerView::position`] moves only once all of an
//! event's effects are visible.
//!
//! Lock discipline: no code here holds a reference into one map while it locks another (or
//! the same) map, so readers and the applier cannot deadlock.
//!
//! The fold records what events say and decides nothing: no renewals, no outcomes, no
//! checks of business rules. Its only judgements are structural: an event for a row that does
//! not exist, a second registration of the same id, or an event recorded in a stream of the
//! wrong category is reported as [`ProjectionError::Inconsistent`] and its impossible part is
//! skipped (see [`LedgerView::apply`]).
//!
//! The view keeps no per-record state: a license's Histórico is the set of records that
//! [`LedgerView::apply_noting`] reports for it, for an index outside the view to keep. Its
//! whole state can be written out and restored with [`LedgerView::encode_snapshot`] and
//! [`LedgerView::decode_snapshot`] (see [`crate::snapshot`]).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{Days, NaiveDate};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ledger_events::{
    Cnpj, CodecError, ContingencyEvent, ContingencyKind, ContractEvent, ContractId, CustomerEvent,
    Envelope, Event, HardwareId, LicenseEvent, LicenseGranted, LicenseId, OfflineActivationEvent,
    Position, Product, ProgramVersion, Record, Resources, TerminalCheckedIn, TerminalEvent,
};
use serde::{Deserialize, Serialize};

use crate::rows::{Binding, ContingencyRow, ContractRow, CustomerRow, LicenseRow, TerminalRow};
use crate::state::{Interner, LicenseState, StoredCheckIn, TerminalState};

/// Largest page a query returns; larger limits are clamped to it.
pub const PAGE_LIMIT_MAX: usize = 500;
/// Page size of a query built with `Default`.
pub const PAGE_LIMIT_DEFAULT: usize = 50;
/// How many of the latest inconsistencies the view keeps (it counts all of them).
pub const INCONSISTENCIES_KEPT: usize = 64;

pub(crate) type Map<K, V> = DashMap<K, V, ahash::RandomState>;

pub(crate) fn new_map<K: Eq + std::hash::Hash, V>() -> Map<K, V> {
    DashMap::with_hasher(ahash::RandomState::new())
}

/// Why an event could not be applied (or could be applied only in part).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The event is past the next expected position: some events were skipped. Nothing was
    /// applied; feed the missing events first.
    #[error("gap in the log: expected position {expected}, found {found}")]
    Gap {
        /// The position the view expects next.
        expected: Position,
        /// The position it was given.
        found: Position,
    },
    /// The record's payload does not decode (unknown type or schema version, bad bytes).
    /// Nothing was applied and the view's position did not move.
    #[error("record does not decode: {0}")]
    Decode(#[from] CodecError),
    /// The event contradicts the view (e.g. it concerns a license never granted). Its
    /// impossible part was skipped, the rest applied, and the view's position moved past it:
    /// the log is immutable, so the view records the problem (see
    /// [`LedgerView::inconsistencies`]) and goes on.
    #[error("inconsistent event at position {position}: {problem}")]
    Inconsistent {
        /// The event's position.
        position: Position,
        /// What does not fit.
        problem: String,
    },
}

/// An event the view could apply only in part, kept for operators and auditors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inconsistency {
    /// The event's position.
    pub position: Position,
    /// What does not fit.
    pub problem: String,
}

/// A license's state as the license table filters it. Several may hold at once (a blocked,
/// expired, bound license); each filter tests one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// Active, not blocked, and not expired on the query's `today` (without `today`, expiry
    /// is not considered).
    Active,
    /// "Bloqueado".
    Blocked,
    /// "Licença" unchecked.
    Deactivated,
    /// Expiry before the query's `today` (without `today`, no license is expired).
    Expired,
    /// Not bound to a terminal.
    Free,
    /// Bound to a terminal.
    Bound,
}

/// Filters and page of [`LedgerView::list_licenses`]. All filters given must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LicenseQuery {
    /// Only this customer's licenses.
    pub cnpj: Option<Cnpj>,
    /// Only this product.
    pub product: Option<Product>,
    /// Only licenses in this state.
    pub status: Option<LicenseStatus>,
    /// Only licenses expiring from `today` to `today + n` days, both included (without
    /// `today`, none).
    pub expiring_within_days: Option<u32>,
    /// The caller's date for the date-dependent filters (projections have no clock).
    pub today: Option<NaiveDate>,
    /// Bound key starts with this, ignoring case.
    pub hardware_key: Option<String>,
    /// Contained, ignoring case, in the id (`002438`), the bound hardware key, the IP (bound
    /// or last) or the customer's trade name.
    pub text: Option<String>,
    /// Rows to skip.
    pub offset: usize,
    /// Rows to return, at most [`PAGE_LIMIT_MAX`]; 0 returns only the total.
    pub limit: usize,
}

impl Default for LicenseQuery {
    fn default() -> Self {
        Self {
            cnpj: None,
            product: None,
            status: None,
            expiring_within_days: None,
            today: None,
            hardware_key: None,
            text: None,
            offset: 0,
            limit: PAGE_LIMIT_DEFAULT,
        }
    }
}

/// A column of the license table to sort by (see [`LedgerView::list_licenses_sorted`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseSortKey {
    /// "ID".
    #[default]
    Id,
    /// "Hardware Key" (free licenses last).
    HardwareKey,
    /// "IP": bound, else last seen (none last).
    Ip,
    /// "Expira".
    ExpiresOn,
    /// "Produto".
    Product,
    /// "Bloqueado".
    Blocked,
    /// "Licença" (active).
    Active,
    /// "Contrato": on a contract that is active (none and inactive first).
    Contract,
}

/// Filters and page of [`LedgerView::contingencies`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContingencyQuery {
    /// Only this customer's entries.
    pub cnpj: Option<Cnpj>,
    /// Only entries not yet cleared.
    pub open_only: bool,
    /// Only this kind.
    pub kind: Option<ContingencyKind>,
    /// Rows to skip.
    pub offset: usize,
    /// Rows to return, at most [`PAGE_LIMIT_MAX`]; 0 returns only the total.
    pub limit: usize,
}

impl Default for ContingencyQuery {
    fn default() -> Self {
        Self {
            cnpj: None,
            open_only: false,
            kind: None,
            offset: 0,
            limit: PAGE_LIMIT_DEFAULT,
        }
    }
}

/// One page of a query's results.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// How many rows match, over all pages.
    pub total: usize,
    /// Rows skipped.
    pub offset: usize,
    /// The page size applied (the query's limit, clamped).
    pub limit: usize,
}

impl<T> Page<T> {
    fn of(all: Vec<T>, offset: usize, limit: usize) -> Self {
        let limit = limit.min(PAGE_LIMIT_MAX);
        let total = all.len();
        let items = all.into_iter().skip(offset).take(limit).collect();
        Self {
            items,
            total,
            offset,
            limit,
        }
    }
}

/// State only the applier touches.
#[derive(Debug, Default)]
pub(crate) struct Applier {
    pub(crate) resources: Interner<Resources>,
    pub(crate) versions: Interner<ProgramVersion>,
    pub(crate) inconsistencies: VecDeque<Inconsistency>,
    pub(crate) inconsistency_count: u64,
}

/// The read models: customers, contracts, licenses (with their indexes), terminals and
/// contingencies. (The fields are the crate's so that [`crate::snapshot`] can copy them out
/// and back in; nothing else outside this module touches them.)
pub struct LedgerView {
    /// Last applied position; stored after the event's effects are visible.
    pub(crate) position: AtomicU64,
    pub(crate) customers: Map<Cnpj, CustomerRow>,
    pub(crate) contracts: Map<ContractId, ContractRow>,
    pub(crate) licenses: Map<LicenseId, LicenseState>,
    /// (customer, product) -> its licenses, sorted.
    pub(crate) by_owner: Map<(Cnpj, Product), Vec<LicenseId>>,
    /// (customer, product, terminal) -> the license bound to it.
    pub(crate) bound: Map<(Cnpj, Product, HardwareId), LicenseId>,
    pub(crate) terminals: Map<(Cnpj, HardwareId), TerminalState>,
    /// Per customer, in the order entered.
    pub(crate) contingencies: Map<Cnpj, Vec<ContingencyRow>>,
    /// Per customer, the position of the last event applied that changed anything of
    /// theirs; stored after that event's effects are visible (see
    /// [`LedgerView::customer_stamp`]).
    pub(crate) stamps: Map<Cnpj, Position>,
    /// Largest id seen, 0 for none.
    pub(crate) max_license_id: AtomicU32,
    pub(crate) max_contract_id: AtomicU32,
    /// Serializes appliers (there should be one) and holds their private state.
    pub(crate) applier: Mutex<Applier>,
}

impl Default for LedgerView {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LedgerView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerView")
            .field("position", &self.position())
            .field("customers", &self.customers.len())
            .field("contracts", &self.contracts.len())
            .field("licenses", &self.licenses.len())
            .field("terminals", &self.terminals.len())
            .finish_non_exhaustive()
    }
}

impl LedgerView {
    /// An empty view at position 0.
    pub fn new() -> Self {
        Self {
            position: AtomicU64::new(0),
            customers: new_map(),
            contracts: new_map(),
            licenses: new_map(),
            by_owner: new_map(),
            bound: new_map(),
            terminals: new_map(),
            contingencies: new_map(),
            stamps: new_map(),
            max_license_id: AtomicU32::new(0),
            max_contract_id: AtomicU32::new(0),
            applier: Mutex::new(Applier::default()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Applying
    // -----------------------------------------------------------------------------------------

    /// Applies one recorded event. Must be fed in position order; a position <= the applied
    /// position is ignored (idempotent), a gap is reported.
    ///
    /// Errors: [`ProjectionError::Gap`] (nothing applied, position unchanged) and
    /// [`ProjectionError::Inconsistent`] (the event's impossible part skipped, the position
    /// moved past it). Never panics on any input.
    pub fn apply(&self, envelope: &Envelope, event: &Event) -> Result<(), ProjectionError> {
        self.apply_noting(envelope, event).map(drop)
    }

    /// Applies like [`LedgerView::apply`] and returns the license whose Histórico the event
    /// joins: the license of a license event, the license a check-in names, the license a
    /// contingency entry names (when entered and when cleared) or an offline activation
    /// names; `None` for other events and for an event at or before the applied position.
    /// An event that is inconsistent (e.g. names a license never granted) joins none: its
    /// error is returned as by `apply`.
    ///
    /// The view keeps no per-license history (it would grow with every record ever
    /// written); whoever keeps the Histórico indexes what this returns.
    pub fn apply_noting(
        &self,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<Option<LicenseId>, ProjectionError> {
        let mut applier = self.lock_applier();
        let at = self.position.load(Ordering::Acquire);
        if envelope.position <= at {
            return Ok(None);
        }
        if envelope.position != at + 1 {
            return Err(ProjectionError::Gap {
                expected: at + 1,
                found: envelope.position,
            });
        }
        let outcome = self.fold(&mut applier, envelope, event);
        if let Some(cnpj) = self.customer_of(event) {
            self.stamps.insert(cnpj, envelope.position);
        }
        self.position.store(envelope.position, Ordering::Release);
        match outcome {
            Ok(noted) => Ok(noted),
            Err(problem) => {
                applier.inconsistency_count += 1;
                if applier.inconsistencies.len() == INCONSISTENCIES_KEPT {
                    applier.inconsistencies.pop_front();
                }
                applier.inconsistencies.push_back(Inconsistency {
                    position: envelope.position,
                    problem: problem.clone(),
                });
                Err(ProjectionError::Inconsistent {
                    position: envelope.position,
                    problem,
                })
            }
        }
    }

    /// Applies an event whatever its position, for a relay's view: a relay holds its
    /// customer's records only (positions with gaps) and applies its own events before the
    /// center echoes them at later positions. The caller guarantees each event is applied
    /// once; the view's position becomes the largest seen. Errors as [`LedgerView::apply`]'s
    /// `Inconsistent`.
    pub fn apply_unordered(
        &self,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<(), ProjectionError> {
        let mut applier = self.lock_applier();
        let outcome = self.fold(&mut applier, envelope, event);
        if let Some(cnpj) = self.customer_of(event) {
            self.stamps.insert(cnpj, envelope.position);
        }
        self.position.fetch_max(envelope.position, Ordering::AcqRel);
        outcome
            .map(drop)
            .map_err(|problem| ProjectionError::Inconsistent {
                position: envelope.position,
                problem,
            })
    }

    /// Decodes `record`'s payload and applies it (see [`LedgerView::apply`]). A record at or
    /// before the applied position is ignored without being decoded.
    pub fn apply_record(&self, record: &Record) -> Result<(), ProjectionError> {
        self.apply_record_noting(record).map(drop)
    }

    /// Decodes `record`'s payload and applies it, returning the license whose Histórico it
    /// joins (see [`LedgerView::apply_noting`]). A record at or before the applied position
    /// is ignored without being decoded, and joins none.
    pub fn apply_record_noting(
        &self,
        record: &Record,
    ) -> Result<Option<LicenseId>, ProjectionError> {
        if record.envelope.position <= self.position() {
            return Ok(None);
        }
        let event = record.event()?;
        self.apply_noting(&record.envelope, &event)
    }

    /// The position of the last applied event that concerned the customer (its row, its
    /// contracts, licenses, terminals or contingencies), 0 if none. Everything a check-in of
    /// theirs reads is the customer's, so a decision made from what the view showed after
    /// reading stamp `s` still holds while the stamp is `s` (and the clock allows). The
    /// stamp moves only after the event's effects are visible.
    pub fn customer_stamp(&self, cnpj: &Cnpj) -> Position {
        self.stamps.get(cnpj).map_or(0, |p| *p)
    }

    /// The customer an event concerns (for license and contract events, looked up in the
    /// view: ask after the view has applied the license's grant or the contract's signing).
    /// `None` for emergency releases and for events of unknown licenses or contracts.
    pub fn customer_of(&self, event: &Event) -> Option<Cnpj> {
        match event {
            Event::Customer(e) => Some(*e.cnpj()),
            Event::Contract(e) => self.contracts.get(&e.contract_id()).map(|c| c.cnpj),
            Event::License(e) => self.licenses.get(&e.license_id()).map(|l| l.cnpj),
            Event::Terminal(TerminalEvent::CheckedIn(e)) => Some(e.cnpj),
            Event::Contingency(e) => Some(*e.cnpj()),
            Event::OfflineActivation(OfflineActivationEvent::Issued(e)) => e
                .license_id
                .and_then(|id| self.licenses.get(&id).map(|l| l.cnpj))
                .or(e.cnpj),
            Event::EmergencyRelease(_) => None,
        }
    }

    /// Last applied global position (0 initially).
    pub fn position(&self) -> Position {
        self.position.load(Ordering::Acquire)
    }

    /// The latest events the view could apply only in part, oldest first (at most
    /// [`INCONSISTENCIES_KEPT`]).
    pub fn inconsistencies(&self) -> Vec<Inconsistency> {
        self.lock_applier()
            .inconsistencies
            .iter()
            .cloned()
            .collect()
    }

    /// How many events the view could apply only in part, since it was created.
    pub fn inconsistency_count(&self) -> u64 {
        self.lock_applier().inconsistency_count
    }

    pub(crate) fn lock_applier(&self) -> MutexGuard<'_, Applier> {
        // A panic while applying cannot leave a map half-written in a way later events
        // depend on, so a poisoned lock is still usable.
        self.applier.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one event's effects and returns the license whose Histórico it joins; `Err`
    /// names what was impossible (and skipped), and then it joins none.
    fn fold(
        &self,
        applier: &mut Applier,
        env: &Envelope,
        event: &Event,
    ) -> Result<Option<LicenseId>, String> {
        // The stream's category (`license` in `license-002438`), with its dash.
        let category = match event {
            Event::Customer(_) => "customer-",
            Event::Contract(_) => "contract-",
            Event::License(_) => "license-",
            Event::Terminal(_) => "terminal-",
            Event::Contingency(_) => "contingency-",
            Event::OfflineActivation(_) => "offline-",
            Event::EmergencyRelease(_) => "emergency-",
        };
        if !env.stream_id.as_str().starts_with(category) {
            return Err(format!(
                "{} recorded in stream {}, not a {category}* stream",
                event.event_type(),
                env.stream_id
            ));
        }
        match event {
            Event::Customer(e) => self.fold_customer(env, e).map(|()| None),
            Event::Contract(e) => self.fold_contract(env, e).map(|()| None),
            Event::License(e) => self.fold_license(applier, env, e).map(Some),
            Event::Terminal(TerminalEvent::CheckedIn(e)) => self.fold_check_in(applier, env, e),
            Event::Contingency(e) => self.fold_contingency(env, e),
            Event::OfflineActivation(OfflineActivationEvent::Issued(e)) => {
                self.noted(e.license_id, "offline activation")
            }
            Event::EmergencyRelease(_) => Ok(None),
        }
    }

    fn fold_customer(&self, env: &Envelope, event: &CustomerEvent) -> Result<(), String> {
        type Change = fn(&mut CustomerRow);
        let (cnpj, change): (&Cnpj, Change) = match event {
            CustomerEvent::Registered(e) => {
                return match self.customers.entry(e.cnpj) {
                    Entry::Occupied(_) => Err(format!("customer {} registered twice", e.cnpj)),
                    Entry::Vacant(slot) => {
                        slot.insert(CustomerRow {
                            cnpj: e.cnpj,
                            trade_name: e.trade_name.clone(),
                            since: e.since,
                            active: true,
                            blocked: false,
                            blacklisted: false,
                            partner: None,
                            time_zone: None,
                            created_at: env.recorded_at,
                            updated_at: env.recorded_at,
                            version: env.stream_version,
                        });
                        Ok(())
                    }
                };
            }
            CustomerEvent::Activated(e) => (&e.cnpj, |r| r.active = true),
            CustomerEvent::Deactivated(e) => (&e.cnpj, |r| r.active = false),
            CustomerEvent::Blocked(e) => (&e.cnpj, |r| r.blocked = true),
            CustomerEvent::Unblocked(e) => (&e.cnpj, |r| r.blocked = false),
            CustomerEvent::Blacklisted(e) => (&e.cnpj, |r| r.blacklisted = true),
            CustomerEvent::Unblacklisted(e) => (&e.cnpj, |r| r.blacklisted = false),
            CustomerEvent::ProfileChanged(e) => {
                let mut row = self
                    .customers
                    .get_mut(&e.cnpj)
                    .ok_or_else(|| format!("{} for unknown customer {}", env.event_type, e.cnpj))?;
                row.partner = e.partner.clone();
                row.time_zone = e.time_zone.clone();
                row.updated_at = env.recorded_at;
                row.version = env.stream_version;
                return Ok(());
            }
        };
        let mut row = self
            .customers
            .get_mut(cnpj)
            .ok_or_else(|| format!("{} for unknown customer {cnpj}", env.event_type))?;
        change(&mut row);
        row.updated_at = env.recorded_at;
        row.version = env.stream_version;
        Ok(())
    }

    fn fold_contract(&self, env: &Envelope, event: &ContractEvent) -> Result<(), String> {
        let (id, active) = match event {
            ContractEvent::Signed(e) => {
                match self.contracts.entry(e.contract_id) {
                    Entry::Occupied(_) => {
                        return Err(format!("contract {} signed twice", e.contract_id))
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(ContractRow {
                            contract_id: e.contract_id,
                            cnpj: e.cnpj,
                            starts_on: e.starts_on,
                            ends_on: e.ends_on,
                            interval_days: e.interval_days,
                            renew_before_days: e.renew_before_days,
                            active: true,
                            version: env.stream_version,
                        });
                    }
                }
                self.max_contract_id
                    .fetch_max(e.contract_id.get(), Ordering::AcqRel);
                return Ok(());
            }
            ContractEvent::Deactivated(e) => (e.contract_id, false),
            ContractEvent::Reactivated(e) => (e.contract_id, true),
        };
        let mut row = self
            .contracts
            .get_mut(&id)
            .ok_or_else(|| format!("{} for unknown contract {id}", env.event_type))?;
        row.active = active;
        row.version = env.stream_version;
        Ok(())
    }

    fn grant(
        &self,
        applier: &mut Applier,
        env: &Envelope,
        e: &LicenseGranted,
    ) -> Result<LicenseId, String> {
        match self.licenses.entry(e.license_id) {
            Entry::Occupied(_) => return Err(format!("license {} granted twice", e.license_id)),
            Entry::Vacant(slot) => {
                slot.insert(LicenseState {
                    cnpj: e.cnpj,
                    product: e.product,
                    blocked: false,
                    active: true,
                    contract_id: e.contract_id,
                    expires_on: e.expires_on,
                    resources: applier.resources.intern(&e.resources),
                    binding: None,
                    last_ip: None,
                    last_check_in: None,
                    granted_at: env.recorded_at,
                    version: env.stream_version,
                    updated_position: env.position,
                });
            }
        }
        {
            let mut ids = self.by_owner.entry((e.cnpj, e.product)).or_default();
            if let Err(at) = ids.binary_search(&e.license_id) {
                ids.insert(at, e.license_id);
            }
        }
        self.max_license_id
            .fetch_max(e.license_id.get(), Ordering::AcqRel);
        Ok(e.license_id)
    }

    /// Returns the license, which the event concerns.
    fn fold_license(
        &self,
        applier: &mut Applier,
        env: &Envelope,
        event: &LicenseEvent,
    ) -> Result<LicenseId, String> {
        if let LicenseEvent::Granted(e) = event {
            return self.grant(applier, env, e);
        }
        let id = event.license_id();
        // Index changes are made after the license's lock is released.
        let mut unbind: [Option<HardwareId>; 2] = [None, None];
        let mut bind: Option<HardwareId> = None;
        let (cnpj, product) = {
            let mut lic = self
                .licenses
                .get_mut(&id)
                .ok_or_else(|| format!("{} for unknown license {id}", env.event_type))?;
            match event {
                LicenseEvent::Granted(_) => {}
                LicenseEvent::Renewed(e) => lic.expires_on = e.expires_on,
                LicenseEvent::Bound(e) => {
                    unbind[0] = lic
                        .binding
                        .map(|b| b.hardware_id)
                        .filter(|h| *h != e.hardware_id);
                    bind = Some(e.hardware_id);
                    lic.binding = Some(Binding {
                        hardware_id: e.hardware_id,
                        hardware_key: e.hardware_key,
                        ip: e.ip,
                        caixa: e.caixa,
                        equipamento: e.equipamento,
                        bound_at: env.recorded_at,
                    });
                    lic.last_ip = e.ip;
                }
                LicenseEvent::Unlinked(e) => {
                    unbind[0] = lic.binding.take().map(|b| b.hardware_id);
                    unbind[1] = Some(e.hardware_id);
                }
                LicenseEvent::Blocked(_) => lic.blocked = true,
                LicenseEvent::Unblocked(_) => lic.blocked = false,
                LicenseEvent::Deactivated(_) => lic.active = false,
                LicenseEvent::Reactivated(_) => lic.active = true,
                LicenseEvent::ResourcesChanged(e) => {
                    lic.resources = applier.resources.intern(&e.resources);
                }
            }
            lic.version = env.stream_version;
            lic.updated_position = env.position;
            (lic.cnpj, lic.product)
        };
        for hardware_id in unbind.into_iter().flatten() {
            self.bound
                .remove_if(&(cnpj, product, hardware_id), |_, bound| *bound == id);
        }
        if let Some(hardware_id) = bind {
            self.bound.insert((cnpj, product, hardware_id), id);
        }
        Ok(id)
    }

    /// Returns the license that answered, if any.
    fn fold_check_in(
        &self,
        applier: &mut Applier,
        env: &Envelope,
        e: &TerminalCheckedIn,
    ) -> Result<Option<LicenseId>, String> {
        let check_in = StoredCheckIn {
            at: env.recorded_at,
            hardware_id: e.hardware_id,
            ip: e.ip,
            program_version: e
                .program_version
                .as_ref()
                .map(|v| applier.versions.intern(v)),
            outcome: e.outcome,
            position: env.position,
        };
        {
            let mut terminal = self.terminals.entry((e.cnpj, e.hardware_id)).or_default();
            terminal.version = env.stream_version;
            terminal.record(e.product, check_in.clone());
        }
        let Some(id) = e.license_id else {
            return Ok(None);
        };
        let mut lic = self
            .licenses
            .get_mut(&id)
            .ok_or_else(|| format!("check-in answered by unknown license {id}"))?;
        if e.ip.is_some() {
            lic.last_ip = e.ip;
        }
        lic.last_check_in = Some(check_in);
        lic.updated_position = env.position;
        Ok(Some(id))
    }

    /// Returns the license the entry names, if any.
    fn fold_contingency(
        &self,
        env: &Envelope,
        event: &ContingencyEvent,
    ) -> Result<Option<LicenseId>, String> {
        match event {
            ContingencyEvent::Entered(e) => {
                self.contingencies
                    .entry(e.cnpj)
                    .or_default()
                    .push(ContingencyRow {
                        cnpj: e.cnpj,
                        kind: e.kind,
                        hardware_id: e.hardware_id,
                        license_id: e.license_id,
                        grace_until: e.grace_until,
                        entered_at: env.recorded_at,
                        entered_position: env.position,
                        note: e.note.clone(),
                        cleared_at: None,
                        cleared_note: None,
                    });
                self.noted(e.license_id, "contingency")
            }
            ContingencyEvent::Cleared(e) => {
                let license_id = {
                    let no_entry = || {
                        format!(
                            "contingency {} of {}{} cleared but none is open",
                            e.kind.code(),
                            e.cnpj,
                            e.hardware_id
                                .map(|h| format!(" terminal {h}"))
                                .unwrap_or_default()
                        )
                    };
                    let mut rows = self.contingencies.get_mut(&e.cnpj).ok_or_else(no_entry)?;
                    let row = rows
                        .iter_mut()
                        .rev()
                        .find(|r| r.is_open() && r.kind == e.kind && r.hardware_id == e.hardware_id)
                        .ok_or_else(no_entry)?;
                    row.cleared_at = Some(env.recorded_at);
                    row.cleared_note = e.note.clone();
                    row.license_id
                };
                self.noted(license_id, "contingency")
            }
        }
    }

    /// The license an event of another stream names, which its Histórico then lists; an
    /// unknown license is an inconsistency.
    fn noted(&self, id: Option<LicenseId>, what: &str) -> Result<Option<LicenseId>, String> {
        match id {
            Some(id) if !self.licenses.contains_key(&id) => {
                Err(format!("{what} names unknown license {id}"))
            }
            id => Ok(id),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Reading
    // -----------------------------------------------------------------------------------------

    /// The customer with this CNPJ.
    pub fn customer(&self, cnpj: &Cnpj) -> Option<CustomerRow> {
        self.customers.get(cnpj).map(|r| r.clone())
    }

    /// Every customer, sorted by CNPJ.
    pub fn customers(&self) -> Vec<CustomerRow> {
        let mut all: Vec<CustomerRow> = self.customers.iter().map(|r| r.clone()).collect();
        all.sort_unstable_by_key(|c| c.cnpj);
        all
    }

    /// The contract with this id.
    pub fn contract(&self, id: ContractId) -> Option<ContractRow> {
        self.contracts.get(&id).map(|r| r.clone())
    }

    /// Every contract, sorted by id (a few per customer).
    pub fn contracts(&self) -> Vec<ContractRow> {
        let mut all: Vec<ContractRow> = self.contracts.iter().map(|r| r.clone()).collect();
        all.sort_unstable_by_key(|c| c.contract_id);
        all
    }

    /// The licenses a contract renews (its customer's licenses naming it), sorted by id.
    pub fn licenses_of_contract(&self, id: ContractId) -> Vec<LicenseRow> {
        let Some(cnpj) = self.contracts.get(&id).map(|c| c.cnpj) else {
            return Vec::new();
        };
        let mut rows: Vec<LicenseRow> = Product::ALL
            .into_iter()
            .flat_map(|product| self.owner_ids(cnpj, product))
            .filter_map(|license| self.license(license))
            .filter(|l| l.contract_id == Some(id))
            .collect();
        rows.sort_unstable_by_key(|l| l.license_id);
        rows
    }

    /// The license with this id.
    pub fn license(&self, id: LicenseId) -> Option<LicenseRow> {
        self.licenses.get(&id).map(|s| s.to_row(id))
    }

    /// A customer's licenses of one product, sorted by license id.
    pub fn licenses_of(&self, cnpj: &Cnpj, product: Product) -> Vec<LicenseRow> {
        self.owner_ids(*cnpj, product)
            .into_iter()
            .filter_map(|id| self.license(id))
            .collect()
    }

    /// The license of `product` currently bound to that terminal of that customer.
    pub fn bound_license(
        &self,
        cnpj: &Cnpj,
        product: Product,
        hardware_id: &HardwareId,
    ) -> Option<LicenseRow> {
        let id = self
            .bound
            .get(&(*cnpj, product, *hardware_id))
            .map(|r| *r.value())?;
        self.license(id)
    }

    /// One terminal of one customer.
    pub fn terminal(&self, cnpj: &Cnpj, hardware_id: &HardwareId) -> Option<TerminalRow> {
        self.terminals
            .get(&(*cnpj, *hardware_id))
            .map(|t| t.to_row(*cnpj, *hardware_id))
    }

    /// A customer's contingency entries not yet cleared, newest first.
    pub fn open_contingencies(&self, cnpj: &Cnpj) -> Vec<ContingencyRow> {
        self.contingencies(&ContingencyQuery {
            cnpj: Some(*cnpj),
            open_only: true,
            kind: None,
            offset: 0,
            limit: PAGE_LIMIT_MAX,
        })
        .items
    }

    /// Contingency entries matching `query`, newest (last entered) first.
    pub fn contingencies(&self, query: &ContingencyQuery) -> Page<ContingencyRow> {
        let keep = |r: &&ContingencyRow| {
            (!query.open_only || r.is_open()) && query.kind.is_none_or(|k| r.kind == k)
        };
        let mut rows: Vec<ContingencyRow> = match query.cnpj {
            Some(cnpj) => self
                .contingencies
                .get(&cnpj)
                .map(|rows| rows.iter().filter(keep).cloned().collect())
                .unwrap_or_default(),
            None => {
                let mut all = Vec::new();
                for rows in self.contingencies.iter() {
                    all.extend(rows.iter().filter(keep).cloned());
                }
                all
            }
        };
        rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.entered_position));
        Page::of(rows, query.offset, query.limit)
    }

    /// Licenses matching `query`, sorted by license id.
    pub fn list_licenses(&self, query: &LicenseQuery) -> Page<LicenseRow> {
        let filter = Filter::new(self, query);
        let mut ids: Vec<LicenseId> = match (query.cnpj, query.product) {
            (Some(cnpj), product) => {
                let products: &[Product] = match &product {
                    Some(p) => std::slice::from_ref(p),
                    None => &Product::ALL,
                };
                let mut ids = Vec::new();
                for p in products {
                    for id in self.owner_ids(cnpj, *p) {
                        let keep = self
                            .licenses
                            .get(&id)
                            .is_some_and(|s| filter.matches(id, &s));
                        if keep {
                            ids.push(id);
                        }
                    }
                }
                ids
            }
            (None, _) => self
                .licenses
                .iter()
                .filter(|s| filter.matches(*s.key(), s.value()))
                .map(|s| *s.key())
                .collect(),
        };
        ids.sort_unstable();
        let page = Page::of(ids, query.offset, query.limit);
        Page {
            items: page
                .items
                .into_iter()
                .filter_map(|id| self.license(id))
                .collect(),
            total: page.total,
            offset: page.offset,
            limit: page.limit,
        }
    }

    /// Like [`LedgerView::list_licenses`], but sorted by `key` then by id (`descending`
    /// reverses the whole order): the whole matching set is ordered before the page is cut,
    /// so pages of a sorted table follow each other. Reads each matching license once, then
    /// the contract of each (never both at once).
    pub fn list_licenses_sorted(
        &self,
        query: &LicenseQuery,
        key: LicenseSortKey,
        descending: bool,
    ) -> Page<LicenseRow> {
        /// What a row sorts by; the derived order is the column's order.
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Value {
            None,
            Flag(bool),
            Day(NaiveDate),
            Text(String),
            Ip(IpAddr),
            Product(Product),
        }
        let filter = Filter::new(self, query);
        let mut keyed: Vec<(Value, LicenseId, Option<ContractId>)> = self
            .licenses
            .iter()
            .filter(|s| filter.matches(*s.key(), s.value()))
            .map(|s| {
                let v = match key {
                    LicenseSortKey::Id | LicenseSortKey::Contract => Value::None,
                    LicenseSortKey::HardwareKey => s
                        .binding
                        .map_or(Value::None, |b| Value::Text(b.hardware_key.to_string())),
                    // As `LicenseRow::ip`.
                    LicenseSortKey::Ip => s
                        .binding
                        .and_then(|b| s.last_ip.or(b.ip))
                        .map_or(Value::None, Value::Ip),
                    LicenseSortKey::ExpiresOn => Value::Day(s.expires_on),
                    LicenseSortKey::Product => Value::Product(s.product),
                    LicenseSortKey::Blocked => Value::Flag(s.blocked),
                    LicenseSortKey::Active => Value::Flag(s.active),
                };
                (v, *s.key(), s.contract_id)
            })
            .collect();
        if key == LicenseSortKey::Contract {
            for (v, _, contract) in &mut keyed {
                let active = contract
                    .and_then(|c| self.contracts.get(&c).map(|r| r.active))
                    .unwrap_or(false);
                *v = Value::Flag(active);
            }
        }
        keyed.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        if descending {
            keyed.reverse();
        }
        let ids: Vec<LicenseId> = keyed.into_iter().map(|(_, id, _)| id).collect();
        let page = Page::of(ids, query.offset, query.limit);
        Page {
            items: page
                .items
                .into_iter()
                .filter_map(|id| self.license(id))
                .collect(),
            total: page.total,
            offset: page.offset,
            limit: page.limit,
        }
    }

    /// How many licenses were granted.
    pub fn license_count(&self) -> usize {
        self.licenses.len()
    }

    /// The largest license id granted, for allocating the next one.
    pub fn max_license_id(&self) -> Option<LicenseId> {
        LicenseId::new(self.max_license_id.load(Ordering::Acquire)).ok()
    }

    /// The largest contract id signed, for allocating the next one.
    pub fn max_contract_id(&self) -> Option<ContractId> {
        ContractId::new(self.max_contract_id.load(Ordering::Acquire)).ok()
    }

    fn owner_ids(&self, cnpj: Cnpj, product: Product) -> Vec<LicenseId> {
        self.by_owner
            .get(&(cnpj, product))
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }
}

/// A [`LicenseQuery`] prepared for testing many licenses.
struct Filter<'q> {
    query: &'q LicenseQuery,
    /// `today + expiring_within_days`.
    expiring_until: Option<(NaiveDate, NaiveDate)>,
    key_prefix: Option<String>,
    text: Option<String>,
    /// Customers whose trade name contains `text`.
    text_customers: HashSet<Cnpj>,
}

impl<'q> Filter<'q> {
    fn new(view: &LedgerView, query: &'q LicenseQuery) -> Self {
        let non_empty = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let text = non_empty(&query.text).map(|t| t.to_lowercase());
        let text_customers = match &text {
            Some(t) => view
                .customers
                .iter()
                .filter(|c| c.trade_name.as_str().to_lowercase().contains(t.as_str()))
                .map(|c| c.cnpj)
                .collect(),
            None => HashSet::new(),
        };
        let expiring_until = match (query.today, query.expiring_within_days) {
            (Some(today), Some(days)) => Some((
                today,
                today
                    .checked_add_days(Days::new(u64::from(days)))
                    .unwrap_or(NaiveDate::MAX),
            )),
            _ => None,
        };
        Self {
            query,
            expiring_until,
            key_prefix: non_empty(&query.hardware_key).map(|k| k.to_ascii_uppercase()),
            text,
            text_customers,
        }
    }

    fn matches(&self, id: LicenseId, s: &LicenseState) -> bool {
        let q = self.query;
        if q.cnpj.is_some_and(|c| c != s.cnpj) || q.product.is_some_and(|p| p != s.product) {
            return false;
        }
        if let Some(status) = q.status {
            let holds = match status {
                LicenseStatus::Active => {
                    s.active && !s.blocked && q.today.is_none_or(|t| s.expires_on >= t)
                }
                LicenseStatus::Blocked => s.blocked,
                LicenseStatus::Deactivated => !s.active,
                LicenseStatus::Expired => q.today.is_some_and(|t| s.expires_on < t),
                LicenseStatus::Free => s.binding.is_none(),
                LicenseStatus::Bound => s.binding.is_some(),
            };
            if !holds {
                return false;
            }
        }
        if q.expiring_within_days.is_some() {
            match self.expiring_until {
                Some((from, until)) if s.expires_on >= from && s.expires_on <= until => {}
                _ => return false,
            }
        }
        if let Some(prefix) = &self.key_prefix {
            let mut key = TextBuf::default();
            match s.binding {
                Some(b) if key.write(&b.hardware_key) && key.as_str().starts_with(prefix) => {}
                _ => return false,
            }
        }
        if let Some(text) = &self.text {
            if !self.text_customers.contains(&s.cnpj) && !Self::text_in_license(text, id, s) {
                return false;
            }
        }
        true
    }

    /// Whether the lowercase `text` is in the license's id, bound key or IPs.
    fn text_in_license(text: &str, id: LicenseId, s: &LicenseState) -> bool {
        let found = |value: &dyn fmt::Display| {
            let mut buf = TextBuf::default();
            buf.write(value) && {
                buf.make_ascii_lowercase();
                buf.as_str().contains(text)
            }
        };
        if found(&id) {
            return true;
        }
        if let Some(b) = &s.binding {
            if found(&b.hardware_key) || b.ip.is_some_and(|ip| found(&ip)) {
                return true;
            }
        }
        s.last_ip.is_some_and(|ip: IpAddr| found(&ip))
    }
}

/// A small stack buffer for formatting ids, keys and addresses without allocating.
struct TextBuf {
    bytes: [u8; 64],
    len: usize,
}

impl Default for TextBuf {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl TextBuf {
    /// Formats `value`; false if it does not fit.
    fn write(&mut self, value: &dyn fmt::Display) -> bool {
        use fmt::Write as _;
        self.len = 0;
        write!(self, "{value}").is_ok()
    }

    fn make_ascii_lowercase(&mut self) {
        self.bytes[..self.len].make_ascii_lowercase();
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the bytes are UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for TextBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
