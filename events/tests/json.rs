//! `Record::write_json` writes exactly the bytes serde_json writes for `Record::to_json`
//! (the export's JSON lines, which `import` reads back), for every event type and for odd
//! strings; `SortedJson` writes what serializing through a `serde_json::Value` writes.

mod common;

use std::collections::BTreeMap;

use common::{all_samples, golden_envelope, operator, seal, Sample};
use ledger_events::json::SortedJson;
use ledger_events::{Actor, CustomerActivated, CustomerRegistered, Event, Note, Record, TradeName};
use serde::Serialize;

/// What the export wrote before `write_json`: serde_json over `to_json`.
fn reference(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    serde_json::to_writer(&mut out, &record.to_json().unwrap()).unwrap();
    out
}

fn record_of(s: &Sample, position: u64) -> Record {
    let mut env = golden_envelope(
        &s.event,
        s.event.event_type(),
        s.event.schema_version(),
        &s.actor,
    );
    env.position = position;
    seal(&env, &s.event.encode_payload().unwrap()).1
}

fn assert_same(record: &Record, label: &str) {
    let mut out = b"prefix".to_vec();
    record.write_json(&mut out).unwrap();
    let expected = reference(record);
    assert_eq!(
        String::from_utf8_lossy(&out[6..]),
        String::from_utf8_lossy(&expected),
        "{label}"
    );
    assert_eq!(
        &out[..6],
        b"prefix",
        "{label}: appends, leaves what was there"
    );
    // And the line still imports as the same record.
    let back: ledger_events::RecordJson = serde_json::from_slice(&out[6..]).unwrap();
    assert_eq!(&Record::from_json(&back).unwrap(), record, "{label}");
}

#[test]
fn every_event_type_writes_the_bytes_of_to_json() {
    let samples = all_samples();
    let mut types = std::collections::BTreeSet::new();
    for (i, s) in samples.iter().enumerate() {
        types.insert(s.event.event_type());
        assert_same(&record_of(s, 1 + i as u64), &s.label);
    }
    assert_eq!(
        types.len(),
        ledger_events::EVENT_TYPES.len(),
        "a sample of every type"
    );
}

/// Quotes, backslashes, slashes, non-ASCII letters, emoji, U+2028/U+2029 (valid in JSON,
/// escaped by some writers), HTML-ish characters: in a note, a trade name and an actor name.
const ODD: &[&str] = &[
    "aspas \"duplas\" e 'simples'",
    "barra \\ invertida \\\\ e / normal",
    "Inadimplência: ção, ü, ñ, 日本語",
    "emoji 🧾🔑 e \u{2028} separador \u{2029}",
    "<script>alert(1)</script> & ;",
    "\u{7f}x",
    "\u{a0}espaço\u{feff}",
];

#[test]
fn odd_strings_write_the_bytes_of_to_json() {
    let mut checked = 0;
    for (i, text) in ODD.iter().enumerate() {
        // The value types refuse control characters: what they accept is what a log holds.
        let Ok(note) = Note::parse(text) else {
            continue;
        };
        let Ok(trade_name) = TradeName::parse(&text.chars().take(60).collect::<String>()) else {
            continue;
        };
        let actor = Actor::operator(text).unwrap_or_else(|_| operator());
        let base = all_samples();
        let cnpj = base
            .iter()
            .find_map(|s| match &s.event {
                Event::Customer(c) => Some(*c.cnpj()),
                _ => None,
            })
            .unwrap();
        for event in [
            Event::from(CustomerActivated {
                cnpj,
                note: Some(note.clone()),
            }),
            Event::from(CustomerRegistered {
                cnpj,
                trade_name: trade_name.clone(),
                since: "2023-05-01".parse().unwrap(),
            }),
        ] {
            let s = Sample {
                label: format!("{text:?}"),
                event,
                actor: actor.clone(),
            };
            assert_same(&record_of(&s, 10 + i as u64), &s.label);
            checked += 1;
        }
    }
    assert!(checked >= 10, "most odd strings are valid notes: {checked}");
}

/// Fields declared out of order, nested, with every shape serde has; control characters.
#[derive(Serialize)]
struct Odd {
    zeta: &'static str,
    alpha: Option<u32>,
    nested: Inner,
    list: Vec<Shape>,
    map: BTreeMap<u32, Inner>,
    tuple: (i8, char, bool),
    bytes: serde_bytes_like::Bytes,
    float: f32,
    unit: (),
    #[serde(rename = "Beta")]
    beta: i64,
}

#[derive(Serialize, Clone)]
struct Inner {
    y: String,
    x: Option<String>,
}

#[derive(Serialize)]
enum Shape {
    Unit,
    Newtype(Inner),
    Tuple(u8, String),
    Struct { b: u8, a: String },
}

mod serde_bytes_like {
    /// Serialized with `serialize_bytes`.
    pub struct Bytes(pub Vec<u8>);
    impl serde::Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
}

/// A map that repeats a key: a `Value` keeps the last.
struct Repeats;
impl Serialize for Repeats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("b", &1)?;
        m.serialize_entry("a", &2)?;
        m.serialize_entry("b", &3)?;
        m.end()
    }
}

fn through_value<T: Serialize>(x: &T) -> Vec<u8> {
    serde_json::to_vec(&serde_json::to_value(x).unwrap()).unwrap()
}

fn sorted<T: Serialize>(x: &T) -> Vec<u8> {
    let mut out = Vec::new();
    x.serialize(SortedJson { out: &mut out }).unwrap();
    out
}

#[test]
fn sorted_json_writes_what_a_value_writes() {
    let inner = Inner {
        y: "control \u{0}\u{1}\u{8}\t\n\r\u{c}\u{1f}\u{7f}\u{9f} \"q\" \\ é 🧾 \u{2028}".into(),
        x: None,
    };
    let odd = Odd {
        zeta: "last",
        alpha: Some(7),
        nested: inner.clone(),
        list: vec![
            Shape::Unit,
            Shape::Newtype(inner.clone()),
            Shape::Tuple(3, "t".into()),
            Shape::Struct {
                b: 1,
                a: "\"".into(),
            },
        ],
        map: [(10, inner.clone()), (9, inner.clone()), (100, inner)]
            .into_iter()
            .collect(),
        tuple: (-1, '\u{1}', true),
        bytes: serde_bytes_like::Bytes(vec![0, 255, 34]),
        float: 1.1,
        unit: (),
        beta: i64::MIN,
    };
    let expected = through_value(&odd);
    assert_eq!(
        String::from_utf8(sorted(&odd)).unwrap(),
        String::from_utf8(expected.clone()).unwrap()
    );
    // The plain derive writes declaration order: the test would catch an unsorted writer.
    assert_ne!(serde_json::to_vec(&odd).unwrap(), expected);
    assert_eq!(sorted(&Repeats), through_value(&Repeats));
    assert_eq!(sorted(&Repeats), br#"{"a":2,"b":3}"#);
}

#[test]
fn every_shape_of_recorded_at_writes_the_bytes_of_to_json() {
    use chrono::{TimeZone, Utc};
    let s = &all_samples()[0];
    let times = [
        Utc.with_ymd_and_hms(2026, 11, 3, 6, 0, 0).unwrap(),
        Utc.timestamp_micros(1_682_951_527_120_000).unwrap(), // milliseconds only
        Utc.timestamp_micros(1_682_951_527_000_001).unwrap(),
        Utc.timestamp_micros(1_682_951_527_999_999).unwrap(),
        Utc.timestamp_micros(0).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(12345, 1, 2, 3, 4, 5).unwrap(), // chrono writes a sign
        Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(7, 1, 1, 0, 0, 0).unwrap(),
    ];
    for (i, t) in times.into_iter().enumerate() {
        let mut env = golden_envelope(
            &s.event,
            s.event.event_type(),
            s.event.schema_version(),
            &s.actor,
        );
        env.recorded_at = t;
        env.position = u64::MAX - i as u64;
        let record = seal(&env, &s.event.encode_payload().unwrap()).1;
        assert_same(&record, &t.to_string());
    }
}

/// The hand-written forms agree with the library forms they replace.
#[test]
fn dates_and_hex_values_keep_their_text() {
    use chrono::NaiveDate;
    for (y, m, d) in [
        (2026, 12, 3),
        (1, 1, 1),
        (999, 10, 31),
        (9999, 12, 31),
        (10000, 1, 1),
    ] {
        let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut out = Vec::new();
        ledger_events::values::day::serialize(&date, &mut serde_json::Serializer::new(&mut out))
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("\"{}\"", date.format("%Y-%m-%d"))
        );
    }
    let key = ledger_events::HardwareKey::parse("88a7b56c2b3f326f91362a182483f63e").unwrap();
    assert_eq!(key.to_string(), hex::encode_upper(key.as_bytes()));
    let hash = ledger_events::Hash(std::array::from_fn(|i| (i * 37) as u8));
    assert_eq!(hash.to_string(), hex::encode(hash.0));
}
