//! The relay's files: the mirror keeps upstream records verbatim (gaps allowed), cuts a torn
//! last frame and refuses damage elsewhere; the outbox keeps its events and resolutions
//! across reopen and cuts a torn last line.

use std::io::Write;
use std::sync::Arc;

use ledger_events::{Actor, Record};
use license_ledger::app::relay::{ForwardedEvent, Resolution};
use license_ledger::clock::ManualClock;
use license_ledger::relay::mirror::{MirrorLog, MIRROR_FILE};
use license_ledger::relay::outbox::{Outbox, Resolved, OUTBOX_FILE};
use license_ledger::relay::RelayError;
use license_ledger::store::conformance::{new_event, start_time, stream};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{EventStore, ExpectedVersion};
use uuid::Uuid;

/// Ten records of a real log (two streams interleaved).
async fn records() -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(
        FileStoreConfig::new(dir.path()),
        Arc::new(ManualClock::new(start_time())),
    )
    .await
    .unwrap();
    for n in 0..10 {
        let s = stream(if n % 2 == 0 { "a" } else { "b" });
        store
            .append(&s, ExpectedVersion::Any, vec![new_event(n)])
            .await
            .unwrap();
    }
    let all = store.read_all(1, 100).await.unwrap();
    store.close().await.unwrap();
    all
}

#[tokio::test]
async fn the_mirror_keeps_records_with_gaps_verbatim_across_reopen() {
    let all = records().await;
    // One customer's part: every other record.
    let part: Vec<Record> = all.iter().step_by(2).cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    let mut m = MirrorLog::open(dir.path()).unwrap();
    assert_eq!(m.append(&part[..3]).unwrap().len(), 3);
    // A refresh re-sends what is there, and more: only the new ones are added.
    assert_eq!(m.append(&part).unwrap().len(), 2);
    drop(m);
    let m = MirrorLog::open(dir.path()).unwrap();
    assert_eq!(m.records(), &part[..]);
    assert_eq!(m.head_position(), part[4].envelope.position);
    assert!(m.contains_event(&part[1].envelope.event_id));
    assert!(!m.contains_event(&all[1].envelope.event_id));
}

#[tokio::test]
async fn the_mirror_refuses_a_record_that_contradicts_its_copy_or_its_own_hash() {
    let all = records().await;
    let dir = tempfile::tempdir().unwrap();
    let mut m = MirrorLog::open(dir.path()).unwrap();
    m.append(&all[..4]).unwrap();
    // The center sending another record at a position the mirror holds.
    let mut other = all[5].clone();
    other.envelope.position = all[2].envelope.position;
    assert!(matches!(
        m.append(&[other]),
        Err(RelayError::Corrupt(_)) | Err(RelayError::Codec(_))
    ));
    // A record whose payload does not match its hash.
    let mut forged = all[4].clone();
    forged.payload[0] ^= 1;
    assert!(m.append(&[forged]).is_err());
    assert_eq!(m.records().len(), 4, "nothing was added");
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_and_damage_elsewhere_refuses_to_open() {
    let all = records().await;
    let dir = tempfile::tempdir().unwrap();
    let mut m = MirrorLog::open(dir.path()).unwrap();
    m.append(&all[..5]).unwrap();
    drop(m);
    let path = dir.path().join(MIRROR_FILE);
    let whole = std::fs::read(&path).unwrap();
    // A crash mid-append: half of a sixth frame.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0, 0, 1, 0, 9, 9]).unwrap();
    drop(f);
    let m = MirrorLog::open(dir.path()).unwrap();
    assert_eq!(m.records(), &all[..5]);
    drop(m);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        whole,
        "the torn tail was cut"
    );

    // A flipped byte inside the second frame: refused, naming the offset, file untouched.
    let mut damaged = whole.clone();
    let second = 8 + u32::from_be_bytes(whole[0..4].try_into().unwrap()) as usize;
    damaged[second + 20] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    let err = MirrorLog::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("offset {second}")),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), damaged);
}

fn forwarded(n: u8) -> ForwardedEvent {
    ForwardedEvent {
        event_id: Uuid::now_v7(),
        stream_id: format!("terminal-11222333000181-50026B77825EEC{n:02X}"),
        expected_version: None,
        event_type: "terminal.checked_in".into(),
        data: serde_json::json!({}),
        actor: Actor::system("relay").unwrap(),
        correlation_id: Uuid::now_v7(),
        recorded_at: start_time(),
    }
}

#[test]
fn the_outbox_keeps_events_and_decisions_across_reopen_and_cuts_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path()).unwrap();
    let (a, b, c) = (forwarded(1), forwarded(2), forwarded(3));
    for e in [&a, &b, &c] {
        o.append(e.clone()).unwrap();
    }
    o.resolve(Resolved {
        event_id: a.event_id,
        resolution: Resolution::Accepted { position: Some(7) },
        at: start_time(),
    })
    .unwrap();
    o.resolve(Resolved {
        event_id: b.event_id,
        resolution: Resolution::Rejected {
            reason: "bound elsewhere".into(),
        },
        at: start_time(),
    })
    .unwrap();
    drop(o);
    // A crash while writing a fourth event.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(OUTBOX_FILE))
        .unwrap();
    f.write_all(b"{\"event_id\":\"01").unwrap();
    drop(f);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(o.pending(), vec![c.clone()]);
    assert_eq!((o.depth(), o.rejected()), (1, 1));
    assert!(matches!(
        o.resolution(&a.event_id).map(|r| &r.resolution),
        Some(Resolution::Accepted { position: Some(7) })
    ));
}
