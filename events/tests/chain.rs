//! The hash chain: dense positions, each `prev_hash` the previous `hash`, each `hash` the
//! SHA-256 of its record, and the first bad position named.

mod common;

use common::build_chain;
use ledger_events::{
    encode_record_into, verify_chain, ChainError, ChainFault, ChainHead, ChainVerifier, CodecError,
    Hash, Position, Record, RecordView,
};

const N: usize = 50;

fn head_of(chain: &[Vec<u8>]) -> ChainHead {
    let last = RecordView::parse(chain.last().unwrap()).unwrap();
    ChainHead {
        position: last.position(),
        hash: last.hash(),
    }
}

fn verify(chain: &[Vec<u8>]) -> Result<ChainHead, ChainError> {
    verify_chain(chain.iter().map(Vec::as_slice))
}

/// Index in the chain of position `k`.
fn at(k: Position) -> usize {
    usize::try_from(k).unwrap() - 1
}

/// Re-encodes a record after `edit` changes it, with a fresh, correct hash of its own.
fn reseal(bytes: &[u8], edit: impl FnOnce(&mut Record)) -> Vec<u8> {
    let mut record = Record::decode(bytes).unwrap();
    edit(&mut record);
    let mut out = Vec::new();
    encode_record_into(&mut out, &record.envelope, &record.payload).unwrap();
    out
}

#[test]
fn a_well_formed_chain_verifies_to_its_head() {
    let chain = build_chain(N);
    let head = verify(&chain).unwrap();
    assert_eq!(head.position, N as Position);
    assert_eq!(head, head_of(&chain));
    // Every record decodes and links to its predecessor.
    let mut prev = Hash::ZERO;
    for (i, bytes) in chain.iter().enumerate() {
        let r = Record::decode(bytes).unwrap();
        assert_eq!(r.envelope.position, i as Position + 1);
        assert_eq!(r.envelope.prev_hash, prev);
        r.event().unwrap();
        prev = r.envelope.hash;
    }
    assert_eq!(prev, head.hash);
}

#[test]
fn an_empty_chain_is_the_genesis_head() {
    let head = verify_chain(std::iter::empty::<&[u8]>()).unwrap();
    assert_eq!(
        head,
        ChainHead {
            position: 0,
            hash: Hash::ZERO
        }
    );
    assert_eq!(head, ChainHead::default());
    assert_eq!(ChainVerifier::new().head(), head);
    assert_eq!(ChainVerifier::new().count(), 0);
}

#[test]
fn a_flipped_payload_byte_is_a_hash_mismatch_at_that_position() {
    let chain = build_chain(N);
    for k in [1, 17, N as Position] {
        let mut bad = chain.clone();
        let view = RecordView::parse(&chain[at(k)]).unwrap();
        // The payload's first byte: just before the trailing hash, minus the payload.
        let offset = chain[at(k)].len() - 32 - view.payload().len();
        bad[at(k)][offset] ^= 0x01;
        let err = verify(&bad).unwrap_err();
        assert_eq!(err.position, k, "{err}");
        assert!(
            matches!(err.fault, ChainFault::HashMismatch { stored, .. } if stored == view.hash()),
            "{err}"
        );
    }
}

#[test]
fn a_flipped_stored_hash_is_a_hash_mismatch_at_that_position() {
    let chain = build_chain(N);
    let k = 23;
    let mut bad = chain.clone();
    let last = bad[at(k)].len() - 1;
    bad[at(k)][last] ^= 0x80;
    let err = verify(&bad).unwrap_err();
    assert_eq!(err.position, k);
    assert!(
        matches!(err.fault, ChainFault::HashMismatch { .. }),
        "{err}"
    );
}

#[test]
fn a_record_resealed_with_a_wrong_prev_hash_is_a_broken_link_at_that_position() {
    let chain = build_chain(N);
    let k: Position = 30;
    let expected = RecordView::parse(&chain[at(k - 1)]).unwrap().hash();
    let forged = Hash([0xEE; 32]);
    let mut bad = chain.clone();
    bad[at(k)] = reseal(&chain[at(k)], |r| r.envelope.prev_hash = forged);
    // The forged record is sound on its own...
    assert!(Record::decode(&bad[at(k)]).is_ok());
    // ...but does not link.
    let err = verify(&bad).unwrap_err();
    assert_eq!(
        err,
        ChainError {
            position: k,
            fault: ChainFault::BrokenLink {
                expected,
                found: forged
            },
        }
    );
}

#[test]
fn a_record_resealed_with_a_changed_payload_breaks_the_next_link() {
    let chain = build_chain(N);
    let k: Position = 12;
    let original = RecordView::parse(&chain[at(k)]).unwrap().hash();
    let mut bad = chain.clone();
    // Same prev_hash, same length, different payload, correct own hash.
    bad[at(k)] = reseal(&chain[at(k)], |r| {
        let last = r.payload.len() - 1;
        r.payload[last] ^= 0x01;
    });
    let resealed = RecordView::parse(&bad[at(k)]).unwrap().hash();
    assert_ne!(resealed, original);
    let err = verify(&bad).unwrap_err();
    assert_eq!(
        err,
        ChainError {
            position: k + 1,
            fault: ChainFault::BrokenLink {
                expected: resealed,
                found: original
            },
        }
    );

    // Rewriting the last record that way is undetectable from the records alone: the head
    // moves, which is why heads are published and compared.
    let mut tail = chain.clone();
    tail[N - 1] = reseal(&chain[N - 1], |r| r.payload.push(0));
    let head = verify(&tail).unwrap();
    assert_eq!(head.position, N as Position);
    assert_ne!(head, head_of(&chain));
}

#[test]
fn a_missing_record_is_a_position_gap_at_its_position() {
    let chain = build_chain(N);
    for k in [1, 25, N as Position] {
        let mut bad = chain.clone();
        bad.remove(at(k));
        let result = verify(&bad);
        if k == N as Position {
            // Losing the tail leaves a shorter valid chain: its head tells.
            assert_eq!(result.unwrap().position, N as Position - 1);
            continue;
        }
        assert_eq!(
            result.unwrap_err(),
            ChainError {
                position: k,
                fault: ChainFault::PositionGap {
                    expected: k,
                    found: k + 1
                },
            }
        );
    }
}

#[test]
fn a_duplicated_record_is_a_position_gap_after_it() {
    let chain = build_chain(N);
    let k: Position = 8;
    let mut bad = chain.clone();
    bad.insert(at(k) + 1, chain[at(k)].clone());
    assert_eq!(
        verify(&bad).unwrap_err(),
        ChainError {
            position: k + 1,
            fault: ChainFault::PositionGap {
                expected: k + 1,
                found: k
            },
        }
    );
}

#[test]
fn swapped_records_are_a_position_gap() {
    let chain = build_chain(N);
    let mut bad = chain.clone();
    bad.swap(at(5), at(6));
    let err = verify(&bad).unwrap_err();
    assert_eq!(err.position, 5);
    assert!(matches!(
        err.fault,
        ChainFault::PositionGap {
            expected: 5,
            found: 6
        }
    ));
}

#[test]
fn a_genesis_with_a_non_zero_prev_hash_is_a_broken_link_at_one() {
    let chain = build_chain(3);
    let mut bad = chain.clone();
    bad[0] = reseal(&chain[0], |r| r.envelope.prev_hash = Hash([1; 32]));
    assert_eq!(
        verify(&bad).unwrap_err(),
        ChainError {
            position: 1,
            fault: ChainFault::BrokenLink {
                expected: Hash::ZERO,
                found: Hash([1; 32])
            },
        }
    );
}

#[test]
fn a_chain_starting_past_genesis_is_a_position_gap_at_one() {
    let chain = build_chain(5);
    let err = verify(&chain[2..]).unwrap_err();
    assert_eq!(
        err,
        ChainError {
            position: 1,
            fault: ChainFault::PositionGap {
                expected: 1,
                found: 3
            },
        }
    );
}

#[test]
fn an_unparsable_record_is_malformed_at_the_expected_position() {
    let chain = build_chain(N);
    let k: Position = 40;
    let mut bad = chain.clone();
    bad[at(k)].truncate(100);
    let err = verify(&bad).unwrap_err();
    assert_eq!(err.position, k);
    assert!(
        matches!(
            err.fault,
            ChainFault::Malformed(CodecError::Truncated { .. })
        ),
        "{err}"
    );
}

#[test]
fn the_verifier_resumes_from_a_verified_head() {
    let chain = build_chain(N);
    let mid = 20;
    let mut first = ChainVerifier::new();
    for bytes in &chain[..mid] {
        first.push_bytes(bytes).unwrap();
    }
    assert_eq!(first.count(), mid as u64);
    let mid_head = first.head();
    assert_eq!(mid_head, head_of(&chain[..mid]));

    // Resuming from a head (e.g. one stored at the last audit) checks only the rest.
    let mut rest = ChainVerifier::resume(mid_head);
    assert_eq!(rest.head(), mid_head);
    assert_eq!(rest.count(), 0);
    for bytes in &chain[mid..] {
        let view = RecordView::parse(bytes).unwrap();
        rest.push(&view).unwrap();
    }
    assert_eq!(rest.count(), (N - mid) as u64);
    assert_eq!(rest.head(), verify(&chain).unwrap());

    // Resuming from a wrong head fails at once, at the first position after it.
    let wrong = ChainHead {
        position: mid as Position,
        hash: Hash([7; 32]),
    };
    let err = ChainVerifier::resume(wrong)
        .push_bytes(&chain[mid])
        .unwrap_err();
    assert_eq!(err.position, mid as Position + 1);
    assert!(matches!(err.fault, ChainFault::BrokenLink { .. }), "{err}");

    // Resuming past the records given is a gap.
    let ahead = ChainHead {
        position: mid as Position + 1,
        hash: mid_head.hash,
    };
    let err = ChainVerifier::resume(ahead)
        .push_bytes(&chain[mid])
        .unwrap_err();
    assert!(matches!(err.fault, ChainFault::PositionGap { .. }), "{err}");
}

#[test]
fn a_failed_push_leaves_the_verifier_where_it_was() {
    let chain = build_chain(4);
    let mut v = ChainVerifier::new();
    v.push_bytes(&chain[0]).unwrap();
    let before = v.head();
    assert!(v.push_bytes(&chain[2]).is_err());
    assert_eq!(v.head(), before);
    assert_eq!(v.count(), 1);
    // And it carries on with the right record.
    v.push_bytes(&chain[1]).unwrap();
    assert_eq!(v.head().position, 2);
}

#[test]
fn chain_errors_name_the_position() {
    let chain = build_chain(3);
    let mut bad = chain.clone();
    bad.remove(1);
    let err = verify(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chain broken at position 2: expected position 2, found 3"
    );
}
