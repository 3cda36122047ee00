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

use ledger_events::RecordView;

use super::CliError;
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
}

impl Chunk {
    /// Each record, in log order (its bytes passed the scan, so parsing them fails only if
    /// they changed in memory).
    pub fn views(&self) -> impl Iterator<Item = Result<RecordView<'_>, StoreError>> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(s, &e)| Ok(RecordView::parse(&self.bytes[s..e])?))
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

/// Runs `scan` on a thread of its own, handing it a `push` to call with each record to
/// pass on; `work` runs on `workers` threads, a chunk at a time; `take` gets each chunk
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
    F: FnOnce(&mut dyn FnMut(&RecordView<'_>) -> Result<(), StoreError>) -> Result<S, CliError>
        + Send,
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
            let scanned = scan(&mut |view: &RecordView<'_>| {
                chunk.bytes.extend_from_slice(view.bytes());
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
