//! The log index: which positions concern a license (its Histórico), a customer, or an
//! event type. Derived from the log by the applier, in position order, and disposable: it
//! records the position and chain hash it covers, and anything that disagrees with the log
//! is thrown away and rebuilt.
//!
//! On disk it is a `fjall` database (an LSM tree: appends of ordered keys are cheap, a
//! prefix read is one seek) with one keyspace per dimension; keys end with the position in
//! big-endian so that a prefix lists a dimension's positions in log order:
//!
//! | keyspace   | key                                   | value       |
//! |------------|---------------------------------------|-------------|
//! | `history`  | license id (u32 BE) ‖ position (u64 BE) | —         |
//! | `customer` | CNPJ (14 ASCII digits) ‖ position     | event type  |
//! | `kind`     | event type ‖ 0x00 ‖ position          | —           |
//! | `meta`     | `covers`                              | format ‖ position ‖ hash |
//!
//! Without a directory (tests, one-off tools) the same dimensions live in memory.

use std::collections::BTreeSet;
use std::path::Path;

use ledger_events::{ChainHead, Cnpj, Hash, LicenseId, Position};
use parking_lot::RwLock;

use super::DerivedError;

/// The layout's version: a different one is rebuilt, never read.
const FORMAT: u32 = 1;
const COVERS: &[u8] = b"covers";

/// What one record adds to the index.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// The record's position.
    pub position: Position,
    /// The license whose Histórico it joins.
    pub license: Option<LicenseId>,
    /// The customer it concerns.
    pub customer: Option<Cnpj>,
    /// Its event type.
    pub event_type: String,
}

/// Entries to add at once, and the chain head they bring the index to.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    head: Option<ChainHead>,
}

impl Batch {
    /// Adds a record's entry; `hash` is the record's, the index covers it after the commit.
    pub fn push(&mut self, entry: Entry, hash: Hash) {
        self.head = Some(ChainHead {
            position: entry.position,
            hash,
        });
        self.entries.push(entry);
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Filters of a search over the index.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these event types (`None`: any).
    pub event_types: Option<Vec<String>>,
    /// Only events about this customer.
    pub customer: Option<Cnpj>,
}

/// A page of matching positions, newest first.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// Matching positions, descending.
    pub positions: Vec<Position>,
    /// Index entries examined.
    pub examined: usize,
    /// When the page filled before the range ended: the next page is the positions below
    /// this one.
    pub next_before: Option<Position>,
}

/// The index, on disk or in memory.
pub struct LogIndex {
    inner: Inner,
}

enum Inner {
    Disk(Disk),
    Memory(RwLock<Memory>),
}

struct Disk {
    db: fjall::Database,
    history: fjall::Keyspace,
    customer: fjall::Keyspace,
    kind: fjall::Keyspace,
    meta: fjall::Keyspace,
    covers: RwLock<ChainHead>,
}

#[derive(Default)]
struct Memory {
    history: BTreeSet<(u32, Position)>,
    customer: BTreeSet<(Cnpj, Position, String)>,
    kind: BTreeSet<(String, Position)>,
    covers: ChainHead,
}

impl std::fmt::Debug for LogIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogIndex")
            .field("disk", &matches!(self.inner, Inner::Disk(_)))
            .field("covers", &self.covers())
            .finish()
    }
}

fn history_key(license: u32, position: Position) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&license.to_be_bytes());
    k[4..].copy_from_slice(&position.to_be_bytes());
    k
}

fn customer_key(cnpj: &Cnpj, position: Position) -> Vec<u8> {
    let mut k = Vec::with_capacity(22);
    k.extend_from_slice(cnpj.as_str().as_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

fn kind_key(event_type: &str, position: Position) -> Vec<u8> {
    let mut k = Vec::with_capacity(event_type.len() + 9);
    k.extend_from_slice(event_type.as_bytes());
    k.push(0);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The position in a key's last eight bytes.
fn key_position(key: &[u8]) -> Result<Position, DerivedError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| DerivedError::Damaged("an index key is shorter than a position".into()))
}

fn encode_covers(head: &ChainHead) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    v.extend_from_slice(&FORMAT.to_le_bytes());
    v.extend_from_slice(&head.position.to_le_bytes());
    v.extend_from_slice(&head.hash.0);
    v
}

fn decode_covers(v: &[u8]) -> Option<ChainHead> {
    if v.len() != 44 || v.get(..4)? != FORMAT.to_le_bytes() {
        return None;
    }
    let position = u64::from_le_bytes(v.get(4..12)?.try_into().ok()?);
    let hash = Hash(v.get(12..44)?.try_into().ok()?);
    Some(ChainHead { position, hash })
}

impl Disk {
    fn open(dir: &Path) -> Result<Self, DerivedError> {
        // A small journal bounds what an open after a crash replays (the memtables are
        // written out as tables whenever it fills).
        let db = fjall::Database::builder(dir)
            .cache_size(16 * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let options = || fjall::KeyspaceCreateOptions::default().max_memtable_size(8 * 1024 * 1024);
        let history = db.keyspace("history", options)?;
        let customer = db.keyspace("customer", options)?;
        let kind = db.keyspace("kind", options)?;
        let meta = db.keyspace("meta", options)?;
        let covers = match meta.get(COVERS)? {
            None => ChainHead::default(),
            Some(v) => decode_covers(&v).ok_or_else(|| {
                DerivedError::Damaged("the index's `covers` entry is not of this version".into())
            })?,
        };
        Ok(Self {
            db,
            history,
            customer,
            kind,
            meta,
            covers: RwLock::new(covers),
        })
    }
}

impl LogIndex {
    /// Opens (or creates) the index in `dir`. A directory that is not a valid index of this
    /// version fails: the caller moves it away and starts an empty one.
    pub fn open(dir: &Path) -> Result<Self, DerivedError> {
        Ok(Self {
            inner: Inner::Disk(Disk::open(dir)?),
        })
    }

    /// An empty index in memory.
    pub fn memory() -> Self {
        Self {
            inner: Inner::Memory(RwLock::new(Memory::default())),
        }
    }

    /// Whether it lives on disk.
    pub fn is_on_disk(&self) -> bool {
        matches!(self.inner, Inner::Disk(_))
    }

    /// The last record the index covers (position 0: none).
    pub fn covers(&self) -> ChainHead {
        match &self.inner {
            Inner::Disk(d) => *d.covers.read(),
            Inner::Memory(m) => m.read().covers,
        }
    }

    /// Adds a batch's entries and moves what the index covers, atomically. Entries already
    /// present are written again unchanged (a replay after a restart is harmless).
    pub fn commit(&self, batch: Batch) -> Result<(), DerivedError> {
        let Some(head) = batch.head else {
            return Ok(());
        };
        match &self.inner {
            Inner::Disk(d) => {
                let mut b = d.db.batch();
                for e in &batch.entries {
                    if let Some(id) = e.license {
                        b.insert(&d.history, history_key(id.get(), e.position), b"");
                    }
                    if let Some(cnpj) = &e.customer {
                        b.insert(
                            &d.customer,
                            customer_key(cnpj, e.position),
                            e.event_type.as_bytes(),
                        );
                    }
                    b.insert(&d.kind, kind_key(&e.event_type, e.position), b"");
                }
                b.insert(&d.meta, COVERS, encode_covers(&head));
                b.commit()?;
                *d.covers.write() = head;
            }
            Inner::Memory(m) => {
                let mut m = m.write();
                for e in batch.entries {
                    if let Some(id) = e.license {
                        m.history.insert((id.get(), e.position));
                    }
                    if let Some(cnpj) = e.customer {
                        m.customer.insert((cnpj, e.position, e.event_type.clone()));
                    }
                    m.kind.insert((e.event_type, e.position));
                }
                m.covers = head;
            }
        }
        Ok(())
    }

    /// Makes what was committed durable (before a snapshot names a position the index must
    /// cover after a crash).
    pub fn persist(&self) -> Result<(), DerivedError> {
        if let Inner::Disk(d) = &self.inner {
            d.db.persist(fjall::PersistMode::SyncAll)?;
        }
        Ok(())
    }

    /// Writes the in-memory part of the index out as tables (at a stop), so that the next
    /// open has no journal to replay.
    pub fn settle(&self) -> Result<(), DerivedError> {
        if let Inner::Disk(d) = &self.inner {
            for ks in [&d.history, &d.customer, &d.kind, &d.meta] {
                ks.rotate_memtable_and_wait()?;
            }
        }
        Ok(())
    }

    /// A license's Histórico up to `upto`: how many entries, and `limit` positions newest
    /// first after skipping `offset`.
    pub fn history(
        &self,
        license: LicenseId,
        upto: Position,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Position>), DerivedError> {
        let id = license.get();
        match &self.inner {
            Inner::Disk(d) => {
                let range = history_key(id, 0)..=history_key(id, upto);
                let mut total = 0usize;
                let mut page = Vec::new();
                for item in d.history.range(range).rev() {
                    let key = item.key()?;
                    if total >= offset && page.len() < limit {
                        page.push(key_position(&key)?);
                    }
                    total += 1;
                }
                Ok((total, page))
            }
            Inner::Memory(m) => {
                let m = m.read();
                let all: Vec<Position> = m
                    .history
                    .range((id, 0)..=(id, upto))
                    .rev()
                    .map(|&(_, p)| p)
                    .collect();
                let page = all.iter().skip(offset).take(limit).copied().collect();
                Ok((all.len(), page))
            }
        }
    }

    /// Up to `limit` positions in `lo..=hi` matching `filter`, newest first. Complete: every
    /// matching position of the range is found by paging on (`next_before`).
    pub fn search(
        &self,
        filter: &Filter,
        lo: Position,
        hi: Position,
        limit: usize,
    ) -> Result<Found, DerivedError> {
        let mut found = Found {
            positions: Vec::new(),
            examined: 0,
            next_before: None,
        };
        if lo > hi || limit == 0 {
            return Ok(found);
        }
        let wanted = |t: &str| {
            filter
                .event_types
                .as_ref()
                .is_none_or(|types| types.iter().any(|w| w == t))
        };
        match (&filter.customer, &filter.event_types) {
            (Some(cnpj), _) => {
                let mut take = |p: Position, t: &str| {
                    found.examined += 1;
                    if wanted(t) {
                        if found.positions.len() == limit {
                            found.next_before = Some(p + 1);
                            return false;
                        }
                        found.positions.push(p);
                    }
                    true
                };
                match &self.inner {
                    Inner::Disk(d) => {
                        for item in d
                            .customer
                            .range(customer_key(cnpj, lo)..=customer_key(cnpj, hi))
                            .rev()
                        {
                            let (k, v) = item.into_inner()?;
                            let t = std::str::from_utf8(&v).map_err(|_| {
                                DerivedError::Damaged("an event type is not UTF-8".into())
                            })?;
                            if !take(key_position(&k)?, t) {
                                break;
                            }
                        }
                    }
                    Inner::Memory(m) => {
                        let m = m.read();
                        let range = (*cnpj, lo, String::new())
                            ..(*cnpj, hi.saturating_add(1), String::new());
                        for (_, p, t) in m.customer.range(range).rev() {
                            if !take(*p, t) {
                                break;
                            }
                        }
                    }
                }
            }
            (None, Some(types)) => {
                // Newest first across the types: each type's positions descending, merged.
                let mut all: Vec<Position> = Vec::new();
                for t in types {
                    let mut mine = self.kind_positions(t, lo, hi, limit + 1)?;
                    found.examined += mine.len();
                    all.append(&mut mine);
                }
                all.sort_unstable_by(|a, b| b.cmp(a));
                if all.len() > limit {
                    found.next_before = all.get(limit - 1).copied();
                    all.truncate(limit);
                }
                found.positions = all;
            }
            (None, None) => {
                let n = (hi - lo + 1).min(limit as u64);
                found.positions = (0..n).map(|i| hi - i).collect();
                found.examined = n as usize;
                if hi - lo + 1 > n {
                    found.next_before = Some(hi + 1 - n);
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` positions of `event_type` in `lo..=hi`, newest first.
    fn kind_positions(
        &self,
        event_type: &str,
        lo: Position,
        hi: Position,
        limit: usize,
    ) -> Result<Vec<Position>, DerivedError> {
        match &self.inner {
            Inner::Disk(d) => {
                let mut out = Vec::new();
                for item in d
                    .kind
                    .range(kind_key(event_type, lo)..=kind_key(event_type, hi))
                    .rev()
                    .take(limit)
                {
                    out.push(key_position(&item.key()?)?);
                }
                Ok(out)
            }
            Inner::Memory(m) => Ok(m
                .read()
                .kind
                .range((event_type.to_owned(), lo)..=(event_type.to_owned(), hi))
                .rev()
                .take(limit)
                .map(|(_, p)| *p)
                .collect()),
        }
    }

    /// How many records of `event_type` lie in `lo..=hi`.
    pub fn count(&self, event_type: &str, lo: Position, hi: Position) -> Result<u64, DerivedError> {
        if lo > hi {
            return Ok(0);
        }
        match &self.inner {
            Inner::Disk(d) => {
                let mut n = 0u64;
                for item in d
                    .kind
                    .range(kind_key(event_type, lo)..=kind_key(event_type, hi))
                {
                    item.key()?;
                    n += 1;
                }
                Ok(n)
            }
            Inner::Memory(m) => Ok(m
                .read()
                .kind
                .range((event_type.to_owned(), lo)..=(event_type.to_owned(), hi))
                .count() as u64),
        }
    }
}

impl From<fjall::Error> for DerivedError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Locked => DerivedError::Locked("the log index".into()),
            e => DerivedError::Index(e.to_string()),
        }
    }
}
