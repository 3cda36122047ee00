//! `license-ledger repair --truncate-after P`: the operator's way out when a failed
//! `fdatasync` left unacknowledged writes half on disk (tests/fsync_failure.rs makes that
//! happen for real, but only sometimes: here the damage is made on purpose, every time).
//! A complete frame with a bad CRC after the last append makes the open refuse; the cut keeps
//! every record up to P verified, moves the rest aside byte for byte, and refuses what would
//! keep damage or split an append. The command line is tests/cli_repair.rs (a separate
//! binary: a child process forked while a test here holds the log's `LOCK` would hold it too,
//! until its exec).

#[path = "support/frames.rs"]
mod frames;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use frames::{append_damaged_frame, frames, remove_marker};
use ledger_events::Position;
use license_ledger::clock::ManualClock;
use license_ledger::store::conformance::{new_event, start_time, stream};
use license_ledger::store::file::repair::{cut_after, Cut, CUT_DIR};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion, StoreError};

async fn open(dir: &Path) -> Result<FileStore, StoreError> {
    FileStore::open(
        FileStoreConfig::new(dir),
        Arc::new(ManualClock::new(start_time())),
    )
    .await
}

/// A log of four records: position 1, then 2 and 3 in one append, then 4.
async fn four_records(dir: &Path) {
    let store = open(dir).await.unwrap();
    for (name, n) in [("a", 1), ("b", 2), ("c", 1)] {
        let events = (0..n).map(new_event).collect();
        store
            .append(&stream(name), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    store.close().await.unwrap();
}

fn corrupt_position(e: &StoreError) -> Position {
    match e {
        StoreError::Corrupt { position, .. } => *position,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cut_keeps_every_verified_record_up_to_the_position_and_moves_the_rest_aside() {
    let dir = tempfile::tempdir().unwrap();
    four_records(dir.path()).await;
    let damaged = append_damaged_frame(dir.path());
    // With the durable-head marker the open would set the frame aside by itself (it follows
    // the last acknowledged position); a log from before markers needs the operator.
    remove_marker(dir.path());
    let e = open(dir.path())
        .await
        .err()
        .expect("the damaged log is refused");
    assert_eq!(corrupt_position(&e), 5, "{e}");
    let (seg, _) = frames(dir.path());
    let before = fs::read(&seg).unwrap();

    // Inside an append, or past the intact records: no cut.
    assert_eq!(
        cut_after(dir.path(), 2, true).unwrap(),
        Cut::NotAnAppendEnd { reached: 3 }
    );
    let e = cut_after(dir.path(), 5, true).unwrap_err();
    assert_eq!(
        corrupt_position(&e),
        5,
        "damage at or before P refuses: {e}"
    );
    // A plan changes nothing.
    let plan = cut_after(dir.path(), 4, false).unwrap();
    let Cut::Plan {
        head,
        count,
        keep_len,
        bytes,
        later,
        ..
    } = &plan
    else {
        panic!("{plan:?}")
    };
    assert_eq!((head.position, *count), (4, 4));
    assert_eq!(*bytes, damaged.len() as u64);
    assert_eq!(*keep_len, (before.len() - damaged.len()) as u64);
    assert!(later.is_empty());
    assert_eq!(fs::read(&seg).unwrap(), before);
    assert!(!dir.path().join(CUT_DIR).exists());

    // The cut: the log opens with the four records; the damaged bytes are kept aside.
    assert_eq!(cut_after(dir.path(), 4, true).unwrap(), plan);
    let aside: Vec<_> = fs::read_dir(dir.path().join(CUT_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), damaged);
    let store = open(dir.path()).await.expect("the cut log opens");
    assert_eq!(store.head().await.unwrap().position, 4);
    // ...and takes appends again.
    let appended = store
        .append(&stream("d"), ExpectedVersion::NoStream, vec![new_event(9)])
        .await
        .unwrap();
    assert_eq!(*appended.positions.start(), 5);
    // While it is open, no cut.
    assert!(matches!(
        cut_after(dir.path(), 4, true),
        Err(StoreError::Locked(_))
    ));
}

#[tokio::test]
async fn damage_before_the_position_is_never_cut_past() {
    let dir = tempfile::tempdir().unwrap();
    four_records(dir.path()).await;
    let (seg, frames) = frames(dir.path());
    // Change a byte inside position 2's frame: an acknowledged record.
    let mut data = fs::read(&seg).unwrap();
    let (start, len) = frames[1];
    data[start + len / 2] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    for p in [2, 3, 4] {
        let e = cut_after(dir.path(), p, true).unwrap_err();
        assert_eq!(corrupt_position(&e), 2, "{e}");
    }
    assert_eq!(fs::read(&seg).unwrap(), data, "nothing changed");
    // Keeping only what precedes the damage is the operator's explicit choice.
    let Cut::Plan { head, .. } = cut_after(dir.path(), 1, false).unwrap() else {
        panic!("a plan")
    };
    assert_eq!(head.position, 1);
}
