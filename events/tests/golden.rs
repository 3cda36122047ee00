//! Golden files: one stored record per (event type, schema version) ever written.
//!
//! They prove that every version ever written keeps decoding (to the value it meant, upcast to
//! today's struct) and that the current encoding has not moved by a byte. See
//! `tests/golden/README.md`. `UPDATE_GOLDEN=1` writes the files that are missing, never more.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{golden_envelope, golden_record, golden_samples, seal, Sample};
use ledger_events::{CodecError, Event, LicenseGranted, Record, EVENT_TYPES};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn file_name(event_type: &str, version: u16) -> String {
    format!("{event_type}.v{version}.bin")
}

/// Splits `LicenseGranted.v1.bin` into `("LicenseGranted", 1)`.
fn parse_file_name(name: &str) -> Option<(&str, u16)> {
    let stem = name.strip_suffix(".bin")?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    let version: u16 = version.parse().ok()?;
    (!event_type.is_empty() && file_name(event_type, version) == name)
        .then_some((event_type, version))
}

/// What every golden file must decode to, by (event type, schema version).
///
/// Current versions come from `common::golden_samples()`. When a type's version is bumped,
/// its sample there becomes the new struct, and the old file's expectation is added to
/// `legacy` below by hand: the *upcast* value (today's struct) of what the old file holds,
/// with the actor the old sample had. Entries are never removed.
fn golden_table() -> BTreeMap<(String, u16), Sample> {
    let mut table = BTreeMap::new();
    for s in golden_samples() {
        let key = (s.event.event_type().to_owned(), s.event.schema_version());
        assert!(
            table.insert(key.clone(), s).is_none(),
            "two golden samples for {key:?}"
        );
    }
    let legacy: Vec<(&str, u16, Sample)> = vec![
        // ("TypeName", 1, Sample { label: "TypeName".into(), event: <upcast value>, actor }),
        (
            "OfflineActivationIssued",
            1,
            Sample {
                label: "OfflineActivationIssued".into(),
                event: common::offline_activation_issued_v1_upcast().into(),
                actor: common::operator(),
            },
        ),
        (
            "EmergencyReleaseIssued",
            1,
            Sample {
                label: "EmergencyReleaseIssued".into(),
                event: common::emergency_release_issued_v1_upcast().into(),
                actor: common::operator(),
            },
        ),
    ];
    for (event_type, version, s) in legacy {
        let key = (event_type.to_owned(), version);
        assert!(
            table.insert(key.clone(), s).is_none(),
            "two golden expectations for {key:?}"
        );
    }
    table
}

fn update_requested() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Writes `bytes` to `path` only if no file is there; `Ok(false)` when one already is.
fn write_if_missing(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let mut f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(true)
}

/// Runs once per test process, before any test reads the directory: with `UPDATE_GOLDEN=1`,
/// writes the golden file of every current type that has none. Existing files are never
/// touched, whatever they hold.
fn golden_files_ready() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let dir = golden_dir();
        if update_requested() {
            fs::create_dir_all(&dir).unwrap();
            for s in golden_samples() {
                let path = dir.join(file_name(s.event.event_type(), s.event.schema_version()));
                let (bytes, _) = golden_record(&s);
                if write_if_missing(&path, &bytes).unwrap() {
                    eprintln!("wrote new golden file {}", path.display());
                }
            }
        }
        dir
    })
}

#[test]
fn every_golden_file_decodes_to_its_expected_value() {
    let dir = golden_files_ready();
    let table = golden_table();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    names.sort();
    for name in &names {
        let Some((event_type, version)) = parse_file_name(name) else {
            failures.push(format!("{name}: not named <EventType>.v<version>.bin"));
            continue;
        };
        let Some(expected) = table.get(&(event_type.to_owned(), version)) else {
            failures.push(format!(
                "{name}: no expected value in golden_table() (a legacy version needs an entry)"
            ));
            continue;
        };
        let bytes = fs::read(dir.join(name)).unwrap();
        let record = match Record::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: record does not decode: {e}"));
                continue;
            }
        };
        // The payload of an old version is not reproducible from today's struct, so the hash
        // is not recomputed here: `Record::decode` has checked it against the bytes.
        let expected_envelope = ledger_events::Envelope {
            hash: record.envelope.hash,
            ..golden_envelope(&expected.event, event_type, version, &expected.actor)
        };
        if record.envelope != expected_envelope {
            failures.push(format!(
                "{name}: envelope differs\n  stored:   {:?}\n  expected: {expected_envelope:?}",
                record.envelope
            ));
            continue;
        }
        match record.event() {
            Ok(event) if event == expected.event => checked += 1,
            Ok(event) => failures.push(format!(
                "{name}: decodes to\n  {event:?}\nexpected\n  {:?}",
                expected.event
            )),
            Err(e) => failures.push(format!("{name}: payload does not decode: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= EVENT_TYPES.len(),
        "only {checked} golden files in {}; expected at least one per event type",
        dir.display()
    );
}

#[test]
fn every_current_event_type_has_a_golden_file() {
    let dir = golden_files_ready();
    let table = golden_table();
    let mut failures = Vec::new();
    for &(event_type, version) in EVENT_TYPES {
        let name = file_name(event_type, version);
        let Some(expected) = table.get(&(event_type.to_owned(), version)) else {
            failures.push(format!(
                "{name}: no golden sample; add one to common::golden_samples()"
            ));
            continue;
        };
        let path = dir.join(&name);
        let stored = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                failures.push(format!(
                    "{name}: missing; create it with \
                     UPDATE_GOLDEN=1 cargo test -p ledger-events --test golden"
                ));
                continue;
            }
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let env = golden_envelope(&expected.event, event_type, version, &expected.actor);
        let (bytes, _) = seal(&env, &expected.event.encode_payload().unwrap());
        if bytes != stored {
            failures.push(format!(
                "{name}: the current encoding differs from the stored bytes (the format or \
                 the sample changed; golden files are never rewritten)\n  stored:  {}\n  encoded: {}",
                hex::encode(&stored),
                hex::encode(&bytes)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} event type(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_samples_cover_the_catalogue_exactly_once() {
    let mut got: Vec<(&str, u16)> = golden_samples()
        .iter()
        .map(|s| (s.event.event_type(), s.event.schema_version()))
        .collect();
    let mut want = EVENT_TYPES.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn golden_file_names_parse_strictly() {
    assert_eq!(
        parse_file_name("LicenseGranted.v1.bin"),
        Some(("LicenseGranted", 1))
    );
    assert_eq!(
        parse_file_name("LicenseGranted.v12.bin"),
        Some(("LicenseGranted", 12))
    );
    for bad in [
        "LicenseGranted.bin",
        "LicenseGranted.v.bin",
        "LicenseGranted.v01.bin",
        "LicenseGranted.v1.bin.bak",
        ".v1.bin",
        "LicenseGranted.v70000.bin",
    ] {
        assert_eq!(parse_file_name(bad), None, "{bad}");
    }
}

#[test]
fn write_if_missing_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("ledger-events-golden-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("X.v1.bin");
    let _ = fs::remove_file(&path);
    assert!(write_if_missing(&path, b"first").unwrap());
    assert!(!write_if_missing(&path, b"second").unwrap());
    assert_eq!(fs::read(&path).unwrap(), b"first");
    fs::remove_dir_all(&dir).unwrap();
}

fn granted() -> Event {
    golden_samples()
        .into_iter()
        .map(|s| s.event)
        .find(|e| e.event_type() == "LicenseGranted")
        .unwrap()
}

#[test]
fn a_future_schema_version_is_refused_as_unsupported() {
    let event = granted();
    let payload = event.encode_payload().unwrap();
    for version in [999, 0] {
        let err = Event::decode_payload("LicenseGranted", version, &payload).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnsupportedSchemaVersion {
                event_type: "LicenseGranted".into(),
                found: version,
                current: <LicenseGranted as ledger_events::EventPayload>::VERSION,
            }
        );
    }
    // A whole record at v999 is a valid record (its hash holds) whose event is unreadable.
    let actor = common::operator();
    let env = golden_envelope(&event, "LicenseGranted", 999, &actor);
    let (bytes, _) = seal(&env, &payload);
    let record = Record::decode(&bytes).unwrap();
    assert_eq!(record.envelope.schema_version, 999);
    assert!(matches!(
        record.event(),
        Err(CodecError::UnsupportedSchemaVersion {
            found: 999,
            current: 1,
            ..
        })
    ));
    assert!(record.to_json().is_err());
}

#[test]
fn an_unknown_event_type_is_refused() {
    let event = granted();
    let payload = event.encode_payload().unwrap();
    assert_eq!(
        Event::decode_payload("LicenseTransferred", 1, &payload).unwrap_err(),
        CodecError::UnknownEventType("LicenseTransferred".into())
    );
    let env = golden_envelope(&event, "LicenseTransferred", 1, &common::operator());
    let (bytes, _) = seal(&env, &payload);
    let record = Record::decode(&bytes).unwrap();
    assert_eq!(
        record.event().unwrap_err(),
        CodecError::UnknownEventType("LicenseTransferred".into())
    );
    assert!(matches!(
        Event::from_data_json("LicenseTransferred", event.data_json()),
        Err(CodecError::UnknownEventType(_))
    ));
}
