//! The read side of `export` and `verify` on the file store, on every core: one scanning
//! thread reads the segments and checks what must be checked in order (frames, CRCs, the
//! hash chain, the durable head) and hands the record bytes on in numbered chunks; worker
//! threads, one per core, each take a chunk and do the per-record work (decode, format);
//! the calling thread takes the chunks back in their order (a chunk done early waits for
//! those before it).
//!
//! Invariants: chunks come back in log order, every record once; a worker's error is
//! reported before the scanner's (a worker only sees records the scanner passed, so its
//! error is at an earlier position); memory is bounded by the chunks, which are recycled
//! and never more than [`in_flight`].

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};

use ledger_events::{ChainError, ChainFault, ChainHead, Envelope, Hash, Position, RecordView};

use super::CliError;
use crate::store::postgres::{copy_log, decode_columns, CopyTuple, PgStoreConfig};
use crate::store::StoreError;

/// Record bytes per chunk by default (about 1,000 records; an export's lines take about
/// three times that).
pub(crate) const CHUNK_BYTES: usize = 1 << 18;

/// Chunks queued between the scanner and the workers.
const QUEUED: usize = 4;

/// Whole records, back to back, where each ends, and what a worker made of them.
#[derive(Default)]
pub(crate) struct Chunk {
    /// Its place in the log: chunks are handed back in this order.
    seq: u64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Output of the worker (an export's lines); emptied before the chunk is reused.
    pub out: Vec<u8>,
    /// What the worker found of the chain in it (PostgreSQL rows: see [`run_database`]).
    link: Option<Link>,
}

/// The ends of a chunk's piece of the chain: its first record's position and previous hash,
/// and its last record (the records between are linked, checked by the worker).
#[derive(Clone, Copy)]
struct Link {
    first: Position,
    first_prev: Hash,
    last: ChainHead,
    /// `recorded_at` of the last record, in microseconds.
    last_micros: i64,
}

impl Chunk {
    /// The bytes of each item the scanner pushed, in log order.
    fn items(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(s, &e)| &self.bytes[s..e])
    }

    /// Each record of a file log, in log order (its bytes passed the scan, so parsing them
    /// fails only if they changed in memory).
    pub fn views(&self) -> impl Iterator<Item = Result<RecordView<'_>, StoreError>> {
        self.items().map(|b| Ok(RecordView::parse(b)?))
    }
}

/// Chunks in existence at once: each is with the scanner, queued, with a worker or waiting
/// to be taken back.
fn in_flight(workers: usize) -> usize {
    2 * workers + QUEUED
}

/// One worker per core (at least one, at most eight).
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

/// The error of a record that scanned but does not decode.
pub(crate) fn undecodable(view: &RecordView<'_>, problem: impl ToString) -> StoreError {
    StoreError::Corrupt {
        segment: String::new(),
        offset: 0,
        position: view.position(),
        problem: problem.to_string(),
    }
}

/// Runs `scan` on a thread of its own, handing it a `push` to call with the bytes of each
/// record to pass on; `work` runs on `workers` threads, a chunk at a time; `take` gets each chunk
/// back in log order on this thread. Returns what `scan` returned.
pub(crate) fn run<S, F>(
    chunk_bytes: usize,
    workers: usize,
    scan: F,
    work: impl Fn(&mut Chunk) -> Result<(), CliError> + Sync,
    mut take: impl FnMut(&mut Chunk) -> Result<(), CliError>,
) -> Result<S, CliError>
where
    S: Send,
    F: FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), StoreError>) -> Result<S, CliError> + Send,
{
    let workers = workers.max(1);
    let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(QUEUED);
    // Shared by the workers; the last one to stop drops it, which stops the scanner.
    let full_rx = Arc::new(Mutex::new(full_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<Chunk, CliError>>();
    // Chunks taken back return to the scanner, so their buffers are allocated once and no
    // more than `in_flight` exist: the scanner waits for one.
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    for _ in 0..in_flight(workers) {
        let _ = empty_tx.send(Chunk::default());
    }
    std::thread::scope(|scope| {
        let scanner = scope.spawn(move || {
            let stopped = || {
                StoreError::io(
                    "handing records on",
                    std::io::Error::other("the reader stopped"),
                )
            };
            let mut seq = 0;
            let mut chunk = empty_rx.recv().map_err(|_| stopped())?;
            let scanned = scan(&mut |bytes: &[u8]| {
                chunk.bytes.extend_from_slice(bytes);
                chunk.ends.push(chunk.bytes.len());
                if chunk.bytes.len() >= chunk_bytes {
                    let next = empty_rx.recv().map_err(|_| stopped())?;
                    chunk.seq = seq;
                    seq += 1;
                    full_tx
                        .send(std::mem::replace(&mut chunk, next))
                        .map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !chunk.ends.is_empty() {
                chunk.seq = seq;
                full_tx.send(chunk).map_err(|_| stopped())?;
            }
            Ok::<_, CliError>(scanned)
        });
        let work = &work;
        for _ in 0..workers {
            let (full_rx, done_tx) = (full_rx.clone(), done_tx.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next chunk.
                let next = full_rx.lock().map(|rx| rx.recv());
                let Ok(Ok(mut chunk)) = next else { return };
                let done = work(&mut chunk).map(|()| chunk);
                let failed = done.is_err();
                if done_tx.send(done).is_err() || failed {
                    return;
                }
            });
        }
        drop((full_rx, done_tx));
        // Moving the receivers in drops them when taking fails, which stops the others.
        let taken = (move || -> Result<(), CliError> {
            let mut waiting = BTreeMap::new();
            let mut next = 0;
            for done in done_rx {
                let chunk = done?;
                waiting.insert(chunk.seq, chunk);
                while let Some(mut chunk) = waiting.remove(&next) {
                    take(&mut chunk)?;
                    chunk.bytes.clear();
                    chunk.ends.clear();
                    chunk.out.clear();
                    chunk.link = None;
                    next += 1;
                    // The scanner may be done already: then the buffer is simply dropped.
                    let _ = empty_tx.send(chunk);
                }
            }
            if !waiting.is_empty() {
                // A worker stopped without a word (it panicked): chunks would be missing.
                return Err(CliError::Store(StoreError::io(
                    "reading the log",
                    std::io::Error::other("a worker thread stopped"),
                )));
            }
            Ok(())
        })();
        let scanned = scanner.join().unwrap_or_else(|_| {
            Err(CliError::Store(StoreError::io(
                "reading the log",
                std::io::Error::other("the scanning thread panicked"),
            )))
        });
        // A worker's or the taker's error comes first: it is at an earlier position, or it
        // stopped the scanner.
        taken.and(scanned)
    })
}

/// What [`run_database`] read: the records and the head they end at.
pub(crate) struct DatabaseScan {
    pub count: u64,
    pub head: ChainHead,
    /// `recorded_at` of the last record in microseconds; `None` for an empty log.
    pub last_micros: Option<i64>,
}

/// The PostgreSQL log through the pipeline: the scanner streams every row in one snapshot
/// ([`copy_log`]); workers check each row as every read does (its hash against the record
/// its columns encode, its copies), link it to the one before, and call `record` with it
/// and the chunk's output; this thread checks that the chunks link up, from position 1 to
/// the snapshot's head row, and hands each chunk's output to `take`.
pub(crate) fn run_database(
    config: &PgStoreConfig,
    record: impl Fn(&Envelope, &[u8], &mut Vec<u8>) -> Result<(), CliError> + Sync,
    mut take: impl FnMut(&[u8]) -> Result<(), CliError>,
) -> Result<DatabaseScan, CliError> {
    let table = format!("{}.ledger_events", config.schema_name());
    let corrupt = |position, problem: String| StoreError::Corrupt {
        segment: format!("table {table}"),
        offset: 0,
        position,
        problem,
    };
    let broken = |position, fault| corrupt(position, ChainError { position, fault }.to_string());
    let mut scan = DatabaseScan {
        count: 0,
        head: ChainHead::default(),
        last_micros: None,
    };
    let stored = run(
        CHUNK_BYTES,
        workers(),
        |push| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(copy_log(config, |tuple| push(tuple)))?)
        },
        |chunk| {
            let mut out = std::mem::take(&mut chunk.out);
            let mut buf = Vec::new();
            let mut link: Option<Link> = None;
            // Every row is checked before a link is reported broken, so that a row altered
            // in a way that also moved it is named as altered.
            let mut broken_at = None;
            for bytes in chunk.items() {
                let tuple = CopyTuple::parse(bytes)
                    .ok_or_else(|| corrupt(0, "a row of the copy does not parse".into()))?;
                let (envelope, payload) = decode_columns(&tuple, &table, &mut buf)?;
                let (position, hash) = (envelope.position, envelope.hash);
                let micros = envelope.recorded_at.timestamp_micros();
                match &mut link {
                    None => {
                        link = Some(Link {
                            first: position,
                            first_prev: envelope.prev_hash,
                            last: ChainHead { position, hash },
                            last_micros: micros,
                        })
                    }
                    Some(link) => {
                        if let Err(fault) = link.last.check_next(position, envelope.prev_hash) {
                            broken_at.get_or_insert((link.last.position + 1, fault));
                        }
                        link.last = ChainHead { position, hash };
                        link.last_micros = micros;
                    }
                }
                if broken_at.is_none() {
                    record(&envelope, payload, &mut out)?;
                }
            }
            if let Some((position, fault)) = broken_at {
                return Err(broken(position, fault).into());
            }
            chunk.out = out;
            chunk.link = link;
            Ok(())
        },
        |chunk| {
            if let Some(link) = chunk.link {
                scan.join(link)
                    .map_err(|fault| broken(scan.head.position + 1, fault))?;
            }
            take(&chunk.out)
        },
    )?;
    if stored.head != scan.head || stored.recorded_micros != scan.last_micros {
        return Err(StoreError::Corrupt {
            segment: format!("table {}.ledger_head", config.schema_name()),
            offset: 0,
            position: stored.head.position,
            problem: format!(
                "the head row names position {} with hash {} at {:?} µs, the log ends at \
                 position {} with hash {} at {:?} µs",
                stored.head.position,
                stored.head.hash,
                stored.recorded_micros,
                scan.head.position,
                scan.head.hash,
                scan.last_micros
            ),
        }
        .into());
    }
    Ok(scan)
}

impl DatabaseScan {
    /// Takes the next chunk's piece of the chain: it must start right after the head.
    fn join(&mut self, link: Link) -> Result<(), ChainFault> {
        self.head.check_next(link.first, link.first_prev)?;
        self.count += link.last.position - link.first + 1;
        self.head = link.last;
        self.last_micros = Some(link.last_micros);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(first: Position, last: Position) -> Link {
        let hash = |p: Position| Hash([p as u8; 32]);
        Link {
            first,
            first_prev: if first == 1 {
                Hash::default()
            } else {
                hash(first - 1)
            },
            last: ChainHead {
                position: last,
                hash: hash(last),
            },
            last_micros: last as i64,
        }
    }

    /// Chunks of the database's log join only where each starts right after the one before,
    /// chained to its last hash; the count and head follow the chunks taken.
    #[test]
    fn chunks_join_only_where_the_chain_goes_on() {
        let mut scan = DatabaseScan {
            count: 0,
            head: ChainHead::default(),
            last_micros: None,
        };
        scan.join(link(1, 10)).unwrap();
        scan.join(link(11, 11)).unwrap();
        assert_eq!((scan.count, scan.head.position), (11, 11));
        assert_eq!(scan.last_micros, Some(11));
        // A gap, a repeat, and a chunk chained to another hash are refused, the scan unmoved.
        assert!(matches!(
            scan.join(link(13, 20)),
            Err(ChainFault::PositionGap {
                expected: 12,
                found: 13
            })
        ));
        assert!(matches!(
            scan.join(link(11, 20)),
            Err(ChainFault::PositionGap {
                expected: 12,
                found: 11
            })
        ));
        let mut other = link(12, 20);
        other.first_prev = Hash([0xee; 32]);
        assert!(matches!(
            scan.join(other),
            Err(ChainFault::BrokenLink { .. })
        ));
        assert_eq!((scan.count, scan.head.position), (11, 11));
        scan.join(link(12, 20)).unwrap();
        assert_eq!((scan.count, scan.head.position), (20, 20));
    }
}
