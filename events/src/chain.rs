//! The hash chain: each record's `prev_hash` is its predecessor's `hash`, positions are dense
//! from 1, and each `hash` is the SHA-256 of its record. [`verify_chain`] checks all three
//! over a sequence and names the first position where one fails.

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, RecordView};
use crate::envelope::{Hash, Position};

/// Where a chain ends: the last position and its hash, and how many records were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainHead {
    /// Last position (0 for an empty log).
    pub position: Position,
    /// Hash of the last record ([`Hash::ZERO`] for an empty log).
    pub hash: Hash,
}

impl ChainHead {
    /// Whether the record at `position`, chained to `prev_hash`, comes right after this
    /// head: the next position, linked to this hash (its own hash is the caller's to check).
    pub fn check_next(&self, position: Position, prev_hash: Hash) -> Result<(), ChainFault> {
        let expected = self.position + 1;
        if position != expected {
            Err(ChainFault::PositionGap {
                expected,
                found: position,
            })
        } else if prev_hash != self.hash {
            Err(ChainFault::BrokenLink {
                expected: self.hash,
                found: prev_hash,
            })
        } else {
            Ok(())
        }
    }
}

/// What is wrong at the first bad position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    /// The record does not parse.
    #[error("malformed record: {0}")]
    Malformed(CodecError),
    /// Positions are not dense.
    #[error("expected position {expected}, found {found}")]
    PositionGap {
        /// The position that should come next.
        expected: Position,
        /// The position found.
        found: Position,
    },
    /// `prev_hash` is not the previous record's hash.
    #[error("prev_hash {found} does not match the previous record's hash {expected}")]
    BrokenLink {
        /// The previous record's hash.
        expected: Hash,
        /// The stored prev_hash.
        found: Hash,
    },
    /// The stored hash is not the hash of the record's bytes.
    #[error("stored hash {stored} does not match the record's bytes ({computed})")]
    HashMismatch {
        /// Stored.
        stored: Hash,
        /// Computed.
        computed: Hash,
    },
}

/// The first bad position and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain broken at position {position}: {fault}")]
pub struct ChainError {
    /// The first position that fails (the expected position when the record is unreadable).
    pub position: Position,
    /// What fails.
    pub fault: ChainFault,
}

/// Checks records one at a time, carrying the head forward.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChainVerifier {
    head: ChainHead,
    count: u64,
}

impl ChainVerifier {
    /// Starts at genesis (position 0, zero hash).
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes after a head already verified.
    pub fn resume(head: ChainHead) -> Self {
        Self { head, count: 0 }
    }

    /// The head after the records pushed so far.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Records pushed successfully.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks one record's position, link and hash, then advances.
    pub fn push(&mut self, record: &RecordView<'_>) -> Result<(), ChainError> {
        let expected = self.head.position + 1;
        let fail = |fault| ChainError {
            position: expected,
            fault,
        };
        self.head
            .check_next(record.position(), record.prev_hash())
            .map_err(fail)?;
        let computed = record.computed_hash();
        if computed != record.hash() {
            return Err(fail(ChainFault::HashMismatch {
                stored: record.hash(),
                computed,
            }));
        }
        self.head = ChainHead {
            position: expected,
            hash: computed,
        };
        self.count += 1;
        Ok(())
    }

    /// Parses then pushes raw record bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), ChainError> {
        let view = RecordView::parse(bytes).map_err(|e| ChainError {
            position: self.head.position + 1,
            fault: ChainFault::Malformed(e),
        })?;
        self.push(&view)
    }
}

/// Verifies a whole sequence of encoded records from genesis and returns its head, or the
/// first bad position.
pub fn verify_chain<'a, I>(records: I) -> Result<ChainHead, ChainError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut v = ChainVerifier::new();
    for bytes in records {
        v.push_bytes(bytes)?;
    }
    Ok(v.head())
}
