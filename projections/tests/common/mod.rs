//! Test helpers: a log builder that turns events into real, hash-chained records with dense
//! positions and per-stream versions, and constructors for valid values.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger_events::*;
use ledger_projections::LedgerView;

/// An in-memory log: events become records as they are pushed.
pub struct Log {
    now: DateTime<Utc>,
    prev_hash: Hash,
    versions: HashMap<StreamId, StreamVersion>,
    pub records: Vec<Record>,
    pub events: Vec<Event>,
    buf: Vec<u8>,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    /// An empty log whose clock starts at 2023-03-27 12:00:00 UTC.
    pub fn new() -> Self {
        Self {
            now: at("2023-03-27T12:00:00Z"),
            prev_hash: Hash::ZERO,
            versions: HashMap::new(),
            records: Vec::new(),
            events: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The time the next record gets.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Appends an event, recorded one second after the previous one, and returns its index
    /// (position - 1).
    pub fn push(&mut self, event: impl Into<Event>) -> usize {
        let event = event.into();
        let stream_id = event.stream_id();
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        *version += 1;
        let position = self.records.len() as u64 + 1;
        let actor = match &event {
            Event::Terminal(TerminalEvent::CheckedIn(e)) => Actor::terminal(&e.hardware_id),
            _ => Actor::operator("suporte").expect("actor"),
        };
        let envelope = Envelope {
            position,
            stream_id,
            stream_version: *version,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            recorded_at: self.now,
            actor,
            correlation_id: uuid::Uuid::from_u128(u128::from(position) << 64),
            prev_hash: self.prev_hash,
            hash: Hash::ZERO,
        };
        let payload = event.encode_payload().expect("payload");
        self.buf.clear();
        let hash = encode_record_into(&mut self.buf, &envelope, &payload).expect("encode");
        self.prev_hash = hash;
        let record = Record::decode(&self.buf).expect("decode");
        self.records.push(record);
        self.events.push(event);
        self.now += Duration::seconds(1);
        self.records.len() - 1
    }

    /// Position of the last record.
    pub fn head(&self) -> Position {
        self.records.len() as u64
    }

    /// The envelope of the record at `position`.
    pub fn envelope(&self, position: Position) -> &Envelope {
        &self.records[position as usize - 1].envelope
    }

    /// The event at `position`.
    pub fn event(&self, position: Position) -> &Event {
        &self.events[position as usize - 1]
    }

    /// A view with every record applied.
    pub fn view(&self) -> LedgerView {
        let view = LedgerView::new();
        for (record, event) in self.records.iter().zip(&self.events) {
            view.apply(&record.envelope, event).expect("apply");
        }
        view
    }

    /// A view with every record applied through `apply_record_noting`, and the positions
    /// noted per license, oldest first (the license's Histórico). Inconsistent records are
    /// applied as the view applies them, and note nothing.
    pub fn noted_view(
        &self,
    ) -> (
        LedgerView,
        std::collections::BTreeMap<LicenseId, Vec<Position>>,
    ) {
        let view = LedgerView::new();
        let mut noted = std::collections::BTreeMap::<LicenseId, Vec<Position>>::new();
        for record in &self.records {
            match view.apply_record_noting(record) {
                Ok(Some(id)) => noted.entry(id).or_default().push(record.envelope.position),
                Ok(None) | Err(ledger_projections::ProjectionError::Inconsistent { .. }) => {}
                Err(e) => panic!("apply: {e}"),
            }
        }
        (view, noted)
    }

    /// Records as the `rebuild` source.
    pub fn source(&self) -> impl Iterator<Item = Result<Record, std::convert::Infallible>> + '_ {
        self.records.iter().cloned().map(Ok)
    }
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("time")
}

pub fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("date")
}

/// A valid CNPJ built from `n` (check digits computed as Receita Federal does).
pub fn cnpj(n: u32) -> Cnpj {
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

pub fn lic(n: u32) -> LicenseId {
    LicenseId::new(n).expect("license id")
}

pub fn contract_id(n: u32) -> ContractId {
    ContractId::new(n).expect("contract id")
}

pub fn hw(n: u64) -> HardwareId {
    HardwareId::from_bytes((0x5002_6B77_0000_0000 | n).to_be_bytes())
}

pub fn key(n: u64) -> HardwareKey {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&0x88A7_B56C_2B3F_326F_u64.to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    HardwareKey::from_bytes(b)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub fn note(s: &str) -> Option<Note> {
    Some(Note::parse(s).expect("note"))
}

pub fn trade_name(s: &str) -> TradeName {
    TradeName::parse(s).expect("trade name")
}

pub fn version(s: &str) -> ProgramVersion {
    ProgramVersion::parse(s).expect("version")
}

pub fn resources(entries: &[(&str, bool)]) -> Resources {
    Resources::new(
        entries
            .iter()
            .map(|(k, v)| (ResourceKey::parse(k).expect("key"), ResourceValue::Bool(*v))),
    )
    .expect("resources")
}

// ---------------------------------------------------------------------------------------------
// Event constructors for the common cases
// ---------------------------------------------------------------------------------------------

pub fn registered(c: Cnpj, name: &str) -> CustomerRegistered {
    CustomerRegistered {
        cnpj: c,
        trade_name: trade_name(name),
        since: day(2023, 1, 2),
    }
}

pub fn granted(id: u32, c: Cnpj, product: Product, expires_on: NaiveDate) -> LicenseGranted {
    LicenseGranted {
        license_id: lic(id),
        cnpj: c,
        product,
        contract_id: None,
        expires_on,
        resources: resources(&[("habilita_dav", true)]),
    }
}

pub fn bound(id: u32, terminal: u64, address: Option<&str>) -> LicenseBound {
    LicenseBound {
        license_id: lic(id),
        hardware_id: hw(terminal),
        hardware_key: key(terminal),
        ip: address.map(ip),
        caixa: Some(TerminalNumber::new(3).expect("caixa")),
        equipamento: None,
    }
}

pub fn unlinked(id: u32, terminal: u64) -> LicenseUnlinked {
    LicenseUnlinked {
        license_id: lic(id),
        hardware_id: hw(terminal),
        note: None,
    }
}

pub fn renewed(id: u32, from: NaiveDate, to: NaiveDate) -> LicenseRenewed {
    LicenseRenewed {
        license_id: lic(id),
        previous_expiry: from,
        expires_on: to,
        cause: RenewalCause::Manual,
    }
}

pub fn checked_in(
    c: Cnpj,
    product: Product,
    terminal: u64,
    license: Option<u32>,
    address: Option<&str>,
    outcome: CheckInOutcome,
) -> TerminalCheckedIn {
    TerminalCheckedIn {
        cnpj: c,
        product,
        hardware_id: hw(terminal),
        hardware_key: key(terminal),
        license_id: license.map(lic),
        ip: address.map(ip),
        program_version: Some(version("2.0.12.1")),
        caixa: None,
        equipamento: None,
        outcome,
    }
}

pub fn valid(expires_on: NaiveDate) -> CheckInOutcome {
    CheckInOutcome::Valid { expires_on }
}

pub fn entered(
    c: Cnpj,
    kind: ContingencyKind,
    terminal: Option<u64>,
    license: Option<u32>,
) -> ContingencyEntered {
    ContingencyEntered {
        cnpj: c,
        kind,
        hardware_id: terminal.map(hw),
        license_id: license.map(lic),
        grace_until: None,
        note: None,
    }
}

pub fn cleared(c: Cnpj, kind: ContingencyKind, terminal: Option<u64>) -> ContingencyCleared {
    ContingencyCleared {
        cnpj: c,
        kind,
        hardware_id: terminal.map(hw),
        note: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing views
// ---------------------------------------------------------------------------------------------

use ledger_projections::{
    ContingencyQuery, ContingencyRow, ContractRow, CustomerRow, LicenseQuery, LicenseRow,
    TerminalRow, PAGE_LIMIT_MAX,
};

/// Everything a view answers about the ids a log mentions.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub position: Position,
    pub customers: Vec<CustomerRow>,
    pub contracts: Vec<Option<ContractRow>>,
    pub licenses: Vec<LicenseRow>,
    pub bound: Vec<Option<LicenseId>>,
    pub terminals: Vec<Option<TerminalRow>>,
    pub contingencies: Vec<ContingencyRow>,
    pub license_count: usize,
    pub max_license_id: Option<LicenseId>,
    pub max_contract_id: Option<ContractId>,
    pub inconsistency_count: u64,
}

/// Reads `view` through its public API, for every id that `events` mention.
pub fn snapshot(view: &LedgerView, events: &[Event]) -> Snapshot {
    let mut contracts = std::collections::BTreeSet::new();
    let mut license_ids = std::collections::BTreeSet::new();
    let mut terminals = std::collections::BTreeSet::new();
    let mut owners = HashMap::new();
    let mut bindings = std::collections::BTreeSet::new();
    for event in events {
        match event {
            Event::Contract(ContractEvent::Signed(e)) => {
                contracts.insert(e.contract_id);
            }
            Event::License(LicenseEvent::Granted(e)) => {
                license_ids.insert(e.license_id);
                owners.insert(e.license_id, (e.cnpj, e.product));
            }
            Event::License(LicenseEvent::Bound(e)) => {
                if let Some((c, p)) = owners.get(&e.license_id) {
                    bindings.insert((*c, *p, e.hardware_id));
                }
            }
            Event::Terminal(TerminalEvent::CheckedIn(e)) => {
                terminals.insert((e.cnpj, e.hardware_id));
            }
            _ => {}
        }
    }
    let mut licenses = Vec::new();
    let mut offset = 0;
    loop {
        let page = view.list_licenses(&LicenseQuery {
            offset,
            limit: PAGE_LIMIT_MAX,
            ..Default::default()
        });
        let n = page.items.len();
        licenses.extend(page.items);
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    let mut contingencies = Vec::new();
    let mut offset = 0;
    loop {
        let page = view.contingencies(&ContingencyQuery {
            offset,
            limit: PAGE_LIMIT_MAX,
            ..Default::default()
        });
        let n = page.items.len();
        contingencies.extend(page.items);
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    Snapshot {
        position: view.position(),
        customers: view.customers(),
        contracts: contracts.iter().map(|id| view.contract(*id)).collect(),
        licenses,
        bound: bindings
            .iter()
            .map(|(c, p, h)| view.bound_license(c, *p, h).map(|l| l.license_id))
            .collect(),
        terminals: terminals.iter().map(|(c, h)| view.terminal(c, h)).collect(),
        contingencies,
        license_count: view.license_count(),
        max_license_id: view.max_license_id(),
        max_contract_id: view.max_contract_id(),
        inconsistency_count: view.inconsistency_count(),
    }
}

/// A view with the first `n` records applied.
pub fn prefix_view(log: &Log, n: usize) -> LedgerView {
    let view = LedgerView::new();
    for (record, event) in log.records.iter().zip(&log.events).take(n) {
        let _ = view.apply(&record.envelope, event);
    }
    view
}
