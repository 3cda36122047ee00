//! The relay's files: the mirror keeps upstream records verbatim (gaps allowed), cuts a torn
//! last frame and refuses damage elsewhere; the outbox keeps its events and resolutions
//! across reopen, refuses when acknowledged lines are missing (its durable head says how many
//! there were) and cuts only what follows them. Whatever is cut is copied into `cut/` first.
//! Files in the format written before checksummed headers are converted, the old ones kept.
//!
//! Damage sweeps: every byte of a small relay's `mirror.log`, `outbox.jsonl`,
//! `resolutions.jsonl` and `outbox.head` flipped (each bit, one at a time) and every
//! truncation, plus random multi-byte damage (proptest): opening either refuses, naming the
//! file and where, and changes nothing, or keeps every record the bytes still hold whole, and
//! every acknowledged outbox line.

#[path = "support/relay_v1.rs"]
mod relay_v1;

use std::io::Write;
use std::path::Path;

use ledger_events::{Actor, Record};
use license_ledger::app::relay::{ForwardedEvent, Resolution};
use license_ledger::relay::cut::CUT_DIR;
use license_ledger::relay::head::{HEAD_FILE, SLOT_BYTES, SLOT_STRIDE};
use license_ledger::relay::mirror::{MirrorLog, FRAME_HEADER_BYTES, MIRROR_FILE};
use license_ledger::relay::outbox::{
    Outbox, Resolved, LINE_HEADER_BYTES, OUTBOX_FILE, RESOLUTIONS_FILE,
};
use license_ledger::relay::RelayError;
use license_ledger::store::conformance::{file_log, start_time};
use proptest::prelude::*;
use uuid::Uuid;

/// `count` records of a real log (two streams interleaved).
async fn records(count: u32) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    file_log(dir.path(), count, &["a", "b"]).await
}

#[tokio::test]
async fn the_mirror_keeps_records_with_gaps_verbatim_across_reopen() {
    let all = records(10).await;
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
    let all = records(10).await;
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
    let all = records(10).await;
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
    assert_eq!(
        cut_bytes(dir.path()),
        vec![0, 0, 1, 0, 9, 9],
        "and kept in cut/"
    );

    // A flipped byte inside the second frame: refused, naming the offset, file untouched.
    let mut damaged = whole.clone();
    let second = FRAME_HEADER_BYTES + u32::from_be_bytes(whole[0..4].try_into().unwrap()) as usize;
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
    f.write_all(b"0000012c 3a").unwrap();
    drop(f);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(
        cut_bytes(dir.path()),
        b"0000012c 3a",
        "the torn line is in cut/"
    );
    assert_eq!(o.pending(), vec![c.clone()]);
    assert_eq!((o.depth(), o.rejected()), (1, 1));
    assert!(matches!(
        o.resolution(&a.event_id).map(|r| &r.resolution),
        Some(Resolution::Accepted { position: Some(7) })
    ));
}

/// A directory for the sweeps, in memory where there is a tmpfs: they open the files
/// thousands of times and each cut syncs four times, which is not what they test.
fn sweep_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

/// Every byte in the data directory's `cut/`, file by file in name order.
fn cut_bytes(dir: &Path) -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(dir.join(CUT_DIR)) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Writes `damaged` as `dir/name` (no `cut/`), opens with `open` (which lists what it kept of
/// `original`), and checks the rule: refused, naming the file, with nothing changed (returns
/// the error's text); or opened keeping a prefix of `original` unchanged, every byte it took
/// off the file copied into `cut/` (returns how many it kept).
fn open_damaged<T: PartialEq + std::fmt::Debug>(
    dir: &Path,
    name: &str,
    damaged: &[u8],
    open: &dyn Fn(&Path) -> Result<Vec<T>, RelayError>,
    original: &[T],
) -> Result<usize, String> {
    let _ = std::fs::remove_dir_all(dir.join(CUT_DIR));
    std::fs::write(dir.join(name), damaged).unwrap();
    let after = || {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        (bytes, cut_bytes(dir))
    };
    match open(dir) {
        Err(e) => {
            let (bytes, cut) = after();
            assert!(e.to_string().contains(name), "{e}");
            assert_eq!(bytes, damaged, "refused, yet the file changed: {e}");
            assert!(cut.is_empty(), "refused, yet bytes were cut: {e}");
            Err(e.to_string())
        }
        Ok(kept) => {
            let (mut bytes, cut) = after();
            assert_eq!(
                kept[..],
                original[..kept.len()],
                "kept records are unchanged"
            );
            if bytes.len() == damaged.len() + 1 && name.ends_with(".jsonl") {
                assert_eq!(bytes.pop(), Some(b'\n'), "only a newline may be added");
            }
            bytes.extend_from_slice(&cut);
            assert_eq!(bytes, damaged, "every byte is in the file or in cut/");
            Ok(kept.len())
        }
    }
}

/// Where each frame or line of `bytes` starts, and the end.
fn bounds(bytes: &[u8], next: impl Fn(&[u8]) -> usize) -> Vec<usize> {
    let mut starts = vec![0];
    while *starts.last().unwrap() < bytes.len() {
        let at = *starts.last().unwrap();
        starts.push(at + next(&bytes[at..]));
    }
    starts
}

/// Flips every byte of `file` one at a time and cuts it at every offset: a flip is refused,
/// naming the file and where the frame or line hit starts (`names_start`), or keeps
/// everything; a cut keeps every frame or line before it, or, when every byte was
/// `acknowledged` (the outbox's durable head covers them), is refused naming the file and
/// what is missing. Returns (flips, cuts).
#[allow(clippy::too_many_arguments)]
fn sweep<T: PartialEq + std::fmt::Debug>(
    dir: &Path,
    name: &str,
    open: &dyn Fn(&Path) -> Result<Vec<T>, RelayError>,
    original: &[T],
    starts: &[usize],
    header_bytes: usize,
    names_start: &dyn Fn(usize, usize) -> String,
    acknowledged: bool,
) -> (usize, usize) {
    let whole = std::fs::read(dir.join(name)).unwrap();
    assert_eq!(starts.len(), original.len() + 1);
    assert_eq!(*starts.last().unwrap(), whole.len());
    let mut flips = 0;
    for at in 0..whole.len() {
        // The frame or line holding the byte.
        let k = starts.iter().rposition(|s| *s <= at).unwrap();
        // Every bit of a header (where a length that passes for a torn tail would be), one
        // bit of every other byte, each bit in turn along the file (random values of any
        // byte: the proptest below).
        let bits = if at - starts[k] < header_bytes {
            0..8
        } else {
            at % 8..at % 8 + 1
        };
        for bit in bits {
            let mut damaged = whole.clone();
            damaged[at] ^= 1 << bit;
            match open_damaged(dir, name, &damaged, open, original) {
                Err(e) => {
                    let place = names_start(k, starts[k]);
                    assert!(
                        e.contains(&place),
                        "byte {at} bit {bit}: {e} (expected {place})"
                    );
                }
                Ok(kept) => assert_eq!(kept, original.len(), "byte {at} bit {bit} lost records"),
            }
            flips += 1;
        }
    }
    for len in 0..whole.len() {
        let result = open_damaged(dir, name, &whole[..len], open, original);
        if acknowledged {
            // At a line boundary too, where the file looks whole.
            let e = result.expect_err("a cut removing acknowledged lines was accepted");
            let missing = format!(
                "holds {len} bytes ({} lines) where {} bytes ({} lines) were acknowledged \
                 ({HEAD_FILE}): the last {} bytes of acknowledged events are missing",
                starts.iter().filter(|s| **s != 0 && **s <= len).count(),
                whole.len(),
                original.len(),
                whole.len() - len
            );
            assert!(e.contains(&missing), "cut at {len}: {e}");
            continue;
        }
        let whole_before = starts.iter().filter(|s| **s <= len).count() - 1;
        let kept = result.unwrap_or_else(|e| panic!("cut at {len}: {e}"));
        // A line complete but for its newline is kept too.
        let ends_line =
            name.ends_with(".jsonl") && starts.get(whole_before + 1) == Some(&(len + 1));
        assert_eq!(kept, whole_before + usize::from(ends_line), "cut at {len}");
    }
    std::fs::write(dir.join(name), &whole).unwrap();
    let _ = std::fs::remove_dir_all(dir.join(CUT_DIR));
    (flips, whole.len())
}

/// A relay's mirror of 36 records written in appends of 1 to 4.
async fn small_mirror(dir: &Path) -> Vec<Record> {
    let all = records(36).await;
    let mut m = MirrorLog::open(dir).unwrap();
    let mut at = 0;
    for n in (1..=4).cycle() {
        if at >= all.len() {
            break;
        }
        let end = (at + n).min(all.len());
        m.append(&all[at..end]).unwrap();
        at = end;
    }
    all
}

fn frame_len(bytes: &[u8]) -> usize {
    FRAME_HEADER_BYTES + u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize
}

fn open_mirror(dir: &Path) -> Result<Vec<Record>, RelayError> {
    MirrorLog::open(dir).map(|m| m.records().to_vec())
}

#[tokio::test]
async fn every_flipped_bit_of_the_mirror_is_refused_and_every_truncation_keeps_the_whole_frames() {
    let dir = sweep_dir();
    let all = small_mirror(dir.path()).await;
    let whole = std::fs::read(dir.path().join(MIRROR_FILE)).unwrap();
    let starts = bounds(&whole, frame_len);
    let started = std::time::Instant::now();
    let (flips, cuts) = sweep(
        dir.path(),
        MIRROR_FILE,
        &open_mirror,
        &all,
        &starts,
        FRAME_HEADER_BYTES,
        &|_, start| format!("at offset {start}:"),
        false,
    );
    eprintln!(
        "mirror.log: {} records, {} bytes: {flips} flips, {cuts} truncations, 0 records lost, in {:?}",
        all.len(),
        whole.len(),
        started.elapsed()
    );
}

/// An outbox of six events, four of them decided (one rejected).
fn small_outbox(dir: &Path) -> (Vec<ForwardedEvent>, Vec<Resolved>) {
    let mut o = Outbox::open(dir).unwrap();
    let events: Vec<ForwardedEvent> = (1..=6).map(forwarded).collect();
    let mut resolutions = Vec::new();
    for (i, e) in events.iter().enumerate() {
        o.append(e.clone()).unwrap();
        if i % 3 != 2 {
            let resolution = if i == 1 {
                Resolution::Rejected {
                    reason: "bound elsewhere".into(),
                }
            } else {
                Resolution::Accepted {
                    position: Some(i as u64 + 7),
                }
            };
            let r = Resolved {
                event_id: e.event_id,
                resolution,
                at: start_time(),
            };
            o.resolve(r.clone()).unwrap();
            resolutions.push(r);
        }
    }
    (events, resolutions)
}

fn line_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| i + 1)
}

fn open_events(dir: &Path) -> Result<Vec<ForwardedEvent>, RelayError> {
    Outbox::open(dir).map(|o| o.events().to_vec())
}

/// The resolutions found, in the order written (those `small_outbox` wrote, looked up).
fn open_resolutions(dir: &Path, written: &[Resolved]) -> Result<Vec<Resolved>, RelayError> {
    let o = Outbox::open(dir)?;
    Ok(written
        .iter()
        .filter(|r| o.resolution(&r.event_id) == Some(*r))
        .cloned()
        .collect())
}

#[test]
fn every_flipped_bit_of_the_outbox_is_refused_and_every_truncation_of_acknowledged_lines_too() {
    let dir = sweep_dir();
    let (events, resolutions) = small_outbox(dir.path());
    let names_line = |k: usize, start: usize| format!("line {} (byte {start})", k + 1);
    let started = std::time::Instant::now();
    let mut report = Vec::new();
    for name in [OUTBOX_FILE, RESOLUTIONS_FILE] {
        let whole = std::fs::read(dir.path().join(name)).unwrap();
        let starts = bounds(&whole, line_len);
        let (flips, cuts) = if name == OUTBOX_FILE {
            sweep(
                dir.path(),
                name,
                &open_events,
                &events,
                &starts,
                LINE_HEADER_BYTES,
                &names_line,
                true,
            )
        } else {
            let open = |d: &Path| open_resolutions(d, &resolutions);
            sweep(
                dir.path(),
                name,
                &open,
                &resolutions,
                &starts,
                LINE_HEADER_BYTES,
                &names_line,
                true,
            )
        };
        report.push(format!(
            "{name}: {} lines, {} bytes: {flips} flips, {cuts} truncations",
            starts.len() - 1,
            whole.len()
        ));
    }
    eprintln!(
        "{}; 0 lines lost, in {:?}",
        report.join("; "),
        started.elapsed()
    );
}

/// Up to eight bytes changed anywhere, then maybe a cut: `(offset, xor)` pairs and a length.
fn damage() -> impl Strategy<Value = (Vec<(prop::sample::Index, u8)>, Option<prop::sample::Index>)>
{
    (
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..=8),
        prop::option::of(any::<prop::sample::Index>()),
    )
}

fn apply_damage(
    whole: &[u8],
    (flips, cut): &(Vec<(prop::sample::Index, u8)>, Option<prop::sample::Index>),
) -> Vec<u8> {
    let mut bytes = whole.to_vec();
    for (at, xor) in flips {
        bytes[at.index(whole.len())] ^= xor;
    }
    if let Some(len) = cut {
        bytes.truncate(len.index(whole.len()));
    }
    bytes
}

/// A mirror and an outbox to damage, built once.
struct Fixture {
    dir: tempfile::TempDir,
    mirror: Vec<Record>,
    events: Vec<ForwardedEvent>,
    resolutions: Vec<Resolved>,
}

fn fixture() -> &'static std::sync::Mutex<Fixture> {
    static FIXTURE: std::sync::OnceLock<std::sync::Mutex<Fixture>> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = sweep_dir();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mirror = runtime.block_on(small_mirror(dir.path()));
        let (events, resolutions) = small_outbox(dir.path());
        std::sync::Mutex::new(Fixture {
            dir,
            mirror,
            events,
            resolutions,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_damage_to_the_relays_files_is_refused_or_loses_no_whole_record(
        which in 0..3usize,
        hit in damage(),
    ) {
        let f = fixture().lock().unwrap_or_else(|e| e.into_inner());
        let dir = f.dir.path();
        let name = [MIRROR_FILE, OUTBOX_FILE, RESOLUTIONS_FILE][which];
        let whole = std::fs::read(dir.join(name)).unwrap();
        let damaged = apply_damage(&whole, &hit);
        // Every record whose frame or line the bytes still hold whole must be kept (or the
        // open refused): damage inside one is no torn tail.
        let starts = if which == 0 {
            bounds(&whole, frame_len)
        } else {
            bounds(&whole, line_len)
        };
        let whole_before = starts.iter().filter(|s| **s <= damaged.len()).count() - 1;
        let result = match which {
            0 => open_damaged(dir, name, &damaged, &open_mirror, &f.mirror),
            1 => open_damaged(dir, name, &damaged, &open_events, &f.events),
            _ => {
                let open = |d: &Path| open_resolutions(d, &f.resolutions);
                open_damaged(dir, name, &damaged, &open, &f.resolutions)
            }
        };
        std::fs::write(dir.join(name), &whole).unwrap();
        let _ = std::fs::remove_dir_all(dir.join(CUT_DIR));
        if let Ok(kept) = result {
            prop_assert!(
                kept >= whole_before,
                "{name}: kept {kept} of the {whole_before} records held whole"
            );
        }
    }
}

/// Every event with its decision, as an open finds them.
type Decided = (Uuid, Option<Resolved>);

fn open_decided(dir: &Path) -> Result<Vec<Decided>, RelayError> {
    let o = Outbox::open(dir)?;
    Ok(o.events()
        .iter()
        .map(|e| (e.event_id, o.resolution(&e.event_id).cloned()))
        .collect())
}

#[test]
fn every_flipped_bit_and_truncation_of_the_outbox_head_is_refused_or_keeps_every_line() {
    let dir = sweep_dir();
    small_outbox(dir.path());
    let all = open_decided(dir.path()).unwrap();
    assert_eq!(all.len(), 6);
    let whole = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();
    assert_eq!(whole.len(), SLOT_STRIDE as usize + SLOT_BYTES);
    let in_slot = |at: usize| at < SLOT_BYTES || at >= SLOT_STRIDE as usize;
    let keeps_all = |damaged: &[u8], what: &str| {
        let kept = open_damaged(dir.path(), HEAD_FILE, damaged, &open_decided, &all)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(kept, all.len(), "{what}");
    };
    let started = std::time::Instant::now();
    let (mut flips, mut refused) = (0, 0);
    // One slot damaged: the other one (the newest, or one append behind: the line after it
    // is kept, as a write not acknowledged yet) vouches for the files.
    for at in 0..whole.len() {
        let bits = if in_slot(at) {
            0..8
        } else {
            at % 8..at % 8 + 1
        };
        for bit in bits {
            let mut damaged = whole.clone();
            damaged[at] ^= 1 << bit;
            keeps_all(&damaged, &format!("byte {at} bit {bit}"));
            flips += 1;
        }
    }
    // Both slots damaged: refused, naming the marker.
    for at in 0..SLOT_BYTES {
        let mut damaged = whole.clone();
        damaged[at] ^= 0x10;
        damaged[SLOT_STRIDE as usize + at] ^= 0x01;
        let e = open_damaged(dir.path(), HEAD_FILE, &damaged, &open_decided, &all).unwrap_err();
        assert!(e.contains("both slots"), "byte {at}: {e}");
        flips += 1;
        refused += 1;
    }
    // Cut: the first slot alone still vouches; shorter than a slot, nothing does.
    for len in 0..whole.len() {
        if len < SLOT_BYTES {
            let e = open_damaged(dir.path(), HEAD_FILE, &whole[..len], &open_decided, &all)
                .unwrap_err();
            assert!(e.contains("both slots"), "cut at {len}: {e}");
            refused += 1;
        } else {
            keeps_all(&whole[..len], &format!("cut at {len}"));
        }
    }
    eprintln!(
        "{HEAD_FILE}: {} bytes: {flips} flips, {} truncations, {refused} refused, 0 lines \
         lost, in {:?}",
        whole.len(),
        whole.len(),
        started.elapsed()
    );
}

/// Cuts the file at `path` at its last line boundary: its last line goes, whole. Returns the
/// bytes it had and where the cut is.
fn drop_last_line(path: &Path) -> (Vec<u8>, usize) {
    let whole = std::fs::read(path).unwrap();
    let boundary = whole[..whole.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    std::fs::write(path, &whole[..boundary]).unwrap();
    (whole, boundary)
}

#[test]
fn an_outbox_cut_at_a_line_boundary_is_refused_naming_the_file_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    small_outbox(dir.path());
    let path = dir.path().join(OUTBOX_FILE);
    // The last event's line gone, whole: the file looks like a valid five-line outbox.
    let (whole, boundary) = drop_last_line(&path);
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(OUTBOX_FILE), "{err}");
    assert!(err.contains("(5 lines) where"), "{err}");
    assert!(err.contains("bytes (6 lines) were acknowledged"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        &whole[..boundary],
        "left as it is"
    );
    // Put back: it opens with every event.
    std::fs::write(&path, &whole).unwrap();
    assert_eq!(Outbox::open(dir.path()).unwrap().events().len(), 6);
    // The same line replaced by another whole line of the right length is refused too.
    let mut swapped = whole[..boundary].to_vec();
    let other = {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.append(forwarded(6)).unwrap();
        std::fs::read(d.path().join(OUTBOX_FILE)).unwrap()
    };
    assert_eq!(other.len(), whole.len() - boundary);
    swapped.extend_from_slice(&other);
    std::fs::write(&path, &swapped).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("acknowledged lines were removed or changed"),
        "{err}"
    );
}

#[test]
fn lines_after_the_durable_head_were_never_acknowledged_and_only_they_may_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path()).unwrap();
    let events: Vec<ForwardedEvent> = (1..=3).map(forwarded).collect();
    o.append(events[0].clone()).unwrap();
    o.append(events[1].clone()).unwrap();
    let head = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();
    o.append(events[2].clone()).unwrap();
    drop(o);
    // A crash after the third line was durable and before the head said so.
    std::fs::write(dir.path().join(HEAD_FILE), &head).unwrap();
    let path = dir.path().join(OUTBOX_FILE);
    let whole = std::fs::read(&path).unwrap();
    assert_eq!(
        Outbox::open(dir.path()).unwrap().events(),
        &events[..],
        "a whole line after the head is kept"
    );
    // The same line damaged (all of it reached the disk, not all of it right): it was never
    // acknowledged, so it is cut, into cut/.
    std::fs::write(dir.path().join(HEAD_FILE), &head).unwrap();
    let third = whole[..whole.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let mut damaged = whole.clone();
    damaged[third + 40] ^= 0x04;
    std::fs::write(&path, &damaged).unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(o.events(), &events[..2]);
    drop(o);
    assert_eq!(std::fs::read(&path).unwrap(), &whole[..third]);
    assert_eq!(cut_bytes(dir.path()), &damaged[third..], "kept in cut/");
    // The same damage to a line the head covers is refused.
    let mut o = Outbox::open(dir.path()).unwrap();
    o.append(events[2].clone()).unwrap();
    drop(o);
    std::fs::write(&path, &damaged).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&format!("line 3 (byte {third})")), "{err}");
}

#[test]
fn outbox_files_without_a_durable_head_open_by_the_tail_rules_and_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = small_outbox(dir.path());
    std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
    // Nothing can tell a cut at a line boundary without the head: the five lines are kept...
    let path = dir.path().join(OUTBOX_FILE);
    let (whole, boundary) = drop_last_line(&path);
    assert_eq!(Outbox::open(dir.path()).unwrap().events(), &events[..5]);
    // ... and a head is written for them: a cut of those is now refused.
    assert!(dir.path().join(HEAD_FILE).exists());
    let four = whole[..boundary - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    std::fs::write(&path, &whole[..four]).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("acknowledged events are missing"), "{err}");
}

/// A relay's files as the code before checksummed headers wrote them: a mirror of 12
/// records, an outbox of four events (one decided), a torn fifth line.
async fn old_relay_files(dir: &Path) -> (Vec<Record>, Vec<ForwardedEvent>, Resolved) {
    let all = records(12).await;
    let mirror: Vec<u8> = all
        .iter()
        .flat_map(|r| relay_v1::mirror_frame(&r.encode().unwrap()))
        .collect();
    std::fs::write(dir.join(MIRROR_FILE), mirror).unwrap();
    let events: Vec<ForwardedEvent> = (1..=4).map(forwarded).collect();
    let mut outbox: Vec<u8> = events.iter().flat_map(relay_v1::outbox_line).collect();
    outbox.extend_from_slice(b"{\"event_id\":\"01");
    std::fs::write(dir.join(OUTBOX_FILE), outbox).unwrap();
    let decided = Resolved {
        event_id: events[0].event_id,
        resolution: Resolution::Accepted { position: Some(3) },
        at: start_time(),
    };
    std::fs::write(dir.join(RESOLUTIONS_FILE), relay_v1::outbox_line(&decided)).unwrap();
    (all, events, decided)
}

#[tokio::test]
async fn files_written_before_checksummed_headers_are_converted_and_the_old_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (records, events, decided) = old_relay_files(dir.path()).await;
    let old: Vec<(&str, Vec<u8>)> = [MIRROR_FILE, OUTBOX_FILE, RESOLUTIONS_FILE]
        .into_iter()
        .map(|name| (name, std::fs::read(dir.path().join(name)).unwrap()))
        .collect();

    let m = MirrorLog::open(dir.path()).unwrap();
    assert_eq!(m.records(), &records[..]);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(o.events(), &events[..], "the torn fifth line is left out");
    assert_eq!(o.pending(), events[1..].to_vec());
    assert_eq!(o.resolution(&decided.event_id), Some(&decided));
    drop((m, o));
    for (name, bytes) in &old {
        let kept = std::fs::read(dir.path().join(CUT_DIR).join(format!("{name}.v1"))).unwrap();
        assert_eq!(&kept, bytes, "{name}: the old file is kept whole");
        let new = std::fs::read(dir.path().join(name)).unwrap();
        assert_ne!(&new, bytes, "{name} is converted");
    }
    // The new files are the current format, under a durable head: they open as they are,
    // and a cut of an acknowledged event is refused.
    assert_eq!(MirrorLog::open(dir.path()).unwrap().records(), &records[..]);
    let mut o = Outbox::open(dir.path()).unwrap();
    assert_eq!(o.events(), &events[..]);
    o.append(forwarded(5)).unwrap();
    drop(o);
    assert_eq!(
        std::fs::read_dir(dir.path().join(CUT_DIR)).unwrap().count(),
        3
    );
    let path = dir.path().join(OUTBOX_FILE);
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
    assert!(Outbox::open(dir.path()).is_err());
}

#[tokio::test]
async fn old_files_that_do_not_check_out_and_damaged_new_ones_are_refused_not_converted() {
    let dir = tempfile::tempdir().unwrap();
    old_relay_files(dir.path()).await;
    let unchanged = |dir: &Path, name: &str, bytes: &[u8]| {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        assert!(!dir.join(CUT_DIR).exists(), "nothing converted or cut");
    };
    // An old outbox with a damaged line before the last: refused naming it.
    let path = dir.path().join(OUTBOX_FILE);
    let old = std::fs::read(&path).unwrap();
    let second = old.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut damaged = old.clone();
    damaged[second + 3] = b'#';
    std::fs::write(&path, &damaged).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{OUTBOX_FILE} line 2 (byte {second})")),
        "{err}"
    );
    unchanged(dir.path(), OUTBOX_FILE, &damaged);
    // An old mirror with a flipped byte in its second frame: refused naming its offset.
    let path = dir.path().join(MIRROR_FILE);
    let old = std::fs::read(&path).unwrap();
    let second = 8 + u32::from_be_bytes(old[0..4].try_into().unwrap()) as usize;
    let mut damaged = old.clone();
    damaged[second + 30] ^= 0x08;
    std::fs::write(&path, &damaged).unwrap();
    let err = MirrorLog::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&format!("at offset {second}")), "{err}");
    unchanged(dir.path(), MIRROR_FILE, &damaged);

    // A current outbox whose first byte became `{`, its marker gone too: not taken for old.
    let dir = tempfile::tempdir().unwrap();
    small_outbox(dir.path());
    std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
    let path = dir.path().join(OUTBOX_FILE);
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[0] = b'{';
    std::fs::write(&path, &damaged).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{OUTBOX_FILE} line 1 (byte 0)")),
        "{err}"
    );
    unchanged(dir.path(), OUTBOX_FILE, &damaged);
    // A current mirror whose first header is damaged: refused, not taken for old.
    let mut m = MirrorLog::open(dir.path()).unwrap();
    m.append(&records(3).await).unwrap();
    drop(m);
    let path = dir.path().join(MIRROR_FILE);
    let mut damaged = std::fs::read(&path).unwrap();
    for at in 0..FRAME_HEADER_BYTES {
        damaged[at] ^= 0x20;
        std::fs::write(&path, &damaged).unwrap();
        let err = MirrorLog::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("at offset 0:"), "byte {at}: {err}");
        unchanged(dir.path(), MIRROR_FILE, &damaged);
        damaged[at] ^= 0x20;
    }
}
