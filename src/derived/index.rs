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
//! | `history`  | license id (u32 BE) ‖ position (u64 BE) | [`Joins`]   |
//! | `customer` | CNPJ (14 ASCII digits) ‖ position     | event type  |
//! | `kind`     | event type ‖ 0x00 ‖ position          | —           |
//! | `meta`     | `covers`                              | format ‖ position ‖ hash |
//!
//! A `history` value says how the record changes the license's row ([`Joins`]): empty for
//! anything but a check-in (and in indexes written before the value existed, which are read
//! as such: folded, never skipped), so that one license as of a moment folds its row from
//! the records that matter ([`LogIndex::fold_positions`]) instead of its whole Histórico.
//!
//! Without a directory (tests, one-off tools) the same dimensions live in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ledger_events::{ChainHead, Cnpj, Hash, LicenseId, Position};
use parking_lot::RwLock;

use super::DerivedError;
use crate::store::Maintenance;

/// The layout's version: a different one is rebuilt, never read. (2: entries are ingested
/// as tables, never journaled; an index of version 1 carries a journal of entries that
/// every open would replay, so it is rebuilt once.)
const FORMAT: u32 = 2;
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
    /// How it changes the row of `license`.
    pub joins: Joins,
}

/// How a record of a license's Histórico changes that license's row. A check-in the license
/// answered changes only the row's last check-in, its last IP when it carries one, and its
/// updated position, each overwritten by the next: of a run of check-ins only the newest,
/// and the newest that carried an IP, are needed to fold the row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Joins {
    /// Anything else (or not known): always folded.
    #[default]
    Changes,
    /// A check-in the license answered, with no IP.
    CheckIn,
    /// A check-in the license answered, carrying an IP.
    CheckInWithIp,
}

impl Joins {
    /// The `history` value: empty for [`Joins::Changes`] (so an index written before values
    /// existed reads as "fold everything").
    fn encode(self) -> &'static [u8] {
        match self {
            Self::Changes => &[],
            Self::CheckIn => &[1],
            Self::CheckInWithIp => &[2],
        }
    }

    fn decode(v: &[u8]) -> Result<Self, DerivedError> {
        match v {
            [] => Ok(Self::Changes),
            [1] => Ok(Self::CheckIn),
            [2] => Ok(Self::CheckInWithIp),
            _ => Err(DerivedError::Damaged(
                "a history entry's value is none of the known kinds".into(),
            )),
        }
    }
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

/// Entries the on-disk index keeps in memory before writing them out as tables: bounds
/// the memory of the tail and the size of each ingestion.
pub const TAIL_ENTRIES_MAX: usize = 65_536;

/// The index: on disk, with its newest entries in memory (the tail), or wholly in memory.
///
/// On disk, entries are written as sorted runs straight into tables (fjall's ingestion: no
/// journal, no memtable) whenever the tail reaches [`TAIL_ENTRIES_MAX`], at every
/// [`LogIndex::persist`] and at a stop; only `covers` goes through fjall's journal. So an
/// open replays no journal of entries (a journal of millions of small keys took seconds to
/// replay, on every open of the CLI as well), and a crash loses at most the tail, which the
/// next start rebuilds from the log after the snapshot it resumes from (a snapshot is never
/// newer than what the disk covers).
///
/// Invariant: every position in the tail is above what the disk covers, so a query reads
/// the tail, newest first, then the disk, and never meets a position twice. Queries hold
/// the tail's read lock while they read the disk, and a spill holds its write lock, so a
/// query sees each entry exactly once.
pub struct LogIndex {
    disk: Option<Disk>,
    tail: RwLock<Tail>,
}

struct Disk {
    maintenance: Maintenance,
    db: fjall::Database,
    history: fjall::Keyspace,
    customer: fjall::Keyspace,
    kind: fjall::Keyspace,
    meta: fjall::Keyspace,
}

#[derive(Default)]
struct Tail {
    history: BTreeMap<(u32, Position), Joins>,
    customer: BTreeSet<(Cnpj, Position, String)>,
    kind: BTreeSet<(String, Position)>,
    /// What the index covers, tail included.
    covers: ChainHead,
    /// What the disk covers (everything up to it is in tables).
    on_disk: ChainHead,
}

impl Tail {
    fn history_rev(
        &self,
        id: u32,
        lo: Position,
        hi: Position,
    ) -> impl Iterator<Item = (Position, Joins)> + '_ {
        self.history
            .range((id, lo)..=(id, hi))
            .rev()
            .map(|(&(_, p), &joins)| (p, joins))
    }

    fn customer_rev<'a>(
        &'a self,
        cnpj: &Cnpj,
        lo: Position,
        hi: Position,
    ) -> impl Iterator<Item = (Position, &'a str)> + 'a {
        let range = (*cnpj, lo, String::new())..(*cnpj, hi.saturating_add(1), String::new());
        self.customer
            .range(range)
            .rev()
            .map(|(_, p, t)| (*p, t.as_str()))
    }

    fn kind_rev<'a>(
        &'a self,
        event_type: &str,
        lo: Position,
        hi: Position,
    ) -> impl Iterator<Item = Position> + 'a {
        self.kind
            .range((event_type.to_owned(), lo)..=(event_type.to_owned(), hi))
            .rev()
            .map(|(_, p)| *p)
    }
}

impl std::fmt::Debug for LogIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogIndex")
            .field("disk", &self.disk.is_some())
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

/// Writes `keys` (ascending, unique) into `keyspace` as one new table. Ingestion panics on
/// keys out of order, so the order is checked here first and refused as an error.
fn ingest<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    keyspace: &fjall::Keyspace,
    maintenance: Maintenance,
    keys: impl Iterator<Item = (K, V)>,
) -> Result<(), DerivedError> {
    let keys: Vec<(K, V)> = keys.collect();
    if keys.is_empty() {
        return Ok(());
    }
    if keys.windows(2).any(|w| w[0].0.as_ref() >= w[1].0.as_ref()) {
        return Err(DerivedError::Index(
            "index keys out of order in a run (a bug): not written".into(),
        ));
    }
    crate::store::bound_level0(keyspace, maintenance)?;
    let mut run = keyspace.start_ingestion()?;
    for (k, v) in &keys {
        run.write(k.as_ref(), v.as_ref())?;
    }
    run.finish()?;
    Ok(())
}

impl Disk {
    fn open(dir: &Path, maintenance: Maintenance) -> Result<(Self, ChainHead), DerivedError> {
        // Entries never go through the journal (see `LogIndex`), only `covers` (44 bytes a
        // spill), so the journal an open replays stays small (64 MiB is fjall's minimum).
        let db = fjall::Database::builder(dir)
            .worker_threads_unchecked(maintenance.workers(2))
            .cache_size(16 * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        maintenance.lower_workers();
        let options = || fjall::KeyspaceCreateOptions::default().max_memtable_size(1024 * 1024);
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
        Ok((
            Self {
                maintenance,
                db,
                history,
                customer,
                kind,
                meta,
            },
            covers,
        ))
    }

    /// Writes the tail out as tables, then `covers`; empties the tail.
    fn spill(&self, tail: &mut Tail) -> Result<(), DerivedError> {
        if tail.covers == tail.on_disk {
            return Ok(());
        }
        ingest(
            &self.history,
            self.maintenance,
            tail.history
                .iter()
                .map(|(&(id, p), joins)| (history_key(id, p), joins.encode())),
        )?;
        ingest(
            &self.customer,
            self.maintenance,
            tail.customer
                .iter()
                .map(|(cnpj, p, t)| (customer_key(cnpj, *p), t.as_bytes())),
        )?;
        ingest(
            &self.kind,
            self.maintenance,
            tail.kind.iter().map(|(t, p)| (kind_key(t, *p), [])),
        )?;
        self.meta.insert(COVERS, encode_covers(&tail.covers))?;
        let covers = tail.covers;
        *tail = Tail {
            covers,
            on_disk: covers,
            ..Tail::default()
        };
        Ok(())
    }
}

impl LogIndex {
    #[cfg(test)]
    pub(crate) fn level0_runs(&self) -> usize {
        use fjall::AbstractTree;
        self.disk
            .as_ref()
            .map_or(0, |d| d.history.tree.l0_run_count())
    }

    /// Opens (or creates) the index in `dir`. A directory that is not a valid index of this
    /// version fails: the caller moves it away and starts an empty one.
    pub fn open(dir: &Path, maintenance: Maintenance) -> Result<Self, DerivedError> {
        let (disk, covers) = Disk::open(dir, maintenance)?;
        Ok(Self {
            disk: Some(disk),
            tail: RwLock::new(Tail {
                covers,
                on_disk: covers,
                ..Tail::default()
            }),
        })
    }

    /// An empty index in memory.
    pub fn memory() -> Self {
        Self {
            disk: None,
            tail: RwLock::new(Tail::default()),
        }
    }

    /// Whether it lives on disk.
    pub fn is_on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// The last record the index covers (position 0: none).
    pub fn covers(&self) -> ChainHead {
        self.tail.read().covers
    }

    /// Adds a batch's entries and moves what the index covers, atomically for readers.
    /// Entries the disk holds already are skipped (a replay after a restart is harmless).
    pub fn commit(&self, batch: Batch) -> Result<(), DerivedError> {
        let Some(head) = batch.head else {
            return Ok(());
        };
        let mut tail = self.tail.write();
        let on_disk = tail.on_disk.position;
        for e in batch.entries {
            if e.position <= on_disk {
                continue;
            }
            if let Some(id) = e.license {
                tail.history.insert((id.get(), e.position), e.joins);
            }
            if let Some(cnpj) = e.customer {
                tail.customer
                    .insert((cnpj, e.position, e.event_type.clone()));
            }
            tail.kind.insert((e.event_type, e.position));
        }
        if head.position > tail.covers.position {
            tail.covers = head;
        }
        match &self.disk {
            // Every record has exactly one `kind` entry: its length is the tail's records.
            Some(disk) if tail.kind.len() >= TAIL_ENTRIES_MAX => disk.spill(&mut tail),
            _ => Ok(()),
        }
    }

    /// Makes what was committed durable (before a snapshot names a position the index must
    /// cover after a crash): the tail is written out as tables, then `covers` synced.
    pub fn persist(&self) -> Result<(), DerivedError> {
        if let Some(disk) = &self.disk {
            disk.spill(&mut self.tail.write())?;
            disk.db.persist(fjall::PersistMode::SyncAll)?;
        }
        Ok(())
    }

    /// Writes everything out (at a stop), the small memtable of `covers` included, so that
    /// the next open has next to nothing to replay.
    pub fn settle(&self) -> Result<(), DerivedError> {
        self.persist()?;
        // Without workers a rotation would wait forever for a flush (only `meta` has a
        // memtable; its journal is a few bytes to replay).
        if let Some(disk) = self
            .disk
            .as_ref()
            .filter(|d| d.maintenance == Maintenance::Background)
        {
            for ks in [&disk.history, &disk.customer, &disk.kind, &disk.meta] {
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
        let mut total = 0usize;
        let mut page = Vec::new();
        self.history_rev(license, upto, |p, _| {
            if total >= offset && page.len() < limit {
                page.push(p);
            }
            total += 1;
        })?;
        Ok((total, page))
    }

    /// The positions, ascending, that fold `license`'s row as of `upto`: its Histórico up
    /// to there without the check-ins a newer one overrides (see [`Joins`]): every record
    /// that changes it otherwise, the newest check-in, and the newest check-in that carried
    /// an IP. Folded alone, in this order, they give the row the whole Histórico gives; a
    /// year of daily check-ins is read as one.
    pub fn fold_positions(
        &self,
        license: LicenseId,
        upto: Position,
    ) -> Result<Vec<Position>, DerivedError> {
        let (mut check_in, mut with_ip) = (false, false);
        let mut out = Vec::new();
        self.history_rev(license, upto, |p, joins| {
            let keep = match joins {
                Joins::Changes => true,
                Joins::CheckIn => !check_in,
                Joins::CheckInWithIp => !check_in || !with_ip,
            };
            if keep {
                out.push(p);
            }
            check_in |= joins != Joins::Changes;
            with_ip |= joins == Joins::CheckInWithIp;
        })?;
        out.reverse();
        Ok(out)
    }

    /// Calls `each` with every entry of `license`'s Histórico up to `upto`, newest first:
    /// the tail, then the disk below it (under the tail's read lock, so nothing is seen
    /// twice or missed by a concurrent spill).
    fn history_rev(
        &self,
        license: LicenseId,
        upto: Position,
        mut each: impl FnMut(Position, Joins),
    ) -> Result<(), DerivedError> {
        let id = license.get();
        let tail = self.tail.read();
        for (p, joins) in tail.history_rev(id, 0, upto) {
            each(p, joins);
        }
        if let Some(d) = &self.disk {
            let hi = upto.min(tail.on_disk.position);
            for item in d
                .history
                .range(history_key(id, 0)..=history_key(id, hi))
                .rev()
            {
                let (key, value) = item.into_inner()?;
                each(key_position(&key)?, Joins::decode(&value)?);
            }
        }
        Ok(())
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
                let tail = self.tail.read();
                let mut more = true;
                for (p, t) in tail.customer_rev(cnpj, lo, hi) {
                    if !take(p, t) {
                        more = false;
                        break;
                    }
                }
                let hi = hi.min(tail.on_disk.position);
                if let (true, Some(d), true) = (more, &self.disk, lo <= hi) {
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
        let tail = self.tail.read();
        let mut out: Vec<Position> = tail.kind_rev(event_type, lo, hi).take(limit).collect();
        let hi = hi.min(tail.on_disk.position);
        if let (Some(d), true) = (&self.disk, lo <= hi) {
            for item in d
                .kind
                .range(kind_key(event_type, lo)..=kind_key(event_type, hi))
                .rev()
                .take(limit - out.len())
            {
                out.push(key_position(&item.key()?)?);
            }
        }
        Ok(out)
    }

    /// How many records of `event_type` lie in `lo..=hi`.
    pub fn count(&self, event_type: &str, lo: Position, hi: Position) -> Result<u64, DerivedError> {
        if lo > hi {
            return Ok(0);
        }
        let tail = self.tail.read();
        let mut n = tail.kind_rev(event_type, lo, hi).count() as u64;
        let hi = hi.min(tail.on_disk.position);
        if let (Some(d), true) = (&self.disk, lo <= hi) {
            for item in d
                .kind
                .range(kind_key(event_type, lo)..=kind_key(event_type, hi))
            {
                item.key()?;
                n += 1;
            }
        }
        Ok(n)
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

#[cfg(test)]
mod tests {
    /// A fjall database dropped while it merges a keyspace's tables keeps every entry (the
    /// index is closed at every stop, often while a merge runs): lsm-tree's merge returns
    /// early on its tree's stop signal and then installs what it wrote in place of its inputs,
    /// so this guards that a database's drop waits for the merge instead of stopping it. Four
    /// interleaved sorted runs make level 0 due for one merge of all of them; the database is
    /// dropped as soon as it starts.
    #[test]
    fn a_database_closed_during_a_merge_keeps_every_entry() {
        const RUN: u64 = 600_000;
        let dir = tempfile::tempdir().unwrap();
        {
            let db = fjall::Database::builder(dir.path()).open().unwrap();
            let ks = db
                .keyspace("history", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            for r in 0..4u64 {
                let mut run = ks.start_ingestion().unwrap();
                // Interleaved keys: every run overlaps every other, so they must be merged.
                for i in 0..RUN {
                    run.write((i * 4 + r).to_be_bytes(), []).unwrap();
                }
                run.finish().unwrap();
            }
            let t0 = std::time::Instant::now();
            while db.active_compactions() == 0 && t0.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            assert!(db.active_compactions() > 0, "no merge started");
        }
        let db = fjall::Database::builder(dir.path())
            .worker_threads_unchecked(0)
            .open()
            .unwrap();
        let ks = db
            .keyspace("history", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        assert_eq!(
            ks.iter().count() as u64,
            4 * RUN,
            "entries lost by a stopped merge"
        );
    }
}
