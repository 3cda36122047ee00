//! What the view keeps per row, in a more compact form than the public rows: shared values
//! (resource sets, program versions) are interned behind an `Arc`, and a terminal's
//! per-product check-ins sit in an exactly sized vector instead of a `BTreeMap` (whose
//! smallest node holds eleven entries). Rows are materialized from these on read.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    CheckInOutcome, Cnpj, ContractId, HardwareId, LicenseId, Position, Product, ProgramVersion,
    Resources, StreamVersion,
};

use crate::rows::{Binding, LastCheckIn, LicenseRow, TerminalRow};

/// A check-in as stored: the program version is interned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredCheckIn {
    pub at: DateTime<Utc>,
    pub hardware_id: HardwareId,
    pub ip: Option<IpAddr>,
    pub program_version: Option<Arc<ProgramVersion>>,
    pub outcome: CheckInOutcome,
    pub position: Position,
}

impl StoredCheckIn {
    pub fn to_row(&self) -> LastCheckIn {
        LastCheckIn {
            at: self.at,
            hardware_id: self.hardware_id,
            ip: self.ip,
            program_version: self.program_version.as_deref().cloned(),
            outcome: self.outcome,
            position: self.position,
        }
    }
}

/// A license as stored.
#[derive(Clone, Debug)]
pub(crate) struct LicenseState {
    pub cnpj: Cnpj,
    pub product: Product,
    pub blocked: bool,
    pub active: bool,
    pub contract_id: Option<ContractId>,
    pub expires_on: NaiveDate,
    pub resources: Arc<Resources>,
    pub binding: Option<Binding>,
    pub last_ip: Option<IpAddr>,
    pub last_check_in: Option<StoredCheckIn>,
    pub granted_at: DateTime<Utc>,
    pub version: StreamVersion,
    pub updated_position: Position,
}

impl LicenseState {
    pub fn to_row(&self, license_id: LicenseId) -> LicenseRow {
        LicenseRow {
            license_id,
            cnpj: self.cnpj,
            product: self.product,
            contract_id: self.contract_id,
            expires_on: self.expires_on,
            resources: Resources::clone(&self.resources),
            blocked: self.blocked,
            active: self.active,
            binding: self.binding,
            last_ip: self.last_ip,
            last_check_in: self.last_check_in.as_ref().map(StoredCheckIn::to_row),
            // The bound terminal's last recorded check-in (not a previous terminal's).
            last_seen_at: self
                .last_check_in
                .as_ref()
                .filter(|c| self.binding.is_some_and(|b| b.hardware_id == c.hardware_id))
                .map(|c| c.at),
            granted_at: self.granted_at,
            version: self.version,
            updated_position: self.updated_position,
        }
    }
}

/// A terminal as stored: the latest check-in per product, sorted by product.
#[derive(Clone, Debug, Default)]
pub(crate) struct TerminalState {
    pub version: StreamVersion,
    pub last: Vec<(Product, StoredCheckIn)>,
}

impl TerminalState {
    /// Replaces the product's check-in, growing the vector by exactly one for a new product.
    pub fn record(&mut self, product: Product, check_in: StoredCheckIn) {
        match self.last.binary_search_by_key(&product, |(p, _)| *p) {
            Ok(i) => self.last[i].1 = check_in,
            Err(i) => {
                self.last.reserve_exact(1);
                self.last.insert(i, (product, check_in));
            }
        }
    }

    pub fn to_row(&self, cnpj: Cnpj, hardware_id: HardwareId) -> TerminalRow {
        TerminalRow {
            cnpj,
            hardware_id,
            version: self.version,
            last: self
                .last
                .iter()
                .map(|(p, c)| (*p, c.to_row()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

/// Hands out one shared copy of equal values. Only the applier touches it; values stay
/// interned for the life of the view (there are few distinct resource sets and versions).
#[derive(Debug)]
pub(crate) struct Interner<T: Hash + Eq> {
    all: HashSet<Arc<T>, ahash::RandomState>,
    /// The value handed out last: consecutive events often carry the same one.
    last: Option<Arc<T>>,
}

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Self {
            all: HashSet::with_hasher(ahash::RandomState::new()),
            last: None,
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    pub fn intern(&mut self, value: &T) -> Arc<T> {
        if let Some(last) = self.last.as_ref().filter(|last| ***last == *value) {
            return Arc::clone(last);
        }
        let shared = match self.all.get(value) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Arc::new(value.clone());
                self.all.insert(Arc::clone(&shared));
                shared
            }
        };
        self.last = Some(Arc::clone(&shared));
        shared
    }
}
